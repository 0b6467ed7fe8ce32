"""builder.pki checked by OpenSSL's CLI and a real mutual-TLS handshake."""

from __future__ import annotations

import base64
import hashlib
import shutil
import socket
import ssl
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from builder import pki

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
PERMITTED = ("example.org", "nomad", "localhost")


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("openssl")
    assert exe, "openssl is required for these tests (apt-get install openssl)"
    return subprocess.run([exe, *args], capture_output=True, text=True, check=False)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def ca() -> tuple[bytes, bytes]:
    # Real "now" so OpenSSL and ssl accept the validity period.
    return pki.create_ca(
        common_name="nomad-build CA test",
        permitted_dns=PERMITTED,
        days=3650,
        now=datetime.now(UTC),
    )


def _leaf(
    ca: tuple[bytes, bytes],
    cn: str,
    dns: tuple[str, ...],
    ips: tuple[str, ...] = ("127.0.0.1",),
    now: datetime | None = None,
) -> tuple[bytes, bytes]:
    return pki.issue_cert(
        ca_key_pem=ca[0],
        ca_cert_pem=ca[1],
        common_name=cn,
        dns_names=dns,
        ip_addresses=ips,
        days=365,
        now=now or datetime.now(UTC),
        backdate=timedelta(minutes=1),
    )


def _spki_sha256(cert_pem: bytes) -> bytes:
    pub = x509.load_pem_x509_certificate(cert_pem).public_key()
    der = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def test_openssl_verifies_leaf(tmp_path: Path, ca: tuple[bytes, bytes]) -> None:
    _, cert = _leaf(ca, "server.eu.nomad", ("n1.example.org", "server.eu.nomad", "localhost"))
    ca_file = _write(tmp_path / "ca.pem", ca[1])
    leaf = _write(tmp_path / "leaf.pem", cert)
    r = _openssl("verify", "-CAfile", str(ca_file), str(leaf))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{leaf}: OK" in r.stdout


def test_ca_extensions_as_openssl_sees_them(tmp_path: Path, ca: tuple[bytes, bytes]) -> None:
    r = _openssl("x509", "-noout", "-text", "-in", str(_write(tmp_path / "ca.pem", ca[1])))
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert "Signature Algorithm: ecdsa-with-SHA256" in text
    assert "ASN1 OID: prime256v1" in text
    assert "X509v3 Basic Constraints: critical\n                CA:TRUE" in text
    assert (
        "X509v3 Key Usage: critical\n                "
        "Digital Signature, Certificate Sign, CRL Sign" in text
    )
    assert "X509v3 Name Constraints: critical\n                Permitted:\n" in text
    for name in PERMITTED:
        assert f"DNS:{name}\n" in text
    assert "Excluded" not in text
    cert = x509.load_pem_x509_certificate(ca[1])
    # Nomad-style key ids: SHA-256 of the SubjectPublicKeyInfo, AKID == SKID on the root.
    skid = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    akid = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert skid == _spki_sha256(ca[1])
    assert akid.key_identifier == skid
    assert 0 < cert.serial_number < 2**128
    assert pki.key_matches_cert(ca[0], ca[1])
    assert ca[0].startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted


def test_ca_validity_and_inspect() -> None:
    _key, cert = pki.create_ca(common_name="c", permitted_dns=("nomad",), days=10, now=NOW)
    info = pki.inspect_cert(cert)
    assert info == pki.CertInfo(
        subject_cn="c",
        dns_names=(),
        ip_addresses=(),
        not_before=NOW,
        not_after=NOW + timedelta(days=10),
        serial=info.serial,
        is_ca=True,
        permitted_dns=("nomad",),
    )
    assert info.not_before.tzinfo is not None
    assert pki.cert_signed_by(cert, cert)


def test_leaf_extensions_as_openssl_sees_them(tmp_path: Path, ca: tuple[bytes, bytes]) -> None:
    key, cert = _leaf(
        ca,
        "server.eu.nomad",
        ("n1.example.org", "server.eu.nomad", "localhost"),
        ("10.1.2.3", "127.0.0.1", "fd00::1"),
    )
    r = _openssl("x509", "-noout", "-text", "-in", str(_write(tmp_path / "leaf.pem", cert)))
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert "Subject: CN = server.eu.nomad" in text
    assert "Issuer: CN = nomad-build CA test" in text
    assert "X509v3 Basic Constraints: critical\n                CA:FALSE" in text
    assert "X509v3 Key Usage: critical\n                Digital Signature, Key Encipherment" in text
    assert (
        "X509v3 Extended Key Usage: \n"
        "                TLS Web Server Authentication, TLS Web Client Authentication" in text
    )
    # SAN order: DNS names as given, then IPs as given.
    assert (
        "X509v3 Subject Alternative Name: \n"
        "                DNS:n1.example.org, DNS:server.eu.nomad, DNS:localhost, "
        "IP Address:10.1.2.3, IP Address:127.0.0.1, IP Address:FD00:0:0:0:0:0:0:1\n"
    ) in text
    c = x509.load_pem_x509_certificate(cert)
    ca_c = x509.load_pem_x509_certificate(ca[1])
    skid = c.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    akid = c.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_skid = ca_c.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert skid == _spki_sha256(cert)
    assert akid.key_identifier == ca_skid
    assert 0 < c.serial_number < 2**128
    assert pki.key_matches_cert(key, cert)
    assert not pki.key_matches_cert(ca[0], cert)
    assert pki.cert_signed_by(cert, ca[1])


def test_leaf_validity_is_backdated(ca: tuple[bytes, bytes]) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    _, cert = pki.issue_cert(
        ca_key_pem=ca[0],
        ca_cert_pem=ca[1],
        common_name="client.eu.nomad",
        dns_names=("client.eu.nomad",),
        ip_addresses=(),
        days=365,
        now=now,
        backdate=timedelta(minutes=5),
    )
    info = pki.inspect_cert(cert)
    assert info.not_before == now - timedelta(minutes=5)
    assert info.not_after == now + timedelta(days=365)
    assert info.subject_cn == "client.eu.nomad"
    assert info.dns_names == ("client.eu.nomad",)
    assert info.ip_addresses == ()
    assert not info.is_ca
    assert info.permitted_dns == ()


def test_name_outside_constraints_fails_openssl_verify(
    tmp_path: Path, ca: tuple[bytes, bytes]
) -> None:
    # issue_cert does not police names (the cluster model does); the CA's constraints must.
    _, cert = _leaf(ca, "evil.example.com", ("evil.example.com",), ())
    ca_file = _write(tmp_path / "ca.pem", ca[1])
    leaf = _write(tmp_path / "evil.pem", cert)
    r = _openssl("verify", "-CAfile", str(ca_file), str(leaf))
    out = (r.stdout + r.stderr).lower()
    assert r.returncode != 0, out
    assert "permitted subtree" in out or "name constraint" in out, out


def test_cert_signed_by_rejects_other_ca(ca: tuple[bytes, bytes]) -> None:
    other = pki.create_ca(common_name="other", permitted_dns=PERMITTED, days=10, now=NOW)
    _, cert = _leaf(ca, "server.eu.nomad", ("server.eu.nomad",))
    assert pki.cert_signed_by(cert, ca[1])
    assert not pki.cert_signed_by(cert, other[1])
    # Same subject name, different key: the signature check must catch it.
    impostor = pki.create_ca(
        common_name="nomad-build CA test", permitted_dns=PERMITTED, days=10, now=NOW
    )
    assert not pki.cert_signed_by(cert, impostor[1])


def test_bad_pem_raises_value_error() -> None:
    with pytest.raises(ValueError):
        pki.inspect_cert(b"not a certificate")


def test_gossip_key() -> None:
    a, b = pki.generate_gossip_key(), pki.generate_gossip_key()
    assert len(a) == 44
    assert len(base64.b64decode(a, validate=True)) == 32
    assert len(base64.b64decode(b, validate=True)) == 32
    assert a != b


# ---------------------------------------------------------------- mutual TLS


def _files(tmp_path: Path, name: str, pair: tuple[bytes, bytes]) -> tuple[str, str]:
    key = _write(tmp_path / f"{name}.key", pair[0])
    cert = _write(tmp_path / f"{name}.pem", pair[1])
    return str(cert), str(key)


def _handshake(
    tmp_path: Path, ca: tuple[bytes, bytes], server_hostname: str
) -> tuple[BaseException | None, dict | None, BaseException | None]:
    """Run one mTLS handshake; returns (client error, client cert seen by server, server error)."""
    ca_file = str(_write(tmp_path / "ca.pem", ca[1]))
    srv = _files(
        tmp_path,
        "server",
        _leaf(ca, "server.eu.nomad", ("server.eu.nomad", "localhost"), ("127.0.0.1",)),
    )
    cli = _files(
        tmp_path,
        "client",
        _leaf(ca, "client.eu.nomad", ("client.eu.nomad", "localhost"), ("127.0.0.1",)),
    )

    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(*srv)
    sctx.load_verify_locations(ca_file)
    sctx.verify_mode = ssl.CERT_REQUIRED

    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname + CERT_REQUIRED
    cctx.load_cert_chain(*cli)
    cctx.load_verify_locations(ca_file)

    seen: dict[str, object] = {}
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(10)
            with sctx.wrap_socket(conn, server_side=True) as tls:
                seen["peer"] = tls.getpeercert()
                tls.sendall(b"ok")
        except (OSError, ssl.SSLError) as e:
            seen["error"] = e

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    client_error: BaseException | None = None
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            cctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            assert tls.recv(2) == b"ok"
    except ssl.SSLError as e:
        client_error = e
    t.join(10)
    listener.close()
    assert not t.is_alive()
    return client_error, seen.get("peer"), seen.get("error")  # type: ignore[return-value]


def test_mutual_tls_handshake(tmp_path: Path, ca: tuple[bytes, bytes]) -> None:
    client_error, peer, server_error = _handshake(tmp_path, ca, "server.eu.nomad")
    assert client_error is None
    assert server_error is None
    assert peer is not None
    assert ("commonName", "client.eu.nomad") in (rdn[0] for rdn in peer["subject"])
    assert ("DNS", "client.eu.nomad") in peer["subjectAltName"]


def test_mutual_tls_wrong_region_fails_hostname_check(
    tmp_path: Path, ca: tuple[bytes, bytes]
) -> None:
    # What Nomad's verify_server_hostname catches: a server cert for another region.
    client_error, peer, _ = _handshake(tmp_path, ca, "server.global.nomad")
    assert isinstance(client_error, ssl.SSLCertVerificationError)
    assert "hostname mismatch" in str(client_error).lower()
    assert peer is None
