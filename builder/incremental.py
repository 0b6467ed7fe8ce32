"""Incremental builds: an artifact is reused, not rebuilt, when nothing it is made
from changed and its bytes are still in the previous output.

Every build records, in its marker (`dist/.nomad-build.json`, key "inputs"), for
each (writer, node) the digest of everything the writer's `build` reads for it:
the tool itself (its code and data files), the writer's name, SOURCE_DATE_EPOCH /
mtime, the signing keys, the cluster's settings, the node, its NodeTree, its
package version and the sha256 of the upstream artifacts it consumes. The next
run computes the same digest; when it matches and every file of that (writer,
node) is still in the output with the sha256, size and mode the marker lists,
those bytes are the artifacts. A file changed, lost or never listed is simply
built again: reuse can only save work, never change a byte.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

from builder import atomic_io, data, output_dir
from builder.model import Cluster, Node, PackageSettings
from builder.writers import Artifact, Keys, mode_kept

INPUTS_KEY = "inputs"  # the marker's key: "<writer>:<node or *>" -> {digest, paths}
WHOLE = "*"  # the node part of the key of a writer that builds all its nodes at once
# Verified ahead in two threads: files of at least _PARALLEL_FILE bytes (seed images),
# when there are _PARALLEL_BYTES of them. Measured: for small files (packages, site
# parts) the GIL hand-offs cost more than the hashing they overlap (3,000 nodes: 20 ms
# slower); for a few MB, starting the threads costs more than it saves.
_PARALLEL_FILE = 32 << 10
_PARALLEL_BYTES = 4 << 20


def digest(*parts: Any) -> str:
    """sha256 of the parts' repr: the model, the trees and the keys are frozen dataclasses
    of str, int, bytes, tuples and read-only mappings, whose repr is canonical. A part
    whose repr is not deterministic (an object address) only costs reuse, never
    correctness: its digest never matches again."""
    return hashlib.sha256(repr(parts).encode("utf-8", "surrogateescape")).hexdigest()


@cache
def tool_digest() -> str:
    """The tool's identity: every source file of the builder package and every data file
    (recipes, packaging, images); a one-file binary hashes itself."""
    h = hashlib.sha256()
    if getattr(sys, "frozen", False):
        h.update(Path(sys.executable).read_bytes())
    else:
        package = Path(__file__).resolve().parent
        for path in sorted(package.rglob("*.py")):
            h.update(path.relative_to(package).as_posix().encode() + b"\0")
            h.update(path.read_bytes())
    root = data.data_root()
    for name in ("recipes", "packaging", "images"):
        for path in sorted((root / name).rglob("*")):
            if path.is_file():
                h.update(path.relative_to(root).as_posix().encode() + b"\0")
                h.update(path.read_bytes())
    return h.hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Digests:
    """The input digests of one run (each node's digest computed once). `tree_key` gives
    the digest of what a node's NodeTree is rendered from (so a tree need not be rendered
    to know that it did not change)."""

    def __init__(
        self, cluster: Cluster, keys: Keys, mtime: int, tree_key: Callable[[Node], str]
    ) -> None:
        self._base = digest(tool_digest(), mtime, keys, settings(cluster))
        self._tree_key = tree_key
        self._node: dict[str, str] = {}

    def node(self, node: Node) -> str:
        d = self._node.get(node.name)
        if d is None:
            d = digest(node_digest(node), self._tree_key(node))
            self._node[node.name] = d
        return d

    def per_node(
        self,
        writer: str,
        node: Node,
        version: int | None,
        upstream: list[str],
        tree: str | None = None,
    ) -> str:
        """`tree`: the digest of the tree the writer builds from when that is not the
        node's NodeTree (a Consul package's: its Consul tree's NodeTree.digest())."""
        of_node = self.node(node) if tree is None else digest(node_digest(node), "tree", tree)
        return digest(self._base, writer, of_node, version, upstream)

    def whole(
        self,
        writer: str,
        nodes: Sequence[Node],
        versions: Mapping[str, int],
        upstream: list[str],
    ) -> str:
        per = [(self.node(n), versions.get(n.name)) for n in nodes]
        return digest(self._base, writer, per, upstream)


def settings(cluster: Cluster) -> dict[str, Any]:
    """The cluster's own settings (everything but its nodes, and not where its file is:
    a copied or renamed cluster file builds the same bytes, and records the same)."""
    found = {f.name: getattr(cluster, f.name) for f in dataclasses.fields(cluster)}
    for name in ("nodes", "warnings", "source"):
        found.pop(name, None)
    found["packages"] = portable(cluster.packages)
    return found


def portable(packages: PackageSettings) -> PackageSettings:
    """Package settings without the bundled binary's location (its verified sha256 and
    version stay: they say what it is)."""
    bundle = packages.bundle
    if bundle is None:
        return packages
    bundle = dataclasses.replace(
        bundle, binary=Path(bundle.binary.name), sha256sums=Path(bundle.sha256sums.name)
    )
    return dataclasses.replace(packages, bundle=bundle)


def render_base(cluster: Cluster) -> str:
    """What every node's tree is rendered from besides the node and its secrets: the tool
    (templates, recipes), the cluster's settings, and every node's and server's
    addresses (firewall peer lists; a node's list is these without its own)."""
    everyone = [(n.name, n.ips) for n in cluster.nodes]
    servers = [n.name for n in cluster.servers]
    return digest(tool_digest(), settings(cluster), everyone, servers)


def tree_key(base: str, node: Node, secrets: object) -> str:
    """The digest of one node's render inputs (the bundled binary is in node.packages by
    its verified sha256)."""
    return digest(base, node_digest(node), secrets)


def node_digest(node: Node) -> str:
    """The digest of a node's model (its bundled binary by its verified sha256): asked
    for by every writer of every node, computed once per node object."""
    known = _NODE_DIGESTS.get(id(node))
    if known is not None and known[0] is node:
        return known[1]
    d = digest(node, portable(node.packages), node.images)
    if len(_NODE_DIGESTS) > 1 << 15:  # a long-lived process (the tests) sees many models
        _NODE_DIGESTS.clear()
    _NODE_DIGESTS[id(node)] = (node, d)  # the node is kept: its id is not reused
    return d


_NODE_DIGESTS: dict[int, tuple[Node, str]] = {}


def key(writer: str, node: str | None) -> str:
    return f"{writer}:{node or WHOLE}"


class Previous:
    """What the previous build left in the output directory, for reuse."""

    def __init__(self, out: Path, artifacts: dict[str, Any], inputs: dict[str, Any]) -> None:
        self.out = out
        self.artifacts = artifacts
        self.inputs = inputs
        self.reused: set[str] = set()  # paths handed out again this run
        self._verified: dict[str, Artifact | None] = {}  # by prefetch(): path -> as read
        self._dir_fd: int | None = None
        self._inodes: dict[tuple[int, int], tuple[str, bytes]] = {}  # verified: sha256, bytes
        self._file_ids: dict[str, tuple[int, int]] = {}  # path -> (st_dev, st_ino) verified

    @classmethod
    def load(cls, out: Path | None) -> Previous | None:
        if out is None:
            return None
        body = output_dir.marker_body(out)
        if body is None:
            return None
        artifacts, inputs = body.get("artifacts"), body.get(INPUTS_KEY)
        if not isinstance(artifacts, dict) or not isinstance(inputs, dict):
            return None
        return cls(out, artifacts, inputs)

    def recorded(self, writer: str, node: str | None) -> str | None:
        """The input digest recorded for (writer, node), if any."""
        rec = self.inputs.get(key(writer, node))
        d = rec.get("digest") if isinstance(rec, dict) else None
        return d if isinstance(d, str) else None

    def take(self, writer: str, node: str | None, want: str) -> list[Artifact] | None:
        """The artifacts (writer, node) produced last time, if built from `want` and
        still in the output exactly as the marker lists them; else None."""
        paths = self._paths(writer, node, want)
        if paths is None:
            return None
        found = []
        for path in paths:
            a = self._verified[path] if path in self._verified else self._read(path)
            if a is None:
                return None
            found.append(a)
        return found

    def prefetch(self, writer: str, wants: Iterable[tuple[str | None, str]]) -> None:
        """Verify now, on both cores, the large files take() will be asked for: each
        (node, input digest) whose digest matches the marker's record. Hashing releases
        the GIL, so two threads halve the time of the seed images."""
        paths: list[str] = []
        for node, want in wants:
            paths += self._paths(writer, node, want) or ()
        todo = [p for p in dict.fromkeys(paths) if p not in self._verified]
        sizes = [self._size(p) for p in todo]
        todo = [p for p, size in zip(todo, sizes, strict=True) if size >= _PARALLEL_FILE]
        sizes = [size for size in sizes if size >= _PARALLEL_FILE]
        if sum(sizes) < _PARALLEL_BYTES:
            return  # take() reads them
        order = sorted(range(len(todo)), key=sizes.__getitem__, reverse=True)
        halves = [[todo[i] for i in order[k::2]] for k in (0, 1)]  # as many bytes each
        with ThreadPoolExecutor(max_workers=2) as pool:
            for half, read in zip(halves, pool.map(self._read_each, halves), strict=True):
                self._verified.update(zip(half, read, strict=True))

    def _paths(self, writer: str, node: str | None, want: str) -> list[str] | None:
        rec = self.inputs.get(key(writer, node))
        if not isinstance(rec, dict) or rec.get("digest") != want:
            return None
        paths = rec.get("paths")
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            return None
        return paths

    def _size(self, path: str) -> int:
        entry = self.artifacts.get(path)
        size = entry.get("size") if isinstance(entry, dict) else None
        return size if isinstance(size, int) else 0

    def _read_each(self, paths: list[str]) -> list[Artifact | None]:
        return [self._read(p) for p in paths]

    def same_marker(
        self,
        artifacts: Sequence[Artifact],
        packages: Mapping[str, tuple[str, str, int]],
        records: Mapping[str, tuple[str, list[str]]],
    ) -> bool:
        """Would this run's marker say exactly what the previous one says? Asked when every
        artifact was taken from the previous output (so each one's sha256, size, mode and
        node are the ones its entry lists, and the tool, marker format included, is the
        same: its digest is in every input digest). What is left to compare: the set of
        paths, the package versions and the input records."""
        if {a.path for a in artifacts} != set(self.artifacts):
            return False
        for a in artifacts:
            entry = self.artifacts[a.path]
            pkg = packages.get(a.path)
            want = None if pkg is None else {"node": pkg[0], "format": pkg[1], "version": pkg[2]}
            if not isinstance(entry, dict) or entry.get("package") != want:
                return False
        mine = {k: {"digest": d, "paths": list(paths)} for k, (d, paths) in records.items()}
        return mine == self.inputs

    def sha256(self, path: str) -> str:
        """The sha256 the marker lists for a path take() returned (and verified)."""
        entry = self.artifacts[path]
        digest = entry.get("sha256")
        assert isinstance(digest, str)
        return digest

    def accept(self, artifacts: Iterable[Artifact]) -> None:
        """These taken artifacts are this run's: publishing keeps their files."""
        self.reused.update(a.path for a in artifacts)

    def reused_files(self) -> dict[str, tuple[int, int]]:
        """Each reused path -> the (st_dev, st_ino) of the file verified there."""
        return {p: self._file_ids[p] for p in self.reused if p in self._file_ids}

    def _read(self, path: str) -> Artifact | None:
        entry = self.artifacts.get(path)
        if not isinstance(entry, dict):
            return None
        secret, node = entry.get("secret"), entry.get("node")
        try:  # relative to dist/'s descriptor: thousands of opens
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dir())
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or not mode_kept(st.st_mode, bool(secret)):
                return None
            if st.st_size != entry.get("size"):
                return None
            file_id = (st.st_dev, st.st_ino)
            twin = self._inodes.get(file_id)  # the very file, verified under another name
            known = twin[1] if twin is not None and twin[0] == entry.get("sha256") else None
            data_ = known if known is not None else atomic_io.read_all(fd, st.st_size)
        finally:
            os.close(fd)
        if known is None:
            digest_ = sha256(data_)
            if digest_ != entry.get("sha256"):
                return None
            self._inodes[file_id] = (digest_, data_)
        self._file_ids[path] = file_id
        try:
            return Artifact(path, data_, bool(secret), node if isinstance(node, str) else None)
        except ValueError:
            return None

    def _dir(self) -> int:
        if self._dir_fd is None:
            self._dir_fd = os.open(self.out, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._dir_fd

    def close(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None


def add_inputs(marker: Artifact, inputs: Mapping[str, tuple[str, list[str]]]) -> Artifact:
    """The marker with each (writer, node)'s input digest and paths added (one line per
    record, written with the C JSON encoder: a marker lists thousands)."""
    lines = ",\n".join(
        f"  {json.dumps(k)}: {json.dumps({'digest': d, 'paths': list(paths)})}"
        for k, (d, paths) in sorted(inputs.items())
    )
    text = f"{{\n{lines}\n }}" if lines else "{}"
    if marker.data.endswith(b"\n}\n") and b'"inputs"' not in marker.data[:64]:
        data = marker.data[:-3] + f',\n "{INPUTS_KEY}": {text}\n}}\n'.encode()
    else:  # not the layout expected: the slow, general way
        body = json.loads(marker.data)
        body[INPUTS_KEY] = json.loads(text)
        data = (json.dumps(body, indent=1) + "\n").encode()
    return dataclasses.replace(marker, data=data)


def tree_files(out: Path) -> set[str]:
    """Every non-directory under `out`, relative, as posix paths."""
    skip = len(str(out)) + 1
    return {path[skip:] for path in atomic_io.scan_tree(str(out))[1]}


def unchanged(out: Path, artifacts: Iterable[Artifact]) -> bool:
    """The output already holds exactly these artifacts (all of them reused, verified,
    and the marker byte-identical): publishing would change nothing."""
    return {a.path for a in artifacts} == tree_files(out)
