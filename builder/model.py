"""The validated, immutable cluster model. Built only by builder.cluster.

Everything downstream (secrets, rendering, writers) reads these objects,
never the cluster file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

Role = Literal["server", "client", "both"]
OS = Literal["openbsd", "debian"]


@dataclass(frozen=True)
class PKISettings:
    ca_days: int = 1825
    cert_days: int = 365
    renew_before_days: int = 30
    backdate_minutes: int = 10
    extra_name_constraints: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConsulSettings:
    address: str = "127.0.0.1:8500"
    server_service_name: str = "nomad"
    client_service_name: str = "nomad-client"
    auto_advertise: bool = True
    server_auto_join: bool = True
    client_auto_join: bool = True


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
        return self.keyring.lstrip().startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")

    @property
    def keyring_path(self) -> str:
        # apt reads a Signed-By file as armored only when it is named *.asc
        ext = "asc" if self.armored else "gpg"
        return f"/etc/apt/keyrings/hashicorp-archive-keyring.{ext}"


@dataclass(frozen=True)
class PackageSettings:
    nomad_min_version: str = "1.7.0"
    maintainer: str = "nomad-build <root@localhost>"
    apt_suite: str = "stable"
    apt_component: str = "main"
    repo_url: str | None = None  # where nodes find the signed repositories (images use it)
    signing_key_name: str = ""  # signify key stem; "<cluster>-pkg" by default
    bundle: Bundle | None = None
    nomad_apt: NomadAptSource | None = None


@dataclass(frozen=True)
class ImageSettings:
    admin_user: str = "ops"
    ssh_keys: tuple[str, ...] = ()
    password_hash: str | None = None  # crypt(3) hash, never plain text
    openbsd_release: str = "7.8"
    openbsd_sets_url: str | None = None  # e.g. http://10.20.130.1/pub/OpenBSD/7.8/amd64
    openbsd_disk: str = "sd0"
    timezone: str = "UTC"


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
    packages: PackageSettings = field(repr=False, compare=False, default=PackageSettings())
    images: ImageSettings = field(repr=False, compare=False, default=ImageSettings())

    @property
    def domain(self) -> str:
        """The cluster domain the node's FQDN ends in."""
        return self.fqdn[len(self.name) + 1 :]

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

    @property
    def servers(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.is_server)

    @property
    def clients(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.is_client)

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
