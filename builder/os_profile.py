"""The facts of each operating system a node may run, one frozen profile per OS.

Paths, users and the service follow each OS's own Nomad package (REFERENCE.md,
"Official packaging to coexist with"). Everything that differs between OSes is a
field here, so no other module branches on an OS name to find a fact; the
templates each OS's files are rendered from stay in packaging/<os>/service.toml.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PackageFormat = Literal["deb", "openbsd"]
Firewall = Literal["nftables", "pf"]


@dataclass(frozen=True)
class OSProfile:
    name: str  # the cluster file's `os` value
    package_format: PackageFormat  # the package writer that serves this OS
    image_kinds: tuple[str, ...]  # the image writers (seeds) that install this OS
    firewall: Firewall
    config_dir: str  # default of the node's config_dir
    tls_dir: str  # default of the node's tls_dir
    data_dir: str  # default of the node's data_dir
    server_user: str  # default service user of a server-only node (clients run as root)
    server_uid: int | None  # fixed uid/gid of server_user, when the OS's port fixes one
    service_name: str  # the unit / rc.d name our agent runs as
    binary: str  # where the nomad binary lives (bundled binaries are installed there)
    root_group: str  # the group of root-owned files
    binary_group: str  # the group of the bundled nomad binary (OpenBSD: bin, as its ports)
    drivers: tuple[str, ...]  # task drivers that run on this OS
    arches: tuple[str, ...] = ()  # architectures of an install sets directory (OpenBSD)


DEBIAN = OSProfile(
    name="debian",
    package_format="deb",
    image_kinds=("cloud-init", "autoinstall"),
    firewall="nftables",
    config_dir="/etc/nomad.d",
    tls_dir="/etc/nomad.d/tls",
    data_dir="/opt/nomad/data",
    server_user="nomad",
    server_uid=None,
    service_name="nomad",
    binary="/usr/bin/nomad",
    root_group="root",
    binary_group="root",
    drivers=("raw_exec", "exec", "docker", "java", "qemu"),
)

OPENBSD = OSProfile(
    name="openbsd",
    package_format="openbsd",
    image_kinds=("openbsd-autoinstall",),
    firewall="pf",
    config_dir="/etc/nomad",
    tls_dir="/etc/ssl/nomad",
    data_dir="/var/nomad",
    server_user="_nomad",
    server_uid=819,  # the sysutils/nomad port's _nomad
    # our own rc.d script: a package may not own the port's /etc/rc.d/nomad
    service_name="nomad_agent",
    binary="/usr/local/bin/nomad",
    root_group="wheel",
    binary_group="bin",
    drivers=("raw_exec",),
    arches=("amd64", "arm64", "i386"),
)

PROFILES: dict[str, OSProfile] = {p.name: p for p in (OPENBSD, DEBIAN)}

# Every task driver a node may enable (on the OSes whose profile lists it).
DRIVERS: tuple[str, ...] = tuple(dict.fromkeys(d for p in PROFILES.values() for d in p.drivers))


def profile(os: str) -> OSProfile:
    """The profile of an OS name; the loader guarantees a node's os is known."""
    try:
        return PROFILES[os]
    except KeyError:
        raise ValueError(f"unknown OS {os!r} (known: {', '.join(PROFILES)})") from None
