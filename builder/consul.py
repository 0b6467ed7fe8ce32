"""Consul agents nomad-build configures when [consul.agent] enabled = true.

Pure functions, no packaging: the Consul CA and certificates (made the way
`consul tls ca create` / `consul tls cert create` do: ECDSA P-256, CN
``Consul Agent CA …``, leaves ``server.<dc>.consul`` / ``client.<dc>.consul`` +
localhost + 127.0.0.1; Consul's names are outside the Nomad CA's name
constraints, hence a CA of its own), the gossip key, the agent configuration
(JSON, which Consul reads like HCL) and its check against recipes/consul-schema.toml.

Secrets live in the state store beside Nomad's: consul-ca.key / consul-ca.pem,
consul-gossip.key, consul-<node>.key / consul-<node>.pem. They follow Nomad's policy
(builder.cert_policy through the store's CA and node-certificate machinery): created
once, node certificates re-issued when stale or expiring, the CA refused when expired.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any

import jinja2

from builder import pki
from builder.cert_policy import CASpec, CertSpec, leaf_spec
from builder.data import data_path, template_environment
from builder.errors import UserError
from builder.model import Cluster, Node
from builder.nodetree import NodeDir, NodeFile, NodeTree, Service, ServiceAccount
from builder.state import CAFiles, CertFiles, State

__all__ = [
    "CONSUL_CA",
    "GOSSIP_KEY",
    "HTTP_PORT",
    "PORTS",
    "ConsulSecrets",
    "agent_config",
    "ca_spec",
    "cert_files",
    "cert_names",
    "cert_spec",
    "check_config",
    "consul_secrets",
    "enabled",
    "gossip_key",
    "min_version",
    "package_node",
    "render",
    "render_tree",
    "version_key",
]

HTTP_PORT = 8500  # loopback only
# Among the cluster's nodes: server RPC (tcp), LAN serf (tcp+udp), DNS (when enabled).
PORTS = {"server": 8300, "serf_lan": 8301, "dns": 8600}
# Where HashiCorp's .deb and the sysutils/consul port keep them (docs/consul.md).
CONFIG_DIRS = {"debian": "/etc/consul.d", "openbsd": "/etc/consul.d"}
DATA_DIRS = {"debian": "/opt/consul", "openbsd": "/var/consul"}
CONFIG_NAME = "nomad-build.json"  # loaded alone (-config-file), beside the package's demo


@dataclass(frozen=True)
class _OS:
    """How each OS runs HashiCorp's Consul (its .deb; the sysutils/consul port), as
    docs/consul.md records them from their sources."""

    binary: str
    service: str  # systemd unit (HashiCorp's, with our drop-in) / our rc.d script
    unit_path: str
    unit_template: str
    unit_mode: int
    unit_group: str
    firewall_path: str
    firewall_template: str
    account: ServiceAccount  # the one HashiCorp's preinst / the port's PLIST creates
    root_group: str
    login_class: str | None = None  # the port's login class (rc.d's daemon_class)


_OSES = {
    "debian": _OS(
        binary="/usr/bin/consul",
        service="consul",
        unit_path="/usr/lib/systemd/system/consul.service.d/nomad-build.conf",
        unit_template="packaging/debian/consul-build.conf.j2",
        unit_mode=0o644,
        unit_group="root",
        firewall_path="/etc/nftables.d/nomad-build-consul.nft",
        firewall_template="packaging/debian/consul-build.nft.j2",
        account=ServiceAccount("consul", "consul", create=True, home=DATA_DIRS["debian"]),
        root_group="root",
    ),
    "openbsd": _OS(
        binary="/usr/local/bin/consul",
        service="consul_agent",  # not the port's /etc/rc.d/consul
        unit_path="/etc/rc.d/consul_agent",
        unit_template="packaging/openbsd/consul-rc.d.j2",
        unit_mode=0o555,
        unit_group="bin",
        firewall_path=f"{CONFIG_DIRS['openbsd']}/pf.anchor",
        firewall_template="packaging/openbsd/consul-pf.anchor.j2",
        # the port's @newuser/@newgroup, field for field (pkg_add keeps an existing one)
        account=ServiceAccount("_consul", "_consul", create=True, uid=773, gid=773),
        root_group="wheel",
        login_class="consul",  # its pkg/consul.login: the daemon class has too few fds
    ),
}


def min_version() -> str:
    """The oldest Consul that accepts every key we write (consul-schema.toml's
    min_consul): the packages' dependency on HashiCorp's package / the port."""
    return str(_schema()["min_consul"])


def enabled(cluster: Cluster) -> bool:
    return cluster.consul.agent is not None and cluster.consul.agent.enabled


def version_key(node: str) -> str:
    """The key of a node's Consul package version beside its Nomad package's (the node)."""
    return f"{node}@consul"


def role_text(cluster: Cluster, node: Node) -> str:
    return "server" if node in cluster.consul_servers else "client"


def package_node(node: Node) -> Node:
    """The node as the Consul package writers see it: named consul-config-<node>, no
    bundled (Nomad) binary."""
    return dataclasses.replace(
        node,
        deb_package="consul-config-" + node.deb_package.removeprefix("nomad-config-"),
        openbsd_stem="consul-config-" + node.openbsd_stem.removeprefix("nomad-config-"),
        packages=dataclasses.replace(node.packages, bundle=None),
    )


def domain_names(cluster: Cluster) -> tuple[str, ...]:
    """The Consul CA's permitted DNS names (`consul tls ca create -name-constraint`)."""
    return ("consul", "localhost", cluster.domain)


def cert_names(cluster: Cluster, node: Node) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(CN, DNS SANs, IP SANs) of a node's Consul certificate, as `consul tls cert create`
    makes them: server.<dc>.consul or client.<dc>.consul, localhost, 127.0.0.1 (+ the
    node's FQDN and addresses, for reaching it by name or IP)."""
    dc = cluster.datacenter.lower()
    role = "server" if node in cluster.consul_servers else "client"
    cn = f"{role}.{dc}.consul"
    return cn, (cn, "localhost", node.fqdn), ("127.0.0.1", *node.ips)


@dataclass(frozen=True)
class ConsulSecrets:
    ca_cert: bytes
    gossip_key: str
    key: bytes  # the node's
    cert: bytes


# Where the state keeps them (flat names, beside Nomad's ca/ and nodes/).
CONSUL_CA = CAFiles("consul-ca.key", "consul-ca.pem", "Consul CA", "consul-ca")
GOSSIP_KEY = "consul-gossip.key"
ROTATE_CA = "`nomad-build pki rotate-ca --consul`"


def cert_files(node: str) -> CertFiles:
    return CertFiles(
        f"consul-{node}.key", f"consul-{node}.pem", f"Consul certificate {node}", CONSUL_CA
    )


def ca_spec(cluster: Cluster) -> CASpec:
    """The Consul CA: Nomad's CA policy (pki.*), Consul's names."""
    return CASpec(
        common_name=f"Consul Agent CA {cluster.name}",
        permitted_dns=domain_names(cluster),
        days=cluster.pki.ca_days,
        cert_days=cluster.pki.cert_days,
        renew_before=timedelta(days=cluster.pki.renew_before_days),
        rotate=ROTATE_CA,
    )


def cert_spec(cluster: Cluster, node: Node) -> CertSpec:
    return leaf_spec(cert_names(cluster, node), cluster.pki)


def gossip_key(st: State) -> str | None:
    """The LAN gossip key every Consul agent shares (created once); None read-only when
    it does not exist yet."""
    raw = st.secret(GOSSIP_KEY, lambda: pki.generate_gossip_key().encode() + b"\n")
    if raw is None:
        return None
    key = raw.decode("ascii", "replace").strip()
    try:
        size = len(base64.b64decode(key, validate=True))
    except (binascii.Error, ValueError):
        size = -1
    if size != 32:  # what `consul keygen` makes and Consul requires
        raise UserError(
            f"{st.directory / GOSSIP_KEY}: not a Consul gossip key (base64 of 32 bytes); "
            "restore it from your backup"
        )
    return key


def consul_secrets(st: State, cluster: Cluster, node: Node) -> ConsulSecrets | None:
    """The node's Consul secrets from the state store, under the same policy as Nomad's:
    the CA and gossip key created once (the CA refused when expired, warned about near
    its end), the node certificate re-issued when its names, its CA or its end call for
    it. None read-only when something would be created or re-issued."""
    files = cert_files(node.name)
    if files.key in (CONSUL_CA.key, GOSSIP_KEY):  # the flat layout's two shared names
        raise UserError(
            f"{cluster.source}: nodes: {node.name!r} cannot run a Consul agent: its Consul "
            f"key would be the state's {files.key}; rename the node"
        )
    ca = st.ca(ca_spec(cluster), CONSUL_CA)
    gossip = gossip_key(st)
    pair = st.node_cert(node.name, cert_spec(cluster, node), ca, files)
    if ca is None or gossip is None or pair is None:
        return None
    # Only the CA *certificate* travels: both generations while `pki rotate-ca --consul`
    # is under way.
    bundle = st.ca_bundle(CONSUL_CA) or ca[1]
    return ConsulSecrets(bundle, gossip, pair[0], pair[1])


def agent_config(cluster: Cluster, node: Node, *, gossip_key: str) -> dict[str, Any]:
    """The node's Consul agent configuration (checked against consul-schema.toml)."""
    tls_dir = f"{CONFIG_DIRS[node.os]}/tls"
    server = node in cluster.consul_servers
    dns = cluster.consul.agent is not None and cluster.consul.agent.dns
    address = node.advertise or node.address
    config: dict[str, Any] = {
        "node_name": node.name,
        "datacenter": cluster.datacenter.lower(),
        "data_dir": DATA_DIRS[node.os],
        "server": server,
        "bind_addr": address,
        "advertise_addr": address,
        "client_addr": "127.0.0.1",  # HTTP (and DNS) on loopback
        "retry_join": [s.advertise or s.address for s in cluster.consul_servers],
        "encrypt": gossip_key,
        "encrypt_verify_incoming": True,
        "encrypt_verify_outgoing": True,
        "ports": {
            "http": HTTP_PORT,
            "https": -1,
            "grpc": -1,
            "grpc_tls": -1,
            "serf_wan": -1,  # one datacenter: no WAN gossip
            "dns": PORTS["dns"] if dns else -1,
        },
        "tls": {
            "defaults": {
                "ca_file": f"{tls_dir}/consul-agent-ca.pem",
                "cert_file": f"{tls_dir}/consul.pem",
                "key_file": f"{tls_dir}/consul-key.pem",
                "verify_incoming": True,
                "verify_outgoing": True,
            },
            "internal_rpc": {"verify_server_hostname": True},
            "https": {"verify_incoming": False},
        },
        "disable_update_check": True,
        "disable_anonymous_signature": True,
        "enable_syslog": True,
        "leave_on_terminate": not server,
        "log_level": node.log_level.upper(),
    }
    if dns:
        config["addresses"] = {"dns": "0.0.0.0"}
    if server:
        config["bootstrap_expect"] = len(cluster.consul_servers)
    problems = check_config(config)
    if problems:
        raise ValueError(f"{node.name}: Consul configuration: {problems[0]}")
    return config


def render(config: Mapping[str, Any]) -> bytes:
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


@cache
def _schema() -> dict[str, Any]:
    with open(data_path("recipes", "consul-schema.toml"), "rb") as f:
        return tomllib.load(f)


_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "bool": (bool,), "int": (int,)}


def check_config(config: Mapping[str, Any], table: str = "agent", where: str = "") -> list[str]:
    """What in `config` Consul's key schema does not know or types differently."""
    schema = _schema()[table]
    problems: list[str] = []
    for key, value in config.items():
        path = f"{where}{key}"
        kind = schema.get(key)
        if kind is None:
            problems.append(f"{path}: not a Consul agent key here (known: {', '.join(schema)})")
        elif kind.startswith("block:"):
            if not isinstance(value, Mapping):
                problems.append(f"{path}: must be a block")
            else:
                problems += check_config(value, kind[6:], f"{path}.")
        elif kind == "list":
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                problems.append(f"{path}: must be a list of strings")
        elif not isinstance(value, _TYPES[kind]) or (kind == "int" and isinstance(value, bool)):
            problems.append(f"{path}: must be {kind}")
    return problems


# ---------------------------------------------------------------- the NodeTree


@cache
def _env() -> jinja2.Environment:
    return template_environment({}, trim=True)


def render_tree(cluster: Cluster, node: Node, made: ConsulSecrets) -> NodeTree:
    """The files of the node's Consul agent: its configuration (with the gossip key: a
    secret; every Consul agent is in the LAN gossip pool), the Consul CA certificate,
    the node's Consul certificate and key, the service unit or rc.d script and the
    firewall rules for Consul's ports among the cluster's nodes."""
    os = _OSES[node.os]
    conf_dir = CONFIG_DIRS[node.os]
    config_file = f"{conf_dir}/{CONFIG_NAME}"
    account = os.account
    config = agent_config(cluster, node, gossip_key=made.gossip_key)
    tls = config["tls"]["defaults"]
    context = {
        "node": node,
        "role_text": role_text(cluster, node),
        "account": account,
        "binary": os.binary,
        "config_file": config_file,
        "service_name": os.service,
        "login_class": os.login_class,
        "dns": bool(cluster.consul.agent and cluster.consul.agent.dns),
        "path": os.firewall_path,
    }

    def render_template(name: str, **extra: Any) -> bytes:
        return _env().get_template(name).render(**context, **extra).encode()

    root, secret_group = os.root_group, account.group
    files = [
        NodeFile(config_file, render(config), 0o640, "root", secret_group, "secret"),
        NodeFile(tls["ca_file"], made.ca_cert, 0o644, "root", root, "config"),
        NodeFile(tls["cert_file"], made.cert, 0o644, "root", root, "config"),
        NodeFile(tls["key_file"], made.key, 0o640, "root", secret_group, "secret"),
        NodeFile(
            os.unit_path,
            render_template(os.unit_template),
            os.unit_mode,
            "root",
            os.unit_group,
            "script" if node.os == "openbsd" else "unit",
        ),
        NodeFile(
            os.firewall_path,
            render_template(os.firewall_template, **_firewall(cluster, node)),
            0o644,
            "root",
            root,
            "firewall",
        ),
    ]
    files.sort(key=lambda f: f.path)
    data_dir = DATA_DIRS[node.os]
    return NodeTree(
        node=node.name,
        os=node.os,
        service=Service(os.service, os.unit_path, config_file, data_dir, account),
        files=tuple(files),
        dirs=(NodeDir(data_dir, 0o750, account.user, account.group),),
        notes=(_firewall_note(node.os, os.firewall_path),),
    )


def _firewall_note(os_name: str, path: str) -> str:
    if os_name == "openbsd":
        return (
            f'Load the Consul firewall rules from /etc/pf.conf: anchor "consul" and '
            f'load anchor "consul" from "{path}", then pfctl -f /etc/pf.conf'
        )
    return (
        f'Load the Consul firewall rules: add include "{path}" to /etc/nftables.conf, '
        "then systemctl reload nftables"
    )


def _firewall(cluster: Cluster, node: Node) -> dict[str, Any]:
    """Who may reach this node's Consul: every agent calls the servers' RPC (8300 tcp);
    every agent gossips with every other (LAN Serf, 8301 tcp+udp); DNS (8600) when on."""
    everyone = [ip for n in cluster.nodes if n is not node for ip in n.ips]
    dns = bool(cluster.consul.agent and cluster.consul.agent.dns)
    server = node in cluster.consul_servers
    tcp = ([str(PORTS["server"])] if server else []) + [str(PORTS["serf_lan"])]
    udp = [str(PORTS["serf_lan"])]
    if dns:
        tcp.append(str(PORTS["dns"]))
        udp.append(str(PORTS["dns"]))
    if node.os == "openbsd":
        rules = []
        if everyone:  # pf refuses a rule naming an undefined table
            peers = "from <consul_peers> to (self) port"
            if server:
                rules.append(f"pass in proto tcp {peers} {PORTS['server']}")
            rules.append(f"pass in proto {{ tcp udp }} {peers} {PORTS['serf_lan']}")
            if dns:
                rules.append(f"pass in proto {{ tcp udp }} {peers} {PORTS['dns']}")
        return {"tables": [("consul_peers", everyone)] if everyone else [], "rules": rules}
    sets: list[tuple[str, str, list[str]]] = []
    accepts: list[str] = []
    for family, keyword, version in (("ipv4", "ip", 4), ("ipv6", "ip6", 6)):
        chosen = [a for a in everyone if ipaddress.ip_address(a).version == version]
        if chosen:
            name = f"peers{version}"
            sets.append((family, name, chosen))
            accepts.append(f"{keyword} saddr @{name} tcp dport {{ {', '.join(tcp)} }}")
            accepts.append(f"{keyword} saddr @{name} udp dport {{ {', '.join(udp)} }}")
    # what is not accepted above is dropped (8500 also listens on loopback only)
    drop_tcp = sorted({*tcp, str(PORTS["server"]), str(HTTP_PORT)})
    return {"sets": sets, "accepts": accepts, "tcp_ports": drop_tcp, "udp_ports": udp}
