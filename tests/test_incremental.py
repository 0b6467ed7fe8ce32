"""Incremental builds: what did not change is reused (not rebuilt, not rewritten), what
changed is rebuilt, and the package version rule stays exact.

Builds go through the pipeline in-process (the CLI is a thin layer over it) on the
mixed example: every kind of artifact (.deb and .tgz, both repositories, seed ISO,
OpenBSD autoinstall)."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import random
import re
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder import archive, data, incremental, lifecycle, pipeline, render, seed
from builder.archive import TarEntry
from builder.errors import UserError
from builder.ledger import Ledger
from builder.state import CertFiles, State
from builder.writers import deb, openbsd_pkg

from conftest import REPO, mixed_text, nomad_build, tree_fingerprint

CLIENT = "bi-node-sbg-1"  # an OpenBSD client of the example
SERVERS = ("bi-core-sbg-1", "bi-core-sbg-2", "bi-core-sbg-3")
CLIENTS = ("bi-node-sbg-1", "bi-node-sbg-2", "bi-node-sbg-3")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1750000000")
    (tmp_path / "cluster.toml").write_text(mixed_text())
    return tmp_path


def build(site: Path) -> pipeline.Result:
    request = pipeline.Request("build", site / "cluster.toml", out_dir=site / "dist")
    return pipeline.execute(pipeline.plan(request))


def marker(site: Path) -> dict[str, dict[str, object]]:
    body = json.loads((site / "dist" / ".nomad-build.json").read_bytes())
    artifacts: dict[str, dict[str, object]] = body["artifacts"]
    return artifacts


def inodes(site: Path) -> dict[str, tuple[int, int]]:
    """relpath -> (inode, mtime_ns) of every file in dist/."""
    out = {}
    for root, _dirs, files in os.walk(site / "dist"):
        for f in files:
            p = Path(root, f)
            st_ = p.stat()
            out[str(p.relative_to(site / "dist"))] = (st_.st_ino, st_.st_mtime_ns)
    return out


def versions(site: Path) -> dict[str, dict[str, dict[str, object]]]:
    found: dict[str, dict[str, dict[str, object]]] = json.loads(
        (site / "state" / "versions.json").read_bytes()
    )
    return found


def change_node(site: Path, name: str, line: str) -> None:
    path = site / "cluster.toml"
    text = path.read_text()
    anchor = f'name = "{name}"\n'
    assert text.count(anchor) == 1
    path.write_text(text.replace(anchor, anchor + line + "\n"))


def changed_paths(
    before: dict[str, dict[str, object]], after: dict[str, dict[str, object]]
) -> set[str]:
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


# ---------------------------------------------------------------- nothing changed


def test_nothing_changed_nothing_built_nothing_written(site: Path) -> None:
    first = build(site)
    assert first.built > 0 and first.reused == []
    fingerprint, stamps, counters = tree_fingerprint(site / "dist"), inodes(site), versions(site)
    marker_bytes = (site / "dist" / ".nomad-build.json").read_bytes()

    again = build(site)

    assert again.built == 0  # no writer ran
    assert set(again.reused) == {a.path for a in first.artifacts}
    assert tree_fingerprint(site / "dist") == fingerprint  # byte-identical, same modes
    assert inodes(site) == stamps  # not even rewritten: same inodes and mtimes
    assert versions(site) == counters  # no version bumped
    assert (site / "dist" / ".nomad-build.json").read_bytes() == marker_bytes
    assert [a.data for a in again.artifacts] == [a.data for a in first.artifacts]


# ---------------------------------------------------------------- one node changed


def test_one_node_changed_rebuilds_only_it_and_the_indexes(site: Path) -> None:
    first = build(site)
    before, stamps, counters = marker(site), inodes(site), versions(site)

    change_node(site, CLIENT, 'node_class = "moved"')
    again = build(site)

    after = marker(site)
    changed = changed_paths(before, after)
    owners = {after.get(p, before.get(p, {})).get("node") for p in changed}
    assert owners <= {CLIENT, None}, owners  # its own artifacts and shared indexes only
    assert any(after[p].get("node") == CLIENT for p in changed if p in after)
    shared = {p for p in changed if (after.get(p) or before[p]).get("node") is None}
    assert shared, "the repository indexes list the new package"
    # the repository and installer indexes, and the build's manifest and signed checksums
    indexes = ("repo/", "openbsd-autoinstall/", "manifest.json", "SHA256SUMS")
    assert all(p.startswith(indexes) for p in shared), shared
    # its package moved one version; nobody else's did
    bumped = {n for n in counters if versions(site)[n] != counters[n]}
    assert bumped == {CLIENT}
    (fmt,) = versions(site)[CLIENT]
    assert versions(site)[CLIENT][fmt]["version"] == counters[CLIENT][fmt]["version"] + 1  # type: ignore[operator]
    # every other node's files were reused: same inode, same mtime
    now = inodes(site)
    for path, entry in after.items():
        if entry.get("node") not in (CLIENT, None) and path in stamps:
            assert now[path] == stamps[path], path
    # and few writer calls: the node's package (twice: current, then next version), its
    # autoinstall part, the OpenBSD index, both repositories
    assert 0 < again.built < first.built // 2


def test_version_moves_exactly_when_bytes_move(site: Path) -> None:
    build(site)
    counters = versions(site)
    change_node(site, CLIENT, 'node_class = "moved"')
    build(site)
    build(site)  # nothing new: no second bump
    assert versions(site)[CLIENT] != counters[CLIENT]
    moved = versions(site)
    build(site)
    assert versions(site) == moved


# ---------------------------------------------------------------- Consul packages


def consul_agent(site: Path, *lines: str) -> None:
    """The site's cluster file with [consul.agent] enabled (and these lines in it)."""
    text = mixed_text()
    assert text.count("\n[packages]") == 1
    table = "\n".join(["", "[consul.agent]", "enabled = true", *lines, "", "[packages]"])
    (site / "cluster.toml").write_text(text.replace("\n[packages]", table, 1))


def test_a_changed_consul_tree_moves_only_the_consul_packages(site: Path) -> None:
    consul_agent(site)
    first = build(site)
    counters = versions(site)
    consul_formats = {"consul-deb", "consul-openbsd"}
    assert all(consul_formats & set(counters[n]) for n in (*SERVERS, *CLIENTS))
    assert build(site).built == 0  # nothing changed: everything reused
    before = marker(site)

    consul_agent(site, "dns = true")  # only the Consul agent's tree sees it
    again = build(site)

    moved = versions(site)
    for node, formats in counters.items():
        for fmt, entry in formats.items():
            step = 1 if fmt in consul_formats else 0
            assert moved[node][fmt]["version"] == entry["version"] + step, (node, fmt)  # type: ignore[operator]
    after = marker(site)
    changed = {p for p in changed_paths(before, after) if p in after}
    consul_paths = {
        p for p in changed if p.startswith(("debian/consul-config-", "openbsd/consul-config-"))
    }
    assert {after[p]["node"] for p in consul_paths} == {*SERVERS, *CLIENTS}
    others = changed - consul_paths
    # what carries or lists them moved with them: every node's seed (images/<node>/,
    # its OpenBSD site set), the repository and installer indexes, the build's manifest
    carriers = ("images/", "openbsd-autoinstall/", "repo/", "manifest.json", "SHA256SUMS")
    assert all(p.startswith(carriers) for p in others), others
    seeds = ("images/", "openbsd-autoinstall/site78-")
    assert {after[p]["node"] for p in others if p.startswith(seeds)} == {*SERVERS, *CLIENTS}
    assert any(p.startswith("repo/debian/dists/") for p in others), others
    assert "repo/openbsd/index.html" in others and "openbsd-autoinstall/SHA256" in others
    # each moved Consul package says why: its Consul tree's files (digests per package)
    reasons = {c.path: c.reasons for c in again.report.changes if c.status == "changed"}
    for path in consul_paths:
        assert reasons.get(path), path
        assert after[path]["files"], path
        assert any("/etc/consul" in r for r in reasons[path]), reasons[path]
    nomad = [p for p, e in after.items() if isinstance(e.get("package"), dict)]
    assert all(after[p] == before[p] for p in nomad if "/consul-config-" not in p)

    third = build(site)  # nothing new: everything reused, no second bump
    assert third.built == 0
    assert set(third.reused) == {a.path for a in again.artifacts}
    assert versions(site) == moved
    assert len(first.artifacts) == len(again.artifacts)


# ---------------------------------------------------------------- templates


@pytest.fixture
def data_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The data lookup pointed at a copy of recipes/, packaging/ and images/."""
    root = tmp_path / "data"
    for name in ("recipes", "packaging", "images"):
        shutil.copytree(data.data_root() / name, root / name)
    caches: list[Callable[..., object]] = [
        render._env,
        render._toml,
        seed._env,
        deb._env,
        openbsd_pkg._env,
        incremental.tool_digest,
    ]

    def clear() -> None:
        for fn in caches:
            fn.cache_clear()  # type: ignore[attr-defined]

    clear()
    monkeypatch.setattr(data, "data_root", lambda: root)
    yield root
    clear()
    monkeypatch.undo()
    clear()


def test_template_change_rebuilds_every_node_of_that_role(site: Path, data_copy: Path) -> None:
    build(site)
    before, counters = marker(site), versions(site)

    recipe = data_copy / "recipes" / "client" / "recipe.toml"
    text = recipe.read_text()
    assert 'source = "ca_cert"\nkind = "config"\nmode = "0644"' in text
    recipe.write_text(
        text.replace(
            'source = "ca_cert"\nkind = "config"\nmode = "0644"',
            'source = "ca_cert"\nkind = "config"\nmode = "0444"',
        )
    )
    incremental.tool_digest.cache_clear()
    render._toml.cache_clear()
    again = build(site)

    after = marker(site)
    changed = changed_paths(before, after)
    owners = {(after.get(p) or before[p]).get("node") for p in changed}
    assert set(CLIENTS) <= owners  # every client's artifacts changed
    assert not owners & set(SERVERS)  # no server's did
    now = versions(site)
    assert {n for n in now if now[n] != counters[n]} == set(CLIENTS)
    assert again.built > 0


# ---------------------------------------------------------------- reuse is verified


@pytest.mark.parametrize("suffix", [".iso", ".deb", ".tgz"])
@pytest.mark.parametrize("threads", [False, True], ids=["one-thread", "two-threads"])
def test_a_damaged_file_in_dist_is_rebuilt_not_reused(
    site: Path, monkeypatch: pytest.MonkeyPatch, suffix: str, threads: bool
) -> None:
    """Whether reuse checks read a file in this thread or verify it ahead in two
    (prefetch: large outputs), a file whose bytes differ from its sha256 is rebuilt."""
    if threads:
        monkeypatch.setattr(incremental, "_PARALLEL_FILE", 0)
        monkeypatch.setattr(incremental, "_PARALLEL_BYTES", 0)
    build(site)
    fingerprint = tree_fingerprint(site / "dist")
    entry = next(p for p, e in marker(site).items() if p.endswith(suffix) and e.get("node"))
    path = site / "dist" / entry
    data_ = bytearray(path.read_bytes())
    data_[len(data_) // 2] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data_))

    again = build(site)

    assert again.built > 0 and entry not in again.reused
    assert tree_fingerprint(site / "dist") == fingerprint  # restored exactly


def test_a_repository_copy_is_one_file_with_its_package_and_verified_on_its_own(
    site: Path,
) -> None:
    build(site)
    listed = marker(site)
    for prefix, suffix, package_dir in (
        ("repo/debian/pool/", ".deb", "debian/"),
        ("repo/openbsd/", ".tgz", "openbsd/"),
    ):
        pool = next(p for p in listed if p.startswith(prefix) and p.endswith(suffix))
        package = package_dir + pool.rsplit("/", 1)[1]
        assert (site / "dist" / pool).stat().st_ino == (site / "dist" / package).stat().st_ino
    fingerprint = tree_fingerprint(site / "dist")
    # a file of its own with other bytes in the copy's place: checked on its own, rebuilt
    path = site / "dist" / pool
    data_ = bytearray(path.read_bytes())
    data_[len(data_) // 2] ^= 0xFF
    path.unlink()
    path.write_bytes(bytes(data_))
    path.chmod(0o600)

    again = build(site)

    assert pool not in again.reused and package in again.reused
    assert tree_fingerprint(site / "dist") == fingerprint
    assert (site / "dist" / pool).stat().st_ino == (site / "dist" / package).stat().st_ino


def test_a_group_read_granted_to_a_web_server_is_kept_a_bit_for_others_is_not(
    site: Path,
) -> None:
    """README (Publishing the repositories): `chmod -R g+rX dist/repo` lets the web
    server read the 0600 packages. The next build keeps that (and is still a no-op);
    a secret-bearing file readable by others is written again, 0600."""
    build(site)
    pool = next(p for p in marker(site) if p.startswith("repo/debian/pool/"))
    path = site / "dist" / pool
    path.chmod(0o640)  # the package under debian/ is the same file

    again = build(site)

    assert again.built == 0 and pool in again.reused
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    path.chmod(0o604)

    third = build(site)

    assert pool not in third.reused
    package = site / "dist" / "debian" / pool.rsplit("/", 1)[1]
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(package.stat().st_mode) == 0o600


# ---------------------------------------------------------------- what the plan verified


def plan_build(site: Path) -> pipeline.Plan:
    return pipeline.plan(pipeline.Request("build", site / "cluster.toml", out_dir=site / "dist"))


def test_the_writing_run_takes_the_pairs_its_plan_verified(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(site)
    p = plan_build(site)
    assert p.verified is not None
    assert len(p.verified.pairs) == len(p.cluster.nodes)  # every node's pair, found sound
    checked: list[str] = []
    full_check = State._node_cert_uncached

    def counted(self: State, files: CertFiles, *args: Any) -> tuple[bytes, bytes] | None:
        checked.append(files.cert)
        return full_check(self, files, *args)

    monkeypatch.setattr(State, "_node_cert_uncached", counted)
    result = pipeline.execute(p)
    assert checked == [] and result.built == 0


def test_a_pair_changed_after_the_plan_is_checked_again_and_refused(site: Path) -> None:
    build(site)
    p = plan_build(site)
    cert = site / "state" / "nodes" / CLIENT / "cert.pem"
    pem = cert.read_bytes()
    cert.write_bytes(pem.replace(b"\n", b"\r\n", 1))  # other bytes, same certificate
    state_before, dist_before = tree_fingerprint(site / "state"), tree_fingerprint(site / "dist")

    with pytest.raises(UserError, match=re.escape(f"{cert}: changed since nomad-build wrote it")):
        pipeline.execute(p)
    assert tree_fingerprint(site / "state") == state_before
    assert tree_fingerprint(site / "dist") == dist_before


def test_a_store_written_between_plan_and_execute_is_verified_again(site: Path) -> None:
    """Another run renews a node's pair after this run planned: the ledger changed, so
    nothing the plan verified is taken; the build carries the renewed pair."""
    build(site)
    p = plan_build(site)
    old_cert = (site / "state" / "nodes" / CLIENT / "cert.pem").read_bytes()
    lifecycle.renew(site / "cluster.toml", None, nodes=[CLIENT], rekey=True)
    new_cert = (site / "state" / "nodes" / CLIENT / "cert.pem").read_bytes()
    assert new_cert != old_cert

    result = pipeline.execute(p)

    package = next(a for a in result.artifacts if a.node == CLIENT and a.path.endswith(".tgz"))
    assert new_cert in archive_files(package.data).values()
    assert old_cert not in archive_files(package.data).values()


def test_facts_the_plan_learnt_are_recorded_by_the_writing_run(site: Path) -> None:
    """A store whose ledger has no facts (made before they were kept): the plan verifies
    each pair in full and learns them; the writing run, which takes the plan's word for
    the pairs, still records what it learnt, so the next run need not verify again."""
    build(site)
    path = site / "state" / "ledger.json"
    ledger = Ledger.load(site / "state")
    ledger.entries = {rel: replace(e, facts=None) for rel, e in ledger.entries.items()}
    path.write_bytes(ledger.dump())

    # a fresh process, as an operator runs it (this one remembers the certificates)
    again = nomad_build(site, "build", "-c", "cluster.toml", "--json")

    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)["summary"]
    assert summary["new"] == summary["changed"] == 0  # a no-op
    files = json.loads(path.read_bytes())["files"]
    certs = {rel: e.get("facts") for rel, e in files.items() if rel.endswith("/cert.pem")}
    assert len(certs) == 6
    assert all(f and {"cert", "key", "signer"} <= set(f) for f in certs.values()), certs


def archive_files(tgz: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def test_a_foreign_file_in_dist_is_removed(site: Path) -> None:
    build(site)
    fingerprint = tree_fingerprint(site / "dist")
    (site / "dist" / "stray.txt").write_text("not ours\n")
    build(site)
    assert tree_fingerprint(site / "dist") == fingerprint


def test_a_marker_without_inputs_means_a_full_rebuild_with_the_same_bytes(site: Path) -> None:
    """A marker written before input digests were recorded (or by `package`/`image`,
    which do not record them): nothing is reused, every byte comes out the same."""
    build(site)
    fingerprint, counters = tree_fingerprint(site / "dist"), versions(site)
    path = site / "dist" / ".nomad-build.json"
    body = json.loads(path.read_bytes())
    del body[incremental.INPUTS_KEY]
    path.write_text(json.dumps(body, indent=1) + "\n")

    again = build(site)

    assert again.reused == [] and again.built > 0
    assert tree_fingerprint(site / "dist") == fingerprint
    assert versions(site) == counters


# ---------------------------------------------------------------- worker processes


def test_forked_workers_build_the_same_bytes(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process pool (used from a few dozen nodes on) changes no byte, and its
    workers never keep the state's run lock."""
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "cluster.toml").write_text(mixed_text())
    build(site)
    shutil.copytree(site / "state", twin / "state")
    monkeypatch.setattr(pipeline, "_FORK_MIN", 2)
    monkeypatch.setattr(pipeline, "_spare_cores", lambda: 2)  # however busy the machine
    forked = 0
    original_pool = multiprocessing.get_context

    def spy(method: str) -> object:
        nonlocal forked
        forked += 1
        return original_pool(method)

    monkeypatch.setattr(multiprocessing, "get_context", spy)  # what the pipeline calls
    build(twin)
    assert forked > 0
    ours, theirs = tree_fingerprint(twin / "dist"), tree_fingerprint(site / "dist")
    # the marker's input digests name the cluster file's path, which differs
    del ours[".nomad-build.json"], theirs[".nomad-build.json"]
    assert ours == theirs
    assert marker(twin) == marker(site)
    # the lock is free again: a second run can take it
    assert build(twin).built == 0


# ---------------------------------------------------------------- the archive helper


def _tarfile_ustar(entries: list[TarEntry]) -> bytes:
    """What builder.archive.ustar wrote before it wrote headers itself."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.mode, info.mtime = e.mode, e.mtime
            info.uid, info.gid = e.uid, e.gid
            info.uname, info.gname = e.uname, e.gname
            if e.type == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif e.type == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = e.linkname
                tar.addfile(info)
            else:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
    return buf.getvalue()


_names = st.one_of(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=120),
    st.text(min_size=1, max_size=40).filter(lambda s: "\0" not in s),
)
_entries = st.builds(
    TarEntry,
    name=_names,
    data=st.binary(max_size=1100),
    mode=st.sampled_from([0o644, 0o755, 0o600, 0o4755, 0o100644]),
    mtime=st.sampled_from([0, 1_750_000_000, 8**11 - 1, 8**11]),
    uid=st.sampled_from([0, 819, 8**7 - 1, 8**7]),
    gid=st.sampled_from([0, 5, 8**7]),
    uname=st.sampled_from(["root", "_nomad", "x" * 32, "x" * 33, "ü"]),
    gname=st.sampled_from(["wheel", "root"]),
    type=st.sampled_from(["file", "dir", "symlink"]),
    linkname=_names,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_entries, max_size=5))
def test_ustar_writes_the_bytes_tarfile_writes(entries: list[TarEntry]) -> None:
    entries = [
        e if e.type == "symlink" else TarEntry(**{**e.__dict__, "linkname": ""}) for e in entries
    ]
    entries = [e if e.type == "file" else TarEntry(**{**e.__dict__, "data": b""}) for e in entries]
    assert archive.ustar(entries) == _tarfile_ustar(entries)


def test_gzip_level_is_documented_and_readable() -> None:
    import gzip

    blob = bytes(random.Random(0).randrange(256) for _ in range(5000)) + b"nomad " * 500
    assert gzip.decompress(archive.gzip_bytes(blob)) == blob
    assert gzip.decompress(archive.gzip_bytes(blob, comment=b"c")) == blob
    assert archive.GZIP_LEVEL == 1
    assert "level 1" in (REPO / "bench" / "RESULTS.md").read_text()
