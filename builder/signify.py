"""signify(1) keys and signatures, made in-process with `cryptography`'s Ed25519.

Formats, as OpenBSD's usr.bin/signify (signify.c, zsig.c) reads and writes them:

- A key or signature file is two lines: ``untrusted comment: <text>`` and the
  base64 of a packed struct.
- secret key: "Ed" "BK" kdfrounds(u32 BE) salt(16) checksum(8) keynum(8) seckey(64);
  checksum = SHA-512(seckey)[:8]; with kdfrounds 0 (``signify -G -n``) the seckey
  is stored as is. seckey = Ed25519 seed(32) + public key(32).
- public key: "Ed" keynum(8) pubkey(32).
- signature: "Ed" keynum(8) sig(64), comment ``verify with <key>.pub``.
- ``signify -zS`` (gzip archives, what pkg_add verifies): the gzip header is
  replaced by one whose FCOMMENT holds the signature file followed by
  ``date=…\\nkey=…\\nalgorithm=SHA512/256\\nblocksize=65536\\n\\n`` and one
  SHA512/256 hex line per 64 KiB block of the compressed data that follows.
  The Ed25519 signature covers that text from ``date=`` to the last hash line.

Ed25519 signatures are deterministic, so the same key, date and data give the
same bytes: ``zsign`` with mtime 0 is byte-identical to ``signify -zS -n``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import posixpath
import re
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from builder.errors import UserError

__all__ = [
    "BLOCKSIZE",
    "PublicKey",
    "SecretKey",
    "check_keypair",
    "generate_keypair",
    "parse_public",
    "parse_secret",
    "public_key_from_secret",
    "sign",
    "verify",
    "zsign",
    "zverify",
]

COMMENT_HEADER = b"untrusted comment: "
BLOCKSIZE = 65536  # zsig.c MYBUFSIZE
_PKALG = b"Ed"
_KDFALG = b"BK"
_FCOMMENT = 0x10
_FNAME = 0x08
# zsig.c: the only header fields it keeps are the flags it sets and xflg.
_GZ_MAGIC = b"\x1f\x8b\x08"


@dataclass(frozen=True, repr=False)
class SecretKey:
    keynum: bytes  # 8 random bytes tying keys and signatures together
    seckey: bytes  # 64: Ed25519 seed + public key
    comment: str

    def __repr__(self) -> str:  # never print key material
        return f"<SecretKey keynum={self.keynum.hex()}>"

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.keynum, self.seckey[32:], self.comment.removesuffix(" secret key"))


@dataclass(frozen=True)
class PublicKey:
    keynum: bytes
    pubkey: bytes  # 32
    comment: str


# ---------------------------------------------------------------- files


def _b64file(comment: str, blob: bytes) -> bytes:
    if "\n" in comment:
        raise ValueError("a signify comment is one line")
    return COMMENT_HEADER + comment.encode() + b"\n" + base64.b64encode(blob) + b"\n"


def _parse_b64file(data: bytes, size: int, what: str) -> tuple[str, bytes, int]:
    """(comment, decoded blob, bytes consumed) like signify.c parseb64file()."""
    first = data.find(b"\n")
    if first <= len(COMMENT_HEADER) or not data.startswith(COMMENT_HEADER):
        raise UserError(f"{what}: invalid comment; must start with 'untrusted comment: '")
    second = data.find(b"\n", first + 1)
    if second < 0:
        raise UserError(f"{what}: missing new line after base64")
    try:
        blob = base64.b64decode(data[first + 1 : second], validate=True)
    except ValueError:
        raise UserError(f"{what}: invalid base64 encoding") from None
    if len(blob) != size:
        raise UserError(f"{what}: invalid base64 encoding (length {len(blob)}, want {size})")
    if blob[:2] != _PKALG:
        raise UserError(f"{what}: unsupported file (not an Ed25519 signify file)")
    return data[len(COMMENT_HEADER) : first].decode("utf-8", "replace"), blob, second + 1


def generate_keypair(comment_name: str = "signify") -> tuple[bytes, bytes]:
    """A new unencrypted key pair as `signify -G -n -c <comment_name>` writes it: (sec, pub)."""
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes_raw()
    pub = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    seckey = seed + pub
    keynum = os.urandom(8)
    salt = os.urandom(16)  # unused with 0 rounds; signify fills it anyway
    checksum = hashlib.sha512(seckey).digest()[:8]
    blob = _PKALG + _KDFALG + (0).to_bytes(4, "big") + salt + checksum + keynum + seckey
    sec_file = _b64file(f"{comment_name} secret key", blob)
    pub_file = _b64file(f"{comment_name} public key", _PKALG + keynum + pub)
    return sec_file, pub_file


def parse_secret(data: bytes, what: str = "signify secret key") -> SecretKey:
    """The key in a .sec file; parsed (and its halves checked) once per process for the
    same bytes: a build signs hundreds of packages with one key."""
    return _parse_secret(data, what)


@functools.lru_cache(maxsize=8)
def _parse_secret(data: bytes, what: str) -> SecretKey:
    comment, blob, _ = _parse_b64file(data, 104, what)
    if blob[2:4] != _KDFALG:
        raise UserError(f"{what}: unsupported KDF")
    rounds = int.from_bytes(blob[4:8], "big")
    if rounds != 0:
        # A passphrase would have to be typed for every build; nomad-build keeps
        # the key in state/ (0600) instead, like `signify -G -n`.
        raise UserError(f"{what}: protected by a passphrase ({rounds} KDF rounds); use -n keys")
    checksum, keynum, seckey = blob[24:32], blob[32:40], blob[40:104]
    if hashlib.sha512(seckey).digest()[:8] != checksum:
        raise UserError(f"{what}: checksum mismatch (corrupt key)")
    derived = Ed25519PrivateKey.from_private_bytes(seckey[:32]).public_key()
    if derived.public_bytes(Encoding.Raw, PublicFormat.Raw) != seckey[32:]:
        raise UserError(f"{what}: public half does not match the seed (corrupt key)")
    return SecretKey(keynum, seckey, comment)


def parse_public(data: bytes, what: str = "signify public key") -> PublicKey:
    comment, blob, _ = _parse_b64file(data, 42, what)
    return PublicKey(blob[2:10], blob[10:42], comment.removesuffix(" public key"))


def public_key_from_secret(sec: bytes) -> bytes:
    """The .pub file belonging to a .sec file (for a state/ that lost its .pub)."""
    key = parse_secret(sec)
    return _b64file(f"{key.public.comment} public key", _PKALG + key.keynum + key.seckey[32:])


def check_keypair(sec: bytes, pub: bytes) -> None:
    """UserError unless pub is the public half of sec (else nodes could never verify)."""
    s, p = parse_secret(sec), parse_public(pub)
    if s.keynum != p.keynum or s.seckey[32:] != p.pubkey:
        raise UserError("signify key pair: the .pub does not belong to the .sec")


# ---------------------------------------------------------------- plain signatures


@functools.lru_cache(maxsize=8)
def _private(seed: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(seed)


def _sig_blob(key: SecretKey, message: bytes) -> bytes:
    private = _private(key.seckey[:32])
    return _PKALG + key.keynum + private.sign(message)


def _sig_comment(key_path: str) -> str:
    # signify.c: "verify with <basename of the .sec, .sec -> .pub>"; pkg_add (signify -t pkg)
    # then reads /etc/signify/<that name>, which must end in -pkg.pub.
    base = posixpath.basename(key_path)
    if not base.endswith(".sec") or len(base) <= 4:
        raise ValueError(f"signify key path must end in .sec: {key_path}")
    return f"verify with {base[:-4]}.pub"


def sign(sec: bytes, message: bytes, *, key_name: str) -> bytes:
    """A detached signature file, as `signify -S -s <key_name>.sec -m msg` writes it."""
    key = parse_secret(sec)
    return _b64file(_sig_comment(f"{key_name}.sec"), _sig_blob(key, message))


def sign_embedded(sec: bytes, message: bytes, *, key_name: str) -> bytes:
    """`signify -S -e`: the signature with the message after it; for checksum lists,
    `signify -C -p key.pub -x file.sig` then checks the signature and every file."""
    return sign(sec, message, key_name=key_name) + message


def _check_sig(pub: PublicKey, sig: bytes, message: bytes, what: str) -> None:
    if sig[2:10] != pub.keynum:
        raise UserError(f"{what}: verification failed: checked against wrong key")
    try:
        Ed25519PublicKey.from_public_bytes(pub.pubkey).verify(sig[10:], message)
    except InvalidSignature:
        raise UserError(f"{what}: signature verification failed") from None


def verify(pub: bytes, message: bytes, sig_file: bytes) -> None:
    _, sig, _ = _parse_b64file(sig_file, 74, "signature")
    _check_sig(parse_public(pub), sig, message, "signature")


# ---------------------------------------------------------------- gzip (-z) signatures


def _gzip_header_length(gz: bytes, what: str) -> tuple[int, int, bytes | None]:
    """(header length, flags, FCOMMENT or None), with zsig.c readgz_header()'s rules."""
    if len(gz) < 10 or gz[:3] != _GZ_MAGIC:
        raise UserError(f"{what}: not a gzip file")
    flg = gz[3]
    if flg & ~(_FCOMMENT | _FNAME):
        raise UserError(f"{what}: gzip header flags {flg:#x} (signify takes FNAME/FCOMMENT only)")
    pos = 10
    comment = None
    if flg & _FNAME:
        end = gz.find(b"\0", pos)
        if end < 0:
            raise UserError(f"{what}: gzip header truncated")
        pos = end + 1
    if flg & _FCOMMENT:
        end = gz.find(b"\0", pos)
        if end < 0:
            raise UserError(f"{what}: gzip header truncated")
        comment = gz[pos:end]
        pos = end + 1
    return pos, flg, comment


def _sha512_256_hex(block: bytes) -> str:
    h = hashes.Hash(hashes.SHA512_256())
    h.update(block)
    return h.finalize().hex()


def _blocks(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def zsign(
    gz: bytes,
    sec: bytes,
    *,
    key_name: str,
    mtime: int,
    key_path: str | None = None,
) -> bytes:
    """Sign a gzip file exactly as `signify -zS -s <key_path> -m in -x out` does.

    The date line is `mtime` (UTC), not the clock, so rebuilds are identical.
    key_path is what signify records as ``key=``: by default the conventional
    /etc/signify/<key_name>.sec (pkg_add takes the package's @signer from its
    basename). The signature comment names <key_name>.pub.
    """
    key = parse_secret(sec)
    if key_path is None:
        key_path = f"/etc/signify/{key_name}.sec"
    if posixpath.basename(key_path) != f"{key_name}.sec":
        raise ValueError(f"key path {key_path} does not name {key_name}.sec")
    if "\n" in key_path or "\0" in key_path:
        raise ValueError("key path must be one line")
    header_len, _, _ = _gzip_header_length(gz, "zsign input")
    xflg = gz[8]
    body = gz[header_len:]
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))
    msg = (
        f"date={date}\nkey={key_path}\nalgorithm=SHA512/256\nblocksize={BLOCKSIZE}\n\n"
        + "".join(_sha512_256_hex(b) + "\n" for b in _blocks(body, BLOCKSIZE))
    ).encode()
    sighdr = _b64file(_sig_comment(key_path), _sig_blob(key, msg))
    # zsig.c's "fake" header: FCOMMENT only, mtime 0, the input's xflg, OS 3 (Unix).
    fake = bytes([0x1F, 0x8B, 8, _FCOMMENT, 0, 0, 0, 0, xflg, 3])
    return fake + sighdr + msg + b"\0" + body


@dataclass(frozen=True)
class ZSignature:
    comment: str  # "verify with <name>.pub"
    date: str
    key: str  # the key= line (path of the .sec at signing time)
    blocksize: int


_META = re.compile(rb"^(date=[^\n]*|key=[^\n]*|algorithm=SHA512/256|blocksize=\d+)\n")


def zverify(gz: bytes, pub: bytes) -> ZSignature:
    """Verify a `signify -zS` gzip in-process (zsig.c zverify()); UserError when it fails."""
    what = "signed gzip"
    _, flg, comment = _gzip_header_length(gz, what)
    if comment is None:
        raise UserError(f"{what}: unsigned gzip archive")
    sig_comment, sig, used = _parse_b64file(comment, 74, what)
    signed = comment[used:]
    _check_sig(parse_public(pub), sig, signed, what)
    meta: dict[str, str] = {}
    rest = signed
    while m := _META.match(rest):
        k, _, v = m.group(1).decode().partition("=")
        meta[k] = v
        rest = rest[m.end() :]
    if not rest.startswith(b"\n") or "algorithm" not in meta:
        raise UserError(f"{what}: invalid signature")
    blocksize = int(meta.get("blocksize", BLOCKSIZE))
    lines = rest[1:].split(b"\n")
    if lines[-1] != b"":
        raise UserError(f"{what}: signature truncated")
    if flg != _FCOMMENT:
        raise UserError(f"{what}: gzip flags {flg:#x}: signify writes FCOMMENT only")
    body = gz[10 + len(comment) + 1 :]
    blocks = _blocks(body, blocksize)
    if len(blocks) != len(lines) - 1:
        raise UserError(f"{what}: {len(blocks)} data blocks but {len(lines) - 1} hashes")
    for n, (block, line) in enumerate(zip(blocks, lines, strict=False)):
        if _sha512_256_hex(block).encode() != line:
            raise UserError(f"{what}: signature mismatch in block {n}")
    return ZSignature(sig_comment, meta.get("date", ""), meta.get("key", ""), blocksize)
