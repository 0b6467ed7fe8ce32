"""`nomad-build audit`: open every artifact and report each secret found in it.

Containers are opened recursively by their bytes, not their names: ar (.deb), gzip,
tar (data.tar, OpenBSD packages, site sets), ISO9660 (seeds, via pycdlib), and the
base64 `write_files` of cloud-init user-data. Each leaf file is searched for the
secrets the state holds (CA keys of every generation, the apt and signify secret keys,
node keys, gossip keys, operator keys) and for any private key block at all.

An artifact belongs to the nodes whose certificate (Nomad's or Consul's) it carries.
Violations (exit 1): a CA (Nomad's or Consul's) or signing secret anywhere, an operator
key anywhere, an unidentified private key, a node key (Nomad's or Consul's) in an
artifact that is not that node's alone, a Nomad gossip key in an artifact of a node that
is not a server, a Consul gossip key in an artifact that is no Consul agent's (every
Consul agent, clients too, shares the LAN gossip key; an artifact is a Consul agent's
when it carries that node's Consul certificate), a secret whose file mode lets others
read it.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pycdlib

from builder import cluster as cluster_mod
from builder import consul
from builder.errors import UserError
from builder.model import Cluster
from builder.state import State

_PEM_BODY = re.compile(rb"-----BEGIN ([A-Z ]+)-----\s+([A-Za-z0-9+/=\s]+?)-----END \1-----")
_ANY_PRIVATE = re.compile(rb"-----BEGIN (?:[A-Z ]+ )?PRIVATE KEY(?: BLOCK)?-----")
_SIGNIFY_SECRET = re.compile(rb"untrusted comment: [^\n]*secret key\n")


@dataclass(frozen=True)
class Secret:
    # ca-key | apt-key | signify-key | node-key | gossip-key | operator-key |
    # consul-ca-key | consul-node-key | consul-gossip-key
    kind: str
    label: str  # "node key bi-core-sbg-1"
    node: str | None
    needles: tuple[bytes, ...]


@dataclass
class Finding:
    artifact: str  # relative to the audited directory
    where: str  # the path inside it ("" for the file itself)
    secret: str
    kind: str
    mode: str | None
    owner: str | None
    violation: str | None = None


@dataclass
class Report:
    directory: str
    artifacts: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def violations(self) -> list[Finding]:
        return [f for f in self.findings if f.violation is not None]

    def as_json(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "command": "audit",
            "directory": self.directory,
            "artifacts": self.artifacts,
            "ok": not self.violations,
            "findings": [asdict(f) for f in self.findings],
        }


def _squash(data: bytes) -> bytes:
    return re.sub(rb"\s+", b"", data)


def _pem_needles(pem: bytes) -> tuple[bytes, ...]:
    m = _PEM_BODY.search(pem)
    return (_squash(m.group(2)),) if m else (_squash(pem),)


_CONSUL_NODE = re.compile(r"consul-(?P<node>[^/]+)\.(?P<ext>key|pem)")


def _consul_secret(st: State, rel: str, certs: dict[str, bytes]) -> Secret | None:
    """A Consul secret of the store (consul-*), or None; a node's Consul certificate goes
    into `certs` (Consul agent artifacts are recognised by it)."""
    parts = rel.split("/")
    if rel == consul.CONSUL_CA.key or (parts[0] == "consul-ca" and rel.endswith(".key")):
        raw = st.read_file(rel)
        return Secret("consul-ca-key", f"Consul CA key ({rel})", None, _pem_needles(raw or b""))
    if rel == consul.GOSSIP_KEY or (parts[0] == "consul-gossip" and rel.endswith(".key")):
        raw = st.read_file(rel)
        return Secret(
            "consul-gossip-key", f"Consul gossip key ({rel})", None, ((raw or b"").strip(),)
        )
    m = _CONSUL_NODE.fullmatch(rel)
    if m is None or rel == consul.CONSUL_CA.cert:
        return None
    node, raw = m["node"], st.read_file(rel)
    if not raw:
        return None
    if m["ext"] == "pem":
        certs[node] = _pem_needles(raw)[0]
        return None
    return Secret("consul-node-key", f"Consul key {node}", node, _pem_needles(raw))


def _known_secrets(
    st: State, cluster: Cluster
) -> tuple[list[Secret], dict[str, bytes], dict[str, bytes]]:
    """Every secret the state holds, and each node's certificate, Nomad's and Consul's
    (to attribute artifacts)."""
    out: list[Secret] = []
    certs: dict[str, bytes] = {}
    consul_certs: dict[str, bytes] = {}
    root = st.directory
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        rel = path.relative_to(root).as_posix()
        parts = rel.split("/")
        if rel.startswith("consul-"):
            found = _consul_secret(st, rel, consul_certs)
            if found is not None and any(found.needles):
                out.append(found)
        elif parts[0] == "ca" and rel.endswith(".key"):
            raw = st.read_file(rel)
            if raw:
                out.append(Secret("ca-key", f"CA key ({rel})", None, _pem_needles(raw)))
        elif parts[0] == "nodes" and len(parts) == 3:
            raw = st.read_file(rel)
            if raw and parts[2] == "key.pem":
                out.append(Secret("node-key", f"node key {parts[1]}", parts[1], _pem_needles(raw)))
            elif raw and parts[2] == "cert.pem":
                certs[parts[1]] = _pem_needles(raw)[0]
        elif parts[0] == "cli" and rel.endswith("-key.pem"):
            raw = st.read_file(rel)
            if raw:
                out.append(Secret("operator-key", f"operator key ({rel})", None, _pem_needles(raw)))
        elif rel == "apt-signing.key":
            raw = st.read_file(rel)
            if raw:
                out.append(Secret("apt-key", "apt signing key", None, _pem_needles(raw)))
        elif rel.endswith(".sec"):
            raw = st.read_file(rel)
            if raw:
                lines = [ln for ln in raw.splitlines() if ln and not ln.startswith(b"untrusted")]
                out.append(Secret("signify-key", f"signify key {rel}", None, tuple(lines)))
        elif rel in ("gossip.key", "gossip-next.key") or parts[0] == "gossip-history":
            raw = st.read_file(rel)
            if raw:
                out.append(Secret("gossip-key", f"gossip key ({rel})", None, (raw.strip(),)))
    return out, certs, consul_certs


# ---------------------------------------------------------------- opening containers


@dataclass(frozen=True)
class Leaf:
    where: str
    data: bytes
    mode: int | None
    owner: str | None


def _ar_members(data: bytes) -> Iterator[tuple[str, bytes]]:
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip() or 0)
        yield name, data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)


def _iso_files(data: bytes) -> Iterator[tuple[str, bytes]]:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        rr = iso.has_rock_ridge()
        arg = "rr_path" if rr else "iso_path"
        for dirname, _dirs, files in iso.walk(**{arg: "/"}):
            for f in files:
                buf = io.BytesIO()
                path = f"{dirname.rstrip('/')}/{f}"
                iso.get_file_from_iso_fp(buf, **{arg: path})
                yield path, buf.getvalue()
    finally:
        iso.close()


_WRITE_FILE = re.compile(r"^\s*- path: (.*)$")
_FIELD = re.compile(r"^\s+(encoding|content|owner|permissions): (.*)$")


def _unquote(v: str) -> str:
    v = v.strip()
    return v[1:-1] if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'" else v


def _write_files(text: str) -> Iterator[tuple[str, bytes, int | None, str | None]]:
    """cloud-init write_files entries with encoding b64: (path, bytes, mode, owner)."""
    entry: dict[str, str] = {}
    for line in [*text.splitlines(), "- path: end"]:
        m = _WRITE_FILE.match(line)
        if m:
            if entry.get("encoding") == "b64" and "content" in entry:
                try:
                    raw = base64.b64decode(entry["content"], validate=True)
                except (binascii.Error, ValueError):
                    raw = None
                if raw is not None:
                    perm = entry.get("permissions")
                    mode = int(perm, 8) if perm and perm.isdigit() else None
                    yield entry["path"], raw, mode, entry.get("owner")
            entry = {"path": _unquote(m.group(1))}
            continue
        f = _FIELD.match(line)
        if f and entry:
            entry[f.group(1)] = _unquote(f.group(2))


def _open(where: str, data: bytes, mode: int | None, owner: str | None) -> Iterator[Leaf]:
    """The leaves of `data`, recursively; an unknown format is itself a leaf."""
    prefix = f"{where}:" if where else ""
    if data.startswith(b"!<arch>\n"):
        for name, member in _ar_members(data):
            yield from _open(prefix + name, member, mode, owner)
        return
    if data.startswith(b"\x1f\x8b"):
        try:
            inner = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            inner = None
        if inner is not None:
            yield from _open(where, inner, mode, owner)
            return
    if len(data) > 262 and data[257:262] == b"ustar":
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                members = [(m, tar.extractfile(m)) for m in tar.getmembers() if m.isfile()]
                for m, f in members:
                    assert f is not None
                    who = f"{m.uname or m.uid}:{m.gname or m.gid}"
                    yield from _open(prefix + m.name, f.read(), m.mode, who)
            return
        except tarfile.TarError:
            pass
    if len(data) > 0x8006 and data[0x8001:0x8006] == b"CD001":
        for name, member in _iso_files(data):
            yield from _open(prefix + name.lstrip("/"), member, mode, owner)
        return
    if data.startswith(b"#cloud-config"):
        for path, raw, fmode, fowner in _write_files(data.decode("utf-8", "replace")):
            yield from _open(prefix + path, raw, fmode, fowner)
    yield Leaf(where, data, mode, owner)


# ---------------------------------------------------------------- the audit


def _mode(mode: int | None) -> str | None:
    return None if mode is None else f"{mode & 0o7777:04o}"


def _attribute(leaves: list[Leaf], certs: dict[str, bytes]) -> set[str]:
    owners = set()
    for leaf in leaves:
        squashed = _squash(leaf.data)
        for node, needle in certs.items():
            if needle in squashed:
                owners.add(node)
    return owners


@dataclass(frozen=True)
class Owners:
    """Whose artifact it is: the nodes whose Nomad / Consul certificate it carries."""

    nomad: set[str]
    consul: set[str]


_NEVER = ("ca-key", "consul-ca-key", "apt-key", "signify-key", "operator-key")


def _violation(secret: Secret, owned: Owners, cluster: Cluster, mode: int | None) -> str | None:
    owners = owned.nomad | owned.consul
    if secret.kind in _NEVER:
        return f"a {secret.label} never belongs in an artifact"
    if secret.kind in ("node-key", "consul-node-key") and owners != {secret.node}:
        whose = ", ".join(sorted(owners)) or "no node"
        what = "node key" if secret.kind == "node-key" else "Consul key"
        return f"{what} of {secret.node} in an artifact of {whose}"
    if secret.kind == "consul-gossip-key" and not (consul.enabled(cluster) and owned.consul):
        whose = ", ".join(sorted(owners)) or "no node"
        return f"Consul gossip key in an artifact of {whose} that is no Consul agent's"
    if secret.kind == "gossip-key":
        names = {n.name: n for n in cluster.nodes}
        clients = sorted(o for o in owners if o in names and not names[o].is_server)
        if clients or not owned.nomad:  # a Consul package is no place for it either
            whose = ", ".join(clients) or "no Nomad agent"
            return f"gossip key in an artifact of {whose} (not a server)"
    if mode is not None and mode & 0o004:
        return f"readable by others (mode {_mode(mode)})"
    return None


def audit(directory: Path, cluster_file: Path, state_dir: Path | None) -> Report:
    if not directory.is_dir():
        raise UserError(f"{directory}: not a directory (the output of a build, e.g. dist/)")
    cluster = cluster_mod.load(cluster_file)
    with State.open(state_dir or cluster.source.parent / "state", create=False) as st:
        secrets, certs, consul_certs = _known_secrets(st, cluster)
    report = Report(str(directory))
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        report.artifacts += 1
        disk_mode = path.stat().st_mode & 0o7777
        leaves = list(_open("", path.read_bytes(), None, None))
        owners = Owners(_attribute(leaves, certs), _attribute(leaves, consul_certs))
        for leaf in leaves:
            squashed = _squash(leaf.data)
            known = False
            for secret in secrets:
                if not any(n and n in squashed for n in secret.needles):
                    continue
                known = True
                mode = leaf.mode
                violation = _violation(secret, owners, cluster, mode)
                if violation is None and disk_mode & 0o004:
                    violation = f"{rel} is readable by others (mode {_mode(disk_mode)})"
                report.findings.append(
                    Finding(
                        rel,
                        leaf.where,
                        secret.label,
                        secret.kind,
                        _mode(mode),
                        leaf.owner,
                        violation,
                    )
                )
            if not known and (_ANY_PRIVATE.search(leaf.data) or _SIGNIFY_SECRET.search(leaf.data)):
                report.findings.append(
                    Finding(
                        rel,
                        leaf.where,
                        "unidentified private key",
                        "unknown",
                        _mode(leaf.mode),
                        leaf.owner,
                        "a private key the state does not know (from another cluster?)",
                    )
                )
    return report
