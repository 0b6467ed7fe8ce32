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
    """hashlib's, once per bytes object: a run asks for the same file's digest several
    times (its ledger status, then the facts about its certificate, its key, its CA),
    and for the CA certificate's once per node."""
    if len(data) > _MEMO_MAX:  # (the ledger's own bytes: not kept alive for nothing)
        return hashlib.sha256(data).hexdigest()
    known = _DIGESTS.get(id(data))
    if known is not None and known[0] is data:
        return known[1]
    digest = hashlib.sha256(data).hexdigest()
    if len(_DIGESTS) >= 1 << 16:  # a long-lived process (the tests) reads many stores
        _DIGESTS.clear()
    _DIGESTS[id(data)] = (data, digest)  # the bytes are kept: their id is not reused
    return digest


_MEMO_MAX = 16 << 10  # keys and certificates are a few KB

_DIGESTS: dict[int, tuple[bytes, str]] = {}


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
    # What the store verified about exactly these bytes (a certificate's parsed fields,
    # the key it pairs with, the CA that signed it: builder.state), so a run need not
    # parse and verify every certificate again. Derived data: rewriting the file drops
    # it; a run that lacks it computes it again.
    facts: dict[str, Any] | None = None


@dataclass
class Ledger:
    path: Path
    entries: dict[str, Entry]
    exists: bool
    facts_added: bool = False  # add_facts() changed something since the last dump()
    loaded: bytes | None = None  # the bytes it was read from (None: not read from a file)

    @classmethod
    def load(cls, directory: Path) -> Ledger:
        path = directory / LEDGER_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path, {}, exists=False)
        except OSError as e:
            raise UserError(f"{path}: unreadable ({e.strerror}); {restore_ledger()}") from None
        if _LAST_PARSED.get("raw") == raw:  # the plan read the same bytes a moment ago
            entries: dict[str, Entry] | None = dict(_LAST_PARSED["entries"])
        else:
            entries = _parse(raw)
        if entries is None:
            raise UserError(f"{path}: damaged (not a nomad-build ledger); {restore_ledger()}")
        _LAST_PARSED.update(raw=raw, entries=dict(entries))
        return cls(path, entries, exists=True, loaded=raw)

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

    def facts(self, rel: str, digest: str) -> dict[str, Any]:
        """The facts recorded for `rel` while it holds the bytes of sha256 `digest`."""
        entry = self.entries.get(rel)
        if entry is None or entry.sha256 != digest:
            return {}
        return entry.facts or {}

    def add_facts(self, rel: str, digest: str, facts: dict[str, Any]) -> bool:
        """Record facts about `rel`'s bytes (sha256 `digest`); False (nothing recorded)
        when the ledger does not describe exactly those bytes. Persisted with the
        ledger's next write."""
        entry = self.entries.get(rel)
        if entry is None or entry.sha256 != digest:  # (pending: they describe the new bytes)
            return False
        merged = {**(entry.facts or {}), **facts}
        if merged != entry.facts:
            self.entries[rel] = replace(entry, facts=merged)
            self.facts_added = True
        return True

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
            if e.facts:
                files[rel]["facts"] = e.facts
        self.facts_added = False
        # one file per line by the C encoder (the pure-Python indenting one is slow
        # for thousands of entries); still JSON, still diffable
        lines = ",\n".join(f"  {json.dumps(rel)}: {json.dumps(files[rel])}" for rel in files)
        listed = f"{{\n{lines}\n }}" if lines else "{}"
        return (
            f'{{\n "format": {FORMAT},\n "files": {listed},\n "check": "{self_check(files)}"\n}}\n'
        ).encode()


# The last ledger parsed in this process (Entry objects are immutable: sharing is safe).
_LAST_PARSED: dict[str, Any] = {}


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
    # strip(): one C call, not a generator step per character (thousands of entries)
    return isinstance(v, str) and len(v) == 64 and not v.strip("0123456789abcdef")


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
    facts = e.get("facts")  # derived data: anything else than a table is ignored
    return Entry(e["created"], digest, pending, facts if isinstance(facts, dict) else None)
