"""Shared fixtures: the example cluster, rendered for real, per OS."""

from __future__ import annotations

import hashlib
import io
import os
import re
import resource
import shutil
import stat
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


# The file the state store keeps of every secret it ever created (DESIGN.md, seam 2).
# The one place its name is spelled: change it here if the store names it otherwise.
STATE_LEDGER = "ledger.json"


def nomad_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment nomad-build runs in: ours, plus `env`."""
    return {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}


def nomad_build_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "builder.cli", *args]


def _limit_memory(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def nomad_build(
    cwd: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    memory_limit: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """The command line, run as an operator runs it (a fresh process, in cwd).

    `env` is added to the environment; a stuck run fails the test after `timeout` s;
    `memory_limit` (bytes of address space) keeps a run that reads /dev/zero from
    taking the machine down with it."""
    return subprocess.run(
        nomad_build_argv(*args),
        cwd=cwd,
        capture_output=True,
        text=True,
        env=nomad_env(env),
        stdin=subprocess.DEVNULL,
        check=False,
        timeout=timeout,
        preexec_fn=None if memory_limit is None else _limit_memory(memory_limit),
    )


Fingerprint = dict[str, tuple[int, str]]


def tree_fingerprint(path: Path) -> Fingerprint:
    """{relpath: (mode, sha256 hex | 'dir' | '-> link target')} of everything below `path`,
    `path` itself as '.'; {} if it does not exist. Equal fingerprints = byte-identical
    trees with identical modes (mtimes are not compared)."""
    out: Fingerprint = {}
    try:
        top = path.lstat()
    except FileNotFoundError:
        return out

    def entry(p: Path, st: os.stat_result) -> tuple[int, str]:
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            return mode, "-> " + os.readlink(p)
        if stat.S_ISDIR(st.st_mode):
            return mode, "dir"
        if stat.S_ISREG(st.st_mode):
            return mode, hashlib.sha256(p.read_bytes()).hexdigest()
        return mode, f"special {stat.S_IFMT(st.st_mode):o}"

    out["."] = entry(path, top)
    if stat.S_ISDIR(top.st_mode):
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                p = Path(root, name)
                out[str(p.relative_to(path))] = entry(p, p.lstat())
    return out


def copy_tree(src: Path, dst: Path) -> None:
    """A copy of a built directory (cluster file, state/, dist/), modes and links kept."""
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)


def example_text(os_name: str = "openbsd") -> str:
    """The example cluster file, with every node on `os_name`."""
    text = EXAMPLE.read_text()
    text = re.sub(r'^os = "openbsd"$', f'os = "{os_name}"', text, count=1, flags=re.M)
    if os_name == "debian":  # vio1 is an OpenBSD name; Debian VMs call it ens4/eth1
        text = re.sub(r'^interface = "vio1"$', 'interface = "eth1"', text, count=1, flags=re.M)
        text = re.sub(r'^data_dir = "/var/nomad"\n', "", text, count=1, flags=re.M)
    return text


def mixed_text() -> str:
    """The example (OpenBSD) with bi-node-sbg-3 on Debian: every kind of secret and
    artifact (signify and apt keys, .tgz and .deb, both repos, autoinstall and seed ISO)."""
    text = example_text("openbsd")
    node = 'name = "bi-node-sbg-3"\n'
    assert text.count(node) == 1
    return text.replace(
        node, node + 'os = "debian"\ninterface = "eth1"\ndata_dir = "/opt/nomad/data"\n'
    )


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


def example_of(kind: str) -> str:
    """'openbsd' | 'debian' (every node on that OS) | 'mixed' (see mixed_text)."""
    return mixed_text() if kind == "mixed" else example_text(kind)


@pytest.fixture(scope="session")
def built_example(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """built_example(kind) -> a directory holding cluster.toml, state/ and dist/ after one
    successful `nomad-build build` of example_of(kind). Shared: copy it (copy_tree), never
    change it."""
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            d = tmp_path_factory.mktemp(f"built-{kind}")
            (d / "cluster.toml").write_text(example_of(kind))
            proc = nomad_build(d, "build", "-c", "cluster.toml")
            assert proc.returncode == 0, proc.stderr
            cache[kind] = d
        return cache[kind]

    return get
