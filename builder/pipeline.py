"""PLAN, then WRITE: the CLI's only entry into the work.

`plan()` loads the cluster model, picks the writers a request needs, runs every
applicable writer's `check` for every requested node, checks the output
directory against the state and the cluster file, and goes through the secrets
store read-only (which refuses a damaged or missing secret exactly as a writing
run would). It writes nothing. Only a clean plan reaches `execute()`, which
opens the store for writing (and holds its lock until publishing is done),
makes the secrets, renders each node's tree once, builds each artifact once in
dependency order, and publishes into the output directory atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, overload

from builder import cluster as cluster_mod
from builder import consul, incremental, membership, output_dir, publish, report, rotation
from builder.apt_source import KEYRING_PATH
from builder.errors import UserError
from builder.model import Cluster, Node
from builder.nodetree import NodeFile, NodeTree
from builder.os_profile import PROFILES, profile
from builder.pki import CertInfo, inspect_cert
from builder.render import NodeSecrets, ca_spec, cert_spec, node_secrets, render_tree
from builder.report import Change, Report
from builder.state import Event, State, Verified
from builder.writers import Artifact, BuildInputs, Keys, Output, Writer, all_writers, writer

PACKAGE_WRITERS = {"deb": "deb", "openbsd": "openbsd-pkg"}  # package format -> writer
IMAGE_KINDS = tuple(kind for p in PROFILES.values() for kind in p.image_kinds)
REPO_WRITERS = ("deb", "openbsd-pkg", "apt-repo", "pkg-repo")
CONSUL_WRITERS = {"deb": "consul-deb", "openbsd": "consul-openbsd-pkg"}  # [consul.agent] on
# versions.json's format names
STATE_FORMAT = {
    "deb": "deb",
    "openbsd-pkg": "openbsd",
    "consul-deb": "consul-deb",
    "consul-openbsd-pkg": "consul-openbsd",
}
CONSUL_FORMATS = frozenset(STATE_FORMAT[w] for w in CONSUL_WRITERS.values())

T = TypeVar("T")
R = TypeVar("R")


# CPU-bound work (archives, ISOs, templates) goes to forked worker processes: threads
# are bound by the GIL. Forked, because the workers then inherit everything the work
# reads (the model, the trees, upstream artifacts) instead of having it pickled to
# them; only the results (bytes) travel back. Chunked per node, a few chunks per worker.
_FORK_MIN = 24  # fewer items than this: not worth the fork
_FORK_WORK: tuple[Callable[[Any], Any], list[Any]] | None = None


def _forked_chunk(chunk: range) -> list[Any]:
    assert _FORK_WORK is not None
    fn, items = _FORK_WORK
    return [fn(items[i]) for i in chunk]


def _spare_cores() -> int:
    """Cores this run may use: those it is allowed on, less what other processes keep
    busy (the 1-minute load average, our own process not counted). Forking workers onto
    cores that are not free only adds the fork's cost."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        busy = max(0.0, os.getloadavg()[0] - 1.0)
    except OSError:
        busy = 0.0
    return max(1, min(cores, round(cores - busy)))


def _cpu_parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """fn over items on every core, in forked processes (fn may be a closure: the
    workers inherit it); in this process when there are few items or no fork."""
    global _FORK_WORK
    items = list(items)
    workers = min(_spare_cores(), len(items) // (_FORK_MIN // 2))
    if (
        workers < 2
        or len(items) < _FORK_MIN
        or _FORK_WORK is not None
        or "fork" not in multiprocessing.get_all_start_methods()
    ):
        return [fn(i) for i in items]
    size = max(1, -(-len(items) // (workers * 4)))
    chunks = [range(i, min(i + size, len(items))) for i in range(0, len(items), size)]
    _FORK_WORK = (fn, items)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_forked_chunk, chunks, chunksize=1)
    finally:
        _FORK_WORK = None
    return [r for part in parts for r in part]


# ---------------------------------------------------------------- the request


@dataclass(frozen=True)
class Request:
    """What the operator asked for, as the CLI parsed it."""

    command: str  # check | build | package | image | repo | render | renew
    cluster_file: Path
    state_dir: Path | None = None
    out_dir: Path | None = None
    nodes: tuple[str, ...] = ()  # empty: every node
    role: str | None = None  # `package --role`: must match the node
    fmt: str | None = None  # `package --format`
    kind: str | None = None  # `image --kind`
    sign: bool = True
    force: bool = False  # replace an output directory nomad-build did not make
    wait: float = 0.0  # seconds to wait for another run's lock on the state


@dataclass(frozen=True)
class Job:
    writer: Writer
    nodes: tuple[Node, ...]


@dataclass(frozen=True)
class CertStatus:
    info: CertInfo | None  # the stored certificate (None: none yet)
    current: bool  # still fits the cluster file (else a writing run re-issues it)


@dataclass
class Plan:
    request: Request
    cluster: Cluster
    state_dir: Path
    out_dir: Path | None
    nodes: tuple[Node, ...]
    jobs: tuple[Job, ...]
    keys_needed: frozenset[str]
    source_date_epoch: int | None
    replace_out: bool  # --force over a directory nomad-build did not make
    events: list[Event] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)  # current (or first) versions
    known_versions: dict[tuple[str, str], int] = field(default_factory=dict)  # in state/
    certificates: dict[str, CertStatus] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # "load", "plan" (the rest)
    verified: Verified | None = None  # the certificate pairs the plan found sound

    def outputs(self) -> list[Output]:
        """Every path the jobs will produce, with the versions known now."""
        by_writer: dict[str, list[Output]] = {}
        for job in self.jobs:
            upstream = [o for need in job.writer.needs for o in by_writer.get(need, [])]
            by_writer[job.writer.name] = job.writer.outputs(
                self.cluster, job.nodes, self.versions, upstream
            )
        return [o for outs in by_writer.values() for o in outs]


def collect_rarely() -> None:
    """For a process that runs one command and exits (the CLI; the benchmark's runs, as
    the CLI): cyclic garbage collection far less often. A run makes few cycles, and each
    collection walks the objects alive, so with thousands of nodes alive the default
    thresholds (a collection per 700 allocations) cost more the bigger the cluster
    (measured at 3,000 nodes: 0.4 s of 6.8 s; collecting never at all cost 65 MB of peak
    RSS more, collecting this rarely costs nothing and keeps the RSS). Set for the whole
    process: setting it around each phase and back made the first allocation after each
    one collect everything young at once (15 ms of a 1,000-node one-node change)."""
    gc.set_threshold(50_000, 20, 100)


def plan(request: Request) -> Plan:
    """Everything a run will do, checked; nothing written."""
    start = time.perf_counter()
    cluster = cluster_mod.load(request.cluster_file)
    loaded = time.perf_counter()
    state_dir = request.state_dir or cluster.source.parent / "state"
    nodes = _requested_nodes(cluster, request)
    jobs = _jobs(cluster, request, nodes)
    _check_writers(cluster, jobs)
    epoch = _source_date_epoch()
    replace_out = False
    if request.out_dir is not None:
        replace_out = output_dir.check(
            request.out_dir, state_dir, cluster.source, force=request.force
        )
    keys = frozenset(k for j in jobs for k in j.writer.signing_keys(cluster))
    if not request.sign:
        keys -= {"signify"}
    p = Plan(request, cluster, state_dir, request.out_dir, nodes, jobs, keys, epoch, replace_out)
    advice = [w for j in jobs for w in j.writer.warnings(cluster, j.nodes)]
    if request.command in ("build", "check"):
        advice += _skipped(cluster)
    with State.open(state_dir, create=False) as st:
        p.cluster = _signing_key_in_use(cluster, st)
        current = _secrets(p, st, nodes).current_certs
        p.certificates = {
            n.name: CertStatus(st.cert_info(n.name), n.name in current) for n in nodes
        }
        p.versions = _current_versions(p, st)
        p.known_versions = _known_versions(p, st)
        if request.out_dir is not None:
            st.require_versions_at_least(output_dir.published_versions(request.out_dir))
        p.events, p.warnings = list(st.events), [*cluster.warnings, *advice, *st.warnings]
        p.warnings += membership.explain(cluster, st)  # refuses a change that loses quorum
        p.verified = st.verified()
    p.timings = {"load": loaded - start, "plan": time.perf_counter() - loaded}
    return p


def _signing_key_in_use(cluster: Cluster, st: State) -> Cluster:
    """The cluster with the OpenBSD signing key's current name (a rotated key has a new
    one: builder.rotation), which every writer and the next steps then use."""
    name = rotation.current_signify_name(cluster, st)
    if name == cluster.packages.signing_key_name:
        return cluster
    packages = dataclasses.replace(cluster.packages, signing_key_name=name)
    return dataclasses.replace(cluster, packages=packages)


def _requested_nodes(cluster: Cluster, request: Request) -> tuple[Node, ...]:
    nodes = tuple(cluster.node(n) for n in request.nodes) or cluster.nodes
    for node in nodes:
        if request.role is not None and request.role != node.role:
            raise UserError(
                f"{cluster.source}: node {node.name} has role {node.role!r}, not {request.role!r}"
            )
        fmt = profile(node.os).package_format
        if request.fmt is not None and request.fmt != fmt:
            raise UserError(
                f"{cluster.source}: node {node.name} runs {node.os}; its package format is "
                f"{fmt}, not {request.fmt}"
            )
    return nodes


def _package_writer(node: Node) -> str:
    return PACKAGE_WRITERS[profile(node.os).package_format]


def _jobs(cluster: Cluster, request: Request, nodes: Sequence[Node]) -> tuple[Job, ...]:
    """The writers a command needs, each with its nodes, in registry (dependency) order."""
    wanted: dict[str, tuple[Node, ...]] = {}
    if request.command in ("build", "check"):
        for w in all_writers():
            wanted[w.name] = w.nodes(cluster)
    elif request.command == "repo":
        for name in REPO_WRITERS:
            wanted[name] = writer(name).nodes(cluster)
    elif request.command == "package":
        for node in nodes:
            names = [_package_writer(node)]
            if consul.enabled(cluster):  # the node's Consul package comes with it
                names.append(CONSUL_WRITERS[profile(node.os).package_format])
            for name in names:
                wanted[name] = (*wanted.get(name, ()), node)
    elif request.command == "image":
        assert request.kind is not None
        w = writer(request.kind)
        for node in nodes:
            why = w.unfit(cluster, node)
            if why is not None:
                raise UserError(f"{cluster.source}: {why}")
        wanted[w.name] = tuple(nodes)
    _add_dependencies(cluster, wanted)
    return tuple(Job(w, wanted[w.name]) for w in all_writers() if wanted.get(w.name))


def _add_dependencies(cluster: Cluster, wanted: dict[str, tuple[Node, ...]]) -> None:
    """A writer's needs are built for (at least) the same nodes, those they apply to."""
    for name in reversed([w.name for w in all_writers()]):
        for need in writer(name).needs if name in wanted else ():
            have, needed = wanted.get(need, ()), writer(need)
            names = {n.name for n in have}  # by name: comparing Node objects is quadratic
            extra = tuple(
                n for n in wanted[name] if n.name not in names and needed.unfit(cluster, n) is None
            )
            if have or extra:
                wanted[need] = have + extra


def _skipped(cluster: Cluster) -> list[str]:
    """Formats a build leaves out for nodes of their OS, and the key that would add them."""
    out = []
    for w in all_writers():
        if w.name in CONSUL_WRITERS.values() and not consul.enabled(cluster):
            continue  # opt-in ([consul.agent]): nothing is missing without it
        reasons = [w.unfit(cluster, n) for n in cluster.nodes if n.os == w.os]
        for why in dict.fromkeys(r for r in reasons if r):
            count = reasons.count(why)
            out.append(f"{cluster.source}: {why}; no {w.name} artifacts for {count} node(s)")
    return out


def _check_writers(cluster: Cluster, jobs: Sequence[Job]) -> None:
    for job in jobs:
        for node in job.nodes:
            problems = job.writer.check(cluster, node)
            if problems:
                raise UserError(problems[0])


def _source_date_epoch() -> int | None:
    """SOURCE_DATE_EPOCH (reproducible-builds.org), read and validated once per run."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return None
    if not value.isascii() or not value.isdigit():
        raise UserError(f"SOURCE_DATE_EPOCH: {value!r} is not a number of seconds since 1970")
    return int(value)


# ---------------------------------------------------------------- secrets


@dataclass(frozen=True)
class _Secrets:
    ca: tuple[bytes, bytes] | None
    keys: Keys
    current_certs: frozenset[str]  # nodes whose stored certificate still fits
    # Files a signing key rotation adds to every node tree of an OS (builder.rotation).
    trust: Mapping[str, tuple[NodeFile, ...]] = field(default_factory=dict)
    # [consul.agent] on: each node's Consul secrets (None: read-only, not made yet)
    consul: Mapping[str, consul.ConsulSecrets | None] = field(default_factory=dict)


def _secrets(p: Plan, st: State, nodes: Sequence[Node]) -> _Secrets:
    """CA, gossip key, node certificates and signing keys: created in a writable store,
    checked (and what would be made, recorded) in a read-only one."""
    cluster = p.cluster
    # One ledger transaction and one fsync pass for everything made here (CA, gossip
    # key, every certificate, signing keys): two ledger writes, not two per file.
    with st.batch():
        ca = st.ca(ca_spec(cluster))
        if any(n.is_server for n in nodes):
            st.gossip_key()
        current = frozenset(
            n.name for n in nodes if st.node_cert(n.name, cert_spec(cluster, n), ca) is not None
        )
        name = rotation.current_signify_name(cluster, st)
        keys = Keys(signing_key_name=name)
        if "apt" in p.keys_needed:
            keys = Keys(name, apt_secret=_apt_key(cluster, st))
        if "signify" in p.keys_needed:
            sec, pub = _signify_pair(cluster, st, name)
            keys = Keys(name, keys.apt_secret, sec, pub)
        trust: dict[str, tuple[NodeFile, ...]] = {}
        apt_keys = rotation.apt_keyring_keys(st)
        if apt_keys is not None:
            from builder import openpgp

            keyring = b"".join(openpgp.public_keyring(k) for k in apt_keys)
            keys = dataclasses.replace(keys, apt_keyring=keyring)
            trust["debian"] = (NodeFile(KEYRING_PATH, keyring, 0o644, "root", "root", "trust"),)
        signify_pubs = []
        for key_name in rotation.signify_shipped(cluster, st):
            pub = _signify_public(st, key_name)
            if pub is not None:
                path = f"/etc/signify/{key_name}.pub"
                signify_pubs.append(NodeFile(path, pub, 0o644, "root", "wheel", "trust"))
        if signify_pubs:
            trust["openbsd"] = tuple(signify_pubs)
        made: dict[str, consul.ConsulSecrets | None] = {}
        if consul.enabled(cluster):  # the Consul CA key stays in state/; Nomad's cert policy
            for n in nodes:
                made[n.name] = consul.consul_secrets(st, cluster, n)
    return _Secrets(ca, keys, current, trust, made)


def _signify_public(st: State, name: str) -> bytes | None:
    from builder import signify

    sec = st.read_file(f"{name}.sec")
    if sec is None:
        raise UserError(f"{st.directory / name}.sec: missing; restore it from your backup")
    return st.public(f"{name}.pub", lambda: signify.public_key_from_secret(sec))


def _with_trust(tree: NodeTree, trust: Mapping[str, tuple[NodeFile, ...]]) -> NodeTree:
    """The tree with the keys a signing key rotation ships to its OS's nodes."""
    extra = trust.get(tree.os, ())
    if not extra:
        return tree
    files = sorted((*tree.files, *extra), key=lambda f: f.path)
    return dataclasses.replace(tree, files=tuple(files))


def _apt_key(cluster: Cluster, st: State) -> bytes | None:
    from builder import openpgp

    return st.secret("apt-signing.key", lambda: openpgp.generate_key(f"nomad-build {cluster.name}"))


def _signify_pair(cluster: Cluster, st: State, name: str) -> tuple[bytes | None, bytes | None]:
    from builder import signify

    made: dict[str, bytes] = {}

    def make_secret() -> bytes:
        made["sec"], made["pub"] = signify.generate_keypair(comment_name=name)
        return made["sec"]

    sec = st.secret(f"{name}.sec", make_secret)
    if sec is None:  # read-only, to be created
        return None, None
    # A lost .pub is derived again from the secret key (signify keeps it there too).
    pub = st.public(f"{name}.pub", lambda: made.get("pub") or signify.public_key_from_secret(sec))
    if pub is not None:
        try:  # a mismatched pair would sign what no node accepts
            signify.check_keypair(sec, pub)
        except UserError as e:
            raise UserError(f"{st.directory / name}.{{sec,pub}}: {e}") from None
    return sec, pub


def _package_writers(cluster: Cluster, node: Node) -> list[Writer]:
    """The writers of the node's packages (Nomad's; Consul's when the agent is on)."""
    names = [_package_writer(node)]
    if consul.enabled(cluster):
        names.append(CONSUL_WRITERS[profile(node.os).package_format])
    return [writer(n) for n in names]


def _known_versions(p: Plan, st: State) -> dict[tuple[str, str], int]:
    known = {}
    for node in p.cluster.nodes:
        for w in _package_writers(p.cluster, node):
            fmt = STATE_FORMAT[w.name]
            current = st.current_version(node.name, fmt)
            if current is not None:
                known[(node.name, fmt)] = current[0]
    return known


def _current_versions(p: Plan, st: State) -> dict[str, int]:
    """Each package's version, by its writer's version_key (a node's Nomad package: the
    node's name)."""
    versions = {}
    for node in p.cluster.nodes:
        for w in _package_writers(p.cluster, node):
            current = st.current_version(node.name, STATE_FORMAT[w.name])
            versions[w.version_key(node.name)] = current[0] if current else 1
    return versions


# ---------------------------------------------------------------- writing


@dataclass
class Result:
    artifacts: list[Artifact]
    published: Sequence[Path]
    events: list[Event]
    warnings: list[str]
    trees: Mapping[str, NodeTree]
    report: Report
    # seconds per stage (secrets, render, packages, repositories, seeds,
    # openbsd-autoinstall, publish), for the benchmark; never asserted on
    timings: dict[str, float] = field(default_factory=dict)
    built: int = 0  # writer.build calls made
    reused: list[str] = field(default_factory=list)  # artifact paths taken from the last build
    consul_trees: Mapping[str, NodeTree] = field(default_factory=dict)  # [consul.agent] on


# Which benchmark stage a writer's time counts in.
STAGES = {
    "deb": "packages",
    "openbsd-pkg": "packages",
    "consul-deb": "packages",
    "consul-openbsd-pkg": "packages",
    "apt-repo": "repositories",
    "pkg-repo": "repositories",
    "cloud-init": "seeds",
    "autoinstall": "seeds",
    "openbsd-autoinstall": "openbsd-autoinstall",
    "manifest": "publish",
}


@contextlib.contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def execute(p: Plan) -> Result:
    """Make the secrets, trees and artifacts of a clean plan and publish them; the store's
    lock is held until the output is in place."""
    timings: dict[str, float] = dict(p.timings)
    with contextlib.ExitStack() as stack:
        st = stack.enter_context(
            State.open(p.state_dir, create=True, wait=p.request.wait, verified=p.verified)
        )
        with _timed(timings, "secrets"):
            secrets = _secrets(p, st, p.nodes)
            trees = _trees(p, st, secrets)
        with _timed(timings, "render"):
            consul_trees = _render_consul(p, secrets)
        mtime = p.source_date_epoch
        if mtime is None and secrets.ca is not None:
            mtime = int(inspect_cert(secrets.ca[1]).not_before.timestamp())
        assert mtime is not None
        previous = incremental.Previous.load(p.out_dir) if p.request.command == "build" else None
        if previous is not None:
            stack.callback(previous.close)
        inputs = BuildInputs(
            p.cluster,
            mtime,
            secrets.keys,
            trees,
            dict(p.versions),
            consul_trees=consul_trees,
            certificates=trees.certificates(),
        )
        b = _Built(p, st, inputs)
        b.previous = previous
        b.digests = incremental.Digests(p.cluster, secrets.keys, mtime, trees.key)
        with _timed(timings, "render"):
            b.render_needed(trees)
        for job in p.jobs:
            with _timed(timings, STAGES.get(job.writer.name, job.writer.name)):
                b.job(job)
        with _timed(timings, "publish"):
            st.flush()  # versions first: a published package's number is never handed out again
            marker = output_dir.read_marker(p.out_dir) if p.out_dir is not None else None
            events = list(st.events)
            changes = _report(p, b, trees, marker, events)
            published = _publish(p, b, trees, marker) if p.out_dir is not None else []
        changes.warnings = [*p.warnings, *st.warnings]
        result = Result(b.artifacts, published, events, changes.warnings, trees, changes)
        result.consul_trees = consul_trees
    result.timings = timings
    result.built = b.built
    result.reused = sorted(previous.reused) if previous is not None else []
    result.report.reused = len(result.reused)
    return result


def _report(
    p: Plan,
    b: _Built,
    trees: _Trees,
    previous: Mapping[str, Mapping[str, Any]] | None,
    events: list[Event],
) -> Report:
    """Each artifact new, changed or unchanged; a package with a new version, and why."""
    why = {}
    newest = output_dir.newest_files(previous)
    for path, (node, fmt, version) in b.packages.items():
        if p.known_versions.get((node, fmt)) not in (None, version):  # its tree was rendered
            before = newest.get((node, fmt))
            files = report.tree_files(_package_tree(b, trees, node, fmt))
            why[path] = report.package_reasons(node, before, files, events)
    changes = report.artifact_changes(
        b.artifacts, previous, b.packages, p.known_versions, why, b.sha
    )
    return Report(p.request.command, changes, events)


def _tree_files(
    b: _Built, trees: _Trees, previous: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, dict[str, str]]:
    """Each package's file digests for the marker, by the package's path: from its tree
    when this run rendered it (a Consul tree always is), else as the previous marker
    recorded them (the tree is unchanged)."""
    files: dict[str, dict[str, str]] = {}
    newest = output_dir.newest_files(previous)
    for path, (node, fmt, _) in b.packages.items():
        recorded = newest.get((node, fmt))
        if fmt in CONSUL_FORMATS or trees.rendered(node) or recorded is None:
            files[path] = report.tree_files(_package_tree(b, trees, node, fmt))
        else:
            files[path] = recorded
    return files


def _package_tree(b: _Built, trees: _Trees, node: str, fmt: str) -> NodeTree:
    """The tree a package of format `fmt` is built from (a Consul package: the node's
    Consul tree)."""
    return b.inputs.consul_trees[node] if fmt in CONSUL_FORMATS else trees[node]


class _Trees(Mapping[str, NodeTree]):
    """Every needed node's NodeTree, rendered when first asked for (an incremental run
    renders only the nodes whose artifacts are not reused). `key(node)` is the digest of
    what the tree is rendered from, known without rendering it."""

    def __init__(
        self,
        cluster: Cluster,
        secrets: dict[str, tuple[Node, NodeSecrets]],
        trust: Mapping[str, tuple[NodeFile, ...]],
    ) -> None:
        self._cluster = cluster
        self._secrets = secrets
        self._trust = trust
        self._trees: dict[str, NodeTree] = {}
        self._keys: dict[str, str] = {}
        self._base: str | None = None

    def __getitem__(self, name: str) -> NodeTree:
        tree = self._trees.get(name)
        if tree is None:
            node, secrets = self._secrets[name]
            tree = _with_trust(render_tree(self._cluster, node, secrets), self._trust)
            tree = self._trees.setdefault(name, tree)
        return tree

    def __iter__(self) -> Iterator[str]:
        return iter(self._secrets)

    def __len__(self) -> int:
        return len(self._secrets)

    def rendered(self, name: str) -> bool:
        return name in self._trees

    def certificates(self) -> dict[str, bytes]:
        """Each node's own certificate, as its tree will carry it."""
        return {name: made.node_cert for name, (_, made) in self._secrets.items()}

    def render(self, names: Iterable[str]) -> None:
        """Render these trees now, on every core."""
        missing = [n for n in names if n not in self._trees]
        for name, tree in zip(missing, _cpu_parallel(self.__getitem__, missing), strict=True):
            self._trees.setdefault(name, tree)

    def key(self, node: Node) -> str:
        k = self._keys.get(node.name)
        if k is None:
            if self._base is None:
                self._base = incremental.render_base(self._cluster)
            k = incremental.tree_key(self._base, node, self._secrets[node.name][1])
            # the keys a signing key rotation adds to the tree are part of what it is
            trust = b"".join(f.path.encode() + f.content for f in self._trust.get(node.os, ()))
            k = self._keys[node.name] = hashlib.sha256(k.encode() + trust).hexdigest()
        return k


def _trees(p: Plan, st: State, secrets: _Secrets) -> _Trees:
    needed = {n.name: n for job in p.jobs for n in job.nodes} or {n.name: n for n in p.nodes}
    # Secrets one after another (the store is the single writer of state/), trees on demand.
    pairs = {n.name: (n, node_secrets(p.cluster, n, st)) for n in needed.values()}
    return _Trees(p.cluster, pairs, secrets.trust)


def _render_consul(p: Plan, secrets: _Secrets) -> dict[str, NodeTree]:
    """The Consul agent trees of the nodes the Consul package writers build for (small:
    rendered eagerly; their digests are part of those packages' input digests)."""
    wanted = {n.name: n for job in p.jobs if job.writer.name in CONSUL_WRITERS.values()
              for n in job.nodes}  # fmt: skip
    out = {}
    for name, node in wanted.items():
        made = secrets.consul.get(name)
        assert made is not None, "a writable store makes the Consul secrets"
        out[name] = consul.render_tree(p.cluster, node, made)
    return out


_Packages = dict[str, tuple[str, str, int]]  # package path -> (node, format, version)


@dataclass
class _Built:
    """The artifacts of one run as they are built (or reused), with what the marker
    records about them."""

    p: Plan
    st: State
    inputs: BuildInputs
    previous: incremental.Previous | None = None
    digests: incremental.Digests | None = None
    by_writer: dict[str, list[Artifact]] = field(default_factory=dict)
    packages: _Packages = field(default_factory=dict)
    records: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # marker "inputs"
    shas: dict[str, str] = field(default_factory=dict)  # artifact path -> sha256
    built: int = 0  # writer.build calls (reused artifacts are not built)

    def render_needed(self, trees: _Trees) -> None:
        """Render (in parallel) the trees of the nodes whose package cannot be reused; the
        others are rendered only if something downstream needs them."""
        assert self.digests is not None
        names = list(trees)
        if self.previous is not None:
            names = [name for name in names if not self._package_matches(trees._secrets[name][0])]
        trees.render(names)

    def _package_matches(self, node: Node) -> bool:
        assert self.digests is not None and self.previous is not None
        w = _package_writer(node)
        want = self.digests.per_node(w, node, self.versions.get(node.name), [])
        return self.previous.recorded(w, node.name) == want

    @property
    def artifacts(self) -> list[Artifact]:
        return [a for arts in self.by_writer.values() for a in arts]

    @property
    def versions(self) -> dict[str, int]:
        versions = self.inputs.versions
        assert isinstance(versions, dict)
        return versions

    def sha(self, a: Artifact) -> str:
        d = self.shas.get(a.path)
        if d is None:
            d = self.shas[a.path] = _digest(a)
        return d

    def job(self, job: Job) -> None:
        w = job.writer
        self.inputs = dataclasses.replace(self.inputs, built=self.by_writer, shas=self.shas)
        if w.name in STATE_FORMAT:
            arts = self._versioned(w, job.nodes)
            for a in arts:
                assert a.node is not None
                version = self.versions[w.version_key(a.node)]
                self.packages[a.path] = (a.node, STATE_FORMAT[w.name], version)
        elif w.per_node or w.splits:
            arts = self._per_node(w, job.nodes)
            if w.splits:
                arts = self._whole(w, job.nodes, parts=arts)
        else:
            arts = self._whole(w, job.nodes)
        self.by_writer[w.name] = arts

    def _upstream(self, w: Writer, node: Node) -> list[str]:
        ran = [need for need in w.needs if need in self.by_writer]  # those that apply
        return [self.sha(self.inputs.package_of(need, node)) for need in ran]

    def _record(self, w: Writer, node: str | None, want: str, arts: list[Artifact]) -> None:
        self.records[incremental.key(w.name, node)] = (want, [a.path for a in arts])

    def _take(self, w: Writer, node: str | None, want: str) -> list[Artifact] | None:
        if self.previous is None:
            return None
        arts = self.previous.take(w.name, node, want)
        if arts is not None:
            self._accept(arts)
            self._record(w, node, want, arts)
        return arts

    def _accept(self, arts: list[Artifact]) -> None:
        """Taken from the previous output: their sha256 is the one take() verified."""
        assert self.previous is not None
        self.previous.accept(arts)
        for a in arts:
            self.shas[a.path] = self.previous.sha256(a.path)

    def _build_each(
        self, w: Writer, nodes: Sequence[Node], inputs: BuildInputs | None = None
    ) -> list[list[Artifact]]:
        """w's artifacts for each node, built on every core (nothing reused here)."""
        inputs = inputs or self.inputs
        self.built += len(nodes)
        if w.splits:
            return _cpu_parallel(lambda n: w.build_part(inputs, n), nodes)
        return _cpu_parallel(lambda n: w.build(inputs, [n]), nodes)

    def _per_node(self, w: Writer, nodes: Sequence[Node]) -> list[Artifact]:
        """Each node's artifacts: reused when their inputs are unchanged, else built."""
        assert self.digests is not None
        digests = self.digests
        wants = [digests.per_node(w.name, n, None, self._upstream(w, n)) for n in nodes]
        found: list[list[Artifact] | None] = [None] * len(nodes)
        if self.previous is not None:
            self.previous.prefetch(w.name, zip([n.name for n in nodes], wants, strict=True))
            found = [self._take(w, n.name, want) for n, want in zip(nodes, wants, strict=True)]
        missing = [i for i, arts in enumerate(found) if arts is None]
        for i, arts in zip(missing, self._build_each(w, [nodes[i] for i in missing]), strict=True):
            self._record(w, nodes[i].name, wants[i], arts)
            found[i] = arts
        return [a for arts in found if arts is not None for a in arts]

    def _whole(
        self, w: Writer, nodes: Sequence[Node], parts: Sequence[Artifact] | None = None
    ) -> list[Artifact]:
        """A writer's artifacts for all its nodes at once (with `parts`: the index over
        the per-node parts of a writer that splits)."""
        assert self.digests is not None
        if parts is None:
            needs = list(self.by_writer) if w.reads_all else w.needs
            upstream = [self.sha(a) for need in needs for a in self.by_writer.get(need, ())]
        else:
            upstream = [self.sha(a) for a in parts]
        want = self.digests.whole(w.name, nodes, self.versions, sorted(upstream))
        arts = self._take(w, None, want)
        if arts is None:
            self.built += 1
            if parts is None:
                arts = w.build(self.inputs, nodes)
            else:
                arts = w.build_index(self.inputs, nodes, parts)
            part_paths = {a.path for a in parts or ()}
            self._record(w, None, want, [a for a in arts if a.path not in part_paths])
        elif parts is not None:
            arts = sorted([*parts, *arts], key=lambda a: a.path)
        return arts

    def _versioned(self, w: Writer, nodes: Sequence[Node]) -> list[Artifact]:
        """Build at the current version; a package whose bytes changed is built again at
        the next one. So a version moves exactly when the package's bytes do, whatever
        changed them (the cluster file, a template, the tool). A package whose inputs at
        the current version are unchanged, and whose previous bytes are the ones the
        store recorded for that version, is reused."""
        assert self.digests is not None
        fmt = STATE_FORMAT[w.name]
        versions, st = self.versions, self.st
        vkeys = [w.version_key(n.name) for n in nodes]  # a node's Nomad package: its name
        wants = [self._package_want(w, n, versions[k]) for n, k in zip(nodes, vkeys, strict=True)]

        def reuse(i: int) -> Artifact | None:
            current = st.current_version(nodes[i].name, fmt)
            if self.previous is None or current is None:
                return None
            old = self.previous.take(w.name, nodes[i].name, wants[i])
            if old is None or current != (versions[vkeys[i]], self.previous.sha256(old[0].path)):
                return None
            self._accept(old)
            return old[0]

        found: list[Artifact | None] = [None] * len(nodes)
        if self.previous is not None:
            self.previous.prefetch(w.name, zip([n.name for n in nodes], wants, strict=True))
            found = [reuse(i) for i in range(len(nodes))]
        reused = [a is not None for a in found]
        missing = [i for i, a in enumerate(found) if a is None]
        for i, arts in zip(missing, self._build_each(w, [nodes[i] for i in missing]), strict=True):
            found[i] = arts[0]
        changed: list[int] = []  # built again at the next version
        for i, node in enumerate(nodes):
            artifact = found[i]
            assert artifact is not None
            current = st.current_version(node.name, fmt)
            if reused[i] or (current is not None and current[1] == self.sha(artifact)):
                continue
            if current is not None:  # changed: the next version, built again
                versions[vkeys[i]] = current[0] + 1
                changed.append(i)
        if changed:
            bumped = dataclasses.replace(self.inputs, versions={**versions})
            again = self._build_each(w, [nodes[i] for i in changed], bumped)
            for i, arts in zip(changed, again, strict=True):
                found[i] = arts[0]
                wants[i] = self._package_want(w, nodes[i], versions[vkeys[i]])
        out: list[Artifact] = []
        for i, node in enumerate(nodes):
            artifact = found[i]
            assert artifact is not None
            if not reused[i]:
                self.shas.pop(artifact.path, None)
                st.set_version(node.name, fmt, versions[vkeys[i]], self.sha(artifact))
            self._record(w, node.name, wants[i], [artifact])
            out.append(artifact)
        return out

    def _package_want(self, w: Writer, node: Node, version: int) -> str:
        """A package's input digest at `version`. A Consul package is built from the
        node's Consul tree, not its Nomad tree: that tree's content digest stands in for
        the Nomad tree's key (so a changed Consul tree is never reused)."""
        assert self.digests is not None
        if w.name in CONSUL_WRITERS.values():
            tree = self.inputs.consul_trees[node.name].digest()
            return self.digests.per_node(w.name, node, version, [], tree=tree)
        return self.digests.per_node(w.name, node, version, [])


def _digest(artifact: Artifact) -> str:
    return hashlib.sha256(artifact.data).hexdigest()


class _Under(Sequence[Path]):
    """Paths under a directory, each made when read (a build publishes thousands and
    few callers read them)."""

    def __init__(self, top: Path, rels: list[str]) -> None:
        self._top, self._rels = top, rels

    def __len__(self) -> int:
        return len(self._rels)

    @overload
    def __getitem__(self, i: int) -> Path: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Path]: ...
    def __getitem__(self, i: int | slice) -> Path | Sequence[Path]:
        if isinstance(i, slice):
            return [self._top / rel for rel in self._rels[i]]
        return self._top / self._rels[i]


def _publish(
    p: Plan, b: _Built, trees: _Trees, previous: Mapping[str, Mapping[str, Any]] | None
) -> Sequence[Path]:
    out = p.out_dir
    assert out is not None
    artifacts, packages = b.artifacts, b.packages
    output_dir.sweep_staging(out)
    if p.replace_out:
        output_dir.set_aside(out)
    if p.request.command == "render":
        return output_dir.write_root(out, trees[p.nodes[0].name])
    if p.request.command == "build":
        paths = _Under(out, [a.path for a in artifacts])
        reused = b.previous.reused if b.previous is not None else set()
        everything_reused = (
            b.built == 0 and not p.replace_out and {a.path for a in artifacts} <= reused
        )
        if (
            everything_reused
            and b.previous is not None
            and b.previous.same_marker(artifacts, packages, b.records)
            and incremental.unchanged(out, [*artifacts, Artifact(output_dir.MARKER, b"", False)])
        ):
            return paths  # dist/ already holds exactly this build: nothing to do
        files = _tree_files(b, trees, previous)
        mark = incremental.add_inputs(
            output_dir.marker(artifacts, packages, files=files, digests=b.shas), b.records
        )
        kept = b.previous.reused_files() if b.previous is not None else {}
        publish.publish_tree(out, [*artifacts, mark], unchanged=kept)
        return paths
    written = publish.publish_files(out, artifacts)
    files = _tree_files(b, trees, previous)
    publish.publish_files(out, [output_dir.marker(artifacts, packages, previous, files)])
    return written


def node_names(cluster_file: Path) -> list[str]:
    """The cluster file's node names, or none when it does not load (for completion)."""
    try:
        return [n.name for n in cluster_mod.load(cluster_file).nodes]
    except (UserError, OSError):
        return []


def adopt_state(cluster_file: Path, state_dir: Path | None) -> list[str]:
    """Record every file of a store made before the ledger existed (deliberate, once)."""
    cluster = cluster_mod.load(cluster_file)
    with State.open(state_dir or cluster.source.parent / "state", create=True, adopt=True) as st:
        return list(st.warnings)


# ---------------------------------------------------------------- the plan's preview


def preview(p: Plan) -> Report:
    """What `build` would do to each node's package, and why; nothing written. A package
    whose secrets all exist is built in memory and compared with the stored digest."""
    changes: list[Change] = []
    with State.open(p.state_dir, create=False) as st:
        secrets = _secrets(p, st, p.nodes)
        mtime = p.source_date_epoch
        if mtime is None and secrets.ca is not None:
            mtime = int(inspect_cert(secrets.ca[1]).not_before.timestamp())
        marker = output_dir.read_marker(p.out_dir) if p.out_dir is not None else None
        previous = output_dir.newest_files(marker)
        for job in p.jobs:
            if job.writer.name in STATE_FORMAT:
                changes += _preview_packages(p, st, job, secrets, mtime, previous)
        events = list(st.events)
    return Report("check", changes, events, list(p.warnings))


def _preview_packages(
    p: Plan,
    st: State,
    job: Job,
    secrets: _Secrets,
    mtime: int | None,
    previous: Mapping[tuple[str, str], dict[str, str]],
) -> list[Change]:
    fmt = STATE_FORMAT[job.writer.name]
    out = []
    for node in job.nodes:
        before = p.known_versions.get((node.name, fmt))
        status, why = _package_outlook(p, st, job, node, secrets, mtime, previous)
        after = 1 if before is None else before + (status == "changed")
        key = job.writer.version_key(node.name)
        path = job.writer.outputs(p.cluster, [node], {key: after})[0].path
        out.append(Change(path, node.name, status, before, after, why))
    return out


def _package_outlook(
    p: Plan,
    st: State,
    job: Job,
    node: Node,
    secrets: _Secrets,
    mtime: int | None,
    previous: Mapping[tuple[str, str], dict[str, str]],
) -> tuple[str, tuple[str, ...]]:
    """(new | changed | unchanged, reasons) of the node's package in the next build."""
    fmt = STATE_FORMAT[job.writer.name]
    if (node.name, fmt) not in p.known_versions:
        return "new", ("new",)
    pending = [e for e in st.events if e.what == f"certificate {node.name}"]
    if pending:
        return "changed", report.package_reasons(node.name, {}, {}, pending)
    if mtime is None or not _keys_exist(p, secrets.keys):
        return "changed", ("a signing key is made first",)
    if job.writer.name in CONSUL_WRITERS.values():
        made = secrets.consul.get(node.name)
        if made is None:
            return "changed", ("its Consul secrets are made first",)
        tree = consul.render_tree(p.cluster, node, made)
        trees: dict[str, NodeTree] = {}
        consul_trees = {node.name: tree}
    else:
        tree = _with_trust(
            render_tree(p.cluster, node, node_secrets(p.cluster, node, st)), secrets.trust
        )
        trees, consul_trees = {node.name: tree}, {}
    inputs = BuildInputs(
        p.cluster, mtime, secrets.keys, trees, p.versions, consul_trees=consul_trees
    )
    artifact = job.writer.build(inputs, [node])[0]
    current = st.current_version(node.name, fmt)
    if current is not None and current[1] == _digest(artifact):
        return "unchanged", ()
    files = previous.get((node.name, fmt))
    return "changed", report.package_reasons(node.name, files, report.tree_files(tree), [])


def _keys_exist(p: Plan, keys: Keys) -> bool:
    if "signify" in p.keys_needed and keys.signify_secret is None:
        return False
    return not ("apt" in p.keys_needed and keys.apt_secret is None)
