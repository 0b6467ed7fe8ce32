"""A build killed with SIGKILL at a random moment leaves nothing half-done.

Each trial starts `nomad-build build`, kills it (-9) after a seeded random delay spread
over a run's measured duration, then asserts:

- dist/ is absent / the old tree, or the complete new tree: never a mix;
- state/ still loads (`nomad-build check` exits 0);
- no secret that existed before changed (CA key, gossip key, signing keys);
- no staging directory was ever readable by others (polled while the run lived, and
  whatever survived the kill: mode 0700);
- after the next successful build: dist/ is the complete new tree, and no staging
  directory (a dot-entry beside or inside dist/) nor state temp file (.*.tmp-*) is left
  but the spare (the replaced tree, kept for the next publish: 0700, its tree only).

Trials run on a first build (empty directory: a tree assembled from scratch) and on a
rebuild after one node's meta changed, using the small mixed example
(conftest.mixed_text); the rebuild's directory has been built twice, so it brings the
spare up to date in place (builder.publish).
"""

from __future__ import annotations

import os
import random
import re
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import (
    Fingerprint,
    copy_tree,
    mixed_text,
    nomad_build,
    nomad_build_argv,
    nomad_env,
    tree_fingerprint,
)

SEED = 20_240_917
TRIALS = 12  # per kind: first build, rebuild
CLUSTER = "cluster.toml"
# Kept forever, never regenerated: compared before and after every trial.
SECRETS = ("ca/ca.key", "ca/ca.pem", "gossip.key", "bi-sbg-pkg.sec", "apt-signing.key")
TMP_RE = re.compile(r"^\..+\.tmp-")


def changed_text() -> str:
    """The mixed example with one node's meta changed: one package, its repos and seed."""
    text = mixed_text()
    assert text.count('client_type = "edge"') == 1
    return text.replace('client_type = "edge"', 'client_type = "edge-2"')


def secrets(directory: Path) -> dict[str, bytes]:
    state = directory / "state"
    return {rel: (state / rel).read_bytes() for rel in SECRETS if (state / rel).is_file()}


MARKER = ".nomad-build.json"  # dist/'s marker: nomad-build made this directory
SPARE = ".dist.spare"  # the tree dist/ held before, for the next publish


def staging_entries(directory: Path) -> list[Path]:
    """Dot-entries beside dist/ (in the build's directory) and anywhere inside dist/
    (except the marker at its top), but the spare."""
    found = [p for p in directory.iterdir() if p.name.startswith(".") and p.name != SPARE]
    dist = directory / "dist"
    if dist.is_dir():
        for root, dirs, files in os.walk(dist):
            found += [Path(root, n) for n in dirs + files if n.startswith(".")]
    return [p for p in found if p != dist / MARKER]


def state_temps(directory: Path) -> list[Path]:
    state = directory / "state"
    if not state.is_dir():
        return []
    return [Path(root, n) for root, _, files in os.walk(state) for n in files if TMP_RE.match(n)]


def open_to_others(paths: list[Path]) -> list[str]:
    """Staging directories with any group/other permission bit."""
    bad = []
    for p in paths:
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue  # gone between listing and stat
        if stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
            bad.append(f"{p.name} {stat.S_IMODE(st.st_mode):o}")
    return bad


@dataclass(frozen=True)
class Reference:
    first_seconds: float  # how long a first build takes
    rebuild_seconds: float  # ... and a rebuild after the meta change
    built: Path  # a first build of mixed_text(): cluster.toml, state/, dist/
    old: Fingerprint  # its dist/
    new: Fingerprint  # dist/ after the meta change, built over (a copy of) its state
    first_names: frozenset[str]  # the paths a first build publishes


def timed_build(directory: Path) -> float:
    start = time.monotonic()
    proc = nomad_build(directory, "build", "-c", CLUSTER)
    assert proc.returncode == 0, proc.stderr
    return time.monotonic() - start


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    built = tmp_path_factory.mktemp("crash-reference")
    (built / CLUSTER).write_text(mixed_text().replace('"edge"', '"edge-0"', 1))
    first = timed_build(built)
    first_names = frozenset(tree_fingerprint(built / "dist"))
    (built / CLUSTER).write_text(mixed_text())
    timed_build(built)  # a second build: the first tree is now the spare
    assert sorted(os.listdir(built / SPARE)) == ["tree"]
    again = tmp_path_factory.mktemp("crash-reference-rebuild")
    copy_tree(built, again)
    (again / CLUSTER).write_text(changed_text())
    rebuild = timed_build(again)
    old, new = tree_fingerprint(built / "dist"), tree_fingerprint(again / "dist")
    assert old and new and old != new
    return Reference(first, rebuild, built, old, new, first_names)


def run_and_kill(directory: Path, delay: float) -> tuple[bool, list[str]]:
    """Start a build in `directory`, SIGKILL it after `delay` s; meanwhile watch staging
    directories. (killed?, staging dirs seen open to others)."""
    proc = subprocess.Popen(
        nomad_build_argv("build", "-c", CLUSTER),
        cwd=directory,
        env=nomad_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: kill whatever it started too
    )
    seen_open: list[str] = []
    deadline = time.monotonic() + delay
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            seen_open += open_to_others([*staging_entries(directory), directory / SPARE])
            time.sleep(0.001)
        killed = proc.poll() is None
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if not killed:
        assert proc.returncode == 0, err.decode(errors="replace")
    return killed, sorted(set(seen_open))


def after_the_kill(directory: Path, seen_open: list[str], before: dict[str, bytes]) -> None:
    """What must hold right after the kill, whatever the moment."""
    assert not seen_open, f"staging directories readable by others: {seen_open}"
    survivors = [*staging_entries(directory), directory / SPARE]
    assert not open_to_others(survivors), open_to_others(survivors)
    check = nomad_build(directory, "check", "-c", CLUSTER)
    assert check.returncode == 0, check.stderr
    now = secrets(directory)
    for rel, data in before.items():
        assert now.get(rel) == data, f"state/{rel} changed or vanished"


def after_the_next_build(directory: Path, before: dict[str, bytes]) -> Fingerprint:
    proc = nomad_build(directory, "build", "-c", CLUSTER)
    assert proc.returncode == 0, proc.stderr
    assert staging_entries(directory) == [], staging_entries(directory)
    spare = directory / SPARE
    if spare.exists():  # none after a first build (nothing was replaced)
        assert stat.S_IMODE(spare.lstat().st_mode) == 0o700
        assert os.listdir(spare) == ["tree"]  # not marked dirty
    assert state_temps(directory) == [], state_temps(directory)
    now = secrets(directory)
    for rel, data in before.items():
        assert now.get(rel) == data, f"state/{rel} changed by the build after the kill"
    return tree_fingerprint(directory / "dist")


def delay_for(trial: int, kind: str, seconds: float) -> float:
    """Seeded, and stratified: trial i of n falls in the i-th n-th of the run (+10%)."""
    rng = random.Random(f"{SEED}-{kind}-{trial}")
    return (trial + rng.random()) / TRIALS * seconds * 1.1


@pytest.mark.parametrize("trial", range(TRIALS))
def test_killed_first_build(trial: int, tmp_path: Path, reference: Reference) -> None:
    (tmp_path / CLUSTER).write_text(mixed_text())
    killed, seen_open = run_and_kill(tmp_path, delay_for(trial, "first", reference.first_seconds))
    left = tree_fingerprint(tmp_path / "dist")
    made = secrets(tmp_path)  # whatever the killed run created is kept from now on
    after_the_kill(tmp_path, seen_open, made)
    final = after_the_next_build(tmp_path, made)
    # A fresh state has its own keys: the complete tree is the one its next build makes.
    assert left in ({}, final), "dist/ left half-written" if killed else "dist/ incomplete"
    assert set(final) == reference.first_names  # every artifact, by name


@pytest.mark.parametrize("trial", range(TRIALS))
def test_killed_rebuild(trial: int, tmp_path: Path, reference: Reference) -> None:
    copy_tree(reference.built, tmp_path)
    assert tree_fingerprint(tmp_path / "dist") == reference.old
    (tmp_path / CLUSTER).write_text(changed_text())
    before = secrets(tmp_path)
    assert set(before) == set(SECRETS)
    _, seen_open = run_and_kill(tmp_path, delay_for(trial, "rebuild", reference.rebuild_seconds))
    left = tree_fingerprint(tmp_path / "dist")
    assert left in (reference.old, reference.new), "dist/ is a mix of the old and new trees"
    after_the_kill(tmp_path, seen_open, before)
    assert after_the_next_build(tmp_path, before) == reference.new


def test_trials_are_spread_over_the_run(reference: Reference) -> None:
    """At least 20 trials in all, their kill moments spread over the measured run."""
    for kind, seconds in (
        ("first", reference.first_seconds),
        ("rebuild", reference.rebuild_seconds),
    ):
        delays = sorted(delay_for(t, kind, seconds) for t in range(TRIALS))
        assert delays[0] < seconds / 3 and delays[-1] > 2 * seconds / 3, delays
    assert 2 * TRIALS >= 20
