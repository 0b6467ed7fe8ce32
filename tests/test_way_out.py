"""Every way out a refusal names works (builder.state.way_out).

A secret that existed and went missing or changed is refused by every command with one
line naming the file, the backup, and a deliberate command that replaces it. For each
such file, lost and changed: `build` is refused (exit 2, state/ and dist/ untouched),
`pki status` reports it (exit 1, writes nothing), the command the message names is run
as printed and succeeds, saying what it replaced and what to redeploy, records it, and
then `build` succeeds. Real keys and certificates throughout (a built mixed cluster
with Consul agents: every kind of secret).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
from pathlib import Path

import jsonschema
import pytest

from builder import pki

from conftest import REPO, copy_tree, mixed_text, nomad_build, tree_fingerprint

SCHEMA = json.loads((REPO / "docs" / "output.schema.json").read_text())

CONSUL = "\n[consul.agent]\nenabled = true\n"
WAY_OUT = re.compile(r"or replace it deliberately with `(nomad-build [^`]+)`$")

# (store file, the way out its refusal must name, what its output must tell the operator)
CASES = [
    ("nodes/bi-node-sbg-1/key.pem", "pki renew --node bi-node-sbg-1 --rekey", "redeploy"),
    ("nodes/bi-core-sbg-2/cert.pem", "pki renew --node bi-core-sbg-2 --rekey", "redeploy"),
    (
        "consul-bi-node-sbg-2.key",
        "pki renew --node bi-node-sbg-2 --rekey --only consul",
        "redeploy",
    ),
    (
        "consul-bi-core-sbg-1.pem",
        "pki renew --node bi-core-sbg-1 --rekey --only consul",
        "redeploy",
    ),
    ("ca/ca.key", "pki rotate-ca --lost", "roll out every node"),
    ("ca/ca.pem", "pki rotate-ca --lost", "roll out every node"),
    ("consul-ca.key", "pki rotate-ca --consul --lost", "roll out every node's Consul"),
    ("consul-ca.pem", "pki rotate-ca --consul --lost", "roll out every node's Consul"),
    ("gossip.key", "pki rotate-gossip --lost", "roll out the servers"),
    ("consul-gossip.key", "pki rotate-gossip --consul --lost", "roll out every node"),
    ("apt-signing.key", "pki rotate-signing-key --apt --lost", "by hand"),
    ("bi-sbg-pkg.sec", "pki rotate-signing-key --openbsd --lost", "by hand"),
]
# a replacement by another name: the OpenBSD key's name is in every signature
RENAMED = {"bi-sbg-pkg.sec": "bi-sbg-g2-pkg.sec"}
# what `pki status` looks at: the CAs, the node pairs, the gossip keys
STATUS_SHOWS = ("ca/", "nodes/", "consul-", "gossip.key")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("way-out")
    (d / "cluster.toml").write_text(mixed_text().replace("\n[packages]", CONSUL + "\n[packages]"))
    proc = nomad_build(d, "build", "-c", "cluster.toml")
    assert proc.returncode == 0, proc.stderr
    return d


@pytest.fixture
def cluster_dir(built: Path, tmp_path: Path) -> Path:
    copy_tree(built, tmp_path)
    return tmp_path


def run(d: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return nomad_build(d, *args, "-c", "cluster.toml")


def damage(path: Path, how: str) -> None:
    if how == "lost":
        path.unlink()
    else:  # one bit of one byte
        data = path.read_bytes()
        path.write_bytes(data[:10] + bytes([data[10] ^ 1]) + data[11:])


def snapshot(d: Path) -> tuple[object, object]:
    return tree_fingerprint(d / "state"), tree_fingerprint(d / "dist")


def refused_way_out(d: Path, rel: str, *command: str) -> str:
    """`command` (`build`) refuses with one line naming rel and a way out, writing
    nothing; the way out."""
    before = snapshot(d)
    proc = run(d, *(command or ("build",)))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nomad-build: state/{rel}: "), proc.stderr
    assert "restore it from your backup" in lines[0]
    assert snapshot(d) == before, "a refused build wrote something"
    found = WAY_OUT.search(lines[0])
    assert found is not None, lines[0]
    return found.group(1)


def status_damage(d: Path) -> list[dict[str, str | None]]:
    """pki status --json's damage list; it writes nothing."""
    before = snapshot(d)
    proc = run(d, "pki", "status", "--json")
    assert proc.returncode in (0, 1), proc.stderr
    assert snapshot(d) == before, "pki status wrote something"
    report = json.loads(proc.stdout)
    assert report["action_needed"] == (proc.returncode == 1)
    damage: list[dict[str, str | None]] = report["damage"]
    return damage


def lost_history(d: Path) -> list[dict[str, object]]:
    record = json.loads((d / "state/rotation.json").read_text())
    return [e for e in record.get("history", []) if e.get("lost")]


def ledger_digest(d: Path, rel: str) -> str | None:
    entry = json.loads((d / "state/ledger.json").read_text())["files"][rel]
    digest: str | None = entry["sha256"]
    return digest


@pytest.mark.parametrize("how", ["lost", "changed"])
@pytest.mark.parametrize(("rel", "command", "tells"), CASES, ids=[c[0] for c in CASES])
def test_the_way_out_works(cluster_dir: Path, rel: str, command: str, tells: str, how: str) -> None:
    d = cluster_dir
    old = (d / "state" / rel).read_bytes()
    damage(d / "state" / rel, how)

    way_out = refused_way_out(d, rel)
    assert way_out == f"nomad-build {command}"
    if rel.startswith(STATUS_SHOWS):
        shown = status_damage(d)
        assert [x["file"] for x in shown] == [rel] and shown[0]["way_out"] == way_out
        assert (shown[0]["problem"] or "").startswith(f"state/{rel}: ")

    proc = run(d, *shlex.split(way_out)[1:])
    assert proc.returncode == 0, proc.stderr
    said = proc.stdout + proc.stderr
    assert tells in said, said
    assert re.search(r"^(created|reissued): ", proc.stderr, re.M), proc.stderr
    assert lost_history(d), "the replacement is not recorded in rotation.json"
    now = RENAMED.get(rel, rel)
    new = (d / "state" / now).read_bytes()
    assert new != old
    assert ledger_digest(d, now) == hashlib.sha256(new).hexdigest()

    proc = run(d, "build")
    assert proc.returncode == 0, proc.stderr
    assert status_damage(d) == []


def test_a_rekeyed_node_gets_a_new_pair_from_the_same_ca(cluster_dir: Path) -> None:
    d = cluster_dir
    state = d / "state"
    old_cert = (state / "nodes/bi-node-sbg-1/cert.pem").read_bytes()
    (state / "nodes/bi-node-sbg-1/key.pem").unlink()
    proc = run(d, "pki", "renew", "--node", "bi-node-sbg-1", "--rekey", "--only", "nomad")
    assert proc.returncode == 0, proc.stderr
    key = (state / "nodes/bi-node-sbg-1/key.pem").read_bytes()
    cert = (state / "nodes/bi-node-sbg-1/cert.pem").read_bytes()
    assert cert != old_cert and pki.key_matches_cert(key, cert)
    assert pki.cert_signed_by(cert, (state / "ca/ca.pem").read_bytes())
    assert lost_history(d)[-1]["nodes"] == ["bi-node-sbg-1"]
    assert "replaced bi-node-sbg-1's nodes/bi-node-sbg-1/key.pem (lost)" in proc.stdout


def test_rekey_replaces_only_the_named_node(cluster_dir: Path) -> None:
    """Another node's lost secret is never replaced along: refused where it is read
    (nothing written), left lost where it is not, and refused by the next build."""
    d = cluster_dir
    state = d / "state"
    (state / "nodes/bi-node-sbg-1/key.pem").unlink()
    (state / "nodes/bi-node-sbg-2/cert.pem").unlink()
    before = snapshot(d)
    proc = run(d, "pki", "renew", "--node", "bi-node-sbg-1", "--rekey")
    assert proc.returncode == 2 and "state/nodes/bi-node-sbg-2/cert.pem: missing" in proc.stderr
    assert snapshot(d) == before
    proc = run(d, "pki", "renew", "--node", "bi-node-sbg-1")  # without --rekey: refused
    assert proc.returncode == 2 and ": missing, but this store created it" in proc.stderr
    assert snapshot(d) == before

    (state / "nodes/bi-node-sbg-3/key.pem").unlink()  # a key `renew --node` does not read
    (state / "nodes/bi-node-sbg-2/cert.pem").write_bytes(b"")  # (no longer lost: changed)
    assert run(d, "pki", "renew", "--node", "bi-node-sbg-2", "--rekey").returncode == 0
    assert not (state / "nodes/bi-node-sbg-3/key.pem").exists()
    proc = run(d, "build")
    assert proc.returncode == 2 and "nodes/bi-node-sbg-1/key.pem: missing" in proc.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("pki", "rotate-ca", "--lost"),
        ("pki", "rotate-ca", "--consul", "--lost"),
        ("pki", "rotate-gossip", "--lost"),
        ("pki", "rotate-gossip", "--consul", "--lost"),
    ],
)
def test_lost_is_refused_while_the_secret_is_sound(
    cluster_dir: Path, command: tuple[str, ...]
) -> None:
    before = snapshot(cluster_dir)
    proc = run(cluster_dir, *command)
    assert proc.returncode == 2 and "is not lost nor changed" in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert snapshot(cluster_dir) == before


def test_a_lost_ca_key_keeps_the_old_ca_trusted_until_the_rollout(cluster_dir: Path) -> None:
    """ca.pem intact: the old CA certificate stays in the bundle (nodes not yet upgraded
    keep being trusted by those upgraded), then `pki rotate-ca` drops it after a build."""
    d = cluster_dir
    state = d / "state"
    old_ca = (state / "ca/ca.pem").read_bytes()
    (state / "ca/ca.key").unlink()
    assert run(d, "pki", "rotate-ca", "--lost").returncode == 0
    assert (state / "ca/previous.pem").read_bytes() == old_ca
    new_ca = (state / "ca/ca.pem").read_bytes()
    for node in ("bi-core-sbg-1", "bi-node-sbg-3"):
        cert = (state / f"nodes/{node}/cert.pem").read_bytes()
        assert pki.cert_signed_by(cert, new_ca) and not pki.cert_signed_by(cert, old_ca)
    status = json.loads(run(d, "pki", "status", "--json").stdout)
    assert status["rotations"]["ca"]["stage"] == 2
    early = run(d, "pki", "rotate-ca")
    assert early.returncode == 2 and "not rolled out" in early.stderr
    assert run(d, "build").returncode == 0
    done = run(d, "pki", "rotate-ca")
    assert done.returncode == 0, done.stderr
    assert not (state / "ca/previous.pem").exists()
    serial = f"{pki.inspect_cert(old_ca).serial:x}"
    assert (state / f"ca/archive/{serial}.pem").read_bytes() == old_ca
    assert run(d, "build").returncode == 0


def test_a_changed_secret_is_kept_beside_its_replacement(cluster_dir: Path) -> None:
    """Never destroy data: the changed bytes are kept (0600) in the state for a look."""
    d = cluster_dir
    damage(d / "state/gossip.key", "changed")
    changed = (d / "state/gossip.key").read_bytes()
    proc = run(d, "pki", "rotate-gossip", "--lost")
    assert proc.returncode == 0, proc.stderr
    kept = list((d / "state/gossip-history/damaged").iterdir())
    assert [k.read_bytes() for k in kept] == [changed]
    assert kept[0].stat().st_mode & 0o777 == 0o600
    new = (d / "state/gossip.key").read_text().strip()
    assert f"nomad operator gossip keyring install {new}" in proc.stdout
    assert "nomad operator gossip keyring list" in proc.stdout


def test_pki_status_text_names_the_damage(cluster_dir: Path) -> None:
    d = cluster_dir
    (d / "state/gossip.key").unlink()
    damage(d / "state/nodes/bi-core-sbg-3/key.pem", "changed")
    proc = run(d, "pki", "status")
    assert proc.returncode == 1, proc.stderr
    assert re.search(
        r"^bi-core-sbg-3: damaged: state/nodes/bi-core-sbg-3/key.pem: ", proc.stdout, re.M
    )
    assert "`nomad-build pki renew --node bi-core-sbg-3 --rekey`" in proc.stdout
    assert re.search(r"^gossip key: damaged: state/gossip.key: missing", proc.stdout, re.M)


# ---------------------------------------------------------------- during a rotation


def way_out_ok(d: Path, way_out: str) -> subprocess.CompletedProcess[str]:
    proc = run(d, *shlex.split(way_out)[1:])
    assert proc.returncode == 0, proc.stderr
    return proc


def test_a_lost_ca_key_in_rotation_stage_1_promotes_the_next_ca(cluster_dir: Path) -> None:
    d = cluster_dir
    state = d / "state"
    assert run(d, "pki", "rotate-ca").returncode == 0
    next_ca = (state / "ca/next.pem").read_bytes()
    (state / "ca/ca.key").unlink()
    way_out_ok(d, refused_way_out(d, "ca/ca.key"))
    assert (state / "ca/ca.pem").read_bytes() == next_ca  # trusted since stage 1
    assert not (state / "ca/next.pem").exists() and (state / "ca/previous.pem").exists()
    cert = (state / "nodes/bi-node-sbg-2/cert.pem").read_bytes()
    assert pki.cert_signed_by(cert, next_ca)
    assert run(d, "build").returncode == 0
    assert run(d, "pki", "rotate-ca").returncode == 0  # drops the lost CA: done
    assert json.loads(run(d, "pki", "status", "--json").stdout)["rotations"]["ca"] is None


def test_a_lost_ca_key_in_rotation_stage_2_gets_a_fresh_ca(cluster_dir: Path) -> None:
    d = cluster_dir
    state = d / "state"
    assert run(d, "pki", "rotate-ca").returncode == 0
    assert run(d, "build").returncode == 0
    assert run(d, "pki", "rotate-ca").returncode == 0
    oldest = (state / "ca/previous.pem").read_bytes()
    lost = (state / "ca/ca.pem").read_bytes()
    (state / "ca/ca.key").write_bytes(b"")
    way_out_ok(d, refused_way_out(d, "ca/ca.key"))
    serial = f"{pki.inspect_cert(oldest).serial:x}"
    assert (state / f"ca/archive/{serial}.pem").read_bytes() == oldest
    assert (state / "ca/previous.pem").read_bytes() == lost
    assert (state / "ca/ca.pem").read_bytes() not in (oldest, lost)
    assert run(d, "build").returncode == 0


def test_a_lost_gossip_key_during_its_rotation_makes_the_next_one_current(
    cluster_dir: Path,
) -> None:
    d = cluster_dir
    state = d / "state"
    assert run(d, "pki", "rotate-gossip").returncode == 0
    upcoming = (state / "gossip-next.key").read_bytes()
    (state / "gossip.key").unlink()
    proc = way_out_ok(d, refused_way_out(d, "gossip.key"))
    assert (state / "gossip.key").read_bytes() == upcoming
    assert upcoming.decode().strip() in proc.stdout and not (state / "gossip-next.key").exists()
    assert run(d, "build").returncode == 0
    assert json.loads(run(d, "pki", "status", "--json").stdout)["rotations"]["gossip"] is None


def test_a_lost_next_apt_key_abandons_its_rotation(cluster_dir: Path) -> None:
    d = cluster_dir
    state = d / "state"
    current = (state / "apt-signing.key").read_bytes()
    assert run(d, "pki", "rotate-signing-key", "--apt").returncode == 0
    (state / "apt-signing-next.key").unlink()
    proc = way_out_ok(d, refused_way_out(d, "apt-signing-next.key"))
    assert "abandoned" in proc.stdout
    assert (state / "apt-signing.key").read_bytes() == current
    assert run(d, "build").returncode == 0
    assert run(d, "pki", "rotate-signing-key", "--apt").returncode == 0  # can start again


def test_a_lost_new_signify_key_abandons_its_rotation(cluster_dir: Path) -> None:
    d = cluster_dir
    state = d / "state"
    assert run(d, "pki", "rotate-signing-key", "--openbsd").returncode == 0
    assert run(d, "build").returncode == 0
    (state / "bi-sbg-g2-pkg.sec").unlink()
    stage_2 = ("pki", "rotate-signing-key", "--openbsd")
    proc = way_out_ok(d, refused_way_out(d, "bi-sbg-g2-pkg.sec", *stage_2))
    assert "abandoned" in proc.stdout
    assert (state / "signify-archive/bi-sbg-g2-pkg.pub").exists()
    assert run(d, "build").returncode == 0
    again = run(d, "pki", "rotate-signing-key", "--openbsd", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["status"]["key"] == "bi-sbg-g3-pkg"


def test_a_lost_previous_signify_key_finishes_its_rotation(cluster_dir: Path) -> None:
    d = cluster_dir
    state = d / "state"
    for _ in range(2):
        assert run(d, "pki", "rotate-signing-key", "--openbsd").returncode == 0
        assert run(d, "build").returncode == 0
    (state / "bi-sbg-pkg.sec").unlink()
    stage_3 = ("pki", "rotate-signing-key", "--openbsd")
    proc = way_out_ok(d, refused_way_out(d, "bi-sbg-pkg.sec", *stage_3))
    assert "rotation is done" in proc.stdout
    assert run(d, "build").returncode == 0
    assert json.loads(run(d, "pki", "status", "--json").stdout)["rotations"]["openbsd_key"] is None


def test_the_json_of_a_way_out_follows_the_schema(cluster_dir: Path) -> None:
    d = cluster_dir
    (d / "state/ca/ca.key").unlink()
    (d / "state/gossip.key").unlink()
    status = json.loads(run(d, "pki", "status", "--json").stdout)
    jsonschema.validate(status, SCHEMA)
    assert {x["file"] for x in status["damage"]} == {"ca/ca.key", "gossip.key"}
    assert status["ca"]["state"] == "damaged" and "ca/ca.key" in status["ca"]["reason"]
    for command in (("rotate-ca", "--lost"), ("rotate-gossip", "--lost")):
        proc = run(d, "pki", *command, "--json")
        assert proc.returncode == 0, proc.stderr
        jsonschema.validate(json.loads(proc.stdout), SCHEMA)
