"""[consul.agent] enabled: every node's consul-config package, built by the pipeline.

Debian: dpkg-deb reads it, lintian finds no E:/W:; OpenBSD: the strict pkg_add reader
accepts it and signify verifies it. The configuration inside parses and passes
recipes/consul-schema.toml, the certificate inside verifies against the Consul CA
inside, each node's Consul key is only in that node's Consul package, the Consul CA
key in none, and the Nomad packages are what they are without the agent.

The facts of HashiCorp's consul package and of the sysutils/consul port these
packages build on (docs/consul.md, with their sources) are pinned here: the drop-in
against a stand-in of HashiCorp's consul.service by systemd-analyze, the rc.d script
under mksh with a stand-in rc.subr."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from builder import consul, pipeline, signify
from builder.cluster import load
from builder.writers import Artifact

from conftest import example_text
from pkg_reader import read_package, signify_tool

EPOCH = "1767225600"
ENABLE = "\n[consul.agent]\nenabled = true\n\n[packages]"


def _build(directory: Path, os_name: str, table: str = ENABLE) -> pipeline.Result:
    directory.mkdir(parents=True, exist_ok=True)
    text = example_text(os_name)
    if table:
        text = text.replace("\n[packages]", table, 1)
    (directory / "cluster.toml").write_text(text)
    request = pipeline.Request("build", directory / "cluster.toml", out_dir=directory / "dist")
    return pipeline.execute(pipeline.plan(request))


@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pipeline.Result]:
    d = tmp_path_factory.mktemp("consul-debian")
    return d, _build(d, "debian")


@pytest.fixture(scope="module")
def openbsd(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pipeline.Result]:
    d = tmp_path_factory.mktemp("consul-openbsd")
    return d, _build(d, "openbsd")


def _consul_packages(result: pipeline.Result) -> dict[str, Artifact]:
    return {
        a.node: a
        for a in result.artifacts
        if a.path.split("/")[0] in ("debian", "openbsd")
        and a.path.split("/")[1].startswith("consul-config-")
        and a.node is not None
    }


def _deb_files(data: bytes, tmp: Path) -> dict[str, bytes]:
    deb = tmp / "p.deb"
    deb.write_bytes(data)
    raw = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(raw.stdout)) as tar:
        return {
            i.name.removeprefix("."): tar.extractfile(i).read()  # type: ignore[union-attr]
            for i in tar.getmembers()
            if i.isfile()
        }


def _pkg_files(data: bytes) -> dict[str, bytes]:
    pkg = read_package(data)
    ex = "usr/local/share/examples/consul-config"
    return {"/" + m.name.removeprefix(ex + "/").removeprefix("/"): m.data for m in pkg.members}


def _pem_body(pem: bytes) -> bytes:
    return b"".join(ln for ln in pem.splitlines() if ln and not ln.startswith(b"-----"))


def _check_config_and_certs(
    files: dict[str, bytes], conf_dir: str, node: str, server: bool, tmp: Path
) -> None:
    cfg = json.loads(files[f"{conf_dir}/nomad-build.json"])
    assert consul.check_config(cfg) == []
    assert cfg["node_name"] == node and cfg["server"] is server
    assert cfg["client_addr"] == "127.0.0.1" and cfg["ports"]["http"] == 8500
    tls = cfg["tls"]["defaults"]
    for key in ("ca_file", "cert_file", "key_file"):
        assert tls[key] in files, tls[key]
        (tmp / key).write_bytes(files[tls[key]])
    want = f"{'server' if server else 'client'}.bi-sbg.consul"
    r = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp / "ca_file"), "-verify_hostname", want,
         str(tmp / "cert_file")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr

    # the key is the certificate's
    def run(*args: str) -> bytes:
        return subprocess.run(["openssl", *args], capture_output=True, check=True).stdout

    pubs = [
        run("x509", "-in", str(tmp / "cert_file"), "-noout", "-pubkey"),
        run("pkey", "-in", str(tmp / "key_file"), "-pubout"),
    ]
    assert pubs[0] == pubs[1]


def _secret_placement(state: Path, packages: dict[str, dict[str, bytes]], nomad: dict[str, bytes]):
    ca_key = _pem_body((state / "consul-ca.key").read_bytes())
    gossip = (state / "consul-gossip.key").read_bytes().strip()
    keys = {n: _pem_body((state / f"consul-{n}.key").read_bytes()) for n in packages}
    for name, files in packages.items():
        blob = b"".join(files.values()).replace(b"\n", b"")
        assert ca_key not in blob
        assert gossip in blob  # every Consul agent is in the LAN gossip pool
        assert keys[name] in blob
        for other, key in keys.items():
            if other != name:
                assert key not in blob, f"{other}'s Consul key in {name}'s package"
    for name, data in nomad.items():  # the Nomad packages carry no Consul secret
        blob = data.replace(b"\n", b"")
        assert gossip not in data and ca_key not in blob
        assert all(k not in blob for k in keys.values()), name


# ---------------------------------------------------------------- service files

# Stands in for HashiCorp's /usr/lib/systemd/system/consul.service (docs/consul.md:
# hashicorp/consul .release/linux/package/usr/lib/systemd/system/consul.service). Both
# conditions of its stored revisions are here: the drop-in must drop them all.
HASHICORP_CONSUL_UNIT = """\
[Unit]
Description="HashiCorp Consul - A service mesh solution (nomad-build test stand-in)"
Requires=network-online.target
After=network-online.target
ConditionFileNotEmpty=/etc/consul.d/consul.hcl
ConditionDirectoryNotEmpty=/etc/consul.d

[Service]
Type=notify
EnvironmentFile=-/etc/consul.d/consul.env
User=consul
Group=consul
ExecStart=/usr/bin/consul agent -config-dir=/etc/consul.d/
ExecReload=/bin/kill --signal HUP $MAINPID
KillMode=process
KillSignal=SIGTERM
Restart=on-failure
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""


def _tool(name: str) -> str:
    exe = shutil.which(name)
    assert exe, f"{name} is required (scripts/debian-packages.txt; make tools)"
    return exe


def _unit_root(tmp: Path, drop_in: bytes) -> Path:
    """A root holding the host's targets, kill, a stand-in consul, HashiCorp's unit
    (stand-in) and our drop-in, for systemd-analyze."""
    units = tmp / "usr/lib/systemd/system"
    (units / "consul.service.d").mkdir(parents=True)
    for target in Path("/usr/lib/systemd/system").glob("*.target"):
        shutil.copy(target, units / target.name, follow_symlinks=True)
    (tmp / "usr/bin").mkdir(parents=True)
    shutil.copy(_tool("kill"), tmp / "usr/bin/kill")
    (tmp / "bin").symlink_to("usr/bin")
    (tmp / "usr/bin/consul").write_text("#!/bin/sh\n")  # stand-in: no Consul here
    (tmp / "usr/bin/consul").chmod(0o755)
    (units / "consul.service").write_text(HASHICORP_CONSUL_UNIT)
    (units / "consul.service.d/nomad-build.conf").write_bytes(drop_in)
    return tmp


def _verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("systemd-analyze"), "verify", "--man=no", f"--root={root}", "consul.service"],
        capture_output=True, text=True,
    )  # fmt: skip


def _check_drop_in(drop_in: bytes, tmp: Path) -> None:
    """Our drop-in over HashiCorp's unit: systemd-analyze accepts the pair; only our
    condition is left; exactly our ExecStart, as consul, loading our file alone."""
    lines = [ln for ln in drop_in.decode().splitlines() if ln and not ln.startswith("#")]
    assert lines == [
        "[Unit]",
        "ConditionFileNotEmpty=",
        "ConditionFileNotEmpty=/etc/consul.d/nomad-build.json",
        "[Service]",
        "User=consul",
        "Group=consul",
        "ExecStart=",
        "ExecStart=/usr/bin/consul agent -config-file=/etc/consul.d/nomad-build.json",
    ]
    root = _unit_root(tmp / "root", drop_in)
    proc = _verify(root)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    # The conditions in force over HashiCorp's: ours points at a file that exists here,
    # so any condition left of HashiCorp's (files absent here) would fail the unit.
    assert _conditions(root, drop_in) == (0, [f"ConditionFileNotEmpty={root}/cfg succeeded."])
    # without the empty reset HashiCorp's conditions stay: the check above can fail
    kept = drop_in.replace(b"ConditionFileNotEmpty=\n", b"")
    rc, said = _conditions(_unit_root(tmp / "kept", kept), kept)
    assert rc != 0 and any("/etc/consul.d" in ln for ln in said), said
    # without the ExecStart= reset the pair is refused: the check above can fail
    unreset = drop_in.replace(b"ExecStart=\n", b"")
    bad = _verify(_unit_root(tmp / "unreset", unreset))
    assert bad.returncode != 0 and "ExecStart" in bad.stderr, bad.stderr


def _conditions(root: Path, drop_in: bytes) -> tuple[int, list[str]]:
    """systemd-analyze's evaluation of consul.service's conditions in `root`, our
    configuration file pointed at a non-empty file of `root` (a host path is checked)."""
    (root / "cfg").write_text("{}\n")
    ours = drop_in.replace(b"=/etc/consul.d/nomad-build.json\n", f"={root}/cfg\n".encode(), 1)
    units = root / "usr/lib/systemd/system"
    (units / "consul.service.d/nomad-build.conf").write_bytes(ours)
    proc = subprocess.run(
        [_tool("systemd-analyze"), "condition", "--unit=consul.service"],
        capture_output=True, text=True,
        env={"SYSTEMD_UNIT_PATH": f"{units}:", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    said = (proc.stdout + proc.stderr).splitlines()
    return proc.returncode, [ln.removeprefix("consul.service: ") for ln in said[:-1]]


# Stands in for OpenBSD's /etc/rc.d/rc.subr: records what it sees when sourced.
FAKE_RC_SUBR = """\
print -r -- "daemon=$daemon"
print -r -- "daemon_flags=$daemon_flags"
print -r -- "daemon_user=$daemon_user"
print -r -- "daemon_class=$daemon_class"
rc_cmd() {
\tprint -r -- "rc_cmd $1 rc_bg=$rc_bg rc_reload=$rc_reload rc_stop_signal=$rc_stop_signal"
}
"""


def _check_rc_script(script: bytes, tmp: Path) -> None:
    """As the port's rc.d/consul (docs/consul.md: daemon "consul agent", user _consul,
    rc_bg, SIGINT to stop) but loading our file alone, in the port's login class."""
    tmp.mkdir(parents=True, exist_ok=True)
    text = script.decode()
    assert text.startswith("#!/bin/ksh\n") and text.rstrip().endswith("rc_cmd $1")
    (tmp / "rc").write_text(text)
    syntax = subprocess.run([_tool("mksh"), "-n", str(tmp / "rc")], capture_output=True)
    assert syntax.returncode == 0, syntax.stderr
    (tmp / "rc.subr").write_text(FAKE_RC_SUBR)
    runnable = tmp / "rc.run"
    runnable.write_text(text.replace(". /etc/rc.d/rc.subr", f". {tmp}/rc.subr"))
    run = subprocess.run([_tool("mksh"), str(runnable), "start"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "daemon=/usr/local/bin/consul agent",
        "daemon_flags=-config-file /etc/consul.d/nomad-build.json",
        "daemon_user=_consul",
        "daemon_class=consul",
        "rc_cmd start rc_bg=YES rc_reload= rc_stop_signal=INT",
    ]


def test_min_consul_knows_every_key_written(tmp_path: Path) -> None:
    """Consul refuses a configuration key it does not know; the newest keys we write
    set the oldest Consul the packages may depend on (docs/consul.md)."""
    introduced = {("tls",): "1.12.0", ("ports", "grpc_tls"): "1.14.0"}
    text = example_text("debian").replace("\n[packages]", ENABLE, 1)
    (tmp_path / "cluster.toml").write_text(text)
    cluster = load(tmp_path / "cluster.toml")
    config = consul.agent_config(cluster, cluster.nodes[0], gossip_key="x" * 44)
    used = [v for path, v in introduced.items() if _has(config, path)]
    assert used, "the table above no longer matches what we write"
    newest = max(used, key=lambda v: tuple(map(int, v.split("."))))
    assert consul.min_version() == newest == "1.14.0"


def _has(config: dict[str, object], path: tuple[str, ...]) -> bool:
    node: object = config
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


# ---------------------------------------------------------------- Debian


def test_debian_consul_packages(debian: tuple[Path, pipeline.Result], tmp_path: Path) -> None:
    d, result = debian
    cluster = load(d / "cluster.toml")
    debs = _consul_packages(result)
    assert sorted(debs) == sorted(n.name for n in cluster.nodes)
    files = {}
    for node in cluster.nodes:
        art = debs[node.name]
        assert art.path == f"debian/consul-config-{node.name}_1_all.deb" and art.secret
        deb = tmp_path / Path(art.path).name
        deb.write_bytes(art.data)
        info = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True)
        assert f"Package: consul-config-{node.name}" in info.stdout
        # HashiCorp's package name; 1.14.0 is the first Consul knowing ports.grpc_tls
        assert "\nDepends: adduser, consul (>= 1.14.0)\n" in info.stdout
        assert "Pre-Depends" not in info.stdout
        files[node.name] = _deb_files(art.data, tmp_path)
        server = node in cluster.consul_servers
        _check_config_and_certs(files[node.name], "/etc/consul.d", node.name, server, tmp_path)
        unit = files[node.name]["/usr/lib/systemd/system/consul.service.d/nomad-build.conf"]
        _check_drop_in(unit, tmp_path / node.name)
        nft = files[node.name]["/etc/nftables.d/nomad-build-consul.nft"].decode()
        assert ("tcp dport { 8300, 8301 } accept" in nft) is server
        assert "udp dport { 8301 } accept" in nft and "8600" not in nft
        # nothing diverted: no preinst (its only work is the diversion), none in postrm
        control = subprocess.run(["dpkg-deb", "-I", str(deb)], capture_output=True, text=True)
        assert " preinst" not in control.stdout and " triggers" in control.stdout
        for script in ("postinst", "postrm", "prerm"):
            text = subprocess.run(
                ["dpkg-deb", "-I", str(deb), script], capture_output=True, check=True
            ).stdout
            subprocess.run(["sh", "-n"], input=text, check=True)
            assert b"dpkg-divert" not in text and b"nomad.hcl" not in text
    nomad = {a.path: a.data for a in result.artifacts if "/nomad-config-" in a.path}
    nomad_files = {p: b"".join(_deb_files(data, tmp_path).values()) for p, data in nomad.items()}
    _secret_placement(d / "state", files, nomad_files)


def test_debian_consul_packages_are_lintian_clean(
    debian: tuple[Path, pipeline.Result], tmp_path: Path
) -> None:
    _, result = debian
    debs = _consul_packages(result)
    for name in ("bi-core-sbg-1", "bi-node-sbg-1"):  # a Consul server and a client
        deb = tmp_path / Path(debs[name].path).name
        deb.write_bytes(debs[name].data)
        proc = subprocess.run(
            ["lintian", "--allow-root", "--no-cfg", "--tag-display-limit", "0", str(deb)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert proc.returncode in (0, 1, 2), proc.stderr
        bad = [ln for ln in proc.stdout.splitlines() if ln.startswith(("E:", "W:"))]
        assert bad == [], deb.name


# ---------------------------------------------------------------- OpenBSD


def test_openbsd_consul_packages(openbsd: tuple[Path, pipeline.Result], tmp_path: Path) -> None:
    d, result = openbsd
    cluster = load(d / "cluster.toml")
    pub = (d / "state" / f"{cluster.packages.signing_key_name}.pub").read_bytes()
    pkgs = _consul_packages(result)
    assert sorted(pkgs) == sorted(n.name for n in cluster.nodes)
    files = {}
    for node in cluster.nodes:
        art = pkgs[node.name]
        stem = consul.package_node(node).openbsd_stem
        assert stem.startswith("consul-config-") and art.path == f"openbsd/{stem}-1.tgz"
        pkg = read_package(art.data, pub=pub, expect_stem=stem, expect_version="1")
        assert pkg.signed_by is not None
        contents = pkg.member("+CONTENTS").data.decode()
        # the port: package consul-<Consul version>; its account, field for field
        assert "\n@depend sysutils/consul:consul->=1.14.0:consul-1.14.0\n" in contents
        assert "\n@newgroup _consul:773\n" in contents
        assert (
            "\n@newuser _consul:773:_consul:daemon:Consul Agent:/nonexistent:/sbin/nologin\n"
            in contents
        )
        assert "\n@rcscript /etc/rc.d/consul_agent\n" in contents
        assert "\n@dir var/consul\n" in contents  # the port's data dir
        assert "nomad" not in contents.replace("nomad-build", "")
        path = tmp_path / "p.tgz"
        path.write_bytes(art.data)
        r = signify_tool("-zV", "-t", "pkg", "-p", str(tmp_path / "k.pub"), "-x", str(path),
                         "-m", "-") if (tmp_path / "k.pub").write_bytes(pub) else None  # fmt: skip
        assert r is not None and r.returncode == 0, r
        files[node.name] = _pkg_files(art.data)
        server = node in cluster.consul_servers
        _check_config_and_certs(files[node.name], "/etc/consul.d", node.name, server, tmp_path)
        assert "/etc/consul.d/pf.anchor" in files[node.name]
        _check_rc_script(files[node.name]["/etc/rc.d/consul_agent"], tmp_path / node.name)
    nomad = {a.path: a.data for a in result.artifacts if "/nomad-config-" in a.path}
    nomad_files = {p: b"".join(_pkg_files(data).values()) for p, data in nomad.items()}
    assert signify.zverify(next(iter(pkgs.values())).data, pub) is not None
    _secret_placement(d / "state", files, nomad_files)


# ---------------------------------------------------------------- versions, defaults


def test_consul_versions_move_only_with_their_bytes(tmp_path: Path) -> None:
    first = _build(tmp_path, "debian")
    again = _build(tmp_path, "debian")
    digest = {a.path: hashlib.sha256(a.data).hexdigest() for a in first.artifacts}
    assert {a.path: hashlib.sha256(a.data).hexdigest() for a in again.artifacts} == digest
    versions = json.loads((tmp_path / "state" / "versions.json").read_text())
    assert all(
        v["consul-deb"]["version"] == 1 and v["deb"]["version"] == 1 for v in versions.values()
    )
    # DNS on: only the Consul packages change, each to version 2
    text = (
        (tmp_path / "cluster.toml")
        .read_text()
        .replace("enabled = true", "enabled = true\ndns = true")
    )
    (tmp_path / "cluster.toml").write_text(text)
    request = pipeline.Request("build", tmp_path / "cluster.toml", out_dir=tmp_path / "dist")
    third = pipeline.execute(pipeline.plan(request))
    paths = {a.path for a in third.artifacts if a.path.endswith(".deb")}
    assert "debian/consul-config-bi-core-sbg-1_2_all.deb" in paths
    assert "debian/nomad-config-bi-core-sbg-1_1_all.deb" in paths
    changed = {c.path: c for c in third.report.changes if c.status == "changed"}
    reasons = changed["debian/consul-config-bi-core-sbg-1_2_all.deb"].reasons
    assert any("nomad-build.json" in r for r in reasons), reasons


def test_disabled_agent_builds_no_consul_package(tmp_path: Path) -> None:
    for table in ("", "\n[consul.agent]\nenabled = false\n\n[packages]"):
        result = _build(tmp_path / str(len(table)), "debian", table)
        assert not _consul_packages(result)
        assert not list((tmp_path / str(len(table)) / "state").glob("consul-*"))
