"""OpenBSD packages of the example cluster, checked by the strict reader and signify."""

from __future__ import annotations

import dataclasses
import grp
import gzip
import io
import os
import re
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from builder import signify
from builder.archive import TarEntry, gzip_bytes, ustar
from builder.errors import BuildError, UserError
from builder.openbsd_names import split_package_name
from builder.render import render_node
from builder.state import State
from builder.writers import Artifact
from builder.writers.openbsd_pkg import (
    EXAMPLES_DIR,
    build_openbsd_pkg,
    elf_arch,
    package_name,
)
from builder.writers.pkg_repo import build_pkg_repo

from conftest import Rendered, bundle_table, render_all
from pkg_reader import (
    PkgError,
    compare_versions,
    http_listing,
    pkg_add_verify,
    read_gzip,
    read_package,
    read_ustar,
    signify_tool,
    split_name,
)

MTIME = 1_700_000_000
VERSION = 3
KEY = "bi-sbg-pkg"


@pytest.fixture(scope="module")
def keypair() -> tuple[bytes, bytes]:
    return signify.generate_keypair(comment_name=KEY)


@pytest.fixture(scope="module")
def built(rendered_openbsd: Rendered, keypair: tuple[bytes, bytes]) -> dict[str, Artifact]:
    assert rendered_openbsd.cluster.packages.signing_key_name == KEY
    return {
        name: build_openbsd_pkg(
            rendered_openbsd.node(name),
            tree,
            version=VERSION,
            mtime=MTIME,
            signing_key=keypair[0],
            key_name=KEY,
        )
        for name, tree in rendered_openbsd.trees.items()
    }


def _read(rendered: Rendered, name: str, art: Artifact, pub: bytes | None = None):
    return read_package(
        art.data,
        pub=pub,
        expect_stem=rendered.node(name).openbsd_stem,
        expect_version=str(VERSION),
    )


# ---------------------------------------------------------------- the packages


def test_every_node_package_passes_the_strict_reader(
    rendered_openbsd: Rendered, built: dict[str, Artifact], keypair: tuple[bytes, bytes]
) -> None:
    assert len(built) == 6
    for name, art in built.items():
        stem = rendered_openbsd.node(name).openbsd_stem
        assert art.path == f"openbsd/{stem}-{VERSION}.tgz"
        assert art.secret, "holds the node key"
        pkg = _read(rendered_openbsd, name, art, pub=keypair[1])
        assert pkg.name == f"{stem}-{VERSION}"
        assert [m.name for m in pkg.members[:3]] == ["+CONTENTS", "+DESC", "+DISPLAY"]
        assert pkg.signed_by is not None


def test_stem_maps_digits_and_survives_pkg_adds_split(rendered_openbsd: Rendered) -> None:
    node = rendered_openbsd.node("bi-core-sbg-1")
    assert node.openbsd_stem == "nomad-config-bi-core-sbg_1"
    for v in (1, 9, 10, 123):
        name = package_name(node, v)
        assert split_package_name(name) == (node.openbsd_stem, str(v))
        assert split_name(name) == (node.openbsd_stem, str(v), ())
    broken = dataclasses.replace(node, openbsd_stem="nomad-config-bi-core-sbg-1")
    with pytest.raises(BuildError, match="misread"):
        package_name(broken, 3)
    with pytest.raises(BuildError, match="positive"):
        package_name(node, 0)


def test_pkg_add_sees_each_next_version_as_newer() -> None:
    for n in range(1, 40):
        assert compare_versions(str(n + 1), str(n)) == 1
        assert compare_versions(str(n), str(n + 1)) == -1
    # the reader's comparison is pkg_add's, not string order
    assert compare_versions("10", "9") == 1
    assert compare_versions("1.10", "1.9") == 1
    assert compare_versions("1.0p1", "1.0") == 1
    assert compare_versions("1.0rc1", "1.0") == -1


def test_package_installs_exactly_the_node_tree(
    rendered_openbsd: Rendered, built: dict[str, Artifact]
) -> None:
    for name, art in built.items():
        tree = rendered_openbsd.trees[name]
        files, dirs = _read(rendered_openbsd, name, art).installed()
        for f in tree.files:
            got = files.pop(f.path)
            assert (got.data, got.owner, got.group, got.mode) == (
                f.content,
                f.owner,
                f.group,
                f.mode,
            ), f.path
            # the example copy is never more readable than the file itself
            if f.path.startswith("/etc/") and f.path != tree.service.unit_path:
                ex = files.pop(EXAMPLES_DIR + f.path)
                assert ex.data == f.content
                assert (ex.owner, ex.group) == (f.owner, f.group)
                assert ex.mode & ~f.mode == 0, f"{EXAMPLES_DIR}{f.path} {ex.mode:o}"
        assert files == {}, f"installed but not in the NodeTree: {sorted(files)}"
        for d in tree.dirs:
            got = dirs.pop(d.path)
            assert (got.owner, got.group, got.mode) == (d.owner, d.group, d.mode)
        # the rest: config directories @sample creates before copying into them
        assert sorted(dirs) == ["/etc/nomad", "/etc/ssl/nomad"]
        assert {(d.owner, d.group, d.mode) for d in dirs.values()} == {("root", "wheel", 0o755)}


def test_etc_files_are_samples_and_the_rc_script_an_rcscript(
    rendered_openbsd: Rendered, built: dict[str, Artifact]
) -> None:
    for name, art in built.items():
        tree = rendered_openbsd.trees[name]
        pkg = _read(rendered_openbsd, name, art)
        samples = {e.fullname: e for e in pkg.plist.of("sample")}
        etc = [f for f in tree.files if f.path.startswith("/etc/") and f.kind != "script"]
        assert sorted(samples) == sorted(f.path for f in etc)
        for f in etc:
            s = samples[f.path]
            assert s.name == f.path  # written absolute, as ${SYSCONFDIR}/... is
            assert s.copyfrom is not None
            assert s.copyfrom.fullname == EXAMPLES_DIR + f.path
        assert not [
            e for e in pkg.plist.files if e.fullname.startswith("/etc/") and e.keyword == "file"
        ], "nothing under /etc is overwritten"
        (rc,) = pkg.plist.of("rcscript")
        assert rc.name == "/etc/rc.d/nomad_agent" and rc.fullname == tree.service.unit_path
        lines = pkg.plist.lines
        i = lines.index("@rcscript /etc/rc.d/nomad_agent")
        # re-stated @cwd after it (older pkg_add moved the cwd to /etc/rc.d)
        assert "@cwd /" in lines[i:]


def test_secrets_are_annotated_on_example_and_sample(
    rendered_openbsd: Rendered, built: dict[str, Artifact]
) -> None:
    for name, art in built.items():
        tree = rendered_openbsd.trees[name]
        pkg = _read(rendered_openbsd, name, art)
        samples = {e.fullname: e for e in pkg.plist.of("sample")}
        assert tree.secrets
        for f in tree.secrets:
            s = samples[f.path]
            for el in (s, s.copyfrom):
                assert el is not None
                assert el.mode == f"{f.mode:o}"
                assert (el.group or "wheel") == f.group
                assert (el.owner or "root") == f.owner
            assert f.mode & 0o004 == 0


def test_service_account_dependency_and_metadata(
    rendered_openbsd: Rendered, built: dict[str, Artifact]
) -> None:
    for name, art in built.items():
        node = rendered_openbsd.node(name)
        pkg = _read(rendered_openbsd, name, art)
        pl = pkg.plist
        assert pl.unique["arch"] == "*"
        assert pl.depends == [("sysutils/nomad", "nomad->=1.7.0", "nomad-1.7.0")]
        assert pl.conflicts == []
        assert (pl.pkgpath, pl.ftp) == (f"nomad-build/{node.openbsd_stem}", "no")
        if node.is_server:
            assert pl.newgroups == {"_nomad": "819"}
            assert "@newuser _nomad:819:_nomad:daemon:Nomad Agent:/var/nomad:/sbin/nologin" in (
                pl.lines
            )
        else:
            assert pl.newgroups == {} and pl.newusers == {}
        desc = pkg.member("+DESC").data.decode()
        assert desc.splitlines()[0] == f"Nomad agent configuration for {name} ({node.role})"


def test_service_enabled_on_install_stopped_and_disabled_on_delete(
    rendered_openbsd: Rendered, built: dict[str, Artifact]
) -> None:
    for name, art in built.items():
        pkg = _read(rendered_openbsd, name, art)
        lines = pkg.plist.lines
        assert [x for x in pkg.plist.execs if "rcctl" in x[1]] == [
            ("unexec-delete", "rcctl stop nomad_agent >/dev/null 2>&1 || true"),
            ("unexec-delete", "rcctl disable nomad_agent"),
            ("exec-add", "rcctl enable nomad_agent"),
            ("exec-update", pkg.plist.execs[-2][1]),
        ]
        # pkg_add -u of a running agent: reload when only certificates/keys changed
        update = pkg.plist.execs[-2][1]
        assert 'if [ "$n" = "$o" ]; then rcctl reload nomad_agent; else rcctl restart' in update
        tls = [f.path for f in rendered_openbsd.trees[name].files if f.is_tls]
        assert tls and not any(p in update for p in tls)
        assert "/etc/nomad/nomad.hcl" in update
        rc = lines.index("@rcscript /etc/rc.d/nomad_agent")
        # pkg_delete runs the plist in order: stop/disable while the script exists;
        # pkg_add enables once it is installed. Neither runs on pkg_add -u.
        assert lines.index("@unexec-delete rcctl disable nomad_agent") < rc
        assert lines.index("@exec-add rcctl enable nomad_agent") > rc


def test_display_carries_the_firewall_instructions(
    rendered_openbsd: Rendered, built: dict[str, Artifact]
) -> None:
    for name, art in built.items():
        tree = rendered_openbsd.trees[name]
        pkg = _read(rendered_openbsd, name, art)
        display = " ".join(pkg.member("+DISPLAY").data.decode().split())
        assert tree.notes
        for note in tree.notes:
            assert " ".join(note.split()) in display
        assert "rcctl start nomad_agent" in display
        files, _ = pkg.installed()
        assert files["/etc/nomad/pf.anchor"].data == tree.file("/etc/nomad/pf.anchor").content


def test_ports_pristine_demo_config_is_replaced_on_first_install(
    rendered_openbsd: Rendered, built: dict[str, Artifact], tmp_path: Path
) -> None:
    """sysutils/nomad (installed first, as our dependency) @samples a demo
    /etc/nomad/nomad.hcl, which makes our @sample of that path a no-op; the
    @exec-add puts ours in place while the port's copy is untouched."""
    name = "bi-core-sbg-1"
    tree = rendered_openbsd.trees[name]
    pkg = _read(rendered_openbsd, name, built[name])
    lines = pkg.plist.lines
    (cmd,) = [c for k, c in pkg.plist.execs if k == "exec-add" and "cmp -s" in c]
    assert lines.index(f"@exec-add {cmd}") > lines.index("@sample /etc/nomad/nomad.hcl")
    assert lines.index(f"@exec-add {cmd}") > lines.index("@newgroup _nomad:819")
    ours = tree.file("/etc/nomad/nomad.hcl")
    demo = b'data_dir = "/tmp/nomad"\nserver {\n  enabled = true\n  bootstrap_expect = 1\n}\n'
    group = grp.getgrgid(os.getgid()).gr_name  # _nomad does not exist on this machine
    for case, before in (("pristine", demo), ("edited", demo + b"# mine\n"), ("absent", None)):
        root = tmp_path / case
        for path, data in (
            ("/usr/local/share/examples/nomad/nomad.hcl", demo),
            (EXAMPLES_DIR + "/etc/nomad/nomad.hcl", ours.content),
            ("/etc/nomad/nomad.hcl", before),
        ):
            if data is not None:
                (root / path[1:]).parent.mkdir(parents=True, exist_ok=True)
                (root / path[1:]).write_bytes(data)
        local = cmd.replace(" /etc/", f" {root}/etc/").replace(" /usr/", f" {root}/usr/")
        local = local.replace(" -g _nomad ", f" -g {group} ")
        r = subprocess.run(["sh", "-c", local], capture_output=True, check=False)
        assert r.returncode == 0, r.stderr  # pkg_add logs a failing @exec-add
        target = root / "etc/nomad/nomad.hcl"
        if case == "pristine":
            assert target.read_bytes() == ours.content
            assert stat.S_IMODE(target.stat().st_mode) == ours.mode
        elif case == "edited":
            assert target.read_bytes() == before
        else:
            assert not target.exists()  # here pkg_add's own @sample installed ours
    mksh = shutil.which("mksh")  # OpenBSD's sh is a ksh
    if mksh:
        assert subprocess.run([mksh, "-n", "-c", cmd], check=False).returncode == 0


# ---------------------------------------------------------------- signatures


def test_real_signify_verifies_every_package_and_refuses_a_changed_byte(
    built: dict[str, Artifact], keypair: tuple[bytes, bytes], tmp_path: Path
) -> None:
    pub = tmp_path / f"{KEY}.pub"
    pub.write_bytes(keypair[1])
    for art in built.values():
        pkg = tmp_path / Path(art.path).name
        pkg.write_bytes(art.data)
        r = signify_tool("-zV", "-t", "pkg", "-p", str(pub), "-x", str(pkg), "-m", "-")
        assert r.returncode == 0, r.stderr
        assert read_gzip(r.stdout).data == read_gzip(art.data).data
        bad = bytearray(art.data)
        bad[len(bad) // 2] ^= 0x20  # one byte of the compressed payload
        pkg.write_bytes(bytes(bad))
        r = signify_tool("-zV", "-t", "pkg", "-p", str(pub), "-x", str(pkg), "-m", "-")
        assert r.returncode != 0 and b"signature mismatch" in r.stderr


def test_pkg_adds_own_signature_check_accepts_the_packages(
    built: dict[str, Artifact], keypair: tuple[bytes, bytes], tmp_path: Path
) -> None:
    art = built["bi-core-sbg-1"]
    out = pkg_add_verify(art.data, keypair[1], KEY, tmp_path / "ns")
    if out is None:
        pytest.skip("no private mount namespace with overlayfs here")
    assert gzip.decompress(out) == gzip.decompress(art.data)
    info = signify.zverify(art.data, keypair[1])
    # pkg_add: @signer from key=.../<name>.sec, @digital-signature from date=
    assert info.key == f"/etc/signify/{KEY}.sec"
    assert info.date == "2023-11-14T22:13:20Z"


def test_unsigned_build(
    rendered_openbsd: Rendered, keypair: tuple[bytes, bytes], tmp_path: Path
) -> None:
    name = "bi-node-sbg-2"
    art = build_openbsd_pkg(
        rendered_openbsd.node(name),
        rendered_openbsd.trees[name],
        version=VERSION,
        mtime=MTIME,
        signing_key=None,
        key_name=KEY,
    )
    assert read_gzip(art.data).comment is None
    _read(rendered_openbsd, name, art)
    (tmp_path / "p.tgz").write_bytes(art.data)
    (tmp_path / "k.pub").write_bytes(keypair[1])
    r = signify_tool("-zV", "-p", str(tmp_path / "k.pub"), "-x", str(tmp_path / "p.tgz"), "-m", "-")
    assert r.returncode != 0 and b"unsigned" in r.stderr


# ---------------------------------------------------------------- determinism


def test_rebuilds_from_the_same_state_are_byte_identical(
    rendered_openbsd: Rendered, built: dict[str, Artifact], keypair: tuple[bytes, bytes]
) -> None:
    with State.open(rendered_openbsd.state_dir, create=True) as st:
        for node in rendered_openbsd.cluster.nodes:
            tree = render_node(rendered_openbsd.cluster, node, st)
            assert tree.digest() == rendered_openbsd.trees[node.name].digest()
            again = build_openbsd_pkg(
                node, tree, version=VERSION, mtime=MTIME, signing_key=keypair[0], key_name=KEY
            )
            assert again == built[node.name]


def test_content_changes_change_the_package(
    rendered_openbsd: Rendered, built: dict[str, Artifact], keypair: tuple[bytes, bytes]
) -> None:
    name = "bi-core-sbg-2"
    node, tree = rendered_openbsd.node(name), rendered_openbsd.trees[name]
    other = build_openbsd_pkg(
        node, tree, version=VERSION, mtime=MTIME + 1, signing_key=keypair[0], key_name=KEY
    )
    assert other.data != built[name].data
    assert _read(rendered_openbsd, name, other).plist.files[-1].ts == MTIME + 1


# ---------------------------------------------------------------- bundled binary


def _elf(machine: int, osabi: int, note: bool = False) -> bytes:
    """A minimal ELF64 little-endian executable header (and a section table if note)."""
    ident = b"\x7fELF" + bytes([2, 1, 1, osabi]) + bytes(8)
    header = bytearray(ident + (2).to_bytes(2, "little") + machine.to_bytes(2, "little"))
    header += bytes(64 - len(header))
    if not note:
        return bytes(header) + b"\0" * 64
    strtab = b"\0.note.openbsd.ident\0.shstrtab\0"
    strtab_off = 64
    shoff = strtab_off + 64
    header[40:48] = shoff.to_bytes(8, "little")
    header[58:60] = (64).to_bytes(2, "little")
    header[60:62] = (2).to_bytes(2, "little")
    header[62:64] = (1).to_bytes(2, "little")
    body = strtab.ljust(64, b"\0")
    sec0 = bytearray(64)
    sec0[0:4] = (1).to_bytes(4, "little")  # ".note.openbsd.ident"
    sec1 = bytearray(64)
    sec1[0:4] = (21).to_bytes(4, "little")  # ".shstrtab"
    sec1[24:32] = strtab_off.to_bytes(8, "little")
    return bytes(header) + body + bytes(sec0) + bytes(sec1)


def test_elf_arch_detection() -> None:
    assert elf_arch(_elf(62, 12)) == "amd64"
    assert elf_arch(_elf(183, 12)) == "aarch64"
    assert elf_arch(_elf(62, 0, note=True)) == "amd64"  # OpenBSD cc: ABI 0 + ident note
    with pytest.raises(UserError, match="not an OpenBSD executable"):
        elf_arch(_elf(62, 0))  # a Linux binary
    with pytest.raises(UserError, match="not an ELF"):
        elf_arch(b"#!/bin/sh\necho nomad\n")
    with pytest.raises(UserError, match="machine"):
        elf_arch(_elf(0x9026, 12))


def test_bundled_binary_replaces_the_port_dependency(
    tmp_path: Path, keypair: tuple[bytes, bytes]
) -> None:
    binary = _elf(62, 12) + b"fake nomad"
    # bundle paths are relative to the cluster file, which render_all writes here
    rendered = render_all(tmp_path, "openbsd", bundle_table(tmp_path, binary))
    name = "bi-node-sbg-1"
    node, tree = rendered.node(name), rendered.trees[name]
    art = build_openbsd_pkg(
        node, tree, version=VERSION, mtime=MTIME, signing_key=keypair[0], key_name=KEY
    )
    pkg = _read(rendered, name, art, pub=keypair[1])
    assert pkg.plist.unique["arch"] == "amd64"
    assert pkg.plist.depends == [] and pkg.plist.conflicts == ["nomad-*"]
    assert not [c for _, c in pkg.plist.execs if "cmp -s" in c], "no port, no demo config"
    files, _ = pkg.installed()
    nomad = files["/usr/local/bin/nomad"]
    assert (nomad.data, nomad.owner, nomad.group, nomad.mode) == (binary, "root", "bin", 0o755)
    assert "Nomad 1.9.3 binary for amd64" in pkg.member("+DESC").data.decode()


def test_tree_and_bundle_must_agree(
    rendered_openbsd: Rendered, keypair: tuple[bytes, bytes]
) -> None:
    name = "bi-node-sbg-1"
    node, tree = rendered_openbsd.node(name), rendered_openbsd.trees[name]
    odd = dataclasses.replace(
        tree,
        files=(
            *tree.files,
            dataclasses.replace(tree.files[0], path="/usr/local/bin/nomad", kind="binary"),
        ),
    )
    with pytest.raises(BuildError, match="no bundle"):
        build_openbsd_pkg(node, odd, version=1, mtime=0, signing_key=None, key_name=KEY)
    debian = dataclasses.replace(tree, os="debian")
    with pytest.raises(BuildError, match="OpenBSD NodeTree"):
        build_openbsd_pkg(node, debian, version=1, mtime=0, signing_key=None, key_name=KEY)


# ---------------------------------------------------------------- the package directory


def test_package_directory(
    built: dict[str, Artifact], keypair: tuple[bytes, bytes], tmp_path: Path
) -> None:
    arts = build_pkg_repo(list(built.values()), pub_key=keypair[1], key_name=KEY)
    by_path = {a.path: a for a in arts}
    names = sorted(Path(a.path).name[: -len(".tgz")] for a in built.values())
    assert sorted(by_path) == sorted(
        [f"repo/openbsd/{n}.tgz" for n in names]
        + ["repo/openbsd/index.html", "repo/openbsd/SHA256", f"repo/openbsd/{KEY}.pub"]
    )
    assert by_path[f"repo/openbsd/{KEY}.pub"].data == keypair[1]
    for n in names:
        assert by_path[f"repo/openbsd/{n}.tgz"].secret
    # every pkg_add generation's HTTP listing parser finds exactly the packages
    page = by_path["repo/openbsd/index.html"].data.decode()
    for found in http_listing(page):
        assert sorted(found) == names
    # SHA256 as pkg_sign -C writes it (sha256 -b), checked by signify -C
    repo = tmp_path / "repo"
    repo.mkdir()
    for a in arts:
        (repo / Path(a.path).name).write_bytes(a.data)
    lines = (repo / "SHA256").read_text().splitlines()
    assert lines == sorted(lines) and len(lines) == len(names)
    assert all(re.fullmatch(r"SHA256 \(\S+\.tgz\) = [A-Za-z0-9+/]{43}=", x) for x in lines)
    (repo / f"{KEY}.sec").write_bytes(keypair[0])
    r = signify_tool(
        "-S", "-e", "-s", f"{KEY}.sec", "-m", "SHA256", "-x", "SHA256.sig", cwd=str(repo)
    )
    assert r.returncode == 0, r.stderr
    r = signify_tool("-C", "-p", f"{KEY}.pub", "-x", "SHA256.sig", cwd=str(repo))
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().count(": OK") == len(names)
    # same input, same bytes
    assert build_pkg_repo(list(built.values()), pub_key=keypair[1], key_name=KEY) == arts


def test_package_directory_refusals(built: dict[str, Artifact]) -> None:
    art = next(iter(built.values()))
    unsigned = build_pkg_repo([art], pub_key=None, key_name=KEY)
    assert not [a for a in unsigned if a.path.endswith(".pub")]
    with pytest.raises(BuildError, match="two packages"):
        build_pkg_repo([art, art], pub_key=None, key_name=KEY)
    with pytest.raises(BuildError, match="not an OpenBSD package"):
        build_pkg_repo([Artifact("debian/x_1_all.deb", b"", False)], pub_key=None, key_name=KEY)


# ---------------------------------------------------------------- the reader catches violations


def _explode(data: bytes) -> tuple[list[str], list[TarEntry]]:
    members = read_ustar(read_gzip(data).data)
    lines = members[0].data.decode().splitlines()
    entries = [
        TarEntry(m.name, m.data, m.mode, m.mtime, m.uid, m.gid, m.uname, m.gname)
        for m in members[1:]
    ]
    return lines, entries


def _implode(lines: list[str], entries: list[TarEntry], contents_at: int = 0) -> bytes:
    contents = TarEntry(
        "+CONTENTS", ("\n".join(lines) + "\n").encode(), 0o444, 0, 0, 0, "root", "wheel"
    )
    entries = list(entries)
    entries.insert(contents_at, contents)
    return gzip_bytes(ustar(entries))


Mutation = Callable[[list[str], list[TarEntry]], tuple[list[str], list[TarEntry]]]


def _entry(entries: list[TarEntry], suffix: str) -> int:
    return next(i for i, e in enumerate(entries) if e.name.endswith(suffix))


def _change(entries: list[TarEntry], suffix: str, **kw: Any) -> list[TarEntry]:
    """Replace, in place, the fields kw of the entry ending in `suffix`."""
    i = _entry(entries, suffix)
    entries[i] = dataclasses.replace(entries[i], **kw)
    return entries


def _flip(data: bytes) -> bytes:
    return bytes([data[0] ^ 0x01]) + data[1:]  # same size, other content


def _swap(entries: list[TarEntry]) -> list[TarEntry]:
    i, j = _entry(entries, "nomad.hcl"), _entry(entries, "pf.anchor")
    entries[i], entries[j] = entries[j], entries[i]
    return entries


def _without_first(lines: list[str], prefix: str) -> list[str]:
    i = next(i for i, x in enumerate(lines) if x.startswith(prefix))
    return lines[:i] + lines[i + 1 :]


def _move_display_after_cwd(lines: list[str]) -> list[str]:
    i = lines.index("+DISPLAY")
    block, rest = lines[i : i + 3], lines[:i] + lines[i + 3 :]
    j = rest.index("@cwd /")
    return rest[: j + 1] + block + rest[j + 1 :]


def _absolute_member(lines: list[str], entries: list[TarEntry]):
    old = "usr/local/share/examples/nomad-config/etc/nomad/pf.anchor"
    lines = ["/" + old if x == old else x for x in lines]
    return lines, _change(entries, "pf.anchor", name="/" + old)


MUTATIONS: dict[str, tuple[Mutation, str]] = {
    "contents-not-first": (lambda ls, es: (ls, es), "first member"),
    "no-desc": (
        lambda ls, es: (
            [
                x
                for i, x in enumerate(ls)
                if i not in range(ls.index("+DESC"), ls.index("+DESC") + 3)
            ],
            [e for e in es if e.name != "+DESC"],
        ),
        r"\+DESC missing",
    ),
    "member-missing": (lambda ls, es: (ls, es[:-1]), "without an archive member"),
    "extra-member": (
        lambda ls, es: (
            ls,
            [*es, TarEntry("usr/local/share/stray", b"x", uname="root", gname="wheel")],
        ),
        "not in the packing list",
    ),
    "out-of-order": (lambda ls, es: (ls, _swap(es)), "differs from packing-list order"),
    "sha-mismatch": (
        lambda ls, es: (
            ls,
            _change(es, "pf.anchor", data=_flip(es[_entry(es, "pf.anchor")].data)),
        ),
        "@sha does not match",
    ),
    "size-mismatch": (
        lambda ls, es: (
            ls,
            _change(es, "pf.anchor", data=es[_entry(es, "pf.anchor")].data + b"\n"),
        ),
        "@size",
    ),
    "tar-mtime": (lambda ls, es: (ls, _change(es, "nomad-ca.pem", mtime=5)), "mtime 5"),
    "owner-without-@owner": (
        lambda ls, es: (ls, _change(es, "nomad-ca.pem", uname="_nomad")),
        "no @owner",
    ),
    "group-without-@group": (
        lambda ls, es: (ls, _change(es, "nomad-ca.pem", gname="staff")),
        "no @group",
    ),
    "weird-mode": (lambda ls, es: (ls, _change(es, "nomad-ca.pem", mode=0o600)), "weird mode 0600"),
    "group-writable": (lambda ls, es: (ls, _change(es, "nomad-ca.pem", mode=0o664)), "weird mode"),
    "annotation-disagrees": (
        lambda ls, es: (ls, _change(es, "-key.pem", mode=0o644)),
        "disagrees with @mode",
    ),
    "unknown-keyword": (
        lambda ls, es: ([*ls[:3], "@frobnicate x", *ls[3:]], es),
        "Unknown element",
    ),
    "obsolete-keyword": (lambda ls, es: ([*ls[:3], "@sysctl kern.x=1", *ls[3:]], es), "obsolete"),
    "misread-name": (
        lambda ls, es: (["@name nomad-config-bi-core-sbg-1-3", *ls[1:]], es),
        "flavors|stem",
    ),
    "missing-sha": (lambda ls, es: (_without_first(ls, "@sha"), es), "lacks @sha"),
    "missing-ts": (lambda ls, es: (_without_first(ls, "@ts"), es), "lacks @ts"),
    "not-reset": (  # the bare `@group` after the rc script
        lambda ls, es: (
            [x for i, x in enumerate(ls) if i != len(ls) - 1 - ls[::-1].index("@group")],
            es,
        ),
        "not reset",
    ),
    "unknown-owner": (
        lambda ls, es: ([("@owner nosuchuser" if x == "@group bin" else x) for x in ls], es),
        "no such user",
    ),
    "info-after-cwd": (lambda ls, es: (_move_display_after_cwd(ls), es), "after @cwd"),
    "sample-without-file": (
        lambda ls, es: (
            [*ls[: ls.index("@cwd /") + 1], "@sample /etc/x", *ls[ls.index("@cwd /") + 1 :]],
            es,
        ),
        "does not follow a plain file",
    ),
    "absolute-name": (_absolute_member, "Absolute name forbidden"),
    "bad-sha-encoding": (
        lambda ls, es: ([("@sha abc" if x.startswith("@sha") else x) for x in ls], es),
        "not base64",
    ),
}


@pytest.fixture(scope="module")
def good(built: dict[str, Artifact]) -> bytes:
    return built["bi-core-sbg-1"].data


def test_reader_accepts_the_unmutated_repack(good: bytes) -> None:
    lines, entries = _explode(good)
    read_package(_implode(lines, entries), expect_stem="nomad-config-bi-core-sbg_1")


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_reader_catches(good: bytes, case: str) -> None:
    mutate, message = MUTATIONS[case]
    lines, entries = mutate(*_explode(good))
    data = _implode(lines, entries, contents_at=1 if case == "contents-not-first" else 0)
    with pytest.raises(PkgError, match=message):
        read_package(data, expect_stem="nomad-config-bi-core-sbg_1")


def _tar_with(fmt: int, pax: dict[str, str] | None = None, dirs: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        info = tarfile.TarInfo("+CONTENTS")
        info.size = 1
        info.uname, info.gname = "root", "wheel"
        if pax:
            info.pax_headers = pax
        tar.addfile(info, io.BytesIO(b"x"))
        if dirs:
            d = tarfile.TarInfo("usr/local/share")
            d.type = tarfile.DIRTYPE
            d.uname, d.gname = "root", "wheel"
            tar.addfile(d)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("case", "raw", "message"),
    [
        ("gnu-header", lambda: _tar_with(tarfile.GNU_FORMAT), "GNU tar header"),
        ("pax-other-key", lambda: _tar_with(tarfile.PAX_FORMAT, {"comment": "hi"}), "pax key"),
        ("directory-member", lambda: _tar_with(tarfile.PAX_FORMAT, dirs=True), "directory"),
    ],
)
def test_reader_catches_tar_level_violations(
    case: str, raw: Callable[[], bytes], message: str
) -> None:
    with pytest.raises(PkgError, match=message):
        read_ustar(raw())


def test_reader_catches_gzip_and_checksum_violations(good: bytes) -> None:
    with pytest.raises(PkgError, match="not a gzip"):
        read_package(read_gzip(good).data)
    with pytest.raises(PkgError, match="after the first member"):
        read_package(good + gzip.compress(b"more", mtime=0))
    raw = bytearray(read_gzip(good).data)
    raw[0] ^= 0x01  # a letter of +CONTENTS' name: the header checksum no longer matches
    with pytest.raises(PkgError, match="checksum"):
        read_ustar(bytes(raw))
    with pytest.raises(PkgError, match="signature"):
        _, other_pub = signify.generate_keypair()
        read_package(good, pub=other_pub)
