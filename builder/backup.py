"""One encrypted archive of the whole state (`state backup` / `state restore`).

File format (all integers big-endian):

    b"NBSTATE1"                  magic, 8 bytes
    u8  log2(n) | u8 r | u8 p    Scrypt cost (memory-hard KDF), 3 bytes
    16 bytes salt, 12 bytes nonce
    AES-256-GCM(key = Scrypt(passphrase, salt), nonce, tar of the state,
                associated data = the 39 header bytes above)

The tar holds every file of the state with its mode (never the lock or temporaries);
GCM authenticates it and the header, so a wrong passphrase and any damage are the same
refusal. Restore extracts beside the target and renames into place: an existing state
is never overwritten unless --force, and then it is set aside, not deleted.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import stat
import tarfile
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from builder import atomic_io
from builder.errors import UserError
from builder.ledger import LEDGER_NAME

MAGIC = b"NBSTATE1"
LOG2_N, R, P = 17, 8, 1  # 128 MiB of memory per guess
_HEADER_LEN = len(MAGIC) + 3 + 16 + 12
_MAX_LOG2_N = 20


def _key(passphrase: bytes, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=1 << log2_n, r=r, p=p).derive(passphrase)


def _tar(state_dir: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(state_dir.rglob("*")):
            rel = path.relative_to(state_dir).as_posix()
            if path.name == atomic_io.LOCK_NAME or atomic_io.TMP_RE.match(path.name):
                continue
            st = path.lstat()
            info = tarfile.TarInfo(rel)
            info.mode = stat.S_IMODE(st.st_mode)
            info.mtime = int(st.st_mtime)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                data = path.read_bytes()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                raise UserError(f"{path}: not a file or directory; the state holds only those")
    return buf.getvalue()


def backup(state_dir: Path, to: Path, passphrase: bytes) -> int:
    """Write the encrypted archive of `state_dir` to `to` (0600); returns the file count."""
    if not (state_dir / LEDGER_NAME).is_file():
        raise UserError(f"{state_dir}: not a nomad-build state (no {LEDGER_NAME})")
    if not passphrase:
        raise UserError("state backup: an empty passphrase protects nothing")
    if to.resolve().is_relative_to(state_dir.resolve()):
        raise UserError(f"{to}: inside the state it backs up; write it elsewhere")
    lock = atomic_io.RunLock(state_dir)  # a consistent copy: no build writes meanwhile
    try:
        plain = _tar(state_dir)
    finally:
        lock.release()
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    header = MAGIC + bytes([LOG2_N, R, P]) + salt + nonce
    sealed = AESGCM(_key(passphrase, salt, LOG2_N, R, P)).encrypt(nonce, plain, header)
    atomic_io.write_atomic([(to, header + sealed, 0o600)])
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        return sum(1 for m in tar.getmembers() if m.isfile())


def _open(archive: Path, passphrase: bytes) -> bytes:
    try:
        blob = archive.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{archive}: no such file") from None
    bad = f"{archive}: wrong passphrase or damaged archive (authentication failed)"
    if len(blob) < _HEADER_LEN + 16 or not blob.startswith(MAGIC):
        raise UserError(f"{archive}: not a nomad-build state backup")
    header, sealed = blob[:_HEADER_LEN], blob[_HEADER_LEN:]
    log2_n, r, p = header[8], header[9], header[10]
    if not (10 <= log2_n <= _MAX_LOG2_N and 1 <= r <= 16 and 1 <= p <= 4):
        raise UserError(bad)
    salt, nonce = header[11:27], header[27:39]
    try:
        return AESGCM(_key(passphrase, salt, log2_n, r, p)).decrypt(nonce, sealed, header)
    except InvalidTag:
        raise UserError(bad) from None


def _safe(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(p.parts) and not p.is_absolute() and ".." not in p.parts


def restore(archive: Path, state_dir: Path, passphrase: bytes, *, force: bool) -> int:
    """Unpack the archive as `state_dir`; returns the file count. An existing non-empty
    state is refused, or with `force` set aside as <state>.replaced-<time>."""
    plain = _open(archive, passphrase)
    exists = state_dir.exists() and (not state_dir.is_dir() or any(state_dir.iterdir()))
    if exists and not force:
        raise UserError(
            f"{state_dir}: already holds a state; restore elsewhere with --state, or "
            "--force to set it aside (it is renamed, never deleted)"
        )
    parent = state_dir.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    staging = parent / f".{state_dir.name}.restore-{secrets.token_hex(4)}"
    staging.mkdir(mode=0o700)
    count = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
            for m in tar.getmembers():
                if not _safe(m.name) or not (m.isfile() or m.isdir()):
                    raise UserError(f"{archive}: holds {m.name!r}, not a state file")
                target = staging.joinpath(*PurePosixPath(m.name).parts)
                if m.isdir():
                    target.mkdir(mode=0o700, parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                f = tar.extractfile(m)
                assert f is not None
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(f.read())
                os.chmod(target, m.mode & 0o644)  # secrets 0600, public keys 0644
                count += 1
        if not (staging / LEDGER_NAME).is_file():
            raise UserError(f"{archive}: holds no {LEDGER_NAME}; not a nomad-build state")
        if state_dir.exists() or state_dir.is_symlink():
            state_dir.rename(parent / f"{state_dir.name}.replaced-{stamp}")
        staging.rename(state_dir)
        atomic_io.fsync_dir(parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return count
