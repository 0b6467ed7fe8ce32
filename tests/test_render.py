"""`nomad-build render`: deterministic, idempotent, right modes, secrets only where needed."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import Rendered, nomad_build, write_cluster

SERVER, CLIENT = "bi-core-sbg-1", "bi-node-sbg-1"

# Intended modes on the node (and in `render --out DIR`), per OS and role.
MODES = {
    ("openbsd", "server"): {
        "etc/nomad/nomad.hcl": 0o640,  # holds the gossip key; group _nomad reads it
        "etc/nomad/pf.anchor": 0o644,
        "etc/rc.d/nomad_agent": 0o555,
        "etc/ssl/nomad/nomad-ca.pem": 0o644,
        "etc/ssl/nomad/nomad-server.pem": 0o644,
        "etc/ssl/nomad/nomad-server-key.pem": 0o640,
        "var/nomad": 0o700,
    },
    ("openbsd", "client"): {
        "etc/nomad/nomad.hcl": 0o644,  # no secret in a client's config
        "etc/nomad/pf.anchor": 0o644,
        "etc/rc.d/nomad_agent": 0o555,
        "etc/ssl/nomad/nomad-ca.pem": 0o644,
        "etc/ssl/nomad/nomad-client.pem": 0o644,
        "etc/ssl/nomad/nomad-client-key.pem": 0o600,  # root runs the client
        "var/nomad": 0o700,
    },
    ("debian", "server"): {
        "etc/nomad.d/nomad.hcl": 0o640,
        "etc/nomad.d/tls/nomad-ca.pem": 0o644,
        "etc/nomad.d/tls/nomad-server.pem": 0o644,
        "etc/nomad.d/tls/nomad-server-key.pem": 0o640,
        "etc/nftables.d/nomad-build.nft": 0o644,
        "usr/lib/systemd/system/nomad.service.d/nomad-build.conf": 0o644,
        "opt/nomad/data": 0o700,
    },
    ("debian", "client"): {
        "etc/nomad.d/nomad.hcl": 0o644,
        "etc/nomad.d/tls/nomad-ca.pem": 0o644,
        "etc/nomad.d/tls/nomad-client.pem": 0o644,
        "etc/nomad.d/tls/nomad-client-key.pem": 0o600,
        "etc/nftables.d/nomad-build.nft": 0o644,
        "usr/lib/systemd/system/nomad.service.d/nomad-build.conf": 0o644,
        "opt/nomad/data": 0o700,
    },
}


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """path -> (mode, mtime_ns, content) for everything under root."""
    out: dict[str, tuple[int, int, bytes | None]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            st = p.lstat()
            data = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
            out[str(p.relative_to(root))] = (stat.S_IMODE(st.st_mode), st.st_mtime_ns, data)
    return out


def tree_modes(out: Path) -> dict[str, int]:
    """Modes of the files and leaf directories `render` produced (not parents it made)."""
    found = {}
    for dirpath, dirs, files in os.walk(out):
        for name in files:
            p = Path(dirpath, name)
            found[str(p.relative_to(out))] = stat.S_IMODE(p.stat().st_mode)
        if not dirs and not files:
            found[str(Path(dirpath).relative_to(out))] = stat.S_IMODE(Path(dirpath).stat().st_mode)
    return found


# ---------------------------------------------------------------- render, twice


@pytest.mark.parametrize("os_name", ["openbsd", "debian"])
@pytest.mark.parametrize(("name", "role"), [(SERVER, "server"), (CLIENT, "client")])
def test_render_twice_changes_nothing(tmp_path: Path, os_name: str, name: str, role: str) -> None:
    write_cluster(tmp_path, os_name)
    out = tmp_path / "out"
    first = nomad_build(tmp_path, "render", "-c", "cluster.toml", "--node", name, "--out", "out")
    assert first.returncode == 0, first.stderr
    assert f"created: certificate {name} (new)" in first.stderr.splitlines()
    assert ("created: gossip key (new)" in first.stderr.splitlines()) == (role == "server")

    # besides the node's files only the marker saying nomad-build wrote them
    assert tree_modes(out) == {**MODES[(os_name, role)], ".nomad-build.json": 0o644}
    printed = {str((tmp_path / p).relative_to(out)) for p in first.stdout.split()}
    assert printed == {
        p for p in MODES[(os_name, role)] if p not in ("var/nomad", "opt/nomad/data")
    }

    state_before, out_before = snapshot(tmp_path / "state"), snapshot(out)
    again = nomad_build(tmp_path, "render", "-c", "cluster.toml", "--node", name, "--out", "out")
    assert again.returncode == 0, again.stderr
    assert again.stderr == ""  # nothing created, nothing re-issued
    assert again.stdout == first.stdout
    assert snapshot(tmp_path / "state") == state_before  # bytes, modes AND mtimes
    assert snapshot(out) == out_before

    # a fresh DIR from the same state is byte-identical: output depends on inputs only
    third = nomad_build(tmp_path, "render", "-c", "cluster.toml", "--node", name, "--out", "o2")
    assert third.returncode == 0, third.stderr
    fresh = {k: (m, d) for k, (m, _, d) in snapshot(tmp_path / "o2").items()}
    assert fresh == {k: (m, d) for k, (m, _, d) in out_before.items()}


def test_state_is_private(tmp_path: Path) -> None:
    write_cluster(tmp_path)
    proc = nomad_build(tmp_path, "render", "-c", "cluster.toml", "--node", SERVER, "--out", "o")
    assert proc.returncode == 0, proc.stderr
    for rel, (mode, _, data) in snapshot(tmp_path / "state").items():
        if data is None:
            assert mode == 0o700, rel
        else:
            assert mode & 0o077 == 0 or rel.endswith(".pub"), (rel, oct(mode))


# ---------------------------------------------------------------- secrets


@pytest.fixture(params=["openbsd", "debian"])
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return request.getfixturevalue(f"rendered_{request.param}")


def key_fingerprints(pem: bytes) -> list[bytes]:
    """Ways a private key could leak: its PEM body, its DER, its raw private scalar."""
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
    return [
        body,
        der,
        scalar,
        base64.b64encode(scalar),
        *[line for line in pem.splitlines() if not line.startswith(b"-----")][:1],
    ]


def test_ca_key_never_leaves_state(rendered: Rendered) -> None:
    marks = key_fingerprints((rendered.state_dir / "ca" / "ca.key").read_bytes())
    for tree in rendered.trees.values():
        for f in tree.files:
            for mark in marks:
                assert mark not in f.content, (tree.node, f.path)
    ca_pem = (rendered.state_dir / "ca" / "ca.pem").read_bytes()
    for tree in rendered.trees.values():  # the CA *certificate* is everywhere
        assert any(f.content == ca_pem for f in tree.files), tree.node


def test_node_key_only_in_its_own_tree(rendered: Rendered) -> None:
    for owner in rendered.trees:
        marks = key_fingerprints((rendered.state_dir / "nodes" / owner / "key.pem").read_bytes())
        for name, tree in rendered.trees.items():
            holders = [f for f in tree.files if any(m in f.content for m in marks)]
            if name == owner:
                assert [(f.path, f.kind) for f in holders] == [
                    (f"{rendered.node(name).tls_dir}/{_key_file(rendered, name)}", "secret")
                ]
                assert holders[0].mode & 0o007 == 0  # never world-readable
            else:
                assert holders == [], (owner, name)


def _key_file(r: Rendered, name: str) -> str:
    role = {"server": "server", "client": "client", "both": "agent"}[r.node(name).role]
    return f"nomad-{role}-key.pem"


def test_gossip_key_only_in_servers_trees(rendered: Rendered) -> None:
    gossip = (rendered.state_dir / "gossip.key").read_text().strip()
    raw = base64.b64decode(gossip)
    for name, tree in rendered.trees.items():
        holders = [f for f in tree.files if gossip.encode() in f.content or raw in f.content]
        if rendered.node(name).is_server:
            assert [(f.path, f.kind) for f in holders] == [
                (rendered.node(name).config_file, "secret")
            ]
            assert holders[0].mode & 0o007 == 0
        else:
            assert holders == [], name


# ---------------------------------------------------------------- re-issue


def test_changed_extra_ips_reissue_only_that_nodes_cert(tmp_path: Path) -> None:
    path = write_cluster(tmp_path)
    made = nomad_build(tmp_path, "pki", "renew", "-c", "cluster.toml")
    assert made.returncode == 0, made.stderr
    before = snapshot(tmp_path / "state")

    text = path.read_text()
    anchor = 'address = "10.20.131.42"\n'
    path.write_text(text.replace(anchor, anchor + 'extra_ips = ["10.20.140.42"]\n', 1))
    proc = nomad_build(
        tmp_path, "render", "-c", "cluster.toml", "--node", "bi-node-sbg-2", "--out", "o"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "reissued: certificate bi-node-sbg-2 (IP addresses changed: +10.20.140.42)"
    ]
    after = snapshot(tmp_path / "state")
    changed = sorted(k for k in after if after[k] != before.get(k))
    # a re-issue is a new key and certificate (as `nomad tls cert create`), for that node only
    assert changed == [
        "ledger.json",  # the store records what it wrote
        "nodes/bi-node-sbg-2",
        "nodes/bi-node-sbg-2/cert.pem",
        "nodes/bi-node-sbg-2/key.pem",
    ]

    # the new certificate names the new IP; every other node is still current
    cert = (tmp_path / "o/etc/ssl/nomad/nomad-client.pem").read_bytes()
    assert cert == after["nodes/bi-node-sbg-2/cert.pem"][2]
    text_out = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName"],
        input=cert,
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert "IP Address:10.20.140.42" in text_out
    renew = nomad_build(tmp_path, "pki", "renew", "-c", "cluster.toml")
    assert renew.returncode == 0
    assert renew.stderr.splitlines() == ["every certificate is current"]
    assert snapshot(tmp_path / "state") == after
