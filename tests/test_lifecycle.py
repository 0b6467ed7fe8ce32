"""The lifecycle commands as an operator runs them: pki status / renew / cli-cert,
rotations, state backup / restore, audit. Real crypto and real TLS handshakes."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import socket
import ssl
import stat
import subprocess
import tarfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cryptography import x509

from builder import lifecycle, pki

from conftest import REPO, mixed_text, nomad_build, write_cluster

NODES = (
    "bi-core-sbg-1",
    "bi-core-sbg-2",
    "bi-core-sbg-3",
    "bi-node-sbg-1",
    "bi-node-sbg-2",
    "bi-node-sbg-3",
)
SCHEMA = json.loads((REPO / "docs" / "output.schema.json").read_text())  # every --json


def entries(directory: Path) -> list[tuple[str, int]]:
    return sorted(
        (str(p.relative_to(directory)), p.lstat().st_mtime_ns) for p in directory.rglob("*")
    )


def ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, (proc.stdout, proc.stderr)


def status_json(tmp_path: Path) -> tuple[int, dict[str, Any]]:
    proc = nomad_build(tmp_path, "pki", "status", "--json", "-c", "cluster.toml")
    assert proc.returncode in (0, 1), proc.stderr
    data = json.loads(proc.stdout)
    jsonschema.validate(data, SCHEMA)
    assert data["action_needed"] == (proc.returncode == 1)
    return proc.returncode, data


# ---------------------------------------------------------------- pki status


def test_status_states_and_exit_codes(tmp_path: Path) -> None:
    path = write_cluster(tmp_path)
    before = entries(tmp_path)
    rc, data = status_json(tmp_path)
    assert rc == 1
    assert data["ca"]["state"] == "missing"
    assert [n["state"] for n in data["nodes"]] == ["missing"] * 6
    assert entries(tmp_path) == before  # read-only: no state/ made

    ok(nomad_build(tmp_path, "pki", "renew", "-c", "cluster.toml"))
    before = entries(tmp_path)
    text = nomad_build(tmp_path, "pki", "status", "-c", "cluster.toml")
    ok(text)
    lines = text.stdout.splitlines()
    assert re.fullmatch(
        r"CA: ok: nomad-build CA bi-sbg, permitted intra\.terror\.ninja,nomad,localhost, "
        r"expires \d{4}-\d\d-\d\d \(18\d\d days\)",
        lines[0],
    )
    for name, line in zip(NODES, lines[1:], strict=True):
        role = "server" if "core" in name else "client"
        assert line.startswith(f"{name}: ok: {role}.eu.nomad, expires "), line
        assert f"{name}.intra.terror.ninja" in line
    rc, data = status_json(tmp_path)
    assert rc == 0
    assert data["ca"]["permitted_dns"] == ["intra.terror.ninja", "nomad", "localhost"]
    node = data["nodes"][0]
    assert node["node"] == "bi-core-sbg-1" and node["state"] == "ok"
    assert set(node["ip_addresses"]) == {"127.0.0.1", "10.20.130.52"}
    assert 363 <= node["days_left"] <= 365
    assert entries(tmp_path) == before

    # names/IPs no longer matching the cluster file: stale
    anchor = 'address = "10.20.131.42"\n'
    path.write_text(path.read_text().replace(anchor, anchor + 'extra_ips = ["10.9.9.9"]\n', 1))
    rc, data = status_json(tmp_path)
    assert rc == 1
    states = {n["node"]: (n["state"], n["reasons"]) for n in data["nodes"]}
    assert states["bi-node-sbg-2"] == ("stale", ["IP addresses changed: +10.9.9.9"])
    assert all(s == "ok" for n, (s, _) in states.items() if n != "bi-node-sbg-2")


def test_status_expired_and_ca_expiring_with_a_clock(tmp_path: Path) -> None:
    write_cluster(tmp_path)
    ok(nomad_build(tmp_path, "pki", "renew", "-c", "cluster.toml"))
    soon = datetime.now(UTC) + timedelta(days=340)  # inside the 30-day renewal window
    report = lifecycle.status(tmp_path / "cluster.toml", None, clock=lambda: soon)
    assert {n.state for n in report.nodes} == {"expiring"} and report.action_needed
    later = datetime.now(UTC) + timedelta(days=400)
    report = lifecycle.status(tmp_path / "cluster.toml", None, clock=lambda: later)
    assert {n.state for n in report.nodes} == {"expired"}
    assert report.ca_state == "ok"
    much_later = datetime.now(UTC) + timedelta(days=1700)
    report = lifecycle.status(tmp_path / "cluster.toml", None, clock=lambda: much_later)
    assert report.ca_state == "expiring" and "rotate-ca" in (report.ca_reason or "")
    jsonschema.validate(report.as_json(), SCHEMA)


# ---------------------------------------------------------------- pki renew


def _cert(tmp_path: Path, node: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(
        (tmp_path / "state/nodes" / node / "cert.pem").read_bytes()
    )


def _versions(tmp_path: Path) -> dict[str, int]:
    data = json.loads((tmp_path / "state/versions.json").read_text())
    return {n: next(iter(f.values()))["version"] for n, f in data.items()}


def test_renew_named_node_keeps_key_rekey_replaces_it_and_bumps_only_that_package(
    tmp_path: Path,
) -> None:
    write_cluster(tmp_path)
    ok(nomad_build(tmp_path, "build", "-c", "cluster.toml"))
    assert set(_versions(tmp_path).values()) == {1}
    key_path = tmp_path / "state/nodes/bi-node-sbg-1/key.pem"
    key = key_path.read_bytes()
    serials = {n: _cert(tmp_path, n).serial_number for n in NODES}

    nothing = nomad_build(tmp_path, "pki", "renew", "-c", "cluster.toml")
    ok(nothing)
    assert nothing.stderr.splitlines() == ["every certificate is current"]

    proc = nomad_build(tmp_path, "pki", "renew", "-c", "cluster.toml", "--node", "bi-node-sbg-1")
    ok(proc)
    assert proc.stderr.splitlines() == [
        "reissued: certificate bi-node-sbg-1 (asked for (--node/--all))"
    ]
    assert "nomad-build build" in proc.stdout
    assert key_path.read_bytes() == key  # same key pair, new certificate
    assert _cert(tmp_path, "bi-node-sbg-1").serial_number != serials["bi-node-sbg-1"]
    assert all(_cert(tmp_path, n).serial_number == serials[n] for n in NODES[:-3])

    ok(nomad_build(tmp_path, "build", "-c", "cluster.toml"))
    versions = _versions(tmp_path)
    assert versions.pop("bi-node-sbg-1") == 2
    assert set(versions.values()) == {1}  # exactly the affected package

    proc = nomad_build(
        tmp_path, "pki", "renew", "-c", "cluster.toml", "--node", "bi-node-sbg-1", "--rekey"
    )
    ok(proc)
    assert "new key pair (--rekey)" in proc.stderr
    new_key = key_path.read_bytes()
    assert new_key != key and pki.key_matches_cert(
        new_key, (tmp_path / "state/nodes/bi-node-sbg-1/cert.pem").read_bytes()
    )

    refused = nomad_build(tmp_path, "pki", "renew", "-c", "cluster.toml", "--rekey")
    assert refused.returncode == 2 and "--node" in refused.stderr
    unknown = nomad_build(tmp_path, "pki", "renew", "-c", "cluster.toml", "--node", "nope")
    assert unknown.returncode == 2 and len(unknown.stderr.splitlines()) == 1

    before = {n: _cert(tmp_path, n).serial_number for n in NODES}
    ok(nomad_build(tmp_path, "pki", "renew", "-c", "cluster.toml", "--within", "400"))
    assert all(_cert(tmp_path, n).serial_number != before[n] for n in NODES)
    before = {n: _cert(tmp_path, n).serial_number for n in NODES}
    ok(nomad_build(tmp_path, "pki", "renew", "-c", "cluster.toml", "--within", "10"))
    assert all(_cert(tmp_path, n).serial_number == before[n] for n in NODES)
    ok(nomad_build(tmp_path, "pki", "renew", "-c", "cluster.toml", "--all"))
    assert all(_cert(tmp_path, n).serial_number != before[n] for n in NODES)


# ---------------------------------------------------------------- TLS helpers


def _handshake(
    tmp_path: Path,
    server: tuple[bytes, bytes],
    server_bundle: bytes,
    client: tuple[bytes, bytes],
    client_bundle: bytes,
    server_name: str = "server.eu.nomad",
) -> bool:
    """One mutual-TLS handshake over a socketpair; True when both sides accept."""
    d = tmp_path / f"tls-{os.urandom(4).hex()}"
    d.mkdir()
    files = {
        "s.key": server[0],
        "s.pem": server[1],
        "sb.pem": server_bundle,
        "c.key": client[0],
        "c.pem": client[1],
        "cb.pem": client_bundle,
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(d / "s.pem", d / "s.key")
    sctx.load_verify_locations(d / "sb.pem")
    sctx.verify_mode = ssl.CERT_REQUIRED
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_cert_chain(d / "c.pem", d / "c.key")
    cctx.load_verify_locations(d / "cb.pem")
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    result: dict[str, bool] = {}

    def serve() -> None:
        try:
            with sctx.wrap_socket(a, server_side=True) as tls:
                tls.sendall(b"ok")
                result["server"] = True
        except (OSError, ssl.SSLError):
            result["server"] = False

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with cctx.wrap_socket(b, server_hostname=server_name) as tls:
            result["client"] = tls.recv(2) == b"ok"
    except (OSError, ssl.SSLError):
        result["client"] = False
    t.join(10)
    a.close()
    b.close()
    return result.get("client", False) and result.get("server", False)


def _pair(tmp_path: Path, node: str) -> tuple[bytes, bytes]:
    d = tmp_path / "state/nodes" / node
    return (d / "key.pem").read_bytes(), (d / "cert.pem").read_bytes()


# ---------------------------------------------------------------- pki cli-cert


def test_cli_cert(tmp_path: Path) -> None:
    write_cluster(tmp_path)
    ok(nomad_build(tmp_path, "build", "-c", "cluster.toml"))
    proc = nomad_build(tmp_path, "pki", "cli-cert", "-c", "cluster.toml", "--days", "30")
    ok(proc)
    d = tmp_path / "state/cli/operator"
    assert proc.stdout.strip() == "state/cli/operator/nomad.env"
    for f in ("ca.pem", "cli.pem", "cli-key.pem", "nomad.env"):
        assert stat.S_IMODE((d / f).stat().st_mode) == 0o600, f
    info = pki.inspect_cert((d / "cli.pem").read_bytes())
    assert info.subject_cn == "cli.eu.nomad" and info.ip_addresses == ()
    assert set(info.dns_names) == {"cli.eu.nomad", "localhost"}
    assert 29 <= (info.not_after - datetime.now(UTC)).days <= 30
    env = dict(re.findall(r"^export (NOMAD_\w+)=(.*)$", (d / "nomad.env").read_text(), flags=re.M))
    assert env == {
        "NOMAD_ADDR": "https://127.0.0.1:4646",
        "NOMAD_CACERT": str((d / "ca.pem").resolve()),
        "NOMAD_CLIENT_CERT": str((d / "cli.pem").resolve()),
        "NOMAD_CLIENT_KEY": str((d / "cli-key.pem").resolve()),
        "NOMAD_TLS_SERVER_NAME": "server.eu.nomad",
    }
    # the operator reaches a server agent: mutual TLS with the server's real files
    ca = (d / "ca.pem").read_bytes()
    cli = ((d / "cli-key.pem").read_bytes(), (d / "cli.pem").read_bytes())
    assert _handshake(tmp_path, _pair(tmp_path, "bi-core-sbg-1"), ca, cli, ca)
    # the state still checks clean (the ledger knows the new files)
    ok(nomad_build(tmp_path, "pki", "status", "-c", "cluster.toml"))
    # never inside dist/
    refused = nomad_build(tmp_path, "pki", "cli-cert", "-c", "cluster.toml", "--out", "dist/op")
    assert refused.returncode == 2 and "output directory" in refused.stderr
    assert not (tmp_path / "dist/op").exists()
    ok(
        nomad_build(
            tmp_path, "pki", "cli-cert", "-c", "cluster.toml", "--out", "ops", "--name", "a"
        )
    )
    assert stat.S_IMODE((tmp_path / "ops/cli-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ops").stat().st_mode) == 0o700


# ---------------------------------------------------------------- state backup / restore


def _tree(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(directory).as_posix(): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for p in directory.rglob("*")
        if p.is_file() and p.name != ".lock"
    }


def test_backup_restore_round_trip_and_refusals(tmp_path: Path) -> None:
    write_cluster(tmp_path)
    ok(nomad_build(tmp_path, "build", "-c", "cluster.toml"))
    (tmp_path / "pass").write_text("correct horse battery staple\n")
    (tmp_path / "wrong").write_text("not it\n")
    pf = ("--passphrase-file", "pass")
    ok(nomad_build(tmp_path, "state", "backup", "-c", "cluster.toml", "--to", "s.nbk", *pf))
    blob = (tmp_path / "s.nbk").read_bytes()
    assert stat.S_IMODE((tmp_path / "s.nbk").stat().st_mode) == 0o600
    assert b"PRIVATE KEY" not in blob and blob.startswith(b"NBSTATE1")

    ok(nomad_build(tmp_path, "state", "restore", "--from", "s.nbk", "--state", "r", *pf))
    assert _tree(tmp_path / "r") == _tree(tmp_path / "state")
    # the restored store is a working one: a build from it changes nothing
    ok(nomad_build(tmp_path, "check", "-c", "cluster.toml", "--state", "r"))

    wrong = nomad_build(
        tmp_path,
        "state",
        "restore",
        "--from",
        "s.nbk",
        "--state",
        "x",
        "--passphrase-file",
        "wrong",
    )
    assert wrong.returncode == 2 and len(wrong.stderr.splitlines()) == 1
    assert "wrong passphrase or damaged archive" in wrong.stderr
    assert not (tmp_path / "x").exists()
    for pos in (5, 12, len(blob) // 2, len(blob) - 1):  # magic, KDF header, body, tag
        damaged = bytearray(blob)
        damaged[pos] ^= 0x01
        (tmp_path / "d.nbk").write_bytes(bytes(damaged))
        proc = nomad_build(tmp_path, "state", "restore", "--from", "d.nbk", "--state", "x", *pf)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, (pos, proc.stderr)
        assert not (tmp_path / "x").exists()
    (tmp_path / "t.nbk").write_bytes(blob[:-20])
    proc = nomad_build(tmp_path, "state", "restore", "--from", "t.nbk", "--state", "x", *pf)
    assert proc.returncode == 2

    existing = nomad_build(tmp_path, "state", "restore", "--from", "s.nbk", *pf)
    assert existing.returncode == 2 and "--force" in existing.stderr
    ca_key = (tmp_path / "state/ca/ca.key").read_bytes()
    ok(nomad_build(tmp_path, "state", "restore", "--from", "s.nbk", "--force", *pf))
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("state.replaced-")]
    assert len(aside) == 1 and (aside[0] / "ca/ca.key").read_bytes() == ca_key
    no_tty = nomad_build(tmp_path, "state", "backup", "-c", "cluster.toml", "--to", "y.nbk")
    assert no_tty.returncode == 2 and "--passphrase-file" in no_tty.stderr


# ---------------------------------------------------------------- audit


def _audit(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    proc = nomad_build(tmp_path, "audit", "-c", "cluster.toml", "--json", *args)
    assert proc.returncode in (0, 1), proc.stderr
    data = json.loads(proc.stdout)
    jsonschema.validate(data, SCHEMA)
    return proc.returncode, data


@pytest.mark.parametrize("kind", ["openbsd", "mixed"])
def test_audit_clean_builds(tmp_path: Path, kind: str) -> None:
    if kind == "mixed":
        (tmp_path / "cluster.toml").write_text(mixed_text())
    else:
        write_cluster(tmp_path, kind)
    ok(nomad_build(tmp_path, "build", "-c", "cluster.toml"))
    rc, data = _audit(tmp_path)
    assert rc == 0 and data["ok"], [f for f in data["findings"] if f["violation"]]
    kinds = {(f["kind"], f["secret"]) for f in data["findings"]}
    for name in NODES:
        assert ("node-key", f"node key {name}") in kinds
    assert any(k == "gossip-key" for k, _ in kinds)
    # the gossip key only ever in servers' artifacts
    for f in data["findings"]:
        if f["kind"] == "gossip-key":
            assert "core" in f["artifact"], f
    if kind == "mixed":  # inside the seed ISO, base64 in user-data, the .deb, data.tar
        seed = [f for f in data["findings"] if f["artifact"].endswith("seed.iso")]
        assert [(f["secret"], f["mode"]) for f in seed] == [("node key bi-node-sbg-3", "0600")]
        assert seed[0]["where"].startswith("user-data:/var/lib/nomad-build/")
    text = nomad_build(tmp_path, "audit", "-c", "cluster.toml")
    ok(text)
    assert "0 violations" in text.stderr


def _tgz(members: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue())


def test_audit_finds_each_violation(tmp_path: Path) -> None:
    write_cluster(tmp_path)
    ok(nomad_build(tmp_path, "build", "-c", "cluster.toml"))
    state = tmp_path / "state"
    cert1, key1 = _pair(tmp_path, "bi-node-sbg-1")[1], _pair(tmp_path, "bi-node-sbg-1")[0]
    key2 = _pair(tmp_path, "bi-node-sbg-2")[0]
    gossip = (state / "gossip.key").read_bytes()
    cases = {
        "ca.tgz": (_tgz([("etc/ca.key", (state / "ca/ca.key").read_bytes(), 0o600)]), "CA key"),
        "sign.tgz": (
            _tgz([("x/k.sec", (state / "bi-sbg-pkg.sec").read_bytes(), 0o600)]),
            "signify",
        ),
        "other.tgz": (
            _tgz([("c.pem", cert1, 0o644), ("k.pem", key1, 0o600), ("o.pem", key2, 0o600)]),
            "node key of bi-node-sbg-2 in an artifact of bi-node-sbg-1",
        ),
        "gossip.tgz": (
            _tgz(
                [
                    ("c.pem", cert1, 0o644),
                    ("nomad.hcl", b'encrypt = "' + gossip.strip() + b'"', 0o640),
                ]
            ),
            "gossip key in an artifact of bi-node-sbg-1",
        ),
        "mode.tgz": (
            _tgz([("c.pem", cert1, 0o644), ("k.pem", key1, 0o644)]),
            "readable by others (mode 0644)",
        ),
        "stranger.pem": (
            pki.create_ca(common_name="x", permitted_dns=(), days=2, now=datetime.now(UTC))[0],
            "does not know",
        ),
    }
    for name, (data, expected) in cases.items():
        bad = tmp_path / "bad"
        if bad.exists():
            for p in bad.iterdir():
                p.unlink()
        bad.mkdir(exist_ok=True)
        (bad / name).write_bytes(data)
        rc, report = _audit(tmp_path, "bad")
        violations = [f["violation"] for f in report["findings"] if f["violation"]]
        assert rc == 1 and any(expected in v for v in violations), (name, report)
    ok(nomad_build(tmp_path, "audit", "-c", "cluster.toml"))  # the real dist/ is clean


# ---------------------------------------------------------------- rotations


def _node_ca_file(tmp_path: Path, node: str) -> bytes:
    """The CA file the node's package installs, as `render` lays its tree out."""
    out = tmp_path / f"root-{os.urandom(3).hex()}"
    ok(nomad_build(tmp_path, "render", "-c", "cluster.toml", "--node", node, "--out", out.name))
    found = list(out.rglob("nomad-ca.pem"))
    assert len(found) == 1, found
    return found[0].read_bytes()


def test_rotate_ca_three_stages_with_real_handshakes(tmp_path: Path) -> None:
    write_cluster(tmp_path)
    ok(nomad_build(tmp_path, "build", "-c", "cluster.toml"))
    old_ca = (tmp_path / "state/ca/ca.pem").read_bytes()
    old_srv, old_cli = _pair(tmp_path, "bi-core-sbg-1"), _pair(tmp_path, "bi-node-sbg-1")
    assert _node_ca_file(tmp_path, "bi-core-sbg-1") == old_ca

    one = nomad_build(tmp_path, "pki", "rotate-ca", "-c", "cluster.toml")
    ok(one)
    assert one.stdout.startswith("CA rotation stage 1 of 3: build and roll out every node")
    early = nomad_build(tmp_path, "pki", "rotate-ca", "-c", "cluster.toml")
    assert early.returncode == 2 and "stage 1 is not rolled out" in early.stderr
    rc, data = status_json(tmp_path)
    assert rc == 1 and data["rotations"]["ca"]["stage"] == 1
    new_ca = (tmp_path / "state/ca/next.pem").read_bytes()
    ok(nomad_build(tmp_path, "build", "-c", "cluster.toml"))
    bundle1 = _node_ca_file(tmp_path, "bi-core-sbg-1")
    assert bundle1 == old_ca + new_ca  # trusts both; certificates still from the old CA
    assert _pair(tmp_path, "bi-core-sbg-1") == old_srv
    assert _handshake(tmp_path, old_srv, bundle1, old_cli, bundle1)

    two = nomad_build(tmp_path, "pki", "rotate-ca", "-c", "cluster.toml")
    ok(two)
    assert "stage 2 of 3" in two.stdout
    assert two.stderr.count("reissued: certificate") == 6
    assert (tmp_path / "state/ca/ca.pem").read_bytes() == new_ca
    new_srv, new_cli = _pair(tmp_path, "bi-core-sbg-1"), _pair(tmp_path, "bi-node-sbg-1")
    assert pki.cert_signed_by(new_srv[1], new_ca) and new_srv[0] == old_srv[0]
    ok(nomad_build(tmp_path, "build", "-c", "cluster.toml"))
    bundle2 = _node_ca_file(tmp_path, "bi-core-sbg-1")
    assert bundle2 == new_ca + old_ca
    # mid-rollout: upgraded and not-yet-upgraded nodes talk, both ways
    assert _handshake(tmp_path, new_srv, bundle2, old_cli, bundle1)
    assert _handshake(tmp_path, old_srv, bundle1, new_cli, bundle2)
    assert _handshake(tmp_path, new_srv, bundle2, new_cli, bundle2)

    three = nomad_build(tmp_path, "pki", "rotate-ca", "-c", "cluster.toml")
    ok(three)
    assert three.stdout.startswith("CA rotation done")
    archived = list((tmp_path / "state/ca/archive").glob("*.pem"))
    assert [p.read_bytes() for p in archived] == [old_ca]
    ok(nomad_build(tmp_path, "build", "-c", "cluster.toml"))
    bundle3 = _node_ca_file(tmp_path, "bi-core-sbg-1")
    assert bundle3 == new_ca
    assert _handshake(tmp_path, new_srv, bundle3, new_cli, bundle3)
    assert not _handshake(tmp_path, old_srv, bundle1, new_cli, bundle3)  # old CA untrusted
    assert not _handshake(tmp_path, new_srv, bundle3, old_cli, bundle1)
    rc, data = status_json(tmp_path)
    assert rc == 0 and data["rotations"]["ca"] is None
    rc, data = _audit(tmp_path)
    assert rc == 0, [f for f in data["findings"] if f["violation"]]


def test_rotate_gossip(tmp_path: Path) -> None:
    write_cluster(tmp_path)
    ok(nomad_build(tmp_path, "build", "-c", "cluster.toml"))
    old = (tmp_path / "state/gossip.key").read_text().strip()
    early = nomad_build(tmp_path, "pki", "rotate-gossip", "-c", "cluster.toml", "--finish")
    assert early.returncode == 2 and "no rotation under way" in early.stderr
    proc = nomad_build(tmp_path, "pki", "rotate-gossip", "-c", "cluster.toml")
    ok(proc)
    new = (tmp_path / "state/gossip-next.key").read_text().strip()
    assert len(new) == 44 and new != old
    assert proc.stdout.splitlines()[:3] == [
        f"nomad operator gossip keyring install {new}",
        f"nomad operator gossip keyring use {new}",
        f"nomad operator gossip keyring remove {old}",
    ]
    again = nomad_build(tmp_path, "pki", "rotate-gossip", "-c", "cluster.toml", "--json")
    ok(again)
    step = json.loads(again.stdout)
    jsonschema.validate(step, SCHEMA)
    assert step["commands"][0].endswith(new)  # same key, resumable
    rc, data = status_json(tmp_path)
    assert rc == 1 and data["rotations"]["gossip"]["stage"] == 1
    assert (tmp_path / "state/gossip.key").read_text().strip() == old
    ok(nomad_build(tmp_path, "pki", "rotate-gossip", "-c", "cluster.toml", "--finish"))
    assert (tmp_path / "state/gossip.key").read_text().strip() == new
    assert (tmp_path / "state/gossip-history/1.key").read_text().strip() == old
    out = tmp_path / "root"
    ok(
        nomad_build(
            tmp_path, "render", "-c", "cluster.toml", "--node", "bi-core-sbg-1", "--out", "root"
        )
    )
    hcl = next(out.rglob("nomad.hcl")).read_text()
    assert f'encrypt = "{new}"' in hcl.replace("  ", " ")
    rc, _ = status_json(tmp_path)
    assert rc == 0
    ok(nomad_build(tmp_path, "build", "-c", "cluster.toml"))
    rc, data = _audit(tmp_path)  # the old key is known (history) and in no artifact
    assert rc == 0 and all("history" not in f["secret"] for f in data["findings"])


# ---------------------------------------------------------------- membership


def _set_role(text: str, node: str, old: str, new: str) -> str:
    before = f'name = "{node}"\nrole = "{old}"'
    assert before in text
    return text.replace(before, f'name = "{node}"\nrole = "{new}"')


def test_check_explains_server_changes_and_refuses_losing_quorum(tmp_path: Path) -> None:
    path = write_cluster(tmp_path)
    original = path.read_text()
    fresh = nomad_build(tmp_path, "check", "-c", "cluster.toml")
    ok(fresh)
    assert "servers change" not in fresh.stderr  # nothing bootstrapped yet
    ok(nomad_build(tmp_path, "build", "-c", "cluster.toml"))

    # replace a server: the one that goes and the one that comes, in order
    text = _set_role(original, "bi-core-sbg-3", "server", "client")
    path.write_text(_set_role(text, "bi-node-sbg-1", "client", "server"))
    proc = nomad_build(tmp_path, "check", "-c", "cluster.toml")
    ok(proc)
    steps = [ln.removeprefix("warning: ") for ln in proc.stderr.splitlines()]
    assert steps[0] == "servers change: 3 -> 3 (quorum 2 -> 2); bootstrap_expect becomes 3"
    assert steps[1].startswith(
        "step 1: roll out the servers that stay (bi-core-sbg-1, bi-core-sbg-2)"
    )
    assert steps[2].startswith(
        "step 2: stop bi-core-sbg-3, then on a server `nomad server force-leave"
    )
    assert steps[3].startswith("step 3: install bi-node-sbg-1's package")
    assert steps[4].startswith("step 4: roll out the clients")

    # growing 3 -> 5 is allowed; the new servers start one at a time
    text = _set_role(original, "bi-node-sbg-1", "client", "server")
    path.write_text(_set_role(text, "bi-node-sbg-2", "client", "server"))
    grow = nomad_build(tmp_path, "check", "-c", "cluster.toml")
    ok(grow)
    assert "warning: servers change: 3 -> 5 (quorum 2 -> 3)" in grow.stderr
    assert "install bi-node-sbg-2's package" in grow.stderr

    # two of three servers gone at once: no quorum of correctly configured servers
    text = _set_role(original, "bi-core-sbg-2", "server", "client")
    path.write_text(_set_role(text, "bi-core-sbg-3", "server", "client"))
    refused = nomad_build(tmp_path, "check", "-c", "cluster.toml")
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1
    assert "only 1 stay, fewer than a quorum (2) of the current 3" in refused.stderr
    before = entries(tmp_path)
    assert nomad_build(tmp_path, "build", "-c", "cluster.toml").returncode == 2
    assert entries(tmp_path) == before  # the build is refused too, nothing written


LIFECYCLE_COMMANDS = [
    ["pki", "renew"],
    ["pki", "cli-cert"],
    ["pki", "rotate-ca"],
    ["pki", "rotate-gossip"],
    ["pki", "rotate-signing-key"],
    ["state"],
    ["state", "adopt"],
    ["state", "backup"],
    ["state", "restore"],
    ["audit"],
]


@pytest.mark.parametrize(
    "command", LIFECYCLE_COMMANDS, ids=[" ".join(c) for c in LIFECYCLE_COMMANDS]
)
def test_lifecycle_help(tmp_path: Path, command: list[str]) -> None:
    proc = nomad_build(tmp_path, *command, "--help")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith(f"Usage: nomad-build {' '.join(command)}")
    assert list(tmp_path.iterdir()) == []
