"""The store's memory: which files it ever created, and what it wrote into them.

`<state>/ledger.json` (mode 0600):

    {
      "format": 1,
      "files": {
        "ca/ca.key":     {"created": "2025-06-01T12:00:00Z", "sha256": "<hex>"},
        "versions.json": {"created": "2025-06-01T12:00:00Z", "sha256": null},
        "nodes/n1/key.pem": {"created": "...", "sha256": "<new>", "pending": "<old>"}
      },
      "check": "<sha256 of the canonical JSON of files>"
    }

`sha256` is the digest of the bytes the store last wrote; null means the entry only
records that the file exists (files that legitimately change outside the ledger's
rhythm, like versions.json, or public files the caller can recompute and verify).
`pending` is present only while a write is in flight: the ledger is written (with
`pending` = the digest the file had before, or null if it had none) BEFORE the files
are renamed into place, and written again without it afterwards. So a crash at any
point leaves each file either as the ledger says, or as `pending` says (the write
never landed: an interrupted write, healed by doing it again), never an unknown one.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from builder.errors import UserError

__all__ = ["LEDGER_NAME", "Entry", "Ledger", "Status", "sha256"]

LEDGER_NAME = "ledger.json"
FORMAT = 1
_NONE = "none"  # `pending` value: the file did not exist before the write


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Status(enum.Enum):
    NEW = "never created"  # no entry and no file (or a creation that never landed)
    OK = "as recorded"
    LOST = "missing"
    DAMAGED = "changed since nomad-build wrote it"
    INTERRUPTED = "left behind by an interrupted write"
    UNRECORDED = "present but not in the ledger"


@dataclass(frozen=True)
class Entry:
    created: str
    sha256: str | None
    pending: str | None = None  # in flight: the digest before, or _NONE


@dataclass
class Ledger:
    path: Path
    entries: dict[str, Entry]
    exists: bool

    @classmethod
    def load(cls, directory: Path) -> Ledger:
        path = directory / LEDGER_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path, {}, exists=False)
        except OSError as e:
            raise UserError(f"{path}: unreadable ({e.strerror}); {restore_ledger()}") from None
        entries = _parse(raw)
        if entries is None:
            raise UserError(f"{path}: damaged (not a nomad-build ledger); {restore_ledger()}")
        return cls(path, entries, exists=True)

    def status(self, rel: str, data: bytes | None) -> Status:
        entry = self.entries.get(rel)
        if entry is None:
            return Status.NEW if data is None else Status.UNRECORDED
        if data is None:
            return Status.NEW if entry.pending == _NONE else Status.LOST
        if entry.sha256 is None:
            return Status.OK
        digest = sha256(data)
        if digest == entry.sha256:
            return Status.OK
        if entry.pending is not None and digest == entry.pending:
            return Status.INTERRUPTED
        return Status.DAMAGED

    def begin(self, changes: dict[str, tuple[bytes, bytes | None, bool]], now: datetime) -> bytes:
        """Record `rel -> (new bytes, old bytes or None, digest it?)` as in flight;
        returns the ledger's new bytes, to be written BEFORE the files."""
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        for rel, (new, old, digest) in changes.items():
            prev = self.entries.get(rel)
            self.entries[rel] = Entry(
                created=prev.created if prev is not None else stamp,
                sha256=sha256(new) if digest else None,
                pending=sha256(old) if old is not None else _NONE,
            )
        return self.dump()

    def finish(self, rels: list[str]) -> bytes:
        """The files landed: drop their `pending`; returns the ledger's new bytes."""
        for rel in rels:
            self.entries[rel] = replace(self.entries[rel], pending=None)
        return self.dump()

    def dump(self) -> bytes:
        files: dict[str, dict[str, Any]] = {}
        for rel, e in sorted(self.entries.items()):
            files[rel] = {"created": e.created, "sha256": e.sha256}
            if e.pending is not None:
                files[rel]["pending"] = None if e.pending == _NONE else e.pending
        body = {"format": FORMAT, "files": files, "check": self_check(files)}
        return (json.dumps(body, indent=2) + "\n").encode()


def restore_ledger() -> str:
    return (
        "restore it from your backup (without it nomad-build cannot tell a lost secret "
        "from one never made, and would silently make new ones)"
    )


def _parse(raw: bytes) -> dict[str, Entry] | None:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    files = data.get("files")
    if not isinstance(files, dict):
        return None
    # Its own digest: a changed byte in the ledger is the ledger's damage, not a
    # secret's (the digests it records could not tell the two apart).
    if data.get("check") != self_check(files):
        return None
    entries: dict[str, Entry] = {}
    for rel, e in files.items():
        entry = _entry(e)
        if entry is None:
            return None
        entries[rel] = entry
    return entries


def self_check(files: object) -> str:
    return sha256(json.dumps(files, sort_keys=True, separators=(",", ":")).encode())


def _is_digest(v: object) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _entry(e: object) -> Entry | None:
    if not isinstance(e, dict) or not isinstance(e.get("created"), str):
        return None
    digest = e.get("sha256")
    if digest is not None and not _is_digest(digest):
        return None
    pending: str | None = None
    if "pending" in e:
        p = e["pending"]
        if p is not None and not _is_digest(p):
            return None
        pending = _NONE if p is None else p
    return Entry(created=e["created"], sha256=digest, pending=pending)
