"""Debian packages of the example cluster: read back with dpkg-deb, judged by lintian,
installed, upgraded, removed and purged for real in a bookworm chroot with a
stand-in for HashiCorp's nomad package (tests/fake_nomad)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import select
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder import pipeline
from builder.errors import BuildError, UserError
from builder.model import Node
from builder.nodetree import NodeTree
from builder.writers import Artifact
from builder.writers.deb import DIVERTED, build_deb, deb_arch, deb_version, elf_facts

from conftest import (
    REPO,
    Rendered,
    bundle_table,
    example_text,
    nomad_build,
    render_all,
    write_cluster,
)
from debian_chroot import (
    PATH,
    chroot,
    copy_in,
    deny_service_starts,
    run_in,
    service_actions,
)
from fake_nomad import build_fake_nomad_deb, parse_standin_line

MTIME = 1_700_000_000
SERVER = "bi-core-sbg-1"
CLIENT = "bi-node-sbg-1"
HASHICORP_DEFAULT = (REPO / "tests/fake_nomad/nomad.hcl").read_bytes()
UNIT = "nomad.service"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    return render_all(tmp_path_factory.mktemp("deb"), "debian")


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """Every node with a bundled binary: the stand-in agent itself, checked by SHA256SUMS."""
    directory = tmp_path_factory.mktemp("bundled")
    binary = (REPO / "tests/fake_nomad/nomad").read_bytes()
    return render_all(directory, "debian", append=bundle_table(directory, binary))


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("debs")


def write(out: Path, artifact: Artifact) -> Path:
    path = out / Path(artifact.path).name
    path.write_bytes(artifact.data)
    return path


@pytest.fixture(scope="module")
def debs(rendered: Rendered, out: Path) -> dict[str, Path]:
    return {
        name: write(out, build_deb(rendered.node(name), tree, version=1, mtime=MTIME))
        for name, tree in rendered.trees.items()
    }


@pytest.fixture(scope="module")
def bundled_debs(bundled: Rendered, out: Path) -> dict[str, Path]:
    d = out / "bundled"
    d.mkdir()
    return {
        name: write(d, build_deb(bundled.node(name), bundled.trees[name], version=1, mtime=MTIME))
        for name in (SERVER, CLIENT)
    }


@pytest.fixture(scope="module")
def fake_nomad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_nomad_deb(tmp_path_factory.mktemp("fake-nomad"))


# ---------------------------------------------------------------- reading packages


def dpkg_deb(*args: str | Path) -> str:
    return subprocess.run(
        ["dpkg-deb", *map(str, args)], capture_output=True, text=True, check=True
    ).stdout


def fields(deb: Path) -> dict[str, str]:
    """The control file as dpkg-deb prints it: {field: value} (continuation lines joined)."""
    text = dpkg_deb("-f", deb)
    result: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if line.startswith(" "):
            result[key] += "\n" + line
        else:
            key, _, value = line.partition(": ")
            result[key] = value
    return result


@dataclass(frozen=True)
class Member:
    perms: str
    owner: str
    size: int
    name: str  # "/etc/nomad.d/nomad.hcl" (dirs without the trailing slash)


def contents(deb: Path) -> dict[str, Member]:
    """dpkg-deb --contents, parsed."""
    members: dict[str, Member] = {}
    for line in dpkg_deb("--contents", deb).splitlines():
        perms, owner, size, _date, _time, name = line.split(maxsplit=5)
        path = "/" + name.removeprefix("./").rstrip("/")
        members[path] = Member(perms, owner, int(size), path)
    return members


def data_tar(deb: Path) -> tarfile.TarFile:
    raw = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True)
    return tarfile.open(fileobj=io.BytesIO(raw.stdout))


def control_member(deb: Path, name: str) -> str:
    return dpkg_deb("--info", deb, name)


def perms(mode: int, kind: str = "-") -> str:
    bits = "".join(ch if mode & (1 << (8 - i)) else "-" for i, ch in enumerate("rwxrwxrwx"))
    return kind + bits


def lintian(deb: Path) -> list[str]:
    proc = subprocess.run(
        ["lintian", "--allow-root", "--no-cfg", "--tag-display-limit", "0", str(deb)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode in (0, 1, 2), proc.stderr
    return proc.stdout.splitlines()


# ---------------------------------------------------------------- metadata


@pytest.mark.parametrize("name", [SERVER, CLIENT])
def test_control_fields(rendered: Rendered, debs: dict[str, Path], name: str) -> None:
    node = rendered.node(name)
    deb = debs[name]
    assert deb.name == f"nomad-config-{name}_1_all.deb"
    f = fields(deb)
    assert f["Package"] == node.deb_package == f"nomad-config-{name}"
    assert f["Version"] == "1"
    assert f["Architecture"] == "all"
    assert f["Maintainer"] == "BI operations <ops@intra.terror.ninja>"
    # HashiCorp's package configured before our preinst diverts its conffile
    assert f["Pre-Depends"] == "nomad (>= 1.7.0)"
    assert f["Depends"] == "adduser"
    assert f["Provides"] == f["Conflicts"] == f["Replaces"] == "nomad-config"
    assert (f["Section"], f["Priority"]) == ("admin", "optional")
    role = "server" if node.is_server else "client"
    synopsis, *long = f["Description"].split("\n")
    assert synopsis == f"Nomad {role} configuration for {name}"
    assert len(long) >= 3 and all(ln.startswith(" ") and len(ln) <= 80 for ln in long)
    assert f"{name}.intra.terror.ninja" in f["Description"]
    # Installed-Size as dpkg counts it: KiB per file (rounded up) + 1 per directory
    members = contents(deb).values()
    expected = sum((m.size + 1023) // 1024 for m in members if m.perms[0] == "-")
    expected += sum(1 for m in members if m.perms[0] == "d" and m.name != "/")
    assert int(f["Installed-Size"]) == expected


def test_bundled_control_fields(bundled: Rendered, bundled_debs: dict[str, Path]) -> None:
    f = fields(bundled_debs[SERVER])
    assert "Pre-Depends" not in f
    assert f["Depends"] == "adduser"
    assert f["Conflicts"] == f["Replaces"] == "nomad-config, nomad"
    assert f["Provides"] == "nomad-config"
    assert f["Architecture"] == "all"  # the stand-in binary is a script
    assert "Nomad 1.9.3 binary" in " ".join(f["Description"].split())
    members = contents(bundled_debs[SERVER])
    assert members["/usr/bin/nomad"].perms == "-rwxr-xr-x"
    assert "/usr/lib/systemd/system/nomad.service" in members
    assert not any(p.startswith("/usr/lib/systemd/system/nomad.service.d") for p in members)
    assert "triggers" not in dpkg_deb("--info", bundled_debs[SERVER])


def test_data_tar_layout(rendered: Rendered, debs: dict[str, Path]) -> None:
    for name, tree in rendered.trees.items():
        deb = debs[name]
        members = contents(deb)
        pkg = rendered.node(name).deb_package
        generated = {
            f"/usr/share/doc/{pkg}/copyright",
            f"/usr/share/doc/{pkg}/changelog.gz",
            f"/usr/share/lintian/overrides/{pkg}",
        }
        files = {p for p, m in members.items() if m.perms[0] == "-"}
        assert files == {f.path for f in tree.files} | generated
        for f in tree.files:
            m = members[f.path]
            assert m.owner == "root/root", f.path
            assert m.size == len(f.content)
            # secrets travel root-only; postinst hands them over
            assert m.perms == perms(0o600 if f.is_secret else f.mode), f.path
        dirs = {p for p, m in members.items() if m.perms[0] == "d"}
        parents = {str(q) for p in files for q in Path(p).parents}
        assert dirs == parents  # every parent, "/" included, and nothing else
        assert all(members[d].perms == "drwxr-xr-x" for d in dirs)
        assert not any(p.startswith("/opt") for p in members)  # the data dir: postinst

        with data_tar(deb) as tar:
            infos = tar.getmembers()
        names = [i.name for i in infos]
        assert names[0] == "."  # "./" (tarfile drops the slash when reading)
        assert names == sorted(names, key=lambda n: Path(n).parts)
        assert {(i.uid, i.gid, i.uname, i.gname) for i in infos} == {(0, 0, "root", "root")}
        assert {i.mtime for i in infos} == {MTIME}
        assert tar.format == tarfile.PAX_FORMAT or all(i.type in b"05" for i in infos)


@pytest.mark.parametrize("name", [SERVER, CLIENT])
def test_conffiles_and_md5sums(rendered: Rendered, debs: dict[str, Path], name: str) -> None:
    tree = rendered.trees[name]
    deb = debs[name]
    etc = sorted(f.path for f in tree.files if f.path.startswith("/etc/"))
    assert len(etc) >= 4
    assert control_member(deb, "conffiles").splitlines() == etc
    with data_tar(deb) as tar:
        data = {
            "/" + i.name.removeprefix("./"): tar.extractfile(i).read()  # type: ignore[union-attr]
            for i in tar.getmembers()
            if i.isfile()
        }
    listed = {}
    for line in control_member(deb, "md5sums").splitlines():
        digest, path = line.split("  ", 1)
        listed["/" + path] = digest
    assert set(listed) == set(data) - set(etc)  # conffiles excluded, as dh_md5sums does
    for path, digest in listed.items():
        assert hashlib.md5(data[path]).hexdigest() == digest


def test_changelog_and_copyright(rendered: Rendered, debs: dict[str, Path]) -> None:
    deb = debs[SERVER]
    pkg = rendered.node(SERVER).deb_package
    with data_tar(deb) as tar:
        raw = tar.extractfile(f"./usr/share/doc/{pkg}/changelog.gz").read()  # type: ignore[union-attr]
        copyright_text = tar.extractfile(f"./usr/share/doc/{pkg}/copyright").read().decode()  # type: ignore[union-attr]
    assert raw[3] == 0 and raw[4:8] == b"\0\0\0\0"  # no name, no timestamp in the gzip header
    text = gzip.decompress(raw).decode()
    first = text.splitlines()[0]
    assert first == f"{pkg} (1) unstable; urgency=medium"
    assert "Tue, 14 Nov 2023 22:13:20 +0000" in text  # MTIME, not the clock
    # dpkg-parsechangelog reads it as Debian changelog
    parsed = subprocess.run(
        ["dpkg-parsechangelog", "-l-", "-SVersion"], input=text, capture_output=True, text=True
    )
    assert (parsed.returncode, parsed.stdout.strip()) == (0, "1")
    assert copyright_text.startswith("Format: https://www.debian.org/doc/packaging-manuals/")
    assert "/usr/share/common-licenses/MPL-2.0" in copyright_text


def test_maintainer_scripts(rendered: Rendered, debs: dict[str, Path], tmp_path: Path) -> None:
    for name, deb in debs.items():
        node = rendered.node(name)
        ctrl = tmp_path / name
        subprocess.run(["dpkg-deb", "--control", str(deb), str(ctrl)], check=True)
        for script in ("preinst", "postinst", "prerm", "postrm"):
            path = ctrl / script
            assert path.stat().st_mode & 0o777 == 0o755
            text = path.read_text()
            assert text.startswith("#!/bin/sh\n")
            assert "\nset -e\n" in text
            for shell in ("dash", "bash"):
                r = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True)
                assert r.returncode == 0, (shell, script, r.stderr)
        preinst = (ctrl / "preinst").read_text()
        assert (
            f"dpkg-divert --package {node.deb_package} --rename --quiet --divert {DIVERTED} "
            "--add /etc/nomad.d/nomad.hcl"
        ) in preinst
        postinst = (ctrl / "postinst").read_text()
        if node.is_server:
            assert (
                "adduser --system --quiet --group --home /opt/nomad/data --no-create-home nomad"
                in postinst
            )
        else:
            assert "adduser" not in postinst  # clients run as root
        assert 'deb-systemd-invoke "$_action" nomad.service' in postinst
        assert (ctrl / "triggers").read_text().splitlines()[-1] == "interest-noawait /usr/bin/nomad"


# ---------------------------------------------------------------- lintian


def problems(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.startswith(("E:", "W:"))]


def test_lintian_clean(
    debs: dict[str, Path], bundled_debs: dict[str, Path], rendered: Rendered
) -> None:
    for deb in (debs[SERVER], debs[CLIENT], bundled_debs[SERVER], bundled_debs[CLIENT]):
        assert problems(lintian(deb)) == [], deb.name
    # every override carries a one-line justification right above it
    with data_tar(debs[SERVER]) as tar:
        pkg = rendered.node(SERVER).deb_package
        text = tar.extractfile(f"./usr/share/lintian/overrides/{pkg}").read().decode()  # type: ignore[union-attr]
    lines = text.splitlines()
    assert lines, "the server package needs overrides (0600 key and config)"
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            assert line.startswith(f"{pkg}: ")
            assert i > 0 and lines[i - 1].startswith("# ") and len(lines[i - 1]) > 20


def test_lintian_sees_what_the_overrides_hide(debs: dict[str, Path], tmp_path: Path) -> None:
    """The check can fail: without its overrides the server package draws warnings."""
    tree = tmp_path / "unpacked"
    subprocess.run(["dpkg-deb", "-R", str(debs[SERVER]), str(tree)], check=True)
    for p in (tree / "usr/share/lintian").rglob("*"):
        if p.is_file():
            p.unlink()
    shutil.rmtree(tree / "usr/share/lintian")
    stripped = tmp_path / "stripped.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-b", str(tree), str(stripped)],
        check=True,
        capture_output=True,
    )
    tags = {ln.split()[2] for ln in problems(lintian(stripped))}
    assert "non-standard-file-perm" in tags


# ---------------------------------------------------------------- determinism, secrets


def test_byte_identical_and_mtime(rendered: Rendered) -> None:
    node, tree = rendered.node(SERVER), rendered.trees[SERVER]
    a = build_deb(node, tree, version=4, mtime=MTIME)
    b = build_deb(node, tree, version=4, mtime=MTIME)
    assert a == b
    c = build_deb(node, tree, version=4, mtime=MTIME + 86400)
    assert c.data != a.data and c.path == a.path
    assert a.secret is True


def test_cli_package_honours_source_date_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_cluster(tmp_path, "debian")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234567890")
    runs = []
    for i in range(2):
        out = tmp_path / f"dist{i}"
        args = ["-c", "cluster.toml", "--state", "state", "--out", str(out), "--node", SERVER]
        proc = nomad_build(tmp_path, "package", *args)
        assert proc.returncode == 0, proc.stderr
        (deb,) = (out / "debian").iterdir()
        runs.append(deb)
    assert runs[0].name == f"nomad-config-{SERVER}_1_all.deb"
    assert runs[0].read_bytes() == runs[1].read_bytes()
    assert runs[0].stat().st_mode & 0o777 == 0o600  # it holds keys
    with data_tar(runs[0]) as tar:
        assert {i.mtime for i in tar.getmembers()} == {1234567890}
    ar_header = runs[0].read_bytes()[8:68]
    assert ar_header[16:28].strip() == b"1234567890"


def all_file_bytes(deb: Path) -> bytes:
    with data_tar(deb) as tar:
        return b"\n".join(
            tar.extractfile(i).read()  # type: ignore[union-attr]
            for i in tar.getmembers()
            if i.isfile()
        )


def pem_body(pem: bytes) -> bytes:
    return b"".join(ln for ln in pem.splitlines() if ln and not ln.startswith(b"-----"))


def test_secrets_where_they_belong(rendered: Rendered, debs: dict[str, Path]) -> None:
    state = rendered.state_dir
    gossip = (state / "gossip.key").read_bytes().strip()
    ca_key = pem_body((state / "ca/ca.key").read_bytes())
    assert len(gossip) == 44 and len(ca_key) > 40
    for name, deb in debs.items():
        blob = all_file_bytes(deb).replace(b"\n", b"")  # PEM bodies as one line
        assert ca_key not in blob, f"CA key in {deb.name}"
        own_key = pem_body((state / "nodes" / name / "key.pem").read_bytes())
        assert own_key in blob
        for other in rendered.trees:
            if other != name:
                assert pem_body((state / "nodes" / other / "key.pem").read_bytes()) not in blob
        if rendered.node(name).is_server:
            assert gossip in blob
        else:
            assert gossip not in blob, f"gossip key in client package {deb.name}"


# ---------------------------------------------------------------- versions, refusals


def test_versions_compare_in_dpkg() -> None:
    assert [deb_version(v) for v in (1, 9, 10)] == ["1", "9", "10"]
    for older, newer in ((1, 2), (9, 10), (99, 100)):
        r = subprocess.run(
            ["dpkg", "--compare-versions", deb_version(newer), "gt", deb_version(older)]
        )
        assert r.returncode == 0
    for bad in (0, -1, True):
        with pytest.raises(BuildError):
            deb_version(bad)


def test_deb_arch() -> None:
    host = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert deb_arch(Path("/bin/true").read_bytes()) == host
    assert deb_arch(b"#!/bin/sh\necho hi\n") == "all"
    assert deb_arch(None) == "all"
    arm64 = bytearray(Path("/bin/true").read_bytes()[:64])
    arm64[18:20] = (183).to_bytes(2, "little")
    assert deb_arch(bytes(arm64)) == "arm64"
    freebsd = bytearray(arm64)
    freebsd[7] = 9
    with pytest.raises(UserError, match="not a Linux executable"):
        deb_arch(bytes(freebsd))
    with pytest.raises(UserError):
        deb_arch(b"MZ\x90\x00" + b"\0" * 100)


def test_refuses_mismatched_input(rendered: Rendered) -> None:
    node = rendered.node(SERVER)
    with pytest.raises(BuildError):
        build_deb(node, rendered.trees[CLIENT], version=1, mtime=MTIME)
    with pytest.raises(BuildError):
        build_deb(node, rendered.trees[SERVER], version=1, mtime=-1)
    import dataclasses

    weird = dataclasses.replace(
        rendered.trees[SERVER],
        files=(
            *rendered.trees[SERVER].files,
            dataclasses.replace(rendered.trees[SERVER].files[0], path="/etc/a b"),
        ),
    )
    with pytest.raises(BuildError, match="plain absolute path"):
        build_deb(node, weird, version=1, mtime=MTIME)


# ---------------------------------------------------------------- real installs


def apt_get(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_in(root, "apt-get", "-y", "-q", "-o", "Dpkg::Use-Pty=0", *args)


def stat_in(root: Path, path: str) -> tuple[str, str, int]:
    out = run_in(root, "stat", "-c", "%U %G %a", path).stdout.split()
    return out[0], out[1], int(out[2], 8)


def exists_in(root: Path, path: str) -> bool:
    return os.path.lexists(root / path.lstrip("/"))


def unit_settings(root: Path, unit: str = UNIT) -> dict[str, str]:
    """ExecStart/User/Group of an installed unit with its drop-ins, as systemd merges them."""
    base = root / "usr/lib/systemd/system" / unit
    dropins = [
        p
        for d in ("usr/lib/systemd/system", "etc/systemd/system")
        for p in (root / d / f"{unit}.d").glob("*.conf")
    ]
    parts = [base, *sorted(dropins, key=lambda p: p.name)]
    settings: dict[str, str] = {}
    for part in parts:
        section = ""
        for line in part.read_text().splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line
            elif section == "[Service]" and "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                settings[key] = value  # an empty value resets; the last one wins
    return settings


def agent_line(root: Path, user: str, group: str, argv: list[str]) -> str:
    """Run the (stand-in) agent in the chroot as user:group, return its one line, stop it."""
    cmd = ["chroot", str(root), "/usr/bin/env", "-i", f"PATH={PATH}"]
    cmd += ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", *argv]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "the agent printed nothing within 60 s"
        return proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def systemd_verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", UNIT],
        capture_output=True,
        text=True,
    )


def check_installed(root: Path, node: Node, tree: NodeTree) -> None:
    """Owners, modes, user, data dir, unit, agent: what an installed node must have."""
    acct = tree.service.account
    passwd = run_in(root, "getent", "passwd", acct.user).stdout.split(":")
    assert acct.user == "root" or int(passwd[2]) < 1000  # a system user
    for f in tree.files:
        assert stat_in(root, f.path) == (f.owner, f.group, f.mode), f.path
        assert (root / f.path.lstrip("/")).read_bytes() == f.content, f.path
    for d in tree.dirs:
        assert stat_in(root, d.path) == (d.owner, d.group, d.mode), d.path
    for path in ("/etc/nomad.d", "/etc/nomad.d/tls"):
        assert stat_in(root, path) == ("root", "root", 0o755)

    # enabled the debhelper way, as systemctl sees it
    wants = root / "etc/systemd/system/multi-user.target.wants" / UNIT
    assert wants.is_symlink()
    enabled = subprocess.run(
        ["systemctl", f"--root={root}", "is-enabled", UNIT], capture_output=True, text=True
    )
    assert enabled.stdout.strip() == "enabled"
    proc = systemd_verify(root)
    assert (proc.returncode, proc.stderr) == (0, "")

    # the agent as the unit runs it: our config, our user, key + CA readable, data dir writable
    settings = unit_settings(root)
    assert settings["ExecStart"] == f"/usr/bin/nomad agent -config {node.config_file}"
    assert (settings.get("User"), settings.get("Group")) == (acct.user, acct.group)
    line = agent_line(root, acct.user, acct.group, settings["ExecStart"].split())
    result = parse_standin_line(line)
    assert result["user"] == acct.user and result["group"] == acct.group
    assert result["server"] == str(node.is_server).lower()
    assert result["client"] == str(node.is_client).lower()  # HashiCorp's default not loaded
    assert result["name"] == node.name and result["region"] == "eu"
    assert result["tls"] == "true" and result["configs"] == node.config_file
    assert result["data_dir"] == tree.service.data_dir


def test_install_server_with_hashicorp_standin(
    rendered: Rendered, debs: dict[str, Path], fake_nomad: Path, tmp_path: Path
) -> None:
    node, tree = rendered.node(SERVER), rendered.trees[SERVER]
    root = chroot(tmp_path)
    deny_service_starts(root)
    apt_get(root, "install", copy_in(root, fake_nomad), copy_in(root, debs[SERVER]))

    status = run_in(root, "dpkg-query", "-W", "-f=${Status} ${Version}", node.deb_package)
    assert status.stdout == "install ok installed 1"
    assert service_actions(root) == [f"{UNIT} start"]  # asked, refused by policy-rc.d
    check_installed(root, node, tree)

    # HashiCorp's default (server AND client) diverted, kept, and not loaded
    assert (root / DIVERTED.lstrip("/")).read_bytes() == HASHICORP_DEFAULT
    diversions = run_in(root, "dpkg-divert", "--list", "/etc/nomad.d/nomad.hcl").stdout
    assert diversions.strip() == (
        f"diversion of /etc/nomad.d/nomad.hcl to {DIVERTED} by {node.deb_package}"
    )
    assert run_in(root, "dpkg-query", "-W", "-f=${Conffiles}", "nomad").stdout.split()[0] == (
        "/etc/nomad.d/nomad.hcl"
    )
    # HashiCorp's own ExecStart (-config /etc/nomad.d) would not pick it up either
    line = agent_line(
        root, "nomad", "nomad", ["/usr/bin/nomad", "agent", "-config", "/etc/nomad.d"]
    )
    assert parse_standin_line(line)["client"] == "false"

    # secrets are not for everyone: "nobody" cannot read the server's config
    line = agent_line(root, "nobody", "nogroup", settings_argv(root))
    assert line.startswith("nomad-standin: FAIL cannot read config /etc/nomad.d/nomad.hcl")

    # HashiCorp's postinst chowns /etc/nomad.d to nomad:nomad on every configure;
    # the trigger on /usr/bin/nomad runs ours after it and puts things back
    apt_get(root, "install", "--reinstall", f"/tmp/{fake_nomad.name}")
    assert stat_in(root, "/etc/nomad.d/tls/nomad-ca.pem") == ("root", "root", 0o644)
    for f in tree.files:
        assert stat_in(root, f.path) == (f.owner, f.group, f.mode), f.path


def settings_argv(root: Path) -> list[str]:
    return unit_settings(root)["ExecStart"].split()


def test_install_client_runs_as_root(
    rendered: Rendered, debs: dict[str, Path], fake_nomad: Path, tmp_path: Path
) -> None:
    node, tree = rendered.node(CLIENT), rendered.trees[CLIENT]
    root = chroot(tmp_path)
    deny_service_starts(root)
    apt_get(root, "install", copy_in(root, fake_nomad))  # HashiCorp's package first, then ours
    apt_get(root, "install", copy_in(root, debs[CLIENT]))
    assert tree.service.account.user == "root"
    check_installed(root, node, tree)
    assert stat_in(root, "/etc/nomad.d/tls/nomad-client-key.pem") == ("root", "root", 0o600)
    assert service_actions(root) == [f"{UNIT} start"]
    # a second node's package cannot join it
    other = copy_in(root, debs["bi-node-sbg-2"])
    r = run_in(root, "dpkg", "-i", other, check=False)
    assert r.returncode != 0 and "conflicts with nomad-config" in r.stderr


def package_from_state(
    rendered: Rendered, directory: Path, edit: tuple[str, str] | None = None
) -> Artifact:
    """What `nomad-build package` makes: version from state/, bumped on a content change."""
    directory.mkdir(parents=True, exist_ok=True)
    text = example_text("debian")
    if edit:
        assert edit[0] in text
        text = text.replace(*edit)
    (directory / "cluster.toml").write_text(text)
    request = pipeline.Request(
        "package", directory / "cluster.toml", rendered.state_dir, nodes=(SERVER,)
    )
    (deb,) = pipeline.execute(pipeline.plan(request)).artifacts
    return deb


def test_upgrade_remove_purge(
    rendered: Rendered, fake_nomad: Path, tmp_path: Path, out: Path
) -> None:
    node, tree = rendered.node(SERVER), rendered.trees[SERVER]
    v1 = package_from_state(rendered, tmp_path / "c1")
    v1_again = package_from_state(rendered, tmp_path / "c1b")
    v2 = package_from_state(
        rendered, tmp_path / "c2", ('log_level = "INFO"', 'log_level = "DEBUG"')
    )
    assert v1 == v1_again  # same content: same version, same bytes
    version1 = int(v1.path.split("_")[1])
    assert v2.path == f"debian/{node.deb_package}_{version1 + 1}_all.deb"
    with data_tar(write(tmp_path, v2)) as tar:
        new_config = tar.extractfile("./etc/nomad.d/nomad.hcl").read()  # type: ignore[union-attr]
    assert b'log_level = "DEBUG"' in new_config

    root = chroot(tmp_path)
    deny_service_starts(root)
    apt_get(root, "install", copy_in(root, fake_nomad), copy_in(root, write(tmp_path, v1)))
    check_installed(root, node, tree)

    # the admin edits two conffiles: one the new version changes, one it does not
    config = root / "etc/nomad.d/nomad.hcl"
    nft = root / "etc/nftables.d/nomad-build.nft"
    config.write_bytes(config.read_bytes() + b"# local edit\n")
    nft.write_bytes(nft.read_bytes() + b"# local rule\n")

    deb2 = copy_in(root, write(tmp_path, v2))
    apt_get(
        root,
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
        "install",
        deb2,
    )
    version = run_in(root, "dpkg-query", "-W", "-f=${Version}", node.deb_package).stdout
    assert version == v2.path.split("_")[1]
    assert config.read_bytes().endswith(b"# local edit\n")  # kept ...
    assert (root / "etc/nomad.d/nomad.hcl.dpkg-dist").read_bytes() == new_config  # ... new beside
    assert nft.read_bytes().endswith(b"# local rule\n")
    assert stat_in(root, "/etc/nomad.d/nomad.hcl") == ("root", "nomad", 0o640)
    assert stat_in(root, "/etc/nomad.d/tls/nomad-server-key.pem") == ("root", "nomad", 0o640)
    assert service_actions(root) == [f"{UNIT} start", f"{UNIT} restart"]
    data = root / "opt/nomad/data"
    (data / "raft-state").write_text("agent data\n")

    # remove: agent stopped, conffiles kept, unit masked until purge
    apt_get(root, "remove", node.deb_package)
    assert service_actions(root)[-1] == f"{UNIT} stop"
    assert config.read_bytes().endswith(b"# local edit\n")
    for f in tree.files:
        assert exists_in(root, f.path) == f.path.startswith("/etc/"), f.path
    assert os.readlink(root / "etc/systemd/system" / UNIT) == "/dev/null"
    status = run_in(root, "dpkg-query", "-W", "-f=${Status}", node.deb_package).stdout
    assert status == "deinstall ok config-files"
    assert (root / DIVERTED.lstrip("/")).read_bytes() == HASHICORP_DEFAULT

    # purge: our /etc files, links and diversion go; HashiCorp's default comes back;
    # the data dir and the user stay
    apt_get(root, "purge", node.deb_package)
    for f in tree.files:
        if f.path != "/etc/nomad.d/nomad.hcl":  # HashiCorp's is back there (below)
            assert not exists_in(root, f.path), f.path
    assert not exists_in(root, "/etc/nomad.d/nomad.hcl.dpkg-dist")
    assert not exists_in(root, "/etc/nomad.d/tls")
    assert not exists_in(root, "/etc/systemd/system/" + UNIT)
    assert not exists_in(root, "/etc/systemd/system/multi-user.target.wants/" + UNIT)
    assert run_in(root, "dpkg-divert", "--list", "/etc/nomad.d/*").stdout == ""
    assert not exists_in(root, DIVERTED)
    assert (root / "etc/nomad.d/nomad.hcl").read_bytes() == HASHICORP_DEFAULT
    assert (data / "raft-state").read_text() == "agent data\n"
    assert stat_in(root, "/opt/nomad/data")[:2] == ("nomad", "nomad")
    run_in(root, "getent", "passwd", "nomad")
    r = run_in(root, "dpkg-query", "-W", node.deb_package, check=False)
    assert r.returncode != 0  # gone from dpkg's database
    # HashiCorp's package is untouched and consistent
    run_in(root, "dpkg", "--verify", "nomad")


def test_bundled_binary_install_and_purge(
    bundled: Rendered, bundled_debs: dict[str, Path], tmp_path: Path
) -> None:
    """No HashiCorp package: our own unit and binary; our postinst makes the user."""
    node, tree = bundled.node(SERVER), bundled.trees[SERVER]
    root = chroot(tmp_path)
    deny_service_starts(root)
    assert run_in(root, "getent", "passwd", "nomad", check=False).returncode == 2
    apt_get(root, "install", copy_in(root, bundled_debs[SERVER]))
    check_installed(root, node, tree)
    assert run_in(root, "nomad", "version").stdout.startswith("Nomad v1.9.3")
    assert service_actions(root) == [f"{UNIT} start"]
    # nothing to divert from, but the diversion is ours and harmless
    apt_get(root, "purge", node.deb_package)
    assert not exists_in(root, "/usr/bin/nomad")
    assert not exists_in(root, "/etc/nomad.d/nomad.hcl")
    assert run_in(root, "dpkg-divert", "--list", "/etc/nomad.d/*").stdout == ""
    assert not exists_in(root, "/etc/systemd/system/multi-user.target.wants/" + UNIT)
    run_in(root, "getent", "passwd", "nomad")  # the user stays
    assert exists_in(root, "/opt/nomad/data")


@pytest.mark.parametrize(
    ("flags", "dynamic", "symbols"),
    [(["-static"], False, True), (["-s"], True, False)],
    ids=["static-unstripped", "dynamic-stripped"],
)
def test_bundled_elf_binary(tmp_path: Path, flags: list[str], dynamic: bool, symbols: bool) -> None:
    """A real ELF as the bundled binary: its architecture, libc dependency, lintian-clean."""
    src = tmp_path / "nomad.c"
    src.write_text('#include <stdio.h>\nint main(void) { puts("Nomad v1.9.3"); return 0; }\n')
    binary = tmp_path / "nomad"
    subprocess.run(["gcc", "-O2", *flags, "-o", str(binary), str(src)], check=True)
    data = binary.read_bytes()
    facts = elf_facts(data)
    assert facts is not None and (facts.dynamic, facts.symbols) == (dynamic, symbols)
    r = render_all(tmp_path, "debian", append=bundle_table(tmp_path, None))
    art = build_deb(r.node(SERVER), r.trees[SERVER], version=2, mtime=MTIME)
    host = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert art.path == f"debian/nomad-config-{SERVER}_2_{host}.deb"
    deb = write(tmp_path, art)
    f = fields(deb)
    assert f["Architecture"] == host
    assert f["Depends"] == ("adduser, libc6" if dynamic else "adduser")
    assert problems(lintian(deb)) == []
    with data_tar(deb) as tar:
        assert tar.extractfile("./usr/bin/nomad").read() == data  # type: ignore[union-attr]


def test_moving_a_host_to_another_node(
    rendered: Rendered, debs: dict[str, Path], fake_nomad: Path, tmp_path: Path
) -> None:
    """apt swaps one node's package for another's only after the old one is purged."""
    old, new = "bi-core-sbg-2", "bi-core-sbg-3"
    old_pkg, new_pkg = rendered.node(old).deb_package, rendered.node(new).deb_package
    root = chroot(tmp_path)
    deny_service_starts(root)
    apt_get(root, "install", copy_in(root, fake_nomad), copy_in(root, debs[old]))
    deb = copy_in(root, debs[new])
    r = run_in(root, "apt-get", "-y", "-q", "-o", "Dpkg::Use-Pty=0", "install", deb, check=False)
    assert r.returncode != 0
    assert f"{old_pkg} (another node's configuration) is removed but not purged" in r.stderr
    assert f"run 'apt purge {old_pkg}'" in r.stderr
    status = run_in(root, "dpkg-query", "-W", "-f=${Status}", old_pkg).stdout
    assert status == "deinstall ok config-files"
    r = run_in(root, "dpkg-query", "-W", "-f=${Status}", new_pkg, check=False)
    assert r.returncode != 0 or r.stdout.endswith(" not-installed")

    apt_get(root, "purge", old_pkg)
    assert (root / "etc/nomad.d/nomad.hcl").read_bytes() == HASHICORP_DEFAULT
    apt_get(root, "install", deb)
    check_installed(root, rendered.node(new), rendered.trees[new])
    assert (root / DIVERTED.lstrip("/")).read_bytes() == HASHICORP_DEFAULT
    assert service_actions(root)[-1] == f"{UNIT} start"


# ---------------------------------------------------------------- the stand-in itself


def standin(
    tmp_path: Path, config: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    path = tmp_path / "agent.hcl"
    path.write_text(config)
    return subprocess.Popen(
        ["perl", str(REPO / "tests/fake_nomad/nomad"), "agent", "-config", str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={"PATH": PATH, **(env or {})},
    )


def test_standin_agent_checks_and_notifies(tmp_path: Path) -> None:
    import socket

    data = tmp_path / "data"
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END EC PRIVATE KEY-----\n")
    good = (
        f'data_dir = "{data}"\nserver {{\n  enabled = true\n  bootstrap_expect = 3\n}}\n'
        f'tls {{\n  rpc = true\n  ca_file = "{ca}"\n  cert_file = "{ca}"\n'
        f'  key_file = "{key}"\n}}\n'
    )
    sock_path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(60)
        proc = standin(tmp_path, good, {"NOTIFY_SOCKET": str(sock_path)})
        try:
            assert proc.stdout is not None
            fields_ = parse_standin_line(proc.stdout.readline().strip())
            assert (fields_["server"], fields_["client"], fields_["tls"]) == (
                "true",
                "false",
                "true",
            )
            assert data.is_dir() and list(data.iterdir()) == []  # made, probed, left clean
            assert sock.recv(1024).decode().split("\n")[0] == "READY=1"
            assert proc.poll() is None  # stays running
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    bad_cases = {
        "cannot read tls.key_file": good.replace(str(key), str(tmp_path / "missing.pem")),
        "neither server nor client is enabled": good.replace("enabled = true", "enabled = false"),
        "data_dir is not set": good.replace(f'data_dir = "{data}"\n', ""),
        "expected '}'": good.rstrip("}\n"),
        "holds no PRIVATE KEY": good.replace(str(key), str(ca)),
    }
    for reason, config in bad_cases.items():
        proc = standin(tmp_path, config)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 1, reason
        assert out.startswith("nomad-standin: FAIL ") and reason in out, (reason, out)


def test_certificate_only_upgrade_reloads_the_agent(
    rendered: Rendered, fake_nomad: Path, tmp_path: Path
) -> None:
    """`pki renew` then an upgrade: only certificates changed, so postinst reloads
    (SIGHUP through ExecReload) instead of restarting; a config change restarts."""
    from builder import lifecycle

    state = tmp_path / "state"
    shutil.copytree(rendered.state_dir, state)
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(example_text("debian"))

    def package() -> Artifact:
        request = pipeline.Request("package", cluster, state, nodes=(SERVER,))
        (deb,) = pipeline.execute(pipeline.plan(request)).artifacts
        return deb

    v1 = package()
    root = chroot(tmp_path)
    deny_service_starts(root)
    apt_get(root, "install", copy_in(root, fake_nomad), copy_in(root, write(tmp_path, v1)))
    lifecycle.renew(cluster, state, nodes=(SERVER,))
    v2 = package()
    assert v2.path != v1.path  # the new certificate bumps the version
    with tarfile.open(fileobj=io.BytesIO(_member(v2.data, "data.tar.gz"))) as tar:
        f = tar.extractfile(f"./usr/share/doc/{rendered.node(SERVER).deb_package}/changelog.gz")
        assert f is not None
        changelog = gzip.decompress(f.read()).decode()
    assert "reloads the agent" in changelog and "only certificates" in changelog
    apt_get(root, "install", copy_in(root, write(tmp_path, v2)))
    assert service_actions(root)[-2:] == [f"{UNIT} start", f"{UNIT} reload"]

    cluster.write_text(example_text("debian").replace('log_level = "INFO"', 'log_level = "DEBUG"'))
    v3 = package()
    apt_get(
        root,
        "-o",
        "Dpkg::Options::=--force-confnew",
        "install",
        copy_in(root, write(tmp_path, v3)),
    )
    assert service_actions(root)[-1] == f"{UNIT} restart"


def _member(deb: bytes, name: str) -> bytes:
    pos = 8
    while pos < len(deb):
        header = deb[pos : pos + 60]
        size = int(header[48:58])
        if header[:16].decode().strip().rstrip("/") == name:
            return deb[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
    raise KeyError(name)
