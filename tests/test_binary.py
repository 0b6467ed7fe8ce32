"""The one-file binary (`make binary` -> build/nomad-build) builds exactly what the
Python package builds: the example cluster (OpenBSD) and its Debian variant, from the
same state, byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, nomad_build, tree_fingerprint, write_cluster

BINARY = REPO / "build" / "nomad-build"
EPOCH = {"SOURCE_DATE_EPOCH": "1750000000"}


@pytest.fixture(scope="module")
def binary() -> Path:
    subprocess.run(["make", "binary"], cwd=REPO, check=True, timeout=1800, capture_output=True)
    assert BINARY.is_file() and os.access(BINARY, os.X_OK)
    return BINARY


def _run_binary(binary: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A clean environment: no PYTHONPATH, no venv; the binary carries everything.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), **EPOCH}
    return subprocess.run(
        [str(binary), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _artifacts(dist: Path) -> dict[str, object]:
    marker = json.loads((dist / ".nomad-build.json").read_bytes())
    artifacts: dict[str, object] = marker["artifacts"]
    return artifacts


@pytest.mark.slow
@pytest.mark.parametrize("os_name", ["openbsd", "debian"])
def test_binary_and_package_build_identical_artifacts(
    binary: Path, tmp_path: Path, os_name: str
) -> None:
    origin = tmp_path / "origin"
    write_cluster(origin, os_name)
    made = nomad_build(origin, "build", "-c", "cluster.toml", "--out", "first", env=EPOCH)
    assert made.returncode == 0, made.stderr
    shutil.rmtree(origin / "first")
    package, frozen = tmp_path / "package", tmp_path / "binary"
    shutil.copytree(origin, package, symlinks=True)
    shutil.copytree(origin, frozen, symlinks=True)

    by_package = nomad_build(package, "build", "-c", "cluster.toml", env=EPOCH)
    assert by_package.returncode == 0, by_package.stderr
    by_binary = _run_binary(binary, frozen, "build", "-c", "cluster.toml")
    assert by_binary.returncode == 0, by_binary.stderr

    ours, theirs = tree_fingerprint(package / "dist"), tree_fingerprint(frozen / "dist")
    # Every artifact byte-identical, same modes; the marker differs only in the input
    # digests it records (they name the tool, and the binary is another file).
    marker = ".nomad-build.json"
    assert {k: v for k, v in ours.items() if k != marker} == {
        k: v for k, v in theirs.items() if k != marker
    }
    assert _artifacts(package / "dist") == _artifacts(frozen / "dist")
    assert len(ours) > 10
    versions = "state/versions.json"
    assert (package / versions).read_bytes() == (frozen / versions).read_bytes()


@pytest.mark.slow
def test_binary_starts_and_finds_its_data(binary: Path, tmp_path: Path) -> None:
    start = time.perf_counter()
    shown = _run_binary(binary, tmp_path, "--help")
    assert shown.returncode == 0 and "cluster file" in shown.stdout
    assert time.perf_counter() - start < 60  # sanity, not a speed assertion
    write_cluster(tmp_path, "openbsd")
    checked = _run_binary(binary, tmp_path, "check", "-c", "cluster.toml")
    assert checked.returncode == 0, checked.stderr
