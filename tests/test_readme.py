"""The README works as typed: every ```sh block runs in a fresh directory holding
examples/, with nomad-build on PATH; the table of dist/ is what a build makes."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import REPO, nomad_env

README = (REPO / "README.md").read_text()


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```$", text, flags=re.M | re.S)


def test_the_readme_has_command_blocks() -> None:
    blocks = sh_blocks(README)
    assert len(blocks) >= 2
    commands = " ".join(blocks)
    for command in ("check", "build", "package", "render", "image", "repo", "pki status"):
        assert f"nomad-build {command}" in commands, command


def test_every_sh_block_runs_as_typed(tmp_path: Path) -> None:
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    # nomad-build as `make demo` installs it: the console script beside this Python
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "nomad-build").exists(), "the console script is not installed"
    env = nomad_env({"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"})
    for block in sh_blocks(README):
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, f"{block}\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "dist" / "manifest.json").is_file()
    assert (tmp_path / "dist-debian" / "images" / "bi-node-sbg-2" / "seed.iso").is_file()


def dist_table(text: str) -> list[tuple[str, str]]:
    """(path pattern, what) of each row of the dist/ table."""
    start = text.index("| path | what | who gets it |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        for path in re.findall(r"`([^`]+)`", cells[0]):
            rows.append((re.sub(r"<[^>]+>", "*", path), cells[1]))
    return rows


def test_the_dist_table_is_what_build_makes(built_example: Callable[[str], Path]) -> None:
    dist = built_example("mixed") / "dist"
    files = [p.relative_to(dist).as_posix() for p in dist.rglob("*") if p.is_file()]
    rows = dist_table(README)

    def covers(pattern: str, path: str) -> bool:
        if pattern.endswith("/"):
            return path.startswith(pattern)
        return fnmatch.fnmatchcase(path, pattern)

    uncovered = [f for f in files if not any(covers(p, f) for p, _ in rows)]
    assert not uncovered, uncovered
    for pattern, what in rows:
        if "images.password_hash" in what:  # the example has none: no autoinstall seeds
            continue
        assert any(covers(pattern, f) for f in files), pattern


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "examples").glob("*.toml")))
def test_each_example_cluster_checks(tmp_path: Path, example: str) -> None:
    shutil.copy(REPO / "examples" / example, tmp_path / example)
    proc = subprocess.run(
        [sys.executable, "-m", "builder.cli", "check", "-c", example, "-q"],
        cwd=tmp_path,
        env=nomad_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
