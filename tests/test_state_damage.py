"""builder.state against a damaged store: refused, named, nothing written; read-only alike.

Real files and real keys throughout (CA, node certs, OpenPGP apt key, signify pair).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from builder import openpgp, signify
from builder.errors import UserError
from builder.ledger import self_check
from builder.state import CASpec, CertSpec, Event, State

from conftest import nomad_build, write_cluster

T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
CA = CASpec(
    common_name="nomad-build CA test",
    permitted_dns=("example.org", "nomad"),
    days=3650,
    cert_days=365,
    renew_before=timedelta(days=30),
)
NODES = ("n1", "n2", "n3")
RESTORE = "restore it from your backup"


def cert_spec(node: str) -> CertSpec:
    return CertSpec(
        common_name="server.eu.nomad",
        dns_names=(f"{node}.example.org", "server.eu.nomad", "localhost"),
        ip_addresses=("127.0.0.1",),
        days=365,
        renew_before=timedelta(days=30),
        backdate=timedelta(minutes=1),
    )


@pytest.fixture(scope="module")
def keys() -> dict[str, bytes]:
    sec, pub = signify.generate_keypair(comment_name="pkg")
    return {"apt": openpgp.generate_key("nomad-build test"), "sec": sec, "pub": pub}


def run(sdir: Path, *, create: bool, keys: dict[str, bytes], now: datetime = T0) -> State:
    """Every call a build makes, in a build's order; the store is returned closed.

    Like the pipeline, it checks the signify pair itself: the store keeps the .pub as a
    public, recomputable file (recorded as existing, its bytes verified by the caller).
    """
    with State.open(sdir, create=create, clock=lambda: now) as st:
        ca = st.ca(CA)
        st.gossip_key()
        for n in NODES:
            st.node_cert(n, cert_spec(n), ca)
        st.secret("apt-signing.key", lambda: keys["apt"])
        sec = st.secret("pkg.sec", lambda: keys["sec"])
        pub = st.public("pkg.pub", lambda: keys["pub"])
        if sec is not None and pub is not None:
            try:
                signify.check_keypair(sec, pub)
            except UserError as e:
                raise UserError(f"{sdir / 'pkg.pub'}: {e}") from None
        for n in NODES:
            st.package_version(n, "deb", f"digest-{n}")
    return st


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, bytes]) -> Path:
    sdir = tmp_path_factory.mktemp("populated") / "state"
    run(sdir, create=True, keys=keys)
    return sdir


@pytest.fixture
def sdir(populated: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "state"
    shutil.copytree(populated, dest, symlinks=True)
    return dest


def tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every path under root (itself too): (sha256 of content, or 'dir'; mode)."""
    out: dict[str, tuple[str, int]] = {}
    for p in [root, *sorted(root.rglob("*"))]:
        st = p.lstat()
        if p.is_symlink():
            what = f"link to {os.readlink(p)}"
        elif p.is_dir():
            what = "dir"
        else:
            what = hashlib.sha256(p.read_bytes()).hexdigest()
        out[p.relative_to(root).as_posix()] = (what, stat.S_IMODE(st.st_mode))
    return out


def both_refuse(sdir: Path, keys: dict[str, bytes]) -> str:
    """Read-only and writable both refuse, with the same one-line message; nothing written."""
    before = tree(sdir)
    messages = []
    for create in (False, True):
        with pytest.raises(UserError) as e:
            run(sdir, create=create, keys=keys)
        messages.append(str(e.value))
        assert tree(sdir) == before, f"create={create} wrote to the store"
    assert messages[0] == messages[1]
    assert "\n" not in messages[0]
    return messages[0]


# ---------------------------------------------------------------- damage cases


def _delete(rel: str) -> Callable[[Path], None]:
    return lambda d: (d / rel).unlink()


def _write(rel: str, data: bytes) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        (d / rel).write_bytes(data)

    return f


def _truncate(rel: str) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        data = (d / rel).read_bytes()
        (d / rel).write_bytes(data[: len(data) // 2])

    return f


def _swap(a: str, b: str) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        x, y = (d / a).read_bytes(), (d / b).read_bytes()
        (d / a).write_bytes(y)
        (d / b).write_bytes(x)

    return f


def _versions(value: object) -> Callable[[Path], None]:
    data = {n: {"deb": {"version": 1, "digest": f"digest-{n}"}} for n in NODES}
    data["n2"]["deb"]["version"] = value
    return _write("versions.json", json.dumps(data).encode())


def _link_loop(rel: str) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        (d / rel).unlink()
        (d / rel).symlink_to(rel.split("/")[-1])

    return f


def _dir_instead(rel: str) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        (d / rel).unlink()
        (d / rel).mkdir()

    return f


ROTATE_CA = "`nomad-build pki rotate-ca --lost`"
ROTATE_GOSSIP = "`nomad-build pki rotate-gossip --lost`"
ROTATE_APT = "`nomad-build pki rotate-signing-key --apt --lost`"
ROTATE_BSD = "`nomad-build pki rotate-signing-key --openbsd --lost`"


def _renew(n: str) -> str:
    return f"`nomad-build pki renew --node {n} --rekey`"


# (id, damage, the file the error names, the way out it offers: "" for restore only)
DAMAGE: list[tuple[str, Callable[[Path], None], str, str]] = [
    ("ca.key deleted", _delete("ca/ca.key"), "ca/ca.key", ROTATE_CA),
    ("ca.pem deleted", _delete("ca/ca.pem"), "ca/ca.pem", ROTATE_CA),
    ("gossip deleted", _delete("gossip.key"), "gossip.key", ROTATE_GOSSIP),
    ("apt key deleted", _delete("apt-signing.key"), "apt-signing.key", ROTATE_APT),
    ("signify sec deleted", _delete("pkg.sec"), "pkg.sec", ROTATE_BSD),
    ("node key deleted", _delete("nodes/n2/key.pem"), "nodes/n2/key.pem", _renew("n2")),
    ("node cert deleted", _delete("nodes/n3/cert.pem"), "nodes/n3/cert.pem", _renew("n3")),
    ("node dir deleted", lambda d: shutil.rmtree(d / "nodes/n1"), "nodes/n1/key.pem", _renew("n1")),
    ("versions deleted", _delete("versions.json"), "versions.json", ""),
    ("ca.key truncated", _truncate("ca/ca.key"), "ca/ca.key", ROTATE_CA),
    ("ca.pem garbage", _write("ca/ca.pem", b"garbage\n"), "ca/ca.pem", ROTATE_CA),
    ("gossip truncated", _truncate("gossip.key"), "gossip.key", ROTATE_GOSSIP),
    ("gossip another key", _write("gossip.key", b"A" * 43 + b"=\n"), "gossip.key", ROTATE_GOSSIP),
    ("apt key truncated", _truncate("apt-signing.key"), "apt-signing.key", ROTATE_APT),
    ("signify sec garbage", _write("pkg.sec", b"\0" * 10), "pkg.sec", ROTATE_BSD),
    ("node cert truncated", _truncate("nodes/n1/cert.pem"), "nodes/n1/cert.pem", _renew("n1")),
    ("node key empty", _write("nodes/n1/key.pem", b""), "nodes/n1/key.pem", _renew("n1")),
    ("ca key <-> node key", _swap("ca/ca.key", "nodes/n1/key.pem"), "ca/ca.key", ROTATE_CA),
    (
        "node certs swapped",
        _swap("nodes/n1/cert.pem", "nodes/n2/cert.pem"),
        "nodes/n1/cert.pem",
        _renew("n1"),
    ),
    ("gossip is a dir", _dir_instead("gossip.key"), "gossip.key", ROTATE_GOSSIP),
    ("apt key unreadable", _link_loop("apt-signing.key"), "apt-signing.key", ROTATE_APT),
    ("node key unreadable", _link_loop("nodes/n3/key.pem"), "nodes/n3/key.pem", _renew("n3")),
    ("versions garbage", _write("versions.json", b"{nope"), "versions.json", ""),
    ("versions zero", _versions(0), "versions.json", ""),
    ("versions negative", _versions(-3), "versions.json", ""),
    ("versions float", _versions(1.5), "versions.json", ""),
    ("versions string", _versions("2"), "versions.json", ""),
    ("versions bool", _versions(True), "versions.json", ""),
    ("versions list", _write("versions.json", b"[1, 2]"), "versions.json", ""),
    ("ledger deleted", _delete("ledger.json"), "ledger.json", ""),
    ("ledger garbage", _write("ledger.json", b"{}"), "ledger.json", ""),
    ("ledger truncated", _truncate("ledger.json"), "ledger.json", ""),
]


@pytest.mark.parametrize(
    ("damage", "rel", "out"), [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE]
)
def test_damage_is_refused_alike_read_only_and_writable(
    sdir: Path,
    keys: dict[str, bytes],
    damage: Callable[[Path], None],
    rel: str,
    out: str,
) -> None:
    damage(sdir)
    msg = both_refuse(sdir, keys)
    assert msg.startswith(f"{sdir / rel}: "), msg
    assert RESTORE in msg
    if out:
        assert msg.endswith(f"or replace it deliberately with {out}"), msg
    else:
        assert "deliberately" not in msg


def test_messages(sdir: Path, keys: dict[str, bytes]) -> None:
    (sdir / "ca/ca.key").unlink()
    assert both_refuse(sdir, keys) == (
        f"{sdir}/ca/ca.key: missing, but this store created it before; restore it from your "
        "backup, or replace it deliberately with `nomad-build pki rotate-ca --lost`"
    )


def test_messages_versions_and_ledger(sdir: Path, keys: dict[str, bytes]) -> None:
    (sdir / "versions.json").write_text('{"n1": {"deb": {"version": 0, "digest": "x"}}}')
    assert both_refuse(sdir, keys) == (
        f"{sdir}/versions.json: n1 deb: version 0 is not a positive integer; "
        "restore it from your backup"
    )
    (sdir / "ledger.json").unlink()
    assert both_refuse(sdir, keys) == (
        f"{sdir}/ledger.json: missing while {sdir} holds apt-signing.key, ca/ca.key, "
        "ca/ca.pem, ...; restore it from your backup (without it nomad-build cannot tell a "
        "lost secret from one never made, and would silently make new ones); a store made "
        "before nomad-build kept a ledger is recorded once with `nomad-build state adopt`"
    )


def test_loose_modes_are_not_damage(sdir: Path, keys: dict[str, bytes]) -> None:
    os.chmod(sdir / "ca/ca.key", 0o644)
    os.chmod(sdir / "nodes/n1", 0o755)
    run(sdir, create=False, keys=keys)  # read-only: no chmod
    assert stat.S_IMODE((sdir / "ca/ca.key").stat().st_mode) == 0o644
    assert stat.S_IMODE((sdir / "nodes/n1").stat().st_mode) == 0o755
    run(sdir, create=True, keys=keys)
    assert stat.S_IMODE((sdir / "ca/ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((sdir / "nodes/n1").stat().st_mode) == 0o700


def test_an_undamaged_store_is_left_alone(sdir: Path, keys: dict[str, bytes]) -> None:
    before = tree(sdir)
    for create in (False, True):
        st = run(sdir, create=create, keys=keys)
        assert st.events == [] and st.warnings == []
    assert tree(sdir) == before


# ---------------------------------------------------------------- what may still be made


def test_a_feature_first_needed_later_creates_its_secret(
    tmp_path: Path, keys: dict[str, bytes]
) -> None:
    sdir = tmp_path / "state"
    with State.open(sdir, create=True, clock=lambda: T0) as st:
        st.node_cert("n1", cert_spec("n1"), st.ca(CA))
    with State.open(sdir, create=False, clock=lambda: T0) as st:  # the first OpenBSD node
        assert st.secret("pkg.sec", lambda: keys["sec"]) is None
        assert st.events == [Event("created", "pkg.sec", "new")]
    with State.open(sdir, create=True, clock=lambda: T0) as st:
        assert st.secret("pkg.sec", lambda: keys["sec"]) == keys["sec"]
        assert st.public("pkg.pub", lambda: keys["pub"]) == keys["pub"]
    (sdir / "pkg.sec").unlink()
    with State.open(sdir, create=True, clock=lambda: T0) as st, pytest.raises(UserError):
        st.secret("pkg.sec", lambda: keys["sec"])


def test_a_lost_public_key_is_derived_again_and_reported(
    sdir: Path, keys: dict[str, bytes]
) -> None:
    (sdir / "pkg.pub").unlink()
    derived: list[bytes] = []

    def derive() -> bytes:
        derived.append(signify.public_key_from_secret(keys["sec"]))
        return derived[-1]

    for create in (False, True):
        with State.open(sdir, create=create, clock=lambda: T0) as st:
            st.public("pkg.pub", derive)
            assert st.events == [Event("created", "pkg.pub", "was missing; derived again")]
    assert (sdir / "pkg.pub").read_bytes() == keys["pub"]
    assert derived == [keys["pub"]]  # read-only derives nothing
    assert stat.S_IMODE((sdir / "pkg.pub").stat().st_mode) == 0o644


def test_a_refitted_node_cert_is_still_reissued(sdir: Path, keys: dict[str, bytes]) -> None:
    spec = cert_spec("n1")
    moved = CertSpec(**{**spec.__dict__, "ip_addresses": ("127.0.0.1", "10.0.0.9")})
    with State.open(sdir, create=True, clock=lambda: T0) as st:
        pair = st.node_cert("n1", moved, st.ca(CA))
        assert st.events == [Event("reissued", "certificate n1", "IP addresses changed: +10.0.0.9")]
    assert pair is not None and (sdir / "nodes/n1/cert.pem").read_bytes() == pair[1]
    with State.open(sdir, create=False, clock=lambda: T0) as st:
        assert st.node_cert("n1", moved, st.ca(CA)) == pair


# ---------------------------------------------------------------- ledger


def test_an_empty_store_without_ledger_is_fine(tmp_path: Path) -> None:
    sdir = tmp_path / "state"
    State.open(sdir, create=True).close()  # leaves only .lock
    assert [p.name for p in sdir.iterdir()] == [".lock"]
    State.open(sdir, create=False).close()
    State.open(sdir, create=True).close()


def test_adopting_a_store_made_before_the_ledger(sdir: Path, keys: dict[str, bytes]) -> None:
    (sdir / "ledger.json").unlink()
    with State.open(sdir, create=True, adopt=True, clock=lambda: T0) as st:
        assert st.warnings == [f"{sdir}/ledger.json: created, recording 13 files"]
    run(sdir, create=True, keys=keys)
    (sdir / "gossip.key").unlink()
    assert "gossip.key: missing, but this store created it" in both_refuse(sdir, keys)
    with pytest.raises(ValueError):
        State.open(sdir, create=False, adopt=True)


def test_a_file_missing_from_an_older_ledger_is_recorded(
    sdir: Path, keys: dict[str, bytes]
) -> None:
    ledger = json.loads((sdir / "ledger.json").read_text())
    del ledger["files"]["nodes/n3/cert.pem"]
    ledger["check"] = self_check(ledger["files"])  # a sound, older ledger
    (sdir / "ledger.json").write_text(json.dumps(ledger))
    st = run(sdir, create=False, keys=keys)
    assert st.warnings == [
        f"{sdir}/nodes/n3/cert.pem: not in ledger.json; a writing run records it"
    ]
    st = run(sdir, create=True, keys=keys)
    assert st.warnings == [f"{sdir}/nodes/n3/cert.pem: not in ledger.json; recorded"]
    assert run(sdir, create=True, keys=keys).warnings == []
    (sdir / "nodes/n3/cert.pem").unlink()
    assert "nodes/n3/cert.pem: missing" in both_refuse(sdir, keys)


def _crash_on(monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    real = os.replace

    def replace(src: str, dst: str) -> None:
        if str(dst).endswith(suffix):
            raise OSError("simulated crash")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_a_crash_while_creating_the_ca_is_healed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sdir = tmp_path / "state"
    _crash_on(monkeypatch, "ca.pem")
    with pytest.raises(OSError), State.open(sdir, create=True, clock=lambda: T0) as st:
        st.ca(CA)
    monkeypatch.undo()
    assert (sdir / "ca/ca.key").exists() and not (sdir / "ca/ca.pem").exists()
    for create in (False, True):
        with State.open(sdir, create=create, clock=lambda: T0) as st:
            st.ca(CA)
            reason = "an earlier run was interrupted while writing it"
            assert st.events == [Event("created", "CA", reason)]
    with State.open(sdir, create=True, clock=lambda: T0) as st:
        assert st.ca(CA) is not None and st.events == []


def test_a_crash_before_the_ledger_is_final_is_harmless(
    sdir: Path, keys: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    moved = CertSpec(**{**cert_spec("n2").__dict__, "ip_addresses": ("10.0.0.2",)})
    calls: list[str] = []
    real = os.replace

    def replace(src: str, dst: str) -> None:  # the second ledger write fails
        calls.append(str(dst))
        if str(dst).endswith("ledger.json") and len(calls) > 1:
            raise OSError("simulated crash")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError), State.open(sdir, create=True, clock=lambda: T0) as st:
        st.node_cert("n2", moved, st.ca(CA))
    monkeypatch.undo()
    assert "pending" in (sdir / "ledger.json").read_text()
    with State.open(sdir, create=True, clock=lambda: T0) as st:
        pair = st.node_cert("n2", moved, st.ca(CA))
        assert st.events == []
    assert pair is not None and (sdir / "nodes/n2/cert.pem").read_bytes() == pair[1]


# ---------------------------------------------------------------- CA policy


def _ca_run(sdir: Path, spec: CASpec, now: datetime, *, create: bool) -> State:
    with State.open(sdir, create=create, clock=lambda: now) as st:
        ca = st.ca(spec)
        st.node_cert("n1", cert_spec("n1"), ca)
    return st


def _ca_refused(sdir: Path, spec: CASpec, now: datetime) -> str:
    before = tree(sdir)
    msgs = []
    for create in (False, True):
        with pytest.raises(UserError) as e:
            _ca_run(sdir, spec, now, create=create)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1] and tree(sdir) == before
    return msgs[0]


SHORT_CA = CASpec(CA.common_name, CA.permitted_dns, 400, 365, timedelta(days=30))


def test_an_expired_ca_is_refused(tmp_path: Path) -> None:
    sdir = tmp_path / "state"
    _ca_run(sdir, SHORT_CA, T0, create=True)
    msg = _ca_refused(sdir, SHORT_CA, T0 + timedelta(days=401))
    assert msg == (
        f"{sdir}/ca/ca.pem: the CA expired on 2026-07-06: nodes no longer trust anything it "
        "signed; replace it deliberately with `nomad-build pki rotate-ca`"
    )


def test_a_ca_ending_before_the_cert_it_would_sign_is_refused(tmp_path: Path) -> None:
    sdir = tmp_path / "state"
    _ca_run(sdir, SHORT_CA, T0, create=True)
    msg = _ca_refused(sdir, SHORT_CA, T0 + timedelta(days=100))
    assert msg == (
        f"{sdir}/ca/ca.pem: the CA expires on 2026-07-06, before a certificate issued now "
        "would (365 days, until 2026-09-09); lower pki.cert_days or rotate the CA with "
        "`nomad-build pki rotate-ca`"
    )


def test_node_certs_never_outlive_their_ca(tmp_path: Path) -> None:
    """Even when the CA spec does not say which certs it signs."""
    sdir = tmp_path / "state"
    bare = CASpec(CA.common_name, CA.permitted_dns, 400)
    _ca_run(sdir, bare, T0, create=True)
    (sdir / "nodes").rename(tmp_path / "nodes-away")  # only to get a fresh issue below
    ledger = json.loads((sdir / "ledger.json").read_text())
    ledger["files"] = {k: v for k, v in ledger["files"].items() if not k.startswith("nodes/")}
    ledger["check"] = self_check(ledger["files"])
    (sdir / "ledger.json").write_text(json.dumps(ledger))
    msg = _ca_refused(sdir, bare, T0 + timedelta(days=100))
    assert msg.startswith(f"{sdir}/ca/ca.pem: a 365-day certificate issued now would end ")
    assert "never outlive their CA" in msg and "`nomad-build pki rotate-ca`" in msg


def test_a_new_ca_shorter_than_its_certs_is_refused(tmp_path: Path) -> None:
    sdir = tmp_path / "state"
    spec = CASpec(CA.common_name, CA.permitted_dns, 300, 365)
    msgs = []
    for create in (False, True):
        with pytest.raises(UserError) as e:
            _ca_run(sdir, spec, T0, create=create)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1]
    assert "pki.cert_days (365) is longer than pki.ca_days (300)" in msgs[0]
    assert not (sdir / "ca").exists()


def test_a_ca_near_its_end_warns(tmp_path: Path) -> None:
    sdir = tmp_path / "state"
    _ca_run(sdir, CA, T0, create=True)
    end = T0 + timedelta(days=3650)
    # window = cert_days + max(renew_before, 90 days) = 455 days
    for create in (False, True):
        assert _ca_run(sdir, CA, end - timedelta(days=456), create=create).warnings == []
    for create in (False, True):
        st = _ca_run(sdir, CA, end - timedelta(days=454), create=create)
        assert st.warnings == [
            f"{sdir}/ca/ca.pem: the CA expires on 2035-05-30 (454 days left); rotate it with "
            "`nomad-build pki rotate-ca` before 2034-05-30, when it can no longer sign a "
            "full-length node certificate"
        ]


# ---------------------------------------------------------------- versions


def test_current_and_set_version(sdir: Path) -> None:
    with State.open(sdir, create=True, clock=lambda: T0) as st:
        assert st.current_version("n1", "deb") == (1, "digest-n1")
        assert st.current_version("n1", "openbsd") is None
        # a tool upgrade producing identical bytes: a new digest, the same version
        st.set_version("n1", "deb", 1, "digest-n1-new-tool")
        st.set_version("n2", "deb", 5, "d5")
        with pytest.raises(ValueError, match="lower"):
            st.set_version("n2", "deb", 4, "d4")
        for bad in (0, -1, True):
            with pytest.raises(ValueError, match="positive"):
                st.set_version("n3", "deb", bad, "d")
        assert st.package_version("n2", "deb", "d5") == 5
        assert st.package_version("n2", "deb", "d6") == 6
    with State.open(sdir, create=False, clock=lambda: T0) as st:
        assert st.current_version("n1", "deb") == (1, "digest-n1-new-tool")
        assert st.current_version("n2", "deb") == (6, "d6")


def test_versions_below_what_is_published_are_refused(sdir: Path) -> None:
    for create in (False, True):
        with State.open(sdir, create=create, clock=lambda: T0) as st:
            st.require_versions_at_least({("n1", "deb"): 1, ("n2", "deb"): 0})
            with pytest.raises(UserError) as e:
                st.require_versions_at_least({("n1", "deb"): 1, ("n3", "deb"): 4})
            assert str(e.value) == (
                f"{sdir}/versions.json: n3 deb is at version 1, but version 4 is already "
                "published; package versions only go up; restore it from your backup"
            )
            with pytest.raises(UserError, match="n1 openbsd is at version 0"):
                st.require_versions_at_least({("n1", "openbsd"): 1})


# ---------------------------------------------------------------- CLI


def test_cli_exit_2_and_nothing_written(tmp_path: Path) -> None:
    write_cluster(tmp_path)
    assert nomad_build(tmp_path, "pki", "renew", "-c", "cluster.toml").returncode == 0
    key = tmp_path / "state/nodes/bi-node-sbg-1/key.pem"
    key.unlink()
    before = tree(tmp_path / "state")
    for cmd in ("check", "pki"):
        args = ["check"] if cmd == "check" else ["pki", "renew"]
        proc = nomad_build(tmp_path, *args, "-c", "cluster.toml")
        assert proc.returncode == 2, proc.stderr
        rel = key.relative_to(tmp_path)
        assert proc.stderr.startswith(f"nomad-build: {rel}: missing, but this store created")
        assert "`nomad-build pki renew --node bi-node-sbg-1 --rekey`" in proc.stderr
        assert tree(tmp_path / "state") == before


# ---------------------------------------------------------------- any one file


FILES = sorted(
    [
        ".lock",
        "ledger.json",
        "gossip.key",
        "ca/ca.key",
        "ca/ca.pem",
        "apt-signing.key",
        "pkg.sec",
        "pkg.pub",
        "versions.json",
        *(f"nodes/{n}/{f}" for n in NODES for f in ("key.pem", "cert.pem")),
    ]
)
# Files whose bytes are secrets the store must never change behind the operator's back.
# (pkg.pub is public: its bytes are the caller's to verify, as run() does; a change to its
# untrusted comment line is harmless.)
SECRETS = [f for f in FILES if f not in (".lock", "ledger.json", "versions.json", "pkg.pub")]


def _corrupt(d: Path, rel: str, how: str, where: int, data: bytes, other: str) -> set[str]:
    """Damage `rel`; returns the files that may be named for it."""
    path = d / rel
    old = path.read_bytes()
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(old[: where % max(len(old), 1)])
    elif how == "flip" and old:
        i = where % len(old)
        path.write_bytes(old[:i] + bytes([old[i] ^ (1 + where % 255)]) + old[i + 1 :])
    elif how == "garbage":
        path.write_bytes(data)
    elif how == "swap":
        path.write_bytes((d / other).read_bytes())
        (d / other).write_bytes(old)
        return {rel, other}
    elif how == "chmod":
        os.chmod(path, where & 0o777)
    return {rel}


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rel=hs.sampled_from(FILES),
    how=hs.sampled_from(["delete", "truncate", "flip", "garbage", "swap", "chmod"]),
    where=hs.integers(min_value=0, max_value=10_000),
    data=hs.binary(max_size=64),
    other=hs.sampled_from(FILES),
)
def test_any_one_damaged_file_is_named_or_harmless(
    populated: Path,
    keys: dict[str, bytes],
    rel: str,
    how: str,
    where: int,
    data: bytes,
    other: str,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sdir = Path(tmp) / "state"
        shutil.copytree(populated, sdir, symlinks=True)
        pristine = {f: (populated / f).read_bytes() for f in SECRETS}
        named = _corrupt(sdir, rel, how, where, data, other)
        damaged = tree(sdir)
        outcomes: list[str | None] = []
        for create in (False, True):
            try:
                run(sdir, create=create, keys=keys)
                outcomes.append(None)
            except UserError as e:
                outcomes.append(str(e))
                assert tree(sdir) == damaged, "a refused run wrote to the store"
        assert outcomes[0] == outcomes[1], "read-only and writable disagree"
        if outcomes[0] is not None:
            assert any(outcomes[0].startswith(f"{sdir / f}: ") for f in named), outcomes[0]
            return
        # Accepted: every secret is as it was made (a lost public key is derived again).
        for f in SECRETS:
            assert (sdir / f).read_bytes() == pristine[f], f
