"""The signed apt repository: repo/debian/, served as is by any web server.

SERVE IT ONLY TO THE CLUSTER'S OWN NODES, OVER A PRIVATE NETWORK. Each
node's .deb holds that node's TLS private key (and a server's holds the
gossip key); the repository's signature proves where a package comes from,
it hides nothing. Anyone who can fetch pool/ can read every node's key. The
pool's .debs are published 0600 (secret artifacts): give the web server read
access deliberately; the index files, keyring and .sources are public.

Layout (Debian's "dists + pool" archive format, what apt-ftparchive writes):

- ``pool/<component>/<prefix>/<package>/<file>.deb``: the packages (each Debian
  node's nomad-config-<node> and, with [consul.agent] on, consul-config-<node>), byte for
  byte (prefix: first letter, or "lib" + one letter for lib* names);
- ``dists/<suite>/<component>/binary-<arch>/Packages`` and ``Packages.gz``:
  one stanza per package, its control fields (read from the .deb itself:
  ar → control.tar.* → ./control) plus Filename, Size, MD5sum, SHA256;
  arch is the packages' Architecture (``all`` for nomad-build's packages);
- ``dists/<suite>/Release``: Origin, Label, Suite, Codename, Date,
  Architectures, Components, Description, Acquire-By-Hash: no, and the
  MD5Sum / SHA256 lists (hash, size, path) of every index file;
- ``dists/<suite>/InRelease`` (clear-signed Release) and ``Release.gpg``
  (detached), both signed with the repository key (builder.openpgp) and
  dated from ``mtime``;
- ``nomad-build-archive-keyring.gpg``: the binary public keyring, to install
  as ``/etc/apt/keyrings/nomad-build-archive-keyring.gpg``;
- ``nomad-build.sources``: the deb822 source for /etc/apt/sources.list.d/,
  ``Signed-By:`` that keyring. ``URIs:`` is ``repo_url``, the URL at which
  this ``repo/debian/`` directory is served; without one there is no source
  (a placeholder would only fail on the node).

No Valid-Until: the same state must rebuild the same bytes, so a mirror can
replay an older (validly signed) Release; publish over a network you trust.
Everything is sorted and a function of the inputs: two builds are identical.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import posixpath
import re
import tarfile
import time
from collections.abc import Mapping, Sequence

from builder import openpgp
from builder.apt_source import (
    KEYRING_FILE,
    KEYRING_PATH,
    SOURCES_FILE,
    sources_file,
)
from builder.archive import gzip_bytes
from builder.errors import BuildError
from builder.model import Cluster, Node
from builder.writers import Artifact, BuildInputs, Output, Writer

__all__ = [
    "KEYRING_FILE",
    "KEYRING_PATH",
    "REPO_DIR",
    "SOURCES_FILE",
    "AptRepoWriter",
    "build_apt_repo",
    "deb_control",
    "parse_control",
]

REPO_DIR = "repo/debian"
ORIGIN = "nomad-build"

_NAME = re.compile(r"^[a-z0-9][a-z0-9.+-]+\Z")  # Debian policy §5.6.1
_WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*\Z")
_ADDED = ("Filename", "Size", "MD5sum", "SHA1", "SHA256", "SHA512")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# ---------------------------------------------------------------- reading a .deb


def _ar_members(data: bytes, what: str) -> dict[str, bytes]:
    if not data.startswith(b"!<arch>\n"):
        raise BuildError(f"{what}: not a .deb (no ar magic)")
    members: dict[str, bytes] = {}
    pos = 8
    while pos < len(data):
        header = data[pos : pos + 60]
        if len(header) < 60 or header[58:60] != b"`\n":
            raise BuildError(f"{what}: corrupt ar header at byte {pos}")
        name = header[:16].decode("ascii", "replace").rstrip().removesuffix("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise BuildError(f"{what}: corrupt ar member size at byte {pos}") from None
        start = pos + 60
        if start + size > len(data):
            raise BuildError(f"{what}: truncated ar member {name}")
        members[name] = data[start : start + size]
        pos = start + size + (size & 1)
    return members


def deb_control(deb: bytes, what: str = ".deb") -> bytes:
    """The ./control file of a binary package, read from its bytes."""
    members = _ar_members(deb, what)
    if members.get("debian-binary", b"")[:4] != b"2.0\n":
        raise BuildError(f"{what}: not a Debian binary package (debian-binary is not 2.0)")
    names = [n for n in members if n == "control.tar" or n.startswith("control.tar.")]
    if len(names) != 1:
        raise BuildError(f"{what}: expected one control.tar member, found {names}")
    blob = members[names[0]]
    try:
        if names[0] == "control.tar.gz":
            blob = gzip.decompress(blob)
        elif names[0] == "control.tar.xz":
            blob = lzma.decompress(blob)
        elif names[0] != "control.tar":
            raise BuildError(f"{what}: {names[0]}: compression not supported here")
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
            for info in tar:
                if info.name in ("./control", "control") and info.isfile():
                    f = tar.extractfile(info)
                    assert f is not None
                    return f.read()
    except (OSError, EOFError, lzma.LZMAError, tarfile.TarError) as e:
        raise BuildError(f"{what}: unreadable {names[0]}: {e}") from None
    raise BuildError(f"{what}: {names[0]} has no ./control")


def parse_control(text: bytes, what: str = "control") -> list[tuple[str, str]]:
    """One deb822 stanza as (field, value) in order; continuation lines kept in the value."""
    try:
        s = text.decode("utf-8")
    except UnicodeDecodeError:
        raise BuildError(f"{what}: not UTF-8") from None
    fields: list[tuple[str, str]] = []
    for line in s.rstrip("\n").split("\n"):
        if not line.strip():
            raise BuildError(f"{what}: more than one stanza")
        if line[0] in " \t":
            if not fields:
                raise BuildError(f"{what}: continuation line before any field")
            name, value = fields[-1]
            fields[-1] = (name, value + "\n" + line)
            continue
        name, sep, value = line.partition(":")
        if not sep or not re.fullmatch(r"[!-9;-~][!-9;-~]*", name):
            raise BuildError(f"{what}: not a field: {line!r}")
        fields.append((name, value.strip()))
    names = [n.lower() for n, _ in fields]
    if len(set(names)) != len(names):
        raise BuildError(f"{what}: a field appears twice")
    return fields


# ---------------------------------------------------------------- the repository


def _pool_prefix(package: str) -> str:
    return package[:4] if package.startswith("lib") and len(package) > 3 else package[0]


def _rfc2822(mtime: int) -> str:
    t = time.gmtime(mtime)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} UTC"
    )


def _stanza(fields: list[tuple[str, str]]) -> str:
    return "".join(f"{n}: {v}\n" if v else f"{n}:\n" for n, v in fields)


def _check_word(kind: str, value: str) -> None:
    if not _WORD.match(value) or "/" in value:
        raise BuildError(f"apt repository {kind} {value!r}: letters, digits and . _ + - only")


_Entry = tuple[str, Artifact, list[tuple[str, str]]]  # pool path, the .deb, control fields


def _pool_entries(debs: list[Artifact], component: str) -> dict[tuple[str, str, str], _Entry]:
    """(architecture, package, version) -> entry, each .deb's control read from its bytes."""
    entries: dict[tuple[str, str, str], _Entry] = {}
    pool_paths: set[str] = set()
    for a in debs:
        name = posixpath.basename(a.path)
        if not name.endswith(".deb") or len(name) <= 4:
            raise BuildError(f"not a .deb artifact: {a.path}")
        fields = parse_control(deb_control(a.data, a.path), f"{a.path}: control")
        got = dict(fields)
        for need in ("Package", "Version", "Architecture", "Maintainer", "Description"):
            if not got.get(need):
                raise BuildError(f"{a.path}: control has no {need}")
        if any(f in got for f in _ADDED):
            raise BuildError(f"{a.path}: control already has repository fields")
        pkg, version, arch = got["Package"], got["Version"], got["Architecture"]
        if not _NAME.match(pkg) or not _WORD.match(arch):
            raise BuildError(f"{a.path}: bad Package {pkg!r} or Architecture {arch!r}")
        if (arch, pkg, version) in entries:
            raise BuildError(f"two packages {pkg} {version} ({arch}): {a.path}")
        pool = f"pool/{component}/{_pool_prefix(pkg)}/{pkg}/{name}"
        if pool in pool_paths:
            raise BuildError(f"two packages would be {pool}")
        pool_paths.add(pool)
        entries[(arch, pkg, version)] = (pool, a, fields)
    return entries


def _indexes(entries: dict[tuple[str, str, str], _Entry], component: str) -> dict[str, bytes]:
    """Packages and Packages.gz per architecture; paths relative to dists/<suite>/."""
    indexes: dict[str, bytes] = {}
    for arch in sorted({k[0] for k in entries}):
        stanzas = []
        for k in sorted(k for k in entries if k[0] == arch):
            pool, a, fields = entries[k]
            added = [
                ("Filename", pool),
                ("Size", str(len(a.data))),
                ("MD5sum", hashlib.md5(a.data).hexdigest()),
                ("SHA256", hashlib.sha256(a.data).hexdigest()),
            ]
            # dpkg-scanpackages' place for them: after the other fields, before Description.
            desc = [f for f in fields if f[0] == "Description"]
            rest = [f for f in fields if f[0] != "Description"]
            stanzas.append(_stanza(rest + added + desc))
        packages = "\n".join(stanzas).encode("utf-8")
        base = f"{component}/binary-{arch}/Packages"
        indexes[base] = packages
        indexes[base + ".gz"] = gzip_bytes(packages)
    return indexes


def _release(
    indexes: dict[str, bytes], *, label: str, suite: str, component: str, mtime: int
) -> bytes:
    architectures = sorted({path.split("/")[1].removeprefix("binary-") for path in indexes})
    release = _stanza(
        [
            ("Origin", ORIGIN),
            ("Label", label),
            ("Suite", suite),
            ("Codename", suite),
            ("Date", _rfc2822(mtime)),
            ("Architectures", " ".join(architectures)),
            ("Components", component),
            ("Description", "Per-node Nomad and Consul configuration packages made by nomad-build"),
            ("Acquire-By-Hash", "no"),
        ]
    )
    width = len(str(max(len(d) for d in indexes.values())))
    for field, fn in (("MD5Sum", hashlib.md5), ("SHA256", hashlib.sha256)):
        release += f"{field}:\n"
        for path in sorted(indexes):
            data = indexes[path]
            release += f" {fn(data).hexdigest()} {len(data):>{width}} {path}\n"
    return release.encode("utf-8")


def build_apt_repo(
    debs: list[Artifact],
    *,
    suite: str,
    component: str,
    signing_key: bytes,
    mtime: int,
    repo_url: str | None = None,
    keyring: bytes | None = None,
) -> list[Artifact]:
    """repo/debian/: pool, Packages(.gz), Release, InRelease, Release.gpg, keyring, .sources.
    `keyring`: the public keyring to ship when it holds more than the signing key (a key
    rotation: builder.rotation); None: the signing key's alone."""
    _check_word("suite", suite)
    _check_word("component", component)
    if not debs:
        raise BuildError("an apt repository needs at least one .deb")
    entries = _pool_entries(debs, component)
    out = [
        Artifact(f"{REPO_DIR}/{pool}", a.data, a.secret, a.node)
        for pool, a, _ in sorted(entries.values(), key=lambda e: e[0])
    ]
    indexes = _indexes(entries, component)
    key = openpgp.parse_secret_key(signing_key)
    release = _release(indexes, label=key.user_id, suite=suite, component=component, mtime=mtime)
    dists = f"{REPO_DIR}/dists/{suite}"
    out += [Artifact(f"{dists}/{path}", indexes[path], secret=False) for path in sorted(indexes)]
    if repo_url is not None:  # never a placeholder: nodes would fail on it
        fingerprint = key.fingerprint.hex().upper()
        sources = sources_file(
            suite=suite, component=component, repo_url=repo_url, fingerprint=fingerprint
        )
        out.append(Artifact(f"{REPO_DIR}/{SOURCES_FILE}", sources, secret=False))
    return [
        *out,
        Artifact(f"{dists}/Release", release, secret=False),
        Artifact(
            f"{dists}/Release.gpg",
            openpgp.detached_signature(signing_key, release, created=mtime),
            secret=False,
        ),
        Artifact(
            f"{dists}/InRelease", openpgp.clearsign(signing_key, release, created=mtime), False
        ),
        Artifact(
            f"{REPO_DIR}/{KEYRING_FILE}",
            keyring if keyring is not None else openpgp.public_keyring(signing_key),
            secret=False,
        ),
    ]


class AptRepoWriter(Writer):
    """The signed apt repository of every Debian node's package (and its Consul agent
    package, consul-config-<node>, when [consul.agent] is on)."""

    name = "apt-repo"
    os = "debian"
    needs = ("deb", "consul-deb")
    signing = frozenset({"apt"})
    per_node = False

    def unfit(self, cluster: Cluster, node: Node) -> str | None:
        return None if node.os == "debian" else f"node {node.name} runs {node.os}, not Debian"

    def warnings(self, cluster: Cluster, nodes: Sequence[Node]) -> list[str]:
        if nodes and not cluster.packages.repo_url:
            return [
                f"{cluster.source}: packages.repo_url: unset: repo/debian/ gets no "
                "nomad-build.sources (nodes need the URL it is served at) and the seeds "
                "embed each node's package instead of installing from it"
            ]
        return []

    def check(self, cluster: Cluster, node: Node) -> list[str]:
        p = node.packages
        return [
            f"{cluster.source}: packages.{key}: {value!r}: letters, digits and . _ + - only"
            for key, value in (("apt_suite", p.apt_suite), ("apt_component", p.apt_component))
            if not _WORD.match(value) or "/" in value
        ]

    def outputs(
        self,
        cluster: Cluster,
        nodes: Sequence[Node],
        versions: Mapping[str, int],
        upstream: Sequence[Output] = (),
    ) -> list[Output]:
        debs = [o for o in upstream if o.node in {n.name for n in nodes}]
        if not debs:
            return []
        p = cluster.packages
        out, architectures = [], set()
        for o in debs:
            name = posixpath.basename(o.path)
            package, _, arch = name.removesuffix(".deb").split("_")
            architectures.add(arch)
            pool = f"pool/{p.apt_component}/{_pool_prefix(package)}/{package}/{name}"
            out.append(Output(f"{REPO_DIR}/{pool}", o.node, o.secret))
        dists = f"dists/{p.apt_suite}"
        shared = [f"{dists}/{f}" for f in ("Release", "Release.gpg", "InRelease")]
        for arch in sorted(architectures):
            base = f"{dists}/{p.apt_component}/binary-{arch}/Packages"
            shared += [base, base + ".gz"]
        shared += [KEYRING_FILE] + ([SOURCES_FILE] if p.repo_url else [])
        return out + [Output(f"{REPO_DIR}/{path}", None, secret=False) for path in shared]

    def build(self, inputs: BuildInputs, nodes: Sequence[Node]) -> list[Artifact]:
        debs = [inputs.package_of("deb", n) for n in nodes]
        consul = [inputs.package_if_built("consul-deb", n) for n in nodes]
        debs += [a for a in consul if a is not None]
        if not debs:
            return []
        p = inputs.cluster.packages
        assert inputs.keys.apt_secret is not None
        return build_apt_repo(
            debs,
            suite=p.apt_suite,
            component=p.apt_component,
            signing_key=inputs.keys.apt_secret,
            mtime=inputs.mtime,
            repo_url=p.repo_url,
            keyring=inputs.keys.apt_keyring,
        )
