"""What a run changed (or, from `check`, would change): per artifact its versions and
the reason, as text lines and as the documented JSON (docs/output.schema.json).

Pure: compares what the run made with what the previous run published (the output
directory's marker) and the store's events; reads and writes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from builder.nodetree import NodeTree
from builder.state import Event
from builder.writers import Artifact

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Change:
    path: str  # relative to the output directory
    node: str | None
    status: str  # new | changed | unchanged
    version_before: int | None = None  # packages only
    version_after: int | None = None
    reasons: tuple[str, ...] = ()


@dataclass
class Report:
    command: str
    changes: list[Change] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float | None = None
    reused: int = 0  # artifacts taken from the previous output instead of being built

    def counts(self) -> dict[str, int]:
        counts = {"new": 0, "changed": 0, "unchanged": 0}
        for c in self.changes:
            counts[c.status] += 1
        return {**counts, "reused": self.reused}

    def summary(self) -> str:
        c = self.counts()
        bumped = sum(1 for ch in self.changes if ch.version_after not in (None, ch.version_before))
        took = f" in {self.seconds:.1f} s" if self.seconds is not None else ""
        verb = "would be" if self.command == "check" else "were"
        reused = f" ({c['reused']} reused, not rebuilt)" if c["reused"] else ""
        return (
            f"{len(self.changes)} artifacts: {c['new']} new, {c['changed']} changed, "
            f"{c['unchanged']} unchanged{reused}; {bumped} package versions {verb} bumped{took}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "command": self.command,
            "artifacts": [_change_json(c) for c in self.changes],
            "events": [asdict(e) for e in self.events],
            "warnings": list(dict.fromkeys(self.warnings)),
            "summary": self.counts(),
            "seconds": self.seconds,
        }


def _change_json(c: Change) -> dict[str, Any]:
    out = asdict(c)
    out["reasons"] = list(c.reasons)
    return out


def line(c: Change) -> str:
    """One change as the text report shows it."""
    version = ""
    if c.version_after is not None:
        before = "-" if c.version_before is None else str(c.version_before)
        version = f" {before} -> {c.version_after}" if before != str(c.version_after) else ""
    why = f" ({'; '.join(c.reasons)})" if c.reasons else ""
    return f"{c.status:<9} {c.path}{version}{why}"


def tree_files(tree: NodeTree) -> dict[str, str]:
    """Each file's digest (content, mode, owner): what a package reason compares."""
    return {
        f.path: hashlib.sha256(f"{f.mode:o}:{f.owner}:{f.group}:".encode() + f.content).hexdigest()
        for f in tree.files
    }


def package_reasons(
    node: str,
    before: Mapping[str, str] | None,
    after: Mapping[str, str],
    events: Iterable[Event],
) -> tuple[str, ...]:
    """Why a node's package got a new version: its certificate, which files, or else
    the templates or the tool (same files, other bytes)."""
    reasons = [
        f"certificate {'issued' if e.kind == 'created' else 're-issued'}: {e.reason}"
        for e in events
        if e.what == f"certificate {node}"
    ]
    if before is None:
        return (*reasons, "new") if not reasons else tuple(reasons)
    changed = sorted(p for p in after.keys() | before.keys() if after.get(p) != before.get(p))
    certificate_files = any("cert" in r for r in reasons)
    if changed and not (certificate_files and all(_is_tls(p) for p in changed)):
        reasons.append("config changed: " + ", ".join(changed))
    return tuple(reasons) or ("template or tool changed",)


def _is_tls(path: str) -> bool:
    return path.endswith(".pem")


def artifact_changes(
    artifacts: Sequence[Artifact],
    previous: Mapping[str, Mapping[str, Any]] | None,
    packages: Mapping[str, tuple[str, str, int]],
    versions_before: Mapping[tuple[str, str], int],
    package_why: Mapping[str, tuple[str, ...]],
    sha256: Callable[[Artifact], str],
) -> list[Change]:
    """Each artifact against what the previous run published at the same path (packages:
    against the node's previous package, whose path carried the old version); `sha256`
    gives an artifact's digest (the pipeline knows most already)."""
    previous = previous or {}
    bumped = {
        node
        for node, fmt, version in packages.values()
        if versions_before.get((node, fmt)) not in (None, version)
    }
    changes = []
    for a in artifacts:
        digest = sha256(a)
        old = previous.get(a.path)
        status = "new" if old is None else "unchanged" if old.get("sha256") == digest else "changed"
        if a.path not in packages:
            if status == "new" and a.node in bumped:  # a copy of its new package version
                status = "changed"
            changes.append(Change(a.path, a.node, status))
            continue
        node, fmt, version = packages[a.path]
        before = versions_before.get((node, fmt))
        if before is None:
            status = "new"
        elif before == version:
            status = "unchanged"
        else:
            status = "changed"
        why = package_why.get(a.path, ()) if status == "changed" else ()
        changes.append(Change(a.path, a.node, status, before, version, why))
    return changes
