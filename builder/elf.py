"""The few facts of an ELF executable the package writers need: class, byte order,
OS ABI and machine from the header; from the tables, whether it has an interpreter
(dynamically linked), a symbol table (not stripped), and its section names. One
reader for every format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from builder.errors import UserError

MAGIC = b"\x7fELF"
OSABI_LINUX = (0, 3)  # ELFOSABI_NONE, ELFOSABI_GNU
OSABI_OPENBSD = 12
_PT_INTERP = 3
_SHT_SYMTAB = 2


@dataclass(frozen=True)
class ElfHeader:
    bits: int  # 32 | 64
    order: Literal["little", "big"]
    osabi: int
    machine: int


@dataclass(frozen=True)
class ElfTables:
    dynamic: bool  # has PT_INTERP: needs the C library
    symbols: bool  # has SHT_SYMTAB: not stripped
    sections: frozenset[bytes]  # section names, e.g. b".note.openbsd.ident"


def is_elf(data: bytes) -> bool:
    return data[:4] == MAGIC


def read_header(data: bytes, what: str) -> ElfHeader:
    """The ELF header's facts; UserError naming `what` for anything else."""
    if not is_elf(data) or len(data) < 64 or data[4] not in (1, 2) or data[5] not in (1, 2):
        raise UserError(f"{what}: not an ELF executable (or a malformed ELF header)")
    order: Literal["little", "big"] = "little" if data[5] == 1 else "big"
    machine = int.from_bytes(data[18:20], order)
    return ElfHeader(bits=64 if data[4] == 2 else 32, order=order, osabi=data[7], machine=machine)


def read_tables(data: bytes, header: ElfHeader, what: str) -> ElfTables:
    """Program and section header facts; UserError when they lie outside the file."""

    def num(off: int, size: int) -> int:
        if off + size > len(data):
            raise UserError(f"{what}: truncated ELF headers")
        return int.from_bytes(data[off : off + size], header.order)

    if header.bits == 64:
        phoff, shoff = num(32, 8), num(40, 8)
        phentsize, phnum, shentsize, shnum, shstrndx = (num(o, 2) for o in (54, 56, 58, 60, 62))
        sh_offset_at, sh_offset_size = 24, 8
    else:
        phoff, shoff = num(28, 4), num(32, 4)
        phentsize, phnum, shentsize, shnum, shstrndx = (num(o, 2) for o in (42, 44, 46, 48, 50))
        sh_offset_at, sh_offset_size = 16, 4
    dynamic = any(num(phoff + i * phentsize, 4) == _PT_INTERP for i in range(phnum))
    types = [num(shoff + i * shentsize + 4, 4) for i in range(shnum)] if shoff else []
    sections: set[bytes] = set()
    if shoff and shstrndx < shnum:
        strtab = num(shoff + shstrndx * shentsize + sh_offset_at, sh_offset_size)
        for i in range(shnum):
            start = strtab + num(shoff + i * shentsize, 4)
            end = data.find(b"\0", start)
            if start < len(data) and end >= 0:
                sections.add(data[start:end])
    return ElfTables(dynamic=dynamic, symbols=_SHT_SYMTAB in types, sections=frozenset(sections))
