"""Artifact writers: one module per output format, each behind the same contract.

A writer (a `Writer` subclass, registered in `REGISTRY`) says which nodes it
applies to, checks a node against its format's rules without writing anything
(`check`), names the paths it will produce (`outputs`), and builds artifacts
from the node trees, the keys and the artifacts of the writers it `needs`
(`build`). A writer never reads the cluster file, never renders another
format's templates, never writes to disk, and imports no sibling writer: what
two formats share lives in a helper module outside this package or is handed
over as a built artifact. Adding a format = one module + one line in REGISTRY.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import stat
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from builder.errors import BuildError, UserError

if TYPE_CHECKING:
    from builder.model import Cluster, Node
    from builder.nodetree import NodeFile, NodeTree


@dataclass(frozen=True)
class Artifact:
    path: str  # relative to dist/, e.g. "debian/nomad-config-bi-core-sbg-1_3_all.deb"
    data: bytes
    secret: bool  # holds a private key (a node key, the gossip key): written 0600
    node: str | None = None  # the node it belongs to (None: shared, e.g. an index)

    def __post_init__(self) -> None:
        if self.path.startswith("/") or ".." in self.path.split("/"):
            raise ValueError(f"artifact path must be relative: {self.path}")


def file_mode(secret: bool) -> int:
    """The mode an artifact's file is written with."""
    return 0o600 if secret else 0o644


def mode_kept(mode: int, secret: bool) -> bool:
    """May a published file with this mode stand for an artifact (be reused, or linked
    into the next tree)? Its own mode, or, for a secret-bearing one, with the group read
    an operator grants a web server (README: Publishing the repositories). Never a bit
    for others: such a file is written again."""
    mode = stat.S_IMODE(mode)
    return mode == file_mode(secret) or (secret and mode == 0o640)


@dataclass(frozen=True)
class Output:
    """One path a writer will produce, declared before anything is built."""

    path: str  # relative to dist/
    node: str | None  # the node whose artifact it is (None: shared, e.g. an index)
    secret: bool  # written 0600 (as its Artifact says)
    holds_keys: bool | None = None  # holds the node's key (None: the same as `secret`)

    @property
    def has_node_key(self) -> bool:
        return self.secret if self.holds_keys is None else self.holds_keys


@dataclass(frozen=True)
class Keys:
    """The signing keys a run hands to writers (only those a writer asks for are set)."""

    signing_key_name: str
    apt_secret: bytes | None = None  # OpenPGP secret key of the apt repository
    signify_secret: bytes | None = None  # OpenBSD package signing key (None: unsigned)
    signify_public: bytes | None = None
    # While an apt key rotation is under way (or after one): the public keyring shipped
    # (repo/debian/, the seeds), holding more than the signing key (None: its key alone).
    apt_keyring: bytes | None = None


@dataclass(frozen=True)
class BuildInputs:
    """Everything `build` may use: no cluster file, no state store, no disk."""

    cluster: Cluster
    mtime: int
    keys: Keys
    trees: Mapping[str, NodeTree]
    versions: Mapping[str, int]  # a writer's version_key(node) -> its package version
    built: Mapping[str, Sequence[Artifact]] = field(default_factory=dict)  # by writer name
    consul_trees: Mapping[str, NodeTree] = field(default_factory=dict)  # [consul.agent] on
    # Each node's own certificate (PEM), the one its tree carries: known without
    # rendering the tree (an incremental run renders only the nodes that changed).
    certificates: Mapping[str, bytes] = field(default_factory=dict)
    # sha256 of artifacts in `built`, by path, where the pipeline knows it already
    shas: Mapping[str, str] = field(default_factory=dict)

    def sha256(self, artifact: Artifact) -> str:
        known = self.shas.get(artifact.path)
        return known if known is not None else hashlib.sha256(artifact.data).hexdigest()

    def package_of(self, writer: str, node: Node) -> Artifact:
        """The artifact `writer` built for `node`."""
        found = self._by_node(writer).get(node.name)
        if found is None:
            raise BuildError(f"{node.name}: no {writer} artifact was built before it was needed")
        return found

    def package_if_built(self, writer: str, node: Node) -> Artifact | None:
        """The artifact `writer` built for `node`; None when `writer` did not run (a need
        that does not apply to this cluster)."""
        if writer not in self.built:
            return None
        return self.package_of(writer, node)

    def _by_node(self, writer: str) -> dict[str, Artifact]:
        # An index per writer's artifact list, made once (a scan per call is quadratic).
        arts = self.built.get(writer, ())
        cache: dict[tuple[str, int, int], dict[str, Artifact]]
        cache = self.__dict__.setdefault("_package_index", {})
        key = (writer, id(arts), len(arts))
        index = cache.get(key)
        if index is None:
            index = {}
            for a in arts:
                if a.node is not None:
                    index.setdefault(a.node, a)  # the first, as a scan would find
            cache[key] = index
        return index


class Writer(ABC):
    """One output format. Subclasses set `name`, `needs`, `signing` and implement the rest."""

    name: ClassVar[str]
    # Writers whose artifacts `build` consumes. A need that applies to none of the nodes
    # (consul-deb without [consul.agent]) does not run: `package_if_built` is then None.
    needs: ClassVar[tuple[str, ...]] = ()
    signing: ClassVar[frozenset[str]] = frozenset()  # keys it needs: "apt", "signify"
    per_node: ClassVar[bool] = True  # build() may be called for any subset of its nodes
    reads_all: ClassVar[bool] = False  # build() reads every artifact built before it
    os: ClassVar[str]  # the OS whose nodes it serves

    def warnings(self, cluster: Cluster, nodes: Sequence[Node]) -> list[str]:
        """What would make these artifacts useless on the nodes, naming the cluster-file
        key that fixes it. Pure."""
        return []

    def version_key(self, node: str) -> str:
        """The key of the node's package version in `versions` (a package writer's; the
        Nomad package's is the node's name)."""
        return node

    def signing_keys(self, cluster: Cluster) -> frozenset[str]:
        """The signing keys `build` needs for this cluster."""
        return self.signing

    @abstractmethod
    def unfit(self, cluster: Cluster, node: Node) -> str | None:
        """Why this format is not for `node` (None: it is). Pure."""

    def nodes(self, cluster: Cluster) -> tuple[Node, ...]:
        return tuple(n for n in cluster.nodes if self.unfit(cluster, n) is None)

    def check(self, cluster: Cluster, node: Node) -> list[str]:
        """Every problem of `node` for this format, as one-line messages. Writes nothing."""
        return []

    @abstractmethod
    def outputs(
        self,
        cluster: Cluster,
        nodes: Sequence[Node],
        versions: Mapping[str, int],
        upstream: Sequence[Output] = (),
    ) -> list[Output]:
        """The paths `build` will produce for these nodes; `upstream` holds the outputs
        of the writers it needs (for these nodes)."""

    @abstractmethod
    def build(self, inputs: BuildInputs, nodes: Sequence[Node]) -> list[Artifact]:
        """The artifacts for these nodes (all of the writer's nodes when not per_node)."""

    # Optional, for a writer that is not per_node but whose work is mostly per node (an
    # index over per-node files): with `splits`, build() must equal
    # build_index(inputs, nodes, [a for n in nodes for a in build_part(inputs, n)]),
    # so that an incremental run rebuilds only the changed nodes' parts and the index.
    splits: ClassVar[bool] = False

    def build_part(self, inputs: BuildInputs, node: Node) -> list[Artifact]:
        raise NotImplementedError(self.name)

    def build_index(
        self, inputs: BuildInputs, nodes: Sequence[Node], parts: Sequence[Artifact]
    ) -> list[Artifact]:
        raise NotImplementedError(self.name)


# Build order: a writer comes after every writer it needs.
REGISTRY: tuple[tuple[str, str], ...] = (
    ("deb", "builder.writers.deb:DebWriter"),
    ("openbsd-pkg", "builder.writers.openbsd_pkg:OpenBSDPackageWriter"),
    # Consul agents ([consul.agent] enabled): beside their format's machinery
    ("consul-deb", "builder.writers.deb:ConsulDebWriter"),
    ("consul-openbsd-pkg", "builder.writers.openbsd_pkg:ConsulOpenBSDPackageWriter"),
    ("apt-repo", "builder.writers.apt_repo:AptRepoWriter"),
    ("pkg-repo", "builder.writers.pkg_repo:PkgRepoWriter"),
    ("cloud-init", "builder.writers.cloud_init:CloudInitWriter"),
    ("autoinstall", "builder.writers.autoinstall:AutoinstallWriter"),
    ("openbsd-autoinstall", "builder.writers.openbsd_autoinstall:OpenBSDAutoinstallWriter"),
    ("manifest", "builder.writers.manifest:ManifestWriter"),  # last: lists all of the above
)


@functools.cache  # writers hold no state: one instance each (asked thousands of times)
def writer(name: str) -> Writer:
    """The registered writer called `name`."""
    for registered, target in REGISTRY:
        if registered == name:
            module, cls = target.split(":")
            instance: Writer = getattr(importlib.import_module(module), cls)()
            if instance.name != name:
                raise BuildError(f"{target} calls itself {instance.name!r}, registered as {name}")
            return instance
    raise KeyError(name)


def all_writers() -> list[Writer]:
    return [writer(name) for name, _ in REGISTRY]


def login_warning(cluster: Cluster, nodes: Sequence[Node]) -> list[str]:
    """Seeds that install a node nobody can log in to."""
    images = cluster.images
    if nodes and not images.ssh_keys and not images.password_hash:
        return [
            f"{cluster.source}: images.ssh_keys: empty and images.password_hash unset: "
            f"nobody can log in to a node installed from the seeds (admin {images.admin_user} "
            "is locked)"
        ]
    return []


def bundle_problems(
    cluster: Cluster, node: Node, arch_of: Callable[[bytes, str], str]
) -> list[str]:
    """What a package format cannot take of the bundled binary (its `arch_of` refuses
    with a UserError); [] without a bundle."""
    bundle = node.packages.bundle
    if bundle is None:
        return []
    try:
        arch_of(bundle.binary.read_bytes(), f"{cluster.source}: packages.bundle.binary")
    except UserError as e:
        return [str(e)]
    return []


def bundled_binaries(node: Node, tree: NodeTree) -> list[NodeFile]:
    """The tree's Nomad binary files; they exist exactly when the cluster bundles one."""
    binaries = [f for f in tree.files if f.kind == "binary"]
    if node.packages.bundle is not None and not binaries:
        raise BuildError(f"{node.name}: a bundled binary is configured but not in the NodeTree")
    if node.packages.bundle is None and binaries:
        raise BuildError(f"{node.name}: the NodeTree has a binary but no bundle is configured")
    return binaries
