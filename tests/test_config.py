"""Every rendered Nomad agent config is exactly the seed's, fixed where the seed was
wrong (region always set, rpc/serf advertised, tls.http explicit), and holds only
keys Nomad accepts.

The expected configs below are written out by hand from the seed guide
(nomad-cluster-guide.txt, "Server configuration" / "Client configuration"); each
rendered file is read back by two parsers: pyhcl and tests/go_hcl.py (a port of
the hashicorp/hcl v1 scanner Nomad uses).
"""

from __future__ import annotations

import base64
import copy
import tomllib
from pathlib import Path
from typing import Any

import hcl as pyhcl
import pytest
from cryptography import x509

from builder.cluster import load
from builder.nodetree import NodeTree
from builder.render import render_node
from builder.state import State

import go_hcl
from conftest import REPO, Rendered, example_text

SCHEMA: dict[str, Any] = tomllib.loads((REPO / "recipes" / "nomad-schema.toml").read_text())
NODES = {
    # name: (role, address, meta client_type)
    "bi-core-sbg-1": ("server", "10.20.130.52", None),
    "bi-core-sbg-2": ("server", "10.20.130.53", None),
    "bi-core-sbg-3": ("server", "10.20.130.54", None),
    "bi-node-sbg-1": ("client", "10.20.131.41", "edge"),
    "bi-node-sbg-2": ("client", "10.20.131.42", "worker"),
    "bi-node-sbg-3": ("client", "10.20.131.43", "worker"),
}
GOSSIP = "<gossip key from state/>"

# The seed's server file for bi-core-sbg-1, on OpenBSD (the seed's OS), plus:
# region (the seed's certificates say eu; its config said nothing: Nomad's default
# "global" then fails verify_server_hostname), advertise rpc/serf, tls.http = false.
SEED_SERVER: dict[str, Any] = {
    "addresses": {"http": "127.0.0.1"},
    "advertise": {"http": "127.0.0.1", "rpc": "10.20.130.52", "serf": "10.20.130.52"},
    "bind_addr": "{{ GetInterfaceIP `vio1` }}",
    "consul": {
        "address": "127.0.0.1:8500",
        "auto_advertise": True,
        "client_auto_join": True,
        "client_service_name": "nomad-client",
        "server_auto_join": True,
        "server_service_name": "nomad",
    },
    "data_dir": "/var/nomad",
    "datacenter": "bi-sbg",
    "disable_anonymous_signature": True,
    "disable_update_check": True,
    "enable_syslog": True,
    "leave_on_interrupt": True,
    "leave_on_terminate": True,
    "log_level": "INFO",
    "name": "bi-core-sbg-1",
    "region": "eu",
    "server": {"bootstrap_expect": 3, "enabled": True, "encrypt": GOSSIP},
    "telemetry": {
        "collection_interval": "1s",
        "disable_hostname": True,
        "prometheus_metrics": True,
        "publish_allocation_metrics": True,
        "publish_node_metrics": True,
    },
    "tls": {
        "ca_file": "/etc/ssl/nomad/nomad-ca.pem",
        "cert_file": "/etc/ssl/nomad/nomad-server.pem",
        "key_file": "/etc/ssl/nomad/nomad-server-key.pem",
        "rpc": True,
        "http": False,
        "verify_server_hostname": True,
    },
}

# The seed's client file for bi-node-sbg-1 (client_type "edge"), same fixes.
SEED_CLIENT: dict[str, Any] = {
    "addresses": {"http": "127.0.0.1"},
    "advertise": {"http": "127.0.0.1", "rpc": "10.20.131.41"},
    "bind_addr": "{{ GetInterfaceIP `vio1` }}",
    "client": {
        "enabled": True,
        "network_interface": "vio1",
        "node_class": "prod",
        "meta": {"client_type": "edge"},
    },
    "plugin": {"raw_exec": {"config": {"enabled": True}}},
    "consul": {
        "address": "127.0.0.1:8500",
        "auto_advertise": True,
        "client_auto_join": True,
        "client_service_name": "nomad-client",
        "server_auto_join": True,
        "server_service_name": "nomad",
    },
    "data_dir": "/var/nomad",
    "datacenter": "bi-sbg",
    "disable_anonymous_signature": True,
    "disable_update_check": True,
    "enable_syslog": True,
    "leave_on_interrupt": True,
    "leave_on_terminate": True,
    "log_level": "INFO",
    "name": "bi-node-sbg-1",
    "region": "eu",
    "telemetry": {
        "collection_interval": "1s",
        "disable_hostname": True,
        "prometheus_metrics": True,
        "publish_allocation_metrics": True,
        "publish_node_metrics": True,
    },
    "tls": {
        "ca_file": "/etc/ssl/nomad/nomad-ca.pem",
        "cert_file": "/etc/ssl/nomad/nomad-client.pem",
        "key_file": "/etc/ssl/nomad/nomad-client-key.pem",
        "rpc": True,
        "http": False,
        "verify_server_hostname": True,
    },
}


def for_debian(config: dict[str, Any]) -> dict[str, Any]:
    """The same config on Debian: HashiCorp's package's paths, the example's eth1."""
    out = copy.deepcopy(config)
    out["data_dir"] = "/opt/nomad/data"
    out["bind_addr"] = "{{ GetInterfaceIP `eth1` }}"
    if "client" in out:
        out["client"]["network_interface"] = "eth1"
    for key in ("ca_file", "cert_file", "key_file"):
        out["tls"][key] = out["tls"][key].replace("/etc/ssl/nomad/", "/etc/nomad.d/tls/")
    return out


@pytest.fixture(params=["openbsd", "debian"])
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return request.getfixturevalue(f"rendered_{request.param}")


def config_text(r: Rendered, name: str) -> str:
    node = r.node(name)
    return r.trees[name].file(node.config_file).content.decode("utf-8")


def parsed(r: Rendered, name: str) -> dict[str, Any]:
    """The node's config through pyhcl, checked equal to the Go-scanner reading."""
    text = config_text(r, name)
    mine = pyhcl.loads(text)
    assert mine == go_hcl.parse(text), "pyhcl and the hcl v1 port disagree"
    return mine


def gossip_key(r: Rendered) -> str:
    return (r.state_dir / "gossip.key").read_text().strip()


def expected(r: Rendered, seed: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(seed)
    if "server" in out:
        out["server"]["encrypt"] = gossip_key(r)
    return for_debian(out) if r.cluster.nodes[0].os == "debian" else out


# ---------------------------------------------------------------- exact files


def test_server_config_is_the_seeds(rendered: Rendered) -> None:
    assert parsed(rendered, "bi-core-sbg-1") == expected(rendered, SEED_SERVER)


def test_client_config_is_the_seeds(rendered: Rendered) -> None:
    assert parsed(rendered, "bi-node-sbg-1") == expected(rendered, SEED_CLIENT)


def test_every_node_has_its_role_and_name(rendered: Rendered) -> None:
    key = gossip_key(rendered)
    assert len(key) == 44
    assert len(base64.b64decode(key, validate=True)) == 32  # standard alphabet, padded
    assert set(rendered.trees) == set(NODES)
    for name, (role, address, client_type) in NODES.items():
        cfg = parsed(rendered, name)
        assert cfg["name"] == name
        assert cfg["region"] == "eu"
        assert cfg["advertise"]["rpc"] == address
        if role == "server":
            assert cfg["server"] == {"enabled": True, "bootstrap_expect": 3, "encrypt": key}
            assert cfg["advertise"]["serf"] == address
            assert "client" not in cfg and "plugin" not in cfg
            assert cfg["tls"]["cert_file"].endswith("/nomad-server.pem")
        else:
            assert "server" not in cfg
            assert "serf" not in cfg["advertise"]  # clients are not in the gossip pool
            assert cfg["client"]["enabled"] is True
            assert cfg["client"]["node_class"] == "prod"
            assert cfg["client"]["meta"] == {"client_type": client_type}
            assert cfg["plugin"] == {"raw_exec": {"config": {"enabled": True}}}
            assert cfg["tls"]["cert_file"].endswith("/nomad-client.pem")
        # the gossip key is in server configs only
        assert (key in config_text(rendered, name)) == (role == "server")


# ---------------------------------------------------------------- schema


def schema_problems(config: dict[str, Any], block: str = "agent", path: str = "") -> list[str]:
    """Keys (and value types) of a parsed config against recipes/nomad-schema.toml."""
    problems: list[str] = []
    spec = SCHEMA[block]
    for key, value in config.items():
        where = f"{path}.{key}" if path else key
        kind = spec.get(key)
        if isinstance(kind, dict):  # { type = …, since = …, until = … }
            kind = kind["type"]
        if kind is None:
            problems.append(f"{where}: not a key of Nomad's {block} block")
        elif kind.startswith("block:"):
            if not isinstance(value, dict):
                problems.append(f"{where}: not a block")
            else:
                problems += schema_problems(value, kind.split(":", 1)[1], where)
        elif kind.startswith("labels:"):
            for label, body in value.items():
                problems += schema_problems(body, kind.split(":", 1)[1], f"{where}.{label}")
        elif kind == "bool" and not isinstance(value, bool):
            problems.append(f"{where}: not a bool")
        elif kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
            problems.append(f"{where}: not an int")
        elif kind in ("string", "duration") and not isinstance(value, str):
            problems.append(f"{where}: not a string")
        elif kind == "list" and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            problems.append(f"{where}: not a list of strings")
        elif kind == "map" and not (
            isinstance(value, dict) and all(isinstance(v, str | int | bool) for v in value.values())
        ):
            problems.append(f"{where}: not a map of scalars")
    return problems


def test_schema_walk_finds_unknown_keys() -> None:
    bad = {"server": {"enabled": True, "bootstrap_expext": 3}, "plugin": {"x": {"confg": {}}}}
    assert schema_problems(bad) == [
        "server.bootstrap_expext: not a key of Nomad's server block",
        "plugin.x.confg: not a key of Nomad's plugin block",
    ]
    assert schema_problems({"tls": {"http": "false"}}) == ["tls.http: not a bool"]


def test_every_key_is_one_nomad_accepts(rendered: Rendered) -> None:
    for name in NODES:
        assert schema_problems(parsed(rendered, name)) == [], name


# ---------------------------------------------------------------- extra, role both

EXTRA = """
[defaults.extra]
limits = { http_max_conns_per_client = 100, rpc_max_conns_per_client = 100 }
consul = { tags = ["bi"], timeout = "5s" }

[roles.client.extra.client]
gc_max_allocs = 50
reserved = { cpu = 100, memory = 256 }
"""
NODE_EXTRA = (
    "extra = { limits = { rpc_max_conns_per_client = 7 }, "
    'client = { reserved = { memory = 512 } }, consul = { tags = ["edge", "x"] } }'
)


def add_to_node(text: str, name: str, line: str) -> str:
    anchor = f'name = "{name}"\n'
    assert anchor in text
    return text.replace(anchor, anchor + line + "\n", 1)


def test_extra_tables_deep_merge_node_wins(tmp_path: Path) -> None:
    text = add_to_node(example_text("openbsd") + EXTRA, "bi-node-sbg-2", NODE_EXTRA)
    r = _render(tmp_path, text)
    base_consul = SEED_CLIENT["consul"]

    server = parsed(r, "bi-core-sbg-1")
    assert server["limits"] == {"http_max_conns_per_client": 100, "rpc_max_conns_per_client": 100}
    assert server["consul"] == {**base_consul, "tags": ["bi"], "timeout": "5s"}
    assert "client" not in server

    edge = parsed(r, "bi-node-sbg-1")
    assert edge["limits"] == server["limits"]
    assert edge["client"] == {
        **SEED_CLIENT["client"],
        "gc_max_allocs": 50,
        "reserved": {"cpu": 100, "memory": 256},
    }

    mine = parsed(r, "bi-node-sbg-2")
    assert mine["limits"] == {"http_max_conns_per_client": 100, "rpc_max_conns_per_client": 7}
    assert mine["consul"] == {**base_consul, "tags": ["edge", "x"], "timeout": "5s"}
    assert mine["client"] == {
        **SEED_CLIENT["client"],
        "meta": {"client_type": "worker"},
        "gc_max_allocs": 50,
        "reserved": {"cpu": 100, "memory": 512},
    }
    for name in NODES:
        assert schema_problems(parsed(r, name)) == [], name


def _render(directory: Path, text: str) -> Rendered:
    """What the conftest's render_all does, for a cluster file of our own text."""
    path = directory / "cluster.toml"
    path.write_text(text)
    cluster = load(path)
    with State.open(directory / "state", create=True) as st:
        trees: dict[str, NodeTree] = {n.name: render_node(cluster, n, st) for n in cluster.nodes}
    return Rendered(cluster, directory / "state", trees)


@pytest.mark.parametrize("os_name", ["openbsd", "debian"])
def test_role_both_gets_both_blocks_and_both_names(tmp_path: Path, os_name: str) -> None:
    text = example_text(os_name).replace(
        'name = "bi-core-sbg-3"\nrole = "server"', 'name = "bi-core-sbg-3"\nrole = "both"'
    )
    assert 'role = "both"' in text
    r = _render(tmp_path, text)
    node = r.node("bi-core-sbg-3")
    cfg = parsed(r, "bi-core-sbg-3")
    assert cfg["server"] == {"enabled": True, "bootstrap_expect": 3, "encrypt": gossip_key(r)}
    assert cfg["client"]["enabled"] is True
    assert cfg["client"]["node_class"] == "prod"  # roles.client applies to "both"
    assert cfg["plugin"] == {"raw_exec": {"config": {"enabled": True}}}
    assert cfg["advertise"] == {"http": "127.0.0.1", "rpc": "10.20.130.54", "serf": "10.20.130.54"}
    assert schema_problems(cfg) == []

    cert_path = cfg["tls"]["cert_file"]
    assert cert_path == f"{node.tls_dir}/nomad-agent.pem"
    cert = x509.load_pem_x509_certificate(r.trees["bi-core-sbg-3"].file(cert_path).content)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = sans.get_values_for_type(x509.DNSName)
    assert {"server.eu.nomad", "client.eu.nomad", "localhost"} <= set(dns)
    assert "bi-core-sbg-3.intra.terror.ninja" in dns
    # the plain server keeps a server-only cert
    other = parsed(r, "bi-core-sbg-1")
    assert "client" not in other
