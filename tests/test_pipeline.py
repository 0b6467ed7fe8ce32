"""`package` and `build` end to end, as an operator runs them: what lands in dist/,
with which modes, which secrets go where, versions, rebuilds and atomic publishing."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import os
import re
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.publish import publish_tree
from builder.writers import Artifact

from conftest import nomad_build, pycdlib_files, write_cluster

SERVERS = ("bi-core-sbg-1", "bi-core-sbg-2", "bi-core-sbg-3")
CLIENTS = ("bi-node-sbg-1", "bi-node-sbg-2", "bi-node-sbg-3")


def tree_digest(directory: Path) -> dict[str, tuple[str, int]]:
    """relative path -> (sha256, permission bits) for every file under directory."""
    return {
        str(p.relative_to(directory)): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            stat.S_IMODE(p.stat().st_mode),
        )
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def unpacked(data: bytes) -> Iterator[bytes]:
    """data itself and, recursively, every member of the archives it is (gzip, tar, ar,
    ISO 9660) and every long base64 run in it (cloud-init's write_files), so a secret
    inside a compressed package member, inside a seed, is still found."""
    yield data
    for run in re.findall(rb"[A-Za-z0-9+/]{400,}={0,2}", data):
        yield from unpacked(base64.b64decode(run + b"=" * (-len(run) % 4)))
    if data[0x8001:0x8006] == b"CD001":
        for content in pycdlib_files(data)["rr"].values():
            yield from unpacked(content)
    elif data[:2] == b"\x1f\x8b":
        yield from unpacked(gzip.decompress(data))
    elif data[:8] == b"!<arch>\n":
        pos = 8
        while pos + 60 <= len(data):
            size = int(data[pos + 48 : pos + 58].decode().strip())
            yield from unpacked(data[pos + 60 : pos + 60 + size])
            pos += 60 + size + (size % 2)
    elif len(data) > 262 and data[257:262] == b"ustar":
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                f = tar.extractfile(member)
                if f is not None:
                    yield from unpacked(f.read())


def contains(path: Path, needle: bytes) -> bool:
    return any(needle in blob for blob in unpacked(path.read_bytes()))


def pem_body(pem: bytes) -> bytes:
    """The base64 of a PEM's first line of key material: what any copy must contain."""
    return pem.splitlines()[1]


@pytest.fixture
def example(tmp_path: Path) -> Path:
    write_cluster(tmp_path, "openbsd")
    return tmp_path


def run_ok(cwd: Path, *args: str) -> str:
    proc = nomad_build(cwd, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def published(cwd: Path, *args: str) -> str:
    """The one package a `package` command reports (`<status> <path> ...` lines)."""
    lines = [
        ln
        for ln in run_ok(cwd, *args).splitlines()
        if ln.startswith(("new ", "changed ", "unchanged "))
    ]
    assert len(lines) == 1, lines
    return lines[0].split()[1]


def test_package_writes_the_nodes_signed_package(example: Path) -> None:
    out = published(example, "package", "--role", "server", "--node", "bi-core-sbg-1")
    assert out == "dist/openbsd/nomad-config-bi-core-sbg_1-1.tgz"
    path = example / out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # holds the node key and gossip key
    assert gzip.decompress(path.read_bytes())  # a whole gzip stream
    assert b"untrusted comment: verify with bi-sbg-pkg.pub" in path.read_bytes()[:200]
    assert stat.S_IMODE((example / "state").stat().st_mode) == 0o700
    pub = example / "state/bi-sbg-pkg.pub"
    assert pub.read_bytes().startswith(b"untrusted comment: bi-sbg-pkg public key")


def test_package_refuses_the_wrong_role_or_format_before_writing(example: Path) -> None:
    for args, said in [
        (["--role", "client"], "node bi-core-sbg-1 has role 'server', not 'client'"),
        (["--format", "deb"], "its package format is openbsd, not deb"),
    ]:
        proc = nomad_build(example, "package", "--node", "bi-core-sbg-1", *args)
        assert proc.returncode == 2
        assert proc.stderr.strip().endswith(said), proc.stderr
        assert not (example / "dist").exists() and not (example / "state").exists()


def test_version_moves_only_when_the_content_does(example: Path) -> None:
    first = published(example, "package", "--node", "bi-node-sbg-1")
    again = published(example, "package", "--node", "bi-node-sbg-1")
    assert first == again
    cluster = example / "cluster.toml"
    cluster.write_text(cluster.read_text().replace('"edge"', '"edge-2"'))
    changed = published(example, "package", "--node", "bi-node-sbg-1")
    assert changed.endswith("nomad-config-bi-node-sbg_1-2.tgz"), changed
    # Another node's content did not change: its version stays.
    other = published(example, "package", "--node", "bi-node-sbg-2")
    assert other.endswith("nomad-config-bi-node-sbg_2-1.tgz"), other


def test_lost_signify_public_key_is_derived_again(example: Path) -> None:
    run_ok(example, "package", "--node", "bi-core-sbg-1")
    pub = example / "state/bi-sbg-pkg.pub"
    before = pub.read_bytes()
    pub.unlink()
    run_ok(example, "package", "--node", "bi-core-sbg-1")
    assert pub.read_bytes() == before


def test_mismatched_signify_key_pair_is_refused(example: Path, tmp_path: Path) -> None:
    run_ok(example, "package", "--node", "bi-core-sbg-1")
    other = tmp_path / "other"
    write_cluster(other, "openbsd")
    run_ok(other, "package", "--node", "bi-core-sbg-1")
    (example / "state/bi-sbg-pkg.pub").write_bytes((other / "state/bi-sbg-pkg.pub").read_bytes())
    proc = nomad_build(example, "package", "--node", "bi-core-sbg-1")
    assert proc.returncode == 2
    assert "state/bi-sbg-pkg.{sec,pub}: signify key pair: the .pub does not belong to the .sec" in (
        proc.stderr
    ), proc.stderr


# bcrypt of a throwaway password (OpenBSD's installer takes only bcrypt; libxcrypt too),
# so `build` also makes the autoinstall seeds, which carry the node's key as well.
PASSWORD_HASH = "$2b$06$nomadbuildtestsaltsaleYfl.IH3FEPJymiepEcpefqem08fXSuy"


@pytest.mark.parametrize("os_name", ["openbsd", "debian"])
def test_build_is_byte_identical_and_secrets_go_only_where_needed(
    tmp_path: Path, os_name: str
) -> None:
    example = tmp_path
    cluster = write_cluster(example, os_name)
    cluster.write_text(
        cluster.read_text().replace(
            "[images]\n", f'[images]\npassword_hash = "{PASSWORD_HASH}"\n', 1
        )
    )
    check = run_ok(example, "check")
    run_ok(example, "build")
    dist = example / "dist"
    first = tree_digest(dist)
    run_ok(example, "build")
    assert tree_digest(dist) == first

    state = example / "state"
    ca_key = pem_body((state / "ca/ca.key").read_bytes())
    gossip = (state / "gossip.key").read_bytes().strip()
    assert len(gossip) == 44
    artifacts = [dist / p for p in first]
    for path in artifacts:
        assert not contains(path, ca_key), f"CA key in {path}"
    for name in SERVERS + CLIENTS:
        key = pem_body(next(state.glob(f"nodes/{name}/key.pem")).read_bytes())
        holders = {p.relative_to(dist) for p in artifacts if contains(p, key)}
        assert holders, f"{name}'s key is in no artifact"
        assert all(name in str(h) or name.replace("-sbg-", "-sbg_") in str(h) for h in holders), (
            name,
            holders,
        )
        for h in holders:
            assert first[str(h)][1] == 0o600, f"{h} holds a private key but is not 0600"
        # `check` names exactly where the key went.
        line = next(ln for ln in check.splitlines() if ln.startswith(f"  {name} ("))
        globs = line.split(": ", 1)[1].split(", ")
        assert {str(h) for h in holders} == {
            str(p.relative_to(dist)) for g in globs for p in dist.glob(g)
        }, (line, holders)
        assert all(list(dist.glob(g)) for g in globs), line
    gossip_holders = {p.relative_to(dist) for p in artifacts if contains(p, gossip)}
    assert gossip_holders, "no server artifact holds the gossip key"
    assert all(any(s.replace("-sbg-", "-sbg_") in str(h) or s in str(h) for s in SERVERS)
               for h in gossip_holders), gossip_holders  # fmt: skip


def test_failed_publish_leaves_the_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    publish_tree(out, [Artifact("a/one", b"1", secret=False)])
    before = tree_digest(out)
    # "a/one" as a file and as a directory at once: staging fails part-way through.
    bad = [Artifact("b", b"2", secret=False), Artifact("a/one/two", b"3", secret=False),
           Artifact("a/one", b"4", secret=False)]  # fmt: skip
    with pytest.raises(Exception):  # noqa: B017 - whatever the OS raises
        publish_tree(out, bad)
    assert tree_digest(out) == before
    assert sorted(os.listdir(tmp_path)) == ["dist"], "staging left behind"
