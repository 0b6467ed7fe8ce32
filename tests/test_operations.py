"""docs/operations.md, run: every `sh` block in order against the example cluster,
every `sh-node` block checked for shell syntax."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

from conftest import REPO, nomad_env, write_cluster

DOC = REPO / "docs" / "operations.md"
BLOCK = re.compile(r"^```(sh|sh-node)\n(.*?)^```$", re.M | re.S)


def blocks(kind: str) -> list[str]:
    return [body for k, body in BLOCK.findall(DOC.read_text()) if k == kind]


def test_every_sh_block_runs(tmp_path: Path) -> None:
    work = tmp_path / "ops"
    write_cluster(work)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "nomad-build"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m builder.cli "$@"\n')
    wrapper.chmod(0o755)
    env = nomad_env({"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path)})
    runnable = blocks("sh")
    assert len(runnable) >= 10
    for body in runnable:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", body],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, (body, proc.stdout, proc.stderr)
    # what the runbook promised, looked at
    assert stat.S_IMODE((work / "state.nbk").stat().st_mode) == 0o600
    assert (work / "restored-state/ledger.json").is_file()
    assert (
        (work / "gossip-commands.sh")
        .read_text()
        .startswith("nomad operator gossip keyring install ")
    )
    assert list((work / "state/ca/archive").glob("*.pem"))
    assert (work / "state/signify-archive/bi-sbg-pkg.sec").is_file()
    assert (work / "state/nodes/bi-node-sbg-4/cert.pem").is_file()
    consul_commands = (work / "consul-gossip-commands.sh").read_text().splitlines()
    assert [c.split("=")[0] for c in consul_commands[:3]] == [
        "consul keyring -install",
        "consul keyring -use",
        "consul keyring -remove",
    ]
    assert (work / "state/consul-gossip/history/1.key").is_file()
    assert len(list((work / "state/consul-ca/archive").glob("*.pem"))) == 1
    assert (work / "state/consul-bi-node-sbg-4.pem").is_file()
    final = subprocess.run(
        ["bash", "-c", "nomad-build pki status -c cluster.toml && nomad-build audit"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert final.returncode == 0, final.stdout + final.stderr


def test_every_node_block_is_valid_shell() -> None:
    node_blocks = blocks("sh-node")
    assert node_blocks
    for body in node_blocks:
        proc = subprocess.run(["sh", "-n"], input=body, capture_output=True, text=True)
        assert proc.returncode == 0, (body, proc.stderr)


def test_every_command_in_the_doc_is_in_a_checked_block() -> None:
    """A `nomad-build` command line outside the sh blocks would be untested."""
    text = BLOCK.sub("", DOC.read_text())
    stray = [
        ln
        for ln in text.splitlines()
        if ln.startswith(("nomad-build ", "$ nomad-build")) or ln.startswith("    nomad-build ")
    ]
    assert stray == []
