"""The Nomad agent configuration of one node, as data (rendered to HCL by a template).

It reproduces every setting of the seed's server and client files, always sets
`region` (the seed's bug: certificates for `eu`, config without a region), and
merges the cluster file's `extra` tables last. The merged result is validated
against Nomad's key schema, including the blocks where Nomad ignores typos.
"""

from __future__ import annotations

from typing import Any

from builder import nomad_schema
from builder.errors import UserError
from builder.model import Cluster, Node, thaw


def agent_config(
    cluster: Cluster, node: Node, *, tls_files: dict[str, str], gossip_key: str | None
) -> dict[str, Any]:
    consul = cluster.consul
    config: dict[str, Any] = {
        "name": node.name,
        "region": cluster.region,
        "datacenter": cluster.datacenter,
        "data_dir": node.data_dir,
        "bind_addr": node.bind_addr,
        # The HTTP API stays on loopback, without TLS (the seed's choice).
        "addresses": {"http": "127.0.0.1"},
        # rpc/serf advertise the node's cluster address: on a multi-homed host Nomad
        # would otherwise register whatever bind_addr resolves to.
        "advertise": {"http": "127.0.0.1", "rpc": node.advertise or node.address},
        "consul": {
            "address": consul.address,
            "auto_advertise": consul.auto_advertise,
            "server_auto_join": consul.server_auto_join,
            "client_auto_join": consul.client_auto_join,
            "server_service_name": consul.server_service_name,
            "client_service_name": consul.client_service_name,
        },
        "disable_anonymous_signature": True,
        "disable_update_check": True,
        "enable_syslog": True,
        "leave_on_interrupt": True,
        "leave_on_terminate": True,
        "log_level": node.log_level,
    }
    if node.is_server:
        config["advertise"]["serf"] = node.advertise or node.address
        config["server"] = _server(cluster, node, gossip_key)
    if node.is_client:
        config["client"] = _client(node)
        plugins = {d: {"config": {"enabled": True}} for d in node.drivers if d == "raw_exec"}
        if plugins:
            config["plugin"] = plugins
    if cluster.join == "static":
        # Every server's advertised address: servers join its serf port (4648),
        # clients its RPC port (4647), Nomad's defaults for a bare address.
        join = {"retry_join": [s.advertise or s.address for s in cluster.servers]}
        for block in ("server", "client"):
            if block in config:
                config[block]["server_join"] = dict(join)
    if node.telemetry:
        config["telemetry"] = thaw(node.telemetry)
    config["tls"] = {
        "rpc": True,
        "http": False,
        "verify_server_hostname": True,
        **tls_files,
    }
    merged = _merge(config, thaw(node.extra))
    problems = nomad_schema.check_config(merged, min_version=cluster.packages.nomad_min_version)
    if problems:
        raise UserError(f"{cluster.source}: node {node.name}: extra: {problems[0]}")
    return merged


def _server(cluster: Cluster, node: Node, gossip_key: str | None) -> dict[str, Any]:
    if gossip_key is None:
        raise ValueError(f"{node.name}: a server needs the gossip key")
    return {"enabled": True, "bootstrap_expect": cluster.bootstrap_expect, "encrypt": gossip_key}


def _client(node: Node) -> dict[str, Any]:
    client: dict[str, Any] = {"enabled": True}
    if node.interface:
        client["network_interface"] = node.interface
    if node.node_class is not None:
        client["node_class"] = node.node_class
    if node.meta:
        client["meta"] = dict(node.meta)
    return client


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
