"""The secrets store: state/ beside the cluster file, kept forever.

Layout (dirs 0700, files 0600 unless made with `public()`):

    <dir>/.lock                      flock taken by a writing run
    <dir>/gossip.key                 base64 gossip key + newline
    <dir>/ca/ca.key, ca/ca.pem       the cluster CA (its key never leaves state/)
    <dir>/nodes/<node>/key.pem       a node's key ...
    <dir>/nodes/<node>/cert.pem      ... and its certificate
    <dir>/versions.json              package version per (node, format)
    <dir>/<name>                     other secrets / public keys (secret(), public())

Nothing is regenerated unless it no longer fits the spec, so a second run over the
same state writes nothing. Every write is atomic (temp file + fsync + rename +
directory fsync). A read-only store (create=False, used by `check`) never writes;
there `events` describes what a writing run *would* do.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets as _secrets
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import TypedDict

from builder import pki
from builder.errors import UserError

__all__ = ["CASpec", "CertSpec", "Event", "State"]


class _VersionEntry(TypedDict):
    version: int
    digest: str


# versions.json: {"<node>": {"<format>": {"version": N, "digest": "..."}}}
_Versions = dict[str, dict[str, _VersionEntry]]

_DIR_MODE = 0o700
_SECRET_MODE = 0o600
_PUBLIC_MODE = 0o644
_TMP_RE = re.compile(r"^\..+\.tmp-[0-9a-f]{16}$")
# Names secret()/public() may not take: they belong to the store itself.
_RESERVED = {"gossip.key", "ca", "nodes", "versions.json"}


@dataclass(frozen=True)
class CASpec:
    common_name: str
    permitted_dns: tuple[str, ...]
    days: int


@dataclass(frozen=True)
class CertSpec:
    common_name: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    days: int
    renew_before: timedelta
    backdate: timedelta


@dataclass(frozen=True)
class Event:
    kind: str  # "created" | "reissued"
    what: str  # "gossip key", "CA", "certificate <node>", or a secret's name
    reason: str  # "new", "DNS names changed: +a.b -c.d", ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _diff(label: str, old: set[str], new: set[str], key: Callable[[str], object]) -> str | None:
    """'<label> changed: +added -removed', comparing by `key` (case/notation-insensitive)."""
    old_k = {key(x): x for x in old}
    new_k = {key(x): x for x in new}
    if old_k.keys() == new_k.keys():
        return None
    added = sorted(new_k[k] for k in new_k.keys() - old_k.keys())
    removed = sorted(old_k[k] for k in old_k.keys() - new_k.keys())
    return f"{label} changed: " + " ".join([f"+{a}" for a in added] + [f"-{r}" for r in removed])


def _ip_key(ip: str) -> object:
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        return ip


def _window(td: timedelta) -> str:
    if td == timedelta(days=td.days):
        return f"{td.days}-day"
    return str(td)


@dataclass(eq=False, repr=False)  # repr would print key material held in the caches
class State:
    """Get-or-create access to the cluster's secrets. Open with `State.open()`.

    Thread-safe (one lock around every method), so a threaded pipeline may share one
    instance; it is not meant to be shared across processes: fetch secrets first.
    """

    directory: Path
    writable: bool
    clock: Callable[[], datetime]
    events: list[Event] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    _lock_fd: int | None = None
    _mutex: threading.RLock = field(default_factory=threading.RLock)
    _ca: tuple[CASpec, tuple[bytes, bytes] | None] | None = None
    _gossip: str | None = None
    _nodes: dict[str, tuple[CertSpec, bytes | None, tuple[bytes, bytes] | None]] = field(
        default_factory=dict
    )
    _versions: _Versions | None = None
    _versions_dirty: bool = False
    _closed: bool = False

    def __repr__(self) -> str:
        mode = "writable" if self.writable else "read-only"
        return f"<State {str(self.directory)!r} {mode}>"

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        create: bool,
        clock: Callable[[], datetime] | None = None,
    ) -> State:
        """create=True: make the dir (0700) and take the run lock; else read-only, no writes."""
        directory = Path(directory)
        st = cls(directory=directory, writable=create, clock=clock or _utcnow)
        if not create:
            if directory.exists() and not directory.is_dir():
                raise UserError(f"{directory}: exists but is not a directory")
            return st
        try:
            directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        except FileExistsError:
            raise UserError(f"{directory}: exists but is not a directory") from None
        if not directory.is_dir():
            raise UserError(f"{directory}: exists but is not a directory")
        st._tighten(directory, _DIR_MODE)
        fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _SECRET_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{directory}: another nomad-build run holds the lock") from None
        st._lock_fd = fd
        st._sweep()
        return st

    def flush(self) -> None:
        """Persist package versions handed out so far. Call before publishing artifacts
        that carry them; close() does it too."""
        with self._mutex:
            if self.writable and self._versions_dirty and self._versions is not None:
                data = json.dumps(self._versions, indent=2, sort_keys=True) + "\n"
                self._write_atomic([(self._versions_path, data.encode(), _SECRET_MODE)])
                self._versions_dirty = False

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            try:
                self.flush()
            finally:
                self._closed = True
                if self._lock_fd is not None:
                    os.close(self._lock_fd)  # releases the flock
                    self._lock_fd = None

    def __enter__(self) -> State:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Versions are flushed even on failure: numbers may only grow, never be reused.
        self.close()

    # ---------------------------------------------------------------- getters

    def gossip_key(self) -> str | None:
        with self._mutex:
            self._check_open()
            if self._gossip is not None:
                return self._gossip
            path = self.directory / "gossip.key"
            raw = self._read(path, secret=True)
            if raw is not None:
                key = raw.decode("ascii", "replace").strip()
                try:
                    n = len(base64.b64decode(key, validate=True))
                except (binascii.Error, ValueError):
                    n = -1
                if n not in (16, 24, 32):
                    raise UserError(f"{path}: not a gossip key (base64 of 16, 24 or 32 bytes)")
                self._gossip = key
                return key
            self._plan(Event("created", "gossip key", "new"))
            if not self.writable:
                return None
            key = pki.generate_gossip_key()
            self._write_atomic([(path, (key + "\n").encode(), _SECRET_MODE)])
            self._gossip = key
            return key

    def ca(self, spec: CASpec) -> tuple[bytes, bytes] | None:
        """(key PEM, cert PEM) of the cluster CA, created once and never regenerated."""
        with self._mutex:
            self._check_open()
            if self._ca is not None and self._ca[0] == spec:
                return self._ca[1]
            result = self._ca_uncached(spec)
            self._ca = (spec, result)
            return result

    def _ca_uncached(self, spec: CASpec) -> tuple[bytes, bytes] | None:
        key_path, cert_path = self.directory / "ca" / "ca.key", self.directory / "ca" / "ca.pem"
        key = self._read(key_path, secret=True)
        cert = self._read(cert_path, secret=True)
        if key is None and cert is None:
            self.events.append(Event("created", "CA", "new"))
            if not self.writable:
                return None
            key, cert = pki.create_ca(
                common_name=spec.common_name,
                permitted_dns=spec.permitted_dns,
                days=spec.days,
                now=self.clock(),
            )
            self._mkdirs(key_path.parent)
            self._write_atomic([(key_path, key, _SECRET_MODE), (cert_path, cert, _SECRET_MODE)])
            return key, cert
        if key is None or cert is None:
            missing, present = (key_path, cert_path) if key is None else (cert_path, key_path)
            raise UserError(
                f"{missing}: missing while {present} exists; refusing to create a new CA "
                "(every node trusts the old one): restore it or move the ca/ directory away"
            )
        info = self._inspect(cert_path, cert)
        if not self._matches(key_path, key, cert_path, cert):
            raise UserError(f"{key_path}: does not match {cert_path}; restore the CA's key")
        if not info.is_ca:
            raise UserError(f"{cert_path}: is not a CA certificate")
        diff = _diff("permitted", set(info.permitted_dns), set(spec.permitted_dns), str.lower)
        if diff is not None:
            raise UserError(
                f"{cert_path}: the existing CA's name constraints permit "
                f"{', '.join(info.permitted_dns) or '(anything)'} but the cluster needs "
                f"{', '.join(spec.permitted_dns) or '(anything)'} ({diff}); a CA is never "
                "regenerated silently because every node trusts it: fix the cluster file, "
                f"or retire the CA deliberately (move {cert_path.parent} away) and "
                "redeploy all nodes"
            )
        return key, cert

    def node_cert(
        self, node: str, spec: CertSpec, ca: tuple[bytes, bytes] | None
    ) -> tuple[bytes, bytes] | None:
        """(key PEM, cert PEM) for `node`, (re)issued only when the stored one no longer fits.

        `ca` is what ca() returned; None is accepted only read-only (CA not made yet).
        Read-only, returns None when a writing run would (re)issue.
        """
        with self._mutex:
            self._check_open()
            if ca is None and self.writable:
                raise ValueError("node_cert needs the CA in a writable store")
            ca_cert = ca[1] if ca is not None else None
            cached = self._nodes.get(node)
            if cached is not None and cached[0] == spec and cached[1] == ca_cert:
                return cached[2]
            result = self._node_cert_uncached(node, spec, ca)
            self._nodes[node] = (spec, ca_cert, result)
            return result

    def _node_cert_uncached(
        self, node: str, spec: CertSpec, ca: tuple[bytes, bytes] | None
    ) -> tuple[bytes, bytes] | None:
        ndir = self._node_dir(node)
        key_path, cert_path = ndir / "key.pem", ndir / "cert.pem"
        key = self._read(key_path, secret=True)
        cert = self._read(cert_path, secret=True)
        now = self.clock()
        reason = self._cert_problem(key_path, key, cert_path, cert, spec, ca, now)
        if reason is None:
            assert key is not None and cert is not None
            return key, cert
        kind = "created" if reason == "new" else "reissued"
        self.events.append(Event(kind, f"certificate {node}", reason))
        if not self.writable:
            return None
        assert ca is not None
        new_key, new_cert = pki.issue_cert(
            ca_key_pem=ca[0],
            ca_cert_pem=ca[1],
            common_name=spec.common_name,
            dns_names=spec.dns_names,
            ip_addresses=spec.ip_addresses,
            days=spec.days,
            now=now,
            backdate=spec.backdate,
        )
        self._mkdirs(ndir)
        # Both temps are written before either rename; a crash between the renames
        # leaves a key/cert mismatch, which the next run detects and re-issues.
        self._write_atomic([(key_path, new_key, _SECRET_MODE), (cert_path, new_cert, _SECRET_MODE)])
        return new_key, new_cert

    def _cert_problem(
        self,
        key_path: Path,
        key: bytes | None,
        cert_path: Path,
        cert: bytes | None,
        spec: CertSpec,
        ca: tuple[bytes, bytes] | None,
        now: datetime,
    ) -> str | None:
        """Why the stored pair must be (re)issued, or None if it still fits."""
        if key is None and cert is None:
            return "new"
        if key is None:
            return f"{key_path.name} is missing"
        if cert is None:
            return f"{cert_path.name} is missing"
        info = self._inspect(cert_path, cert)
        if not self._matches(key_path, key, cert_path, cert):
            return "key does not match certificate"
        reasons: list[str] = []
        if info.subject_cn != spec.common_name:
            reasons.append(f"common name changed: {info.subject_cn} -> {spec.common_name}")
        for r in (
            _diff("DNS names", set(info.dns_names), set(spec.dns_names), str.lower),
            _diff("IP addresses", set(info.ip_addresses), set(spec.ip_addresses), _ip_key),
        ):
            if r is not None:
                reasons.append(r)
        if ca is None or not pki.cert_signed_by(cert, ca[1]):
            reasons.append("not signed by the current CA")
        left = info.not_after - now
        if left <= timedelta(0):
            reasons.append(f"expired {info.not_after.date().isoformat()}")
        elif left < spec.renew_before:
            reasons.append(
                f"expires {info.not_after.date().isoformat()} "
                f"(inside the {_window(spec.renew_before)} renewal window)"
            )
        return "; ".join(reasons) or None

    def cert_info(self, node: str) -> pki.CertInfo | None:
        """Read-only peek at a node's stored certificate (None if absent)."""
        with self._mutex:
            self._check_open()
            path = self._node_dir(node) / "cert.pem"
            raw = self._read(path, secret=True, fix_mode=False)
            return None if raw is None else self._inspect(path, raw)

    def package_version(self, node: str, fmt: str, digest: str) -> int:
        """Monotonic version per (node, fmt): bumps only when the content digest changes.

        Kept in memory and persisted by flush()/close() (one write per run, not per call).
        """
        with self._mutex:
            self._check_open()
            versions = self._load_versions()
            entry = versions.setdefault(node, {}).get(fmt)
            if entry is not None and entry["digest"] == digest:
                return entry["version"]
            version = entry["version"] + 1 if entry is not None else 1
            versions[node][fmt] = {"version": version, "digest": digest}
            self._versions_dirty = True
            return version

    def current_version(self, node: str, fmt: str) -> tuple[int, str] | None:
        with self._mutex:
            self._check_open()
            entry = self._load_versions().get(node, {}).get(fmt)
            return None if entry is None else (entry["version"], entry["digest"])

    def set_version(self, node: str, fmt: str, version: int, digest: str) -> None:
        with self._mutex:
            self._check_open()
            versions = self._load_versions()
            entry = versions.setdefault(node, {}).get(fmt)
            if entry is not None and version < entry["version"]:
                raise ValueError(f"{node} {fmt}: version {version} < {entry['version']}")
            versions[node][fmt] = {"version": version, "digest": digest}
            self._versions_dirty = True

    def require_versions_at_least(self, published: dict[tuple[str, str], int]) -> None:
        with self._mutex:
            versions = self._load_versions()
            for (node, fmt), v in sorted(published.items()):
                entry = versions.get(node, {}).get(fmt)
                if entry is None or entry["version"] < v:
                    raise UserError(
                        f"{self._versions_path}: {node} {fmt} is below the published version "
                        f"{v}; restore it from your backup"
                    )

    def secret(self, name: str, factory: Callable[[], bytes]) -> bytes | None:
        """Get-or-create <dir>/<name> (mode 0600) with bytes from factory()."""
        return self._blob(name, factory, _SECRET_MODE)

    def public(self, name: str, factory: Callable[[], bytes]) -> bytes | None:
        """Like secret(), but mode 0644: for public keys published beside artifacts."""
        return self._blob(name, factory, _PUBLIC_MODE)

    def _blob(self, name: str, factory: Callable[[], bytes], mode: int) -> bytes | None:
        with self._mutex:
            self._check_open()
            path = self._blob_path(name)
            raw = self._read(path, secret=mode == _SECRET_MODE)
            if raw is not None:
                return raw
            self._plan(Event("created", name, "new"))
            if not self.writable:
                return None
            data = factory()
            if not isinstance(data, bytes):
                raise TypeError(f"factory for {name} returned {type(data).__name__}, not bytes")
            self._mkdirs(path.parent)
            self._write_atomic([(path, data, mode)])
            return data

    # ---------------------------------------------------------------- internals

    @property
    def _versions_path(self) -> Path:
        return self.directory / "versions.json"

    def _plan(self, event: Event) -> None:
        # Read-only, nothing gets cached, so a repeated call must not repeat the event.
        if self.writable or event not in self.events:
            self.events.append(event)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("State is closed")

    def _node_dir(self, node: str) -> Path:
        # The cluster model validates names; this only keeps a bad one inside state/.
        if not node or "/" in node or "\0" in node or node.startswith("."):
            raise ValueError(f"bad node name for the state store: {node!r}")
        return self.directory / "nodes" / node

    def _blob_path(self, name: str) -> Path:
        p = PurePosixPath(name)
        if (
            p.is_absolute()
            or not p.parts
            or any(part in ("", ".", "..") or part.startswith(".") for part in p.parts)
            or p.parts[0] in _RESERVED
        ):
            raise ValueError(f"bad secret name for the state store: {name!r}")
        return self.directory.joinpath(*p.parts)

    def _tighten(self, path: Path, mode: int) -> None:
        """In a writable store, take away group/other bits a human may have added."""
        if not self.writable:
            return
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            return  # never chmod through a link to somewhere outside state/
        cur = stat.S_IMODE(st.st_mode)
        if cur & ~mode & 0o777:
            os.chmod(path, cur & mode)

    def _mkdirs(self, path: Path) -> None:
        rel = path.relative_to(self.directory)
        cur = self.directory
        for part in rel.parts:
            cur = cur / part
            try:
                cur.mkdir(mode=_DIR_MODE)
                os.chmod(cur, _DIR_MODE)  # mkdir's mode is filtered by umask
                self._fsync_dir(cur.parent)
            except FileExistsError:
                self._tighten(cur, _DIR_MODE)

    def _read(self, path: Path, *, secret: bool, fix_mode: bool = True) -> bytes | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise UserError(f"{path}: is a directory, expected a file") from None
        if secret and fix_mode:
            self._tighten(path, _SECRET_MODE)
        return data

    def _inspect(self, path: Path, cert: bytes) -> pki.CertInfo:
        try:
            return pki.inspect_cert(cert)
        except ValueError as e:
            raise UserError(f"{path}: not a valid PEM certificate ({e})") from None

    def _matches(self, key_path: Path, key: bytes, cert_path: Path, cert: bytes) -> bool:
        try:
            return pki.key_matches_cert(key, cert)
        except (ValueError, TypeError) as e:
            raise UserError(f"{key_path}: not a valid PEM private key ({e})") from None

    def _load_versions(self) -> _Versions:
        if self._versions is not None:
            return self._versions
        path = self._versions_path
        raw = self._read(path, secret=True)
        if raw is None:
            self._versions = {}
            return self._versions
        try:
            data = json.loads(raw)
            ok = isinstance(data, dict) and all(
                isinstance(fmts, dict)
                and all(
                    isinstance(e, dict)
                    and isinstance(e.get("version"), int)
                    and isinstance(e.get("digest"), str)
                    for e in fmts.values()
                )
                for fmts in data.values()
            )
        except (ValueError, UnicodeDecodeError):
            ok = False
        if not ok:
            raise UserError(
                f"{path}: not a valid versions file "
                '(expected {"<node>": {"<format>": {"version": N, "digest": "..."}}})'
            )
        self._versions = data
        return data

    def _sweep(self) -> None:
        """Under the lock: tighten every dir to 0700 and drop temps of a run that died."""
        for root, dirs, files in os.walk(self.directory):
            for d in dirs:
                self._tighten(Path(root, d), _DIR_MODE)
            for f in files:
                if _TMP_RE.match(f):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(root, f))

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_atomic(self, files: list[tuple[Path, bytes, int]]) -> None:
        """Write every file to a temp beside it, then rename them all, then fsync the dirs."""
        assert self.writable
        temps: list[tuple[Path, Path]] = []
        try:
            for path, data, mode in files:
                tmp = path.with_name(f".{path.name}.tmp-{_secrets.token_hex(8)}")
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(tmp, flags, mode)
                temps.append((tmp, path))
                try:
                    os.fchmod(fd, mode)  # exact mode before any content, whatever the umask
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for tmp, path in temps:
                os.replace(tmp, path)
        except BaseException:
            for tmp, _ in temps:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            raise
        for d in _unique(path.parent for _, path in temps):
            self._fsync_dir(d)


def _unique(paths: Iterator[Path]) -> list[Path]:
    seen: list[Path] = []
    for p in paths:
        if p not in seen:
            seen.append(p)
    return seen
