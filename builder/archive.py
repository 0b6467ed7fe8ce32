"""Deterministic archives shared by every artifact writer: ar, ustar, gzip.

Same entries in ⇒ same bytes out: fixed mtimes, caller-given order, normalised
owners, no host names or build paths. Tar output is POSIX ustar (magic
"ustar\\0", version "00"); names too long for ustar go through pax "x" headers,
the only extension OpenBSD's pkg_add accepts.
"""

from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass
from typing import Literal

EntryType = Literal["file", "dir", "symlink"]


@dataclass(frozen=True)
class TarEntry:
    name: str  # member name as stored, e.g. "./etc/nomad/nomad.hcl" or "+CONTENTS"
    data: bytes = b""
    mode: int = 0o644
    mtime: int = 0
    uid: int = 0
    gid: int = 0
    uname: str = "root"
    gname: str = "root"
    type: EntryType = "file"
    linkname: str = ""


_BLOCK = 512
_RECORD = 20 * _BLOCK  # tar's default blocking factor, as tarfile and GNU tar pad to
_TYPES = {"file": b"0", "dir": b"5", "symlink": b"2"}
_MAGIC = b"ustar\x0000"  # POSIX: "ustar\0" then version "00"


def ustar(entries: list[TarEntry]) -> bytes:
    """A tar stream of the entries in the order given (callers sort as their format wants).

    Headers are written directly as POSIX ustar blocks (the bytes Python's tarfile writes
    in PAX format, without its per-member copying and dict building); an entry that
    ustar cannot hold (a name over 100 bytes or not ASCII, a number too large) gets its
    pax "x" header from tarfile itself.
    """
    out: list[bytes] = []
    for e in entries:
        data = e.data if e.type == "file" else b""
        out.append(_header(e, len(data)))
        if data:
            out.append(data)
            pad = -len(data) % _BLOCK
            if pad:
                out.append(bytes(pad))
    size = sum(len(b) for b in out) + 2 * _BLOCK
    out.append(bytes(2 * _BLOCK + (-size % _RECORD)))
    return b"".join(out)


def _fits(text: str, length: int) -> bool:
    return text.isascii() and len(text) <= length


def _header(e: TarEntry, size: int) -> bytes:
    name = e.name + "/" if e.type == "dir" and not e.name.endswith("/") else e.name
    linkname = e.linkname if e.type == "symlink" else ""
    if not (
        _fits(name, 100)
        and _fits(linkname, 100)
        and _fits(e.uname, 32)
        and _fits(e.gname, 32)
        and 0 <= e.uid < 8**7
        and 0 <= e.gid < 8**7
        and 0 <= size < 8**11
        and 0 <= e.mtime < 8**11
    ):
        return _pax_header(e, size)
    head = b"".join(
        (
            name.encode().ljust(100, b"\0"),
            b"%07o\0" % (e.mode & 0o7777),
            b"%07o\0" % e.uid,
            b"%07o\0" % e.gid,
            b"%011o\0" % size,
            b"%011o\0" % e.mtime,
            b"        ",  # checksum, counted as spaces
            _TYPES[e.type],
            linkname.encode().ljust(100, b"\0"),
            _MAGIC,
            e.uname.encode().ljust(32, b"\0"),
            e.gname.encode().ljust(32, b"\0"),
            bytes(16 + 155),  # devmajor, devminor (no device), prefix (unused)
        )
    ).ljust(_BLOCK, b"\0")
    checksum = b"%06o\0" % sum(head)
    return head[:148] + checksum + head[155:]


def _pax_header(e: TarEntry, size: int) -> bytes:
    """tarfile's header for an entry ustar cannot hold: a pax "x" header first."""
    info = tarfile.TarInfo(e.name)
    info.mode = e.mode
    info.mtime = e.mtime
    info.uid, info.gid = e.uid, e.gid
    info.uname, info.gname = e.uname, e.gname
    info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}[
        e.type
    ]
    info.linkname = e.linkname if e.type == "symlink" else ""
    info.size = size
    return info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")


# zlib level 1 (gzip --fast): on these small text archives ~35% less CPU than level 6
# for ~8% more bytes (a 20 KB package: 3.9 KB instead of 3.7 KB), and far faster on a
# bundled Nomad binary; a build compresses thousands of members. Every consumer (dpkg,
# apt, pkg_add, signify -z) reads any level. Builds before this used level 6 (before
# that, 9), so their compressed bytes differ. Debian's changelog.gz stays at level 9:
# policy 12.7 (lintian: changelog-not-compressed-with-max-compression) asks for it, and
# it is a few hundred bytes.
GZIP_LEVEL = 1
_XFL = {9: 2, 1: 4}  # gzip's "extra flags": max compression / fastest; else 0


def gzip_bytes(data: bytes, *, comment: bytes | None = None, level: int = GZIP_LEVEL) -> bytes:
    """gzip with mtime 0 and no file name, so output depends on the data alone (the bytes
    Python's gzip module writes: OS 255 "unknown"); with `comment`, a member whose header
    carries FCOMMENT (used by signify -z, OS 3 as signify writes it). `level` 9 where a
    policy asks for it (Debian's changelog.gz)."""
    comp = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = comp.compress(data) + comp.flush()
    xfl = _XFL.get(level, 0).to_bytes(1, "little")
    if comment is None:
        header = b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + xfl + b"\xff"
    else:
        header = b"\x1f\x8b\x08\x10" + b"\x00\x00\x00\x00" + xfl + b"\x03" + comment + b"\x00"
    trailer = (zlib.crc32(data) & 0xFFFFFFFF).to_bytes(4, "little") + (
        len(data) & 0xFFFFFFFF
    ).to_bytes(4, "little")
    return header + body + trailer


def ar(members: list[tuple[str, bytes]], *, mtime: int) -> bytes:
    """A System V / GNU ar archive as dpkg writes it (names ≤ 15 chars, no trailing '/')."""
    out = [b"!<arch>\n"]
    for name, data in members:
        if len(name) > 15:
            raise ValueError(f"ar member name too long: {name}")
        header = f"{name:<16}{mtime:<12}{0:<6}{0:<6}{0o100644:<8o}{len(data):<10}`\n"
        assert len(header) == 60
        out.append(header.encode("ascii"))
        out.append(data)
        if len(data) % 2:
            out.append(b"\n")
    return b"".join(out)
