"""The validated, immutable cluster model. Built only by builder.cluster.

Everything downstream (secrets, rendering, writers) reads these objects,
never the cluster file. The defaults of the settings are those declared in
builder.settings (one declaration per key of the cluster file).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from builder import openpgp
from builder.settings import CLUSTER, CONSUL, CONSUL_AGENT, IMAGES, PACKAGES, PKI

Role = Literal["server", "client", "both"]
OS = Literal["openbsd", "debian"]


@dataclass(frozen=True)
class PKISettings:
    ca_days: int = PKI.default("ca_days")
    cert_days: int = PKI.default("cert_days")
    renew_before_days: int = PKI.default("renew_before_days")
    backdate_minutes: int = PKI.default("backdate_minutes")
    extra_name_constraints: tuple[str, ...] = PKI.default("name_constraints")


@dataclass(frozen=True)
class ConsulAgentSettings:
    """[consul.agent]: Consul agents nomad-build configures (off by default)."""

    enabled: bool = CONSUL_AGENT.default("enabled")
    servers: tuple[str, ...] = CONSUL_AGENT.default("servers")  # the loader fills the default
    dns: bool = CONSUL_AGENT.default("dns")


@dataclass(frozen=True)
class ConsulSettings:
    address: str = CONSUL.default("address")
    server_service_name: str = CONSUL.default("server_service_name")
    client_service_name: str = CONSUL.default("client_service_name")
    auto_advertise: bool = CONSUL.default("auto_advertise")
    server_auto_join: bool = CONSUL.default("server_auto_join")
    client_auto_join: bool = CONSUL.default("client_auto_join")
    agent: ConsulAgentSettings | None = CONSUL.default("agent")  # noqa: RUF009 (None)


@dataclass(frozen=True)
class Bundle:
    """A Nomad binary shipped inside the packages (air-gapped sites), verified at load."""

    binary: Path
    sha256sums: Path
    version: str
    sha256: str  # of the binary, as found in sha256sums and checked against the file


@dataclass(frozen=True)
class NomadAptSource:
    """HashiCorp's apt repository: images add it so apt can install the `nomad` package
    ours depends on (a stock Debian or Ubuntu image has no source for it)."""

    url: str  # e.g. https://apt.releases.hashicorp.com
    keyring: bytes  # HashiCorp's public key as the operator fetched it (binary or armored)

    @property
    def armored(self) -> bool:
        return openpgp.is_armored_public_key(self.keyring)

    @property
    def keyring_path(self) -> str:
        # apt reads a Signed-By file as armored only when it is named *.asc
        ext = "asc" if self.armored else "gpg"
        return f"/etc/apt/keyrings/hashicorp-archive-keyring.{ext}"


@dataclass(frozen=True)
class PackageSettings:
    nomad_min_version: str = PACKAGES.default("nomad_min_version")
    maintainer: str = PACKAGES.default("maintainer")  # the loader derives it from the domain
    apt_suite: str = PACKAGES.default("apt_suite")
    apt_component: str = PACKAGES.default("apt_component")
    repo_url: str | None = PACKAGES.default("repo_url")  # where nodes find the repositories
    signing_key_name: str = PACKAGES.default("signing_key_name")  # loader: "<cluster>-pkg"
    bundle: Bundle | None = PACKAGES.default("bundle")  # noqa: RUF009 (None)
    nomad_apt: NomadAptSource | None = PACKAGES.default("nomad_apt")  # noqa: RUF009 (None)


@dataclass(frozen=True)
class ImageSettings:
    admin_user: str = IMAGES.default("admin_user")
    ssh_keys: tuple[str, ...] = IMAGES.default("ssh_keys")
    password_hash: str | None = IMAGES.default("password_hash")  # crypt(3), never plain text
    openbsd_release: str = IMAGES.default("openbsd_release")
    openbsd_sets_url: str | None = IMAGES.default("openbsd_sets_url")  # …/7.8/amd64
    openbsd_disk: str = IMAGES.default("openbsd_disk")
    timezone: str = IMAGES.default("timezone")


@dataclass(frozen=True)
class Node:
    name: str  # DNS label, lower case
    role: Role
    os: OS
    fqdn: str  # <name>.<cluster domain>
    address: str  # the node's primary IP (cluster traffic)
    extra_ips: tuple[str, ...]
    extra_names: tuple[str, ...]
    interface: str | None  # e.g. "vio1"; the bind_addr template and client network_interface
    bind_addr: str  # a literal IP or a go-sockaddr template
    advertise: str | None  # literal IP advertised for rpc/serf (multi-homed hosts)
    node_class: str | None
    meta: MappingProxyType[str, str]
    drivers: tuple[str, ...]  # task drivers enabled through plugin blocks (raw_exec, docker, exec…)
    user: str  # the service user ("root" for clients by default)
    config_dir: str
    config_file: str
    tls_dir: str
    data_dir: str
    log_level: str
    telemetry: MappingProxyType[str, Any]
    extra: MappingProxyType[str, Any]  # HCL-shaped, already validated against Nomad's schema
    # networking, for images
    mac: str | None
    prefix: int | None  # address prefix length; None = DHCP in images
    gateway: str | None
    nameservers: tuple[str, ...]
    # packaging names
    deb_package: str  # "nomad-config-<name>"
    openbsd_stem: str  # "nomad-config-<name with '-<digit>' mapped to '_<digit>'>"
    # cluster-wide settings the writers need (shared objects)
    # where the cluster file defines it, e.g. "nodes[4] (bi-node-sbg-2)": what errors name
    key: str = field(default="", compare=False)
    packages: PackageSettings = field(repr=False, compare=False, default=PackageSettings())
    images: ImageSettings = field(repr=False, compare=False, default=ImageSettings())

    @property
    def domain(self) -> str:
        """The cluster domain the node's FQDN ends in."""
        return self.fqdn[len(self.name) + 1 :]

    @property
    def role_text(self) -> str:
        """The role as configs and package descriptions say it."""
        return {"server": "server", "client": "client", "both": "server and client"}[self.role]

    @property
    def is_server(self) -> bool:
        return self.role in ("server", "both")

    @property
    def is_client(self) -> bool:
        return self.role in ("client", "both")

    @property
    def ips(self) -> tuple[str, ...]:
        """Every address of the node (certificate IP SANs besides 127.0.0.1)."""
        return (self.address, *self.extra_ips)


@dataclass(frozen=True)
class Cluster:
    source: Path  # the cluster file
    name: str
    region: str
    datacenter: str
    domain: str
    bootstrap_expect: int
    pki: PKISettings
    consul: ConsulSettings
    packages: PackageSettings
    images: ImageSettings
    nodes: tuple[Node, ...]
    warnings: tuple[str, ...] = ()
    join: str = CLUSTER.default("join")  # "consul" | "static"

    @property
    def servers(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.is_server)

    @property
    def clients(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.is_client)

    @property
    def consul_servers(self) -> tuple[Node, ...]:
        """The nodes whose Consul agent is a server (when [consul.agent] is enabled)."""
        agent = self.consul.agent
        return tuple(n for n in self.nodes if agent and n.name in agent.servers)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        from builder.errors import UserError

        known = ", ".join(n.name for n in self.nodes)
        raise UserError(f"{self.source}: no node named {name!r} (nodes: {known})")

    @property
    def permitted_dns(self) -> tuple[str, ...]:
        """The CA's name constraints: the cluster domain, nomad, localhost, extras."""
        return (self.domain, "nomad", "localhost", *self.pki.extra_name_constraints)

    def cert_names(self, node: Node) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        """(CN, DNS SANs, IP SANs) of a node's certificate, as Nomad expects them."""
        role_names = []
        if node.is_server:
            role_names.append(f"server.{self.region}.nomad")
        if node.is_client:
            role_names.append(f"client.{self.region}.nomad")
        dns = [*role_names, "localhost", node.fqdn, *node.extra_names]
        ips = ["127.0.0.1", *node.ips]
        return role_names[0], tuple(dict.fromkeys(dns)), tuple(dict.fromkeys(ips))


def freeze(value: Any) -> Any:
    """Plain dicts/lists (as TOML gives them) as read-only mappings and tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """A frozen model mapping back into plain dicts/lists (for merging and output)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value
