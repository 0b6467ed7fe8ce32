"""Recipes + templates + secrets -> NodeTree (the files that land on one node).

No artifact format is known here: writers turn the NodeTree into packages/images.
"""

from __future__ import annotations

import ipaddress
import threading
import tomllib
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any

import jinja2

from builder import hcl
from builder.agent_config import agent_config
from builder.cert_policy import leaf_spec
from builder.data import data_path, template_environment
from builder.errors import BuildError
from builder.model import Cluster, Node
from builder.nodetree import NodeDir, NodeFile, NodeTree, Service, ServiceAccount
from builder.os_profile import OSProfile, profile
from builder.pki import inspect_cert
from builder.state import CASpec, CertSpec, State


@dataclass(frozen=True)
class NodeSecrets:
    ca_cert: bytes
    node_cert: bytes
    node_key: bytes
    gossip_key: str | None  # servers only: clients are not in the gossip pool


def ca_spec(cluster: Cluster) -> CASpec:
    return CASpec(
        common_name=f"nomad-build CA {cluster.name}",
        permitted_dns=cluster.permitted_dns,
        days=cluster.pki.ca_days,
        cert_days=cluster.pki.cert_days,
        renew_before=timedelta(days=cluster.pki.renew_before_days),
    )


def cert_spec(cluster: Cluster, node: Node) -> CertSpec:
    return leaf_spec(cluster.cert_names(node), cluster.pki)


def node_secrets(cluster: Cluster, node: Node, state: State) -> NodeSecrets:
    """The node's secrets from the store, created or re-issued there as needed."""
    ca = state.ca(ca_spec(cluster))
    assert ca is not None, "a writable store always returns the CA"
    pair = state.node_cert(node.name, cert_spec(cluster, node), ca)
    assert pair is not None
    key, cert = pair
    gossip = state.gossip_key() if node.is_server else None
    # Only the CA *certificate* travels; the CA key never leaves state/. During a
    # `pki rotate-ca` it is a bundle of both generations (State.ca_bundle).
    bundle = state.ca_bundle() or ca[1]
    return NodeSecrets(ca_cert=bundle, node_cert=cert, node_key=key, gossip_key=gossip)


def render_node(cluster: Cluster, node: Node, state: State) -> NodeTree:
    return render_tree(cluster, node, node_secrets(cluster, node, state))


@cache
def _env() -> jinja2.Environment:
    return template_environment({"hcl": lambda config: hcl.dumps(config).rstrip("\n")})


@cache
def _toml(*parts: str) -> dict[str, Any]:
    with open(data_path(*parts), "rb") as f:
        return tomllib.load(f)


@dataclass(frozen=True)
class _Service:
    """One OS's service facts (packaging/<os>/service.toml) as they apply to one node."""

    os: OSProfile
    files: list[dict[str, Any]]  # the service files of this node's variant
    account: ServiceAccount
    fields: dict[str, str]  # what recipe/service paths and modes are formatted with

    @property
    def unit_path(self) -> str:
        return str(next(f["path"] for f in self.files if f["kind"] in ("unit", "script")))


def render_tree(cluster: Cluster, node: Node, secrets: NodeSecrets) -> NodeTree:
    _check_cert_region(cluster, node, secrets.node_cert)
    svc = _service(node)
    recipe = _toml("recipes", node.role, "recipe.toml")
    context = _context(cluster, node, svc)
    files = _recipe_files(cluster, node, secrets, recipe, svc, context)
    service_files, notes = _service_files(cluster, node, svc, context)
    files += service_files
    files += _bundle_files(node, svc)
    files.sort(key=lambda f: f.path)
    account = svc.account
    dirs = (NodeDir(node.data_dir, 0o700, account.user, account.group),)
    return NodeTree(
        node=node.name,
        os=node.os,
        service=Service(
            name=svc.os.service_name,
            unit_path=svc.unit_path,
            config_path=node.config_file,
            data_dir=node.data_dir,
            account=account,
        ),
        files=tuple(files),
        dirs=dirs,
        notes=tuple(notes),
    )


def _service(node: Node) -> _Service:
    os = profile(node.os)
    spec = _toml("packaging", node.os, "service.toml")
    account = _account(node, os)
    # With a bundled binary Debian gets a complete unit instead of a drop-in.
    variant = "bundled_binary" if node.packages.bundle is not None else "packaged_binary"
    files = [f for f in spec["files"] if f.get("when", variant) == variant]
    fields = {
        "config_file": node.config_file,
        "config_dir": node.config_dir,
        "tls_dir": node.tls_dir,
        "user": account.user,
        "group": account.group,
        "root_group": os.root_group,
        # A root-run agent needs nothing from the group; an unprivileged one reads via it.
        "secret_mode": "0600" if account.user == "root" else "0640",
    }
    return _Service(os=os, files=files, account=account, fields=fields)


def _context(cluster: Cluster, node: Node, svc: _Service) -> dict[str, Any]:
    """What every template of the node sees."""
    return {
        "node": node,
        "cluster": cluster,
        "role_text": node.role_text,
        "account": svc.account,
        "service_name": svc.os.service_name,
        "binary": svc.os.binary,
        "notify_ready": _notifies_systemd(node),
    }


def _recipe_files(
    cluster: Cluster,
    node: Node,
    secrets: NodeSecrets,
    recipe: dict[str, Any],
    svc: _Service,
    context: dict[str, Any],
) -> list[NodeFile]:
    """The role's recipe: the agent configuration and the TLS files."""
    fields = svc.fields
    tls_files = {}
    for f in recipe["files"]:
        key = {"ca_cert": "ca_file", "node_cert": "cert_file", "node_key": "key_file"}.get(
            f["source"]
        )
        if key:
            tls_files[key] = f["path"].format(**fields)
    content = {
        "agent_config": lambda: _render(
            "recipes/common/nomad.hcl.j2",
            context,
            config=agent_config(cluster, node, tls_files=tls_files, gossip_key=secrets.gossip_key),
        ),
        "ca_cert": lambda: secrets.ca_cert,
        "node_cert": lambda: secrets.node_cert,
        "node_key": lambda: secrets.node_key,
    }
    return [
        NodeFile(
            path=f["path"].format(**fields),
            content=content[f["source"]](),
            mode=int(f["mode"].format(**fields), 8),
            owner=f["owner"].format(**fields),
            group=f["group"].format(**fields),
            kind=f["kind"],
        )
        for f in recipe["files"]
    ]


def _service_files(
    cluster: Cluster, node: Node, svc: _Service, context: dict[str, Any]
) -> tuple[list[NodeFile], list[str]]:
    """The OS's unit or rc.d script and firewall snippet, with how to load the latter."""
    files: list[NodeFile] = []
    notes: list[str] = []
    for f in svc.files:
        path = f["path"].format(**svc.fields)
        extra = _firewall_context(cluster, node, path) if f["kind"] == "firewall" else {}
        files.append(
            NodeFile(
                path=path,
                content=_render(f["template"], context, **extra),
                mode=int(f.get("mode", "0644"), 8),
                owner="root",
                group=f.get("group", svc.os.root_group),
                kind=f["kind"],
            )
        )
        if f["kind"] == "firewall":
            notes.append(_firewall_note(svc.os, path))
    return files, notes


def _firewall_note(os: OSProfile, path: str) -> str:
    if os.firewall == "pf":
        return (
            f'Load the Nomad firewall rules from /etc/pf.conf: anchor "nomad" and '
            f'load anchor "nomad" from "{path}", then pfctl -f /etc/pf.conf'
        )
    return (
        f'Load the Nomad firewall rules: add include "{path}" to /etc/nftables.conf, '
        "then systemctl reload nftables"
    )


def _bundle_files(node: Node, svc: _Service) -> list[NodeFile]:
    """The bundled Nomad binary, when the cluster ships one."""
    if node.packages.bundle is None:
        return []
    return [
        NodeFile(
            path=svc.os.binary,
            content=node.packages.bundle.binary.read_bytes(),
            mode=0o755,
            owner="root",
            group=svc.os.binary_group,
            kind="binary",
        )
    ]


def _check_cert_region(cluster: Cluster, node: Node, cert_pem: bytes) -> None:
    """The seed's bug, refused: a config for region R with a certificate that does not
    name <role>.R.nomad fails verify_server_hostname on every RPC."""
    _, wanted, _ = cluster.cert_names(node)
    have = set(inspect_cert(cert_pem).dns_names)
    missing = [n for n in wanted if n.endswith(".nomad") and n not in have]
    if missing:
        raise BuildError(
            f"node {node.name}: its certificate lacks {', '.join(missing)} "
            f"but the config sets region {cluster.region!r}"
        )


def _account(node: Node, os: OSProfile) -> ServiceAccount:
    extra_groups = ("docker",) if "docker" in node.drivers and node.user != "root" else ()
    if node.user == "root":
        return ServiceAccount(user="root", group=os.root_group, create=False)
    uid = os.server_uid if node.user == os.server_user else None
    return ServiceAccount(
        user=node.user,
        group=node.user,
        create=True,
        uid=uid,
        gid=uid,
        home=node.data_dir,
        extra_groups=extra_groups,
    )


def _render(template: str, context: dict[str, Any], **extra: Any) -> bytes:
    return _env().get_template(template).render(**context, **extra).encode()


@dataclass(frozen=True)
class _PeerList:
    """Every (server or all) node's addresses, flattened once per cluster; a node's peer
    list is that list without its own slice (linear per run instead of quadratic)."""

    ips: tuple[str, ...]
    spans: dict[int, tuple[int, int]]  # id(node) -> its slice of `ips`

    def without(self, node: Node) -> list[str]:
        start, end = self.spans.get(id(node), (0, 0))
        return [*self.ips[:start], *self.ips[end:]]


_PEER_CACHE: dict[tuple[int, bool], tuple[Cluster, _PeerList]] = {}
_PEER_LOCK = threading.Lock()


def _peers(cluster: Cluster, *, servers_only: bool) -> _PeerList:
    key = (id(cluster), servers_only)
    with _PEER_LOCK:
        hit = _PEER_CACHE.get(key)
        if hit is not None and hit[0] is cluster:
            return hit[1]
        ips: list[str] = []
        spans: dict[int, tuple[int, int]] = {}
        for n in cluster.servers if servers_only else cluster.nodes:
            start = len(ips)
            ips.extend(n.ips)
            spans[id(n)] = (start, len(ips))
        peers = _PeerList(tuple(ips), spans)
        if len(_PEER_CACHE) > 8:  # a long-lived process sees few clusters at a time
            _PEER_CACHE.clear()
        _PEER_CACHE[key] = (cluster, peers)
        return peers


def _firewall_context(cluster: Cluster, node: Node, path: str) -> dict[str, Any]:
    """Who may reach this node: every agent may call a server's RPC (4647); only
    servers gossip (4648 tcp+udp) and call clients' RPC (alloc logs/exec)."""
    servers = _peers(cluster, servers_only=True).without(node)
    everyone = _peers(cluster, servers_only=False).without(node)
    if profile(node.os).firewall == "pf":
        tables: list[tuple[str, list[str]]] = []
        rules: list[str] = []

        def allow(table: str, addrs: list[str], rule: str) -> None:
            if addrs:  # pf refuses a rule naming an undefined table; skip empty ones
                if table not in (t for t, _ in tables):
                    tables.append((table, addrs))
                rules.append(rule)

        if node.is_server:
            allow(
                "nomad_peers", everyone, "pass in proto tcp from <nomad_peers> to (self) port 4647"
            )
            allow(
                "nomad_servers",
                servers,
                "pass in proto { tcp udp } from <nomad_servers> to (self) port 4648",
            )
        else:
            allow(
                "nomad_servers",
                servers,
                "pass in proto tcp from <nomad_servers> to (self) port 4647",
            )
        return {"tables": tables, "rules": rules, "anchor_path": path}
    sets: list[tuple[str, str, list[str]]] = []
    accepts: list[str] = []

    def add(name: str, addrs: list[str], ports: list[str]) -> None:
        for family, keyword, version in (("ipv4", "ip", 4), ("ipv6", "ip6", 6)):
            chosen = [a for a in addrs if ipaddress.ip_address(a).version == version]
            if chosen:
                set_name = f"{name}{version}"
                sets.append((family, set_name, chosen))
                accepts.extend(f"{keyword} saddr @{set_name} {p}" for p in ports)

    if node.is_server:
        add("peers", everyone, ["tcp dport 4647"])
        add("servers", servers, ["tcp dport 4648", "udp dport 4648"])
    else:
        add("servers", servers, ["tcp dport 4647"])
    return {"sets": sets, "accepts": accepts}


def _notifies_systemd(node: Node) -> bool:
    """A bundled Nomad older than 1.8 never sends READY=1: Type=notify would time out."""
    bundle = node.packages.bundle
    if bundle is None:
        return True
    major, minor = (int(x) for x in bundle.version.split(".")[:2])
    return (major, minor) >= (1, 8)
