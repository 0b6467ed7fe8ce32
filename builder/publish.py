"""Publishing artifacts into the output directory without ever leaving it half-written.

A whole build is staged beside the output directory and swapped in with one
rename (RENAME_EXCHANGE on Linux), so a failed or killed build leaves the
previous dist/ intact. Single artifacts (`package`, `image`) are each renamed
into place. Unchanged files are not rewritten.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile
from collections.abc import Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
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


def publish_tree(
    out: Path, artifacts: Iterable[Artifact], *, unchanged: Collection[str] = ()
) -> None:
    """Replace the whole of `out` with exactly these artifacts, in one step.

    The new tree is assembled inside a 0700 staging directory beside `out` (it holds
    secret-bearing copies): files the caller knows are unchanged in `out` (`unchanged`,
    verified by hash) are hard-linked from it, an artifact holding the very bytes of one
    placed before it (a repository's copy of a package) is hard-linked to that file, the
    others written plainly (the staging directory is private; nothing there is visible
    until the swap); then ONE fsync pass
    over every new file and directory, the swap with `out`, and an fsync of the parent.
    The old tree goes with the staging directory.
    """
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
    try:
        tree = stage / "tree"
        tree.mkdir(mode=0o755)
        os.chmod(tree, 0o755)
        # Plain strings, not Path objects: thousands of files.
        top, old_top = str(tree), str(out)
        made: set[str] = {top}
        to_sync: list[str] = []
        written: dict[int, tuple[str, bool]] = {}  # id(data) -> (file, secret) placed here
        for a in artifacts:
            target = f"{top}/{a.path}"  # (an artifact path is relative, "/"-separated)
            parent = os.path.dirname(target)
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                while parent not in made and parent != top:
                    made.add(parent)
                    parent = os.path.dirname(parent)
            old = f"{old_top}/{a.path}"
            # The very bytes of an artifact placed just before (a repository's copy of
            # a package), with its mode: one file under both names.
            twin = written.get(id(a.data))
            if (a.path in unchanged or _same(old, a.data)) and _link(old, target):
                pass
            elif not (twin is not None and twin[1] == a.secret and _link(twin[0], target)):
                _write_new(target, a.data, _mode(a))
                to_sync.append(target)
            written.setdefault(id(a.data), (target, a.secret))
        atomic_io.fsync_all([*to_sync, *made])
        _swap(tree, out)
        atomic_io.fsync_dir(out.parent)
    finally:
        remove_tree(stage)


_REMOVE_THREADS = 4


def remove_tree(top: Path) -> None:
    """rm -rf `top` (never following links): the unlinks on a few threads, then the
    directories, deepest first. Measured on the ~3,500 files of a replaced dist/: 2x
    faster than os.walk and a thread pool per depth on tmpfs, 1.3x on ext4 (more threads
    gained nothing on 2 cores). Errors are ignored, as rmtree's."""
    dirs, files = atomic_io.scan_tree(str(top))

    def unlink_each(paths: list[str]) -> None:
        for path in paths:
            with contextlib.suppress(OSError):
                os.unlink(path)

    size = max(1, -(-len(files) // _REMOVE_THREADS))  # a chunk per thread, not a task per file
    with ThreadPoolExecutor(max_workers=_REMOVE_THREADS) as pool:
        list(pool.map(unlink_each, [files[i : i + size] for i in range(0, len(files), size)]))
    for path in reversed(dirs):  # children before parents
        with contextlib.suppress(OSError):
            os.rmdir(path)
    shutil.rmtree(top, ignore_errors=True)  # whatever is left (normally nothing)


def _same(path: str, data: bytes) -> bool:
    try:
        if os.stat(path).st_size != len(data):
            return False
        with open(path, "rb") as f:
            return f.read() == data
    except OSError:
        return False


def _link(old: str, target: str) -> bool:
    """Keep the old file (and its inode and mtime): a hard link is instant."""
    try:
        os.link(old, target, follow_symlinks=False)
    except OSError:
        return False
    return True


def _write_new(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # exact mode whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


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
    lib = atomic_io.libc()
    if lib is None:
        return False
    renameat2 = getattr(lib, "renameat2", None)
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
