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

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from builder import cluster as cluster_mod
from builder import consul, membership, output_dir, publish, report
from builder.errors import UserError
from builder.model import Cluster, Node
from builder.nodetree import NodeTree
from builder.os_profile import PROFILES, profile
from builder.pki import CertInfo, inspect_cert
from builder.render import ca_spec, cert_spec, node_secrets, render_tree
from builder.report import Change, Report
from builder.state import Event, State
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

T = TypeVar("T")
R = TypeVar("R")


def _parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    items = list(items)
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(len(items), os.cpu_count() or 2)) as pool:
        return list(pool.map(fn, items))


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

    def outputs(self) -> list[Output]:
        """Every path the jobs will produce, with the versions known now."""
        by_writer: dict[str, list[Output]] = {}
        for job in self.jobs:
            upstream = [o for need in job.writer.needs for o in by_writer.get(need, [])]
            by_writer[job.writer.name] = job.writer.outputs(
                self.cluster, job.nodes, self.versions, upstream
            )
        return [o for outs in by_writer.values() for o in outs]


def plan(request: Request) -> Plan:
    """Everything a run will do, checked; nothing written."""
    cluster = cluster_mod.load(request.cluster_file)
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
    return p


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
    _add_dependencies(wanted)
    return tuple(Job(w, wanted[w.name]) for w in all_writers() if wanted.get(w.name))


def _add_dependencies(wanted: dict[str, tuple[Node, ...]]) -> None:
    """A writer's needs are built for (at least) the same nodes."""
    for name in reversed([w.name for w in all_writers()]):
        for need in writer(name).needs if name in wanted else ():
            have = wanted.get(need, ())
            extra = tuple(n for n in wanted[name] if n not in have)
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
    # [consul.agent] on: each node's Consul secrets (None: read-only, not made yet)
    consul: Mapping[str, consul.ConsulSecrets | None] = field(default_factory=dict)


def _secrets(p: Plan, st: State, nodes: Sequence[Node]) -> _Secrets:
    """CA, gossip key, node certificates and signing keys: created in a writable store,
    checked (and what would be made, recorded) in a read-only one."""
    cluster = p.cluster
    ca = st.ca(ca_spec(cluster))
    if any(n.is_server for n in nodes):
        st.gossip_key()
    current = frozenset(
        n.name for n in nodes if st.node_cert(n.name, cert_spec(cluster, n), ca) is not None
    )
    name = cluster.packages.signing_key_name
    keys = Keys(signing_key_name=name)
    if "apt" in p.keys_needed:
        keys = Keys(name, apt_secret=_apt_key(cluster, st))
    if "signify" in p.keys_needed:
        sec, pub = _signify_pair(cluster, st)
        keys = Keys(name, keys.apt_secret, sec, pub)
    made: dict[str, consul.ConsulSecrets | None] = {}
    if consul.enabled(cluster):  # the Consul CA key stays in state/; certificates made once
        now = datetime.now(UTC)
        for n in nodes:
            made[n.name] = consul.consul_secrets(st, cluster, n, now=now)
    return _Secrets(ca, keys, current, made)


def _apt_key(cluster: Cluster, st: State) -> bytes | None:
    from builder import openpgp

    return st.secret("apt-signing.key", lambda: openpgp.generate_key(f"nomad-build {cluster.name}"))


def _signify_pair(cluster: Cluster, st: State) -> tuple[bytes | None, bytes | None]:
    from builder import signify

    name = cluster.packages.signing_key_name
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
    published: list[Path]
    events: list[Event]
    warnings: list[str]
    trees: dict[str, NodeTree]
    report: Report
    consul_trees: dict[str, NodeTree] = field(default_factory=dict)


def execute(p: Plan) -> Result:
    """Make the secrets, trees and artifacts of a clean plan and publish them; the store's
    lock is held until the output is in place."""
    with State.open(p.state_dir, create=True, wait=p.request.wait) as st:
        secrets = _secrets(p, st, p.nodes)
        trees = _render(p, st)
        consul_trees = _render_consul(p, secrets)
        mtime = p.source_date_epoch
        if mtime is None and secrets.ca is not None:
            mtime = int(inspect_cert(secrets.ca[1]).not_before.timestamp())
        assert mtime is not None
        artifacts, packages = _build(p, st, secrets.keys, trees, consul_trees, mtime)
        st.flush()  # versions first: a published package's number is never handed out again
        previous = output_dir.read_marker(p.out_dir) if p.out_dir is not None else None
        events = list(st.events)
        files = _package_files(packages, trees, consul_trees)
        changes = _report(p, artifacts, packages, files, previous, events)
        published = _publish(p, artifacts, packages, trees, files) if p.out_dir is not None else []
        changes.warnings = [*p.warnings, *st.warnings]
        return Result(artifacts, published, events, changes.warnings, trees, changes, consul_trees)


def _package_files(
    packages: _Packages, trees: dict[str, NodeTree], consul_trees: dict[str, NodeTree]
) -> dict[str, dict[str, str]]:
    """Each package's file digests (what the next run's reasons compare), by its path."""
    consul_formats = {STATE_FORMAT[w] for w in CONSUL_WRITERS.values()}
    return {
        path: report.tree_files((consul_trees if fmt in consul_formats else trees)[node])
        for path, (node, fmt, _) in packages.items()
    }


def _report(
    p: Plan,
    artifacts: list[Artifact],
    packages: _Packages,
    files: dict[str, dict[str, str]],
    previous: Mapping[str, Mapping[str, Any]] | None,
    events: list[Event],
) -> Report:
    why = {}
    for path, (node, fmt, _) in packages.items():
        before = output_dir.previous_files(previous, node, fmt)
        why[path] = report.package_reasons(node, before, files[path], events)
    changes = report.artifact_changes(artifacts, previous, packages, p.known_versions, why)
    return Report(p.request.command, changes, events)


def _render(p: Plan, st: State) -> dict[str, NodeTree]:
    needed = {n.name: n for job in p.jobs for n in job.nodes} or {n.name: n for n in p.nodes}
    # Secrets one after another (the store is the single writer of state/), trees in parallel.
    pairs = [(n, node_secrets(p.cluster, n, st)) for n in needed.values()]
    trees = _parallel(lambda ns: render_tree(p.cluster, ns[0], ns[1]), pairs)
    return {t.node: t for t in trees}


def _render_consul(p: Plan, secrets: _Secrets) -> dict[str, NodeTree]:
    """The Consul agent trees of the nodes the Consul package writers build for."""
    wanted = {n.name: n for job in p.jobs if job.writer.name in CONSUL_WRITERS.values()
              for n in job.nodes}  # fmt: skip
    out = {}
    for name, node in wanted.items():
        made = secrets.consul.get(name)
        assert made is not None, "a writable store makes the Consul secrets"
        out[name] = consul.render_tree(p.cluster, node, made)
    return out


_Packages = dict[str, tuple[str, str, int]]  # package path -> (node, format, version)


def _build(
    p: Plan,
    st: State,
    keys: Keys,
    trees: dict[str, NodeTree],
    consul_trees: dict[str, NodeTree],
    mtime: int,
) -> tuple[list[Artifact], _Packages]:
    """Each job once, in registry order; packages get their versions on the way and are
    handed to the writers that need them."""
    built: dict[str, list[Artifact]] = {}
    versions = dict(p.versions)
    packages: _Packages = {}
    for job in p.jobs:
        w = job.writer
        inputs = BuildInputs(p.cluster, mtime, keys, trees, versions, built, consul_trees)
        if w.name in STATE_FORMAT:
            built[w.name] = _versioned(st, w, inputs, job.nodes, versions)
            for a in built[w.name]:
                assert a.node is not None
                version = versions[w.version_key(a.node)]
                packages[a.path] = (a.node, STATE_FORMAT[w.name], version)
        elif w.per_node:
            per_node = _parallel(lambda n: w.build(inputs, [n]), job.nodes)  # noqa: B023
            built[w.name] = [a for arts in per_node for a in arts]
        else:
            built[w.name] = w.build(inputs, job.nodes)
    return [a for arts in built.values() for a in arts], packages


def _versioned(
    st: State, w: Writer, inputs: BuildInputs, nodes: Sequence[Node], versions: dict[str, int]
) -> list[Artifact]:
    """Build at the current version; a package whose bytes changed is built again at the
    next one. So a version moves exactly when the package's bytes do, whatever changed
    them (the cluster file, a template, the tool)."""
    fmt = STATE_FORMAT[w.name]
    first = _parallel(lambda n: w.build(inputs, [n])[0], nodes)
    out: list[Artifact] = []
    for node, artifact in zip(nodes, first, strict=True):
        current = st.current_version(node.name, fmt)
        if current is not None and current[1] == _digest(artifact):
            out.append(artifact)
            continue
        key = w.version_key(node.name)
        if current is not None:  # changed: the next version, built again
            versions[key] = current[0] + 1
            bumped = dataclasses.replace(inputs, versions={**versions})
            artifact = w.build(bumped, [node])[0]
        st.set_version(node.name, fmt, versions[key], _digest(artifact))
        out.append(artifact)
    return out


def _digest(artifact: Artifact) -> str:
    return hashlib.sha256(artifact.data).hexdigest()


def _publish(
    p: Plan,
    artifacts: list[Artifact],
    packages: _Packages,
    trees: dict[str, NodeTree],
    files: dict[str, dict[str, str]],
) -> list[Path]:
    out = p.out_dir
    assert out is not None
    output_dir.sweep_staging(out)
    if p.replace_out:
        output_dir.set_aside(out)
    if p.request.command == "render":
        return output_dir.write_root(out, trees[p.nodes[0].name])
    if p.request.command == "build":
        mark = output_dir.marker(artifacts, packages, files=files)
        return publish.publish_tree(out, [*artifacts, mark])[:-1]
    paths = publish.publish_files(out, artifacts)
    previous = output_dir.read_marker(out) if out.is_dir() else None
    publish.publish_files(out, [output_dir.marker(artifacts, packages, previous, files)])
    return paths


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
        previous = output_dir.read_marker(p.out_dir) if p.out_dir is not None else None
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
    previous: Mapping[str, Mapping[str, Any]] | None,
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
    previous: Mapping[str, Mapping[str, Any]] | None,
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
        trees = {}
        consul_trees = {node.name: tree}
    else:
        tree = render_tree(p.cluster, node, node_secrets(p.cluster, node, st))
        trees, consul_trees = {node.name: tree}, {}
    inputs = BuildInputs(
        p.cluster, mtime, secrets.keys, trees, p.versions, consul_trees=consul_trees
    )
    artifact = job.writer.build(inputs, [node])[0]
    current = st.current_version(node.name, fmt)
    if current is not None and current[1] == _digest(artifact):
        return "unchanged", ()
    files = output_dir.previous_files(previous, node.name, fmt)
    return "changed", report.package_reasons(node.name, files, report.tree_files(tree), [])


def _keys_exist(p: Plan, keys: Keys) -> bool:
    if "signify" in p.keys_needed and keys.signify_secret is None:
        return False
    return not ("apt" in p.keys_needed and keys.apt_secret is None)
