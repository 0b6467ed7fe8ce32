"""[consul.agent] on: the Consul CA, certificates and gossip key have Nomad's lifecycle.

The Consul node certificates are re-issued for the same reasons as Nomad's (names,
CA, expiry), the Consul CA gets the same expiry checks; `pki status` shows them,
`pki renew` renews them, `audit` knows where each Consul secret may be, and
`pki rotate-gossip --consul` rotates the agents' LAN gossip key. Real certificates,
checked with openssl; real builds, opened by the audit."""

from __future__ import annotations

import functools
import gzip
import io
import json
import subprocess
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from test_lifecycle import _handshake

from builder import consul, pki
from builder.cluster import load
from builder.errors import UserError
from builder.model import Cluster
from builder.state import State

from conftest import REPO, nomad_build, write_cluster

SCHEMA = json.loads((REPO / "docs" / "output.schema.json").read_text())
ENABLE = "\n[consul.agent]\nenabled = true\n"
NODES = [
    "bi-core-sbg-1",
    "bi-core-sbg-2",
    "bi-core-sbg-3",
    "bi-node-sbg-1",
    "bi-node-sbg-2",
    "bi-node-sbg-3",
]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
EXTRA_IP = ('address = "10.20.131.42"\n', 'address = "10.20.131.42"\nextra_ips = ["10.9.9.9"]\n')


def ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, (proc.stdout, proc.stderr)


def _consul_cluster(tmp_path: Path, os_name: str = "openbsd") -> Path:
    path = write_cluster(tmp_path, os_name)
    text = path.read_text().replace("\n[packages]", ENABLE + "\n[packages]", 1)
    path.write_text(text)
    return path


def _secrets(
    cluster: Cluster, state: Path, when: datetime, *, create: bool = True
) -> tuple[dict[str, consul.ConsulSecrets | None], State]:
    with State.open(state, create=create, clock=lambda: when) as st:
        made = {n.name: consul.consul_secrets(st, cluster, n) for n in cluster.nodes}
    return made, st


def _openssl_verify(tmp_path: Path, ca: bytes, cert: bytes, name: str) -> bool:
    (tmp_path / "v-ca.pem").write_bytes(ca)
    (tmp_path / "v-cert.pem").write_bytes(cert)
    proc = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "v-ca.pem"), "-verify_hostname", name,
         "-attime", str(int(T0.timestamp()) + 86400), str(tmp_path / "v-cert.pem")],
        capture_output=True, text=True,
    )  # fmt: skip
    return proc.returncode == 0 and proc.stdout.strip().endswith(": OK")


# ---------------------------------------------------------------- the policy


def test_consul_certificates_follow_nomads_policy(tmp_path: Path) -> None:
    path = _consul_cluster(tmp_path)
    state = tmp_path / "state"
    first, st = _secrets(load(path), state, T0)
    assert [(e.kind, e.what) for e in st.events][:2] == [
        ("created", "Consul CA"),
        ("created", "consul-gossip.key"),
    ]
    again, st = _secrets(load(path), state, T0 + timedelta(days=1), create=False)
    assert again == first and st.events == []  # nothing to do: a read-only run writes nothing

    # the node's names changed: re-issued (and only that node's), verified by openssl
    path.write_text(path.read_text().replace(*EXTRA_IP, 1))
    ro, st = _secrets(load(path), state, T0 + timedelta(days=1), create=False)
    assert ro["bi-node-sbg-2"] is None  # read-only: a writing run would re-issue it
    assert [(e.kind, e.what, e.reason) for e in st.events] == [
        ("reissued", "Consul certificate bi-node-sbg-2", "IP addresses changed: +10.9.9.9")
    ]
    made, st = _secrets(load(path), state, T0 + timedelta(days=1))
    assert [e.what for e in st.events] == ["Consul certificate bi-node-sbg-2"]
    new = made["bi-node-sbg-2"]
    assert new is not None and new.cert != first["bi-node-sbg-2"].cert  # type: ignore[union-attr]
    assert "10.9.9.9" in pki.inspect_cert(new.cert).ip_addresses
    assert _openssl_verify(tmp_path, new.ca_cert, new.cert, "client.bi-sbg.consul")
    assert all(made[n] == first[n] for n in NODES if n != "bi-node-sbg-2")

    # inside the renewal window (pki.renew_before_days = 30): every one re-issued
    late = T0 + timedelta(days=340)
    made, st = _secrets(load(path), state, late)
    reasons = {e.what: e.reason for e in st.events}
    assert sorted(reasons) == sorted(f"Consul certificate {n}" for n in NODES)
    assert all("inside the 30-day renewal window" in r for r in reasons.values()), reasons
    # expired (a year later, no build in between)
    made, st = _secrets(load(path), state, late + timedelta(days=400))
    assert {e.reason.split(" ")[0] for e in st.events} == {"expired"}


def test_consul_certificates_follow_their_ca(tmp_path: Path) -> None:
    path = _consul_cluster(tmp_path)
    state = tmp_path / "state"
    cluster = load(path)
    _secrets(cluster, state, T0)
    other = pki.create_ca(
        common_name="another", permitted_dns=consul.domain_names(cluster), days=1825, now=T0
    )
    with State.open(state, create=True, clock=lambda: T0) as st:  # a deliberate change
        st.write_files({"consul-ca.key": (other[0], True), "consul-ca.pem": (other[1], True)})
    made, st = _secrets(cluster, state, T0)
    assert {e.reason for e in st.events} == {"not signed by the current CA"}
    for name in NODES:
        s = made[name]
        assert s is not None and pki.cert_signed_by(s.cert, other[1])


def test_consul_ca_expiry_is_checked_like_nomads(tmp_path: Path) -> None:
    path = _consul_cluster(tmp_path)
    state = tmp_path / "state"
    _secrets(load(path), state, T0)
    # 400 days before its end: inside the notice (cert_days + 90 days)
    near = T0 + timedelta(days=1825 - 400)
    with State.open(state, create=False, clock=lambda: near) as st:
        consul.consul_secrets(st, load(path), load(path).nodes[0])
    warned = [w for w in st.warnings if "consul-ca.pem" in w]
    assert len(warned) == 1 and "`nomad-build pki rotate-ca --consul`" in warned[0]
    # its end is before that of a certificate issued now: refused
    with pytest.raises(UserError, match=r"consul-ca\.pem: the CA expires .* before a cert"):
        _secrets(load(path), state, T0 + timedelta(days=1825 - 100))
    with pytest.raises(UserError, match=r"consul-ca\.pem: the CA expired on 2030-12-31"):
        _secrets(load(path), state, T0 + timedelta(days=1826))


def test_a_node_named_like_a_shared_consul_secret_is_refused(tmp_path: Path) -> None:
    path = _consul_cluster(tmp_path)
    path.write_text(path.read_text().replace('name = "bi-node-sbg-3"', 'name = "ca"'))
    before = sorted(tmp_path.iterdir())
    proc = nomad_build(tmp_path, "check", "-c", "cluster.toml")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "'ca' cannot run a Consul agent" in proc.stderr
    assert sorted(tmp_path.iterdir()) == before


# ---------------------------------------------------------------- pki status / renew


def _status(tmp_path: Path) -> tuple[int, dict[str, Any]]:
    proc = nomad_build(tmp_path, "pki", "status", "--json", "-c", "cluster.toml")
    assert proc.returncode in (0, 1), proc.stderr
    data = json.loads(proc.stdout)
    jsonschema.validate(data, SCHEMA)
    return proc.returncode, data


def _serials(tmp_path: Path, pattern: str) -> dict[str, int]:
    return {
        n: pki.inspect_cert((tmp_path / "state" / pattern.format(n)).read_bytes()).serial
        for n in NODES
    }


def test_status_and_renew_cover_consul(tmp_path: Path) -> None:
    path = _consul_cluster(tmp_path)
    rc, data = _status(tmp_path)
    assert rc == 1 and data["consul"]["ca"]["state"] == "missing"
    assert [n["state"] for n in data["consul"]["nodes"]] == ["missing"] * 6
    ok(nomad_build(tmp_path, "pki", "renew", "-c", "cluster.toml"))
    rc, data = _status(tmp_path)
    assert rc == 0 and data["consul"]["ca"]["state"] == "ok"
    assert data["consul"]["ca"]["permitted_dns"] == ["consul", "localhost", "intra.terror.ninja"]
    entry = data["consul"]["nodes"][0]
    assert entry["node"] == "bi-core-sbg-1" and entry["role"] == "server"
    assert entry["common_name"] == "server.bi-sbg.consul" and entry["state"] == "ok"
    text = nomad_build(tmp_path, "pki", "status", "-c", "cluster.toml")
    ok(text)
    lines = text.stdout.splitlines()
    assert lines[7].startswith("Consul CA: ok: Consul Agent CA bi-sbg, permitted consul,")
    assert lines[8].startswith("bi-core-sbg-1 (Consul): ok: server.bi-sbg.consul, expires ")
    assert lines[13].startswith("bi-node-sbg-3 (Consul): ok: client.bi-sbg.consul, expires ")

    # stale names: both certificates of the node, each with its reason
    path.write_text(path.read_text().replace(*EXTRA_IP, 1))
    rc, data = _status(tmp_path)
    consul_states = {n["node"]: (n["state"], n["reasons"]) for n in data["consul"]["nodes"]}
    assert rc == 1 and consul_states["bi-node-sbg-2"] == (
        "stale",
        ["IP addresses changed: +10.9.9.9"],
    )
    proc = nomad_build(tmp_path, "pki", "renew", "-c", "cluster.toml")
    ok(proc)
    assert sorted(proc.stderr.splitlines()) == [
        "reissued: Consul certificate bi-node-sbg-2 (IP addresses changed: +10.9.9.9)",
        "reissued: certificate bi-node-sbg-2 (IP addresses changed: +10.9.9.9)",
    ]
    assert _status(tmp_path)[0] == 0

    # --node X renews everything of X; --only narrows it; --rekey: new key pairs
    nomad, cons = _serials(tmp_path, "nodes/{}/cert.pem"), _serials(tmp_path, "consul-{}.pem")
    key = (tmp_path / "state/consul-bi-node-sbg-1.key").read_bytes()
    ok(nomad_build(tmp_path, "pki", "renew", "-c", "cluster.toml", "--node", "bi-node-sbg-1"))
    n2, c2 = _serials(tmp_path, "nodes/{}/cert.pem"), _serials(tmp_path, "consul-{}.pem")
    assert {n for n in NODES if n2[n] != nomad[n]} == {"bi-node-sbg-1"}
    assert {n for n in NODES if c2[n] != cons[n]} == {"bi-node-sbg-1"}
    assert (tmp_path / "state/consul-bi-node-sbg-1.key").read_bytes() == key
    proc = nomad_build(
        tmp_path, "pki", "renew", "-c", "cluster.toml", "--node", "bi-node-sbg-1",
        "--only", "consul", "--rekey",
    )  # fmt: skip
    ok(proc)
    assert proc.stderr.splitlines() == [
        "reissued: Consul certificate bi-node-sbg-1 (new key pair (--rekey))"
    ]
    assert _serials(tmp_path, "nodes/{}/cert.pem") == n2
    new_key = (tmp_path / "state/consul-bi-node-sbg-1.key").read_bytes()
    assert new_key != key and pki.key_matches_cert(
        new_key, (tmp_path / "state/consul-bi-node-sbg-1.pem").read_bytes()
    )


def test_status_without_consul_and_only_consul_refused(tmp_path: Path) -> None:
    write_cluster(tmp_path)
    ok(nomad_build(tmp_path, "pki", "renew", "-c", "cluster.toml"))
    rc, data = _status(tmp_path)
    assert rc == 0 and data["consul"] is None and data["rotations"]["consul_gossip"] is None
    assert "Consul" not in nomad_build(tmp_path, "pki", "status", "-c", "cluster.toml").stdout
    for args in (
        ["renew", "--only", "consul"],
        ["rotate-gossip", "--consul"],
        ["rotate-ca", "--consul"],
    ):
        proc = nomad_build(tmp_path, "pki", *args, "-c", "cluster.toml")
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert "consul.agent.enabled is not true" in proc.stderr
    assert not list((tmp_path / "state").glob("consul*"))


# ---------------------------------------------------------------- audit


def _tgz(members: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue())


def _audit(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    proc = nomad_build(tmp_path, "audit", "-c", "cluster.toml", "--json", *args)
    assert proc.returncode in (0, 1), proc.stderr
    data = json.loads(proc.stdout)
    jsonschema.validate(data, SCHEMA)
    return proc.returncode, data


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mixed (OpenBSD + one Debian node) cluster with Consul agents, built."""
    d = tmp_path_factory.mktemp("consul-audit")
    path = _consul_cluster(d)
    node = 'name = "bi-node-sbg-3"\n'
    debian = 'os = "debian"\ninterface = "eth1"\ndata_dir = "/opt/nomad/data"\n'
    path.write_text(path.read_text().replace(node, node + debian))
    ok(nomad_build(d, "build", "-c", "cluster.toml"))
    return d


def test_audit_of_a_consul_build_is_clean_and_sees_every_consul_secret(built: Path) -> None:
    rc, data = _audit(built)
    assert rc == 0, [f for f in data["findings"] if f["violation"]]
    found: dict[str, set[str]] = {}
    for f in data["findings"]:
        found.setdefault(f["kind"], set()).add(f["artifact"])
    consul_pkgs = found["consul-node-key"]  # (each in its node's artifacts only: rc 0)
    packages = {a for a in consul_pkgs if a.split("/")[0] in ("debian", "openbsd")}
    assert len(packages) == 6 and all("/consul-config-" in a for a in packages)
    # the LAN gossip key: in every Consul agent's package, clients' too, and nowhere else
    assert found["consul-gossip-key"] == consul_pkgs
    assert "consul-ca-key" not in found and "unknown" not in found


def test_audit_flags_misplaced_consul_secrets(built: Path) -> None:
    state = built / "state"
    read = lambda rel: (state / rel).read_bytes()  # noqa: E731
    client_cert, client_key = read("consul-bi-node-sbg-1.pem"), read("consul-bi-node-sbg-1.key")
    server_cert = read("consul-bi-core-sbg-1.pem")
    gossip = read("consul-gossip.key").strip()
    nomad_gossip = read("gossip.key").strip()
    nomad_cert = read("nodes/bi-node-sbg-1/cert.pem")
    config = b'{"encrypt": "' + gossip + b'"}'
    cases: dict[str, tuple[list[tuple[str, bytes, int]], str | None]] = {
        "consul-ca": ([("ca.key", read("consul-ca.key"), 0o600)], "a Consul CA key"),
        "other-node": (
            [("c.pem", client_cert, 0o644), ("k.pem", read("consul-bi-node-sbg-2.key"), 0o600)],
            "Consul key of bi-node-sbg-2 in an artifact of bi-node-sbg-1",
        ),
        "nomad-package": (  # a Nomad artifact is no Consul agent's
            [("nomad.pem", nomad_cert, 0o644), ("consul.json", config, 0o640)],
            "Consul gossip key in an artifact of bi-node-sbg-1 that is no Consul agent's",
        ),
        "nomad-gossip-in-consul": (
            [("c.pem", server_cert, 0o644), ("x.hcl", b'encrypt = "' + nomad_gossip + b'"', 0o640)],
            "gossip key in an artifact of no Nomad agent (not a server)",
        ),
        "world-readable": (
            [("c.pem", client_cert, 0o644), ("k.pem", client_key, 0o644)],
            "readable by others (mode 0644)",
        ),
        "client-agent": (  # every Consul agent, clients too, holds the LAN gossip key
            [("c.pem", client_cert, 0o644), ("k.pem", client_key, 0o640), ("j", config, 0o640)],
            None,
        ),
    }
    for name, (members, expected) in cases.items():
        bad = built / f"bad-{name}"
        bad.mkdir()
        (bad / f"{name}.tgz").write_bytes(_tgz(members))
        (bad / f"{name}.tgz").chmod(0o600)  # as dist/ holds secret-bearing artifacts
        rc, report = _audit(built, bad.name)
        violations = [f["violation"] for f in report["findings"] if f["violation"]]
        if expected is None:
            assert rc == 0 and violations == [] and len(report["findings"]) == 2, report
        else:
            assert rc == 1 and any(expected in v for v in violations), (name, violations)


# ---------------------------------------------------------------- rotate-gossip --consul


def test_rotate_consul_gossip(tmp_path: Path) -> None:
    _consul_cluster(tmp_path, "debian")
    ok(nomad_build(tmp_path, "build", "-c", "cluster.toml"))
    state = tmp_path / "state"
    old = (state / "consul-gossip.key").read_text().strip()
    nomad_old = (state / "gossip.key").read_text().strip()
    early = nomad_build(
        tmp_path, "pki", "rotate-gossip", "--consul", "--finish", "-c", "cluster.toml"
    )
    assert early.returncode == 2 and "no rotation under way" in early.stderr
    proc = nomad_build(tmp_path, "pki", "rotate-gossip", "--consul", "-c", "cluster.toml")
    ok(proc)
    new = (state / "consul-gossip/next.key").read_text().strip()
    assert new != old and len(pki_b64(new)) == 32
    assert proc.stdout.splitlines()[:3] == [
        f"consul keyring -install={new}",
        f"consul keyring -use={new}",
        f"consul keyring -remove={old}",
    ]
    again = nomad_build(
        tmp_path, "pki", "rotate-gossip", "--consul", "--json", "-c", "cluster.toml"
    )
    ok(again)
    step = json.loads(again.stdout)
    jsonschema.validate(step, SCHEMA)
    assert step["command"] == "pki rotate-gossip --consul" and step["commands"][0].endswith(new)
    rc, data = _status(tmp_path)
    assert rc == 1 and data["rotations"]["consul_gossip"]["stage"] == 1
    assert data["rotations"]["gossip"] is None
    ok(nomad_build(tmp_path, "pki", "rotate-gossip", "--consul", "--finish", "-c", "cluster.toml"))
    assert (state / "consul-gossip.key").read_text().strip() == new
    assert (state / "consul-gossip/history/1.key").read_text().strip() == old
    assert (state / "gossip.key").read_text().strip() == nomad_old  # Nomad's untouched
    assert _status(tmp_path)[0] == 0
    ok(nomad_build(tmp_path, "build", "-c", "cluster.toml"))
    # every node's Consul package now carries the new key, none the old one
    rc, report = _audit(tmp_path)
    assert rc == 0, [f for f in report["findings"] if f["violation"]]
    labels = {f["secret"] for f in report["findings"] if f["kind"] == "consul-gossip-key"}
    assert labels == {"Consul gossip key (consul-gossip.key)"}
    carriers = {f["artifact"] for f in report["findings"] if f["kind"] == "consul-gossip-key"}
    assert {f"debian/consul-config-{n}_2_all.deb" for n in NODES} <= carriers


def pki_b64(key: str) -> bytes:
    import base64

    return base64.b64decode(key, validate=True)


# ---------------------------------------------------------------- rotate-ca --consul


def _consul_ca_file(tmp_path: Path, node: str) -> bytes:
    """The Consul CA file node's newest built Consul package installs (dpkg-deb reads it)."""
    debs = sorted(
        (tmp_path / "dist/debian").glob(f"consul-config-{node}_*_all.deb"),
        key=lambda p: int(p.name.split("_")[1]),
    )
    raw = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(debs[-1])], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        f = tar.extractfile("./etc/consul.d/tls/consul-agent-ca.pem")
        assert f is not None
        return f.read()


def _consul_pair(tmp_path: Path, node: str) -> tuple[bytes, bytes]:
    state = tmp_path / "state"
    return (state / f"consul-{node}.key").read_bytes(), (state / f"consul-{node}.pem").read_bytes()


def _deb_versions(tmp_path: Path) -> dict[tuple[str, str], int]:
    data = json.loads((tmp_path / "state/versions.json").read_text())
    return {(n, f): e["version"] for n, fmts in data.items() for f, e in fmts.items()}


def test_rotate_consul_ca_three_stages_with_real_handshakes(tmp_path: Path) -> None:
    _consul_cluster(tmp_path, "debian")
    ok(nomad_build(tmp_path, "build", "-c", "cluster.toml"))
    state = tmp_path / "state"
    old_ca = (state / "consul-ca.pem").read_bytes()
    nomad_ca, nomad_certs = (
        (state / "ca/ca.pem").read_bytes(),
        _serials(tmp_path, "nodes/{}/cert.pem"),
    )
    old_srv, old_cli = (
        _consul_pair(tmp_path, "bi-core-sbg-1"),
        _consul_pair(tmp_path, "bi-node-sbg-1"),
    )
    assert _consul_ca_file(tmp_path, "bi-core-sbg-1") == old_ca
    rotate = ("pki", "rotate-ca", "--consul", "-c", "cluster.toml")
    sname = "server.bi-sbg.consul"

    one = nomad_build(tmp_path, *rotate)
    ok(one)
    assert one.stdout.startswith("Consul CA rotation stage 1 of 3: build and roll out every")
    early = nomad_build(tmp_path, *rotate)
    assert (
        early.returncode == 2
        and "pki rotate-ca --consul: stage 1 is not rolled out" in early.stderr
    )
    rc, data = _status(tmp_path)
    assert rc == 1 and data["rotations"]["consul_ca"]["stage"] == 1
    assert data["rotations"]["ca"] is None
    new_ca = (state / "consul-ca/next.pem").read_bytes()
    before = _deb_versions(tmp_path)
    ok(nomad_build(tmp_path, "build", "-c", "cluster.toml"))
    after = _deb_versions(tmp_path)
    # only the Consul packages change: they ship the bundle
    assert {k for k in after if after[k] != before[k]} == {(n, "consul-deb") for n in NODES}
    bundle1 = _consul_ca_file(tmp_path, "bi-core-sbg-1")
    assert bundle1 == old_ca + new_ca
    assert _handshake(tmp_path, old_srv, bundle1, old_cli, bundle1, sname)

    two = nomad_build(tmp_path, *rotate)
    ok(two)
    assert "stage 2 of 3" in two.stdout
    assert two.stderr.count("reissued: Consul certificate") == 6
    assert "reissued: certificate" not in two.stderr  # Nomad's are not the Consul CA's
    assert (state / "consul-ca.pem").read_bytes() == new_ca
    new_srv, new_cli = (
        _consul_pair(tmp_path, "bi-core-sbg-1"),
        _consul_pair(tmp_path, "bi-node-sbg-1"),
    )
    assert pki.cert_signed_by(new_srv[1], new_ca) and new_srv[0] == old_srv[0]
    ok(nomad_build(tmp_path, "build", "-c", "cluster.toml"))
    bundle2 = _consul_ca_file(tmp_path, "bi-core-sbg-1")
    assert bundle2 == new_ca + old_ca
    # mid-rollout: upgraded and not-yet-upgraded agents talk, both ways
    assert _handshake(tmp_path, new_srv, bundle2, old_cli, bundle1, sname)
    assert _handshake(tmp_path, old_srv, bundle1, new_cli, bundle2, sname)

    three = nomad_build(tmp_path, *rotate)
    ok(three)
    assert three.stdout.startswith("Consul CA rotation done")
    archived = list((state / "consul-ca/archive").glob("*.pem"))
    assert [p.read_bytes() for p in archived] == [old_ca]
    ok(nomad_build(tmp_path, "build", "-c", "cluster.toml"))
    bundle3 = _consul_ca_file(tmp_path, "bi-core-sbg-1")
    assert bundle3 == new_ca
    assert _handshake(tmp_path, new_srv, bundle3, new_cli, bundle3, sname)
    assert not _handshake(tmp_path, old_srv, bundle1, new_cli, bundle3, sname)  # old CA untrusted
    # the cluster CA and Nomad's certificates never moved
    assert (state / "ca/ca.pem").read_bytes() == nomad_ca
    assert _serials(tmp_path, "nodes/{}/cert.pem") == nomad_certs
    rc, data = _status(tmp_path)
    assert rc == 0 and data["rotations"]["consul_ca"] is None
    rc, report = _audit(tmp_path)  # the archived Consul CA key is known, and in no artifact
    assert rc == 0, [f for f in report["findings"] if f["violation"]]


# ---------------------------------------------------------------- the store


def test_a_store_made_before_the_policy_is_used_as_it_is(tmp_path: Path) -> None:
    """consul-ca.pem was once a public file (0644, only its existence in the ledger),
    the CA named `Consul Agent CA <random>`: it still fits, nothing is re-issued."""
    path = _consul_cluster(tmp_path)
    cluster = load(path)
    ca = pki.create_ca(
        common_name="Consul Agent CA 123456789",
        permitted_dns=consul.domain_names(cluster),
        days=1825,
        now=T0,
    )
    with State.open(tmp_path / "state", create=True, clock=lambda: T0) as st:
        st.secret("consul-ca.key", lambda: ca[0])
        st.public("consul-ca.pem", lambda: ca[1])
        st.secret("consul-gossip.key", lambda: pki.generate_gossip_key().encode() + b"\n")
        for node in cluster.nodes:
            cn, dns, ips = consul.cert_names(cluster, node)
            key, cert = pki.issue_cert(
                ca_key_pem=ca[0], ca_cert_pem=ca[1], common_name=cn, dns_names=dns,
                ip_addresses=ips, days=365, now=T0, backdate=timedelta(minutes=5),
            )  # fmt: skip
            st.secret(f"consul-{node.name}.key", functools.partial(bytes, key))
            st.secret(f"consul-{node.name}.pem", functools.partial(bytes, cert))
    assert (tmp_path / "state/consul-ca.pem").stat().st_mode & 0o777 == 0o644
    made, st = _secrets(cluster, tmp_path / "state", T0 + timedelta(days=1))
    assert st.events == [] and st.warnings == []
    assert all(m is not None and m.ca_cert == ca[1] for m in made.values())
    assert (tmp_path / "state/consul-ca.pem").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "rel", ["consul-ca.key", "consul-ca.pem", "consul-gossip.key", "consul-bi-node-sbg-1.key"]
)
def test_a_lost_or_changed_consul_secret_is_refused(tmp_path: Path, rel: str) -> None:
    _consul_cluster(tmp_path)
    ok(nomad_build(tmp_path, "pki", "renew", "-c", "cluster.toml"))
    state = tmp_path / "state"
    before = {p: p.read_bytes() for p in state.rglob("*") if p.is_file()}
    for damage in ("lost", "changed"):
        if damage == "lost":
            data = (state / rel).read_bytes()
            (state / rel).unlink()
        else:
            (state / rel).write_bytes(data[:1] + bytes([data[1] ^ 1]) + data[2:])
        for command in (["check"], ["pki", "renew"], ["build"]):
            proc = nomad_build(tmp_path, *command, "-c", "cluster.toml")
            assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
            assert f"state/{rel}: " in proc.stderr and "restore it from your backup" in proc.stderr
        # pki status reports it (exit 1) with the way out (tests/test_way_out.py runs each)
        proc = nomad_build(tmp_path, "pki", "status", "--json", "-c", "cluster.toml")
        assert proc.returncode == 1, proc.stderr
        assert [d["file"] for d in json.loads(proc.stdout)["damage"]] == [rel]
        assert not (tmp_path / "dist").exists()
    (state / rel).write_bytes(data)
    assert {p: p.read_bytes() for p in state.rglob("*") if p.is_file()} == before
