"""The command line: --version, --help everywhere, `check` (the plan, read-only) and
`pki status`, run as a user runs them."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

import builder

from conftest import nomad_build, write_cluster

NODES = {
    # name: (role, address)
    "bi-core-sbg-1": ("server", "10.20.130.52"),
    "bi-core-sbg-2": ("server", "10.20.130.53"),
    "bi-core-sbg-3": ("server", "10.20.130.54"),
    "bi-node-sbg-1": ("client", "10.20.131.41"),
    "bi-node-sbg-2": ("client", "10.20.131.42"),
    "bi-node-sbg-3": ("client", "10.20.131.43"),
}
COMMANDS = [
    [],
    ["check"],
    ["render"],
    ["package"],
    ["image"],
    ["repo"],
    ["build"],
    ["pki"],
    ["pki", "status"],
    ["pki", "renew"],
]


def entries(directory: Path) -> list[tuple[str, int]]:
    return sorted(
        (str(p.relative_to(directory)), p.lstat().st_mtime_ns) for p in directory.rglob("*")
    )


def test_version(tmp_path: Path) -> None:
    proc = nomad_build(tmp_path, "--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"nomad-build, version {builder.__version__}"


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) or "top" for c in COMMANDS])
def test_help_everywhere(tmp_path: Path, command: list[str]) -> None:
    for flag in ("--help", "-h"):
        proc = nomad_build(tmp_path, *command, flag)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"Usage: nomad-build {' '.join(command)}".rstrip())
        assert proc.stderr == ""
    assert list(tmp_path.iterdir()) == []


def test_help_lists_every_command(tmp_path: Path) -> None:
    out = nomad_build(tmp_path, "--help").stdout
    for name in ("check", "render", "package", "image", "repo", "build", "pki"):
        assert re.search(rf"^  {name}\s", out, re.M), name


# ---------------------------------------------------------------- check


def table(stdout: str) -> dict[str, list[str]]:
    """The node rows of `check`'s table, split on its column gaps."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("NODE "))
    assert re.split(r"\s{2,}", lines[header]) == [
        "NODE",
        "ROLE",
        "OS",
        "ADDRESSES",
        "CERTIFICATE NAMES",
        "CERT EXPIRES",
    ]
    rows = {}
    for line in lines[header + 1 :]:
        cols = re.split(r"\s{2,}", line.strip())
        if len(cols) != 6:
            break
        rows[cols[0]] = cols
    return rows


def expected_row(name: str, os_name: str, expiry: str) -> list[str]:
    role, address = NODES[name]
    names = f"{role}.eu.nomad,localhost,{name}.intra.terror.ninja"
    return [name, role, os_name, address, names, expiry]


@pytest.mark.parametrize("os_name", ["openbsd", "debian"])
def test_check_prints_the_plan_and_writes_nothing(tmp_path: Path, os_name: str) -> None:
    write_cluster(tmp_path, os_name)
    before = entries(tmp_path)
    proc = nomad_build(tmp_path, "check", "-c", "cluster.toml")
    assert proc.returncode == 0, proc.stderr
    # (the Debian example's warnings are tests/test_operator.py's)
    assert all(ln.startswith("warning: ") for ln in proc.stderr.splitlines()), proc.stderr
    assert (proc.stderr == "") == (os_name == "openbsd")
    assert entries(tmp_path) == before  # no state/ created, nothing touched
    assert proc.stdout.splitlines()[0] == (
        "cluster bi-sbg: region eu, datacenter bi-sbg, domain intra.terror.ninja, "
        "3 servers (bootstrap_expect 3), 6 nodes"
    )
    rows = table(proc.stdout)
    assert rows == {n: expected_row(n, os_name, "to be issued") for n in NODES}
    plan = [ln for ln in proc.stdout.splitlines() if ln.startswith("plan: ")]
    # the signing keys, on first use: the apt repository's (Debian) and the signify key
    # (OpenBSD packages; every build's signed SHA256SUMS)
    apt = ["plan: create apt-signing.key (new)"] if os_name == "debian" else []
    assert plan == [
        "plan: create CA (new)",
        "plan: create gossip key (new)",
        *[f"plan: create certificate {n} (new)" for n in NODES],
        *apt,
        "plan: create bi-sbg-pkg.sec (new)",
    ]
    # an explicit --state that does not exist is not created either
    again = nomad_build(tmp_path, "check", "-c", "cluster.toml", "--state", "elsewhere/s")
    assert again.returncode == 0, again.stderr
    assert entries(tmp_path) == before


def test_check_after_render_shows_expiry_and_reissue_plan(tmp_path: Path) -> None:
    path = write_cluster(tmp_path)
    made = nomad_build(tmp_path, "pki", "renew", "-c", "cluster.toml")
    assert made.returncode == 0, made.stderr
    before = entries(tmp_path)

    proc = nomad_build(tmp_path, "check", "-c", "cluster.toml")
    assert proc.returncode == 0, proc.stderr
    rows = table(proc.stdout)
    for name in NODES:
        cert = x509.load_pem_x509_certificate(
            (tmp_path / "state" / "nodes" / name / "cert.pem").read_bytes()
        )
        expiry = cert.not_valid_after_utc.strftime("%Y-%m-%d")
        assert rows[name] == expected_row(name, "openbsd", expiry)
        days = (cert.not_valid_after_utc - datetime.now(UTC)).days
        assert 363 <= days <= 365  # cert_days = 365
    plan = [ln for ln in proc.stdout.splitlines() if ln.startswith("plan: ")]
    assert plan == ["plan: create bi-sbg-pkg.sec (new)"]  # renew makes no signing key

    # a changed address: check says what a run would re-issue, and still writes nothing
    anchor = 'address = "10.20.131.42"\n'
    path.write_text(path.read_text().replace(anchor, anchor + 'extra_ips = ["10.9.9.9"]\n', 1))
    before = entries(tmp_path)
    proc = nomad_build(tmp_path, "check", "-c", "cluster.toml")
    assert proc.returncode == 0, proc.stderr
    rows = table(proc.stdout)
    assert rows["bi-node-sbg-2"][3] == "10.20.131.42,10.9.9.9"
    assert rows["bi-node-sbg-2"][5].endswith(" (re-issue)")
    assert all(not rows[n][5].endswith("(re-issue)") for n in NODES if n != "bi-node-sbg-2")
    plan = [ln for ln in proc.stdout.splitlines() if ln.startswith("plan: ")]
    assert plan == [
        "plan: re-issue certificate bi-node-sbg-2 (IP addresses changed: +10.9.9.9)",
        "plan: create bi-sbg-pkg.sec (new)",
    ]
    assert entries(tmp_path) == before


def test_even_server_count_warns_but_passes(tmp_path: Path) -> None:
    path = write_cluster(tmp_path)
    text = path.read_text()
    old = 'name = "bi-core-sbg-3"\nrole = "server"'
    assert old in text
    path.write_text(text.replace(old, 'name = "bi-core-sbg-3"\nrole = "client"'))
    proc = nomad_build(tmp_path, "check", "-c", "cluster.toml")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "warning: 2 servers: an even number adds no fault tolerance over 1; use 3 or 5"
    ]
    assert "2 servers (bootstrap_expect 2)" in proc.stdout
    assert table(proc.stdout)["bi-core-sbg-3"][1] == "client"


def test_a_store_made_before_the_ledger_is_adopted_deliberately(tmp_path: Path) -> None:
    """A missing ledger is refused (it may have been deleted); `state adopt` records the
    store once, and nothing is made anew."""
    write_cluster(tmp_path)
    assert nomad_build(tmp_path, "build", "-c", "cluster.toml").returncode == 0
    ca_key = (tmp_path / "state/ca/ca.key").read_bytes()
    (tmp_path / "state/ledger.json").unlink()
    refused = nomad_build(tmp_path, "build", "-c", "cluster.toml")
    assert refused.returncode == 2
    assert "ledger.json: missing" in refused.stderr and "state adopt" in refused.stderr
    adopted = nomad_build(tmp_path, "state", "adopt", "-c", "cluster.toml")
    assert adopted.returncode == 0, adopted.stderr
    assert "ledger.json: created, recording" in adopted.stderr
    again = nomad_build(tmp_path, "build", "-c", "cluster.toml")
    assert again.returncode == 0, again.stderr
    assert "created:" not in again.stderr
    assert (tmp_path / "state/ca/ca.key").read_bytes() == ca_key
