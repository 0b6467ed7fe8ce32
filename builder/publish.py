"""Publishing artifacts into the output directory without ever leaving it half-written.

A whole build is staged beside the output directory and swapped in with one
rename (RENAME_EXCHANGE on Linux), so a failed or killed build leaves the
previous dist/ intact. Single artifacts (`package`, `image`) are each renamed
into place. Unchanged files are not rewritten.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from builder import atomic_io
from builder.errors import BuildError
from builder.writers import Artifact

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _write_file(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_io.write_atomic([(path, data, mode)])


def _mode(artifact: Artifact) -> int:
    return 0o600 if artifact.secret else 0o644


def publish_files(out: Path, artifacts: Iterable[Artifact]) -> list[Path]:
    """Put each artifact into `out` atomically; skip files whose bytes are unchanged."""
    written = []
    for a in artifacts:
        path = out / a.path
        if path.is_file() and path.read_bytes() == a.data:
            os.chmod(path, _mode(a))
        else:
            _write_file(path, a.data, _mode(a))
        written.append(path)
    return written


def publish_tree(out: Path, artifacts: Iterable[Artifact]) -> list[Path]:
    """Replace the whole of `out` with exactly these artifacts, in one step.

    The new tree is assembled inside a 0700 staging directory beside `out` (it holds
    secret-bearing copies), swapped with `out`, and the old tree removed with it.
    """
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
    try:
        tree = stage / "tree"
        tree.mkdir(mode=0o755)
        os.chmod(tree, 0o755)
        paths = []
        for a in artifacts:
            target = tree / a.path
            target.parent.mkdir(parents=True, exist_ok=True)
            old = out / a.path
            if old.is_file() and old.read_bytes() == a.data:
                # keep the old file (and its mtime): a hard link is instant
                try:
                    os.link(old, target)
                    os.chmod(target, _mode(a))
                except OSError:
                    _write_file(target, a.data, _mode(a))
            else:
                _write_file(target, a.data, _mode(a))
            paths.append(out / a.path)
        _swap(tree, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return paths


def _swap(new: Path, out: Path) -> None:
    if not out.exists():
        os.rename(new, out)
        return
    if _exchange(new, out):
        return  # `new` now holds the previous output, removed with its staging directory
    # No atomic exchange here (not Linux): two renames, with a window of
    # microseconds in which `out` is missing but never half-written.
    old = new.with_name("old")
    os.rename(out, old)
    os.rename(new, out)


def _exchange(a: Path, b: Path) -> bool:
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the filesystem can't; fall back
        return False
    raise BuildError(f"cannot replace {b}: {os.strerror(err)}")


def write_root(out: Path, files: Iterable[tuple[str, bytes, int]]) -> list[Path]:
    """Write files (absolute node paths) under `out` as a root filesystem, with their modes."""
    written = []
    for node_path, data, mode in files:
        path = out / node_path.lstrip("/")
        if path.is_file() and path.read_bytes() == data:
            os.chmod(path, mode)
        else:
            _write_file(path, data, mode)
        written.append(path)
    return written
