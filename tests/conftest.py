"""Shared fixtures: the example cluster, rendered for real, per OS."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pycdlib
import pytest

from builder.cluster import load
from builder.model import Cluster, Node
from builder.nodetree import NodeTree
from builder.render import render_node
from builder.state import State

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "bi-sbg.toml"


def nomad_build(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command line, run as an operator runs it (a fresh process, in cwd)."""
    return subprocess.run(
        [sys.executable, "-m", "builder.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
        timeout=300,
    )


def example_text(os_name: str = "openbsd") -> str:
    """The example cluster file, with every node on `os_name`."""
    text = EXAMPLE.read_text()
    text = re.sub(r'^os = "openbsd"$', f'os = "{os_name}"', text, count=1, flags=re.M)
    if os_name == "debian":  # vio1 is an OpenBSD name; Debian VMs call it ens4/eth1
        text = re.sub(r'^interface = "vio1"$', 'interface = "eth1"', text, count=1, flags=re.M)
        text = re.sub(r'^data_dir = "/var/nomad"\n', "", text, count=1, flags=re.M)
    return text


def write_cluster(directory: Path, os_name: str = "openbsd", append: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "cluster.toml"
    path.write_text(example_text(os_name) + append)
    return path


def pycdlib_files(data: bytes) -> dict[str, dict[str, bytes]]:
    """Every file by each of the three name spaces: {"rr"|"joliet"|"iso": {name: bytes}}."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        out: dict[str, dict[str, bytes]] = {"rr": {}, "joliet": {}, "iso": {}}
        for kind, arg in (("rr", "rr_path"), ("joliet", "joliet_path"), ("iso", "iso_path")):
            for _dirname, _dirs, files in iso.walk(**{arg: "/"}):
                for f in files:
                    buf = io.BytesIO()
                    iso.get_file_from_iso_fp(buf, **{arg: "/" + f})
                    out[kind][f] = buf.getvalue()
        return out
    finally:
        iso.close()


def bundle_table(directory: Path, binary: bytes | None, version: str = "1.9.3") -> str:
    """Put `binary` (None: keep the file there) and its SHA256SUMS beside the cluster
    file in directory; the [packages.bundle] table that ships it, to append."""
    path = directory / "nomad"
    if binary is not None:
        path.write_bytes(binary)
    (directory / "SHA256SUMS").write_text(
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  nomad\n"
    )
    return (
        f'\n[packages.bundle]\nbinary = "nomad"\nsha256sums = "SHA256SUMS"\nversion = "{version}"\n'
    )


@dataclass
class Rendered:
    cluster: Cluster
    state_dir: Path
    trees: dict[str, NodeTree]

    def node(self, name: str) -> Node:
        return self.cluster.node(name)


def render_all(directory: Path, os_name: str, append: str = "") -> Rendered:
    cluster = load(write_cluster(directory, os_name, append))
    state_dir = directory / "state"
    with State.open(state_dir, create=True) as st:
        trees = {n.name: render_node(cluster, n, st) for n in cluster.nodes}
    return Rendered(cluster, state_dir, trees)


@pytest.fixture(scope="session")
def rendered_openbsd(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """The example cluster (OpenBSD, as the seed), every node rendered once per session."""
    return render_all(tmp_path_factory.mktemp("openbsd"), "openbsd")


@pytest.fixture(scope="session")
def rendered_debian(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """The example cluster with every node on Debian."""
    return render_all(tmp_path_factory.mktemp("debian"), "debian")


@pytest.fixture
def cluster_file(tmp_path: Path) -> Callable[..., Path]:
    """cluster_file(os_name="openbsd", append="") -> path of a fresh copy of the example."""

    def make(os_name: str = "openbsd", append: str = "") -> Path:
        return write_cluster(tmp_path, os_name, append)

    return make
