"""OpenBSD unattended install (autoinstall(8)) of the cluster's OpenBSD nodes.

Everything lands flat in dist/openbsd-autoinstall/:

- ``<mac>-install.conf`` (the cluster file gives the node's MAC; lower-case,
  colon-separated, as the installer asks for it) else ``<hostname>-install.conf``:
  the response file. autoinstall(8) fetches it from the DHCP next-server's
  HTTP root, so it is served there. ``question = answer`` lines; the installer
  takes the first line whose question part is a whole-word piece of its
  question, case-insensitively, and uses each line once (install.sub
  _autorespond). Answered: hostname, the network interface (by name, else by
  lladdr) with the node's address or autoconf, default route, DNS, root and
  admin passwords (a bcrypt hash, which the installer stores as given; no
  hash: '*************', i.e. no password login), SSH keys, sshd, the root
  disk and auto layout, sets over HTTP from ``images.openbsd_sets_url`` and
  ``Set name(s)`` adding the site set.
- ``site<XY>-<hostname>.tgz``: the node's site set, a tar.gz rooted at ``/``
  (extracted last): the node's signed package under /var/nomad-build/ (with
  [consul.agent] on, its consul-config-<stem> package beside it), the
  package signing public key as /etc/signify/<key_name>.pub (pkg_add -- signify
  -t pkg -- trusts /etc/signify/*-pkg.pub), and ``/install.site`` (0755), which
  the installer runs chrooted into the new system: it pkg_adds the packages
  in one run (signatures verified; the nomad and consul ports come from the
  mirror in /etc/installurl), enables the agents and hands the admin user all its SSH
  keys and doas. When pkg_add cannot finish there (no route to a package
  mirror yet), it installs and enables /etc/rc.d/nomad_build_install, which
  retries from every boot with a growing pause (5 s doubling to 300 s) until
  every package is in and every agent started, logging each attempt (syslog tag
  nomad-build-install, and the console); /var/db/nomad-build/install-pending
  says why while it has not; then it disables itself.
- ``index.txt`` and ``SHA256``: these go into the sets directory with the site
  sets, beside the release's own sets (mirror <release>/<arch> there). The
  installer only offers sets listed in index.txt, so ours lists the release's
  sets too; SHA256 (``SHA256 (file) = hex``, like the release's) lists the
  site sets.

The site set is not in the release's signed SHA256.sig, so the installer asks
``Unverified sets: site78-<host>.tgz. Continue without verification?``. The
response file answers yes to exactly that question (the whole question is the
key): if anything else ever came up unverified -- a release set whose
SHA256.sig is missing, a second site set -- the question differs, has no
answer, defaults to no and the install stops. The site set's payload is
checked anyway: pkg_add verifies the package's signify signature.

Site sets and response files hold a node's private key (inside the package) or
password hash: secret, written 0600; serve them to the installing machines only.
"""

from __future__ import annotations

import hashlib
import ipaddress
import posixpath
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from builder import signify
from builder.archive import TarEntry, gzip_bytes, ustar
from builder.consul import package_node as consul_package_node
from builder.errors import BuildError, UserError
from builder.model import Cluster, Node
from builder.nodetree import NodeTree
from builder.openbsd_names import KSH_IDENT, package_file_name
from builder.seed import FIRSTBOOT_PAUSES, SeedPackage, node_packages, render
from builder.writers import Artifact, BuildInputs, Output, Writer, login_warning

__all__ = [
    "OUT_DIR",
    "PKG_DIR",
    "OpenBSDAutoinstallWriter",
    "build_openbsd_autoinstall",
    "release_sets",
    "response_file_name",
    "site_set_name",
    "split_sets_url",
]

OUT_DIR = "openbsd-autoinstall"
PKG_DIR = "/var/nomad-build"  # where the site set puts the node's package
OPENBSD_INSTALL_PENDING = "/var/db/nomad-build/install-pending"  # until the package is in
NO_PASSWORD = "*************"  # install.sub: stored as is, no password login
# Architectures whose release directory carries bsd, bsd.mp and bsd.rd.
ARCHES = ("amd64", "arm64", "i386")


def xy(release: str) -> str:
    """'7.8' -> '78' (set names: base78.tgz, site78-<host>.tgz)."""
    if not re.fullmatch(r"\d\.\d", release):
        raise UserError(f"images.openbsd_release {release!r} is not like 7.8")
    return release.replace(".", "")


def site_set_name(node: Node) -> str:
    return f"site{xy(node.images.openbsd_release)}-{node.name}.tgz"


def response_file_name(node: Node) -> str:
    """What autoinstall(8) asks the next-server for: <lladdr>- first, then <hostname>-."""
    if node.mac:
        return f"{node.mac.lower()}-install.conf"
    return f"{node.name}-install.conf"


def split_sets_url(url: str) -> tuple[str, str, str, str]:
    """(scheme, 'HTTP Server' answer, 'Server directory' answer, arch) of the sets URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"images.openbsd_sets_url {url!r} must be an http(s):// URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise UserError(f"images.openbsd_sets_url {url!r}: no query, fragment or user")
    directory = parts.path.strip("/")
    if not directory or re.search(r"[\s=]", directory):
        raise UserError(
            f"images.openbsd_sets_url {url!r} must name the sets directory, "
            "e.g. http://10.20.130.10/pub/OpenBSD/7.8/amd64"
        )
    arch = directory.rsplit("/", 1)[-1]
    if arch not in ARCHES:
        raise UserError(
            f"images.openbsd_sets_url {url!r} must end in the architecture "
            f"({', '.join(ARCHES)}), like a mirror's <release>/<arch> directory"
        )
    return parts.scheme, parts.netloc, directory, arch


def release_sets(release: str, arch: str) -> list[str]:
    """The files of an OpenBSD release directory the installer looks for."""
    v = xy(release)
    sets = [f"{s}{v}.tgz" for s in ("base", "comp", "man", "game")]
    sets += [f"{s}{v}.tgz" for s in ("xbase", "xshare", "xfont", "xserv")]
    return ["BUILDINFO", f"INSTALL.{arch}", "SHA256.sig", "bsd", "bsd.mp", "bsd.rd", *sets]


def _password(node: Node) -> str:
    # The cluster model admits only a bcrypt hash when OpenBSD nodes exist.
    return node.images.password_hash or NO_PASSWORD


_IFACE = re.compile(r"[a-z]+[0-9]+|[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def _node_problems(node: Node) -> list[str]:
    """What the installer cannot take from this node's settings (one line each)."""
    problems = []
    iface = node.interface or node.mac  # the installer takes a name or an lladdr
    if iface is not None and not _IFACE.fullmatch(iface):
        problems.append(f"{node.key}.interface: {iface!r} is not an OpenBSD interface name")
    if node.prefix is not None and iface is None:
        problems.append(
            f"{node.key}.prefix: a static address needs the node's interface or mac "
            "in the cluster file (which NIC gets it?)"
        )
    images = node.images
    answers = (*images.ssh_keys, images.admin_user, images.timezone, images.openbsd_disk)
    for v in (*answers, *node.nameservers):
        if not v.strip() or any(c in v for c in "\r\n\0"):
            problems.append(f"{node.key}: {v!r} cannot be one installer answer")
    for check in (
        lambda: xy(images.openbsd_release),
        lambda: split_sets_url(images.openbsd_sets_url or ""),
    ):
        try:
            check()
        except UserError as e:
            problems.append(str(e))
    return problems


def _network(node: Node) -> dict[str, Any]:
    addr = ipaddress.ip_address(node.address)
    iface = node.interface or node.mac
    static = node.prefix is not None
    net: dict[str, Any] = {"iface": iface, "static": static, "v6": addr.version == 6}
    if static:
        network = ipaddress.ip_interface(f"{addr}/{node.prefix}").network
        net["address"] = str(addr)
        net["netmask"] = str(network.netmask) if addr.version == 4 else str(node.prefix)
        net["gateway"] = node.gateway
    net["nameservers"] = " ".join(node.nameservers)
    return net


def _check_package(node: Node, stem: str, pkg: Artifact, pub_key: bytes) -> tuple[str, bool]:
    """(file name, signed?) of the node's OpenBSD package `stem`; a signed one must verify."""
    name = package_file_name(pkg.path)
    if not name.startswith(stem + "-"):
        raise BuildError(f"{pkg.path} is not node {node.name}'s package ({stem})")
    signed = len(pkg.data) > 3 and bool(pkg.data[3] & 0x10)  # gzip FCOMMENT: signify -z
    if signed:
        try:
            signify.zverify(pkg.data, pub_key)
        except UserError as e:
            raise BuildError(f"{pkg.path}: does not verify with the signing key: {e}") from None
    return name, signed


def _site_set(
    node: Node,
    packages: Sequence[SeedPackage],
    *,
    pub_key: bytes,
    key_name: str,
    mtime: int,
) -> bytes:
    """The site set: the node's packages (its Nomad one first), the signing key and
    /install.site, which pkg_adds them all in one run and enables their services."""
    stems = [node.openbsd_stem, consul_package_node(node).openbsd_stem][: len(packages)]
    checked = [
        _check_package(node, stem, p.artifact, pub_key)
        for stem, p in zip(stems, packages, strict=True)
    ]
    if len({signed for _, signed in checked}) != 1:
        raise BuildError(f"{node.name}: its packages are not all signed, or all unsigned")
    signed = checked[0][1]
    services = [p.service for p in packages]
    for svc in services:
        if not KSH_IDENT.match(svc):
            raise BuildError(f"{node.name}: service name {svc!r} is not an rc.d script name")
    pkg_paths = [f"{PKG_DIR}/{name}" for name, _ in checked]
    install_site = render(
        "images/openbsd/install.site.j2",
        node=node,
        images=node.images,
        services=services,
        pkg_paths=" ".join(pkg_paths),
        signed=signed,
        key_name=key_name,
        has_password=node.images.password_hash is not None,
        marker=OPENBSD_INSTALL_PENDING,
        marker_dir=posixpath.dirname(OPENBSD_INSTALL_PENDING),
        first_pause=FIRSTBOOT_PAUSES[0],
        max_pause=FIRSTBOOT_PAUSES[1],
    )

    def entry(name: str, data: bytes = b"", mode: int = 0o644, kind: str = "file") -> TarEntry:
        return TarEntry(
            name=name,
            data=data,
            mode=mode,
            mtime=mtime,
            uname="root",
            gname="wheel",
            type=kind,  # type: ignore[arg-type]
        )

    entries = [
        entry(f"./etc/signify/{key_name}.pub", pub_key, 0o644),
        entry("./install.site", install_site, 0o755),
        entry("." + PKG_DIR, mode=0o700, kind="dir"),
    ]
    entries += [
        entry("." + path, p.artifact.data, 0o600)
        for path, p in sorted(zip(pkg_paths, packages, strict=True), key=lambda x: x[0])
    ]
    return gzip_bytes(ustar(entries))


def _node_artifacts(
    node: Node,
    tree: NodeTree,
    pkg: Artifact,
    *,
    pub_key: bytes,
    key_name: str,
    mtime: int,
    consul: SeedPackage | None = None,
) -> tuple[Artifact, Artifact]:
    """The node's response file and site set (`consul`: its Consul agent package too)."""
    if node.os != "openbsd" or tree.os != "openbsd" or tree.node != node.name:
        raise BuildError(f"{node.name}: OpenBSD autoinstall needs the node's OpenBSD tree")
    images = node.images
    scheme, server, directory, _ = split_sets_url(images.openbsd_sets_url or "")
    site = site_set_name(node)
    packages = [SeedPackage(pkg, tree.service.name), *([consul] if consul else [])]
    site_set = _site_set(node, packages, pub_key=pub_key, key_name=key_name, mtime=mtime)
    conf = render(
        "images/openbsd/install.conf.j2",
        node=node,
        images=images,
        domain=node.domain,
        net=_network(node),
        password=_password(node),
        user_key=images.ssh_keys[0] if images.ssh_keys else "none",
        scheme=scheme,
        server=server,
        directory=directory,
        site_set=site,
    )
    _check_response_file(conf, node)
    return (
        Artifact(f"{OUT_DIR}/{response_file_name(node)}", conf, secret=True, node=node.name),
        Artifact(f"{OUT_DIR}/{site}", site_set, secret=True, node=node.name),
    )


def build_openbsd_autoinstall(
    items: list[tuple[Node, NodeTree, Artifact]],
    *,
    pub_key: bytes,
    key_name: str,
    mtime: int,
    consul: Mapping[str, SeedPackage] | None = None,
) -> list[Artifact]:
    """openbsd-autoinstall/: response file + site set per node, index.txt, SHA256.
    `consul`: each node's Consul agent package, by node name ([consul.agent] on)."""
    if not items:
        return []
    _check_shared([n for n, _, _ in items], pub_key=pub_key, mtime=mtime)
    out: list[Artifact] = []
    for node, tree, pkg in sorted(items, key=lambda i: i[0].name):
        agent = (consul or {}).get(node.name)
        out += _node_artifacts(
            node, tree, pkg, pub_key=pub_key, key_name=key_name, mtime=mtime, consul=agent
        )
    return _with_index([n for n, _, _ in items], out)


def _check_shared(nodes: Sequence[Node], *, pub_key: bytes, mtime: int) -> None:
    signify.parse_public(pub_key)
    if mtime < 0:
        raise BuildError(f"mtime must not be negative: {mtime}")
    first = nodes[0].images
    if any(
        (n.images.openbsd_release, n.images.openbsd_sets_url)
        != (first.openbsd_release, first.openbsd_sets_url)
        for n in nodes
    ):
        raise BuildError("all nodes of one OpenBSD autoinstall share release and sets URL")


def _with_index(nodes: Sequence[Node], out: list[Artifact]) -> list[Artifact]:
    """The nodes' artifacts with index.txt and SHA256 added, sorted by path."""
    if len({a.path for a in out}) != len(out):
        raise BuildError("two nodes would fetch the same response file")
    first = nodes[0].images
    site_sets = {a.path.rsplit("/", 1)[1]: a.data for a in out if a.path.endswith(".tgz")}
    arch = split_sets_url(first.openbsd_sets_url or "")[3]
    index = sorted({*release_sets(first.openbsd_release, arch), *site_sets})
    out = [*out, Artifact(f"{OUT_DIR}/index.txt", ("\n".join(index) + "\n").encode(), False)]
    sums = "".join(
        f"SHA256 ({name}) = {hashlib.sha256(data).hexdigest()}\n"
        for name, data in sorted(site_sets.items())
    )
    out.append(Artifact(f"{OUT_DIR}/SHA256", sums.encode(), secret=False))
    return sorted(out, key=lambda a: a.path)


class OpenBSDAutoinstallWriter(Writer):
    """The OpenBSD installer's tree: response files and site sets (needs the sets URL)."""

    name = "openbsd-autoinstall"
    os = "openbsd"
    needs = ("openbsd-pkg", "consul-openbsd-pkg")
    signing = frozenset({"signify"})
    per_node = False

    def unfit(self, cluster: Cluster, node: Node) -> str | None:
        if node.os != "openbsd":
            return (
                f"node {node.name} runs {node.os}; "
                "an openbsd-autoinstall image is for openbsd nodes"
            )
        if not node.images.openbsd_sets_url:
            return (
                "images.openbsd_sets_url: missing (where the installer fetches the sets, "
                "e.g. http://10.20.130.1/pub/OpenBSD/7.8/amd64)"
            )
        return None

    def check(self, cluster: Cluster, node: Node) -> list[str]:
        return [f"{cluster.source}: {p}" for p in _node_problems(node)]

    def warnings(self, cluster: Cluster, nodes: Sequence[Node]) -> list[str]:
        return login_warning(cluster, nodes)

    def outputs(
        self,
        cluster: Cluster,
        nodes: Sequence[Node],
        versions: Mapping[str, int],
        upstream: Sequence[Output] = (),
    ) -> list[Output]:
        if not nodes:
            return []
        out = []
        for n in nodes:
            # 0600 for the root password hash; the node's key is in the site set only
            conf = f"{OUT_DIR}/{response_file_name(n)}"
            out.append(Output(conf, n.name, secret=True, holds_keys=False))
            out.append(Output(f"{OUT_DIR}/{site_set_name(n)}", n.name, secret=True))
        return out + [Output(f"{OUT_DIR}/{f}", None, secret=False) for f in ("index.txt", "SHA256")]

    def build(self, inputs: BuildInputs, nodes: Sequence[Node]) -> list[Artifact]:
        assert inputs.keys.signify_public is not None
        items, consul = [], {}
        for n in nodes:
            nomad, *agent = node_packages(inputs, n, "openbsd-pkg", "consul-openbsd-pkg")
            items.append((n, inputs.trees[n.name], nomad.artifact))
            if agent:
                consul[n.name] = agent[0]
        return build_openbsd_autoinstall(
            items,
            pub_key=inputs.keys.signify_public,
            key_name=inputs.keys.signing_key_name,
            mtime=inputs.mtime,
            consul=consul,
        )

    # `build` split in two, so that an incremental run rebuilds only the changed nodes'
    # parts and the index: build() == build_index(nodes, [build_part(n) for n in nodes]).
    splits = True

    def build_part(self, inputs: BuildInputs, node: Node) -> list[Artifact]:
        assert inputs.keys.signify_public is not None
        nomad, *consul = node_packages(inputs, node, "openbsd-pkg", "consul-openbsd-pkg")
        return list(
            _node_artifacts(
                node,
                inputs.trees[node.name],
                nomad.artifact,
                pub_key=inputs.keys.signify_public,
                key_name=inputs.keys.signing_key_name,
                mtime=inputs.mtime,
                consul=consul[0] if consul else None,
            )
        )

    def build_index(
        self, inputs: BuildInputs, nodes: Sequence[Node], parts: Sequence[Artifact]
    ) -> list[Artifact]:
        if not nodes:
            return []
        assert inputs.keys.signify_public is not None
        _check_shared(nodes, pub_key=inputs.keys.signify_public, mtime=inputs.mtime)
        return _with_index(nodes, sorted(parts, key=lambda a: a.path))


def _check_response_file(conf: bytes, node: Node) -> None:
    """Every line `question = answer` with a one-line, non-empty answer (install.sub's form)."""
    for line in conf.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        question, sep, answer = line.partition("=")
        if not sep or not question.strip() or not answer.strip():
            raise BuildError(f"{node.name}: response file line {line!r} is not 'question = answer'")
