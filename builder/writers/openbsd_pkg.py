"""OpenBSD binary package (pkg_add(1)) of one node's NodeTree.

Layout, as pkg_add's OpenBSD::PackingElement / Ustar / ArcCheck read it:

- gzip'd ustar: ``+CONTENTS`` (the packing list) first, then ``+DESC`` and
  ``+DISPLAY``, then every payload file in packing-list order; tar mtimes 0
  (the time is in ``@ts``), owners/modes as the packing list annotates them.
- Everything is installed from ``@cwd /``. Files under /etc are the admin's
  (``@sample``): the package carries them under
  /usr/local/share/examples/nomad-config/<path> (the ports convention) and pkg_add
  copies one to its place only if absent, with the @owner/@group/@mode in force
  at the ``@sample`` line -- so secrets get the same restrictive annotations on
  both the example and the sample. pkg_delete / pkg_add -u remove a sample that is
  still identical to the example it came from, keep (and report) an edited one.
- The sysutils/nomad port (our dependency, so installed first) @samples its demo
  /etc/nomad/nomad.hcl; where our file has that path, an ``@exec-add`` replaces
  the port's copy while it is still identical to the port's example.
- The rc.d script is ``@rcscript /etc/rc.d/<name>`` (as pkg_create writes
  ``@rcscript ${RCDIR}/<name>``), enabled by ``@exec-add rcctl enable`` on first
  install and stopped/disabled by ``@unexec-delete`` on removal (not on update).
- Signed with ``signify -zS`` semantics (builder.signify), verified by pkg_add
  against /etc/signify/<key_name>.pub.

Package name: <node.openbsd_stem>-<version>, version a plain integer (pkg_add's
dewey comparison is numeric, so n+1 is newer than n, 10 newer than 9).
"""

from __future__ import annotations

import base64
import hashlib
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache

import jinja2

from builder import consul, elf, signify
from builder.archive import TarEntry, gzip_bytes, ustar
from builder.data import template_environment
from builder.errors import BuildError, UserError
from builder.model import Cluster, Node
from builder.nodetree import NodeFile, NodeTree, ServiceAccount
from builder.openbsd_names import KSH_IDENT, split_package_name
from builder.writers import (
    Artifact,
    BuildInputs,
    Output,
    Writer,
    bundle_problems,
    bundled_binaries,
)

__all__ = [
    "EXAMPLES_DIR",
    "PORT_PKGPATH",
    "PORT_SAMPLES",
    "ConsulOpenBSDPackageWriter",
    "OpenBSDFlavour",
    "OpenBSDPackageWriter",
    "build_openbsd_pkg",
    "elf_arch",
    "package_name",
]

EXAMPLES_DIR = "/usr/local/share/examples/nomad-config"
PORT_PKGPATH = "sysutils/nomad"  # the port whose binary a config-only package depends on
# Directories every OpenBSD install has; other parents of @sample files get an
# "@sample <dir>/" line so pkg_add creates them first.
_BASE_DIRS = frozenset({"/etc", "/etc/ssl", "/etc/ssl/private", "/etc/rc.d", "/etc/signify"})
# Files the sysutils/nomad port installs with @sample, and its example copies. The
# port (our dependency) is installed first, so our @sample of the same path would
# find the port's demo config there and leave it: replace it while still pristine.
PORT_SAMPLES = {"/etc/nomad/nomad.hcl": "/usr/local/share/examples/nomad/nomad.hcl"}
# Numeric ids only matter to tools that ignore names; pkg_add looks names up.
_IDS = {"root": 0, "wheel": 0, "daemon": 1, "bin": 7}
_PATH_OK = re.compile(r"^(/[A-Za-z0-9._+-]+)+\Z")
_NAME_OK = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*\Z")

# ELF e_machine -> OpenBSD package architecture (MACHINE_ARCH).
_ELF_MACHINES = {
    3: "i386",
    20: "powerpc",
    21: "powerpc64",
    40: "arm",
    43: "sparc64",
    62: "amd64",
    183: "aarch64",
    243: "riscv64",
}


# ---------------------------------------------------------------- flavours


@dataclass(frozen=True)
class OpenBSDFlavour:
    """What makes a configuration package Nomad's or Consul's: the product, where its
    /etc examples live, the port it depends on (or the packages it conflicts with), the
    port's @sample files it replaces while pristine, and the port's own rc.d script."""

    product: str  # "Nomad", "Consul"
    role_text: str
    examples_dir: str
    depend: str | None  # an @depend line's argument (None: none)
    conflict: str | None = None  # an @conflict line's argument
    port_samples: Mapping[str, str] = field(default_factory=dict)
    port_script: str | None = None  # the port's rc.d script, not to be enabled as well
    user_comment: str = "Nomad Agent"
    port_line: str = ""  # +DESC: where the product itself comes from


def nomad_flavour(node: Node) -> OpenBSDFlavour:
    bundled = node.packages.bundle is not None
    v = node.packages.nomad_min_version
    return OpenBSDFlavour(
        product="Nomad",
        role_text=node.role_text,
        examples_dir=EXAMPLES_DIR,
        depend=None if bundled else f"{PORT_PKGPATH}:nomad->={v}:nomad-{v}",
        # our binary is /usr/local/bin/nomad, the port's file
        conflict="nomad-*" if bundled else None,
        port_samples={} if bundled else PORT_SAMPLES,
        port_script=None if bundled else "nomad",
        port_line=f"Nomad itself comes from the {PORT_PKGPATH} port (nomad-{v} or newer).",
    )


# ---------------------------------------------------------------- names


def package_name(node: Node, version: int) -> str:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BuildError(f"{node.name}: package version must be a positive integer: {version!r}")
    stem = node.openbsd_stem
    if not _NAME_OK.match(stem):
        raise BuildError(f"{node.name}: OpenBSD package stem {stem!r} has unusable characters")
    name = f"{stem}-{version}"
    # The stem must survive pkg_add's split; the model maps "-<digit>" to "_<digit>".
    if split_package_name(name) != (stem, str(version)):
        raise BuildError(f"{node.name}: pkg_add would misread {name} (stem {stem} has -<digit>)")
    return name


# ---------------------------------------------------------------- bundled binary


def elf_arch(binary: bytes, what: str = "bundled nomad binary") -> str:
    """OpenBSD architecture of an OpenBSD ELF executable (UserError for anything else)."""
    header = elf.read_header(binary, what)
    arch = _ELF_MACHINES.get(header.machine)
    if arch is None:
        raise UserError(f"{what}: ELF machine {header.machine} is not an OpenBSD architecture")
    # OpenBSD's cc leaves the ABI at 0 and marks the binary with an ident note (Go sets both).
    if header.osabi != elf.OSABI_OPENBSD and (
        b".note.openbsd.ident" not in elf.read_tables(binary, header, what).sections
    ):
        raise UserError(f"{what}: not an OpenBSD executable (no OpenBSD ELF ABI or ident note)")
    return arch


# ---------------------------------------------------------------- packing list


@dataclass(frozen=True)
class _Member:
    name: str  # tar member name == packing-list name
    data: bytes
    mode: int
    owner: str
    group: str


def _sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _rel(path: str) -> str:
    return path.lstrip("/")


def _check_path(path: str) -> None:
    if not _PATH_OK.match(path) or "/../" in path + "/" or "/./" in path + "/":
        raise BuildError(f"cannot package {path!r}: not a plain absolute path")


def _check_field(value: str, what: str) -> str:
    if not value or any(c in value for c in ":\n"):
        raise BuildError(f"{what} {value!r} cannot go into a packing list")
    return value


class _Plist:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.members: list[_Member] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def _modes(
        self, owner: str, group: str, mode: int, plain_mode: int
    ) -> tuple[list[str], list[str]]:
        """Annotations for anything but root:wheel with the plain mode, and their resets."""
        on: list[str] = []
        off: list[str] = []
        if owner != "root":
            on.append(f"@owner {_check_field(owner, 'owner')}")
            off.append("@owner")
        if group != "wheel":
            on.append(f"@group {_check_field(group, 'group')}")
            off.append("@group")
        if mode != plain_mode:
            if mode & ~0o7777:
                raise BuildError(f"mode {mode:o} is not a permission mode")
            on.append(f"@mode {mode:o}")
            off.append("@mode")
        return on, off

    def file(
        self,
        keyword: str,
        name: str,
        data: bytes,
        *,
        owner: str,
        group: str,
        mode: int,
        mtime: int,
        sample: str | None = None,
    ) -> None:
        """A payload file (plain when keyword is ""), optionally @sample'd to `sample`."""
        on, off = self._modes(owner, group, mode, 0o644)
        self.add(*on)
        self.add(f"@{keyword} {name}" if keyword else name)
        self.add(f"@sha {_sha(data)}", f"@size {len(data)}", f"@ts {mtime}")
        if sample is not None:
            self.add(f"@sample {sample}")  # same annotations: a secret stays a secret
        self.add(*off)
        self.members.append(_Member(name, data, mode, owner, group))

    def special(self, name: str, data: bytes) -> None:
        # +DESC etc.: listed before any @cwd (pkg_add only treats them as info files
        # there), with @sha/@size (checked when the package is signed), no @ts.
        self.add(name, f"@sha {_sha(data)}", f"@size {len(data)}")
        self.members.append(_Member(name, data, 0o444, "root", "wheel"))

    def directory(self, keyword: str, name: str, *, owner: str, group: str, mode: int) -> None:
        on, off = self._modes(owner, group, mode, 0o755)
        self.add(*on, f"@{keyword} {name}", *off)


# ---------------------------------------------------------------- templates


@cache
def _env() -> jinja2.Environment:
    return template_environment({})


def _render(name: str, **context: object) -> bytes:
    text = _env().get_template(f"packaging/openbsd/{name}").render(**context)
    return text.encode()


# ---------------------------------------------------------------- the writer


def _check_tree(node: Node, tree: NodeTree, examples_dir: str) -> NodeFile:
    if tree.os != "openbsd" or node.os != "openbsd":
        raise BuildError(f"{node.name}: an OpenBSD package needs an OpenBSD NodeTree")
    if tree.node != node.name:
        raise BuildError(f"NodeTree of {tree.node} given for node {node.name}")
    svc = tree.service
    if not KSH_IDENT.match(svc.name):
        raise BuildError(f"rc.d script name {svc.name!r} is not a ksh identifier")
    if svc.unit_path != f"/etc/rc.d/{svc.name}":
        raise BuildError(f"rc.d script {svc.unit_path} is not /etc/rc.d/{svc.name}")
    try:
        script = tree.file(svc.unit_path)
    except KeyError:
        raise BuildError(f"{node.name}: the NodeTree has no {svc.unit_path}") from None
    paths = [f.path for f in tree.files] + [d.path for d in tree.dirs]
    if len(set(paths)) != len(paths):
        raise BuildError(f"{node.name}: a path appears twice in the NodeTree")
    for p in paths:
        _check_path(p)
        if p.startswith(examples_dir + "/"):
            raise BuildError(f"{p}: collides with the package's own examples directory")
    if svc.account.extra_groups:
        raise BuildError(f"{node.name}: extra groups are not supported on OpenBSD")
    return script


def _replace_port_sample(f: NodeFile, flavour: OpenBSDFlavour) -> str:
    """Shell for @exec-add: put our file in place of the port's untouched sample.

    Runs on first install only (not on pkg_add -u); an edited file is left alone.
    """
    ours = flavour.examples_dir + f.path
    return (
        f"if cmp -s {f.path} {flavour.port_samples[f.path]}; then "
        f"install -o {f.owner} -g {f.group} -m {f.mode:o} {ours} {f.path}; fi"
    )


def _notes_block(tree: NodeTree, port_script: str | None) -> str:
    """tree.notes for +DISPLAY: wrapped paragraphs, each after a blank line."""
    notes = list(tree.notes)
    if port_script is not None:
        notes.insert(
            0,
            f"Do not also enable the port's rc.d script {port_script}: {tree.service.name} "
            "runs the agent with this configuration.",
        )
    out = ""
    for note in notes:
        lines = textwrap.wrap(note, 72, break_long_words=False, break_on_hyphens=False)
        out += "\n" + "\n".join(lines) + "\n"
    return out


def _header(
    pl: _Plist,
    node: Node,
    pkgname: str,
    arch: str,
    context: dict[str, object],
    account: ServiceAccount,
    flavour: OpenBSDFlavour,
) -> None:
    """@name, comments, +DESC/+DISPLAY, the dependency and the service account."""
    pl.add(
        f"@name {pkgname}",
        # pkg_add -u only replaces a package by one with a matching pkgpath;
        # ftp=no: it holds private keys, not for public mirrors.
        f"@comment pkgpath=nomad-build/{node.openbsd_stem} ftp=no",
        f"@comment nomad-build: {flavour.product} {flavour.role_text} configuration "
        f"for {node.name}",
        f"@arch {arch}",
    )
    pl.special("+DESC", _render("+DESC.j2", **context))
    pl.special("+DISPLAY", _render("+DISPLAY.j2", **context))
    if flavour.depend is not None:
        pl.add(f"@depend {flavour.depend}")
    if flavour.conflict is not None:
        pl.add(f"@conflict {flavour.conflict}")
    if account.create:
        gid = "" if account.gid is None else str(account.gid)
        uid = "" if account.uid is None else str(account.uid)
        group = _check_field(account.group, "group")
        user = _check_field(account.user, "user")
        home = _check_field(account.home, "home")
        pl.add(
            f"@newgroup {group}:{gid}",
            f"@newuser {user}:{uid}:{group}:daemon:{flavour.user_comment}:{home}:/sbin/nologin",
        )
    pl.add("@cwd /")


def _etc_files(pl: _Plist, etc: list[NodeFile], mtime: int, flavour: OpenBSDFlavour) -> None:
    """/etc: directories pkg_add must create, then example + @sample pairs."""
    parents: set[str] = set()
    for f in etc:
        d = f.path.rsplit("/", 1)[0]
        while d not in _BASE_DIRS and d.startswith("/etc/"):
            parents.add(d)
            d = d.rsplit("/", 1)[0]
    for d in sorted(parents):
        pl.directory("sample", d + "/", owner="root", group="wheel", mode=0o755)
    for f in etc:
        pl.file(
            "",
            _rel(flavour.examples_dir + f.path),
            f.content,
            owner=f.owner,
            group=f.group,
            mode=f.mode,
            mtime=mtime,
            sample=f.path,
        )
        if f.path in flavour.port_samples:
            pl.add(f"@exec-add {_replace_port_sample(f, flavour)}")


def _payload(
    pl: _Plist, node: Node, tree: NodeTree, script: NodeFile, mtime: int, flavour: OpenBSDFlavour
) -> None:
    """Plain files, /etc samples, the data dir, and the rc.d script with its rcctl lines."""
    etc = [f for f in tree.files if f.path.startswith("/etc/") and f is not script]
    for f in tree.files:  # outside /etc (the bundled binary): installed as they are
        if f not in etc and f is not script:
            pl.file(
                "", _rel(f.path), f.content, owner=f.owner, group=f.group, mode=f.mode, mtime=mtime
            )
    _etc_files(pl, etc, mtime, flavour)
    for d in tree.dirs:  # directories no file creates (the agent's data dir)
        pl.directory("dir", _rel(d.path), owner=d.owner, group=d.group, mode=d.mode)
    svc = tree.service
    # Stop/disable before its script goes away, enable once it is there.
    pl.add(
        f"@unexec-delete rcctl stop {svc.name} >/dev/null 2>&1 || true",
        f"@unexec-delete rcctl disable {svc.name}",
    )
    pl.file(
        "rcscript",
        script.path,
        script.content,
        owner=script.owner,
        group=script.group,
        mode=script.mode,
        mtime=mtime,
    )
    # Older pkg_add moved the cwd to the @rcscript's directory; pkg_create re-states it.
    pl.add("@cwd /", f"@exec-add rcctl enable {svc.name}")
    _reload_lines(pl, node, tree, {id(f) for f in etc}, flavour.examples_dir)


def _reload_lines(pl: _Plist, node: Node, tree: NodeTree, etc: set[int], examples_dir: str) -> None:
    """pkg_add -u of a running agent: reload it (SIGHUP, rc.d's rc_reload: Nomad re-reads
    its TLS certificates) when only certificates or keys changed, else restart it. The
    digest of the other files (as this package ships them) is kept in /var/db."""
    paths = [
        examples_dir + f.path if id(f) in etc else f.path
        for f in tree.files
        if not f.is_tls and f.kind != "trust"
    ]
    digest = f"/var/db/nomad-build/{node.openbsd_stem}.config-sha256"
    compute = f"cat {' '.join(paths)} | sha256"
    name = tree.service.name
    pl.add(
        f"@exec-add mkdir -p /var/db/nomad-build && {compute} > {digest}",
        f"@exec-update n=$({compute}); o=$(cat {digest} 2>/dev/null); "
        f"mkdir -p /var/db/nomad-build; echo $n > {digest}; "
        f"if rcctl check {name} >/dev/null 2>&1; then "
        f'if [ "$n" = "$o" ]; then rcctl reload {name}; else rcctl restart {name}; fi; '
        "fi >/dev/null 2>&1 || true",
        f"@unexec-delete rm -f {digest}",
    )


def package_arch(node: Node, tree: NodeTree | None = None) -> str:
    """ "*" for a config-only package, else the bundled binary's architecture."""
    if tree is not None:
        arch = "*"
        for b in bundled_binaries(node, tree):
            arch = elf_arch(b.content, f"{b.path} (bundled)")
        return arch
    bundle = node.packages.bundle
    return "*" if bundle is None else elf_arch(bundle.binary.read_bytes())


def build_openbsd_pkg(
    node: Node,
    tree: NodeTree,
    *,
    version: int,
    mtime: int,
    signing_key: bytes | None,
    key_name: str,
    flavour: OpenBSDFlavour | None = None,
) -> Artifact:
    """openbsd/<stem>-<version>.tgz for one node; signed unless signing_key is None.

    The stem is node.openbsd_stem; `flavour` (default: Nomad's) says what it configures."""
    flavour = flavour or nomad_flavour(node)
    script = _check_tree(node, tree, flavour.examples_dir)
    pkgname = package_name(node, version)
    if mtime < 0:
        raise BuildError(f"mtime must not be negative: {mtime}")
    bundle = node.packages.bundle
    arch = package_arch(node, tree)
    context: dict[str, object] = {
        "node": node,
        "product": flavour.product,
        "port_line": flavour.port_line,
        "service": tree.service,
        "role_text": flavour.role_text,
        "bundled": bundle is not None,
        "bundle_version": bundle.version if bundle else "",
        "arch": arch,
        "min_version": node.packages.nomad_min_version,
        "notes_block": _notes_block(tree, flavour.port_script),
    }
    pl = _Plist()
    _header(pl, node, pkgname, arch, context, tree.service.account, flavour)
    _payload(pl, node, tree, script, mtime, flavour)
    contents = ("\n".join(pl.lines) + "\n").encode()
    names = [m.name for m in pl.members]
    if len(set(names)) != len(names):
        raise BuildError(f"{pkgname}: two package members share a name")
    account = tree.service.account
    entries = [_tar_entry("+CONTENTS", contents, 0o444, "root", "wheel", account)]
    entries += [_tar_entry(m.name, m.data, m.mode, m.owner, m.group, account) for m in pl.members]
    gz = gzip_bytes(ustar(entries))
    if signing_key is not None:
        gz = signify.zsign(gz, signing_key, key_name=key_name, mtime=mtime)
    return Artifact(package_path(node, version), gz, secret=bool(tree.secrets), node=node.name)


def package_path(node: Node, version: int) -> str:
    return f"openbsd/{package_name(node, version)}.tgz"


class OpenBSDPackageWriter(Writer):
    """An OpenBSD node's configuration package, signify-signed."""

    name = "openbsd-pkg"
    os = "openbsd"
    signing = frozenset({"signify"})

    def unfit(self, cluster: Cluster, node: Node) -> str | None:
        return None if node.os == "openbsd" else f"node {node.name} runs {node.os}, not OpenBSD"

    def check(self, cluster: Cluster, node: Node) -> list[str]:
        problems = []
        if not _NAME_OK.match(node.openbsd_stem):
            problems.append(
                f"{cluster.source}: {node.key}.name: OpenBSD package stem "
                f"{node.openbsd_stem!r} has unusable characters"
            )
        return problems + bundle_problems(cluster, node, elf_arch)

    def outputs(
        self,
        cluster: Cluster,
        nodes: Sequence[Node],
        versions: Mapping[str, int],
        upstream: Sequence[Output] = (),
    ) -> list[Output]:
        return [Output(package_path(n, versions[n.name]), n.name, secret=True) for n in nodes]

    def build(self, inputs: BuildInputs, nodes: Sequence[Node]) -> list[Artifact]:
        keys = inputs.keys
        return [
            build_openbsd_pkg(
                n,
                inputs.trees[n.name],
                version=inputs.versions[n.name],
                mtime=inputs.mtime,
                signing_key=keys.signify_secret,
                key_name=keys.signing_key_name,
            )
            for n in nodes
        ]


def _tar_entry(
    name: str, data: bytes, mode: int, owner: str, group: str, account: ServiceAccount
) -> TarEntry:
    ids = dict(_IDS)
    if account.create:
        if account.uid is not None:
            ids.setdefault(account.user, account.uid)
        if account.gid is not None:
            ids.setdefault(account.group, account.gid)
    # mtime 0: the packing list's @ts carries the time (pkg_add sets it from there).
    return TarEntry(
        name=name,
        data=data,
        mode=mode,
        mtime=0,
        uid=ids.get(owner, 0),
        gid=ids.get(group, 0),
        uname=owner,
        gname=group,
    )


CONSUL_PORT = "sysutils/consul"  # its package consul-<Consul version>, rc.d "consul"


def consul_flavour(cluster: Cluster, node: Node) -> OpenBSDFlavour:
    v = consul.min_version()  # older Consuls refuse keys the configuration has
    return OpenBSDFlavour(
        product="Consul",
        role_text=consul.role_text(cluster, node),
        examples_dir="/usr/local/share/examples/consul-config",
        depend=f"{CONSUL_PORT}:consul->={v}:consul-{v}",
        port_script="consul",
        user_comment="Consul Agent",  # the port's @newuser comment
        port_line=f"Consul itself comes from the {CONSUL_PORT} port (consul-{v} or newer).",
    )


class ConsulOpenBSDPackageWriter(Writer):
    """An OpenBSD node's Consul agent package, consul-config-<stem> ([consul.agent] on)."""

    name = "consul-openbsd-pkg"
    os = "openbsd"
    signing = frozenset({"signify"})

    def unfit(self, cluster: Cluster, node: Node) -> str | None:
        if not consul.enabled(cluster):
            return "consul.agent.enabled is not true"
        return None if node.os == "openbsd" else f"node {node.name} runs {node.os}, not OpenBSD"

    def version_key(self, node: str) -> str:
        return consul.version_key(node)

    def check(self, cluster: Cluster, node: Node) -> list[str]:
        stem = consul.package_node(node).openbsd_stem
        if not _NAME_OK.match(stem):
            return [
                f"{cluster.source}: {node.key}.name: OpenBSD package stem {stem!r} has "
                "unusable characters"
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
                package_path(consul.package_node(n), versions[self.version_key(n.name)]),
                n.name,
                secret=True,
            )
            for n in nodes
        ]

    def build(self, inputs: BuildInputs, nodes: Sequence[Node]) -> list[Artifact]:
        keys = inputs.keys
        return [
            build_openbsd_pkg(
                consul.package_node(n),
                inputs.consul_trees[n.name],
                version=inputs.versions[self.version_key(n.name)],
                mtime=inputs.mtime,
                signing_key=keys.signify_secret,
                key_name=keys.signing_key_name,
                flavour=consul_flavour(inputs.cluster, n),
            )
            for n in nodes
        ]
