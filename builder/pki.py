"""Pure TLS/gossip crypto, shaped like `nomad tls ca create` / `nomad tls cert create`.

No I/O here: every function takes and returns PEM bytes. Persisting them is the
job of builder.state.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertInfo",
    "cert_signed_by",
    "create_ca",
    "generate_gossip_key",
    "inspect_cert",
    "issue_cert",
    "key_matches_cert",
]


def generate_gossip_key() -> str:
    """32 random bytes, standard base64 with padding (44 chars).

    Same as `nomad operator gossip keyring generate`.
    """
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _serial() -> int:
    # Nomad draws the serial uniformly below 2**128; zero is not a valid serial.
    while True:
        n = secrets.randbits(128)
        if n:
            return n


def _key_id(public_key: ec.EllipticCurvePublicKey) -> bytes:
    # Nomad's keyID(): SHA-256 over the DER SubjectPublicKeyInfo (not RFC 5280's SHA-1).
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def create_ca(
    *, common_name: str, permitted_dns: Sequence[str], days: int, now: datetime
) -> tuple[bytes, bytes]:
    """Self-signed ECDSA P-256 CA with critical DNS name constraints.

    Returns (key PEM, PKCS#8 unencrypted; cert PEM).
    """
    now = _utc(now)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    kid = _key_id(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier(kid), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier(
                key_identifier=kid, authority_cert_issuer=None, authority_cert_serial_number=None
            ),
            critical=False,
        )
    )
    if permitted_dns:
        builder = builder.add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.DNSName(d) for d in permitted_dns],
                excluded_subtrees=None,
            ),
            critical=True,
        )
    cert = builder.sign(key, hashes.SHA256())
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def _load_ec_key(key_pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"expected an ECDSA private key, got {type(key).__name__}")
    return key


# What `nomad tls cert create` gives an agent: TLS server and client in one certificate.
_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_EXTENDED_KEY_USAGE = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)


def issue_cert(
    *,
    ca_key_pem: bytes,
    ca_cert_pem: bytes,
    common_name: str,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    days: int,
    now: datetime,
    backdate: timedelta,
    key_pem: bytes | None = None,
) -> tuple[bytes, bytes]:
    """Leaf cert for an agent (server and client auth). Returns (key PEM, cert PEM).

    `key_pem`: keep this key pair (a renewal); None makes a new one.

    SANs keep the caller's order: DNS names first, then IPs. not_before is backdated
    so a node whose clock lags slightly still accepts a fresh cert.
    """
    now = _utc(now)
    ca_key = _load_ec_key(ca_key_pem)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    try:
        ca_kid = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        ca_kid = _key_id(ca_key.public_key())
    key = ec.generate_private_key(ec.SECP256R1()) if key_pem is None else _load_ec_key(key_pem)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - backdate)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(_LEAF_EXTENDED_KEY_USAGE, critical=False)
        .add_extension(x509.SubjectKeyIdentifier(_key_id(key.public_key())), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier(
                key_identifier=ca_kid, authority_cert_issuer=None, authority_cert_serial_number=None
            ),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class CertInfo:
    subject_cn: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_before: datetime  # timezone-aware UTC
    not_after: datetime  # timezone-aware UTC
    serial: int
    is_ca: bool
    permitted_dns: tuple[str, ...]  # the CA's NameConstraints; () when none


# The checks below are pure functions of bytes and a build makes them several times
# per node (plan, then the writing run; each node's certificate against the CA): each
# is computed once per process for the same bytes. Key material is never a cache key
# (its sha256 is).
_MEMO = 1 << 14


def inspect_cert(cert_pem: bytes) -> CertInfo:
    """Parse the facts the store and `check` care about. Raises ValueError on bad PEM."""
    pem = bytes(cert_pem)
    info = _INFO.get(pem)
    if info is None:
        info = _inspect_cert(pem)
        remember_cert_info(pem, info)
    return info


_INFO: dict[bytes, CertInfo] = {}


def cached_cert_info(cert_pem: bytes) -> CertInfo | None:
    """What inspect_cert(cert_pem) returned before in this process, if anything."""
    return _INFO.get(bytes(cert_pem))


def remember_cert_info(cert_pem: bytes, info: CertInfo) -> None:
    """What inspect_cert(cert_pem) returns, known from elsewhere (the store's ledger)."""
    if len(_INFO) >= _MEMO:
        _INFO.clear()
    _INFO[bytes(cert_pem)] = info


def cert_info_facts(info: CertInfo) -> dict[str, object]:
    """CertInfo as JSON values (for the store's ledger)."""
    return {
        "cn": info.subject_cn,
        "dns": list(info.dns_names),
        "ips": list(info.ip_addresses),
        "not_before": info.not_before.isoformat(),
        "not_after": info.not_after.isoformat(),
        "serial": str(info.serial),
        "ca": info.is_ca,
        "permitted": list(info.permitted_dns),
    }


def cert_info_from_facts(facts: object) -> CertInfo | None:
    """cert_info_facts() read back; None when `facts` is not what it wrote."""
    if not isinstance(facts, dict):
        return None
    try:
        strings = [facts["cn"], facts["not_before"], facts["not_after"], facts["serial"]]
        lists = [facts["dns"], facts["ips"], facts["permitted"]]
        if not all(isinstance(v, str) for v in strings) or not isinstance(facts["ca"], bool):
            return None
        if not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in lists):
            return None
        before = datetime.fromisoformat(facts["not_before"])
        after = datetime.fromisoformat(facts["not_after"])
        if before.tzinfo is None or after.tzinfo is None:
            return None
        return CertInfo(
            subject_cn=facts["cn"],
            dns_names=tuple(facts["dns"]),
            ip_addresses=tuple(facts["ips"]),
            not_before=before,
            not_after=after,
            serial=int(facts["serial"]),
            is_ca=facts["ca"],
            permitted_dns=tuple(facts["permitted"]),
        )
    except (KeyError, ValueError):
        return None


def _inspect_cert(cert_pem: bytes) -> CertInfo:
    cert = x509.load_pem_x509_certificate(cert_pem)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    ext = cert.extensions
    try:
        san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    try:
        is_ca = ext.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    try:
        nc = ext.get_extension_for_class(x509.NameConstraints).value
        permitted = tuple(
            g.value for g in (nc.permitted_subtrees or ()) if isinstance(g, x509.DNSName)
        )
    except x509.ExtensionNotFound:
        permitted = ()
    return CertInfo(
        subject_cn=cn,
        dns_names=dns,
        ip_addresses=ips,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        serial=cert.serial_number,
        is_ca=is_ca,
        permitted_dns=permitted,
    )


def key_matches_cert(key_pem: bytes, cert_pem: bytes) -> bool:
    """True when the private key is the one whose public half the cert carries."""
    digest = hashlib.sha256(key_pem).digest()
    hit = _KEY_MATCHES.get((digest, bytes(cert_pem)))
    if hit is None:
        hit = _key_matches_cert(key_pem, cert_pem)
        if len(_KEY_MATCHES) >= _MEMO:
            _KEY_MATCHES.clear()
        _KEY_MATCHES[(digest, bytes(cert_pem))] = hit
    return hit


_KEY_MATCHES: dict[tuple[bytes, bytes], bool] = {}


def _key_matches_cert(key_pem: bytes, cert_pem: bytes) -> bool:
    key = serialization.load_pem_private_key(key_pem, password=None)
    cert = x509.load_pem_x509_certificate(cert_pem)
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt)


def cert_signed_by(cert_pem: bytes, ca_cert_pem: bytes) -> bool:
    """True when ca_cert's key signed cert and the issuer name matches its subject."""
    return _cert_signed_by(bytes(cert_pem), bytes(ca_cert_pem))


@functools.lru_cache(maxsize=_MEMO)
def _cert_signed_by(cert_pem: bytes, ca_cert_pem: bytes) -> bool:
    cert = x509.load_pem_x509_certificate(cert_pem)
    ca = x509.load_pem_x509_certificate(ca_cert_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
