"""builder.openpgp against the real OpenPGP tools: gpg, gpgv (what apt runs) and sqv."""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder import openpgp
from builder.errors import UserError

KEY_TIME = 1_700_000_000  # 2023-11-14 22:13:20 UTC
SIG_TIME = KEY_TIME + 100
GPG_TIME = "20231114T221500!"  # SIG_TIME for gpg --faked-system-time

# Texts that exercise the cleartext framework's rules (RFC 4880 §7.1).
CLEARTEXT_CASES = {
    "dashes": b"-a\n--\n-----BEGIN PGP SIGNATURE-----\n- x\n-----END PGP SIGNATURE-----\n",
    "from": b"From here\nFrom\nFromage\n>From \n",
    "trailing-white-space": b"a  \nb\t\nc \t \nd\n",
    "crlf": b"a\r\nb \r\nc\r\n",
    "no-final-newline": b"no newline",
    "empty": b"",
    "blank-lines": b"a\n\n\n",
    "only-newline": b"\n",
    "utf-8": "Label: é ünïcode\n".encode(),
    "lone-cr": b"a\rb\n",
    "release-like": b"Origin: x\nSHA256:\n 00 1 main/binary-all/Packages\n",
}


_HOMES: set[Path] = set()  # every GNUPGHOME gpg ran in: its agent is stopped afterwards


@pytest.fixture(scope="module", autouse=True)
def _stop_gpg_agents() -> Iterator[None]:
    """gpg starts a gpg-agent per GNUPGHOME that outlives it: stop each one."""
    yield
    for home in sorted(_HOMES):
        subprocess.run(
            ["gpgconf", "--homedir", str(home), "--kill", "all"],
            capture_output=True,
            env={"PATH": "/usr/bin:/bin"},
            check=False,
        )
    _HOMES.clear()


def _run(
    *args: str, input: bytes | None = None, home: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    if home is not None:
        env["GNUPGHOME"] = str(home)
        _HOMES.add(home)
    return subprocess.run(list(args), input=input, capture_output=True, env=env, check=False)


@pytest.fixture(scope="module")
def key() -> bytes:
    return openpgp.generate_key("nomad-build test-cluster", created=KEY_TIME)


@pytest.fixture(scope="module")
def keyring(key: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keyring") / "nomad-build-archive-keyring.gpg"
    path.write_bytes(openpgp.public_keyring(key))
    return path


@pytest.fixture(scope="module")
def gpg_home(key: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GNUPGHOME holding our secret key, imported with gpg itself."""
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    r = _run("gpg", "--batch", "--import", input=key, home=home)
    assert r.returncode == 0, r.stderr.decode()
    assert b"secret keys imported: 1" in r.stderr
    return home


def _gpgv(keyring: Path, *files: Path) -> subprocess.CompletedProcess[bytes]:
    return _run("gpgv", "--keyring", str(keyring), *map(str, files))


def _colons(keyring: Path, home: Path) -> list[list[str]]:
    r = _run("gpg", "--batch", "--with-colons", "--show-keys", str(keyring), home=home)
    assert r.returncode == 0, r.stderr.decode()
    return [line.split(":") for line in r.stdout.decode().splitlines()]


# ---------------------------------------------------------------- keys


def test_keyring_is_what_gpg_show_keys_reads(key: bytes, keyring: Path, tmp_path: Path) -> None:
    home = tmp_path / "g"
    home.mkdir(mode=0o700)
    rows = _colons(keyring, home)
    pub = next(r for r in rows if r[0] == "pub")
    assert pub[3] == "22"  # EdDSA
    assert pub[5] == str(KEY_TIME)
    assert pub[6] == ""  # no expiry
    assert pub[11] == "scSC"  # sign + certify
    assert pub[16] == "ed25519"
    fpr = next(r for r in rows if r[0] == "fpr")[9]
    assert fpr == openpgp.fingerprint(key)
    assert pub[4] == fpr[-16:]
    uids = [r[9] for r in rows if r[0] == "uid"]
    assert uids == ["nomad-build test-cluster"]
    # gpg --import drops a user id whose self-certification does not verify.
    r = _run("gpg", "--batch", "--import", str(keyring), home=home)
    assert r.returncode == 0 and b"imported: 1" in r.stderr, r.stderr.decode()
    r = _run("gpg", "--batch", "--check-signatures", fpr, home=home)
    assert r.returncode == 0 and b"sig!" in r.stdout, r.stdout.decode() + r.stderr.decode()


def test_keyring_starts_like_gpg_export_and_equals_it(
    key: bytes, keyring: Path, gpg_home: Path
) -> None:
    data = keyring.read_bytes()
    # An old-format public-key packet: what apt's check of a binary .gpg keyring expects.
    assert data[0] in (0x98, 0x99)
    r = _run("gpg", "--batch", "--export", openpgp.fingerprint(key), home=gpg_home)
    assert r.returncode == 0 and r.stdout == data


def test_secret_key_is_a_gpg_importable_armored_secret_key(key: bytes, gpg_home: Path) -> None:
    assert key.startswith(b"-----BEGIN PGP PRIVATE KEY BLOCK-----\n")
    r = _run("gpg", "--batch", "--with-colons", "--list-secret-keys", home=gpg_home)
    rows = [line.split(":") for line in r.stdout.decode().splitlines()]
    sec = next(r for r in rows if r[0] == "sec")
    assert sec[3] == "22" and sec[5] == str(KEY_TIME) and sec[16] == "ed25519"
    # Exported back by gpg (unprotected), it reads as the same key.
    r = _run("gpg", "--batch", "--armor", "--export-secret-keys", home=gpg_home)
    assert r.returncode == 0, r.stderr.decode()
    again = openpgp.parse_secret_key(r.stdout)
    assert again.fingerprint.hex().upper() == openpgp.fingerprint(key)
    assert openpgp.public_keyring(r.stdout) == openpgp.public_keyring(key)


def test_key_made_by_gpg_signs_for_gpgv(tmp_path: Path) -> None:
    home = tmp_path / "g"
    home.mkdir(mode=0o700)
    r = _run(
        "gpg", "--batch", "--passphrase", "", "--quick-generate-key",
        "made by gpg", "ed25519", "sign", "never", home=home,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    sec = _run("gpg", "--batch", "--export-secret-keys", home=home).stdout  # binary
    pub = _run("gpg", "--batch", "--export", home=home).stdout
    (tmp_path / "gpg.gpg").write_bytes(pub)
    data = b"signed with gpg's own key\n"
    (tmp_path / "data").write_bytes(data)
    (tmp_path / "data.sig").write_bytes(openpgp.detached_signature(sec, data, created=SIG_TIME))
    (tmp_path / "data.asc").write_bytes(openpgp.clearsign(sec, data, created=SIG_TIME))
    # gpg made the key now, after SIG_TIME: the signature is dated at the key's birth instead.
    for args in (("data.sig", "data"), ("data.asc",)):
        v = _gpgv(tmp_path / "gpg.gpg", *(tmp_path / a for a in args))
        assert v.returncode == 0, v.stderr.decode()


def test_public_keyring_is_deterministic_and_armored_form_matches(key: bytes) -> None:
    assert openpgp.public_keyring(key) == openpgp.public_keyring(key)
    armored = openpgp.armored_public_key(key)
    assert armored.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n")
    assert openpgp.dearmor(armored, "PGP PUBLIC KEY BLOCK") == openpgp.public_keyring(key)


def test_generated_keys_differ_and_are_dated_now() -> None:
    a, b = openpgp.generate_key("x"), openpgp.generate_key("x")
    assert openpgp.fingerprint(a) != openpgp.fingerprint(b)
    assert openpgp.parse_secret_key(a).created > KEY_TIME


def test_protected_or_corrupt_secret_keys_are_refused(key: bytes, tmp_path: Path) -> None:
    home = tmp_path / "g"
    home.mkdir(mode=0o700)
    r = _run(
        "gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "pw",
        "--quick-generate-key", "protected", "ed25519", "sign", "never", home=home,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    protected = _run(
        "gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "pw",
        "--export-secret-keys", home=home,
    ).stdout  # fmt: skip
    with pytest.raises(UserError, match="passphrase"):
        openpgp.parse_secret_key(protected)
    raw = bytearray(openpgp.dearmor(key, "PGP PRIVATE KEY BLOCK"))
    raw[60] ^= 0x01  # inside the secret MPI (header 2 + public part 51 + S2K 1 + MPI length 2)
    with pytest.raises(UserError, match="checksum"):
        openpgp.parse_secret_key(bytes(raw))
    lines = key.split(b"\n")
    lines[2] = base64.b64encode(base64.b64decode(lines[2])[:-1] + b"\x00")
    with pytest.raises(UserError, match="armor checksum"):
        openpgp.parse_secret_key(b"\n".join(lines))
    with pytest.raises(UserError, match=r"algorithm 1,"):
        rsa_home = tmp_path / "r"
        rsa_home.mkdir(mode=0o700)
        _run("gpg", "--batch", "--passphrase", "", "--quick-generate-key", "rsa", "rsa2048",
             "sign", "never", home=rsa_home)  # fmt: skip
        openpgp.parse_secret_key(_run("gpg", "--export-secret-keys", home=rsa_home).stdout)


# ---------------------------------------------------------------- signatures


def test_detached_signature_verifies_with_gpgv_gpg_and_sqv(
    key: bytes, keyring: Path, tmp_path: Path
) -> None:
    data = b"Origin: nomad-build\nSuite: stable\n"
    (tmp_path / "Release").write_bytes(data)
    sig = openpgp.detached_signature(key, data, created=SIG_TIME)
    assert sig.startswith(b"-----BEGIN PGP SIGNATURE-----\n\n")
    (tmp_path / "Release.gpg").write_bytes(sig)
    r = _gpgv(keyring, tmp_path / "Release.gpg", tmp_path / "Release")
    assert r.returncode == 0, r.stderr.decode()
    assert b'Good signature from "nomad-build test-cluster"' in r.stderr
    assert openpgp.fingerprint(key).encode() in r.stderr
    home = tmp_path / "g"
    home.mkdir(mode=0o700)
    _run("gpg", "--batch", "--import", str(keyring), home=home)
    r = _run("gpg", "--batch", "--status-fd", "1", "--verify", str(tmp_path / "Release.gpg"),
             str(tmp_path / "Release"), home=home)  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    # VALIDSIG <fpr> <date> <sig time> ... : the caller's time, SHA-512 (10), binary (00)
    valid = next(line for line in r.stdout.decode().splitlines() if "VALIDSIG" in line).split()
    assert valid[2] == openpgp.fingerprint(key) and valid[4] == str(SIG_TIME)
    assert valid[6:11] == ["4", "0", "22", "10", "00"]
    if shutil.which("sqv") is None:
        pytest.skip("sqv not installed (scripts/debian-packages.txt lists it)")
    r = _run("sqv", "--keyring", str(keyring), str(tmp_path / "Release.gpg"),
             str(tmp_path / "Release"))  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == openpgp.fingerprint(key)


def test_signatures_are_byte_identical_to_gpgs_own(
    key: bytes, gpg_home: Path, tmp_path: Path
) -> None:
    """gpg --faked-system-time signs with the same subpackets; Ed25519 is deterministic."""
    data = b"Origin: nomad-build\nDate: Tue, 14 Nov 2023 22:15:00 UTC\n"
    (tmp_path / "d").write_bytes(data)
    common = ("gpg", "--batch", "--faked-system-time", GPG_TIME, "--digest-algo", "SHA512")
    r = _run(*common, "--armor", "--detach-sign", "-o", "-", str(tmp_path / "d"), home=gpg_home)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == openpgp.detached_signature(key, data, created=SIG_TIME)
    r = _run(*common, "--clearsign", "-o", "-", str(tmp_path / "d"), home=gpg_home)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == openpgp.clearsign(key, data, created=SIG_TIME)


@pytest.mark.parametrize("case", sorted(CLEARTEXT_CASES))
def test_cleartext_edge_cases_verify_and_match_gpg(
    case: str, key: bytes, keyring: Path, gpg_home: Path, tmp_path: Path
) -> None:
    data = CLEARTEXT_CASES[case]
    ours = openpgp.clearsign(key, data, created=SIG_TIME)
    (tmp_path / "InRelease").write_bytes(ours)
    r = _gpgv(keyring, tmp_path / "InRelease")
    assert r.returncode == 0, r.stderr.decode()
    (tmp_path / "d").write_bytes(data)
    r = _run("gpg", "--batch", "--faked-system-time", GPG_TIME, "--digest-algo", "SHA512",
             "--clearsign", "-o", "-", str(tmp_path / "d"), home=gpg_home)  # fmt: skip
    assert r.stdout == ours
    # What a verifier reads back: the lines, un-escaped (gpg drops trailing white space).
    r = _run("gpg", "--batch", "--decrypt", str(tmp_path / "InRelease"), home=gpg_home)
    assert r.returncode == 0, r.stderr.decode()
    text = data if data.endswith(b"\n") else data + b"\n"
    want = b"\n".join(line.rstrip(b" \t\r") for line in text.split(b"\n"))
    got = b"\n".join(line.rstrip(b" \t\r") for line in r.stdout.split(b"\n"))
    assert got == want


def test_cleartext_escapes_dashes_and_from_lines(key: bytes) -> None:
    out = openpgp.clearsign(key, CLEARTEXT_CASES["dashes"] + b"From x\nFrom\n", created=SIG_TIME)
    body = out.split(b"\n\n", 1)[1].split(b"\n-----BEGIN PGP SIGNATURE-----\n")[0]
    assert body.split(b"\n") == [
        b"- -a", b"- --", b"- -----BEGIN PGP SIGNATURE-----", b"- - x",
        b"- -----END PGP SIGNATURE-----", b"- From x", b"From",
    ]  # fmt: skip
    assert out.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n")
    sha256 = openpgp.clearsign(key, b"x\n", created=SIG_TIME, hash_name="SHA256")
    assert sha256.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n")


def test_sha256_cleartext_verifies(key: bytes, keyring: Path, tmp_path: Path) -> None:
    (tmp_path / "InRelease").write_bytes(
        openpgp.clearsign(key, b"Suite: stable\n", created=SIG_TIME, hash_name="SHA256")
    )
    r = _gpgv(keyring, tmp_path / "InRelease")
    assert r.returncode == 0, r.stderr.decode()


@pytest.mark.parametrize("where", ["data", "signature"])
def test_one_flipped_byte_fails_detached(
    where: str, key: bytes, keyring: Path, tmp_path: Path
) -> None:
    data = b"Origin: nomad-build\nSuite: stable\n"
    sig = openpgp.detached_signature(key, data, created=SIG_TIME)
    if where == "data":
        data = data.replace(b"stable", b"stablf")
    else:  # a byte of the Ed25519 value (S), inside the base64 body
        raw = bytearray(openpgp.dearmor(sig, "PGP SIGNATURE"))
        raw[-5] ^= 0x01
        sig = openpgp.armor("PGP SIGNATURE", bytes(raw))
    (tmp_path / "Release").write_bytes(data)
    (tmp_path / "Release.gpg").write_bytes(sig)
    r = _gpgv(keyring, tmp_path / "Release.gpg", tmp_path / "Release")
    assert r.returncode != 0
    assert b"BAD signature" in r.stderr, r.stderr.decode()
    if shutil.which("sqv"):
        r = _run("sqv", "--keyring", str(keyring), str(tmp_path / "Release.gpg"),
                 str(tmp_path / "Release"))  # fmt: skip
        assert r.returncode != 0


def test_one_flipped_byte_fails_cleartext(key: bytes, keyring: Path, tmp_path: Path) -> None:
    signed = openpgp.clearsign(key, b"Suite: stable\nDate: x\n", created=SIG_TIME)
    for i, (old, new) in enumerate([(b"stable", b"stablf"), (b"Date: x", b"Date: y")]):
        bad = signed.replace(old, new, 1)
        assert bad != signed
        (tmp_path / f"InRelease{i}").write_bytes(bad)
        r = _gpgv(keyring, tmp_path / f"InRelease{i}")
        assert r.returncode != 0 and b"BAD signature" in r.stderr, r.stderr.decode()


def test_another_keys_signature_is_not_accepted(key: bytes, keyring: Path, tmp_path: Path) -> None:
    other = openpgp.generate_key("someone else", created=KEY_TIME)
    (tmp_path / "d").write_bytes(b"x")
    (tmp_path / "d.sig").write_bytes(openpgp.detached_signature(other, b"x", created=SIG_TIME))
    r = _gpgv(keyring, tmp_path / "d.sig", tmp_path / "d")
    assert r.returncode != 0 and b"No public key" in r.stderr, r.stderr.decode()


def test_signatures_are_deterministic_and_dated_by_the_caller(key: bytes) -> None:
    data = b"Suite: stable\n"
    assert openpgp.detached_signature(key, data, created=SIG_TIME) == openpgp.detached_signature(
        key, data, created=SIG_TIME
    )
    assert openpgp.clearsign(key, data, created=SIG_TIME) == openpgp.clearsign(
        key, data, created=SIG_TIME
    )
    later = openpgp.detached_signature(key, data, created=SIG_TIME + 1)
    assert later != openpgp.detached_signature(key, data, created=SIG_TIME)


def test_signature_older_than_the_key_is_dated_at_the_key(
    key: bytes, keyring: Path, gpg_home: Path, tmp_path: Path
) -> None:
    """gpgv refuses a signature made before its key; such times are raised to the key's."""
    early = openpgp.detached_signature(key, b"x", created=KEY_TIME - 86400)
    assert early == openpgp.detached_signature(key, b"x", created=KEY_TIME)
    (tmp_path / "d").write_bytes(b"x")
    (tmp_path / "d.sig").write_bytes(early)
    r = _gpgv(keyring, tmp_path / "d.sig", tmp_path / "d")
    assert r.returncode == 0, r.stderr.decode()
