"""Debian binary package (.deb) of one node's NodeTree, written without dpkg-deb.

Layout, as dpkg-deb(1) writes it and dpkg/apt/lintian read it:

- an ar archive: ``debian-binary`` ("2.0"), ``control.tar.gz``, ``data.tar.gz``;
- data.tar: ``./`` then every directory and file in path order, owners root:root
  (numeric 0), mtimes = the build's mtime. Secrets (node key, a server's config
  with the gossip key) are shipped 0600 -- dpkg unpacks before the service user
  exists, so postinst hands them over (owner, group, mode from the NodeTree).
  The data dir is made by postinst, not shipped (it is the agent's, and under
  /opt, where Debian packages ship nothing);
- control.tar: control, md5sums (conffiles excluded, as dh_md5sums does),
  conffiles (every file under /etc), the maintainer scripts rendered from
  packaging/debian/*.j2 and, with HashiCorp's package, a ``triggers`` file.

Coexisting with HashiCorp's ``nomad`` package (REFERENCE.md):

- its /etc/nomad.d/nomad.hcl enables server AND client: preinst diverts it to
  /etc/nomad.d/nomad.hcl.hashicorp (``dpkg-divert --rename``); postrm gives it
  back on purge (on remove only when our own conffile is gone, since dpkg cannot
  rename it over the one we leave behind), and on abort-install;
- its postinst runs ``chown -R nomad:nomad /etc/nomad.d`` on every configure:
  the file trigger on /usr/bin/nomad re-runs our postinst after each install
  or upgrade of HashiCorp's package, which puts owners and modes back;
- its unit runs ``nomad agent -config /etc/nomad.d`` as root: the NodeTree's
  drop-in runs our config as our user. With a bundled binary the NodeTree
  carries a complete unit and /usr/bin/nomad instead, and the package conflicts
  with ``nomad``.

Versions: the integer the state keeps per node, written as is ("1", "2", ...):
a native version, compared numerically by dpkg, so n+1 is newer than n and 10
newer than 9. Architecture "all", or the bundled ELF binary's architecture (the
file is then ``<pkg>_<v>_<arch>.deb``).
"""

from __future__ import annotations

import hashlib
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import cache

import jinja2

from builder import consul, elf
from builder.archive import TarEntry, ar, gzip_bytes, ustar
from builder.data import template_environment
from builder.errors import BuildError, UserError
from builder.model import Cluster, Node
from builder.nodetree import NodeFile, NodeTree
from builder.writers import (
    Artifact,
    BuildInputs,
    Output,
    Writer,
    bundle_problems,
    bundled_binaries,
)

__all__ = [
    "DIVERTED",
    "VIRTUAL",
    "ConsulDebWriter",
    "DebFlavour",
    "DebWriter",
    "build_deb",
    "deb_arch",
    "deb_version",
    "elf_facts",
]

VIRTUAL = "nomad-config"  # Provides/Conflicts/Replaces: one node's package per host
HASHICORP_PACKAGE = "nomad"
HASHICORP_CONFIG = "/etc/nomad.d/nomad.hcl"  # HashiCorp's conffile (server+client demo)
DIVERTED = HASHICORP_CONFIG + ".hashicorp"
NOMAD_BINARY = "/usr/bin/nomad"  # HashiCorp's binary: the trigger path

_PATH_OK = re.compile(r"^(/[A-Za-z0-9._+@-]+)+\Z")
_NAME_OK = re.compile(r"^[a-z_][a-z0-9_-]*[$]?\Z")  # adduser's default NAME_REGEX, roughly
_PKG_OK = re.compile(r"^[a-z0-9][a-z0-9+.-]+\Z")  # Debian policy 5.6.1
_UNIT_OK = re.compile(r"^[A-Za-z0-9:_.@-]+\Z")

# ELF e_machine -> Debian architecture (little-endian unless noted).
_ELF_MACHINES = {3: "i386", 40: "armhf", 62: "amd64", 183: "arm64", 243: "riscv64"}


# ---------------------------------------------------------------- flavours


@dataclass(frozen=True)
class DebFlavour:
    """What makes a configuration package Nomad's or Consul's: the product it configures,
    its package name, the virtual package (one per host), the HashiCorp package it
    depends on, and whether it diverts that package's conffile and re-runs its postinst
    after that package's (a trigger on the HashiCorp binary)."""

    product: str  # "Nomad", "Consul": descriptions and changelog
    virtual: str
    depends: tuple[str, ...] = ()  # besides adduser (and libc6 for a bundled ELF)
    pre_depends: str = ""
    conflicts: tuple[str, ...] = ()
    divert: str | None = None  # the HashiCorp conffile diverted away (None: none)
    trigger: str | None = None  # path whose change re-runs postinst ("triggered")
    summary: str = ""  # the description's first paragraph (Nomad's: in control.j2)
    role_text: str | None = None  # None: the node's Nomad role


def nomad_flavour(node: Node) -> DebFlavour:
    bundled = node.packages.bundle is not None
    return DebFlavour(
        product="Nomad",
        virtual=VIRTUAL,
        pre_depends=""
        if bundled
        else f"{HASHICORP_PACKAGE} (>= {node.packages.nomad_min_version})",
        conflicts=(HASHICORP_PACKAGE,) if bundled else (),
        divert=None if bundled else HASHICORP_CONFIG,
        trigger=None if bundled else NOMAD_BINARY,
    )


# ---------------------------------------------------------------- names


def deb_version(version: int) -> str:
    """The Debian version of state's integer package version: "1", "2", ..."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BuildError(f"package version must be a positive integer: {version!r}")
    return str(version)


def deb_arch(binary: bytes | None, what: str = "bundled nomad binary") -> str:
    """Debian architecture of a package carrying `binary` ("all" for none or a script)."""
    if binary is None or binary[:2] == b"#!":
        return "all"
    if not elf.is_elf(binary):
        raise UserError(f"{what}: neither an ELF executable nor a script")
    header = elf.read_header(binary, what)
    if header.order != "little":
        raise UserError(f"{what}: big-endian ELF is not a Debian architecture this tool knows")
    arch = _ELF_MACHINES.get(header.machine)
    if arch is None:
        raise UserError(f"{what}: ELF machine {header.machine} is not a Debian architecture")
    if header.osabi not in elf.OSABI_LINUX:
        raise UserError(f"{what}: not a Linux executable (ELF OS ABI {header.osabi})")
    return arch


def elf_facts(binary: bytes, what: str = "bundled nomad binary") -> elf.ElfTables | None:
    """What lintian looks at in a bundled ELF binary (None for a script)."""
    if not elf.is_elf(binary):
        return None
    return elf.read_tables(binary, elf.read_header(binary, what), what)


# ---------------------------------------------------------------- templates


def _long_description(text: str) -> str:
    """Paragraphs (blank-line separated) as a control file's extended description."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip())]
    lines: list[str] = []
    for p in paragraphs:
        if lines:
            lines.append(" .")
        lines += [f" {ln}" for ln in textwrap.wrap(p, 72, break_on_hyphens=False)]
    return "\n".join(lines) + "\n"


@cache
def _env() -> jinja2.Environment:
    return template_environment(
        {"octal": lambda mode: f"{mode:04o}", "deb_long": _long_description}, trim=True
    )


def _render(name: str, **context: object) -> bytes:
    return _env().get_template(f"packaging/debian/{name}").render(**context).encode()


# ---------------------------------------------------------------- checks


def _check_tree(node: Node, tree: NodeTree) -> None:
    if tree.os != "debian" or node.os != "debian":
        raise BuildError(f"{node.name}: a Debian package needs a Debian NodeTree")
    if tree.node != node.name:
        raise BuildError(f"NodeTree of {tree.node} given for node {node.name}")
    if not _PKG_OK.match(node.deb_package):
        raise BuildError(f"{node.deb_package!r} is not a valid Debian package name")
    paths = [f.path for f in tree.files] + [d.path for d in tree.dirs]
    if len(set(paths)) != len(paths):
        raise BuildError(f"{node.name}: a path appears twice in the NodeTree")
    for p in paths:
        if not _PATH_OK.match(p) or "/../" in p + "/" or "/./" in p + "/":
            raise BuildError(f"cannot package {p!r}: not a plain absolute path")
    svc = tree.service
    if not _UNIT_OK.match(svc.name):
        raise BuildError(f"systemd unit name {svc.name!r} has unusable characters")
    acct = svc.account
    for name in (acct.user, acct.group, *acct.extra_groups):
        if not _NAME_OK.match(name):
            raise BuildError(f"user or group name {name!r} is not usable on Debian")
    for f in tree.files:
        for name in (f.owner, f.group):
            if not _NAME_OK.match(name):
                raise BuildError(f"{f.path}: owner/group {name!r} is not usable on Debian")
        if f.mode & ~0o7777:
            raise BuildError(f"{f.path}: mode {f.mode:o} is not a permission mode")
    for d in tree.dirs:
        if d.mode & ~0o7777:
            raise BuildError(f"{d.path}: mode {d.mode:o} is not a permission mode")
    if svc.unit_path not in {f.path for f in tree.files}:
        raise BuildError(f"{node.name}: the NodeTree has no {svc.unit_path}")


# ---------------------------------------------------------------- contents


@dataclass(frozen=True)
class _Payload:
    """One regular file of data.tar (owned root:root, as every member)."""

    path: str  # absolute
    data: bytes
    mode: int  # as shipped; postinst sets the NodeTree's owner, group and mode


def _shipped_mode(f: NodeFile) -> int:
    """Secrets travel root:root 0600; the rest with their final mode (setuid bits dropped
    when the final owner is not root: postinst sets them after chown)."""
    if f.is_secret:
        return 0o600
    if (f.owner, f.group) != ("root", "root"):
        return f.mode & 0o700
    return f.mode


def config_digest(tree: NodeTree) -> str:
    """sha256 over the files whose change needs a restart (all but certificates/keys), as
    postinst computes it on the node: `cat <restart_files> | sha256sum`."""
    h = hashlib.sha256()
    for f in tree.files:
        if not f.is_tls:
            h.update(f.content)
    return h.hexdigest()


def _changelog(
    pkg: str, version: str, node: Node, tree: NodeTree, mtime: int, product: str, role_text: str
) -> bytes:
    when = format_datetime(datetime.fromtimestamp(mtime, UTC))
    return _render(
        "changelog.j2",
        product=product,
        package=pkg,
        version=version,
        node=node,
        role_text=role_text,
        digest=tree.digest()[:16],
        config_digest=config_digest(tree)[:16],
        maintainer=node.packages.maintainer,
        date=when,
    )


def _installed_size(payload: list[_Payload], dirs: list[str]) -> int:
    """KiB as dpkg-gencontrol counts: each file rounded up, each directory one."""
    return sum((len(p.data) + 1023) // 1024 for p in payload) + len(dirs)


# Package paths are absolute and normalized (NodeTree checks them); plain string
# operations, not PurePosixPath: these run for every member of every package.


def _parents(path: str) -> list[str]:
    """'/etc/nomad.d/tls/x' -> ['/etc/nomad.d/tls', '/etc/nomad.d', '/etc']."""
    parts = path.split("/")[1:-1]
    return ["/" + "/".join(parts[:i]) for i in range(len(parts), 0, -1)]


def _sort_key(path: str) -> tuple[str, ...]:
    """Path order, component by component (as PurePosixPath(path).parts sorts)."""
    return tuple(path.split("/"))


@dataclass(frozen=True)
class _Plan:
    """What build_deb decided before writing any archive member."""

    package: str
    version: str
    arch: str
    triggered: bool  # re-run postinst when the HashiCorp binary changes
    payload: list[_Payload]
    dirs: list[str]
    conffiles: list[str]
    context: dict[str, object]


def _bundle_facts(node: Node, tree: NodeTree) -> tuple[str, list[tuple[str, elf.ElfTables]]]:
    """The package architecture and lintian's facts of each bundled ELF binary."""
    arch = "all"
    facts: list[tuple[str, elf.ElfTables]] = []
    for b in bundled_binaries(node, tree):
        arch = deb_arch(b.content, f"{b.path} (bundled)")
        fact = elf_facts(b.content)
        if fact is not None:
            facts.append((b.path, fact))
    return arch, facts


def _context(
    node: Node, tree: NodeTree, pkg: str, ver: str, mtime: int, flavour: DebFlavour
) -> dict[str, object]:
    """Template context shared by the control file, scripts and documentation."""
    svc = tree.service
    bundle = node.packages.bundle
    binaries = bundled_binaries(node, tree)
    return {
        "package": pkg,
        "version": ver,
        "node": node,
        "tree": tree,
        "service": svc,
        "account": svc.account,
        "unit": f"{svc.name}.service",
        "role_text": flavour.role_text or node.role_text,
        "bundled": bundle is not None,
        "bundle_version": bundle.version if bundle else "",
        "product": flavour.product,
        "summary": flavour.summary,
        "hashicorp_config": flavour.divert or "",
        "diverted": f"{flavour.divert}.hashicorp" if flavour.divert else "",
        "maintainer": node.packages.maintainer,
        "min_version": node.packages.nomad_min_version,
        "virtual": flavour.virtual,
        "binaries": [b.path for b in binaries if b.path.startswith(("/usr/bin/", "/usr/sbin/"))],
        "year": datetime.fromtimestamp(mtime, UTC).year,
    }


def _plan(node: Node, tree: NodeTree, version: int, mtime: int, flavour: DebFlavour) -> _Plan:
    _check_tree(node, tree)
    pkg, ver = node.deb_package, deb_version(version)
    arch, facts = _bundle_facts(node, tree)
    context = _context(node, tree, pkg, ver, mtime, flavour)
    payload = [_Payload(f.path, f.content, _shipped_mode(f)) for f in tree.files]
    context.update(
        odd_modes=[(p.path, p.mode) for p in payload if p.mode not in (0o644, 0o755)],
        static_binaries=[path for path, f in facts if not f.dynamic],
        unstripped_binaries=[path for path, f in facts if f.symbols],
    )
    doc = f"/usr/share/doc/{pkg}"
    changelog = gzip_bytes(  # policy 12.7
        _changelog(pkg, ver, node, tree, mtime, flavour.product, str(context["role_text"])),
        level=9,
    )
    payload += [
        _Payload(f"{doc}/copyright", _render("copyright.j2", **context), 0o644),
        _Payload(f"{doc}/changelog.gz", changelog, 0o644),
        _Payload(
            f"/usr/share/lintian/overrides/{pkg}", _render("lintian-overrides.j2", **context), 0o644
        ),
    ]
    payload.sort(key=lambda p: _sort_key(p.path))
    if len({p.path for p in payload}) != len(payload):
        raise BuildError(f"{node.name}: a NodeTree file collides with the package's own files")
    dirs = sorted({d for p in payload for d in _parents(p.path)}, key=_sort_key)
    conffiles = [p.path for p in payload if p.path.startswith("/etc/")]
    fields = _control_fields(tree, payload, dirs, conffiles, arch, facts, flavour)
    context.update(fields)
    return _Plan(pkg, ver, arch, flavour.trigger is not None, payload, dirs, conffiles, context)


def _control_fields(
    tree: NodeTree,
    payload: list[_Payload],
    dirs: list[str],
    conffiles: list[str],
    arch: str,
    facts: list[tuple[str, elf.ElfTables]],
    flavour: DebFlavour,
) -> dict[str, object]:
    libc = ["libc6"] if any(f.dynamic for _, f in facts) else []
    conflicts = ", ".join([flavour.virtual, *flavour.conflicts])
    return {
        # postinst sets owner, group and mode of every NodeTree file (HashiCorp's
        # postinst chowns /etc/nomad.d recursively; the trigger runs ours again after
        # it) and puts the directories of ours under /etc back to root:root 0755.
        "owned": list(tree.files),
        # Upgrades restart the agent when one of these changed, else only reload it
        # (certificates and keys: Nomad reloads TLS on SIGHUP).
        "restart_files": [f.path for f in tree.files if not f.is_tls and f.kind != "trust"],
        # Keys a signing key rotation ships (the apt keyring): the seed wrote the same
        # path before any package owned it; preinst removes such a copy so dpkg does not
        # ask about a conffile "created by you or by a script".
        "adopt_files": [f.path for f in tree.files if f.kind == "trust"],
        "etc_dirs": [d for d in dirs if d.startswith("/etc/")],
        "data_dirs": list(tree.dirs),
        "conffiles": conffiles,
        "trigger": flavour.trigger is not None,
        "nomad_binary": flavour.trigger or "",
        "installed_size": _installed_size(payload, dirs),
        "arch": arch,
        # A dynamically linked bundled binary needs the C library (no dpkg-shlibdeps
        # here: builds also run on OpenBSD and macOS).
        "depends": ", ".join(["adduser", *libc, *flavour.depends]),
        "conflicts": conflicts,
        "replaces": conflicts,
        "provides": flavour.virtual,
        # HashiCorp's package must be configured before our preinst diverts its
        # conffile: unpacked only, the conffile is still nomad.hcl.dpkg-new, which
        # our own unpack of the same path would overwrite (and HashiCorp's default
        # be lost). Hence Pre-Depends, not Depends.
        "pre_depends": flavour.pre_depends,
    }


def _data_tar(plan: _Plan, mtime: int) -> bytes:
    """data.tar.gz: "./", then directories and files in path order (parents first)."""
    by_path: dict[str, TarEntry] = {}
    for d in plan.dirs:
        by_path[d] = TarEntry(f".{d}/", mode=0o755, mtime=mtime, type="dir")
    for p in plan.payload:
        by_path[p.path] = TarEntry(f".{p.path}", p.data, mode=p.mode, mtime=mtime)
    entries = [TarEntry("./", mode=0o755, mtime=mtime, type="dir")]
    entries += [by_path[k] for k in sorted(by_path, key=_sort_key)]
    return gzip_bytes(ustar(entries))


def _control_tar(plan: _Plan, mtime: int) -> bytes:
    """control.tar.gz: control, conffiles, md5sums, maintainer scripts (and triggers)."""
    md5sums = "".join(
        f"{hashlib.md5(p.data).hexdigest()}  {p.path.lstrip('/')}\n"
        for p in plan.payload
        if p.path not in plan.conffiles
    ).encode()
    members: list[tuple[str, bytes, int]] = [
        ("conffiles", "".join(f"{c}\n" for c in plan.conffiles).encode(), 0o644),
        ("control", _render("control.j2", **plan.context), 0o644),
        ("md5sums", md5sums, 0o644),
    ]
    for script in ("postinst", "postrm", "preinst", "prerm"):
        if script == "preinst" and not plan.context["hashicorp_config"]:
            continue  # its only work is the diversion
        members.append((script, _render(f"{script}.j2", **plan.context), 0o755))
    if plan.triggered:
        members.append(("triggers", _render("triggers.j2", **plan.context), 0o644))
    members.sort()
    entries = [TarEntry("./", mode=0o755, mtime=mtime, type="dir")]
    entries += [TarEntry(f"./{name}", data, mode=mode, mtime=mtime) for name, data, mode in members]
    return gzip_bytes(ustar(entries))


def build_deb(
    node: Node, tree: NodeTree, *, version: int, mtime: int, flavour: DebFlavour | None = None
) -> Artifact:
    """debian/<pkg>_<version>_<arch>.deb for one node (arch "all" unless an ELF is bundled).

    The package is named node.deb_package; `flavour` (default: Nomad's) says what it
    configures and how it coexists with HashiCorp's package."""
    if mtime < 0:
        raise BuildError(f"mtime must not be negative: {mtime}")
    plan = _plan(node, tree, version, mtime, flavour or nomad_flavour(node))
    members = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.gz", _control_tar(plan, mtime)),
        ("data.tar.gz", _data_tar(plan, mtime)),
    ]
    return Artifact(
        path=deb_path(node, version, plan.arch),
        data=ar(members, mtime=mtime),
        secret=any(f.is_secret for f in tree.files),
        node=node.name,
    )


def deb_path(node: Node, version: int, arch: str) -> str:
    return f"debian/{node.deb_package}_{deb_version(version)}_{arch}.deb"


def package_arch(node: Node) -> str:
    """The package's architecture, known from the cluster file alone."""
    bundle = node.packages.bundle
    return "all" if bundle is None else deb_arch(bundle.binary.read_bytes())


class DebWriter(Writer):
    """A Debian node's configuration package."""

    name = "deb"
    os = "debian"

    def unfit(self, cluster: Cluster, node: Node) -> str | None:
        return None if node.os == "debian" else f"node {node.name} runs {node.os}, not Debian"

    def check(self, cluster: Cluster, node: Node) -> list[str]:
        problems = []
        maintainer = node.packages.maintainer
        if not maintainer or "\n" in maintainer or maintainer != maintainer.strip():
            problems.append(
                f"{cluster.source}: packages.maintainer: {maintainer!r} cannot go "
                "into a Debian control file"
            )
        if not _PKG_OK.match(node.deb_package):
            problems.append(
                f"{cluster.source}: {node.key}.name: {node.deb_package!r} is not a "
                "valid Debian package name"
            )
        return problems + bundle_problems(cluster, node, deb_arch)

    def outputs(
        self,
        cluster: Cluster,
        nodes: Sequence[Node],
        versions: Mapping[str, int],
        upstream: Sequence[Output] = (),
    ) -> list[Output]:
        return [
            Output(deb_path(n, versions[n.name], package_arch(n)), n.name, secret=True)
            for n in nodes
        ]

    def build(self, inputs: BuildInputs, nodes: Sequence[Node]) -> list[Artifact]:
        return [
            build_deb(n, inputs.trees[n.name], version=inputs.versions[n.name], mtime=inputs.mtime)
            for n in nodes
        ]


def consul_flavour(cluster: Cluster, node: Node) -> DebFlavour:
    return DebFlavour(
        product="Consul",
        virtual="consul-config",
        # HashiCorp's package; older Consuls refuse keys the configuration has
        depends=(f"consul (>= {consul.min_version()})",),
        # HashiCorp's consul postinst chowns /etc/consul.d: put our owners back after it
        trigger="/usr/bin/consul",
        role_text=consul.role_text(cluster, node),
        summary=(
            f"The HashiCorp Consul agent configuration of {node.fqdn} (Consul "
            f"{consul.role_text(cluster, node)}), generated by nomad-build from its cluster "
            "file: the agent configuration (with the cluster's gossip key), the Consul CA "
            "certificate, this node's Consul certificate and private key, a drop-in that "
            "runs HashiCorp's consul.service with only this configuration (its demo "
            "/etc/consul.d/consul.hcl is left in place, unread), and an nftables snippet "
            "that opens Consul's ports to the cluster's nodes only."
        ),
    )


class ConsulDebWriter(Writer):
    """A Debian node's Consul agent package, consul-config-<node> ([consul.agent] on)."""

    name = "consul-deb"
    os = "debian"

    def unfit(self, cluster: Cluster, node: Node) -> str | None:
        if not consul.enabled(cluster):
            return "consul.agent.enabled is not true"
        return None if node.os == "debian" else f"node {node.name} runs {node.os}, not Debian"

    def version_key(self, node: str) -> str:
        return consul.version_key(node)

    def check(self, cluster: Cluster, node: Node) -> list[str]:
        pkg = consul.package_node(node).deb_package
        if not _PKG_OK.match(pkg):
            return [
                f"{cluster.source}: {node.key}.name: {pkg!r} is not a valid Debian package name"
            ]
        return []

    def outputs(
        self,
        cluster: Cluster,
        nodes: Sequence[Node],
        versions: Mapping[str, int],
        upstream: Sequence[Output] = (),
    ) -> list[Output]:
        return [
            Output(
                deb_path(consul.package_node(n), versions[self.version_key(n.name)], "all"),
                n.name,
                secret=True,
            )
            for n in nodes
        ]

    def build(self, inputs: BuildInputs, nodes: Sequence[Node]) -> list[Artifact]:
        return [
            build_deb(
                consul.package_node(n),
                inputs.consul_trees[n.name],
                version=inputs.versions[self.version_key(n.name)],
                mtime=inputs.mtime,
                flavour=consul_flavour(inputs.cluster, n),
            )
            for n in nodes
        ]
