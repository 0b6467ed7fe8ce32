"""The output directory: what may be written where, and the marker that says
nomad-build made it.

An output directory may not be, contain or lie inside the state directory, and
may not contain the cluster file: a build replaces its output whole, and must
never take the CA key or the cluster file with it. A non-empty directory
without our marker is someone else's (a web root, a home directory): refused
unless the operator says `--force`. The marker (`.nomad-build.json`) lists what
was published, with the package versions, so the next run can refuse version
counters that went back below what nodes have already seen.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from builder.errors import UserError
from builder.nodetree import NodeTree
from builder.writers import Artifact

MARKER = ".nomad-build.json"
_MADE_BY = "nomad-build"


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def check(out: Path, state_dir: Path, cluster_file: Path, *, force: bool) -> bool:
    """Refuse an output directory that could destroy the state, the cluster file or
    files nomad-build did not make. Reads only. True: --force was needed (the run
    replaces someone else's directory)."""
    o, s, c = out.resolve(), state_dir.resolve(), cluster_file.resolve()
    if _inside(o, s):
        raise UserError(f"{out}: --out is the state directory {state_dir} or lies inside it")
    if _inside(s, o):
        raise UserError(
            f"{out}: --out contains the state directory {state_dir}; "
            "choose an output directory of its own (e.g. dist/)"
        )
    if _inside(c, o):
        raise UserError(
            f"{out}: --out contains the cluster file {cluster_file}; "
            "choose an output directory of its own (e.g. dist/)"
        )
    if o.exists() and not o.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    foreign = o.is_dir() and not made_by_us(o) and any(o.iterdir())
    if foreign and not force:
        raise UserError(
            f"{out}: --out is not empty and not made by nomad-build (no {MARKER}); choose "
            "an empty directory, or add --force to replace it deliberately"
        )
    return foreign


def made_by_us(out: Path) -> bool:
    return read_marker(out) is not None


def read_marker(out: Path) -> dict[str, dict[str, object]] | None:
    """The artifacts a previous run published here, or None when nomad-build did not."""
    data = marker_body(out)
    if data is None:
        return None
    artifacts = data.get("artifacts")
    return artifacts if isinstance(artifacts, dict) else {}


def marker_body(out: Path) -> dict[str, Any] | None:
    """The whole marker nomad-build left in `out`, or None. Parsed once per version of
    the file (a run asks several times; a marker lists thousands of artifacts): the
    result is shared, never to be changed by the caller."""
    path = out / MARKER
    try:
        st = path.stat()
    except OSError:
        return None
    stamp = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if _PARSED.get("stamp") != stamp:
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            data = None
        ours = isinstance(data, dict) and data.get("made_by") == _MADE_BY
        _PARSED.clear()
        _PARSED.update(stamp=stamp, body=data if ours else None)
    body = _PARSED["body"]
    return body if isinstance(body, dict) else None


_PARSED: dict[str, Any] = {}  # the last marker parsed: {"stamp": ..., "body": ...}


def published_versions(out: Path) -> dict[tuple[str, str], int]:
    """(node, format) -> the highest package version published here."""
    found: dict[tuple[str, str], int] = {}
    for entry in (read_marker(out) or {}).values():
        package = entry.get("package") if isinstance(entry, dict) else None
        if not isinstance(package, dict):
            continue
        node, fmt, version = package.get("node"), package.get("format"), package.get("version")
        if isinstance(node, str) and isinstance(fmt, str) and isinstance(version, int):
            found[(node, fmt)] = max(version, found.get((node, fmt), 0))
    return found


def marker(
    artifacts: Iterable[Artifact],
    packages: Mapping[str, tuple[str, str, int]],
    previous: Mapping[str, Mapping[str, object]] | None = None,
    files: Mapping[str, Mapping[str, str]] | None = None,
    digests: Mapping[str, str] | None = None,
) -> Artifact:
    """The marker listing `artifacts` (merged over `previous` for single-file commands);
    `packages` maps a package's path to (node, format, version), `files` a package's path to its
    tree's file digests (so the next run can say which files changed), `digests` an
    artifact's path to its sha256 where the caller knows it already."""
    import hashlib

    entries: dict[str, dict[str, object]] = {k: dict(v) for k, v in (previous or {}).items()}
    for a in artifacts:
        known = digests.get(a.path) if digests is not None else None
        entry: dict[str, object] = {
            "sha256": known or hashlib.sha256(a.data).hexdigest(),
            "size": len(a.data),
            "secret": a.secret,
            "node": a.node,
        }
        if a.path in packages:
            node, fmt, version = packages[a.path]
            entry["package"] = {"node": node, "format": fmt, "version": version}
            if files is not None and a.path in files:
                entry["files"] = dict(sorted(files[a.path].items()))
        entries[a.path] = entry
    # one artifact per line, each by the C encoder (a marker lists thousands)
    listed = ",\n".join(f"  {json.dumps(k)}: {json.dumps(entries[k])}" for k in sorted(entries))
    body = f"{{\n  {listed.lstrip()}\n }}" if listed else "{}"
    text = f'{{\n "made_by": {json.dumps(_MADE_BY)},\n "artifacts": {body}\n}}\n'
    return Artifact(MARKER, text.encode(), secret=False)


def set_aside(out: Path) -> None:
    """--force: move someone else's directory out of the way (removed with the staging
    leftovers), so what is published is exactly nomad-build's."""
    resolved = out.resolve()
    aside = resolved.with_name(f".{resolved.name}.staging-replaced")
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(resolved, aside)
    os.mkdir(resolved, 0o755)
    shutil.rmtree(aside, ignore_errors=True)


def sweep_staging(out: Path) -> None:
    """Remove what a killed run left beside `out` (staging copies hold secrets)."""
    parent = out.resolve().parent
    if not parent.is_dir():
        return
    for leftover in parent.glob(f".{out.resolve().name}.staging-*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)


def write_root(out: Path, tree: NodeTree) -> list[Path]:
    """One node's files under `out` as a root filesystem, with their modes."""
    from builder import publish

    paths = publish.write_root(out, ((f.path, f.content, f.mode) for f in tree.files))
    for d in tree.dirs:
        target = out / d.path.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        os.chmod(target, d.mode)
    marker_artifact = marker([], {}, {})
    publish.publish_files(out, [marker_artifact])
    return paths


def newest_files(
    previous: Mapping[str, Mapping[str, object]] | None,
) -> dict[tuple[str, str], dict[str, str]]:
    """(node, format) -> the file digests recorded with its newest published package:
    one pass over the marker (asked per node, a scan each would be quadratic)."""
    best: dict[tuple[str, str], tuple[int, Mapping[str, object]]] = {}
    for entry in (previous or {}).values():
        package, files = entry.get("package"), entry.get("files")
        if not isinstance(package, dict) or not isinstance(files, dict):
            continue
        node, fmt, version = package.get("node"), package.get("format"), package.get("version")
        if not (isinstance(node, str) and isinstance(fmt, str) and isinstance(version, int)):
            continue
        have = best.get((node, fmt))
        if have is None or version > have[0]:
            best[(node, fmt)] = (version, files)
    return {k: {str(p): str(d) for p, d in files.items()} for k, (_, files) in best.items()}
