"""Crash-safe file writes and the run lock, for anything that persists into a directory.

- `RunLock`: an exclusive, non-blocking flock on `<dir>/.lock` held by one writing run.
- `write_atomic`: every file to a temp beside it (exact mode), one batched fsync pass
  over all the temps, then all renames, then one fsync pass over every directory
  touched. A crash leaves old or new files, never a
  half-written one; temps left by a killed run match `TMP_RE` and `sweep_temps` drops them.
- `make_dirs` / `tighten`: directories with an exact mode whatever the umask, and
  group/other bits a human added taken away again.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import functools
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from builder.errors import BuildError

__all__ = [
    "LOCK_NAME",
    "TMP_RE",
    "RunLock",
    "fsync_all",
    "fsync_dir",
    "libc",
    "make_dirs",
    "make_dirs_many",
    "sweep_temps",
    "tighten",
    "write_atomic",
]

TMP_RE = re.compile(r"^\..+\.tmp-[0-9a-f]{16}$")
LOCK_NAME = ".lock"


class LockHeld(BuildError):
    """Another run holds the store's lock (exit 1: try again, or wait)."""


_HELD: set[int] = set()  # the descriptors of the run locks this process holds


def _drop_locks_in_child() -> None:
    # A forked worker (the pipeline's process pool) must not keep a run lock alive
    # after its parent released it or died: flock belongs to every copy of the fd.
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_locks_in_child)


class RunLock:
    """`<directory>/.lock`, flock'ed exclusively; released by release() or process exit
    (never held by a forked child)."""

    def __init__(self, directory: Path, mode: int = 0o600, wait: float = 0.0) -> None:
        path = directory / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    # Not bad input: the same command succeeds once the other run is done.
                    raise LockHeld(
                        f"{directory}: another nomad-build run holds the lock"
                        f" (waited {wait:g} s; --wait SECONDS waits longer)"
                    ) from None
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        self._fd: int | None = fd
        _HELD.add(fd)

    def release(self) -> None:
        if self._fd is not None:
            _HELD.discard(self._fd)
            os.close(self._fd)  # releases the flock
            self._fd = None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SYNC_THREADS = 32  # fsync releases the GIL; the journal commits concurrent syncs together


_SYNCFS_FROM = 64  # this many paths or more: one syncfs per filesystem instead


def fsync_all(paths: Iterable[str | Path]) -> None:
    """Make every file or directory durable in one pass: for many, one syncfs(2) of each
    filesystem they are on (one journal commit, whatever their number); for a few, fsync
    each (in parallel threads: concurrent syncs share journal commits)."""
    unique = _unique(paths)
    if len(unique) >= _SYNCFS_FROM and _syncfs_all(unique):
        return
    if len(unique) <= 2:
        for p in unique:
            _fsync_path(p)
        return
    with ThreadPoolExecutor(max_workers=min(_SYNC_THREADS, len(unique))) as pool:
        list(pool.map(_fsync_path, unique))


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library this process already has (no `ldconfig -p` subprocess)."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        name = ctypes.util.find_library("c")
        return ctypes.CDLL(name, use_errno=True) if name else None


def _syncfs_all(paths: Sequence[str | Path]) -> bool:
    """syncfs(2) once per filesystem the paths are on; False where there is none
    (not Linux), and the caller fsyncs each path."""
    lib = libc()
    syncfs = getattr(lib, "syncfs", None) if lib is not None else None
    if syncfs is None:
        return False
    one_per_device: dict[int, str | Path] = {}
    for p in paths:
        one_per_device.setdefault(os.lstat(p).st_dev, p)
    for p in one_per_device.values():
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"syncfs: {os.strerror(err)}", str(p))
        finally:
            os.close(fd)
    return True


def _fsync_path(path: str | Path) -> None:
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if os.path.isdir(path) else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tighten(path: str | Path, mode: int) -> None:
    """Take away permission bits beyond `mode` (never through a symlink)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return
    cur = stat.S_IMODE(st.st_mode)
    if cur & ~mode & 0o777:
        os.chmod(path, cur & mode)


def make_dirs(root: Path, path: Path, mode: int = 0o700) -> None:
    """Create `path` (inside the existing `root`) and its parents with exactly `mode`;
    existing ones are tightened to it."""
    make_dirs_many(root, [path], mode)


def make_dirs_many(root: Path, paths: Iterable[Path], mode: int = 0o700) -> None:
    """make_dirs for many paths, with one fsync pass over the parents of what was made."""
    made_in: list[Path] = []
    seen: set[Path] = set()
    for path in paths:
        cur = root
        for part in path.relative_to(root).parts:
            cur = cur / part
            if cur in seen:
                continue
            seen.add(cur)
            try:
                cur.mkdir(mode=mode)
                os.chmod(cur, mode)  # mkdir's mode is filtered by the umask
                made_in.append(cur.parent)
            except FileExistsError:
                tighten(cur, mode)
    fsync_all(made_in)


def _write_temp(path: Path, data: bytes, mode: int, *, sync: bool = True) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode)
    try:
        os.fchmod(fd, mode)  # exact mode before any content, whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def write_atomic(files: Sequence[tuple[Path, bytes, int]]) -> None:
    """Write every (path, bytes, mode) to a temp beside it, fsync them all (one pass),
    then rename them all in order, then fsync the directories (one pass). On an error
    no temp is left behind."""
    temps: list[tuple[Path, Path]] = []
    try:
        for path, data, mode in files:
            temps.append((_write_temp(path, data, mode, sync=len(files) == 1), path))
        if len(temps) > 1:
            fsync_all(tmp for tmp, _ in temps)
        for tmp, path in temps:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    fsync_all(path.parent for _, path in temps)


def sweep_temps(root: Path) -> None:
    """Under the lock: drop the temps a dead run left behind."""
    for path in scan_tree(str(root))[1]:
        if TMP_RE.match(os.path.basename(path)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def scan_tree(top: str) -> tuple[list[str], dict[str, int]]:
    """(directories, other files -> their inode numbers) under `top`, as paths, parents
    before their children, never following links: one scandir per directory (os.walk
    stats each subdirectory again to see if it is a link; thousands of them in dist/)."""
    dirs: list[str] = []
    files: dict[str, int] = {}
    stack = [top]
    while stack:
        path = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:  # gone, or unreadable: skipped, as os.walk does
            continue
        dirs.append(path)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            else:
                files[entry.path] = entry.inode()
    return dirs, files


def read_all(fd: int, size: int) -> bytes:
    """Everything left to read from `fd`, whose fstat size is `size`: one read() and one
    buffer for a file that is that size (a buffered file object costs more than the read
    for the thousands of small files a run checks); else read to the end."""
    data = os.read(fd, size + 1)
    if len(data) == size:
        return data
    chunks = [data]  # grew, shrank, or a read stopped short (>2 GiB): to the end
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _unique(paths: Iterable[str | Path]) -> list[str | Path]:
    return list(dict.fromkeys(paths))
