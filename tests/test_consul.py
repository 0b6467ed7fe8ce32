"""[consul.agent]: Consul agent configurations, Consul's own CA, certificates and gossip
key. Configs parse as JSON and pass recipes/consul-schema.toml; certificates verify
against the Consul CA with openssl and carry the names Consul checks; a server and a
client certificate complete a real mutual-TLS handshake with hostname verification."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from builder import consul
from builder.cluster import load
from builder.errors import UserError
from builder.render import ca_spec
from builder.state import State

from conftest import example_text

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SERVERS = ["10.20.130.52", "10.20.130.53", "10.20.130.54"]


def _cluster(tmp_path: Path, table: str = "[consul.agent]\nenabled = true\n", os_name="debian"):
    text = example_text(os_name).replace("\n[packages]", f"\n{table}\n[packages]", 1)
    (tmp_path / "cluster.toml").write_text(text)
    return load(tmp_path / "cluster.toml")


@pytest.fixture
def made(tmp_path: Path):
    cluster = _cluster(tmp_path)
    out = {}
    with State.open(tmp_path / "state", create=True, clock=lambda: NOW) as st:
        for n in cluster.nodes:
            out[n.name] = consul.consul_secrets(st, cluster, n)
    return cluster, out


def test_off_by_default(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path, "")
    assert cluster.consul.agent is None and cluster.consul_servers == ()
    agent = _cluster(tmp_path, "[consul.agent]\n").consul.agent
    assert agent is not None and agent.enabled is False


def test_servers_default_to_nomads_and_can_be_named(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    assert [n.name for n in cluster.consul_servers] == [s.name for s in cluster.servers]
    named = _cluster(tmp_path, '[consul.agent]\nenabled = true\nservers = ["bi-node-sbg-1"]\n')
    assert [n.name for n in named.consul_servers] == ["bi-node-sbg-1"]
    with pytest.raises(UserError, match=r"consul.agent.servers\[0\]: 'nope' is not a node"):
        _cluster(tmp_path, '[consul.agent]\nenabled = true\nservers = ["nope"]\n')
    with pytest.raises(UserError, match=r"consul.agent.enable: unknown key; did you mean"):
        _cluster(tmp_path, "[consul.agent]\nenable = true\n")


def test_configs_parse_and_pass_the_schema(made) -> None:
    cluster, secrets = made
    gossip = secrets["bi-core-sbg-1"].gossip_key
    assert len(base64.b64decode(gossip, validate=True)) == 32
    assert len({s.gossip_key for s in secrets.values()}) == 1  # one pool
    for node in cluster.nodes:
        text = consul.render(consul.agent_config(cluster, node, gossip_key=gossip))
        cfg = json.loads(text)
        assert consul.check_config(cfg) == []
        assert cfg["node_name"] == node.name and cfg["datacenter"] == "bi-sbg"
        assert cfg["retry_join"] == SERVERS
        assert cfg["client_addr"] == "127.0.0.1" and cfg["ports"]["http"] == 8500
        assert cfg["ports"]["dns"] == -1 and cfg["ports"]["serf_wan"] == -1
        assert cfg["encrypt"] == gossip
        assert cfg["tls"]["defaults"]["verify_incoming"] is True
        assert cfg["tls"]["internal_rpc"] == {"verify_server_hostname": True}
        if node.is_server:
            assert cfg["server"] is True and cfg["bootstrap_expect"] == 3
        else:
            assert cfg["server"] is False and "bootstrap_expect" not in cfg


def test_schema_refuses_typos() -> None:
    assert consul.check_config({"retry_joins": []})[0].startswith("retry_joins: not a Consul")
    assert consul.check_config({"tls": {"defaults": {"verify_incomin": True}}})[0].startswith(
        "tls.defaults.verify_incomin"
    )
    assert consul.check_config({"server": "yes"}) == ["server: must be bool"]


def test_secrets_are_made_once(tmp_path: Path, made) -> None:
    cluster, first = made
    with State.open(tmp_path / "state", create=False, clock=lambda: NOW) as st:
        again = {n.name: consul.consul_secrets(st, cluster, n) for n in cluster.nodes}
    assert again == first
    names = sorted(p.name for p in (tmp_path / "state").iterdir() if "consul" in p.name)
    assert "consul-ca.key" in names and "consul-gossip.key" in names
    assert (tmp_path / "state" / "consul-ca.key").stat().st_mode & 0o077 == 0


def _pem(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_certificates_verify_with_the_right_names(tmp_path: Path, made) -> None:
    _, secrets = made
    ca = _pem(tmp_path, "ca.pem", secrets["bi-core-sbg-1"].ca_cert)
    for name, want in (("bi-core-sbg-1", "server.bi-sbg.consul"),
                       ("bi-node-sbg-1", "client.bi-sbg.consul")):  # fmt: skip
        cert = _pem(tmp_path, f"{name}.pem", secrets[name].cert)
        r = subprocess.run(
            ["openssl", "verify", "-CAfile", ca, "-verify_hostname", want, cert],
            capture_output=True, text=True,
        )  # fmt: skip
        assert r.returncode == 0 and r.stdout.strip().endswith(": OK"), r.stdout + r.stderr
        text = subprocess.run(
            ["openssl", "x509", "-in", cert, "-noout", "-text"], capture_output=True, text=True
        ).stdout
        assert f"DNS:{want}, DNS:localhost, DNS:{name}.intra.terror.ninja" in text
        assert "IP Address:127.0.0.1" in text
    # a Consul client certificate is no server's
    cert = _pem(tmp_path, "c.pem", secrets["bi-node-sbg-1"].cert)
    r = subprocess.run(
        ["openssl", "verify", "-CAfile", ca, "-verify_hostname", "server.bi-sbg.consul", cert],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode != 0
    # and the Nomad CA (the cluster's other CA, in the same state) did not sign it
    cluster = made[0]
    with State.open(tmp_path / "state", create=True) as st:
        nomad_ca = st.ca(ca_spec(cluster))
    assert nomad_ca is not None
    r = subprocess.run(
        ["openssl", "verify", "-CAfile", _pem(tmp_path, "nomad-ca.pem", nomad_ca[1]), cert],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "unable to get local issuer certificate" in r.stdout + r.stderr


def test_mutual_tls_handshake_between_server_and_client(tmp_path: Path, made) -> None:
    _, secrets = made
    server, client = secrets["bi-core-sbg-1"], secrets["bi-node-sbg-1"]
    ca = _pem(tmp_path, "ca.pem", server.ca_cert)

    def ctx(purpose, s, name):
        c = ssl.create_default_context(purpose, cafile=ca)
        c.load_cert_chain(
            _pem(tmp_path, f"{name}.crt", s.cert), _pem(tmp_path, f"{name}.key", s.key)
        )
        return c

    sctx = ctx(ssl.Purpose.CLIENT_AUTH, server, "s")
    sctx.verify_mode = ssl.CERT_REQUIRED  # verify_incoming
    cctx = ctx(ssl.Purpose.SERVER_AUTH, client, "c")  # verify_server_hostname
    a, b = socket.socketpair()
    seen: dict[str, object] = {}

    def serve() -> None:
        with sctx.wrap_socket(a, server_side=True) as tls:
            seen["peer"] = tls.getpeercert()
            tls.sendall(b"ok")

    t = threading.Thread(target=serve)
    t.start()
    with cctx.wrap_socket(b, server_hostname="server.bi-sbg.consul") as tls:
        assert tls.recv(2) == b"ok"
        peer = tls.getpeercert()
    t.join()
    assert ("DNS", "server.bi-sbg.consul") in peer["subjectAltName"]
    assert ("DNS", "client.bi-sbg.consul") in seen["peer"]["subjectAltName"]  # type: ignore[index]
    # the client's certificate cannot pass as a server's
    a, b = socket.socketpair()
    sctx2 = ctx(ssl.Purpose.CLIENT_AUTH, client, "c2")
    t = threading.Thread(target=lambda: _quiet_accept(sctx2, a))
    t.start()
    with pytest.raises(ssl.SSLCertVerificationError):
        cctx.wrap_socket(b, server_hostname="server.bi-sbg.consul")
    b.close()
    t.join()


def _quiet_accept(ctx: ssl.SSLContext, sock: socket.socket) -> None:
    try:
        with ctx.wrap_socket(sock, server_side=True):
            pass
    except (ssl.SSLError, OSError):
        pass
