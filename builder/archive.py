"""Deterministic archives shared by every artifact writer: ar, ustar, gzip.

Same entries in ⇒ same bytes out: fixed mtimes, caller-given order, normalised
owners, no host names or build paths. Tar output is POSIX ustar (magic
"ustar\\0", version "00"); names too long for ustar go through pax "x" headers,
the only extension OpenBSD's pkg_add accepts.
"""

from __future__ import annotations

import gzip
import io
import tarfile
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


def ustar(entries: list[TarEntry]) -> bytes:
    """A tar stream of the entries in the order given (callers sort as their format wants)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.mode = e.mode
            info.mtime = e.mtime
            info.uid, info.gid = e.uid, e.gid
            info.uname, info.gname = e.uname, e.gname
            if e.type == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif e.type == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = e.linkname
                tar.addfile(info)
            else:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
    return buf.getvalue()


def gzip_bytes(data: bytes, *, comment: bytes | None = None) -> bytes:
    """gzip with mtime 0 and no file name, so output depends on the data alone."""
    if comment is None:
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
            gz.write(data)
        return buf.getvalue()
    # A gzip member whose header carries FCOMMENT (used by signify -z).
    import zlib

    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = comp.compress(data) + comp.flush()
    header = b"\x1f\x8b\x08\x10" + b"\x00\x00\x00\x00" + b"\x02\x03" + comment + b"\x00"
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
