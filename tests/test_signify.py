"""builder.signify against the real signify (Debian's signify-openbsd)."""

from __future__ import annotations

import base64
import gzip
import os
from pathlib import Path

import pytest

from builder import signify
from builder.errors import UserError

from pkg_reader import PkgError, pkg_add_verify, signify_tool


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def _payload() -> bytes:
    # Incompressible enough to span several 64 KiB blocks of gzip data.
    return os.urandom(200_000) + b"nomad" * 20_000


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    sec, pub = signify.generate_keypair(comment_name="test-pkg")
    (tmp_path / "test-pkg.sec").write_bytes(sec)
    (tmp_path / "test-pkg.pub").write_bytes(pub)
    return tmp_path / "test-pkg.sec", tmp_path / "test-pkg.pub"


def test_generated_key_files_have_signify_layout(keys: tuple[Path, Path]) -> None:
    sec, pub = (p.read_bytes() for p in keys)
    assert sec.startswith(b"untrusted comment: test-pkg secret key\n")
    assert pub.startswith(b"untrusted comment: test-pkg public key\n")
    sblob = base64.b64decode(sec.split(b"\n")[1])
    pblob = base64.b64decode(pub.split(b"\n")[1])
    assert len(sblob) == 104 and sblob[:4] == b"EdBK" and sblob[4:8] == b"\0\0\0\0"
    assert len(pblob) == 42 and pblob[:2] == b"Ed"
    assert sblob[32:40] == pblob[2:10]  # keynum ties them together
    assert sblob[72:104] == pblob[10:42]  # seckey's second half is the public key


def test_real_signify_signs_with_our_secret_key_and_verifies_with_our_public_key(
    keys: tuple[Path, Path], tmp_path: Path
) -> None:
    sec, pub = keys
    msg = tmp_path / "message"
    msg.write_bytes(b"nomad-build\n")
    r = signify_tool("-S", "-s", str(sec), "-m", str(msg), "-x", str(tmp_path / "m.sig"))
    assert r.returncode == 0, r.stderr
    r = signify_tool("-V", "-p", str(pub), "-m", str(msg), "-x", str(tmp_path / "m.sig"))
    assert r.returncode == 0, r.stderr
    # ...and our detached signature is the one signify makes (Ed25519 is deterministic).
    ours = signify.sign(sec.read_bytes(), msg.read_bytes(), key_name="test-pkg")
    assert ours == (tmp_path / "m.sig").read_bytes()
    signify.verify(pub.read_bytes(), msg.read_bytes(), ours)


def test_signature_from_another_key_is_rejected(keys: tuple[Path, Path], tmp_path: Path) -> None:
    sec, _ = keys
    _, other_pub = signify.generate_keypair(comment_name="other-pkg")
    (tmp_path / "other.pub").write_bytes(other_pub)
    msg = tmp_path / "message"
    msg.write_bytes(b"x")
    (tmp_path / "m.sig").write_bytes(signify.sign(sec.read_bytes(), b"x", key_name="test-pkg"))
    r = signify_tool(
        "-V", "-p", str(tmp_path / "other.pub"), "-m", str(msg), "-x", str(tmp_path / "m.sig")
    )
    assert r.returncode != 0 and b"wrong key" in r.stderr
    with pytest.raises(UserError, match="wrong key"):
        signify.verify(other_pub, b"x", (tmp_path / "m.sig").read_bytes())


def test_keys_made_by_real_signify_are_read(tmp_path: Path) -> None:
    sec, pub = tmp_path / "made-pkg.sec", tmp_path / "made-pkg.pub"
    r = signify_tool("-G", "-n", "-c", "made", "-p", str(pub), "-s", str(sec))
    assert r.returncode == 0, r.stderr
    signify.check_keypair(sec.read_bytes(), pub.read_bytes())
    assert signify.public_key_from_secret(sec.read_bytes()) == pub.read_bytes()
    gz = _gz(b"hello" * 1000)
    signed = signify.zsign(gz, sec.read_bytes(), key_name="made-pkg", mtime=0)
    (tmp_path / "s.tgz").write_bytes(signed)
    r = signify_tool("-Vz", "-p", str(pub), "-x", str(tmp_path / "s.tgz"), "-m", "-")
    assert r.returncode == 0, r.stderr
    assert gzip.decompress(r.stdout) == b"hello" * 1000


def test_zsign_is_byte_identical_to_signify_zS_n(keys: tuple[Path, Path], tmp_path: Path) -> None:
    sec, _ = keys
    gz = _gz(_payload())
    assert len(gz) > 3 * signify.BLOCKSIZE  # several hash lines
    (tmp_path / "in.tgz").write_bytes(gz)
    r = signify_tool(
        "-Sz", "-n", "-s", str(sec), "-m", str(tmp_path / "in.tgz"), "-x", str(tmp_path / "out.tgz")
    )
    assert r.returncode == 0, r.stderr
    ours = signify.zsign(gz, sec.read_bytes(), key_name="test-pkg", mtime=0, key_path=str(sec))
    assert ours == (tmp_path / "out.tgz").read_bytes()


def test_zsign_output_verifies_and_records_date_and_key(
    keys: tuple[Path, Path], tmp_path: Path
) -> None:
    sec, pub = keys
    data = _payload()
    signed = signify.zsign(_gz(data), sec.read_bytes(), key_name="test-pkg", mtime=1_700_000_000)
    (tmp_path / "s.tgz").write_bytes(signed)
    r = signify_tool("-Vz", "-p", str(pub), "-t", "pkg", "-x", str(tmp_path / "s.tgz"), "-m", "-")
    assert r.returncode == 0, r.stderr
    assert gzip.decompress(r.stdout) == data
    info = signify.zverify(signed, pub.read_bytes())
    assert info.comment == "verify with test-pkg.pub"
    assert info.date == "2023-11-14T22:13:20Z"
    # pkg_add's @signer is the basename of key= without .sec (it needs the slash)
    assert info.key == "/etc/signify/test-pkg.sec"
    assert signify.zsign(_gz(data), sec.read_bytes(), key_name="test-pkg", mtime=1_700_000_000) == (
        signed
    ), "same key, data and date: same bytes"


@pytest.mark.parametrize("where", ["payload", "hash-line", "date"])
def test_changing_one_byte_breaks_the_signature(
    keys: tuple[Path, Path], tmp_path: Path, where: str
) -> None:
    sec, pub = keys
    signed = bytearray(
        signify.zsign(_gz(_payload()), sec.read_bytes(), key_name="test-pkg", mtime=5)
    )
    if where == "payload":
        signed[-1000] ^= 0x01
    elif where == "hash-line":
        i = signed.index(b"blocksize=65536\n\n") + 20
        signed[i] = ord("0") if signed[i] != ord("0") else ord("1")
    else:
        i = signed.index(b"date=1970") + 5
        signed[i] = ord("2")
    (tmp_path / "bad.tgz").write_bytes(bytes(signed))
    r = signify_tool("-Vz", "-p", str(pub), "-x", str(tmp_path / "bad.tgz"), "-m", os.devnull)
    assert r.returncode != 0
    with pytest.raises(UserError):
        signify.zverify(bytes(signed), pub.read_bytes())


def test_pkg_add_verification_path_finds_key_in_etc_signify(
    keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """pkg_add runs `signify -zV -t pkg -x - -m -`: no -p, the key comes from
    /etc/signify/<name in the signature comment>, which must end in -pkg.pub."""
    sec, pub = keys
    data = _payload()
    signed = signify.zsign(_gz(data), sec.read_bytes(), key_name="test-pkg", mtime=9)
    out = pkg_add_verify(signed, pub.read_bytes(), "test-pkg", tmp_path / "ns")
    if out is None:
        pytest.skip("no private mount namespace with overlayfs here")
    assert gzip.decompress(out) == data
    # A key not named *-pkg is refused by -t pkg even when it signed the package.
    s2, p2 = signify.generate_keypair(comment_name="test-arc")
    other = signify.zsign(_gz(data), s2, key_name="test-arc", mtime=9)
    with pytest.raises(PkgError, match="keytype"):
        pkg_add_verify(other, p2, "test-arc", tmp_path / "ns2")
    # Unsigned packages need pkg_add -D unsigned.
    with pytest.raises(PkgError, match="unsigned"):
        pkg_add_verify(_gz(data), pub.read_bytes(), "test-pkg", tmp_path / "ns3")


def test_passphrase_protected_keys_are_refused(tmp_path: Path) -> None:
    sec, _ = signify.generate_keypair()
    lines = sec.split(b"\n")
    blob = bytearray(base64.b64decode(lines[1]))
    blob[4:8] = (42).to_bytes(4, "big")
    bad = lines[0] + b"\n" + base64.b64encode(bytes(blob)) + b"\n"
    with pytest.raises(UserError, match="passphrase"):
        signify.parse_secret(bad)


def test_corrupt_and_mismatched_keys_are_refused() -> None:
    sec, pub = signify.generate_keypair()
    lines = sec.split(b"\n")
    blob = bytearray(base64.b64decode(lines[1]))
    blob[50] ^= 1
    with pytest.raises(UserError, match="checksum"):
        signify.parse_secret(lines[0] + b"\n" + base64.b64encode(bytes(blob)) + b"\n")
    with pytest.raises(UserError, match="comment"):
        signify.parse_secret(b"\n".join(lines[1:]))
    _, other = signify.generate_keypair()
    with pytest.raises(UserError, match="does not belong"):
        signify.check_keypair(sec, other)
    signify.check_keypair(sec, pub)


def test_zsign_takes_what_signify_takes() -> None:
    sec, _ = signify.generate_keypair()
    gz = bytearray(_gz(b"x"))
    gz[3] |= 0x04  # FEXTRA: signify's readgz_header refuses it
    with pytest.raises(UserError, match="flags"):
        signify.zsign(bytes(gz), sec, key_name="a-pkg", mtime=0)
    with pytest.raises(UserError, match="not a gzip"):
        signify.zsign(b"plain text", sec, key_name="a-pkg", mtime=0)
