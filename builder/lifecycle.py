"""Certificate lifecycle: status, renewal, operator certificates (the `pki` commands).

Everything goes through the secrets store (builder.state); the decisions about a stored
certificate come from builder.cert_policy. Nomad's certificates and (with [consul.agent]
on) Consul's are handled alike, each through its builder.authority.Authority.
`status()` is read-only; the others open the store for writing (and hold its lock) only
after the same checks.

`pki status --json` follows docs/output.schema.json (schema 1, shared by every --json
document): adding a field is compatible, renaming or removing one bumps "schema".
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from builder import cluster as cluster_mod
from builder import consul, output_dir, pki, rotation
from builder.authority import CONSUL, NOMAD, Authority, authorities
from builder.cert_policy import ca_verdict, cert_problems
from builder.errors import UserError
from builder.model import Cluster, Node
from builder.render import ca_spec
from builder.state import NOMAD_CA, CAFiles, Event, State, way_out

STATUS_FORMAT = 1
# Worst first: a node's state is the worst that applies.
STATES = ("damaged", "missing", "expired", "stale", "expiring", "ok")


def _now() -> datetime:
    return datetime.now(UTC)


def _load(cluster_file: Path, state_dir: Path | None) -> tuple[Cluster, Path]:
    cluster = cluster_mod.load(cluster_file)
    return cluster, state_dir or cluster.source.parent / "state"


def _iso(d: datetime) -> str:
    return d.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- status


@dataclass(frozen=True)
class CertReport:
    node: str
    role: str
    state: str  # one of STATES
    reasons: tuple[str, ...]
    info: pki.CertInfo | None
    days_left: int | None


@dataclass(frozen=True)
class AuthorityStatus:
    """A CA's state and that of every node certificate it signs."""

    state: str  # ok | expiring | expired | missing | damaged (its key or certificate)
    reason: str | None
    ca: pki.CertInfo | None
    nodes: list[CertReport]

    @property
    def action_needed(self) -> bool:
        return self.state != "ok" or any(n.state != "ok" for n in self.nodes)

    def as_json(self, now: datetime) -> dict[str, Any]:
        ca: dict[str, Any] = {"state": self.state, "reason": self.reason}
        if self.ca is not None:
            ca |= {
                "common_name": self.ca.subject_cn,
                "permitted_dns": list(self.ca.permitted_dns),
                "serial": f"{self.ca.serial:x}",
                "not_before": _iso(self.ca.not_before),
                "not_after": _iso(self.ca.not_after),
                "days_left": (self.ca.not_after - now).days,
            }
        return {"ca": ca, "nodes": [_node_json(n) for n in self.nodes]}


def _node_json(n: CertReport) -> dict[str, Any]:
    entry: dict[str, Any] = {"node": n.node, "role": n.role, "state": n.state}
    entry["reasons"] = list(n.reasons)
    if n.info is not None:
        entry |= {
            "common_name": n.info.subject_cn,
            "dns_names": list(n.info.dns_names),
            "ip_addresses": list(n.info.ip_addresses),
            "serial": f"{n.info.serial:x}",
            "not_before": _iso(n.info.not_before),
            "not_after": _iso(n.info.not_after),
            "days_left": n.days_left,
        }
    return entry


@dataclass
class StatusReport:
    cluster: Cluster
    now: datetime
    nomad: AuthorityStatus
    consul: AuthorityStatus | None  # [consul.agent] on
    rotations: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    damage: list[dict[str, str | None]] = field(default_factory=list)  # see _store_damage

    # Nomad's, by the names callers have always used
    @property
    def ca_state(self) -> str:
        return self.nomad.state

    @property
    def ca_reason(self) -> str | None:
        return self.nomad.reason

    @property
    def ca(self) -> pki.CertInfo | None:
        return self.nomad.ca

    @property
    def nodes(self) -> list[CertReport]:
        return self.nomad.nodes

    @property
    def action_needed(self) -> bool:
        return (
            self.nomad.action_needed
            or (self.consul is not None and self.consul.action_needed)
            or any(r is not None for r in self.rotations.values())
            or bool(self.damage)
        )

    def as_json(self) -> dict[str, Any]:
        nomad = self.nomad.as_json(self.now)
        return {
            "schema": STATUS_FORMAT,
            "command": "pki status",
            "cluster": self.cluster.name,
            "region": self.cluster.region,
            "generated": _iso(self.now),
            "action_needed": self.action_needed,
            "ca": nomad["ca"],
            "nodes": nomad["nodes"],
            "consul": self.consul.as_json(self.now) if self.consul is not None else None,
            "rotations": self.rotations,
            "damage": self.damage,
            "warnings": self.warnings,
        }


def _node_state(
    info: pki.CertInfo | None, problems: list[str], now: datetime, within: timedelta | None
) -> str:
    if info is None:
        return "missing"
    if info.not_after <= now:
        return "expired"
    if any(not p.startswith("expires ") for p in problems):
        return "stale"
    if problems or (within is not None and info.not_after - now < within):
        return "expiring"
    return "ok"


def _cert_reports(
    cluster: Cluster,
    st: State,
    ca: tuple[bytes, bytes] | None,
    now: datetime,
    within: timedelta | None = None,
    auth: Authority = NOMAD,
    skip: frozenset[str] = frozenset(),
    damage: dict[str, str] | None = None,
) -> list[CertReport]:
    """`skip`: nodes left out; `damage`: {store file: refusal}, a node whose key or
    certificate is in it is reported "damaged" without reading either."""
    ca_end = pki.inspect_cert(ca[1]).not_after if ca is not None else None
    out = []
    for node in cluster.nodes:
        if node.name in skip:  # lost or changed: replaced without reading it
            continue
        files = auth.cert_files(st, node.name)
        broken = [damage[rel] for rel in (files.key, files.cert) if damage and rel in damage]
        if broken:
            role = auth.role(cluster, node)
            out.append(CertReport(node.name, role, "damaged", tuple(broken), None, None))
            continue
        info = st.cert_info(node.name, files)
        problems: list[str] = []
        if info is not None:
            cert = st.read_file(files.cert)
            assert cert is not None
            signed = ca is not None and pki.cert_signed_by(cert, ca[1])
            spec = auth.cert_spec(cluster, node)
            problems = cert_problems(info, spec, signed_by_ca=signed, ca_not_after=ca_end, now=now)
        state = _node_state(info, problems, now, within)
        if state == "expiring" and not problems and within is not None and info is not None:
            problems = [f"expires {info.not_after.date().isoformat()} (within {within.days} days)"]
        days = (info.not_after - now).days if info is not None else None
        role = auth.role(cluster, node)
        out.append(CertReport(node.name, role, state, tuple(problems), info, days))
    return out


def _stored_ca(st: State, files: CAFiles = NOMAD_CA) -> tuple[bytes, bytes] | None:
    key, cert = st.read_file(files.key), st.read_file(files.cert)
    if key is None or cert is None:
        return None
    return key, cert


def _store_damage(cluster: Cluster, st: State) -> dict[str, str]:
    """{store file: its one-line refusal} for every CA, node and gossip key file that is
    lost or changed since the store wrote it; reads only."""
    rels = []
    for auth in authorities(cluster):
        rels += [auth.ca_files.key, auth.ca_files.cert]
        for node in cluster.nodes:
            pair = auth.cert_files(st, node.name)
            rels += [pair.key, pair.cert]
    if cluster.servers:
        rels.append(rotation.NOMAD_GOSSIP.current)
    if consul.enabled(cluster):
        rels.append(rotation.CONSUL_GOSSIP.current)
    found = {rel: st.problem(rel) for rel in rels}
    return {rel: problem for rel, problem in found.items() if problem is not None}


def _damage_json(damage: dict[str, str]) -> list[dict[str, str | None]]:
    return [
        {"file": rel, "problem": problem, "way_out": way_out(rel) or None}
        for rel, problem in damage.items()
    ]


def _authority_status(
    cluster: Cluster, st: State, auth: Authority, now: datetime, damage: dict[str, str]
) -> AuthorityStatus:
    files = auth.ca_files
    broken = [damage[rel] for rel in (files.key, files.cert) if rel in damage]
    if broken:
        cert = None if files.cert in damage else st.read_file(files.cert)
        ca = (b"", cert) if cert is not None else None  # (only its certificate is used)
        nodes = _cert_reports(cluster, st, ca, now, auth=auth, damage=damage)
        info = pki.inspect_cert(cert) if cert is not None else None
        return AuthorityStatus("damaged", "; ".join(broken), info, nodes)
    ca = _stored_ca(st, files)
    ca_info = pki.inspect_cert(ca[1]) if ca is not None else None
    nodes = _cert_reports(cluster, st, ca, now, auth=auth, damage=damage)
    if ca_info is None:
        missing = f"no {auth.title} yet: `nomad-build pki renew` or a build makes it"
        return AuthorityStatus("missing", missing, None, nodes)
    refusal, warning = ca_verdict(ca_info, auth.ca_spec(cluster), now)
    reason = refusal or warning
    if ca_info.not_after <= now:
        state = "expired"
    elif reason is not None:
        state = "expiring"
    else:
        state = "ok"
    return AuthorityStatus(state, reason, ca_info, nodes)


def status(
    cluster_file: Path, state_dir: Path | None, *, clock: Callable[[], datetime] = _now
) -> StatusReport:
    """The CA, every node certificate (Nomad's, and Consul's with [consul.agent] on) and
    any rotation under way; writes nothing."""
    cluster, directory = _load(cluster_file, state_dir)
    now = clock()
    with State.open(directory, create=False, clock=clock) as st:
        damage = _store_damage(cluster, st)
        nomad = _authority_status(cluster, st, NOMAD, now, damage)
        consul_status = (
            _authority_status(cluster, st, CONSUL, now, damage) if consul.enabled(cluster) else None
        )
        rotations = rotation.status(st)
        return StatusReport(
            cluster, now, nomad, consul_status, rotations, list(st.warnings), _damage_json(damage)
        )


# ---------------------------------------------------------------- renew


@dataclass
class Outcome:
    events: list[Event]
    warnings: list[str]
    lines: list[str] = field(default_factory=list)  # what to do next (stdout)
    data: dict[str, Any] = field(default_factory=dict)  # --json


def _chosen(cluster: Cluster, only: str | None) -> tuple[Authority, ...]:
    """The authorities `pki renew` works on: both by default (everything of a node that
    needs it), or only the one `--only` names."""
    if only is None:
        return authorities(cluster)
    if only == "consul" and not consul.enabled(cluster):
        raise UserError(
            f"{cluster.source}: pki renew --only consul: consul.agent.enabled is not true, "
            "so there are no Consul certificates"
        )
    return tuple(a for a in authorities(cluster) if a.name == only)


def renew(
    cluster_file: Path,
    state_dir: Path | None,
    *,
    nodes: Sequence[str] = (),
    all_nodes: bool = False,
    within_days: int | None = None,
    rekey: bool = False,
    only: str | None = None,
    clock: Callable[[], datetime] = _now,
) -> Outcome:
    """Re-issue what is missing, stale or expiring (within the renewal window, or
    `within_days`), or exactly the named nodes, or all; `rekey`: new key pairs. Nomad's
    and (with [consul.agent] on) Consul's certificates, or `only` one of them."""
    cluster, directory = _load(cluster_file, state_dir)
    wanted = tuple(cluster.node(n) for n in dict.fromkeys(nodes))  # unknown: UserError
    if rekey and not (wanted or all_nodes):
        raise UserError("pki renew --rekey: name the compromised nodes with --node, or --all")
    if wanted and all_nodes:
        raise UserError("pki renew: --node and --all exclude each other")
    chosen = _chosen(cluster, only)
    within = timedelta(days=within_days) if within_days is not None else None
    # The read-only pass first: a damaged store is refused before anything is written.
    # Only --rekey of a named node replaces its lost or changed pair (the way out the
    # refusal names); every other damaged file is still refused.
    with State.open(directory, create=False, clock=clock) as ro:
        damaged = {a.name: _damaged_pairs(ro, a, wanted) if rekey else {} for a in chosen}
        for auth in chosen:
            ca = _stored_ca(ro, auth.ca_files)
            _cert_reports(cluster, ro, ca, clock(), auth=auth, skip=frozenset(damaged[auth.name]))
    with State.open(directory, create=True, clock=clock) as st:
        for auth in chosen:
            _renew_authority(
                cluster, st, auth, wanted, all_nodes, within, rekey, damaged[auth.name]
            )
        lines = [
            _replaced_line(st, node, why) for a in chosen for node, why in damaged[a.name].items()
        ]
        if any(damaged.values()):
            rotation.record_lost(st, "node_key", sorted({n for d in damaged.values() for n in d}))
        if any(e.kind == "reissued" for e in st.events):
            lines.append(
                "next: `nomad-build build` (only the affected packages get a new version), "
                "then upgrade those nodes; certificates alone make the agent reload (SIGHUP), "
                "not restart"
            )
        return Outcome(list(st.events), list(st.warnings), lines)


def _renew_authority(
    cluster: Cluster,
    st: State,
    auth: Authority,
    wanted: Sequence[Node],
    all_nodes: bool,
    within: timedelta | None,
    rekey: bool,
    damaged: dict[str, str],
) -> None:
    ca = st.ca(auth.ca_spec(cluster), auth.ca_files)
    assert ca is not None
    if auth is CONSUL:
        consul.gossip_key(st)
    elif cluster.servers:
        st.gossip_key()
    now = st.clock()
    reports = {
        r.node: r for r in _cert_reports(cluster, st, ca, now, within, auth, frozenset(damaged))
    }
    forced: dict[str, str] = {}
    targets: Sequence[Node] = wanted or cluster.nodes
    for node in targets:
        if node.name in damaged:
            continue
        r = reports[node.name]
        if wanted or all_nodes:
            why = "new key pair (--rekey)" if rekey else "asked for (--node/--all)"
            forced[node.name] = "; ".join([*r.reasons, why]) if r.reasons else why
        elif r.state == "expiring" and within is not None:
            forced[node.name] = "; ".join(r.reasons)
    for node in targets:
        spec = auth.cert_spec(cluster, node)
        files = auth.cert_files(st, node.name)
        if node.name in damaged:
            reason = f"{damaged[node.name]}: new key pair (--rekey)"
            st.reissue_node_cert(
                node.name, spec, ca, rekey=True, reason=reason, files=files, replace_damaged=True
            )
        elif node.name in forced and reports[node.name].info is not None:
            reason = forced[node.name]
            st.reissue_node_cert(node.name, spec, ca, rekey=rekey, reason=reason, files=files)
        else:
            st.node_cert(node.name, spec, ca, files)


def _damaged_pairs(st: State, auth: Authority, wanted: Sequence[Node]) -> dict[str, str]:
    """{node: which of its files is lost or changed} among `wanted`, for `auth`."""
    out = {}
    for node in wanted:
        files = auth.cert_files(st, node.name)
        bad = [rel for rel in (files.key, files.cert) if st.problem(rel) is not None]
        if bad:
            out[node.name] = " and ".join(f"{rel} ({_lost_or_changed(st, rel)})" for rel in bad)
    return out


def _lost_or_changed(st: State, rel: str) -> str:
    return "changed" if (st.directory / rel).exists() else "lost"


def _replaced_line(st: State, node: str, why: str) -> str:
    return (
        f"replaced {node}'s {why} with a new key pair and certificate (recorded in "
        f"{st.directory / rotation.RECORD}); redeploy {node}: `nomad-build build`, then "
        "upgrade its package(s)"
    )


# ---------------------------------------------------------------- operator certificate


def _inside_output(path: Path) -> Path | None:
    for p in (path, *path.parents):
        if p.is_dir() and output_dir.made_by_us(p):
            return p
    return None


def cli_cert(
    cluster_file: Path,
    state_dir: Path | None,
    *,
    name: str,
    days: int | None,
    out: Path | None,
    addr: str,
    clock: Callable[[], datetime] = _now,
) -> Outcome:
    """An operator certificate (`cli.<region>.nomad`, no IP SANs, as `nomad tls cert create
    -cli`) and an env file for the nomad CLI, 0600 in state/cli/<name>/ (or `out`)."""
    cluster, directory = _load(cluster_file, state_dir)
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise UserError(f"pki cli-cert --name: {name!r} is not a plain file name")
    days = days if days is not None else cluster.pki.cert_days
    if days < 1:
        raise UserError(f"pki cli-cert --days: {days} must be at least 1")
    if out is not None:
        where = _inside_output(out.resolve())
        if where is not None:
            raise UserError(
                f"{out}: inside the output directory {where}, which is published; "
                "an operator key never goes there"
            )
        if out.resolve().is_relative_to(directory.resolve()):
            raise UserError(f"{out}: inside the state; leave --out away to use state/cli/{name}")
    cn = f"cli.{cluster.region}.nomad"
    with State.open(directory, create=True, clock=clock) as st:
        ca = st.ca(ca_spec(cluster))
        assert ca is not None
        now = clock()
        if now + timedelta(days=days) > pki.inspect_cert(ca[1]).not_after:
            raise UserError(f"pki cli-cert --days {days}: would outlive the CA; use fewer days")
        key, cert = pki.issue_cert(
            ca_key_pem=ca[0],
            ca_cert_pem=ca[1],
            common_name=cn,
            dns_names=(cn, "localhost"),
            ip_addresses=(),
            days=days,
            now=now,
            backdate=timedelta(minutes=cluster.pki.backdate_minutes),
        )
        bundle = st.ca_bundle() or ca[1]
        base = out if out is not None else directory / "cli" / name
        files = {"ca.pem": bundle, "cli.pem": cert, "cli-key.pem": key}
        env = (
            f"# nomad CLI as {name} for cluster {cluster.name}: `. {base.resolve()}/nomad.env`\n"
            f"export NOMAD_ADDR={addr}\n"
            f"export NOMAD_CACERT={base.resolve()}/ca.pem\n"
            f"export NOMAD_CLIENT_CERT={base.resolve()}/cli.pem\n"
            f"export NOMAD_CLIENT_KEY={base.resolve()}/cli-key.pem\n"
            f"export NOMAD_TLS_SERVER_NAME=server.{cluster.region}.nomad\n"
        )
        files["nomad.env"] = env.encode()
        if out is None:
            st.write_files({f"cli/{name}/{f}": (data, True) for f, data in files.items()})
        else:
            _write_private(out, files)
        info = pki.inspect_cert(cert)
        event = Event("created", f"operator certificate {name}", f"{cn}, {days} days")
        return Outcome(
            [*st.events, event],
            list(st.warnings),
            [str(base / "nomad.env")],
            {"env_file": str(base / "nomad.env"), "not_after": _iso(info.not_after)},
        )


def _write_private(out: Path, files: dict[str, bytes]) -> None:
    from builder import atomic_io

    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    atomic_io.write_atomic([(out / n, data, 0o600) for n, data in files.items()])
