"""`pki rotate-signing-key --apt | --openbsd`: each stage, the refusals to skip one, and
proofs with the real tools that nodes keep verifying what they are sent all along:
gpgv (what apt runs) for the apt repository, signify-openbsd for OpenBSD packages."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from test_apt_repo import HostApt

from conftest import REPO, example_text, nomad_build, pycdlib_files, write_cluster
from pkg_reader import pkg_add_verify, read_package, signify_tool

SCHEMA = json.loads((REPO / "docs" / "output.schema.json").read_text())
KEYRING = "/etc/apt/keyrings/nomad-build-archive-keyring.gpg"


def ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, (proc.stdout, proc.stderr)


def rotate(tmp_path: Path, flag: str) -> subprocess.CompletedProcess[str]:
    return nomad_build(tmp_path, "pki", "rotate-signing-key", "-c", "cluster.toml", flag)


def status(tmp_path: Path) -> tuple[int, dict[str, Any]]:
    proc = nomad_build(tmp_path, "pki", "status", "--json", "-c", "cluster.toml")
    assert proc.returncode in (0, 1), proc.stderr
    data = json.loads(proc.stdout)
    jsonschema.validate(data, SCHEMA)
    return proc.returncode, data


def build(tmp_path: Path) -> None:
    ok(nomad_build(tmp_path, "build", "-c", "cluster.toml"))


# ---------------------------------------------------------------- apt


def gpgv(tmp_path: Path, keyring: bytes, dists: Path) -> bool:
    """Both of apt's checks: Release.gpg over Release, and the clear-signed InRelease."""
    ring = tmp_path / f"ring-{len(list(tmp_path.glob('ring-*')))}.gpg"
    ring.write_bytes(keyring)
    detached = subprocess.run(
        ["gpgv", "--keyring", str(ring), str(dists / "Release.gpg"), str(dists / "Release")],
        capture_output=True,
    )
    inline = subprocess.run(
        ["gpgv", "--keyring", str(ring), str(dists / "InRelease")], capture_output=True
    )
    assert detached.returncode == inline.returncode, (detached.stderr, inline.stderr)
    return detached.returncode == 0


def snapshot(tmp_path: Path, name: str) -> Path:
    """The suite's Release files of the current dist/, kept aside."""
    src = tmp_path / "dist/repo/debian/dists/stable"
    dst = tmp_path / f"release-{name}"
    dst.mkdir()
    for f in ("Release", "Release.gpg", "InRelease"):
        (dst / f).write_bytes((src / f).read_bytes())
    return dst


def repo_keyring(tmp_path: Path) -> bytes:
    return (tmp_path / "dist/repo/debian/nomad-build-archive-keyring.gpg").read_bytes()


def deb_files(tmp_path: Path, node: str) -> tuple[bytes | None, str, str]:
    """(the keyring the node's newest .deb installs, its conffiles, its preinst)."""
    debs = sorted((tmp_path / "dist/debian").glob(f"nomad-config-{node}_*.deb"))
    deb = debs[-1]
    root = tmp_path / f"x-{deb.name}"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    subprocess.run(["dpkg-deb", "-e", str(deb), str(root / "DEBIAN")], check=True)
    ring = root / KEYRING.lstrip("/")
    return (
        ring.read_bytes() if ring.exists() else None,
        (root / "DEBIAN/conffiles").read_text(),
        (root / "DEBIAN/preinst").read_text(),
    )


def seed_keyring(tmp_path: Path, node: str) -> bytes:
    """The keyring the node's cloud-init seed writes (user-data write_files, base64)."""
    iso = tmp_path / "dist/images" / node / "seed.iso"
    user_data = yaml.safe_load(pycdlib_files(iso.read_bytes())["rr"]["user-data"])
    (entry,) = [f for f in user_data["write_files"] if f["path"] == KEYRING]
    assert entry["encoding"] == "b64"
    return base64.b64decode(entry["content"])


def node_apt(tmp_path: Path, name: str, keyring: bytes) -> HostApt:
    """apt on this machine, isolated, as a node with `keyring` at its Signed-By path sees
    the repository (file: URI, the suite and component of the example)."""
    ring = tmp_path / f"{name}-keyring.gpg"
    ring.write_bytes(keyring)
    sources = (
        f"Types: deb\nURIs: file:{tmp_path / 'dist/repo/debian'}\nSuites: stable\n"
        f"Components: main\nSigned-By: {ring}\n"
    )
    return HostApt(tmp_path / f"apt-{name}", sources)


def test_apt_key_rotation_three_stages_with_gpgv(tmp_path: Path) -> None:
    text = example_text("debian").replace(
        "[packages]\n", '[packages]\nrepo_url = "http://10.20.130.10/nomad/debian"\n', 1
    )
    (tmp_path / "cluster.toml").write_text(text)
    build(tmp_path)
    node = "bi-node-sbg-1"
    ring0 = repo_keyring(tmp_path)
    assert deb_files(tmp_path, node)[0] is None  # no rotation yet: packages ship no keyring
    old_key = (tmp_path / "state/apt-signing.key").read_bytes()

    one = rotate(tmp_path, "--apt")
    ok(one)
    assert one.stdout.startswith("apt key rotation stage 1 of 3: build and roll out every Debian")
    early = rotate(tmp_path, "--apt")
    assert early.returncode == 2 and "stage 1 is not rolled out" in early.stderr
    rc, data = status(tmp_path)
    assert rc == 1 and data["rotations"]["apt_key"]["stage"] == 1
    text = nomad_build(tmp_path, "pki", "status", "-c", "cluster.toml").stdout
    assert "rotation apt_key: stage 1 of 3: next build and roll out every Debian node" in text
    assert (tmp_path / "state/apt-signing.key").read_bytes() == old_key

    build(tmp_path)
    ring1 = repo_keyring(tmp_path)
    assert ring1.startswith(ring0) and len(ring1) > len(ring0)  # old + new
    shipped, conffiles, preinst = deb_files(tmp_path, node)
    assert shipped == ring1 and KEYRING in conffiles.split()
    assert f"dpkg-query -S {KEYRING}" in preinst
    assert seed_keyring(tmp_path, node) == ring1
    stage1 = snapshot(tmp_path, "1")
    assert gpgv(tmp_path, ring0, stage1)  # still signed by the old key: nodes not yet upgraded
    assert gpgv(tmp_path, ring1, stage1)
    # and apt itself, on a node left on the old keyring and one given the stage-1 keyring
    left_out, upgraded = node_apt(tmp_path, "left-out", ring0), node_apt(tmp_path, "up", ring1)
    for apt in (left_out, upgraded):
        r = apt.run("apt-get", "update")
        assert r.returncode == 0, r.stdout + r.stderr
        assert apt.candidate(f"nomad-config-{node}") == "2"

    two = rotate(tmp_path, "--apt")
    ok(two)
    assert "stage 2 of 3: build and publish the repository" in two.stdout
    build(tmp_path)
    assert repo_keyring(tmp_path) == ring1  # both keys still
    stage2 = snapshot(tmp_path, "2")
    assert gpgv(tmp_path, ring1, stage2)  # a node with the stage-1 keyring follows the change
    assert not gpgv(tmp_path, ring0, stage2)  # a node left out of stage 1 would not
    r = upgraded.run("apt-get", "update")  # over its stage-1 lists: no Release info change
    assert r.returncode == 0 and "E:" not in r.stderr, r.stdout + r.stderr
    assert "NO_PUBKEY" not in r.stdout + r.stderr
    r = left_out.run("apt-get", "update")  # apt keeps its old lists, and says why
    assert "NO_PUBKEY" in r.stdout + r.stderr, r.stdout + r.stderr

    three = rotate(tmp_path, "--apt")
    ok(three)
    assert three.stdout.startswith("apt key rotation done")
    archived = list((tmp_path / "state/apt-signing-archive").glob("*.key"))
    assert [p.read_bytes() for p in archived] == [old_key]
    assert not (tmp_path / "state/apt-signing-previous.key").exists()
    build(tmp_path)
    ring3 = repo_keyring(tmp_path)
    assert ring3 == ring1[len(ring0) :]  # the new key alone
    assert deb_files(tmp_path, node)[0] == ring3
    assert seed_keyring(tmp_path, node) == ring3
    assert gpgv(tmp_path, ring3, snapshot(tmp_path, "3"))
    assert not gpgv(tmp_path, ring3, stage1)  # the old key's signature no longer verifies
    for apt in (upgraded, node_apt(tmp_path, "fresh", ring3)):
        r = apt.run("apt-get", "update")
        assert r.returncode == 0 and "E:" not in r.stderr, r.stdout + r.stderr
        assert "NO_PUBKEY" not in r.stdout + r.stderr
        assert apt.candidate(f"nomad-config-{node}") == "3"
    rc, data = status(tmp_path)
    assert rc == 0 and data["rotations"]["apt_key"] is None
    audit = nomad_build(tmp_path, "audit", "dist", "-c", "cluster.toml")
    assert audit.returncode == 0, audit.stdout


# ---------------------------------------------------------------- OpenBSD


def packages(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "dist/openbsd").glob("*.tgz"))


def verifies(pkg: Path, pub: Path) -> bool:
    return signify_tool("-zV", "-p", str(pub), "-x", str(pkg), "-m", "/dev/null").returncode == 0


def test_openbsd_key_rotation_three_stages_with_signify(tmp_path: Path) -> None:
    write_cluster(tmp_path)
    build(tmp_path)
    state = tmp_path / "state"
    old_pub, new_pub = state / "bi-sbg-pkg.pub", state / "bi-sbg-g2-pkg.pub"
    old_pub_bytes = old_pub.read_bytes()
    before = {p.name: p.read_bytes() for p in packages(tmp_path)}

    one = rotate(tmp_path, "--openbsd")
    ok(one)
    assert one.stdout.startswith("openbsd key rotation stage 1 of 3")
    assert rotate(tmp_path, "--openbsd").returncode == 2
    rc, data = status(tmp_path)
    assert rc == 1 and data["rotations"]["openbsd_key"]["key"] == "bi-sbg-g2-pkg"
    build(tmp_path)
    stage1 = packages(tmp_path)
    assert {p.name for p in stage1}.isdisjoint(before)  # every package moved on
    for pkg in stage1:
        assert verifies(pkg, old_pub) and not verifies(pkg, new_pub)
        files, _ = read_package(pkg.read_bytes(), pub=old_pub_bytes).installed()
        shipped = files["/etc/signify/bi-sbg-g2-pkg.pub"]
        assert shipped.data == new_pub.read_bytes() and shipped.mode == 0o644
        assert "/etc/signify/bi-sbg-pkg.pub" not in files
    # pkg_add's own check on a node that has only the old key (not yet upgraded)
    checked = pkg_add_verify(stage1[0].read_bytes(), old_pub_bytes, "bi-sbg-pkg", tmp_path / "n1")
    assert checked is None or checked.startswith(b"\x1f\x8b")

    ok(rotate(tmp_path, "--openbsd"))
    build(tmp_path)
    stage2 = packages(tmp_path)
    for pkg in stage2:
        assert verifies(pkg, new_pub) and not verifies(pkg, old_pub)
        files, _ = read_package(pkg.read_bytes(), pub=new_pub.read_bytes()).installed()
        assert files["/etc/signify/bi-sbg-g2-pkg.pub"].data == new_pub.read_bytes()
    checked = pkg_add_verify(
        stage2[0].read_bytes(), new_pub.read_bytes(), "bi-sbg-g2-pkg", tmp_path / "n2"
    )
    assert checked is None or checked.startswith(b"\x1f\x8b")
    dist = tmp_path / "dist"
    sums = signify_tool("-C", "-p", str(new_pub), "-x", "SHA256SUMS.sig", cwd=str(dist))
    assert sums.returncode == 0, sums.stderr
    repo = dist / "repo/openbsd"
    assert (repo / "bi-sbg-g2-pkg.pub").read_bytes() == new_pub.read_bytes()
    index = signify_tool("-C", "-p", str(new_pub), "-x", "SHA256.sig", cwd=str(repo))
    assert index.returncode == 0, index.stderr

    three = rotate(tmp_path, "--openbsd")
    ok(three)
    assert three.stdout.startswith("openbsd key rotation done")
    assert not old_pub.exists() and not (state / "bi-sbg-pkg.sec").exists()
    assert (state / "signify-archive/bi-sbg-pkg.pub").read_bytes() == old_pub_bytes
    build(tmp_path)
    for pkg in packages(tmp_path):  # the new key's file stays in every package
        files, _ = read_package(pkg.read_bytes(), pub=new_pub.read_bytes()).installed()
        assert "/etc/signify/bi-sbg-g2-pkg.pub" in files
    rc, data = status(tmp_path)
    assert rc == 0 and data["rotations"]["openbsd_key"] is None
    audit = nomad_build(tmp_path, "audit", "dist", "-c", "cluster.toml")
    assert audit.returncode == 0, audit.stdout


def test_refusals(tmp_path: Path) -> None:
    write_cluster(tmp_path)
    for args in ((), ("--apt", "--openbsd")):
        proc = nomad_build(tmp_path, "pki", "rotate-signing-key", "-c", "cluster.toml", *args)
        assert proc.returncode == 2 and "exactly one of --apt and --openbsd" in proc.stderr
    no_key = rotate(tmp_path, "--openbsd")
    assert no_key.returncode == 2 and "`nomad-build build` makes one" in no_key.stderr
    no_debian = rotate(tmp_path, "--apt")
    assert no_debian.returncode == 2 and "has no Debian nodes" in no_debian.stderr
    assert not (tmp_path / "state/rotation.json").exists()


def test_lost_keys_are_replaced_deliberately(tmp_path: Path) -> None:
    write_cluster(tmp_path)
    build(tmp_path)
    intact = nomad_build(
        tmp_path, "pki", "rotate-signing-key", "-c", "cluster.toml", "--openbsd", "--lost"
    )
    assert intact.returncode == 2 and "is intact; rotate it in stages" in intact.stderr
    (tmp_path / "state/bi-sbg-pkg.sec").unlink()
    refused = nomad_build(tmp_path, "build", "-c", "cluster.toml")
    assert refused.returncode == 2
    assert "`nomad-build pki rotate-signing-key --openbsd --lost`" in refused.stderr
    lost = nomad_build(
        tmp_path, "pki", "rotate-signing-key", "-c", "cluster.toml", "--openbsd", "--lost"
    )
    ok(lost)
    assert "install dist/repo/openbsd/bi-sbg-g2-pkg.pub as /etc/signify/bi-sbg-g2-pkg.pub" in (
        lost.stdout
    )
    build(tmp_path)
    new_pub = tmp_path / "state/bi-sbg-g2-pkg.pub"
    for pkg in packages(tmp_path):
        assert verifies(pkg, new_pub)
    assert (tmp_path / "dist/repo/openbsd/bi-sbg-g2-pkg.pub").read_bytes() == new_pub.read_bytes()
    rc, data = status(tmp_path)
    assert rc == 0 and data["rotations"]["openbsd_key"] is None
