"""[consul.agent] enabled: the consul-config packages reach the nodes.

- the signed apt repository and the OpenBSD package directory carry and index each
  node's consul-config package beside its nomad-config one;
- the seeds install it: cloud-init and autoinstall (embedded, or by name from the
  repository) in the same first-boot apt-get run as the node's package; the OpenBSD
  site set carries it and install.site pkg_adds both in one run and enables both agents;
- `check` lists those seeds and repositories among the artifacts holding a node's keys;
- the TEST-ONLY stand-in consul package (tests/fake_consul) checks what the real agent
  needs of the configuration it is given;
- (slow) apt in a bookworm chroot installs nomad-config-<node> and consul-config-<node>
  from the build's signed repository, pulling the stand-in consul and nomad from a
  stand-in of HashiCorp's source; the stand-in agent then runs the shipped configuration
  as user consul.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from builder import pipeline
from builder.writers import Artifact

import debian_chroot
from conftest import example_text, pycdlib_files
from fake_consul import STANDIN_VERSION, build_fake_consul_deb, parse_standin_line
from fake_nomad import build_fake_nomad_deb

ENABLE = "\n[consul.agent]\nenabled = true\n\n[packages]"
HASH = '"$6$salt$' + "x" * 86 + '"'
NODE = "bi-core-sbg-1"
REPO_INSIDE = "/srv/nomad-build"  # where the chroot sees dist/
HASHICORP_INSIDE = "/srv/hashicorp"  # the chroot's stand-in of HashiCorp's apt source


def _cluster(directory: Path, os_name: str, packages: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = example_text(os_name).replace("\n[packages]", ENABLE + "\n" + packages, 1)
    text = text.replace("[images]\n", f"[images]\npassword_hash = {HASH}\n", 1)
    if os_name == "openbsd":  # the model takes only a bcrypt hash for OpenBSD nodes
        text = text.replace(f"password_hash = {HASH}\n", "", 1)
    path = directory / "cluster.toml"
    path.write_text(text)
    return path


def _build(directory: Path, os_name: str, packages: str = "") -> pipeline.Result:
    path = _cluster(directory, os_name, packages)
    request = pipeline.Request("build", path, out_dir=directory / "dist")
    return pipeline.execute(pipeline.plan(request))


def _by_path(result: pipeline.Result) -> dict[str, Artifact]:
    return {a.path: a for a in result.artifacts}


def _one(arts: dict[str, Artifact], pattern: str) -> Artifact:
    (found,) = [a for p, a in arts.items() if re.fullmatch(pattern, p)]
    return found


def _stanzas(text: bytes) -> list[dict[str, str]]:
    out = []
    for block in text.decode().strip().split("\n\n"):
        out.append(dict(line.split(": ", 1) for line in block.splitlines() if ": " in line))
    return out


@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> pipeline.Result:
    return _build(tmp_path_factory.mktemp("debian"), "debian")


@pytest.fixture(scope="module")
def debian_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pipeline.Result]:
    d = tmp_path_factory.mktemp("debian-repo")
    url = f'repo_url = "file://{REPO_INSIDE}/repo/debian"\n'
    return d, _build(d, "debian", url)


@pytest.fixture(scope="module")
def openbsd(tmp_path_factory: pytest.TempPathFactory) -> pipeline.Result:
    return _build(tmp_path_factory.mktemp("openbsd"), "openbsd")


# ---------------------------------------------------------------- repositories


def test_the_apt_repository_indexes_both_packages_of_every_node(
    debian: pipeline.Result,
) -> None:
    arts = _by_path(debian)
    packages = _one(arts, r"repo/debian/dists/\w+/main/binary-all/Packages")
    stanzas = {s["Package"]: s for s in _stanzas(packages.data)}
    nodes = [n for n in {a.node for a in debian.artifacts} if n]
    assert len(nodes) == 6
    for node in nodes:
        for kind in ("nomad-config", "consul-config"):
            deb = _one(arts, rf"debian/{kind}-{node}_\d+_all\.deb")
            st = stanzas[f"{kind}-{node}"]
            pool = arts[f"repo/debian/{st['Filename']}"]
            assert pool.data == deb.data and pool.secret and pool.node == node
            assert st["Filename"] == f"pool/main/{kind[0]}/{kind}-{node}/{deb.path[7:]}"
        assert "consul" in stanzas[f"consul-config-{node}"]["Depends"]
    assert len(stanzas) == 12
    # Release lists the index it signs
    release = _one(arts, r"repo/debian/dists/\w+/Release").data.decode()
    assert f" {len(packages.data)} main/binary-all/Packages\n" in release


def test_the_openbsd_package_directory_carries_both_packages(openbsd: pipeline.Result) -> None:
    arts = _by_path(openbsd)
    index = arts["repo/openbsd/index.html"].data.decode()
    sums = arts["repo/openbsd/SHA256"].data.decode()
    nodes = {a.node for a in openbsd.artifacts if a.node}
    assert len(nodes) == 6
    for node in nodes:
        for kind in ("nomad-config", "consul-config"):
            (pkg,) = [
                a for a in arts.values() if a.node == node and a.path.startswith(f"openbsd/{kind}-")
            ]
            name = pkg.path.removeprefix("openbsd/")
            assert arts[f"repo/openbsd/{name}"].data == pkg.data
            assert f'<a href="{name}">' in index and f"SHA256 ({name}) = " in sums


def test_without_the_agent_no_consul_package_is_carried(tmp_path: Path) -> None:
    text = example_text("debian")
    (tmp_path / "cluster.toml").write_text(text)
    request = pipeline.Request("build", tmp_path / "cluster.toml", out_dir=tmp_path / "dist")
    result = pipeline.execute(pipeline.plan(request))
    assert not [a.path for a in result.artifacts if "consul-config" in a.path]
    seed = _one(_by_path(result), rf"images/{NODE}/seed\.iso")
    assert b"consul" not in pycdlib_files(seed.data)["rr"]["user-data"]


# ---------------------------------------------------------------- Debian seeds


def _user_data(arts: dict[str, Artifact], node: str, kind: str = "seed") -> dict:
    seed = arts[f"images/{node}/{kind}.iso"]
    doc = yaml.safe_load(pycdlib_files(seed.data)["rr"]["user-data"])
    assert isinstance(doc, dict)
    return doc


def test_the_cloud_init_seed_embeds_and_installs_both_packages(debian: pipeline.Result) -> None:
    arts = _by_path(debian)
    doc = _user_data(arts, NODE)
    files = {f["path"]: f for f in doc["write_files"]}
    paths = []
    for kind in ("nomad-config", "consul-config"):
        deb = _one(arts, rf"debian/{kind}-{NODE}_\d+_all\.deb")
        path = f"/var/lib/nomad-build/{deb.path.removeprefix('debian/')}"
        assert files[path]["permissions"] == "0600"
        assert base64.b64decode(files[path]["content"]) == deb.data
        paths.append(path)
    script = files["/usr/local/sbin/nomad-build-install"]["content"]
    # one apt-get run for both: the node is not done until both are in
    assert f"\nset -- {paths[0]} {paths[1]}\n" in script
    assert '"$@" >/run/nomad-build-install.log' in script and 'rm -f "$@"' in script
    assert "consul.service: $(systemctl is-active consul.service)" in script
    marker = files["/var/lib/nomad-build/install-pending"]["content"]
    assert f"nomad-config-{NODE} and consul-config-{NODE} are NOT installed yet" in marker
    r = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_seeds_install_both_from_the_repository(
    debian_repo: tuple[Path, pipeline.Result],
) -> None:
    _, result = debian_repo
    arts = _by_path(result)
    doc = _user_data(arts, NODE)
    files = {f["path"]: f for f in doc["write_files"]}
    assert not [p for p in files if p.endswith(".deb")]  # nothing embedded
    script = files["/usr/local/sbin/nomad-build-install"]["content"]
    assert f"\nset -- nomad-config-{NODE} consul-config-{NODE}\n" in script
    assert 'rm -f "$@"' not in script
    auto = _user_data(arts, NODE, "autoinstall")
    staged = {f["path"]: f for f in auto["write_files"]}
    assert (
        f"set -- nomad-config-{NODE} consul-config-{NODE}\n"
        in (staged["/var/lib/nomad-build/firstboot/nomad-build-install"]["content"])
    )


def test_the_autoinstall_seed_copies_both_packages_into_the_target(
    debian: pipeline.Result,
) -> None:
    arts = _by_path(debian)
    doc = _user_data(arts, NODE, "autoinstall")
    late = doc["autoinstall"]["late-commands"]
    for kind in ("nomad-config", "consul-config"):
        deb = _one(arts, rf"debian/{kind}-{NODE}_\d+_all\.deb")
        path = f"/var/lib/nomad-build/{deb.path.removeprefix('debian/')}"
        assert ["install", "-D", "-m", "0600", path, "/target" + path] in late
        assert path in {f["path"] for f in doc["write_files"]}


# ---------------------------------------------------------------- OpenBSD site set


def test_the_site_set_pkg_adds_both_and_enables_both_agents(
    openbsd: pipeline.Result, tmp_path: Path
) -> None:
    arts = _by_path(openbsd)
    site = arts[f"openbsd-autoinstall/site78-{NODE}.tgz"]
    with tarfile.open(fileobj=io.BytesIO(site.data), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        pkgs = {
            kind: _one(arts, rf"openbsd/{kind}-bi-core-sbg_1-\d+\.tgz")
            for kind in ("nomad-config", "consul-config")
        }
        for pkg in pkgs.values():
            name = f"./var/nomad-build/{pkg.path.removeprefix('openbsd/')}"
            assert members[name].mode == 0o600
            f = tar.extractfile(name)
            assert f is not None and f.read() == pkg.data
        f = tar.extractfile("./install.site")
        assert f is not None
        script = f.read().decode()
    paths = " ".join(f"/var/nomad-build/{p.path.removeprefix('openbsd/')}" for p in pkgs.values())
    assert f"\npkgs='{paths}'\n" in script
    assert 'add="pkg_add -I $pkgs"' in script
    assert "if $add && rcctl enable nomad_agent && rcctl enable consul_agent; then" in script
    retry = "\n\t    rcctl enable consul_agent && rcctl start consul_agent; then"
    assert "rcctl start nomad_agent &&" + retry in script
    # run it with stand-ins for pkg_add and rcctl: one pkg_add run gets both packages
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "log"
    for name, rc in (("pkg_add", 0), ("rcctl", 0), ("id", 1)):  # no admin user: skipped
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >>{log}\nexit {rc}\n')
        (bin_dir / name).chmod(0o755)
    script = script.replace("/etc/", f"{tmp_path}/etc/")
    (tmp_path / "etc").mkdir()
    mksh = shutil.which("mksh")
    assert mksh, "mksh is missing: `make tools` installs scripts/debian-packages.txt"
    r = subprocess.run(
        [mksh, "-c", script],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    assert f"pkg_add -I {paths}" in calls
    assert calls[-2:] == ["rcctl enable nomad_agent", "rcctl enable consul_agent"]


# ---------------------------------------------------------------- check's secret listing


def test_check_lists_the_seeds_and_repositories_holding_the_consul_key(tmp_path: Path) -> None:
    path = _cluster(tmp_path, "debian", 'repo_url = "http://repo.example/debian"\n')
    outputs = pipeline.plan(pipeline.Request("check", path)).outputs()
    held = {o.path for o in outputs if o.node == NODE and o.has_node_key}
    consul = [p for p in held if "consul-config" in p]
    assert any(p.startswith("debian/consul-config-") for p in consul), held
    assert any(p.startswith("repo/debian/pool/main/c/consul-config-") for p in consul), held
    assert {f"images/{NODE}/seed.iso", f"images/{NODE}/autoinstall.iso"} <= held


# ---------------------------------------------------------------- the stand-in agent

STANDIN = Path(__file__).resolve().parent / "fake_consul" / "consul"


def _agent(tmp: Path, config: dict | str, name: str = "agent.json") -> tuple[int, str]:
    """Run the stand-in on one config file; (exit status or 0 if it stayed up, first line)."""
    conf = tmp / name
    conf.write_text(config if isinstance(config, str) else json.dumps(config))
    proc = subprocess.Popen(
        ["perl", str(STANDIN), "agent", f"-config-file={conf}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    try:
        code = proc.wait(timeout=2)
    except subprocess.TimeoutExpired:  # stays running: what the OK path does
        proc.terminate()
        proc.wait(timeout=5)
        code = 0
    proc.stdout.close()
    return code, line


def _pem(tmp: Path, name: str, kind: str) -> str:
    path = tmp / name
    path.write_text(f"-----BEGIN {kind}-----\nAAAA\n-----END {kind}-----\n")
    return str(path)


def _valid(tmp: Path) -> dict:
    return {
        "server": True,
        "bootstrap_expect": 3,
        "datacenter": "sbg",
        "node_name": NODE,
        "data_dir": str(tmp / "data"),
        "encrypt": "A" * 43 + "=",
        "tls": {
            "defaults": {
                "ca_file": _pem(tmp, "ca.pem", "CERTIFICATE"),
                "cert_file": _pem(tmp, "cert.pem", "CERTIFICATE"),
                "key_file": _pem(tmp, "key.pem", "EC PRIVATE KEY"),
            }
        },
    }


def test_the_stand_in_agent_accepts_a_sound_config_and_stays_up(tmp_path: Path) -> None:
    code, line = _agent(tmp_path, _valid(tmp_path))
    assert code == 0, line
    fields = parse_standin_line(line)
    assert fields["server"] == "true" and fields["datacenter"] == "sbg"
    assert fields["tls"] == "true" and fields["data_dir"] == str(tmp_path / "data")
    assert (tmp_path / "data").is_dir()


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda c: c["tls"]["defaults"].update(key_file="/nonexistent/key.pem"), "cannot read"),
        (
            lambda c: c["tls"]["defaults"].update(cert_file=c["tls"]["defaults"]["key_file"]),
            "holds no CERTIFICATE",
        ),
        (lambda c: c.update(encrypt="c2hvcnQ="), "encrypt is not base64"),
        (lambda c: c.pop("bootstrap_expect"), "bootstrap_expect"),
        (lambda c: c.pop("data_dir"), "data_dir is not set"),
    ],
)
def test_the_stand_in_agent_refuses_what_consul_would(
    tmp_path: Path, change: object, why: str
) -> None:
    config = _valid(tmp_path)
    change(config)  # type: ignore[operator]
    code, line = _agent(tmp_path, config)
    assert code == 1 and line.startswith("consul-standin: FAIL ") and why in line, line


def test_the_stand_in_agent_parses_json_and_hcl(tmp_path: Path) -> None:
    code, line = _agent(tmp_path, '{"data_dir": "/x",', "broken.json")
    assert code == 1 and "FAIL" in line, line
    hcl = f'data_dir = "{tmp_path}/d"\nports {{\n  dns = -1\n}}\nretry_join = ["a", "b"]\n'
    code, line = _agent(tmp_path, hcl, "agent.hcl")
    assert code == 0 and parse_standin_line(line)["tls"] == "false", line


# ---------------------------------------------------------------- apt in a bookworm chroot


def _hashicorp_source(root: Path, debs: list[Path]) -> None:
    """A flat, trusted apt source inside root holding the stand-ins: what HashiCorp's
    apt repository is to a real node."""
    served = root / HASHICORP_INSIDE.lstrip("/")
    served.mkdir(parents=True)
    for deb in debs:
        shutil.copy(deb, served / deb.name)
    scan = subprocess.run(
        ["dpkg-scanpackages", "--multiversion", ".", "/dev/null"],
        cwd=served,
        capture_output=True,
        check=True,
    )
    (served / "Packages.gz").write_bytes(gzip.compress(scan.stdout, mtime=0))
    line = f"deb [trusted=yes] file:{HASHICORP_INSIDE} ./\n"
    (root / "etc/apt/sources.list.d/hashicorp-standin.list").write_text(line)


@pytest.mark.slow
def test_apt_installs_both_packages_from_the_signed_repository(
    debian_repo: tuple[Path, pipeline.Result], tmp_path: Path
) -> None:
    directory, _ = debian_repo
    root = debian_chroot.chroot(tmp_path)
    served = root / REPO_INSIDE.lstrip("/")
    shutil.copytree(directory / "dist" / "repo", served / "repo")
    repo = served / "repo" / "debian"
    keyring = root / "etc/apt/keyrings/nomad-build-archive-keyring.gpg"
    keyring.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(repo / "nomad-build-archive-keyring.gpg", keyring)
    sources = root / "etc/apt/sources.list.d"
    for other in sources.iterdir():  # no mirror needed: the base has the rest
        other.rename(other.with_name(other.name + ".disabled"))
    shutil.copyfile(repo / "nomad-build.sources", sources / "nomad-build.sources")
    standins = [build_fake_consul_deb(tmp_path / "c"), build_fake_nomad_deb(tmp_path / "n")]
    _hashicorp_source(root, standins)
    debian_chroot.deny_service_starts(root)

    r = debian_chroot.run_in(root, "apt-get", "update", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    packages = [f"nomad-config-{NODE}", f"consul-config-{NODE}"]
    r = debian_chroot.run_in(root, "apt-get", "install", "-y", *packages, check=False, proc=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "cannot be authenticated" not in out, out
    status = debian_chroot.run_in(
        root, "dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Status}\n",
        *packages, "consul",
    ).stdout  # fmt: skip
    assert sorted(status.splitlines()) == [
        f"consul {STANDIN_VERSION} installed",
        f"consul-config-{NODE} 1 installed",
        f"nomad-config-{NODE} 1 installed",
    ]
    assert "consul.service start" in debian_chroot.service_actions(root)
    # HashiCorp's postinst chowned /etc/consul.d to consul; ours put the owners back
    key = root / "etc/consul.d/tls/consul-key.pem"
    stat = debian_chroot.run_in(root, "stat", "-c", "%U:%G %a", "/etc/consul.d/tls/consul-key.pem")
    assert key.exists() and stat.stdout.split() == ["root:consul", "640"]
    # the stand-in agent, as HashiCorp's unit + our drop-in run it: user consul
    dropin = (root / "usr/lib/systemd/system/consul.service.d/nomad-build.conf").read_text()
    assert "\nUser=consul\n" in dropin
    (exec_start,) = [x[10:] for x in dropin.splitlines() if x.startswith("ExecStart=/")]
    r = debian_chroot.run_in(
        root, "timeout", "5", "setpriv", "--reuid=consul", "--regid=consul", "--init-groups",
        *exec_start.split(), check=False,
    )  # fmt: skip
    assert r.returncode == 124, r.stdout + r.stderr  # still running when timeout stopped it
    fields = parse_standin_line(r.stdout.splitlines()[0])
    assert fields["user"] == "consul" and fields["server"] == "true", fields
    assert fields["configs"] == "/etc/consul.d/nomad-build.json" and fields["tls"] == "true"
