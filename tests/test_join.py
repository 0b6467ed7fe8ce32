"""[cluster] join: "consul" (the seed's way, the default) or "static" (server_join with
the servers' addresses, Consul's auto-join off). Rendered configs are read back by
pyhcl and the hcl v1 port and checked against Nomad's schema."""

from __future__ import annotations

from pathlib import Path

import hcl as pyhcl
import pytest

from builder import nomad_schema
from builder.cluster import load
from builder.errors import UserError

import go_hcl
from conftest import example_text, render_all

SERVERS = ["10.20.130.52", "10.20.130.53", "10.20.130.54"]


def _static(text: str) -> str:
    return text.replace('datacenter = "bi-sbg"\n', 'datacenter = "bi-sbg"\njoin = "static"\n', 1)


def _config(r, name: str) -> dict:
    node = r.node(name)
    text = r.trees[name].file(node.config_file).content.decode()
    parsed = pyhcl.loads(text)
    assert parsed == go_hcl.parse(text)
    assert nomad_schema.check_config(parsed, min_version="1.7.0") == []
    return parsed


@pytest.mark.parametrize("os_name", ["openbsd", "debian"])
def test_static_join_names_the_servers(tmp_path: Path, os_name: str) -> None:
    text = _static(example_text(os_name))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "cluster.toml").write_text(text)
    cluster = load(tmp_path / "c" / "cluster.toml")
    assert cluster.join == "static"
    r = render_all(tmp_path / "r", os_name)  # the default, for comparison
    assert r.cluster.join == "consul"
    assert "server_join" not in _config(r, "bi-core-sbg-1")["server"]
    assert "server_join" not in _config(r, "bi-node-sbg-1")["client"]

    from builder.render import render_node
    from builder.state import State

    with State.open(tmp_path / "c" / "state", create=True) as st:
        server = render_node(cluster, cluster.node("bi-core-sbg-1"), st)
        client = render_node(cluster, cluster.node("bi-node-sbg-1"), st)
    for tree, name, block in ((server, "bi-core-sbg-1", "server"),
                              (client, "bi-node-sbg-1", "client")):  # fmt: skip
        node = cluster.node(name)
        cfg = pyhcl.loads(tree.file(node.config_file).content.decode())
        assert nomad_schema.check_config(cfg, min_version="1.7.0") == []
        assert cfg[block]["server_join"] == {"retry_join": SERVERS}
        assert cfg["consul"]["server_auto_join"] is False
        assert cfg["consul"]["client_auto_join"] is False
        other = "client" if block == "server" else "server"
        assert other not in cfg


def test_static_join_on_a_both_node_sets_both_blocks(tmp_path: Path) -> None:
    text = _static(example_text("debian")).replace(
        'name = "bi-core-sbg-3"\nrole = "server"', 'name = "bi-core-sbg-3"\nrole = "both"'
    )
    d = tmp_path / "c"
    d.mkdir()
    (d / "cluster.toml").write_text(text)
    cluster = load(d / "cluster.toml")
    from builder.render import render_node
    from builder.state import State

    node = cluster.node("bi-core-sbg-3")
    with State.open(d / "state", create=True) as st:
        tree = render_node(cluster, node, st)
    cfg = pyhcl.loads(tree.file(node.config_file).content.decode())
    assert cfg["server"]["server_join"] == cfg["client"]["server_join"] == {"retry_join": SERVERS}


def test_advertised_address_is_the_one_joined(tmp_path: Path) -> None:
    text = _static(example_text("debian")).replace(
        'address = "10.20.130.53"\n', 'address = "10.20.130.53"\nadvertise = "10.20.140.53"\n'
    )
    d = tmp_path / "c"
    d.mkdir()
    (d / "cluster.toml").write_text(text)
    cluster = load(d / "cluster.toml")
    from builder.agent_config import agent_config

    cfg = agent_config(cluster, cluster.node("bi-node-sbg-2"), tls_files={}, gossip_key=None)
    assert cfg["client"]["server_join"]["retry_join"][1] == "10.20.140.53"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('join = "serf"', "cluster.join: 'serf' is not one of consul, static"),
        ("join = true", "cluster.join: must be a string"),
    ],
)
def test_bad_join(tmp_path: Path, line: str, message: str) -> None:
    text = example_text().replace('datacenter = "bi-sbg"\n', f'datacenter = "bi-sbg"\n{line}\n')
    (tmp_path / "cluster.toml").write_text(text)
    with pytest.raises(UserError, match=message):
        load(tmp_path / "cluster.toml")


def test_static_join_refuses_consul_auto_join_said_true(tmp_path: Path) -> None:
    text = _static(example_text()).replace(
        'address = "127.0.0.1:8500"\n', 'address = "127.0.0.1:8500"\nserver_auto_join = true\n'
    )
    (tmp_path / "cluster.toml").write_text(text)
    with pytest.raises(UserError, match=r"consul.server_auto_join: true contradicts"):
        load(tmp_path / "cluster.toml")
