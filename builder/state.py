"""The secrets store: state/ beside the cluster file, kept forever.

Layout (dirs 0700, files 0600 unless made with `public()`):

    <dir>/.lock                      flock taken by a writing run
    <dir>/ledger.json                every file the store ever created (builder.ledger)
    <dir>/gossip.key                 base64 gossip key + newline
    <dir>/ca/ca.key, ca/ca.pem       the cluster CA (its key never leaves state/)
    <dir>/nodes/<node>/key.pem       a node's key ...
    <dir>/nodes/<node>/cert.pem      ... and its certificate
    <dir>/versions.json              package version per (node, format)
    <dir>/consul-ca.{key,pem}        [consul.agent] on: the Consul CA (builder.consul) ...
    <dir>/consul-<node>.{key,pem}    ... and each node's Consul pair, through ca(files=)
                                     and node_cert(files=) under the same policy
    <dir>/<name>                     other secrets / public keys (secret(), public())

Only a secret that never existed is created. One the ledger knows and that is now
missing, or changed since the store wrote it, or unparsable, is a UserError naming the
file, the backup, and the deliberate command that replaces it; nothing is written then.
A node certificate that no longer fits (names, addresses, CA, expiry) is re-issued:
that is its normal life. A second run over the same state writes nothing.

A read-only store (create=False, the plan) makes exactly the same checks and raises
exactly the same errors as a writable one, but never creates, writes or chmods; there
`events` describes what a writing run *would* do. `warnings` collects what the CLI
should print on every command (a CA nearing its end, a file found unrecorded).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import TypedDict

from builder import atomic_io, pki
from builder.cert_policy import (
    CASpec,
    CertSpec,
    ca_verdict,
    cert_problems,
    issue_problem,
    new_ca_problem,
    permitted_diff,
)
from builder.errors import UserError
from builder.ledger import LEDGER_NAME, Ledger, Status, restore_ledger
from builder.ledger import sha256 as ledger_sha256

__all__ = ["NOMAD_CA", "CAFiles", "CASpec", "CertFiles", "CertSpec", "Event", "State"]


class _VersionEntry(TypedDict):
    version: int
    digest: str


# versions.json: {"<node>": {"<format>": {"version": N, "digest": "..."}}}
_Versions = dict[str, dict[str, _VersionEntry]]

_DIR_MODE = 0o700
_SECRET_MODE = 0o600
_PUBLIC_MODE = 0o644
_VERSIONS = "versions.json"
_CA_KEY, _CA_CERT = "ca/ca.key", "ca/ca.pem"
# Names secret()/public() may not take: they belong to the store itself.
_RESERVED = {"gossip.key", "ca", "nodes", _VERSIONS, LEDGER_NAME}
_INTERRUPTED = "an earlier run was interrupted while writing it"


@dataclass(frozen=True)
class CAFiles:
    """Where a CA lives in the store: the cluster's (Nomad's, NOMAD_CA) or Consul's."""

    key: str
    cert: str
    what: str  # how events name it: "CA", "Consul CA"
    # where a rotation keeps the other generation (next.*, previous.*) and the archive
    staging: str


@dataclass(frozen=True)
class CertFiles:
    """Where a node certificate signed by `ca` lives in the store."""

    key: str
    cert: str
    what: str  # how events name it: "certificate <node>"
    ca: CAFiles


NOMAD_CA = CAFiles(_CA_KEY, _CA_CERT, "CA", "ca")


@dataclass(frozen=True)
class Event:
    kind: str  # "created" | "reissued"
    what: str  # "gossip key", "CA", "certificate <node>", or a secret's name
    reason: str  # "new", "DNS names changed: +a.b -c.d", ...


@dataclass(frozen=True)
class _Write:
    rel: str
    data: bytes
    mode: int
    old: bytes | None  # what the file held before (None: nothing)
    digest: bool = True  # the ledger keeps its sha256 (else only that it exists)
    facts: dict[str, object] | None = None  # what is known about data (ledger.Entry.facts)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def way_out(rel: str) -> str:
    """The deliberate command that replaces the lost or changed store file `rel` ('' if
    only a restore from a backup brings it back). Each one works without the file
    (tests/test_way_out.py runs every one)."""
    parts = rel.split("/")
    if rel in (_CA_KEY, _CA_CERT):
        return "nomad-build pki rotate-ca --lost"
    if rel in ("consul-ca.key", "consul-ca.pem"):
        return "nomad-build pki rotate-ca --consul --lost"
    if rel == "gossip.key":
        return "nomad-build pki rotate-gossip --lost"
    if rel == "consul-gossip.key":
        return "nomad-build pki rotate-gossip --consul --lost"
    if parts[0] == "nodes" and len(parts) == 3 and parts[2] in ("key.pem", "cert.pem"):
        return f"nomad-build pki renew --node {parts[1]} --rekey"
    if len(parts) == 1 and rel.startswith("consul-") and rel.endswith((".key", ".pem")):
        node = rel.removeprefix("consul-").rsplit(".", 1)[0]
        return f"nomad-build pki renew --node {node} --rekey --only consul"
    if len(parts) == 1 and rel.endswith(".sec"):
        return "nomad-build pki rotate-signing-key --openbsd --lost"
    if rel in ("apt-signing.key", "apt-signing-next.key", "apt-signing-previous.key"):
        return "nomad-build pki rotate-signing-key --apt --lost"
    return ""


# (spec, CA certificate, key path, key bytes, cert bytes, the facts the plan knew or
# learnt about the certificate: the writing run records them)
SoundPair = tuple[CertSpec, bytes | None, str, bytes, bytes, dict[str, object]]


@dataclass(frozen=True, eq=False, repr=False)  # repr would print key material
class Verified:
    """The certificate pairs a read-only store found sound (State.verified()): a writing
    run that opens the store moments later, finds its ledger byte-identical (so no run
    wrote anything in between: every write goes through the ledger) and each pair's files
    still holding these exact bytes, takes the pair as verified instead of checking the
    certificate against the ledger's facts, the spec and the CA again."""

    ledger: bytes
    pairs: Mapping[str, SoundPair]  # by the certificate's path in the store


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
    _ledger: Ledger | None = None
    _run_lock: atomic_io.RunLock | None = None
    _mutex: threading.RLock = field(default_factory=threading.RLock)
    _ca: dict[CAFiles, tuple[CASpec, tuple[bytes, bytes] | None]] = field(default_factory=dict)
    _gossip: str | None = None
    _nodes: dict[str, tuple[CertSpec, bytes | None, tuple[bytes, bytes] | None]] = field(
        default_factory=dict
    )
    _versions: _Versions | None = None
    _versions_dirty: bool = False
    _closed: bool = False
    _deferred: list[_Write] | None = None  # inside batch(): writes committed at its end
    _planned: set[Event] = field(default_factory=set)  # read-only: events already listed
    _tightened: set[str] = field(default_factory=set)  # directories checked by _tighten
    _modes: dict[str, int] = field(default_factory=dict)  # st_mode of files as _read found them
    _bundle: dict[CAFiles, bytes] = field(default_factory=dict)  # ca_bundle(), read once
    _sound: dict[str, SoundPair] = field(default_factory=dict)  # read-only, for verified()
    _carried: Verified | None = None  # writable: what the plan's store verified

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
        adopt: bool = False,
        wait: float = 0.0,
        verified: Verified | None = None,
    ) -> State:
        """create=True: make the dir (0700) and take the run lock; else read-only, no writes.

        The ledger is checked here: missing while the directory holds files, or damaged,
        is a UserError. adopt=True (writable only; a deliberate command for a store made
        before the ledger existed) records every file present instead of refusing.
        """
        directory = Path(directory)
        st = cls(directory=directory, writable=create, clock=clock or _utcnow)
        if directory.exists() and not directory.is_dir():
            raise UserError(f"{directory}: exists but is not a directory")
        if create:
            st._open_writable(wait)
        elif adopt:
            raise ValueError("adopt needs a writable store")
        try:
            st._ledger = (
                Ledger.load(directory)
                if directory.is_dir()
                else Ledger(directory / LEDGER_NAME, {}, exists=False)
            )
            st._check_ledger_exists(adopt)
            if create and verified is not None and st._ledger.loaded == verified.ledger:
                st._carried = verified
        except BaseException:
            st.close()
            raise
        return st

    def _open_writable(self, wait: float = 0.0) -> None:
        try:
            self.directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        except FileExistsError:
            raise UserError(f"{self.directory}: exists but is not a directory") from None
        self._run_lock = atomic_io.RunLock(self.directory, _SECRET_MODE, wait)
        atomic_io.sweep_temps(self.directory)

    def _check_ledger_exists(self, adopt: bool) -> None:
        ledger = self._ledger
        assert ledger is not None
        if ledger.exists:
            return
        held = self._store_files()
        if not held:
            return
        if adopt:
            for rel in held:
                path = self._path(rel)
                public = bool(path.stat().st_mode & 0o044)
                self._record(rel, path.read_bytes(), rel != _VERSIONS and not public)
            self.warnings.append(f"{ledger.path}: created, recording {len(held)} files")
            return
        shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise UserError(
            f"{ledger.path}: missing while {self.directory} holds {shown}; {restore_ledger()}"
            "; a store made before nomad-build kept a ledger is recorded once with "
            "`nomad-build state adopt`"
        )

    def _store_files(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        found: list[str] = []
        for path in sorted(self.directory.rglob("*")):
            if path.name == atomic_io.LOCK_NAME or atomic_io.TMP_RE.match(path.name):
                continue
            if not path.is_dir():
                found.append(path.relative_to(self.directory).as_posix())
        return found

    def flush(self) -> None:
        """Persist package versions handed out so far. Call before publishing artifacts
        that carry them; close() does it too."""
        with self._mutex:
            if not (self.writable and self._versions_dirty and self._versions is not None):
                return
            data = _versions_json(self._versions)
            assert self._ledger is not None
            if _VERSIONS in self._ledger.entries:
                atomic_io.write_atomic([(self._path(_VERSIONS), data, _SECRET_MODE)])
            else:
                self._commit([_Write(_VERSIONS, data, _SECRET_MODE, None, digest=False)])
            self._versions_dirty = False

    def close(self) -> None:
        with self._mutex:
            if self._closed:
                return
            try:
                self.flush()
                self._write_facts()
            finally:
                self._closed = True
                if self._run_lock is not None:
                    self._run_lock.release()
                    self._run_lock = None

    def _write_facts(self) -> None:
        """Persist facts learnt since the ledger was last written (one write per run)."""
        ledger = self._ledger
        if self.writable and ledger is not None and ledger.facts_added:
            atomic_io.write_atomic([(ledger.path, ledger.dump(), _SECRET_MODE)])

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

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Commit every write made inside as ONE ledger transaction: the ledger (all of
        them pending) written and synced, all files written with one fsync pass, renamed,
        then the ledger again. Same crash guarantees as one write at a time (each file is
        as the ledger says or as `pending` says), two ledger writes instead of 2 per file.
        Writes made before an exception inside are committed too (they are sound)."""
        with self._mutex:
            nested = self._deferred is not None or not self.writable
            if not nested:
                self._deferred = []
        if nested:
            yield
            return
        try:
            yield
        finally:
            with self._mutex:
                writes, self._deferred = self._deferred or [], None
                if writes:
                    self._commit(writes)

    # ---------------------------------------------------------------- gossip

    def gossip_key(self) -> str | None:
        with self._mutex:
            self._check_open()
            if self._gossip is not None:
                return self._gossip
            rel = "gossip.key"
            raw, status = self._load(rel)
            if raw is not None:
                key = raw.decode("ascii", "replace").strip()
                try:
                    n = len(base64.b64decode(key, validate=True))
                except (binascii.Error, ValueError):
                    n = -1
                if n not in (16, 24, 32):
                    raise self._refuse(rel, "not a gossip key (base64 of 16, 24 or 32 bytes)")
                self._settle(rel, raw, status)
                self._gossip = key
                return key
            self._plan(Event("created", "gossip key", "new"))
            if not self.writable:
                return None
            key = pki.generate_gossip_key()
            self._commit([_Write(rel, (key + "\n").encode(), _SECRET_MODE, None)])
            self._gossip = key
            return key

    # ---------------------------------------------------------------- CA

    def ca(self, spec: CASpec, files: CAFiles = NOMAD_CA) -> tuple[bytes, bytes] | None:
        """(key PEM, cert PEM) of the cluster CA (or the one `files` names), created once
        and never regenerated.

        Refused (UserError): lost or damaged files, changed name constraints, an expired
        CA, a CA ending before a certificate it would sign now; near its end it adds a
        warning to `warnings`. Read-only, None when a writing run would create it.
        """
        with self._mutex:
            self._check_open()
            cached = self._ca.get(files)
            if cached is not None and cached[0] == spec:
                return cached[1]
            result = self._ca_uncached(spec, files)
            self._ca[files] = (spec, result)
            return result

    def _ca_uncached(self, spec: CASpec, files: CAFiles) -> tuple[bytes, bytes] | None:
        key, key_status = self._load(files.key)
        cert, cert_status = self._load(files.cert)
        if key is None and cert is None:
            return self._ca_create(spec, "new", files)
        if key is None or cert is None:
            present = files.key if key is not None else files.cert
            missing = files.cert if key is not None else files.key
            if self._in_flight(present):  # a creation that never finished
                return self._ca_create(spec, _INTERRUPTED, files)
            raise self._refuse(missing, f"missing while {self._path(present)} exists")
        info = self._inspect(files.cert, cert)
        self._check_pair(files.key, key, files.cert, cert)
        if not info.is_ca:
            raise self._refuse(files.cert, "is not a CA certificate")
        self._check_constraints(info, spec, files)
        refusal, warning = ca_verdict(info, spec, self.clock())
        if refusal is not None:
            raise UserError(f"{self._path(files.cert)}: {refusal}")
        if warning is not None:
            self._warn(f"{self._path(files.cert)}: {warning}")
        self._settle(files.key, key, key_status)
        self._settle(files.cert, cert, cert_status)
        return key, cert

    def _ca_create(self, spec: CASpec, reason: str, files: CAFiles) -> tuple[bytes, bytes] | None:
        problem = new_ca_problem(spec)
        if problem is not None:
            where = self._path(files.cert).parent if files == NOMAD_CA else self._path(files.cert)
            raise UserError(f"{where}: cannot create the {files.what}: {problem}")
        self._plan(Event("created", files.what, reason))
        if not self.writable:
            return None
        key, cert = pki.create_ca(
            common_name=spec.common_name,
            permitted_dns=spec.permitted_dns,
            days=spec.days,
            now=self.clock(),
        )
        old_key, old_cert = self._peek(files.key), self._peek(files.cert)
        self._bundle.pop(files, None)
        facts = _issued_facts(key, cert, None)
        self._commit(
            [
                _Write(files.key, key, _SECRET_MODE, old_key),
                _Write(files.cert, cert, _SECRET_MODE, old_cert, facts=facts),
            ]
        )
        return key, cert

    def _check_constraints(self, info: pki.CertInfo, spec: CASpec, files: CAFiles) -> None:
        diff = permitted_diff(info, spec)
        if diff is None:
            return
        raise UserError(
            f"{self._path(files.cert)}: the existing CA's name constraints permit "
            f"{', '.join(info.permitted_dns) or '(anything)'} but the cluster needs "
            f"{', '.join(spec.permitted_dns) or '(anything)'} ({diff}); a CA is never "
            "regenerated silently because every node trusts it: fix the cluster file, "
            f"or replace the CA deliberately with {spec.rotate} and redeploy all nodes"
        )

    # ---------------------------------------------------------------- node certs

    def node_cert(
        self,
        node: str,
        spec: CertSpec,
        ca: tuple[bytes, bytes] | None,
        files: CertFiles | None = None,
    ) -> tuple[bytes, bytes] | None:
        """(key PEM, cert PEM) for `node`, (re)issued only when the stored one no longer fits.

        `ca` is what ca() returned; None is accepted only read-only (CA not made yet).
        `files`: where the pair lives (default nodes/<node>/, signed by the cluster CA).
        Read-only, returns None when a writing run would (re)issue. A key or cert the
        ledger knows that is missing, changed, unparsable or not a pair is refused.
        """
        with self._mutex:
            self._check_open()
            if ca is None and self.writable:
                raise ValueError("node_cert needs the CA in a writable store")
            ca_cert = ca[1] if ca is not None else None
            files = files or self.nomad_cert_files(node)
            cached = self._nodes.get(files.cert)
            if cached is not None and cached[0] == spec and cached[1] == ca_cert:
                return cached[2]
            result = self._carried_pair(files, spec, ca_cert)
            if result is None:
                result = self._node_cert_uncached(files, spec, ca)
            self._nodes[files.cert] = (spec, ca_cert, result)
            return result

    def verified(self) -> Verified | None:
        """Read-only: the pairs found sound so far, for the writing run (None: the store
        has no ledger file yet)."""
        ledger = self._ledger
        if self.writable or ledger is None or ledger.loaded is None:
            return None
        return Verified(ledger.loaded, dict(self._sound))

    def _carried_pair(
        self, files: CertFiles, spec: CertSpec, ca_cert: bytes | None
    ) -> tuple[bytes, bytes] | None:
        """The pair the plan's store verified, if the files still hold exactly its bytes
        (read again: a byte compare, not a check of what the bytes say)."""
        known = self._carried.pairs.get(files.cert) if self._carried is not None else None
        if known is None or known[0] != spec or known[1] != ca_cert or known[2] != files.key:
            return None
        key, cert = self._read(files.key), self._read(files.cert)
        if key != known[3] or cert != known[4]:
            return None
        assert key is not None and cert is not None and self._ledger is not None
        self._tighten(files.key, file=True)
        self._tighten(files.cert, file=True)
        entry = self._ledger.entries.get(files.cert)
        if known[5] and entry is not None and entry.sha256 is not None:
            self._ledger.add_facts(files.cert, entry.sha256, known[5])  # kept at close
        return key, cert

    def nomad_cert_files(self, node: str) -> CertFiles:
        """Where `node`'s (Nomad) certificate and key live."""
        rel = self._node_rel(node, "key.pem"), self._node_rel(node, "cert.pem")
        return CertFiles(rel[0], rel[1], f"certificate {node}", NOMAD_CA)

    def _node_cert_uncached(
        self, files: CertFiles, spec: CertSpec, ca: tuple[bytes, bytes] | None
    ) -> tuple[bytes, bytes] | None:
        key_rel, cert_rel = files.key, files.cert
        key, key_status = self._load(key_rel)
        cert, cert_status = self._load(cert_rel)
        reason = self._node_reason(key_rel, key, key_status, cert_rel, cert, cert_status)
        if reason is None:
            assert key is not None and cert is not None
            reason = self._fit_reason(cert_rel, cert, spec, ca)
        if reason is None:
            assert key is not None and cert is not None
            self._settle(key_rel, key, key_status)
            self._settle(cert_rel, cert, cert_status)
            if not self.writable and key_status is cert_status is Status.OK:
                ca_cert = ca[1] if ca is not None else None
                facts = self._facts(cert_rel, ledger_sha256(cert))
                self._sound[cert_rel] = (spec, ca_cert, key_rel, key, cert, facts)
            return key, cert
        self._check_issue(spec, ca, files.ca)
        kind = "created" if reason == "new" else "reissued"
        self._plan(Event(kind, files.what, reason))
        if not self.writable:
            return None
        return self._issue(key_rel, key, cert_rel, cert, spec, ca)

    def _node_reason(
        self,
        key_rel: str,
        key: bytes | None,
        key_status: Status,
        cert_rel: str,
        cert: bytes | None,
        cert_status: Status,
    ) -> str | None:
        """Why the pair must be written regardless of the spec; None: it is a sound pair.
        (Lost or damaged files were refused by _load already.)"""
        if key is None and cert is None:
            return "new"
        if Status.INTERRUPTED in (key_status, cert_status):
            return _INTERRUPTED
        if key is None or cert is None:
            present = key_rel if key is not None else cert_rel
            if self._in_flight(present):
                return _INTERRUPTED
            missing = cert_rel if key is not None else key_rel
            return f"{PurePosixPath(missing).name} is missing"
        self._inspect(cert_rel, cert)
        self._check_pair(key_rel, key, cert_rel, cert)
        return None

    def _fit_reason(
        self, cert_rel: str, cert: bytes, spec: CertSpec, ca: tuple[bytes, bytes] | None
    ) -> str | None:
        info = self._inspect(cert_rel, cert)
        ca_end = pki.inspect_cert(ca[1]).not_after if ca is not None else None
        signed = ca is not None and self._signed_by(cert_rel, cert, ca[1])
        reasons = cert_problems(
            info, spec, signed_by_ca=signed, ca_not_after=ca_end, now=self.clock()
        )
        return "; ".join(reasons) or None

    def _check_issue(self, spec: CertSpec, ca: tuple[bytes, bytes] | None, files: CAFiles) -> None:
        """Refuse a certificate that would outlive the CA (read-only: the planned one)."""
        now = self.clock()
        planned = self._ca.get(files)
        if ca is not None:
            ca_end = pki.inspect_cert(ca[1]).not_after
        elif planned is not None and planned[1] is None:
            ca_end = now + timedelta(days=planned[0].days)
        else:
            return
        rotate = planned[0].rotate if planned is not None else None
        problem = issue_problem(now, spec.days, ca_end, rotate)
        if problem is not None:
            raise UserError(f"{self._path(files.cert)}: {problem}")

    def _issue(
        self,
        key_rel: str,
        old_key: bytes | None,
        cert_rel: str,
        old_cert: bytes | None,
        spec: CertSpec,
        ca: tuple[bytes, bytes] | None,
    ) -> tuple[bytes, bytes]:
        assert ca is not None
        new_key, new_cert = self._sign(spec, ca, None)
        facts = _issued_facts(new_key, new_cert, ca[1])
        self._commit(
            [
                _Write(key_rel, new_key, _SECRET_MODE, old_key),
                _Write(cert_rel, new_cert, _SECRET_MODE, old_cert, facts=facts),
            ]
        )
        return new_key, new_cert

    def _sign(
        self, spec: CertSpec, ca: tuple[bytes, bytes], key: bytes | None
    ) -> tuple[bytes, bytes]:
        """A certificate for `spec` from the CA, for `key` (None: a new key pair)."""
        return pki.issue_cert(
            ca_key_pem=ca[0],
            ca_cert_pem=ca[1],
            common_name=spec.common_name,
            dns_names=spec.dns_names,
            ip_addresses=spec.ip_addresses,
            days=spec.days,
            now=self.clock(),
            backdate=spec.backdate,
            key_pem=key,
        )

    def cert_info(self, node: str, files: CertFiles | None = None) -> pki.CertInfo | None:
        """Read-only peek at a node's stored certificate (None if it never existed)."""
        with self._mutex:
            self._check_open()
            rel = (files or self.nomad_cert_files(node)).cert
            known = self._nodes.get(rel)
            if known is not None and known[2] is not None:  # node_cert() read it already
                return self._inspect(rel, known[2][1])
            raw, _ = self._load(rel, fix_mode=False)
            return None if raw is None else self._inspect(rel, raw)

    # ---------------------------------------------------------------- versions

    def package_version(self, node: str, fmt: str, digest: str) -> int:
        """Monotonic version per (node, fmt): bumps only when the content digest changes.

        Kept in memory and persisted by flush()/close() (one write per run, not per call).
        """
        with self._mutex:
            current = self.current_version(node, fmt)
            if current is not None and current[1] == digest:
                return current[0]
            version = current[0] + 1 if current is not None else 1
            self.set_version(node, fmt, version, digest)
            return version

    def current_version(self, node: str, fmt: str) -> tuple[int, str] | None:
        """(version, digest) last handed out for (node, fmt), or None; never bumps."""
        with self._mutex:
            self._check_open()
            entry = self._load_versions().get(node, {}).get(fmt)
            return None if entry is None else (entry["version"], entry["digest"])

    def set_version(self, node: str, fmt: str, version: int, digest: str) -> None:
        """Record `version` (a positive int, never lower than the current one) and the
        content `digest` for (node, fmt); persisted by flush()/close()."""
        with self._mutex:
            self._check_open()
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                raise ValueError(f"package version must be a positive integer, not {version!r}")
            versions = self._load_versions()
            entry = versions.get(node, {}).get(fmt)
            if entry is not None and version < entry["version"]:
                raise ValueError(
                    f"{node} {fmt}: version {version} is lower than {entry['version']}"
                )
            if entry == {"version": version, "digest": digest}:
                return
            versions.setdefault(node, {})[fmt] = {"version": version, "digest": digest}
            self._versions_dirty = True

    def require_versions_at_least(self, published: Mapping[tuple[str, str], int]) -> None:
        """UserError naming versions.json if a counter is below a version already
        published, {(node, format): version}: the next package would go backwards."""
        with self._mutex:
            self._check_open()
            versions = self._load_versions()
            for (node, fmt), seen in sorted(published.items()):
                entry = versions.get(node, {}).get(fmt)
                have = entry["version"] if entry is not None else 0
                if have < seen:
                    raise self._refuse(
                        _VERSIONS,
                        f"{node} {fmt} is at version {have}, but version {seen} is already "
                        "published; package versions only go up",
                    )

    def _load_versions(self) -> _Versions:
        if self._versions is not None:
            return self._versions
        raw, status = self._load(_VERSIONS)
        if raw is None:
            self._versions = {}
            return self._versions
        problem = _versions_problem(raw)
        if problem is not None:
            raise self._refuse(_VERSIONS, problem)
        self._settle(_VERSIONS, raw, status)
        data: _Versions = json.loads(raw)
        self._versions = data
        return data

    # ---------------------------------------------------------------- other files

    def secret(self, name: str, factory: Callable[[], bytes]) -> bytes | None:
        """Get-or-create <dir>/<name> (mode 0600) with bytes from factory(). Created only
        if it never existed; lost or changed since written is a UserError."""
        return self._blob(name, factory, _SECRET_MODE)

    def public(self, name: str, factory: Callable[[], bytes]) -> bytes | None:
        """Like secret(), but mode 0644, for public keys published beside artifacts. The
        ledger records only that it exists (the caller verifies it against its secret),
        and a lost one is made again by factory() (which must derive it), reported."""
        return self._blob(name, factory, _PUBLIC_MODE)

    def _blob(self, name: str, factory: Callable[[], bytes], mode: int) -> bytes | None:
        with self._mutex:
            self._check_open()
            rel = self._blob_rel(name)
            made = self._deferred_data(rel)
            if made is not None:  # made earlier in this batch(): not on disk yet
                return made
            public = mode == _PUBLIC_MODE
            raw, status = self._load(rel, lost_ok=public, fix_mode=not public)
            if raw is not None:
                self._settle(rel, raw, status, digest=not public)
                return raw
            reason = "new" if status is Status.NEW else "was missing; derived again"
            self._plan(Event("created", name, reason))
            if not self.writable:
                return None
            data = factory()
            if not isinstance(data, bytes):
                raise TypeError(f"factory for {name} returned {type(data).__name__}, not bytes")
            self._commit([_Write(rel, data, mode, None, digest=not public)])
            return data

    # ---------------------------------------------------------------- deliberate changes

    # The lifecycle commands (builder.lifecycle: renew, rotations, cli-cert) replace what
    # a build never would. Each change is recorded in the ledger like any other write.

    def read_file(self, rel: str) -> bytes | None:
        """A store file's bytes (None: never made); lost or changed since written is refused."""
        with self._mutex:
            self._check_open()
            raw, status = self._load(rel, fix_mode=False)
            if raw is not None:
                self._settle(rel, raw, status)
            return raw

    def problem(self, rel: str) -> str | None:
        """The one-line refusal a read of store file `rel` meets (lost, changed since
        written, unreadable), or None (sound, or never made). Changes nothing but, in a
        writable store, loose directory modes, as every read does."""
        with self._mutex:
            self._check_open()
            try:
                self._load(rel, fix_mode=False)
            except UserError as e:
                return str(e)
            return None

    def write_files(self, files: Mapping[str, tuple[bytes, bool]]) -> None:
        """Create or replace store files deliberately: {rel: (bytes, secret?)}. Secret files
        are 0600 and their digest is recorded; public ones 0644."""
        with self._mutex:
            self._check_open()
            if not self.writable:
                raise ValueError("write_files needs a writable store")
            writes = []
            for rel, (data, secret) in sorted(files.items()):
                if rel in (_VERSIONS, LEDGER_NAME) or rel.startswith(("/", ".")) or ".." in rel:
                    raise ValueError(f"bad store file for write_files: {rel!r}")
                mode = _SECRET_MODE if secret else _PUBLIC_MODE
                writes.append(_Write(rel, data, mode, self._peek(rel), digest=secret))
            self._commit(writes)
            self._ca.clear()
            self._bundle.clear()
            self._nodes.clear()
            self._gossip = None

    def remove_files(self, rels: list[str]) -> None:
        """Forget store files deliberately (the ledger first, then the files)."""
        with self._mutex:
            self._check_open()
            if not self.writable:
                raise ValueError("remove_files needs a writable store")
            ledger = self._ledger
            assert ledger is not None
            for rel in rels:
                ledger.entries.pop(rel, None)
            atomic_io.write_atomic([(ledger.path, ledger.dump(), _SECRET_MODE)])
            for rel in rels:
                self._path(rel).unlink(missing_ok=True)
            self._ca.clear()
            self._bundle.clear()
            self._nodes.clear()
            self._gossip = None

    def reissue_node_cert(
        self,
        node: str,
        spec: CertSpec,
        ca: tuple[bytes, bytes],
        *,
        rekey: bool,
        reason: str,
        files: CertFiles | None = None,
        replace_damaged: bool = False,
    ) -> tuple[bytes, bytes]:
        """Re-issue `node`'s certificate (or the one `files` names) now, whether or not it
        still fits; `rekey` makes a new key pair (a compromised key), else the stored key
        is kept. `replace_damaged` (with `rekey`): the pair may be lost or changed, nothing
        of it is read (`pki renew --node N --rekey`, the way out a refusal names)."""
        with self._mutex:
            self._check_open()
            if not self.writable:
                raise ValueError("reissue_node_cert needs a writable store")
            if replace_damaged and not rekey:
                raise ValueError("replace_damaged needs rekey: the old key is not trusted")
            files = files or self.nomad_cert_files(node)
            key_rel, cert_rel = files.key, files.cert
            if replace_damaged:
                key, cert = self._on_disk(key_rel), self._on_disk(cert_rel)
            else:
                key, _ = self._load(key_rel)
                cert, _ = self._load(cert_rel)
            self._check_issue(spec, ca, files.ca)
            keep = None if rekey or key is None else key
            new_key, new_cert = self._sign(spec, ca, keep)
            facts = _issued_facts(new_key, new_cert, ca[1])
            writes = [_Write(cert_rel, new_cert, _SECRET_MODE, cert, facts=facts)]
            if keep is None:
                writes.insert(0, _Write(key_rel, new_key, _SECRET_MODE, key))
            self._commit(writes)
            kind = "created" if cert is None else "reissued"
            self._plan(Event(kind, files.what, reason))
            self._nodes[files.cert] = (spec, ca[1], (new_key, new_cert))
            return new_key, new_cert

    def ca_bundle(self, files: CAFiles = NOMAD_CA) -> bytes | None:
        """What nodes trust: the CA certificate, plus the other generation while a
        `pki rotate-ca` is under way (ca/next.pem, then ca/previous.pem; another CA's in
        its `staging` directory). None: no CA yet."""
        with self._mutex:
            self._check_open()
            if files in self._bundle:
                return self._bundle[files]
            parts = []
            for rel in (files.cert, f"{files.staging}/next.pem", f"{files.staging}/previous.pem"):
                raw, status = self._load(rel, fix_mode=False)
                if raw is not None:
                    self._settle(rel, raw, status)
                    parts.append(raw if raw.endswith(b"\n") else raw + b"\n")
            bundle = b"".join(parts) or None
            if bundle is not None:  # (a CA made later in this run is read then)
                self._bundle[files] = bundle
            return bundle

    # ---------------------------------------------------------------- internals

    def _path(self, rel: str) -> Path:
        return self.directory.joinpath(*rel.split("/"))

    def _refuse(self, rel: str, problem: str) -> UserError:
        cmd = way_out(rel)
        tail = f", or replace it deliberately with `{cmd}`" if cmd else ""
        return UserError(f"{self._path(rel)}: {problem}; restore it from your backup{tail}")

    def _plan(self, event: Event) -> None:
        # Read-only, nothing gets cached, so a repeated call must not repeat the event
        # (a set beside the list: one plan may hold thousands of events).
        if self.writable or event not in self._planned:
            self._planned.add(event)
            self.events.append(event)

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("State is closed")

    def _node_rel(self, node: str, name: str) -> str:
        # The cluster model validates names; this only keeps a bad one inside state/.
        if not node or "/" in node or "\0" in node or node.startswith("."):
            raise ValueError(f"bad node name for the state store: {node!r}")
        return f"nodes/{node}/{name}"

    def _blob_rel(self, name: str) -> str:
        p = PurePosixPath(name)
        if (
            p.is_absolute()
            or not p.parts
            or any(part in ("", ".", "..") or part.startswith(".") for part in p.parts)
            or p.parts[0] in _RESERVED
        ):
            raise ValueError(f"bad secret name for the state store: {name!r}")
        return p.as_posix()

    def _peek(self, rel: str) -> bytes | None:
        try:
            return self._path(rel).read_bytes()
        except FileNotFoundError:
            return None

    def _on_disk(self, rel: str) -> bytes | None:
        """What `rel` holds now, whatever the ledger says (the old bytes of a deliberate
        replacement); a directory or an unreadable file in its place is refused."""
        try:
            return self._path(rel).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise UserError(
                f"{self._path(rel)}: {e.strerror}; move it aside, then run this again"
            ) from None

    def _deferred_data(self, rel: str) -> bytes | None:
        """The bytes a write deferred by batch() will give `rel`, if one is pending."""
        for w in reversed(self._deferred or ()):
            if w.rel == rel:
                return w.data
        return None

    def _read(self, rel: str) -> bytes | None:
        try:  # a str path and a bare fd: thousands of reads
            fd = os.open(f"{self.directory}/{rel}", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._refuse(rel, f"unreadable ({e.strerror})") from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise self._refuse(rel, "is a directory, expected a file")
            self._modes[rel] = st.st_mode  # for _tighten
            return atomic_io.read_all(fd, st.st_size)
        except OSError as e:
            raise self._refuse(rel, f"unreadable ({e.strerror})") from None
        finally:
            os.close(fd)

    def _tighten(self, rel: str, *, file: bool) -> None:
        """Writable: take group/other bits off a sound file (if `file`) and its dirs."""
        if not self.writable:
            return
        mode = self._modes.get(rel)
        if file and (mode is None or mode & ~_SECRET_MODE & 0o777):  # (read it: it was fine)
            atomic_io.tighten(self._path(rel), _SECRET_MODE)
        parents = rel.split("/")[:-1]
        for depth in range(len(parents), -1, -1):  # down to the store itself
            parent = "/".join(parents[:depth])
            if parent not in self._tightened:  # once per run: thousands of files share them
                self._tightened.add(parent)
                where = f"{self.directory}/{parent}" if parent else self.directory  # (a str:
                atomic_io.tighten(where, _DIR_MODE)  # a directory per node)

    def _load(
        self, rel: str, *, lost_ok: bool = False, fix_mode: bool = True
    ) -> tuple[bytes | None, Status]:
        """The file's bytes and its status against the ledger; lost or changed is refused."""
        data = self._read(rel)
        assert self._ledger is not None
        status = self._ledger.status(rel, data)
        if status is Status.LOST and not lost_ok:
            raise self._refuse(rel, "missing, but this store created it before")
        if status is Status.DAMAGED:
            raise self._refuse(
                rel,
                "changed since nomad-build wrote it "
                f"(its sha256 is not the one {self._ledger.path} records)",
            )
        if data is not None:
            self._tighten(rel, file=fix_mode)
        return data, status

    def _in_flight(self, rel: str) -> bool:
        assert self._ledger is not None
        entry = self._ledger.entries.get(rel)
        return entry is not None and entry.pending is not None

    def _settle(self, rel: str, data: bytes, status: Status, *, digest: bool = True) -> None:
        """A sound file the ledger does not describe exactly (restored from an older
        backup, or left by an interrupted write): a writing run records it as it is."""
        if status is Status.UNRECORDED:
            later = "recorded" if self.writable else "a writing run records it"
            self._warn(f"{self._path(rel)}: not in {LEDGER_NAME}; {later}")
        if status in (Status.UNRECORDED, Status.INTERRUPTED) and self.writable:
            self._record(rel, data, digest and rel != _VERSIONS)

    def _record(self, rel: str, data: bytes, digest: bool) -> None:
        assert self._ledger is not None
        self._ledger.begin({rel: (data, data, digest)}, self.clock())
        blob = self._ledger.finish([rel])
        atomic_io.write_atomic([(self._ledger.path, blob, _SECRET_MODE)])

    def _commit(self, writes: list[_Write]) -> None:
        """Ledger first (the writes marked pending), then the files, then the ledger again."""
        assert self.writable and self._ledger is not None
        if self._deferred is not None:
            self._deferred.extend(writes)
            return
        ledger = self._ledger
        changes = {w.rel: (w.data, w.old, w.digest) for w in writes}
        atomic_io.write_atomic([(ledger.path, ledger.begin(changes, self.clock()), _SECRET_MODE)])
        atomic_io.make_dirs_many(
            self.directory, [self._path(w.rel).parent for w in writes], _DIR_MODE
        )
        atomic_io.write_atomic([(self._path(w.rel), w.data, w.mode) for w in writes])
        for w in writes:
            if w.facts:
                ledger.add_facts(w.rel, ledger_sha256(w.data), w.facts)
        blob = ledger.finish([w.rel for w in writes])
        atomic_io.write_atomic([(ledger.path, blob, _SECRET_MODE)])

    # Parsing and verifying certificates is most of what a run that changes nothing does.
    # What was verified about a file's exact bytes is recorded in its ledger entry
    # (ledger.Entry.facts) and trusted as long as the file holds those bytes.

    def _inspect(self, rel: str, cert: bytes) -> pki.CertInfo:
        info = pki.cached_cert_info(cert)
        if info is not None:
            return info
        digest = ledger_sha256(cert)
        info = pki.cert_info_from_facts(self._facts(rel, digest).get("cert"))
        if info is not None:
            pki.remember_cert_info(cert, info)
            return info
        try:
            info = pki.inspect_cert(cert)
        except ValueError as e:
            raise self._refuse(rel, f"not a valid PEM certificate ({e})") from None
        self._learn(rel, digest, {"cert": pki.cert_info_facts(info)})
        return info

    def _check_pair(self, key_rel: str, key: bytes, cert_rel: str, cert: bytes) -> None:
        digest, key_digest = ledger_sha256(cert), ledger_sha256(key)
        if self._facts(cert_rel, digest).get("key") == key_digest:
            return
        try:
            ok = pki.key_matches_cert(key, cert)
        except (ValueError, TypeError) as e:
            raise self._refuse(key_rel, f"not a valid PEM private key ({e})") from None
        if not ok:
            raise self._refuse(key_rel, f"does not belong to {self._path(cert_rel)}")
        self._learn(cert_rel, digest, {"key": key_digest})

    def _signed_by(self, cert_rel: str, cert: bytes, ca_cert: bytes) -> bool:
        digest, ca_digest = ledger_sha256(cert), ledger_sha256(ca_cert)
        if self._facts(cert_rel, digest).get("signer") == ca_digest:
            return True
        signed = pki.cert_signed_by(cert, ca_cert)
        if signed:
            self._learn(cert_rel, digest, {"signer": ca_digest})
        return signed

    def _facts(self, rel: str, digest: str) -> dict[str, object]:
        assert self._ledger is not None
        return self._ledger.facts(rel, digest)

    def _learn(self, rel: str, digest: str, facts: dict[str, object]) -> None:
        """Record facts verified about rel's bytes (written with the ledger's next write,
        or at close; a read-only store keeps them in memory)."""
        assert self._ledger is not None
        self._ledger.add_facts(rel, digest, facts)


def _issued_facts(key: bytes, cert: bytes, ca_cert: bytes | None) -> dict[str, object]:
    """What the store knows about a certificate it just made: its fields, its key, and
    (a leaf) the CA that signed it."""
    facts: dict[str, object] = {
        "cert": pki.cert_info_facts(pki.inspect_cert(cert)),
        "key": ledger_sha256(key),
    }
    if ca_cert is not None:
        facts["signer"] = ledger_sha256(ca_cert)
    return facts


def _versions_json(versions: _Versions) -> bytes:
    """versions.json: a node per line, each by the C encoder (thousands of nodes)."""
    lines = ",\n".join(
        f"  {json.dumps(node)}: {json.dumps(versions[node], sort_keys=True)}"
        for node in sorted(versions)
    )
    return f"{{\n{lines}\n}}\n".encode() if lines else b"{}\n"


def _versions_problem(raw: bytes) -> str | None:
    """What is wrong with versions.json's bytes, or None."""
    shape = '(expected {"<node>": {"<format>": {"version": N, "digest": "..."}}})'
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return f"not valid JSON {shape}"
    if not isinstance(data, dict) or not all(isinstance(f, dict) for f in data.values()):
        return f"not a versions file {shape}"
    for node, fmts in sorted(data.items()):
        for fmt, e in sorted(fmts.items()):
            if not isinstance(e, dict) or not isinstance(e.get("digest"), str):
                return f"{node} {fmt}: not a version entry {shape}"
            v = e.get("version")
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                return f"{node} {fmt}: version {v!r} is not a positive integer"
    return None
