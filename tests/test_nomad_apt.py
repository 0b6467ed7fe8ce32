"""[packages.nomad_apt]: images add HashiCorp's apt source so a stock Debian/Ubuntu image
can install the `nomad` package the node's package needs.

HashiCorp's repository cannot be reached here: a TEST-ONLY stand-in is built with our
own apt_repo writer (suite bookworm, as HashiCorp's suites are release code names),
holding the stand-in `nomad` (tests/fake_nomad), signed by a key made for the test.
apt in a bookworm chroot must then install `nomad` through exactly the source line and
keyring the seeds write.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from builder import openpgp
from builder.cluster import load
from builder.model import Cluster
from builder.render import render_node
from builder.state import State
from builder.writers import Artifact
from builder.writers.apt_repo import build_apt_repo
from builder.writers.autoinstall import build_autoinstall_seed
from builder.writers.cloud_init import build_cloud_init_seed
from builder.writers.deb import build_deb

import debian_chroot
from conftest import bundle_table, nomad_build, pycdlib_files, write_cluster
from fake_nomad import STANDIN_VERSION, build_fake_nomad_deb

MTIME = 1_700_000_000
INSIDE = "/srv/hashicorp"  # where the chroot sees the stand-in repository
URL = f"file://{INSIDE}/repo/debian"
KEYRING_PATH = "/etc/apt/keyrings/hashicorp-archive-keyring.gpg"
NODE = "bi-core-sbg-1"
# bcrypt of a throwaway password: autoinstall seeds need one
PASSWORD_HASH = "$2b$06$nomadbuildtestsaltsaleYfl.IH3FEPJymiepEcpefqem08fXSuy"


def nomad_apt_table(keyring: str = "hashicorp.gpg", url: str = URL) -> str:
    return f'\n[packages.nomad_apt]\nurl = "{url}"\nkeyring = "{keyring}"\n'


def cluster_with(directory: Path, append: str) -> Path:
    path = write_cluster(directory, "debian", append)
    text = path.read_text().replace("[images]\n", f'[images]\npassword_hash = "{PASSWORD_HASH}"\n')
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def hashicorp_key() -> bytes:
    return openpgp.generate_key("TEST-ONLY stand-in for HashiCorp's apt key", created=MTIME)


@pytest.fixture(scope="module")
def seeds(
    hashicorp_key: bytes, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Cluster, dict[str, bytes]]:
    directory = tmp_path_factory.mktemp("nomad-apt")
    (directory / "hashicorp.gpg").write_bytes(openpgp.public_keyring(hashicorp_key))
    cluster = load(cluster_with(directory, nomad_apt_table()))
    node = cluster.node(NODE)
    with State.open(directory / "state", create=True) as st:
        tree = render_node(cluster, node, st)
    deb = build_deb(node, tree, version=1, mtime=MTIME)
    cloud = build_cloud_init_seed(node, tree, deb=deb, repo_keyring=None, mtime=MTIME)
    auto = build_autoinstall_seed(node, tree, deb=deb, repo_keyring=None, mtime=MTIME)
    return cluster, {
        "cloud-init": pycdlib_files(cloud.data)["rr"]["user-data"],
        "autoinstall": pycdlib_files(auto.data)["rr"]["user-data"],
    }


def test_cloud_init_adds_hashicorps_source_and_key(
    seeds: tuple[Cluster, dict[str, bytes]], hashicorp_key: bytes, tmp_path: Path
) -> None:
    user_data = seeds[1]["cloud-init"]
    path = tmp_path / "user-data"
    path.write_bytes(user_data)
    r = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    doc = yaml.safe_load(user_data)
    assert doc["apt"] == {
        "preserve_sources_list": True,
        "sources": {
            "hashicorp.list": {"source": f"deb [signed-by={KEYRING_PATH}] {URL} $RELEASE main"}
        },
    }
    by_path = {f["path"]: f for f in doc["write_files"]}
    assert base64.b64decode(by_path[KEYRING_PATH]["content"]) == openpgp.public_keyring(
        hashicorp_key
    )
    assert by_path[KEYRING_PATH]["permissions"] == "0644"
    # the first-boot installer refreshes the lists (HashiCorp's included) before it installs
    installer = by_path["/usr/local/sbin/nomad-build-install"]["content"]
    assert installer.index("apt-get update") < installer.index("apt-get install")


def test_without_nomad_apt_seeds_leave_apt_alone(tmp_path: Path) -> None:
    cluster = load(cluster_with(tmp_path, ""))
    node = cluster.node(NODE)
    with State.open(tmp_path / "state", create=True) as st:
        tree = render_node(cluster, node, st)
    deb = build_deb(node, tree, version=1, mtime=MTIME)
    art = build_cloud_init_seed(node, tree, deb=deb, repo_keyring=None, mtime=MTIME)
    doc = yaml.safe_load(pycdlib_files(art.data)["rr"]["user-data"])
    assert "apt" not in doc and "package_update" not in doc


def stand_in_hashicorp_repo(key: bytes, out: Path) -> Path:
    """The TEST-ONLY stand-in of apt.releases.hashicorp.com, written under out."""
    nomad = build_fake_nomad_deb(out / "build")
    repo = build_apt_repo(
        [Artifact(f"debian/{nomad.name}", nomad.read_bytes(), secret=False)],
        suite="bookworm",
        component="main",
        signing_key=key,
        mtime=MTIME,
    )
    for a in repo:
        dest = out / "served" / a.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(a.data)
    return out / "served"


def node_root(tmp_path: Path, served: Path) -> Path:
    """A bookworm root whose only apt source will be the one the seed writes."""
    root = debian_chroot.chroot(tmp_path)
    shutil.copytree(served, root / INSIDE.lstrip("/"))
    sources = root / "etc/apt/sources.list.d"
    for f in [*sources.iterdir(), root / "etc/apt/sources.list"]:
        if f.exists():
            f.rename(f.with_name(f.name + ".disabled"))
    return root


def apt_installs_nomad(root: Path) -> None:
    r = debian_chroot.run_in(root, "apt-get", "update", check=False)
    assert r.returncode == 0 and "W:" not in r.stdout + r.stderr, r.stdout + r.stderr
    r = debian_chroot.run_in(root, "apt-get", "install", "-y", "nomad", check=False, proc=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cannot be authenticated" not in r.stdout + r.stderr
    status = debian_chroot.run_in(
        root, "dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Status}", "nomad"
    ).stdout
    assert status == f"nomad {STANDIN_VERSION} installed"


@pytest.mark.slow
def test_apt_installs_nomad_through_the_cloud_init_source(
    seeds: tuple[Cluster, dict[str, bytes]], hashicorp_key: bytes, tmp_path: Path
) -> None:
    root = node_root(tmp_path, stand_in_hashicorp_repo(hashicorp_key, tmp_path / "repo"))
    doc = yaml.safe_load(seeds[1]["cloud-init"])
    # What cloud-init's apt-configure does with the entry: $RELEASE is the code name.
    line = doc["apt"]["sources"]["hashicorp.list"]["source"].replace("$RELEASE", "bookworm")
    (root / "etc/apt/sources.list.d/hashicorp.list").write_text(line + "\n")
    key = next(f for f in doc["write_files"] if f["path"] == KEYRING_PATH)
    (root / KEYRING_PATH.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (root / KEYRING_PATH.lstrip("/")).write_bytes(base64.b64decode(key["content"]))
    apt_installs_nomad(root)


@pytest.mark.slow
def test_apt_installs_nomad_through_the_autoinstall_late_commands(
    seeds: tuple[Cluster, dict[str, bytes]], hashicorp_key: bytes, tmp_path: Path
) -> None:
    """The late-commands run as the installer runs them, with the chroot as /target."""
    root = node_root(tmp_path, stand_in_hashicorp_repo(hashicorp_key, tmp_path / "repo"))
    doc = yaml.safe_load(seeds[1]["autoinstall"])
    staging = tmp_path / "live"  # the live session's files (write_files)
    for f in doc["write_files"]:
        dest = staging / f["path"].lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        raw = f["content"]
        dest.write_bytes(base64.b64decode(raw) if f.get("encoding") == "b64" else raw.encode())
    install, write_source = doc["autoinstall"]["late-commands"][:2]
    assert install[:4] == ["install", "-D", "-m", "0644"]
    src, dest = install[4:]
    subprocess.run(
        [*install[:4], str(staging / src.lstrip("/")), dest.replace("/target", str(root))],
        check=True,
    )
    assert write_source[:2] == ["sh", "-ec"]
    subprocess.run(["sh", "-ec", write_source[2].replace("/target", str(root))], check=True)
    listed = (root / "etc/apt/sources.list.d/hashicorp.list").read_text()
    assert listed == f"deb [signed-by={KEYRING_PATH}] {URL} bookworm main\n"
    apt_installs_nomad(root)


@pytest.mark.parametrize(
    ("setup", "expect"),
    [
        (lambda d: None, "packages.nomad_apt.keyring: .*hashicorp.gpg: no such file"),
        (
            lambda d: (d / "hashicorp.gpg").write_text("not a key\n"),
            "packages.nomad_apt.keyring: .* is not an OpenPGP public key",
        ),
    ],
)
def test_bad_keyring_is_refused(tmp_path: Path, setup, expect: str) -> None:
    import re

    setup(tmp_path)
    cluster_with(tmp_path, nomad_apt_table())
    proc = nomad_build(tmp_path, "check")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert re.search(expect, proc.stderr), proc.stderr


def test_nomad_apt_and_a_bundle_exclude_each_other(tmp_path: Path) -> None:
    (tmp_path / "hashicorp.gpg").write_bytes(
        openpgp.public_keyring(openpgp.generate_key("t", created=MTIME))
    )
    append = nomad_apt_table() + bundle_table(tmp_path, b"#!/bin/sh\n")
    cluster_with(tmp_path, append)
    proc = nomad_build(tmp_path, "check")
    assert proc.returncode == 2
    assert "packages.nomad_apt: not used with a bundled binary" in proc.stderr, proc.stderr


def test_armored_key_goes_to_an_asc_file(tmp_path: Path) -> None:
    key = openpgp.generate_key("t", created=MTIME)
    (tmp_path / "hashicorp.gpg").write_bytes(openpgp.armored_public_key(key))
    cluster = load(cluster_with(tmp_path, nomad_apt_table()))
    apt = cluster.packages.nomad_apt
    assert apt is not None and apt.keyring_path.endswith("hashicorp-archive-keyring.asc")
