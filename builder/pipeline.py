"""What to build for which node, in what order; the CLI's only entry into the work.

cluster -> secrets (state/) -> NodeTree per node -> artifacts per format -> dist/.
Secrets are made sequentially under the state lock; trees and artifacts are built
in parallel; everything is published atomically at the end.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import builder
from builder import publish
from builder.archive import source_date_epoch
from builder.errors import UserError
from builder.model import Cluster, Node
from builder.nodetree import NodeTree
from builder.pki import inspect_cert
from builder.render import NodeSecrets, ca_spec, node_secrets, render_tree
from builder.state import Event, State
from builder.writers import Artifact

PACKAGE_FORMATS = {"debian": "deb", "openbsd": "openbsd"}
IMAGE_KINDS = ("cloud-init", "autoinstall", "openbsd-autoinstall")
IMAGE_OS = {"cloud-init": "debian", "autoinstall": "debian", "openbsd-autoinstall": "openbsd"}

T = TypeVar("T")
R = TypeVar("R")


def _parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    items = list(items)
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(len(items), os.cpu_count() or 2)) as pool:
        return list(pool.map(fn, items))


@dataclass
class Build:
    """One run over one cluster and its state: renders nodes once, builds on demand."""

    cluster: Cluster
    state: State
    sign: bool = True  # OpenBSD packages signed with the signify key in state/
    trees: dict[str, NodeTree] = field(default_factory=dict)
    _mtime: int | None = None

    # ------------------------------------------------------------ basics
    @property
    def events(self) -> list[Event]:
        return self.state.events

    @property
    def mtime(self) -> int:
        """SOURCE_DATE_EPOCH, else the CA's birth: stable for the life of the state."""
        if self._mtime is None:
            ca = self.state.ca(ca_spec(self.cluster))
            assert ca is not None
            born = int(inspect_cert(ca[1]).not_before.timestamp())
            self._mtime = source_date_epoch(default=born)
        return self._mtime

    def render(self, nodes: Iterable[Node]) -> list[NodeTree]:
        nodes = [n for n in nodes if n.name not in self.trees]
        # Secrets first, one after another: the store is the single writer of state/.
        secrets: list[tuple[Node, NodeSecrets]] = [
            (n, node_secrets(self.cluster, n, self.state)) for n in nodes
        ]
        for tree in _parallel(lambda ns: render_tree(self.cluster, ns[0], ns[1]), secrets):
            self.trees[tree.node] = tree
        return [self.trees[n.name] for n in nodes]

    def tree(self, node: Node) -> NodeTree:
        if node.name not in self.trees:
            self.render([node])
        return self.trees[node.name]

    def version(self, node: Node, fmt: str) -> int:
        # The tool's version is part of the content: a new layout is a new package.
        digest = f"{self.tree(node).digest()}:{builder.__version__}"
        return self.state.package_version(node.name, fmt, digest)

    # ------------------------------------------------------------ packages
    def package(self, node: Node) -> Artifact:
        fmt = PACKAGE_FORMATS[node.os]
        tree = self.tree(node)
        version = self.version(node, fmt)
        if fmt == "deb":
            from builder.writers.deb import build_deb

            return build_deb(node, tree, version=version, mtime=self.mtime)
        from builder.writers.openbsd_pkg import build_openbsd_pkg

        sec = self.signify_key()[0] if self.sign else None
        return build_openbsd_pkg(
            node,
            tree,
            version=version,
            mtime=self.mtime,
            signing_key=sec,
            key_name=self.cluster.packages.signing_key_name,
        )

    def signify_key(self) -> tuple[bytes, bytes]:
        from builder import signify

        name = self.cluster.packages.signing_key_name
        pair: dict[str, bytes] = {}

        def make_secret() -> bytes:
            pair["sec"], pair["pub"] = signify.generate_keypair(comment_name=name)
            return pair["sec"]

        sec = self.state.secret(f"{name}.sec", make_secret)
        assert sec is not None
        # A lost .pub is derived again from the secret key (signify keeps it there too).
        pub = self.state.public(
            f"{name}.pub", lambda: pair.get("pub") or signify.public_key_from_secret(sec)
        )
        assert pub is not None
        try:  # a mismatched pair would sign what no node accepts
            signify.check_keypair(sec, pub)
        except UserError as e:
            raise UserError(f"{self.state.directory / name}.{{sec,pub}}: {e}") from None
        return sec, pub

    def apt_key(self) -> bytes:
        from builder import openpgp

        key = self.state.secret(
            "apt-signing.key", lambda: openpgp.generate_key(f"nomad-build {self.cluster.name}")
        )
        assert key is not None
        return key

    def packages(self, nodes: Iterable[Node]) -> list[Artifact]:
        nodes = list(nodes)
        self.render(nodes)
        for n in nodes:  # versions and keys touch state/: sequential
            self.version(n, PACKAGE_FORMATS[n.os])
        if any(n.os == "openbsd" for n in nodes) and self.sign:
            self.signify_key()
        return _parallel(self.package, nodes)

    def repos(self, pkgs: list[Artifact]) -> list[Artifact]:
        out: list[Artifact] = []
        debs = [a for a in pkgs if a.path.startswith("debian/")]
        if debs:
            from builder.writers.apt_repo import build_apt_repo

            p = self.cluster.packages
            out += build_apt_repo(
                debs,
                suite=p.apt_suite,
                component=p.apt_component,
                signing_key=self.apt_key(),
                mtime=self.mtime,
                repo_url=p.repo_url,
            )
        bsd = [a for a in pkgs if a.path.startswith("openbsd/")]
        if bsd:
            from builder.writers.pkg_repo import build_pkg_repo

            pub = self.signify_key()[1] if self.sign else None
            out += build_pkg_repo(bsd, pub_key=pub, key_name=self.cluster.packages.signing_key_name)
        return out

    # ------------------------------------------------------------ images
    def images(self, nodes: Iterable[Node], kinds: Iterable[str]) -> list[Artifact]:
        nodes, kinds = list(nodes), list(kinds)
        for kind in kinds:
            for n in nodes:
                check_image_request(self.cluster, n, kind)
        pkgs = {a_node.name: a for a_node, a in zip(nodes, self.packages(nodes), strict=True)}
        out: list[Artifact] = []
        if "cloud-init" in kinds or "autoinstall" in kinds:
            keyring = self.apt_keyring() if self.cluster.packages.repo_url else None
        if "cloud-init" in kinds:
            from builder.writers.cloud_init import build_cloud_init_seed

            out += [
                build_cloud_init_seed(
                    n, self.tree(n), deb=pkgs[n.name], repo_keyring=keyring, mtime=self.mtime
                )
                for n in nodes
            ]
        if "autoinstall" in kinds:
            from builder.writers.autoinstall import build_autoinstall_seed

            out += [
                build_autoinstall_seed(
                    n, self.tree(n), deb=pkgs[n.name], repo_keyring=keyring, mtime=self.mtime
                )
                for n in nodes
            ]
        if "openbsd-autoinstall" in kinds:
            from builder.writers.openbsd_autoinstall import build_openbsd_autoinstall

            out += build_openbsd_autoinstall(
                [(n, self.tree(n), pkgs[n.name]) for n in nodes],
                pub_key=self.signify_key()[1],
                key_name=self.cluster.packages.signing_key_name,
                mtime=self.mtime,
            )
        return out

    def apt_keyring(self) -> bytes:
        from builder import openpgp

        return openpgp.public_keyring(self.apt_key())

    # ------------------------------------------------------------ everything
    def everything(self) -> list[Artifact]:
        nodes = list(self.cluster.nodes)
        pkgs = self.packages(nodes)
        out = pkgs + self.repos(pkgs)
        deb_nodes = [n for n in nodes if n.os == "debian"]
        bsd_nodes = [n for n in nodes if n.os == "openbsd"]
        if deb_nodes:
            out += self.images(deb_nodes, ["cloud-init"])
            if deb_nodes[0].images.password_hash:
                out += self.images(deb_nodes, ["autoinstall"])
        if bsd_nodes and bsd_nodes[0].images.openbsd_sets_url:
            out += self.images(bsd_nodes, ["openbsd-autoinstall"])
        return out


def secret_artifacts(node: Node) -> list[str]:
    """Where `build` puts this node's private key (and a server's gossip key): glob
    patterns under dist/, following everything() above, for `check` to tell."""
    if node.os == "openbsd":
        pkg = f"{node.openbsd_stem}-*.tgz"
        paths = [f"openbsd/{pkg}", f"repo/openbsd/{pkg}"]
        if node.images.openbsd_sets_url:
            release = node.images.openbsd_release.replace(".", "")
            paths += [f"openbsd-autoinstall/site{release}-{node.name}.tgz"]
        return paths
    deb = f"{node.deb_package}_*.deb"
    paths = [f"debian/{deb}", f"repo/debian/pool/*/*/{node.deb_package}/{deb}"]
    paths += [f"images/{node.name}/seed.iso"]
    if node.images.password_hash:
        paths += [f"images/{node.name}/autoinstall.iso"]
    return paths


def check_request(cluster: Cluster, node: Node, *, role: str | None, fmt: str | None) -> None:
    """Refuse a `package` request that names the wrong role or format, before any write."""
    if role is not None and role != node.role:
        raise UserError(f"{cluster.source}: node {node.name} has role {node.role!r}, not {role!r}")
    if fmt is not None and fmt != PACKAGE_FORMATS[node.os]:
        raise UserError(
            f"{cluster.source}: node {node.name} runs {node.os}; "
            f"its package format is {PACKAGE_FORMATS[node.os]}, not {fmt}"
        )


def check_image_request(cluster: Cluster, node: Node, kind: str) -> None:
    """Refuse an image the node cannot use, or one the cluster file lacks settings for."""
    if node.os != IMAGE_OS[kind]:
        raise UserError(
            f"{cluster.source}: node {node.name} runs {node.os}; "
            f"a {kind} image is for {IMAGE_OS[kind]} nodes"
        )
    if kind == "autoinstall" and not node.images.password_hash:
        raise UserError(
            f"{cluster.source}: images.password_hash: missing (the Ubuntu installer's identity "
            "needs a crypt(3) hash, e.g. from `mkpasswd -m sha-512`)"
        )
    if kind == "openbsd-autoinstall" and not node.images.openbsd_sets_url:
        raise UserError(
            f"{cluster.source}: images.openbsd_sets_url: missing (where the installer "
            "fetches the sets, e.g. http://10.20.130.1/pub/OpenBSD/7.8/amd64)"
        )


def open_build(cluster: Cluster, state_dir: Path) -> tuple[State, Build]:
    st = State.open(state_dir, create=True)
    return st, Build(cluster, st)


def publish_all(out: Path, artifacts: list[Artifact]) -> list[Path]:
    return publish.publish_tree(out, artifacts)


def publish_some(out: Path, artifacts: list[Artifact]) -> list[Path]:
    return publish.publish_files(out, artifacts)
