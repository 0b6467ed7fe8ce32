"""What the boot seeds share: the NoCloud ISO, the node's network plan, the user-data
context (admin, package delivery, repository source), and image template rendering.
Used by the cloud-init, Ubuntu autoinstall and OpenBSD autoinstall writers."""

from __future__ import annotations

import base64
import hashlib
import io
import ipaddress
import json
import posixpath
import re
import threading
import time
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import jinja2

import builder
from builder import apt_source, openpgp
from builder.data import template_environment
from builder.errors import BuildError
from builder.model import Cluster, Node
from builder.nodetree import NodeTree
from builder.writers import Artifact, BuildInputs, Output, Writer, login_warning

__all__ = [
    "DEB_DIR",
    "NetworkPlan",
    "SeedPackage",
    "content_id",
    "deb_file_name",
    "keyring_file_name",
    "network_plan",
    "node_packages",
    "render",
    "repository_keyring",
    "seed_iso",
    "static_address_problem",
    "user_context",
]

DEB_DIR = "/var/lib/nomad-build"  # where an embedded .deb is written on the node
SOURCES_FILE = f"/etc/apt/sources.list.d/{apt_source.SOURCES_FILE}"
INSTALL_PENDING = f"{DEB_DIR}/install-pending"  # while the node's package is not in
FIRSTBOOT_UNIT = "nomad-build-install.service"
FIRSTBOOT_SCRIPT = "/usr/local/sbin/nomad-build-install"
FIRSTBOOT_PAUSES = (5, 300)  # seconds: the first pause between attempts, the longest
_DEB_NAME = re.compile(r"^[a-z0-9][a-z0-9.+-]*_[A-Za-z0-9.+~:-]+_[a-z0-9-]+\.deb\Z")
_ISO_LOCK = threading.Lock()


# ---------------------------------------------------------------- templates
def _yaml_scalar(value: Any) -> str:
    """A YAML value as JSON (a JSON document is valid YAML): quoting done once, right."""
    return json.dumps(value, ensure_ascii=False)


@cache
def _env() -> jinja2.Environment:
    return template_environment(
        {"yaml": _yaml_scalar, "b64": lambda data: base64.b64encode(data).decode("ascii")}
    )


def render(template: str, **context: Any) -> bytes:
    """Render images/<template> with the tool's version in the context."""
    return _env().get_template(template).render(version=builder.__version__, **context).encode()


# ---------------------------------------------------------------- network
@dataclass(frozen=True)
class NetworkPlan:
    """What the node's network-config v2 says, shared with the autoinstall seed."""

    key: str  # the ethernets key: the interface name the node ends up with
    mac: str | None  # matched by MAC (and renamed to `key` with set-name)
    static: bool
    cidr: str  # address/prefix when static
    dhcp_key: str  # dhcp4 | dhcp6
    gateway_key: str  # gateway4 | gateway6
    default_route: str  # 0.0.0.0/0 | ::/0
    gateway: str | None
    nameservers: tuple[str, ...]
    search: tuple[str, ...]


def network_plan(node: Node, *, fallback_name: str = "eth0") -> NetworkPlan | None:
    """The node's network, or None when cloud-init's own fallback (DHCP) is right."""
    try:
        addr = ipaddress.ip_address(node.address)
    except ValueError:
        raise BuildError(f"{node.name}: address {node.address!r} is not an IP") from None
    static = node.prefix is not None
    if node.interface is None and node.mac is None:
        if static:
            raise BuildError(f"{node.name}: a static address but no interface or mac")
        return None
    key = node.interface or fallback_name
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", key):
        raise BuildError(f"{node.name}: interface {key!r} is not a Linux interface name")
    v6 = addr.version == 6
    return NetworkPlan(
        key=key,
        mac=node.mac,
        static=static,
        cidr=f"{addr}/{node.prefix}" if static else "",
        dhcp_key="dhcp6" if v6 else "dhcp4",
        gateway_key="gateway6" if v6 else "gateway4",
        default_route="::/0" if v6 else "0.0.0.0/0",
        gateway=node.gateway if static else None,
        nameservers=node.nameservers,
        search=(node.domain,) if node.domain else (),
    )


# ---------------------------------------------------------------- delivery
def deb_file_name(deb: Artifact) -> str:
    name = posixpath.basename(deb.path)
    if not deb.path.startswith("debian/") or not _DEB_NAME.match(name):
        raise BuildError(f"not a Debian package artifact: {deb.path}")
    return name


def keyring_file_name(keyring: bytes) -> str:
    """Where the repository keyring goes (apt_repo's path; .asc if given armored)."""
    armored = openpgp.is_armored_public_key(keyring)
    path = apt_source.KEYRING_PATH
    return path.removesuffix(".gpg") + ".asc" if armored else path


def repository_source(node: Node, keyring_path: str) -> bytes:
    """deb822 source of the signed repository; repo_url is where repo/debian/ is served."""
    p = node.packages
    assert p.repo_url is not None
    return apt_source.sources_file(
        suite=p.apt_suite,
        component=p.apt_component,
        repo_url=p.repo_url,
        keyring_path=keyring_path,
    )


# ---------------------------------------------------------------- ISO
def seed_iso(files: list[tuple[str, bytes]], *, mtime: int, label: str = "cidata") -> bytes:
    """An ISO 9660 + Joliet + Rock Ridge image of flat files, byte-identical per input.

    pycdlib stamps volume and directory dates from time.time()/localtime(); they
    are pinned to `mtime` in UTC while building (pycdlib offers no option).
    """
    import pycdlib
    from pycdlib import dates, headervd
    from pycdlib import pycdlib as pycdlib_core

    if mtime < 0:
        raise BuildError(f"mtime must not be negative: {mtime}")
    names = [n for n, _ in files]
    if len(set(names)) != len(names):
        raise BuildError(f"two seed files share a name: {names}")
    clock = types.SimpleNamespace(
        time=lambda: float(mtime),
        localtime=time.gmtime,
        gmtime=time.gmtime,
        strftime=time.strftime,
    )
    modules = (dates, headervd, pycdlib_core)
    with _ISO_LOCK:
        saved = [m.time for m in modules]
        for m in modules:
            m.time = clock  # type: ignore[attr-defined]
        try:
            iso = pycdlib.PyCdlib()
            iso.new(
                interchange_level=3,
                joliet=3,
                rock_ridge="1.09",
                vol_ident=label,
                app_ident_str="nomad-build",
            )
            for name, data in sorted(files):
                iso9660 = "/" + re.sub(r"[^A-Z0-9_.]", "_", name.upper()) + ";1"
                iso.add_fp(
                    io.BytesIO(data),
                    len(data),
                    iso9660,
                    rr_name=name,
                    joliet_path="/" + name,
                    file_mode=0o100400,
                )
            out = io.BytesIO()
            iso.write_fp(out)
            iso.close()
        finally:
            for m, t in zip(modules, saved, strict=True):
                m.time = t  # type: ignore[attr-defined]
    return out.getvalue()


def content_id(*parts: bytes) -> str:
    """A short digest of everything a seed delivers (length-prefixed, order-sensitive)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- the seed
@dataclass(frozen=True)
class SeedPackage:
    """A package a seed installs on the node, and the service its maintainer scripts start."""

    artifact: Artifact  # debian/<name>_<version>_<arch>.deb, or an OpenBSD package
    service: str  # nomad, consul (systemd units); nomad, consul_agent (rc.d scripts)


def node_packages(
    inputs: BuildInputs, node: Node, nomad_writer: str, consul_writer: str
) -> list[SeedPackage]:
    """The node's Nomad package and, with [consul.agent] on, its Consul agent package:
    what its seed installs, in that order."""
    out = [SeedPackage(inputs.package_of(nomad_writer, node), inputs.trees[node.name].service.name)]
    consul = inputs.package_if_built(consul_writer, node)
    if consul is not None:
        out.append(SeedPackage(consul, inputs.consul_trees[node.name].service.name))
    return out


def user_context(
    node: Node,
    tree: NodeTree,
    deb: Artifact,
    repo_keyring: bytes | None,
    consul: SeedPackage | None = None,
) -> dict[str, Any]:
    """What user-data (cloud-init and autoinstall) needs to say about the node. `consul`:
    the node's Consul agent package ([consul.agent] on), installed beside its own."""
    packages = [SeedPackage(deb, tree.service.name), *([consul] if consul else [])]
    debs = []
    for p in packages:
        name = deb_file_name(p.artifact)
        debs.append(
            {
                "package": name.split("_", 1)[0],
                "file": name,
                "path": f"{DEB_DIR}/{name}",
                "data": p.artifact.data,
                "service": p.service,
            }
        )
    ctx: dict[str, Any] = {
        "node": node,
        "service": tree.service,
        "domain": node.domain,
        "images": node.images,
        "debs": debs,
        "repo": None,
        "nomad_apt": node.packages.nomad_apt,
        "resolv_conf": resolv_conf(node),
    }
    if node.packages.repo_url:
        if repo_keyring is None:
            raise BuildError(f"{node.name}: packages.repo_url is set but no repository keyring")
        keyring_path = keyring_file_name(repo_keyring)
        ctx["repo"] = {
            "keyring_path": keyring_path,
            "keyring": repo_keyring,
            "sources_path": SOURCES_FILE,
            "sources": repository_source(node, keyring_path).decode(),
        }
    ctx["firstboot"] = firstboot(node, debs, embedded=ctx["repo"] is None)
    return ctx


def firstboot(node: Node, debs: Sequence[Mapping[str, Any]], *, embedded: bool) -> dict[str, Any]:
    """The first-boot service that installs the node's packages in one apt-get run,
    retrying until all are in: its script, unit and pending-marker (images/firstboot/).
    embedded: the .debs the seed wrote under DEB_DIR; else the packages by name from
    the repository."""
    packages = [d["package"] for d in debs]
    verb = "is" if len(packages) == 1 else "are"
    not_yet = f"nomad-build: {' and '.join(packages)} {verb} NOT installed yet"
    ctx = {
        "not_yet": not_yet,
        "node": node,
        "packages": packages,
        "targets": [d["path"] if embedded else d["package"] for d in debs],
        "embedded": embedded,
        "services": [d["service"] for d in debs],
        "marker": INSTALL_PENDING,
        "script_path": FIRSTBOOT_SCRIPT,
        "first_pause": FIRSTBOOT_PAUSES[0],
        "max_pause": FIRSTBOOT_PAUSES[1],
    }
    return {
        "marker": INSTALL_PENDING,
        "marker_text": f"{not_yet} (first boot pending)\nsee: journalctl -u {FIRSTBOOT_UNIT}\n",
        "script_path": FIRSTBOOT_SCRIPT,
        "script": render("images/firstboot/install.sh.j2", **ctx).decode(),
        "unit_name": FIRSTBOOT_UNIT,
        "unit_path": f"/etc/systemd/system/{FIRSTBOOT_UNIT}",
        "unit": render("images/firstboot/install.service.j2", **ctx).decode(),
    }


def resolv_conf(node: Node) -> str | None:
    """/etc/resolv.conf from the cluster file's nameservers (None: none given)."""
    if not node.nameservers:
        return None
    lines = ["# nomad-build: the DNS servers of the cluster file (nameservers)"]
    if node.domain:
        lines.append(f"search {node.domain}")
    lines += [f"nameserver {ns}" for ns in node.nameservers]
    return "\n".join(lines) + "\n"


def static_address_problem(cluster: Cluster, node: Node) -> str | None:
    """A static address needs to know which NIC gets it."""
    if node.prefix is not None and node.interface is None and node.mac is None:
        return (
            f"{cluster.source}: {node.key}.prefix: a static address in an image needs "
            "the node's interface or mac in the cluster file (which NIC gets it?)"
        )
    return None


def repository_keyring(inputs: BuildInputs) -> bytes | None:
    """The apt repository's public keyring, when the seeds install from the repository."""
    if not inputs.cluster.packages.repo_url or inputs.keys.apt_secret is None:
        return None
    if inputs.keys.apt_keyring is not None:  # a key rotation: both keys for a while
        return inputs.keys.apt_keyring
    return openpgp.public_keyring(inputs.keys.apt_secret)


class DebianSeedWriter(Writer):
    """What the Debian-family seed writers share: one ISO per node holding its .deb and,
    with [consul.agent] on, its Consul agent .deb (or the repository's source), checked
    for a NIC that takes a static address."""

    needs = ("deb", "consul-deb")
    os = "debian"
    file_name: str  # images/<node>/<file_name>

    def signing_keys(self, cluster: Cluster) -> frozenset[str]:
        # The seeds carry the repository's key only when they install from it.
        return frozenset({"apt"}) if cluster.packages.repo_url else frozenset()

    def unfit(self, cluster: Cluster, node: Node) -> str | None:
        if node.os != "debian":
            return f"node {node.name} runs {node.os}; a {self.name} image is for debian nodes"
        return None

    def check(self, cluster: Cluster, node: Node) -> list[str]:
        problem = static_address_problem(cluster, node)
        return [problem] if problem else []

    def warnings(self, cluster: Cluster, nodes: Sequence[Node]) -> list[str]:
        out = login_warning(cluster, nodes)
        p = cluster.packages
        if nodes and p.nomad_apt is None and p.bundle is None:
            out.append(
                f"{cluster.source}: packages.nomad_apt: unset (and no packages.bundle): a stock "
                "image has no source for HashiCorp's nomad (nor consul), which the node's "
                "packages need"
            )
        return out

    def outputs(
        self,
        cluster: Cluster,
        nodes: Sequence[Node],
        versions: Mapping[str, int],
        upstream: Sequence[Output] = (),
    ) -> list[Output]:
        return [Output(f"images/{n.name}/{self.file_name}", n.name, secret=True) for n in nodes]

    def build(self, inputs: BuildInputs, nodes: Sequence[Node]) -> list[Artifact]:
        keyring = repository_keyring(inputs)
        out = []
        for n in nodes:
            nomad, *consul = node_packages(inputs, n, "deb", "consul-deb")
            tree = inputs.trees[n.name]
            out.append(self.seed(n, tree, nomad.artifact, keyring, inputs.mtime, *consul))
        return out

    def seed(
        self,
        node: Node,
        tree: NodeTree,
        deb: Artifact,
        keyring: bytes | None,
        mtime: int,
        consul: SeedPackage | None = None,
    ) -> Artifact:
        raise NotImplementedError
