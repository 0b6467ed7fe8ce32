"""OpenPGP keys and signatures for the apt repository, made in-process.

Only what an apt archive key needs, with `cryptography`'s Ed25519 and the
v4 packet formats of RFC 4880 / RFC 9580 that gpg 2.2 (Debian bookworm's
gpgv, which apt runs) reads:

- key: one v4 primary key, algorithm 22 (EdDSALegacy) on curve Ed25519
  (OID 1.3.6.1.4.1.11591.15.1), flags certify + sign, no expiry, one user
  id and a positive self-certification (type 0x13, SHA-512);
- ``generate_key`` returns the secret key as the state store keeps it: an
  ASCII-armored, unprotected transferable secret key (secret-key packet with
  S2K usage 0, user id, self-certification), which ``gpg --import`` reads
  too. The key's creation time is inside it, so everything derived from it
  (keyring, fingerprint, signatures) is the same on every build;
- ``public_keyring``: the binary transferable public key (old-format packet
  headers as ``gpg --export`` writes: first byte 0x98), the file apt's
  ``Signed-By:`` takes as a ``.gpg`` keyring;
- ``detached_signature`` (Release.gpg: armored, binary-document type 0x00)
  and ``clearsign`` (InRelease: type 0x01 over the canonical text, RFC 4880
  §7.1 dash-escaping of lines starting with "-" and "From ").

Ed25519 is deterministic and the signature creation time comes from the
caller, so the same key, data and time give the same bytes. A signature
cannot predate its key (gpgv rejects it: "key is newer than the signature"),
so a ``created`` earlier than the key's creation time is raised to it — still
a pure function of the inputs.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from builder.errors import UserError

__all__ = [
    "SecretKey",
    "armor",
    "armored_public_key",
    "clearsign",
    "dearmor",
    "detached_signature",
    "fingerprint",
    "generate_key",
    "parse_secret_key",
    "public_keyring",
]

ED25519_OID = bytes.fromhex("2b06010401da470f01")  # 1.3.6.1.4.1.11591.15.1
ALGO_EDDSA_LEGACY = 22
HASHES = {"SHA256": (8, hashlib.sha256), "SHA512": (10, hashlib.sha512)}

TAG_SIGNATURE = 2
TAG_SECRET_KEY = 5
TAG_PUBLIC_KEY = 6
TAG_USER_ID = 13

SIG_BINARY = 0x00
SIG_TEXT = 0x01
SIG_POSITIVE_CERT = 0x13

# Signature subpacket types (RFC 9580 §5.2.3.7).
_SP_CREATED = 2
_SP_PREF_SYM = 11
_SP_ISSUER_KEYID = 16
_SP_PREF_HASH = 21
_SP_PREF_COMPRESSION = 22
_SP_KEY_FLAGS = 27
_SP_FEATURES = 30
_SP_ISSUER_FPR = 33

_SECRET_BLOCK = "PGP PRIVATE KEY BLOCK"
_PUBLIC_BLOCK = "PGP PUBLIC KEY BLOCK"
_SIGNATURE_BLOCK = "PGP SIGNATURE"


@dataclass(frozen=True, repr=False)
class SecretKey:
    seed: bytes  # the Ed25519 secret (32 bytes), stored as the secret MPI
    created: int  # key creation time, seconds since the epoch
    user_id: str

    def __repr__(self) -> str:  # never print key material
        return f"<openpgp.SecretKey {self.fingerprint.hex().upper()} {self.user_id!r}>"

    @property
    def public(self) -> bytes:
        private = Ed25519PrivateKey.from_private_bytes(self.seed)
        return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def public_body(self) -> bytes:
        """The public-key packet body (v4): what the fingerprint and certifications hash."""
        return (
            b"\x04"
            + _u32(self.created)
            + bytes([ALGO_EDDSA_LEGACY, len(ED25519_OID)])
            + ED25519_OID
            + _mpi(b"\x40" + self.public)  # 0x40: the native point-format prefix
        )

    @property
    def fingerprint(self) -> bytes:
        body = self.public_body
        return hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).digest()

    @property
    def key_id(self) -> bytes:
        return self.fingerprint[-8:]


# ---------------------------------------------------------------- encoding helpers


def _u32(n: int) -> bytes:
    if not 0 <= n < 2**32:
        raise ValueError(f"OpenPGP time out of range: {n}")
    return n.to_bytes(4, "big")


def _mpi(value: bytes) -> bytes:
    """A multiprecision integer: bit count (2 octets) + big-endian value without leading zeros."""
    stripped = value.lstrip(b"\x00")
    bits = int.from_bytes(stripped, "big").bit_length()
    return bits.to_bytes(2, "big") + stripped


def _read_mpi(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    if pos + 2 > len(data):
        raise UserError(f"{what}: truncated MPI")
    bits = int.from_bytes(data[pos : pos + 2], "big")
    n = (bits + 7) // 8
    end = pos + 2 + n
    if end > len(data):
        raise UserError(f"{what}: truncated MPI")
    return data[pos + 2 : end], end


def _packet(tag: int, body: bytes) -> bytes:
    """An old-format packet (what gpg 2.2 writes; a keyring's first byte is then 0x99)."""
    n = len(body)
    if n < 0x100:
        return bytes([0x80 | tag << 2 | 0]) + bytes([n]) + body
    if n < 0x10000:
        return bytes([0x80 | tag << 2 | 1]) + n.to_bytes(2, "big") + body
    return bytes([0x80 | tag << 2 | 2]) + n.to_bytes(4, "big") + body


def _packets(data: bytes, what: str) -> list[tuple[int, bytes]]:
    """Split a binary OpenPGP message into (tag, body); old and new formats, no partial lengths."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        ctb = data[pos]
        pos += 1
        if not ctb & 0x80:
            raise UserError(f"{what}: not OpenPGP data (bad packet header at byte {pos - 1})")
        if ctb & 0x40:  # new format
            tag = ctb & 0x3F
            if pos >= len(data):
                raise UserError(f"{what}: truncated packet header")
            first = data[pos]
            if first < 192:
                n, pos = first, pos + 1
            elif first < 224:
                if pos + 2 > len(data):
                    raise UserError(f"{what}: truncated packet header")
                n, pos = ((first - 192) << 8) + data[pos + 1] + 192, pos + 2
            elif first == 255:
                if pos + 5 > len(data):
                    raise UserError(f"{what}: truncated packet header")
                n, pos = int.from_bytes(data[pos + 1 : pos + 5], "big"), pos + 5
            else:
                raise UserError(f"{what}: partial body lengths are not supported")
        else:
            tag = (ctb >> 2) & 0x0F
            ltype = ctb & 0x03
            if ltype == 3:
                raise UserError(f"{what}: indeterminate packet lengths are not supported")
            size = (1, 2, 4)[ltype]
            if pos + size > len(data):
                raise UserError(f"{what}: truncated packet header")
            n, pos = int.from_bytes(data[pos : pos + size], "big"), pos + size
        if pos + n > len(data):
            raise UserError(f"{what}: truncated packet (tag {tag})")
        out.append((tag, data[pos : pos + n]))
        pos += n
    return out


def _crc24(data: bytes) -> int:
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


PUBLIC_KEY_ARMOR = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"


def is_armored_public_key(data: bytes) -> bool:
    """An ASCII-armored public key (apt reads it from a Signed-By file named *.asc)."""
    return data.lstrip().startswith(PUBLIC_KEY_ARMOR)


def is_public_key(data: bytes) -> bool:
    """An OpenPGP public key, armored or binary (its first packet's tag is 6)."""
    if is_armored_public_key(data):
        return True
    if not data or not data[0] & 0x80:
        return False
    # First packet's tag: new format bits 5-0, old format bits 5-2.
    tag = data[0] & 0x3F if data[0] & 0x40 else (data[0] >> 2) & 0x0F
    return tag == 6


def armor(kind: str, data: bytes) -> bytes:
    """ASCII armor (RFC 4880 §6.2) without headers, 64-column lines and the CRC-24."""
    b64 = base64.b64encode(data).decode("ascii")
    lines = [f"-----BEGIN {kind}-----", ""]
    lines += [b64[i : i + 64] for i in range(0, len(b64), 64)]
    lines.append("=" + base64.b64encode(_crc24(data).to_bytes(3, "big")).decode("ascii"))
    lines.append(f"-----END {kind}-----")
    return ("\n".join(lines) + "\n").encode("ascii")


def dearmor(data: bytes, kind: str | None = None, what: str = "OpenPGP armor") -> bytes:
    """The binary data of the first armored block (of the given kind); its CRC checked if any."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    start = None
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith(b"-----BEGIN PGP ") and s.endswith(b"-----"):
            found = s[len(b"-----BEGIN ") : -5].decode("ascii", "replace")
            if kind is None or found == kind:
                kind, start = found, i + 1
                break
    if start is None or kind is None:
        raise UserError(f"{what}: no '-----BEGIN {kind or 'PGP ...'}-----' line")
    i = start
    while i < len(lines) and b":" in lines[i] and lines[i].strip():  # armor headers
        i += 1
    body: list[bytes] = []
    crc: bytes | None = None
    end = f"-----END {kind}-----".encode()
    for line in lines[i:]:
        s = line.strip()
        if s == end:
            break
        if not s:
            continue
        if s.startswith(b"=") and len(s) == 5:
            crc = s[1:]
        else:
            body.append(s)
    else:
        raise UserError(f"{what}: no '-----END {kind}-----' line")
    try:
        raw = base64.b64decode(b"".join(body), validate=True)
        want = base64.b64decode(crc, validate=True) if crc is not None else None
    except ValueError:
        raise UserError(f"{what}: invalid base64") from None
    if want is not None and _crc24(raw).to_bytes(3, "big") != want:
        raise UserError(f"{what}: armor checksum mismatch (corrupt data)")
    return raw


# ---------------------------------------------------------------- signatures


def _subpacket(kind: int, data: bytes) -> bytes:
    n = len(data) + 1
    if n >= 192:
        raise ValueError("subpacket too long")
    return bytes([n, kind]) + data


def _signature(
    key: SecretKey, sig_type: int, hashed_data: bytes, hashed_sub: bytes, hash_name: str
) -> bytes:
    """A v4 signature packet (binary) over hashed_data, EdDSALegacy over the full digest."""
    hash_id, hash_fn = HASHES[hash_name]
    head = bytes([4, sig_type, ALGO_EDDSA_LEGACY, hash_id]) + len(hashed_sub).to_bytes(2, "big")
    head += hashed_sub
    trailer = b"\x04\xff" + _u32(len(head))
    digest = hash_fn(hashed_data + head + trailer).digest()
    sig = Ed25519PrivateKey.from_private_bytes(key.seed).sign(digest)
    unhashed = _subpacket(_SP_ISSUER_KEYID, key.key_id)
    body = head + len(unhashed).to_bytes(2, "big") + unhashed + digest[:2]
    body += _mpi(sig[:32]) + _mpi(sig[32:])
    return _packet(TAG_SIGNATURE, body)


def _issuer_and_time(key: SecretKey, created: int) -> bytes:
    return _subpacket(_SP_ISSUER_FPR, b"\x04" + key.fingerprint) + _subpacket(
        _SP_CREATED, _u32(created)
    )


def _self_certification(key: SecretKey) -> bytes:
    body = key.public_body
    uid = key.user_id.encode("utf-8")
    hashed_data = b"\x99" + len(body).to_bytes(2, "big") + body + b"\xb4" + _u32(len(uid)) + uid
    sub = (
        _issuer_and_time(key, key.created)
        + _subpacket(_SP_KEY_FLAGS, b"\x03")  # certify, sign data
        + _subpacket(_SP_PREF_SYM, bytes([9, 7]))  # AES-256, AES-128
        + _subpacket(_SP_PREF_HASH, bytes([10, 8]))  # SHA-512, SHA-256
        + _subpacket(_SP_PREF_COMPRESSION, bytes([0]))  # uncompressed
        + _subpacket(_SP_FEATURES, b"\x01")  # SEIPD v1 (MDC)
    )
    return _signature(key, SIG_POSITIVE_CERT, hashed_data, sub, "SHA512")


def _sig_time(key: SecretKey, created: int) -> int:
    if created < 0:
        raise ValueError(f"signature time before the epoch: {created}")
    return max(created, key.created)


def detached_signature(key: bytes, data: bytes, *, created: int) -> bytes:
    """An armored detached binary-document signature (SHA-512): apt's Release.gpg."""
    k = parse_secret_key(key)
    sig = _signature(k, SIG_BINARY, data, _issuer_and_time(k, _sig_time(k, created)), "SHA512")
    return armor(_SIGNATURE_BLOCK, sig)


def canonical_text(data: bytes) -> bytes:
    """What a cleartext (type 0x01) signature hashes: lines ending in CRLF except the last,
    trailing spaces, tabs and CRs dropped; one final newline of data is the armor's."""
    text = data[:-1] if data.endswith(b"\n") else data
    return b"\r\n".join(line.rstrip(b" \t\r") for line in text.split(b"\n"))


def clearsign(key: bytes, data: bytes, *, created: int, hash_name: str = "SHA512") -> bytes:
    """The cleartext-signed form of data (RFC 4880 §7): apt's InRelease."""
    if hash_name not in HASHES:
        raise ValueError(f"unsupported hash {hash_name}")
    k = parse_secret_key(key)
    text = data[:-1] if data.endswith(b"\n") else data
    sub = _issuer_and_time(k, _sig_time(k, created))
    sig = _signature(k, SIG_TEXT, canonical_text(data), sub, hash_name)
    escaped = [
        b"- " + line if line.startswith((b"-", b"From ")) else line for line in text.split(b"\n")
    ]
    head = f"-----BEGIN PGP SIGNED MESSAGE-----\nHash: {hash_name}\n\n".encode("ascii")
    return head + b"\n".join(escaped) + b"\n" + armor(_SIGNATURE_BLOCK, sig)


# ---------------------------------------------------------------- keys


def _secret_packet_body(key: SecretKey) -> bytes:
    secret = _mpi(key.seed)
    checksum = (sum(secret) & 0xFFFF).to_bytes(2, "big")
    return key.public_body + b"\x00" + secret + checksum  # S2K usage 0: not protected


def generate_key(user_id: str, *, created: int | None = None) -> bytes:
    """A new signing key, armored (see the module docstring); created defaults to now."""
    if not user_id or "\n" in user_id:
        raise ValueError("a user id is one non-empty line")
    when = int(time.time()) if created is None else created
    seed = Ed25519PrivateKey.generate().private_bytes_raw()
    return _secret_key_file(SecretKey(seed, when, user_id))


def _secret_key_file(key: SecretKey) -> bytes:
    blob = (
        _packet(TAG_SECRET_KEY, _secret_packet_body(key))
        + _packet(TAG_USER_ID, key.user_id.encode("utf-8"))
        + _self_certification(key)
    )
    return armor(_SECRET_BLOCK, blob)


def parse_secret_key(data: bytes, what: str = "apt signing key") -> SecretKey:
    """Read a transferable secret key (armored or binary) holding an unprotected Ed25519 key."""
    raw = dearmor(data, _SECRET_BLOCK, what) if data.lstrip().startswith(b"-----") else data
    packets = _packets(raw, what)
    if not packets or packets[0][0] != TAG_SECRET_KEY:
        raise UserError(f"{what}: does not start with a secret-key packet")
    body = packets[0][1]
    if len(body) < 7 or body[0] != 4:
        raise UserError(f"{what}: not a version 4 key")
    created = int.from_bytes(body[1:5], "big")
    if body[5] != ALGO_EDDSA_LEGACY:
        raise UserError(f"{what}: public-key algorithm {body[5]}, want 22 (EdDSA, Ed25519)")
    oid_len = body[6]
    if body[7 : 7 + oid_len] != ED25519_OID:
        raise UserError(f"{what}: not an Ed25519 key (curve OID {body[7 : 7 + oid_len].hex()})")
    point, pos = _read_mpi(body, 7 + oid_len, what)
    if pos >= len(body):
        raise UserError(f"{what}: truncated secret-key packet")
    if body[pos] != 0:
        raise UserError(
            f"{what}: the secret key is protected by a passphrase (S2K usage {body[pos]}); "
            "export it without one"
        )
    secret_start = pos + 1
    secret, pos = _read_mpi(body, secret_start, what)
    if body[pos:] != (sum(body[secret_start:pos]) & 0xFFFF).to_bytes(2, "big"):
        raise UserError(f"{what}: secret key checksum mismatch (corrupt key)")
    if len(secret) > 32:
        raise UserError(f"{what}: Ed25519 secret longer than 32 bytes")
    uids = [b for tag, b in packets if tag == TAG_USER_ID]
    if not uids:
        raise UserError(f"{what}: no user id")
    key = SecretKey(secret.rjust(32, b"\x00"), created, uids[0].decode("utf-8", "replace"))
    if point != b"\x40" + key.public:
        raise UserError(f"{what}: public point does not match the secret (corrupt key)")
    return key


def public_keyring(key: bytes) -> bytes:
    """The binary transferable public key: a keyring file for apt's Signed-By (.gpg)."""
    k = parse_secret_key(key)
    return (
        _packet(TAG_PUBLIC_KEY, k.public_body)
        + _packet(TAG_USER_ID, k.user_id.encode("utf-8"))
        + _self_certification(k)
    )


def armored_public_key(key: bytes) -> bytes:
    """The public key ASCII-armored (for ``gpg --import`` or a Signed-By ``.asc`` file)."""
    return armor(_PUBLIC_BLOCK, public_keyring(key))


def fingerprint(key: bytes) -> str:
    """The key's v4 fingerprint, 40 upper-case hex digits as gpg prints it."""
    return parse_secret_key(key).fingerprint.hex().upper()
