"""builder.state: the secrets store on a real filesystem, time injected."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from builder import pki
from builder.atomic_io import LockHeld
from builder.errors import UserError
from builder.state import CASpec, CertSpec, Event, State

T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
CA = CASpec(common_name="nomad-build CA test", permitted_dns=("example.org", "nomad"), days=3650)
CERT = CertSpec(
    common_name="server.eu.nomad",
    dns_names=("n1.example.org", "server.eu.nomad", "localhost"),
    ip_addresses=("10.0.0.1", "127.0.0.1"),
    days=365,
    renew_before=timedelta(days=30),
    backdate=timedelta(minutes=1),
)


class Clock:
    """A settable clock for State.open(clock=...)."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def sdir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _snapshot(root: Path) -> dict[str, tuple[bytes | None, int, int]]:
    """Every path under root (itself included): (content or None for dirs, mtime_ns, mode)."""
    snap: dict[str, tuple[bytes | None, int, int]] = {}
    for p in [root, *sorted(root.rglob("*"))]:
        st = p.lstat()
        data = p.read_bytes() if p.is_file() else None
        snap[str(p.relative_to(root))] = (data, st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    return snap


def _populate(st: State) -> tuple[bytes, bytes]:
    st.gossip_key()
    ca = st.ca(CA)
    assert ca is not None
    pair = st.node_cert("n1", CERT, ca)
    assert pair is not None
    st.package_version("n1", "deb", "sha256:aaa")
    st.secret("apt-repo.key", lambda: b"private")
    st.public("apt-repo.pub", lambda: b"public")
    return pair


def _open(sdir: Path, clock: Clock, *, create: bool = True) -> State:
    return State.open(sdir, create=create, clock=clock)


# ---------------------------------------------------------------- layout & modes


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_modes_are_exact_whatever_the_umask(sdir: Path, clock: Clock, umask: int) -> None:
    old = os.umask(umask)
    try:
        with _open(sdir, clock) as st:
            _populate(st)
    finally:
        os.umask(old)
    expected_files = {
        ".lock",
        "ledger.json",
        "gossip.key",
        "ca/ca.key",
        "ca/ca.pem",
        "nodes/n1/key.pem",
        "nodes/n1/cert.pem",
        "versions.json",
        "apt-repo.key",
        "apt-repo.pub",
    }
    files = {str(p.relative_to(sdir)) for p in sdir.rglob("*") if p.is_file()}
    assert files == expected_files
    for p in [sdir, *sdir.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        if p.is_dir():
            assert mode == 0o700, p
        elif p.name == "apt-repo.pub":
            assert mode == 0o644, p
        else:
            assert mode == 0o600, p


def test_loose_modes_are_tightened(sdir: Path, clock: Clock) -> None:
    with _open(sdir, clock) as st:
        _populate(st)
    os.chmod(sdir, 0o755)
    os.chmod(sdir / "ca", 0o755)
    os.chmod(sdir / "ca" / "ca.key", 0o644)
    with _open(sdir, clock) as st:
        _populate(st)
    assert stat.S_IMODE(sdir.stat().st_mode) == 0o700
    assert stat.S_IMODE((sdir / "ca").stat().st_mode) == 0o700
    assert stat.S_IMODE((sdir / "ca" / "ca.key").stat().st_mode) == 0o600


def test_contents(sdir: Path, clock: Clock) -> None:
    with _open(sdir, clock) as st:
        key, cert = _populate(st)
        gossip = st.gossip_key()
        ca = st.ca(CA)
        assert ca is not None
        assert st.events == [
            Event("created", "gossip key", "new"),
            Event("created", "CA", "new"),
            Event("created", "certificate n1", "new"),
            Event("created", "apt-repo.key", "new"),
            Event("created", "apt-repo.pub", "new"),
        ]
    assert gossip is not None
    assert (sdir / "gossip.key").read_text() == gossip + "\n"
    assert len(base64.b64decode(gossip, validate=True)) == 32
    assert (sdir / "ca" / "ca.key").read_bytes() == ca[0]
    assert (sdir / "nodes" / "n1" / "key.pem").read_bytes() == key
    assert (sdir / "nodes" / "n1" / "cert.pem").read_bytes() == cert
    assert pki.key_matches_cert(key, cert)
    assert pki.cert_signed_by(cert, ca[1])
    info = pki.inspect_cert(cert)
    assert info.subject_cn == CERT.common_name
    assert info.dns_names == CERT.dns_names
    assert info.ip_addresses == CERT.ip_addresses
    assert info.not_before == T0 - CERT.backdate
    assert info.not_after == T0 + timedelta(days=365)
    ca_info = pki.inspect_cert(ca[1])
    assert ca_info.is_ca
    assert ca_info.permitted_dns == CA.permitted_dns
    assert ca_info.not_after == T0 + timedelta(days=3650)
    assert (sdir / "apt-repo.key").read_bytes() == b"private"
    assert (sdir / "apt-repo.pub").read_bytes() == b"public"


# ---------------------------------------------------------------- idempotence


def test_second_run_regenerates_and_writes_nothing(sdir: Path, clock: Clock) -> None:
    with _open(sdir, clock) as st:
        first = (_populate(st), st.gossip_key(), st.ca(CA))
    before = _snapshot(sdir)
    clock.now = T0 + timedelta(days=100)  # still far from the renewal window
    calls: list[str] = []

    def factory() -> bytes:
        calls.append("called")
        return b"other"

    with _open(sdir, clock) as st:
        second = (_populate(st), st.gossip_key(), st.ca(CA))
        assert st.secret("apt-repo.key", factory) == b"private"
        assert st.package_version("n1", "deb", "sha256:aaa") == 1
        assert st.events == []
    assert calls == []
    assert second == first
    assert _snapshot(sdir) == before


def test_san_order_and_case_do_not_force_a_reissue(sdir: Path, clock: Clock) -> None:
    with _open(sdir, clock) as st:
        ca = st.ca(CA)
        first = st.node_cert("n1", CERT, ca)
    spec = CertSpec(
        common_name=CERT.common_name,
        dns_names=("LOCALHOST", "server.eu.nomad", "N1.example.org"),
        ip_addresses=("127.0.0.1", "10.0.0.1"),
        days=CERT.days,
        renew_before=CERT.renew_before,
        backdate=CERT.backdate,
    )
    with _open(sdir, clock) as st:
        assert st.node_cert("n1", spec, st.ca(CA)) == first
        assert st.events == []


# ---------------------------------------------------------------- lock


def test_lock_excludes_a_second_writer(sdir: Path, clock: Clock) -> None:
    with _open(sdir, clock):
        with pytest.raises(LockHeld, match="another nomad-build run holds the lock") as e:
            _open(sdir, clock)
        assert str(sdir) in str(e.value)
        # A read-only `check` does not need the lock.
        with _open(sdir, clock, create=False) as ro:
            assert ro.gossip_key() is None
    with _open(sdir, clock):  # released on exit
        pass


def test_lock_is_seen_by_another_process(sdir: Path, clock: Clock) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from builder.atomic_io import LockHeld\n"
        "from builder.state import State\n"
        "try:\n"
        "    State.open(Path(sys.argv[1]), create=True)\n"
        "except LockHeld as e:\n"
        "    print(e)\n"
        "    sys.exit(1)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with _open(sdir, clock):
        r = subprocess.run(
            [sys.executable, "-c", code, str(sdir)], capture_output=True, text=True, env=env
        )
    assert r.returncode == 1, r.stderr
    assert "another nomad-build run holds the lock" in r.stdout


# ---------------------------------------------------------------- re-issue


def _spec(**changes: object) -> CertSpec:
    fields = {**CERT.__dict__, **changes}
    return CertSpec(**fields)


def _reissue(
    sdir: Path, clock: Clock, spec: CertSpec
) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes], list[Event]]:
    with _open(sdir, clock) as st:
        first = st.node_cert("n1", CERT, st.ca(CA))
    with _open(sdir, clock) as st:
        second = st.node_cert("n1", spec, st.ca(CA))
        events = list(st.events)
    assert first is not None
    assert second is not None
    return first, second, events


def test_reissue_on_changed_dns_names(sdir: Path, clock: Clock) -> None:
    spec = _spec(dns_names=("n1.example.org", "server.eu.nomad", "client.eu.nomad", "n1.nomad"))
    first, second, events = _reissue(sdir, clock, spec)
    assert events == [
        Event(
            "reissued", "certificate n1", "DNS names changed: +client.eu.nomad +n1.nomad -localhost"
        )
    ]
    assert second[0] != first[0]  # a new key too
    assert pki.inspect_cert(second[1]).dns_names == spec.dns_names
    assert (sdir / "nodes" / "n1" / "cert.pem").read_bytes() == second[1]
    assert (sdir / "nodes" / "n1" / "key.pem").read_bytes() == second[0]


def test_reissue_on_changed_ips(sdir: Path, clock: Clock) -> None:
    spec = _spec(ip_addresses=("10.0.0.2", "127.0.0.1"))
    _, second, events = _reissue(sdir, clock, spec)
    assert events == [
        Event("reissued", "certificate n1", "IP addresses changed: +10.0.0.2 -10.0.0.1")
    ]
    assert pki.inspect_cert(second[1]).ip_addresses == ("10.0.0.2", "127.0.0.1")


def test_reissue_on_changed_common_name(sdir: Path, clock: Clock) -> None:
    spec = _spec(common_name="client.eu.nomad")
    _, _, events = _reissue(sdir, clock, spec)
    assert events == [
        Event(
            "reissued", "certificate n1", "common name changed: server.eu.nomad -> client.eu.nomad"
        )
    ]


def test_several_reasons_are_all_named(sdir: Path, clock: Clock) -> None:
    spec = _spec(common_name="client.eu.nomad", ip_addresses=("127.0.0.1",))
    _, _, events = _reissue(sdir, clock, spec)
    assert [e.reason for e in events] == [
        "common name changed: server.eu.nomad -> client.eu.nomad; IP addresses changed: -10.0.0.1"
    ]


def test_reissue_inside_renewal_window(sdir: Path, clock: Clock) -> None:
    with _open(sdir, clock) as st:
        first = st.node_cert("n1", CERT, st.ca(CA))
    clock.now = T0 + timedelta(days=365 - 31)  # 31 days left: kept
    with _open(sdir, clock) as st:
        assert st.node_cert("n1", CERT, st.ca(CA)) == first
        assert st.events == []
    clock.now = T0 + timedelta(days=365 - 29)  # 29 days left: renewed
    with _open(sdir, clock) as st:
        second = st.node_cert("n1", CERT, st.ca(CA))
        assert st.events == [
            Event(
                "reissued",
                "certificate n1",
                "expires 2026-06-01 (inside the 30-day renewal window)",
            )
        ]
    assert second is not None
    assert pki.inspect_cert(second[1]).not_after == clock.now + timedelta(days=365)


def test_reissue_when_expired(sdir: Path, clock: Clock) -> None:
    with _open(sdir, clock) as st:
        st.node_cert("n1", CERT, st.ca(CA))
    clock.now = T0 + timedelta(days=400)
    with _open(sdir, clock) as st:
        st.node_cert("n1", CERT, st.ca(CA))
        assert [e.reason for e in st.events] == ["expired 2026-06-01"]


def test_a_ca_moved_away_is_refused_not_replaced(sdir: Path, clock: Clock) -> None:
    with _open(sdir, clock) as st:
        st.node_cert("n1", CERT, st.ca(CA))
    # Retiring the CA takes a deliberate command, never a `mv`.
    (sdir / "ca").rename(sdir.parent / "old-ca")
    for create in (False, True):
        with _open(sdir, clock, create=create) as st, pytest.raises(UserError) as e:
            st.ca(CA)
        assert str(e.value) == (
            f"{sdir / 'ca' / 'ca.key'}: missing, but this store created it before; restore it "
            "from your backup, or replace it deliberately with `nomad-build pki rotate-ca --lost`"
        )
    assert not (sdir / "ca").exists()


def test_mismatched_key_is_refused(sdir: Path, clock: Clock) -> None:
    with _open(sdir, clock) as st:
        st.node_cert("n1", CERT, st.ca(CA))
        st.node_cert("n2", CERT, st.ca(CA))
    (sdir / "nodes" / "n1" / "key.pem").write_bytes((sdir / "nodes/n2/key.pem").read_bytes())
    with _open(sdir, clock) as st, pytest.raises(UserError, match=r"nodes/n1/key\.pem: changed"):
        st.node_cert("n1", CERT, st.ca(CA))


def test_missing_half_is_refused(sdir: Path, clock: Clock) -> None:
    with _open(sdir, clock) as st:
        st.node_cert("n1", CERT, st.ca(CA))
    (sdir / "nodes" / "n1" / "cert.pem").unlink()
    with _open(sdir, clock) as st, pytest.raises(UserError) as e:
        st.node_cert("n1", CERT, st.ca(CA))
    assert "nodes/n1/cert.pem: missing" in str(e.value)
    assert "`nomad-build pki renew --node n1 --rekey`" in str(e.value)


# ---------------------------------------------------------------- the CA is sacred


def test_ca_constraint_change_is_refused(sdir: Path, clock: Clock) -> None:
    with _open(sdir, clock) as st:
        st.ca(CA)
    before = _snapshot(sdir)
    changed = CASpec(CA.common_name, ("nomad", "other.org"), CA.days)
    for create in (True, False):
        with _open(sdir, clock, create=create) as st, pytest.raises(UserError) as e:
            st.ca(changed)
        msg = str(e.value)
        assert str(sdir / "ca" / "ca.pem") in msg
        assert "+other.org" in msg
        assert "-example.org" in msg
    assert _snapshot(sdir) == before


def test_ca_half_missing_is_refused(sdir: Path, clock: Clock) -> None:
    with _open(sdir, clock) as st:
        st.ca(CA)
    (sdir / "ca" / "ca.key").unlink()
    with _open(sdir, clock) as st, pytest.raises(UserError, match=r"ca\.key: missing, but"):
        st.ca(CA)
    assert not (sdir / "ca" / "ca.key").exists()


# ---------------------------------------------------------------- package versions


def test_package_version_is_monotonic_and_persisted(sdir: Path, clock: Clock) -> None:
    with _open(sdir, clock) as st:
        assert st.package_version("n1", "deb", "d1") == 1
        assert st.package_version("n1", "deb", "d1") == 1
        assert st.package_version("n1", "deb", "d2") == 2
        assert st.package_version("n1", "deb", "d1") == 3  # going back is still "newer"
        assert st.package_version("n1", "openbsd", "d1") == 1
        assert st.package_version("n2", "deb", "d1") == 1
    with _open(sdir, clock) as st:
        assert st.package_version("n1", "deb", "d1") == 3
        assert st.package_version("n1", "openbsd", "d9") == 2
    with _open(sdir, clock, create=False) as st:
        assert st.package_version("n1", "openbsd", "d9") == 2


def test_package_version_flush(sdir: Path, clock: Clock) -> None:
    st = _open(sdir, clock)
    try:
        st.package_version("n1", "deb", "d1")
        assert not (sdir / "versions.json").exists()  # batched: one write per run
        st.flush()
        assert (sdir / "versions.json").exists()
    finally:
        st.close()


def test_package_version_flushed_even_when_the_run_fails(sdir: Path, clock: Clock) -> None:
    with pytest.raises(RuntimeError), _open(sdir, clock) as st:
        st.package_version("n1", "deb", "d1")
        raise RuntimeError("build failed")
    with _open(sdir, clock) as st:
        assert st.package_version("n1", "deb", "d2") == 2


# ---------------------------------------------------------------- read-only


def test_read_only_on_missing_dir_creates_nothing(sdir: Path, clock: Clock) -> None:
    with _open(sdir, clock, create=False) as st:
        assert st.gossip_key() is None
        assert st.gossip_key() is None
        assert st.ca(CA) is None
        assert st.node_cert("n1", CERT, None) is None
        assert st.node_cert("n1", CERT, None) is None
        assert st.cert_info("n1") is None
        assert st.secret("apt-repo.key", lambda: b"x") is None
        assert st.package_version("n1", "deb", "d1") == 1
        assert st.package_version("n1", "deb", "d1") == 1
        assert st.package_version("n1", "deb", "d2") == 2
        # The plan: what a writing run would do.
        assert st.events == [
            Event("created", "gossip key", "new"),
            Event("created", "CA", "new"),
            Event("created", "certificate n1", "new"),
            Event("created", "apt-repo.key", "new"),
        ]
    assert not sdir.exists()


def test_read_only_writes_nothing(sdir: Path, clock: Clock) -> None:
    with _open(sdir, clock) as st:
        _populate(st)
    before = _snapshot(sdir)
    clock.now = T0 + timedelta(days=360)  # the cert now needs renewal
    with _open(sdir, clock, create=False) as st:
        ca = st.ca(CA)
        assert ca is not None
        assert st.gossip_key() is not None
        assert st.node_cert("n1", CERT, ca) is None  # would be re-issued
        assert st.node_cert("n2", CERT, ca) is None
        assert st.package_version("n1", "deb", "sha256:bbb") == 2
        assert st.secret("apt-repo.key", lambda: b"x") == b"private"
        info = st.cert_info("n1")
        assert info is not None and info.subject_cn == CERT.common_name
        assert st.events == [
            Event(
                "reissued",
                "certificate n1",
                "expires 2026-06-01 (inside the 30-day renewal window)",
            ),
            Event("created", "certificate n2", "new"),
        ]
    assert _snapshot(sdir) == before


def test_read_only_returns_a_fitting_cert(sdir: Path, clock: Clock) -> None:
    with _open(sdir, clock) as st:
        pair = st.node_cert("n1", CERT, st.ca(CA))
    with _open(sdir, clock, create=False) as st:
        assert st.node_cert("n1", CERT, st.ca(CA)) == pair
        assert st.events == []


# ---------------------------------------------------------------- corrupt files


@pytest.mark.parametrize(
    ("rel", "call"),
    [
        ("nodes/n1/cert.pem", lambda st: st.node_cert("n1", CERT, st.ca(CA))),
        ("nodes/n1/key.pem", lambda st: st.node_cert("n1", CERT, st.ca(CA))),
        ("nodes/n1/cert.pem", lambda st: st.cert_info("n1")),
        ("ca/ca.pem", lambda st: st.ca(CA)),
        ("ca/ca.key", lambda st: st.ca(CA)),
        ("gossip.key", lambda st: st.gossip_key()),
        ("versions.json", lambda st: st.package_version("n1", "deb", "x")),
    ],
)
@pytest.mark.parametrize("create", [True, False])
def test_corrupt_file_is_a_user_error_naming_it(
    sdir: Path, clock: Clock, rel: str, call: Callable[[State], object], create: bool
) -> None:
    with _open(sdir, clock) as st:
        _populate(st)
    (sdir / rel).write_bytes(b"this is not what you think\n")
    with _open(sdir, clock, create=create) as st, pytest.raises(UserError) as e:
        call(st)
    assert str(sdir / rel) in str(e.value)


# ---------------------------------------------------------------- atomicity


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name]


def test_no_temp_files_left(sdir: Path, clock: Clock) -> None:
    with _open(sdir, clock) as st:
        _populate(st)
        st.node_cert("n1", _spec(ip_addresses=("127.0.0.1",)), st.ca(CA))
    assert _temps(sdir) == []


def test_crash_between_key_and_cert_rename_heals(
    sdir: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _open(sdir, clock) as st:
        old = st.node_cert("n1", CERT, st.ca(CA))
    assert old is not None
    real = os.replace

    def replace(src: str, dst: str) -> None:
        if str(dst).endswith("cert.pem"):
            raise OSError("simulated crash")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="simulated crash"), _open(sdir, clock) as st:
        st.node_cert("n1", _spec(ip_addresses=("127.0.0.1",)), st.ca(CA))
    monkeypatch.setattr(os, "replace", real)
    assert _temps(sdir) == []
    # The new key landed, the old cert stayed: the pair no longer matches.
    assert (sdir / "nodes/n1/cert.pem").read_bytes() == old[1]
    assert (sdir / "nodes/n1/key.pem").read_bytes() != old[0]
    with _open(sdir, clock) as st:
        pair = st.node_cert("n1", CERT, st.ca(CA))
        assert [e.reason for e in st.events] == ["an earlier run was interrupted while writing it"]
    assert pair is not None and pki.key_matches_cert(*pair)


def test_stale_temps_from_a_killed_run_are_removed(sdir: Path, clock: Clock) -> None:
    with _open(sdir, clock) as st:
        _populate(st)
    stale = sdir / "nodes" / "n1" / ".cert.pem.tmp-0123456789abcdef"
    stale.write_bytes(b"half a cert")
    with _open(sdir, clock, create=False):
        pass
    assert stale.exists()  # read-only touches nothing
    with _open(sdir, clock):
        pass
    assert not stale.exists()


# ---------------------------------------------------------------- misc


def test_secret_names_stay_inside_the_store(sdir: Path, clock: Clock) -> None:
    with _open(sdir, clock) as st:
        for bad in ("../x", "/etc/passwd", "ca/ca.key", "gossip.key", ".lock", "a/../b", ""):
            with pytest.raises(ValueError):
                st.secret(bad, lambda: b"x")
        for bad_node in ("../n", "a/b", ".hidden", ""):
            with pytest.raises(ValueError):
                st.node_cert(bad_node, CERT, st.ca(CA))
        assert st.secret("repo/signify.sec", lambda: b"s") == b"s"
    assert stat.S_IMODE((sdir / "repo").stat().st_mode) == 0o700
    assert stat.S_IMODE((sdir / "repo" / "signify.sec").stat().st_mode) == 0o600


def test_threads_share_one_store(sdir: Path, clock: Clock) -> None:
    results: dict[str, tuple[bytes, bytes] | None] = {}
    with _open(sdir, clock) as st:
        ca = st.ca(CA)

        def work(i: int) -> None:
            results[f"n{i}"] = st.node_cert(f"n{i}", CERT, ca)
            st.package_version(f"n{i}", "deb", "d")

        threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    with _open(sdir, clock) as st:
        for i in range(16):
            assert st.node_cert(f"n{i}", CERT, st.ca(CA)) == results[f"n{i}"]
            assert st.package_version(f"n{i}", "deb", "d") == 1
        assert st.events == []


def test_repr_shows_no_secrets(sdir: Path, clock: Clock) -> None:
    with _open(sdir, clock) as st:
        _populate(st)
        assert "PRIVATE" not in repr(st)
        assert str(sdir) in repr(st)


def test_closed_store_refuses_use(sdir: Path, clock: Clock) -> None:
    st = _open(sdir, clock)
    st.close()
    st.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        st.gossip_key()


def test_a_secret_made_inside_a_batch_is_made_once(sdir: Path, clock: Clock) -> None:
    """Asked again before the batch commits, a secret is the one made, not a new one
    (the Consul CA and gossip key are asked for once per node)."""
    made = iter([b"first\n", b"second\n"])
    with _open(sdir, clock) as st:
        with st.batch():
            assert st.secret("k.key", lambda: next(made)) == b"first\n"
            assert st.secret("k.key", lambda: next(made)) == b"first\n"
            assert st.public("k.pub", lambda: b"pub\n") == b"pub\n"
            assert st.public("k.pub", lambda: b"other\n") == b"pub\n"
        assert [e.what for e in st.events] == ["k.key", "k.pub"]
    with _open(sdir, clock) as st:
        assert st.secret("k.key", lambda: b"never\n") == b"first\n"
        assert st.public("k.pub", lambda: b"never\n") == b"pub\n"
