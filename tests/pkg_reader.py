"""A strict reader of OpenBSD binary packages, written from pkg_add's rules.

Sources (OpenBSD src, usr.sbin/pkg_add): OpenBSD::Ustar (header parsing: ustar
magic/version, checksum, only file/dir/link/x types, pax "x" records of which
only path/linkpath count), OpenBSD::ArcCheck (verify_modes: "no @owner" needs
uname root, "no @group" needs gname bin/wheel, "no @mode" forbids suid/sgid and
other-write and needs group+other read -- "weird mode"), OpenBSD::PackingElement
(the keyword registry, @cwd/@owner/@group/@mode state, @sample copying the last
file, absolute names only for @sample/@rcscript/@extra/@ghost, +DESC etc. as info
files only before any @cwd), OpenBSD::PackageLocation (+CONTENTS first, info
files right after it), OpenBSD::Add (archive members matched by packing-list
name, sizes and SHA-256 checked), OpenBSD::PackageName (stem/version split at the
first "-<digit>", dewey version comparison).

It is stricter than pkg_add where pkg_add only warns or silently misbehaves
(a "no @group" warning, an @owner nobody creates, a tar owner that disagrees
with its annotation, obsolete keywords, trailing garbage): those are errors here.
Every violation raises PkgError with a message naming the rule.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import shutil
import subprocess
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from builder import signify


class PkgError(Exception):
    pass


# ---------------------------------------------------------------- package names


_SPLIT = re.compile(r"^(.*?)-(\d.*)$")


def split_name(name: str) -> tuple[str, str, tuple[str, ...]]:
    """(stem, version, flavors) as OpenBSD::PackageName splits a package name."""
    m = _SPLIT.match(name)
    if not m:
        raise PkgError(f"package name {name!r}: no version (no '-<digit>')")
    version, *flavors = m.group(2).split("-")
    return m.group(1), version, tuple(flavors)


_SUFFIX = re.compile(r"^(\d+)(rc|beta|pre|pl)(\d*)$")


def _parse_version(s: str) -> tuple[int, int, list[str], str, int]:
    v = p = -1
    if m := re.match(r"^(.*)v(\d+)$", s):
        s, v = m.group(1), int(m.group(2))
    if m := re.match(r"^(.*)p(\d+)$", s):
        s, p = m.group(1), int(m.group(2))
    deweys = s.split(".")
    suffix, suffix_value = "", 0
    if m := _SUFFIX.match(deweys[-1]):
        deweys[-1], suffix, suffix_value = m.group(1), m.group(2), int(m.group(3) or 0)
    return v, p, deweys, suffix, suffix_value


def _dewey_cmp(a: str, b: str) -> int:
    if a.isdigit() and b.isdigit():
        return (int(a) > int(b)) - (int(a) < int(b))
    ma, mb = re.match(r"^(\d+)([a-z]?)$", a), re.match(r"^(\d+)([a-z]?)$", b)
    if ma and mb:
        na, nb = int(ma.group(1)), int(mb.group(1))
        if na != nb:
            return (na > nb) - (na < nb)
        return (ma.group(2) > mb.group(2)) - (ma.group(2) < mb.group(2))
    return (a > b) - (a < b)


def compare_versions(a: str, b: str) -> int:
    """OpenBSD::PackageName::version::compare (epoch vN, pN, dewey numbers, suffixes)."""
    va, pa, da, sa, xa = _parse_version(a)
    vb, pb, db, sb, xb = _parse_version(b)
    if va != vb:
        return (va > vb) - (va < vb)
    if da == db and sa == sb and xa == xb:
        return (pa > pb) - (pa < pb)
    for i in range(max(len(da), len(db))):
        if i >= len(da):
            return -1
        if i >= len(db):
            return 1
        if r := _dewey_cmp(da[i], db[i]):
            return r
    if sa == sb:
        return (xa > xb) - (xa < xb)
    order = {"beta": 0, "pre": 1, "rc": 2, "": 3, "pl": 4}
    return (order[sa] > order[sb]) - (order[sa] < order[sb])


# ---------------------------------------------------------------- gzip


@dataclass(frozen=True)
class Gzip:
    comment: bytes | None  # the FCOMMENT (a signify -z signature) or None
    data: bytes  # decompressed


def read_gzip(data: bytes) -> Gzip:
    if data[:3] != b"\x1f\x8b\x08":
        raise PkgError("not a gzip file (magic)")
    flg = data[3]
    if flg & 0xE0:
        raise PkgError(f"gzip: reserved flag bits set ({flg:#x})")
    pos = 10
    comment = None
    if flg & 0x04:  # FEXTRA
        xlen = int.from_bytes(data[pos : pos + 2], "little")
        pos += 2 + xlen
    if flg & 0x08:  # FNAME
        pos = data.index(b"\0", pos) + 1
    if flg & 0x10:  # FCOMMENT
        end = data.index(b"\0", pos)
        comment = data[pos:end]
        pos = end + 1
    if flg & 0x02:  # FHCRC
        pos += 2
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        raw = d.decompress(data[pos:]) + d.flush()
    except zlib.error as e:
        raise PkgError(f"gzip: corrupt deflate data ({e})") from None
    if not d.eof:
        raise PkgError("gzip: truncated deflate stream")
    trailer = d.unused_data
    if len(trailer) < 8:
        raise PkgError("gzip: truncated trailer")
    if int.from_bytes(trailer[:4], "little") != zlib.crc32(raw):
        raise PkgError("gzip: CRC mismatch")
    if int.from_bytes(trailer[4:8], "little") != len(raw) & 0xFFFFFFFF:
        raise PkgError("gzip: length mismatch")
    if trailer[8:]:
        raise PkgError("gzip: data after the first member (one member expected)")
    return Gzip(comment, raw)


# ---------------------------------------------------------------- ustar


@dataclass(frozen=True)
class Member:
    name: str
    data: bytes
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    mtime: int
    type: str  # "file" (only files reach callers; other types are errors)


def _octal(field_: bytes, what: str, name: str) -> int:
    s = field_.rstrip(b"\0 ").lstrip(b" ")
    if s == b"":
        return 0
    if not re.fullmatch(rb"[0-7]+", s):
        raise PkgError(f"{name}: {what} field {field_!r} is not octal (pkg_add reads octal)")
    return int(s, 8)


def _cstr(field_: bytes) -> str:
    return field_.split(b"\0", 1)[0].decode("utf-8", "replace")


def read_ustar(raw: bytes) -> list[Member]:
    """Every member of a tar stream, refusing what OpenBSD::Ustar refuses (and more)."""
    if len(raw) % 512:
        raise PkgError("tar: size is not a multiple of 512")
    members: list[Member] = []
    pax: dict[str, str] | None = None
    off = 0
    while True:
        if off + 512 > len(raw):
            raise PkgError("tar: no end-of-archive marker")
        h = raw[off : off + 512]
        if h == b"\0" * 512:
            if raw[off:].strip(b"\0"):
                raise PkgError("tar: data after the end-of-archive marker")
            if len(raw) - off < 1024:
                raise PkgError("tar: end-of-archive marker is not two zero blocks")
            if pax is not None:
                raise PkgError("tar: pax header without a following member")
            return members
        name = _cstr(h[0:100])
        magic, version = h[257:263], h[263:265]
        if magic != b"ustar\0" or version != b"00":
            kind = "GNU tar" if magic == b"ustar " else "non-ustar"
            raise PkgError(f"{name}: {kind} header (pkg_add: Not an ustar archive header)")
        chk = _octal(h[148:156], "checksum", name)
        if sum(h[:148]) + 8 * 32 + sum(h[156:]) != chk:
            raise PkgError(f"{name}: bad header checksum")
        prefix = _cstr(h[345:500])
        if prefix:
            name = f"{prefix}/{name}"
        size = _octal(h[124:136], "size", name)
        typeflag = h[156:157]
        data = raw[off + 512 : off + 512 + size]
        if len(data) != size:
            raise PkgError(f"{name}: truncated member data")
        off += 512 + (size + 511) // 512 * 512
        if typeflag == b"x":
            if pax is not None:
                raise PkgError(f"{name}: two pax headers in a row")
            pax = _pax_records(data, name)
            continue
        if typeflag in (b"g", b"L", b"K"):
            raise PkgError(f"{name}: type {typeflag.decode()} header (unsupported by pkg_add)")
        if typeflag == b"5":
            raise PkgError(f"{name}: directory member (directories belong in the packing list)")
        if typeflag in (b"1", b"2"):
            raise PkgError(f"{name}: link member (not produced by nomad-build)")
        if typeflag not in (b"0", b"\0"):
            raise PkgError(f"{name}: member type {typeflag!r} is not a regular file")
        if pax is not None:
            if "linkpath" in pax:
                raise PkgError(f"{name}: pax linkpath on a regular file")
            name = pax.get("path", name)
            pax = None
        mtime = _octal(h[136:148], "mtime", name)
        if mtime != 0:
            raise PkgError(f"{name}: tar mtime {mtime} (must be 0; the time is in @ts)")
        uname, gname = _cstr(h[265:297]), _cstr(h[297:329])
        if not uname or not gname:
            raise PkgError(f"{name}: empty uname/gname (pkg_add looks owners up by name)")
        members.append(
            Member(
                name=name,
                data=data,
                mode=_octal(h[100:108], "mode", name) & 0o7777,
                uid=_octal(h[108:116], "uid", name),
                gid=_octal(h[116:124], "gid", name),
                uname=uname,
                gname=gname,
                mtime=mtime,
                type="file",
            )
        )


def _pax_records(data: bytes, name: str) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        m = re.match(rb"(\d+) ", data[pos:])
        if not m:
            raise PkgError(f"{name}: malformed pax record")
        length = int(m.group(1))
        rec = data[pos : pos + length]
        if len(rec) != length or not rec.endswith(b"\n") or b"=" not in rec:
            raise PkgError(f"{name}: malformed pax record")
        key, _, value = rec[m.end() : -1].partition(b"=")
        k = key.decode()
        if k not in ("path", "linkpath"):
            # pkg_add only honours path/linkpath; anything else would be silently lost.
            raise PkgError(f"{name}: pax key {k!r} (pkg_add ignores it)")
        out[k] = value.decode()
        pos += length
    return out


# ---------------------------------------------------------------- packing list


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# OpenBSD::PackingElement's registry (modern pkg_add).
KEYWORDS = _words(
    """file sample ghost rcscript info shell man lib bin static-lib so pkgconfig ltlib
    comment sha symlink link temp size ts option name localbase url version conflict
    depend wantlib libset pkgpath ask-update newuser newgroup cwd owner group mode tag
    define-tag exec exec-always exec-add exec-update unexec unexec-always unexec-update
    unexec-delete extraunexec dir fontdir mandir extra extraglob arch signer
    digital-signature"""
)
# Registered as obsolete: pkg_add warns and flags the package deprecated.
OBSOLETE = _words(
    """src display mtree ignore_inst dirrm pkgcfl pkgdep newdepend libdepend endfake
    ignore vendor incompatibility md5 sysctl"""
)
FILE_KEYWORDS = _words("file rcscript info shell man lib bin static-lib so pkgconfig ltlib")
ABSOLUTE_OK = _words("sample sampledir rcscript extra ghost extraglob")
SPECIAL_FILES = ("+DESC", "+DISPLAY", "+UNDISPLAY")  # info files a modern package may carry
UNIQUE = _words("name arch localbase url signer digital-signature version")
ARCHES = _words("* amd64 aarch64 arm i386 mips64 mips64el powerpc powerpc64 riscv64 sparc64")
# Accounts every OpenBSD install has (an @owner/@group must exist or be created).
BASE_USERS = _words("root daemon operator bin build sshd www nobody")
BASE_GROUPS = _words(
    "wheel daemon kmem sys tty operator bin wsrc users auth games staff wobj sshd "
    "guest utmp crontab www network authpf dialer nogroup nobody"
)
_ACCOUNT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass
class Element:
    keyword: str  # "file" for plain lines, "special", "dir", "sampledir", or the @keyword
    name: str  # as written (for files: the archive member name)
    cwd: str
    owner: str | None = None
    group: str | None = None
    mode: str | None = None
    sha: bytes | None = None
    size: int | None = None
    ts: int | None = None
    copyfrom: Element | None = None  # @sample: the file it copies
    line: int = 0

    @property
    def fullname(self) -> str:
        if self.name.startswith("/") or self.cwd == ".":
            return self.name
        return (self.cwd.rstrip("/") + "/" + self.name).replace("//", "/")

    @property
    def is_file(self) -> bool:
        return self.keyword in FILE_KEYWORDS or self.keyword == "special"


@dataclass
class Plist:
    elements: list[Element] = field(default_factory=list)
    unique: dict[str, str] = field(default_factory=dict)
    comments: list[str] = field(default_factory=list)
    pkgpath: str | None = None
    ftp: str | None = None
    depends: list[tuple[str, str, str]] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    newgroups: dict[str, str] = field(default_factory=dict)
    newusers: dict[str, list[str]] = field(default_factory=dict)
    execs: list[tuple[str, str]] = field(default_factory=list)  # (keyword, command)
    lines: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[Element]:
        return [e for e in self.elements if e.is_file]

    def of(self, keyword: str) -> list[Element]:
        return [e for e in self.elements if e.keyword == keyword]


def _canonical_name(name: str, keyword: str, n: int) -> None:
    if not name:
        raise PkgError(f"+CONTENTS line {n}: @{keyword} without a name")
    if name.startswith("/") and keyword not in ABSOLUTE_OK:
        raise PkgError(f"+CONTENTS line {n}: Absolute name forbidden: {name}")
    body = name.strip("/")
    parts = body.split("/")
    if any(p in ("", ".", "..") for p in parts) or name.startswith("./"):
        raise PkgError(f"+CONTENTS line {n}: name {name!r} is not canonical")
    if any(c.isspace() for c in name):
        raise PkgError(f"+CONTENTS line {n}: name {name!r} contains white space")


def parse_plist(text: str) -> Plist:
    """The packing list, checked line by line against PackingElement's rules."""
    if not text.endswith("\n"):
        raise PkgError("+CONTENTS: last line not terminated")
    pl = Plist(lines=text.split("\n")[:-1])
    cwd = "."
    seen_cwd = False
    owner = group = mode = None
    last: Element | None = None  # last file-like element (@sha/@size/@ts/@sample attach here)
    annotatable = False  # @sha/@size/@ts must follow their file directly
    names: set[str] = set()
    for n, line in enumerate(pl.lines, 1):
        if line != line.strip() or not line:
            raise PkgError(f"+CONTENTS line {n}: blank or padded line {line!r}")
        m = re.match(r"^@(\S+)\s*(.*)$", line)
        if not m:
            keyword, args = "file", line
        else:
            keyword, args = m.group(1), m.group(2)
            if keyword in OBSOLETE:
                raise PkgError(f"+CONTENTS line {n}: obsolete construct @{keyword}")
            if keyword not in KEYWORDS:
                raise PkgError(f"+CONTENTS line {n}: Unknown element: {line}")
        if n == 1 and keyword != "name":
            raise PkgError("+CONTENTS: the first line must be @name")
        if keyword in UNIQUE:
            if keyword in pl.unique:
                raise PkgError(f"+CONTENTS line {n}: second @{keyword}")
            pl.unique[keyword] = args
        if keyword in ("sha", "size", "ts"):
            if last is None or not annotatable:
                raise PkgError(f"+CONTENTS line {n}: @{keyword} does not follow a file")
            if getattr(last, keyword) is not None:
                raise PkgError(f"+CONTENTS line {n}: second @{keyword} for {last.name}")
            if keyword == "sha":
                try:
                    digest = base64.b64decode(args, validate=True)
                except binascii.Error:
                    digest = b""
                if len(digest) != 32:
                    raise PkgError(f"+CONTENTS line {n}: @sha {args!r} is not base64 SHA-256")
                last.sha = digest
            elif not args.isdigit():
                raise PkgError(f"+CONTENTS line {n}: @{keyword} {args!r} is not a number")
            elif keyword == "size":
                last.size = int(args)
            else:
                if last.keyword == "special":
                    raise PkgError(f"+CONTENTS line {n}: @ts on {last.name} (ignored there)")
                last.ts = int(args)
            continue
        annotatable = False
        if keyword == "cwd":
            if not args.startswith("/"):
                raise PkgError(f"+CONTENTS line {n}: @cwd {args!r} is not absolute")
            cwd, seen_cwd = args, True
            continue
        if keyword in ("owner", "group"):
            if args and not _ACCOUNT.match(args):
                raise PkgError(f"+CONTENTS line {n}: @{keyword} {args!r} is not a name")
            if args and keyword == "owner" and args not in BASE_USERS | pl.newusers.keys():
                raise PkgError(f"+CONTENTS line {n}: @owner {args}: no such user (no @newuser)")
            if args and keyword == "group" and args not in BASE_GROUPS | pl.newgroups.keys():
                raise PkgError(f"+CONTENTS line {n}: @group {args}: no such group (no @newgroup)")
            if keyword == "owner":
                owner = args or None
            else:
                group = args or None
            continue
        if keyword == "mode":
            if args and not re.fullmatch(r"[0-7]{3,4}", args):
                raise PkgError(f"+CONTENTS line {n}: @mode {args!r} is not an octal mode")
            mode = args or None
            continue
        if keyword == "comment":
            if em := re.match(r"^(?:subdir|pkgpath)=(\S+)\s+(?:cdrom=\S+\s+)?ftp=(\S+)$", args):
                if pl.pkgpath is not None:
                    raise PkgError(f"+CONTENTS line {n}: second pkgpath comment")
                pl.pkgpath, pl.ftp = em.group(1), em.group(2)
            elif args.startswith(("subdir=", "pkgpath=")):
                raise PkgError(f"+CONTENTS line {n}: malformed pkgpath comment {args!r}")
            else:
                pl.comments.append(args)
            continue
        if keyword == "name":
            if n != 1:
                raise PkgError(f"+CONTENTS line {n}: @name must be the first line")
            continue
        if keyword == "arch":
            for a in args.split(","):
                if a not in ARCHES:
                    raise PkgError(f"+CONTENTS line {n}: @arch {a!r} is unknown")
            continue
        if keyword == "depend":
            parts = args.split(":")
            if len(parts) != 3 or not re.fullmatch(r"[\w.+-]+/[\w.+,-]+", parts[0]):
                raise PkgError(f"+CONTENTS line {n}: @depend {args!r} is not pkgpath:spec:default")
            split_name(parts[2])  # the default must be a full package name
            if not re.match(r"^[\w.+-]+-(\*|[<>=]|\d)", parts[1]):
                raise PkgError(f"+CONTENTS line {n}: @depend pattern {parts[1]!r}")
            pl.depends.append((parts[0], parts[1], parts[2]))
            continue
        if keyword == "conflict":
            pl.conflicts.append(args)
            continue
        if keyword == "newgroup":
            parts = args.split(":")
            if (
                len(parts) != 2
                or not _ACCOUNT.match(parts[0])
                or not re.fullmatch(r"!?\d*", parts[1])
            ):
                raise PkgError(f"+CONTENTS line {n}: @newgroup {args!r} is not name:gid")
            pl.newgroups[parts[0]] = parts[1]
            continue
        if keyword == "newuser":
            parts = args.split(":")
            if (
                len(parts) != 7
                or not _ACCOUNT.match(parts[0])
                or not re.fullmatch(r"!?\d*", parts[1])
            ):
                raise PkgError(f"+CONTENTS line {n}: @newuser {args!r} needs 7 fields")
            if parts[2].lstrip("!") not in BASE_GROUPS | pl.newgroups.keys():
                raise PkgError(f"+CONTENTS line {n}: @newuser group {parts[2]!r} does not exist")
            pl.newusers[parts[0]] = parts
            continue
        if keyword.startswith(("exec", "unexec", "extraunexec")):
            if not args:
                raise PkgError(f"+CONTENTS line {n}: empty @{keyword}")
            if re.search(r"%[^FDBf]", args) or args.endswith("%"):
                raise PkgError(f"+CONTENTS line {n}: @{keyword}: bad % expansion")
            pl.execs.append((keyword, args))
            continue
        # file-like elements
        if keyword == "file" and args in (*SPECIAL_FILES, "+CONTENTS"):
            if args == "+CONTENTS":
                raise PkgError(f"+CONTENTS line {n}: +CONTENTS lists itself")
            if seen_cwd:
                raise PkgError(f"+CONTENTS line {n}: {args} after @cwd is not an info file")
            if args in names:
                raise PkgError(f"+CONTENTS line {n}: {args} listed twice")
            names.add(args)
            last = Element("special", args, ".", line=n)
            pl.elements.append(last)
            annotatable = True
            continue
        if keyword == "file" and args.startswith("+"):
            raise PkgError(f"+CONTENTS line {n}: unknown info file {args}")
        is_dir = args.endswith("/") or keyword in ("dir", "fontdir", "mandir")
        if keyword == "file" and is_dir:
            keyword = "dir"
        if keyword == "sample" and args.endswith("/"):
            keyword = "sampledir"
        located = FILE_KEYWORDS | {"dir", "sample", "sampledir", "extra"}
        if keyword in located and not seen_cwd and not args.startswith("/"):
            raise PkgError(f"+CONTENTS line {n}: {args} before any @cwd")
        _canonical_name(args.rstrip("/") if is_dir or keyword == "sampledir" else args, keyword, n)
        el = Element(
            keyword,
            args.rstrip("/") if keyword in ("dir", "sampledir") else args,
            cwd,
            owner=owner,
            group=group,
            mode=mode,
            line=n,
        )
        if el.fullname in names:
            raise PkgError(f"+CONTENTS line {n}: {el.fullname} listed twice")
        names.add(el.fullname)
        if keyword == "sample":
            if last is None or last.keyword not in ("file",):
                raise PkgError(f"+CONTENTS line {n}: @sample does not follow a plain file")
            el.copyfrom = last
        pl.elements.append(el)
        if keyword in FILE_KEYWORDS:
            last = el
            annotatable = True
    if "name" not in pl.unique:
        raise PkgError("+CONTENTS: no @name")
    for e in pl.files:
        if e.sha is None or e.size is None:
            raise PkgError(f"+CONTENTS: {e.name} lacks @sha/@size")
        if e.keyword != "special" and e.ts is None:
            raise PkgError(f"+CONTENTS: {e.name} lacks @ts")
    for kw in ("owner", "group", "mode"):
        if {"owner": owner, "group": group, "mode": mode}[kw] is not None:
            raise PkgError(f"+CONTENTS: @{kw} not reset at the end")
    return pl


# ---------------------------------------------------------------- the package


@dataclass
class Package:
    name: str
    stem: str
    version: str
    plist: Plist
    members: list[Member]
    signature: bytes | None  # the gzip FCOMMENT
    signed_by: signify.ZSignature | None

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def contents(self) -> str:
        return self.members[0].data.decode()

    def installed(self) -> tuple[dict[str, Installed], dict[str, Installed]]:
        """(files, dirs) a pkg_add of this package creates, with final owner/group/mode.

        Payload files keep the tar header's owner/mode unless annotated; an @sample
        copy is made by File::Copy (0644 & umask 022, root, group of the directory:
        wheel here) and then gets the annotations in force at the @sample line.
        """
        files: dict[str, Installed] = {}
        dirs: dict[str, Installed] = {}
        for e in self.plist.elements:
            if e.keyword in FILE_KEYWORDS:
                m = self.member(e.name)
                files[e.fullname] = Installed(
                    m.data,
                    e.owner or m.uname,
                    e.group or m.gname,
                    int(e.mode, 8) if e.mode else m.mode,
                )
            elif e.keyword == "sample":
                assert e.copyfrom is not None
                files[e.fullname] = Installed(
                    self.member(e.copyfrom.name).data,
                    e.owner or "root",
                    e.group or "wheel",
                    int(e.mode, 8) if e.mode else 0o644,
                )
            elif e.keyword in ("dir", "sampledir"):
                dirs[e.fullname] = Installed(
                    b"", e.owner or "root", e.group or "wheel", int(e.mode, 8) if e.mode else 0o755
                )
        return files, dirs


@dataclass(frozen=True)
class Installed:
    data: bytes
    owner: str
    group: str
    mode: int


def _verify_modes(e: Element, m: Member) -> None:
    """ArcCheck::verify_modes, with its warning made an error, plus annotation agreement."""
    if e.owner is None and m.uname != "root":
        raise PkgError(f"{e.name}: no @owner but tar owner {m.uname} (must be root)")
    if e.group is None and m.gname not in ("bin", "wheel"):
        raise PkgError(f"{e.name}: no @group but tar group {m.gname} (must be bin or wheel)")
    if e.mode is None:
        weird = m.mode & 0o6002 or not m.mode & 0o004 or not m.mode & 0o040 or m.mode & 0o020
        if weird:
            raise PkgError(f"{e.name}: weird mode {m.mode:04o} without @mode")
    elif int(e.mode, 8) != m.mode:
        raise PkgError(f"{e.name}: tar mode {m.mode:o} disagrees with @mode {e.mode}")
    if e.owner is not None and m.uname != e.owner:
        raise PkgError(f"{e.name}: tar owner {m.uname} disagrees with @owner {e.owner}")
    if e.group is not None and m.gname != e.group:
        raise PkgError(f"{e.name}: tar group {m.gname} disagrees with @group {e.group}")


def read_package(
    data: bytes,
    *,
    pub: bytes | None = None,
    expect_stem: str | None = None,
    expect_version: str | None = None,
) -> Package:
    """Read and check a package; with pub, the signify -z signature must verify."""
    gz = read_gzip(data)
    signed_by = None
    if pub is not None:
        try:
            signed_by = signify.zverify(data, pub)
        except Exception as err:
            raise PkgError(f"signature: {err}") from None
    members = read_ustar(gz.data)
    if not members or members[0].name != "+CONTENTS":
        raise PkgError("+CONTENTS is not the first member")
    try:
        text = members[0].data.decode("utf-8")
    except UnicodeDecodeError:
        raise PkgError("+CONTENTS is not UTF-8") from None
    plist = parse_plist(text)
    name = plist.unique["name"]
    stem, version, flavors = split_name(name)
    if flavors:
        raise PkgError(f"{name}: unexpected flavors {flavors}")
    if re.search(r"-\d", stem):
        raise PkgError(f"{name}: stem {stem} contains -<digit>")
    if expect_stem is not None and stem != expect_stem:
        raise PkgError(f"{name}: pkg_add reads stem {stem!r}, not {expect_stem!r}")
    if expect_version is not None and version != expect_version:
        raise PkgError(f"{name}: pkg_add reads version {version!r}, not {expect_version!r}")
    for m in members[1:]:
        if m.name == "+CONTENTS":
            raise PkgError("+CONTENTS appears twice")

    # Info files right after +CONTENTS (PackageLocation reads them until a non-info
    # name), then the payload in packing-list order, one member per file element.
    specials = [e for e in plist.files if e.keyword == "special"]
    payload = [e for e in plist.files if e.keyword != "special"]
    if not specials or specials[0].name != "+DESC":
        raise PkgError("+DESC missing (must be the first info file)")
    expected = [e.name for e in specials + payload]
    actual = [m.name for m in members[1:]]
    missing = [n for n in expected if n not in actual]
    extra = [n for n in actual if n not in expected]
    if missing:
        raise PkgError(f"packing-list entries without an archive member: {missing}")
    if extra:
        raise PkgError(f"archive members not in the packing list: {extra}")
    if len(set(actual)) != len(actual):
        raise PkgError("an archive member appears twice")
    if actual != expected:
        raise PkgError(f"archive order {actual} differs from packing-list order {expected}")
    for e, m in zip(specials + payload, members[1:], strict=True):
        if e.size != len(m.data):
            raise PkgError(f"{e.name}: @size {e.size} but the member has {len(m.data)} bytes")
        if e.sha != hashlib.sha256(m.data).digest():
            raise PkgError(f"{e.name}: @sha does not match the member")
        _verify_modes(e, m)
    for m in members:
        if m.name.startswith("+") and (m.uname != "root" or m.gname not in ("bin", "wheel")):
            raise PkgError(f"{m.name}: info files are root-owned")
    return Package(name, stem, version, plist, members, gz.comment, signed_by)


# ---------------------------------------------------------------- repositories

# get_http_list() of three pkg_add generations (all case-insensitive, line by line).
HTTP_LIST_RES = (
    re.compile(r"\<A\s+HREF=\"(.*?)\.tgz\"\>", re.I),  # ... -> name without .tgz
    re.compile(r"\<A\s+HREF=\"(.*?\.tgz)\"\>", re.I),
    re.compile(r"\<A[^>]*\s+HREF=\"(.*?\.tgz)\"", re.I),
)


def http_listing(page: str) -> list[list[str]]:
    """Package names each pkg_add generation finds in an HTTP directory listing."""
    out = []
    for rx in HTTP_LIST_RES:
        names = []
        for line in page.split("\n"):
            for href in rx.findall(line):
                href = href.rsplit("/", 1)[-1]
                href = re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), href)
                name = href.removesuffix(".tgz")
                if re.match(r"^(.*\-\d.*)$", name):  # add_to_list
                    names.append(name)
        out.append(names)
    return out


# ---------------------------------------------------------------- the real signify


def signify_tool(
    *args: str, input: bytes | None = None, cwd: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Debian's signify-openbsd (OpenBSD's signify), the oracle for keys and signatures."""
    exe = shutil.which("signify-openbsd")
    assert exe, "signify-openbsd is required (apt-get install signify-openbsd)"
    return subprocess.run([exe, *args], input=input, cwd=cwd, capture_output=True, check=False)


def pkg_add_verify(pkg: bytes, pub: bytes, key_name: str, workdir: Path) -> bytes | None:
    """Run the check pkg_add runs, `signify -zV -t pkg -x - -m -` with the key taken
    from /etc/signify/<name from the signature>.pub, in a private mount namespace
    whose /etc is an overlay (the host's /etc is untouched).

    Returns signify's output (the verified gzip) or raises PkgError when signify
    refuses; None when this machine cannot make the namespace (no unshare/overlayfs).
    """
    exe = shutil.which("signify-openbsd")
    unshare = shutil.which("unshare")
    assert exe, "signify-openbsd is required (apt-get install signify-openbsd)"
    if unshare is None or os.geteuid() != 0:
        return None
    upper, work, keys = workdir / "upper", workdir / "work", workdir / "keys"
    for d in (upper, work, keys):
        d.mkdir(parents=True, exist_ok=True)
    (keys / f"{key_name}.pub").write_bytes(pub)
    script = (
        'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc || exit 99\n'
        'mkdir -p /etc/signify && cp "$3"/*.pub /etc/signify/ || exit 99\n'
        'exec "$4" -zV -t pkg -x - -m -\n'
    )
    r = subprocess.run(
        [unshare, "--mount", "sh", "-c", script, "sh", str(upper), str(work), str(keys), exe],
        input=pkg,
        capture_output=True,
        check=False,
    )
    if r.returncode == 99 or b"unshare failed" in r.stderr:
        return None
    if r.returncode != 0:
        raise PkgError(f"signify -zV -t pkg: {r.stderr.decode(errors='replace').strip()}")
    return r.stdout
