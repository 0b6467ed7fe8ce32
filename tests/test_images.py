"""Node images: cloud-init seeds, Ubuntu autoinstall seeds, OpenBSD autoinstall trees.

Oracles: Debian's cloud-init (`cloud-init schema`, `cloud-init devel net-convert`
with its ifupdown and netplan renderers), isoinfo and xorriso reading the ISOs
back, pycdlib reading them back, subiquity's autoinstall JSON schema (the part
this project uses, copied from canonical/subiquity's autoinstall-schema.json),
OpenBSD install.sub's response-file matcher (ported below, run over the
installer's real questions), signify-openbsd, GNU sha256sum -c, mksh -n.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from builder import signify
from builder.cluster import load
from builder.errors import BuildError, UserError
from builder.model import Cluster, Node
from builder.nodetree import NodeTree
from builder.render import render_node
from builder.seed import network_plan, seed_iso
from builder.state import State
from builder.writers import Artifact
from builder.writers.autoinstall import AutoinstallWriter, build_autoinstall_seed
from builder.writers.cloud_init import CloudInitWriter, build_cloud_init_seed
from builder.writers.deb import build_deb
from builder.writers.openbsd_autoinstall import (
    NO_PASSWORD,
    build_openbsd_autoinstall,
    split_sets_url,
)
from builder.writers.openbsd_pkg import build_openbsd_pkg

from conftest import example_text, pycdlib_files

MTIME = 1_700_000_000
PASSWORD = "correct horse battery staple"  # plain text: must never be in an image
KEYS = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@laptop",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBW3xSrG2mBf2hTZrB7yjO5XSN0S6ulDQ4aIUvW1Zo0L ops@desk",
)
SETS_URL = "http://10.20.130.10/pub/OpenBSD/7.8/amd64"
REPO_URL = "http://10.20.130.10/repo/debian"
KEY_NAME = "bi-sbg-pkg"
MAC = "52:54:00:AB:CD:03"  # as an operator may write it; images use lower case
STATIC = (
    f'mac = "{MAC}"\nprefix = 24\ngateway = "10.20.131.1"\n'
    'nameservers = ["10.20.130.1", "10.20.130.2"]\n'
)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: `make tools` installs scripts/debian-packages.txt")
    return path


def crypt_hash(method: str) -> str:
    """A real crypt(3) hash of PASSWORD: sha512-crypt by `openssl passwd -6`, bcrypt ($2b$,
    OpenBSD's kind) by the bcrypt package."""
    if method == "bcrypt":
        import bcrypt

        h = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
        assert bcrypt.checkpw(PASSWORD.encode(), h.encode())
        return h
    return openssl_sha512(PASSWORD, salt=None)


def openssl_sha512(password: str, salt: str | None) -> str:
    cmd = [tool("openssl"), "passwd", "-6", "-stdin"] + (["-salt", salt] if salt else [])
    out = subprocess.run(cmd, input=password, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@dataclasses.dataclass
class Built:
    cluster: Cluster
    trees: dict[str, NodeTree]

    def node(self, name: str) -> Node:
        return self.cluster.node(name)


def make_cluster(directory: Path, os_name: str, *, images: str = "", last_node: str = "") -> Built:
    """The example cluster on `os_name`, extra [images] keys, extra keys on the last node."""
    directory.mkdir(parents=True, exist_ok=True)
    text = example_text(os_name)
    text = re.sub(r"^openbsd_sets_url = .*\n", "", text, flags=re.M)
    if "ssh_keys" in images:  # the test's keys instead of the example's
        text = re.sub(r"^ssh_keys = .*\n", "", text, count=1, flags=re.M)
    text = text.replace('admin_user = "ops"\n', 'admin_user = "ops"\n' + images, 1)
    text += last_node
    (directory / "cluster.toml").write_text(text)
    cluster = load(directory / "cluster.toml")
    with State.open(directory / "state", create=True) as st:
        trees = {n.name: render_node(cluster, n, st) for n in cluster.nodes}
    return Built(cluster, trees)


def images_keys(password_hash: str | None = None, **extra: str) -> str:
    lines = [f"ssh_keys = {list(KEYS)!r}".replace("'", '"')]
    if password_hash:
        lines.append(f"password_hash = {password_hash!r}")
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in extra.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- ISO reading
def iso_names(iso: Path, ns: str) -> list[str]:
    out = subprocess.run(
        [tool("isoinfo"), ns, "-f", "-i", str(iso)], capture_output=True, text=True, check=True
    ).stdout
    return sorted(line.strip() for line in out.splitlines() if line.strip())


def isoinfo_file(iso: Path, ns: str, name: str) -> bytes:
    return subprocess.run(
        [tool("isoinfo"), ns, "-i", str(iso), "-x", name], capture_output=True, check=True
    ).stdout


def xorriso_files(iso: Path, dest: Path) -> dict[str, bytes]:
    subprocess.run(
        [tool("xorriso"), "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(dest)],
        capture_output=True,
        check=True,
    )
    return {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()}


def read_seed(art: Artifact, tmp: Path) -> dict[str, bytes]:
    """The seed's files, read back by isoinfo (RR and Joliet), xorriso and pycdlib; all agree."""
    tmp.mkdir(parents=True, exist_ok=True)
    iso = tmp / "seed.iso"
    iso.write_bytes(art.data)
    rr = {n.lstrip("/"): isoinfo_file(iso, "-R", n) for n in iso_names(iso, "-R")}
    joliet = {n.lstrip("/"): isoinfo_file(iso, "-J", n) for n in iso_names(iso, "-J")}
    xo = xorriso_files(iso, tmp / "xorriso")
    py = pycdlib_files(art.data)
    assert rr == joliet == xo == py["rr"] == py["joliet"]
    # the plain ISO 9660 names (META_DATA.;1 ...) hold the same bytes
    assert sorted(py["iso"].values()) == sorted(rr.values())
    return rr


def yaml_doc(data: bytes) -> dict:
    doc = yaml.safe_load(data)
    assert isinstance(doc, dict)
    return doc


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Debian nodes, SSH keys and a sha512-crypt hash, the last node static with a MAC."""
    return make_cluster(
        tmp_path_factory.mktemp("debian"),
        "debian",
        images=images_keys(crypt_hash("sha512")),
        last_node=STATIC,
    )


@pytest.fixture(scope="module")
def debs(debian: Built) -> dict[str, Artifact]:
    return {
        n.name: build_deb(n, debian.trees[n.name], version=1, mtime=MTIME)
        for n in debian.cluster.nodes
    }


@pytest.fixture(scope="module")
def seeds(debian: Built, debs: dict[str, Artifact]) -> dict[str, Artifact]:
    return {
        n.name: build_cloud_init_seed(
            n, debian.trees[n.name], deb=debs[n.name], repo_keyring=None, mtime=MTIME
        )
        for n in debian.cluster.nodes
    }


@pytest.fixture(scope="module")
def seed_files(seeds: dict[str, Artifact], tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("seeds")
    return {name: read_seed(art, base / name) for name, art in seeds.items()}


# ================================================================ cloud-init
def test_seed_paths_label_and_secret(seeds: dict[str, Artifact], tmp_path: Path) -> None:
    for name, art in seeds.items():
        assert art.path == f"images/{name}/seed.iso"
        assert art.secret  # the .deb inside holds the node key
        iso = tmp_path / f"{name}.iso"
        iso.write_bytes(art.data)
        info = subprocess.run(
            [tool("isoinfo"), "-d", "-i", str(iso)], capture_output=True, text=True, check=True
        ).stdout
        assert re.search(r"^Volume id: cidata$", info, re.M), info
        assert "Joliet" in info and "Rock Ridge" in info, info


def test_seed_files_read_back_identically_by_every_reader(seed_files: dict) -> None:
    for name, files in seed_files.items():
        # every example node names its interface (eth1): each seed has a network-config
        assert set(files) == {"user-data", "meta-data", "network-config"}, name
        assert files["user-data"].startswith(b"#cloud-config\n")


def test_seed_iso_holds_exactly_the_given_bytes(tmp_path: Path) -> None:
    files = [
        ("user-data", b"#cloud-config\nhostname: x\n"),
        ("meta-data", b"instance-id: i-1\n"),
        ("network-config", bytes(range(256)) * 40),  # binary, several blocks
    ]
    art = Artifact("images/x/seed.iso", seed_iso(files, mtime=MTIME), secret=True)
    assert read_seed(art, tmp_path) == dict(files)


def test_every_user_data_passes_cloud_init_schema(seed_files: dict, tmp_path: Path) -> None:
    cloud_init = tool("cloud-init")
    for name, files in seed_files.items():
        path = tmp_path / f"{name}.user-data"
        path.write_bytes(files["user-data"])
        r = subprocess.run(
            [cloud_init, "schema", "--config-file", str(path)], capture_output=True, text=True
        )
        assert r.returncode == 0 and "Valid cloud-config" in r.stdout, (name, r.stdout, r.stderr)
    # the oracle does refuse a wrong one
    bad = tmp_path / "bad"
    bad.write_bytes(
        seed_files["bi-core-sbg-1"]["user-data"].replace(b"shell: /bin/bash", b"shell: [1]")
    )
    r = subprocess.run(
        [cloud_init, "schema", "--config-file", str(bad)], capture_output=True, text=True
    )
    assert r.returncode != 0


def test_user_data_embeds_the_package_and_installs_it(
    debian: Built, debs: dict[str, Artifact], seed_files: dict
) -> None:
    for node in debian.cluster.nodes:
        doc = yaml_doc(seed_files[node.name]["user-data"])
        assert doc["hostname"] == node.name
        assert doc["fqdn"] == node.fqdn == f"{node.name}.intra.terror.ninja"
        assert doc["manage_etc_hosts"] is True
        (user,) = doc["users"]
        assert user["name"] == "ops"
        assert user["ssh_authorized_keys"] == list(KEYS)
        assert user["hashed_passwd"] == node.images.password_hash
        assert user["lock_passwd"] is False
        wf, marker, script, unit, *dns = doc["write_files"]
        deb_name = debs[node.name].path.split("/")[-1]
        assert wf["path"] == f"/var/lib/nomad-build/{deb_name}"
        assert wf["encoding"] == "b64" and wf["permissions"] == "0600"
        assert base64.b64decode(wf["content"]) == debs[node.name].data
        # a first-boot service installs it, retrying until it is in
        assert marker["path"] == "/var/lib/nomad-build/install-pending"
        assert "is NOT installed yet" in marker["content"]
        assert script["path"] == "/usr/local/sbin/nomad-build-install"
        assert script["permissions"] == "0755"
        assert f"\nset -- {wf['path']}\n" in script["content"]
        assert "apt-get install -y -q --no-install-recommends" in script["content"]
        assert "--force-confold" in script["content"]
        assert unit["path"] == "/etc/systemd/system/nomad-build-install.service"
        assert "ExecStart=/usr/local/sbin/nomad-build-install\n" in unit["content"]
        assert doc["runcmd"][-2:] == [
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", "--no-block", "nomad-build-install.service"],
        ]
        # the cluster file's DNS servers, put in place first unless a manager owns the file
        if node.nameservers:
            (conf,) = dns
            assert conf["path"] == "/etc/nomad-build/resolv.conf"
            lines = conf["content"].splitlines()
            assert lines[1:] == [
                f"search {node.domain}",
                *(f"nameserver {ns}" for ns in node.nameservers),
            ]
            (put,) = doc["runcmd"][:-2]
            assert put[:2] == ["sh", "-ec"] and "if [ ! -L /etc/resolv.conf ]; then" in put[2]
            assert "supersede domain-name-servers " + ", ".join(node.nameservers) in put[2]
        else:
            assert dns == [] and len(doc["runcmd"]) == 2
        assert "packages" not in doc and "apt" not in doc
        # the plain password is nowhere, its hash is
        raw = seed_files[node.name]["user-data"]
        assert PASSWORD.encode() not in raw


def test_user_data_from_the_signed_repository(debian: Built, tmp_path: Path) -> None:
    built = make_cluster(
        tmp_path / "c",
        "debian",
        images=images_keys(),
        last_node="",
    )
    text = (tmp_path / "c" / "cluster.toml").read_text()
    text = text.replace('maintainer = "', f'repo_url = "{REPO_URL}"\nmaintainer = "', 1)
    (tmp_path / "c" / "cluster.toml").write_text(text)
    cluster = load(tmp_path / "c" / "cluster.toml")
    node = cluster.node("bi-node-sbg-2")
    tree = built.trees[node.name]
    deb = build_deb(node, tree, version=1, mtime=MTIME)
    keyring = b"\x98\x33" + b"binary keyring bytes"
    art = build_cloud_init_seed(node, tree, deb=deb, repo_keyring=keyring, mtime=MTIME)
    files = read_seed(art, tmp_path / "iso")
    ud = tmp_path / "user-data"
    ud.write_bytes(files["user-data"])
    r = subprocess.run(
        [tool("cloud-init"), "schema", "--config-file", str(ud)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    doc = yaml_doc(files["user-data"])
    assert "package_update" not in doc and "packages" not in doc  # the installer does it
    assert doc["runcmd"][-1] == [
        "systemctl", "enable", "--now", "--no-block", "nomad-build-install.service"
    ]  # fmt: skip
    by_path = {f["path"]: f for f in doc["write_files"]}
    assert set(by_path) == {
        "/etc/apt/keyrings/nomad-build-archive-keyring.gpg",
        "/etc/apt/sources.list.d/nomad-build.sources",
        "/var/lib/nomad-build/install-pending",
        "/usr/local/sbin/nomad-build-install",
        "/etc/systemd/system/nomad-build-install.service",
    }
    installer = by_path["/usr/local/sbin/nomad-build-install"]["content"]
    assert f"\nset -- {node.deb_package}\n" in installer
    assert (
        base64.b64decode(by_path["/etc/apt/keyrings/nomad-build-archive-keyring.gpg"]["content"])
        == keyring
    )
    sources = by_path["/etc/apt/sources.list.d/nomad-build.sources"]["content"]
    fields = dict(
        line.split(": ", 1) for line in sources.splitlines() if line and not line.startswith("#")
    )
    assert fields == {
        "Types": "deb",
        "URIs": REPO_URL,
        "Suites": "stable",
        "Components": "main",
        "Signed-By": "/etc/apt/keyrings/nomad-build-archive-keyring.gpg",
    }
    # the package itself is not in this seed: apt fetches it
    assert deb.data[-200:] not in files["user-data"]
    assert base64.b64encode(deb.data[:300]) not in files["user-data"]
    # no keyring, no seed
    with pytest.raises(BuildError):
        build_cloud_init_seed(node, tree, deb=deb, repo_keyring=None, mtime=MTIME)


def test_meta_data_instance_id_follows_the_content(
    debian: Built, debs: dict[str, Artifact], seed_files: dict, tmp_path: Path
) -> None:
    ids = set()
    for node in debian.cluster.nodes:
        meta = yaml_doc(seed_files[node.name]["meta-data"])
        assert meta["local-hostname"] == node.name
        assert re.fullmatch(rf"nomad-build-{node.name}-[0-9a-f]{{16}}", meta["instance-id"])
        ids.add(meta["instance-id"])
    assert len(ids) == len(debian.cluster.nodes)
    node = debian.node("bi-core-sbg-1")
    tree = debian.trees[node.name]
    newer = build_deb(node, tree, version=2, mtime=MTIME)
    art = build_cloud_init_seed(node, tree, deb=newer, repo_keyring=None, mtime=MTIME)
    meta = yaml_doc(read_seed(art, tmp_path)["meta-data"])
    old = yaml_doc(seed_files[node.name]["meta-data"])
    assert meta["instance-id"] != old["instance-id"]  # a new package is a new instance


def net_convert(network_config: bytes, tmp: Path, fmt: str) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    src = tmp / "network-config"
    src.write_bytes(network_config)
    out = tmp / fmt
    r = subprocess.run(
        [tool("cloud-init"), "devel", "net-convert", "-p", str(src), "-k", "yaml",
         "-D", "debian", "-d", str(out), "-O", fmt],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def eni_stanza(out: Path, iface: str) -> list[str]:
    text = (out / "etc/network/interfaces.d/50-cloud-init").read_text()
    stanzas = re.split(r"\n(?=auto )", text)
    (stanza,) = [s for s in stanzas if s.startswith(f"auto {iface}\n")]
    return [line.strip() for line in stanza.splitlines()]


def test_network_config_static_with_mac_renders_for_debian(
    seed_files: dict, tmp_path: Path
) -> None:
    nc = seed_files["bi-node-sbg-3"]["network-config"]
    out = net_convert(nc, tmp_path, "eni")
    lines = eni_stanza(out, "eth1")
    assert "iface eth1 inet static" in lines
    assert "address 10.20.131.43/24" in lines
    assert "gateway 10.20.131.1" in lines
    assert "dns-nameservers 10.20.130.1 10.20.130.2" in lines
    assert "dns-search intra.terror.ninja" in lines
    udev = (out / "etc/udev/rules.d/70-persistent-net.rules").read_text()
    assert f'ATTR{{address}}=="{MAC.lower()}", NAME="eth1"' in udev
    plan = yaml.safe_load(
        (net_convert(nc, tmp_path / "np", "netplan") / "etc/netplan/50-cloud-init.yaml").read_text()
    )
    eth = plan["network"]["ethernets"]["eth1"]
    assert eth["addresses"] == ["10.20.131.43/24"]
    assert eth["match"] == {"macaddress": MAC.lower()}
    assert eth["set-name"] == "eth1"
    assert eth["nameservers"]["addresses"] == ["10.20.130.1", "10.20.130.2"]


def test_network_config_dhcp_and_interface_only(
    debian: Built, seed_files: dict, tmp_path: Path
) -> None:
    nc = seed_files["bi-node-sbg-1"]["network-config"]  # interface eth1, no prefix: DHCP
    lines = eni_stanza(net_convert(nc, tmp_path, "eni"), "eth1")
    assert "iface eth1 inet dhcp" in lines
    assert not any(line.startswith("address") for line in lines)
    # a static address keyed by the interface name alone (no MAC)
    node = dataclasses.replace(debian.node("bi-node-sbg-3"), mac=None)
    art = build_cloud_init_seed(
        node,
        debian.trees[node.name],
        deb=Artifact(f"debian/{node.deb_package}_1_all.deb", b"x", True),
        repo_keyring=None,
        mtime=MTIME,
    )
    nc = read_seed(art, tmp_path / "iso")["network-config"]
    out = net_convert(nc, tmp_path / "static", "eni")
    lines = eni_stanza(out, "eth1")
    assert "iface eth1 inet static" in lines and "address 10.20.131.43/24" in lines
    assert (out / "etc/udev/rules.d/70-persistent-net.rules").read_text().strip() == ""


def test_network_needs_a_nic_for_a_static_address(debian: Built) -> None:
    node = debian.node("bi-node-sbg-3")
    bare = dataclasses.replace(node, interface=None, mac=None)
    # the writer's check (run in the plan, before anything is written) names the keys
    for writer in (CloudInitWriter(), AutoinstallWriter()):
        (problem,) = writer.check(debian.cluster, bare)
        assert "(bi-node-sbg-3).prefix:" in problem and "interface or mac" in problem
    with pytest.raises(BuildError, match="interface or mac"):
        network_plan(bare)
    # DHCP on whatever NIC comes first: cloud-init's own fallback, no network-config
    assert network_plan(dataclasses.replace(bare, prefix=None)) is None
    # a MAC alone: matched and named
    plan = network_plan(dataclasses.replace(node, interface=None))
    assert plan is not None and plan.mac == MAC.lower() and plan.key == "eth0"


def test_seeds_are_byte_identical_across_runs_and_time_zones(
    debian: Built, debs: dict[str, Artifact], seeds: dict[str, Artifact]
) -> None:
    node = debian.node("bi-node-sbg-3")
    tree = debian.trees[node.name]
    old_tz = os.environ.get("TZ")
    try:
        os.environ["TZ"] = "Pacific/Chatham"  # +12:45/+13:45: every field of a date moves
        time.tzset()
        again = build_cloud_init_seed(
            node, tree, deb=debs[node.name], repo_keyring=None, mtime=MTIME
        )
    finally:
        if old_tz is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old_tz
        time.tzset()
    assert again == seeds[node.name]
    later = build_cloud_init_seed(
        node, tree, deb=debs[node.name], repo_keyring=None, mtime=MTIME + 86400
    )
    assert later.data != again.data  # the volume dates come from mtime


# ================================================================ autoinstall
# The part of canonical/subiquity's autoinstall-schema.json this project uses,
# as published (timezone's long enum shortened to a string), plus what we require.
AUTOINSTALL_SCHEMA = {
    "type": "object",
    "properties": {
        "version": {"type": "integer", "minimum": 1, "maximum": 1},
        "identity": {
            "type": "object",
            "properties": {
                "realname": {"type": "string"},
                "username": {"type": "string"},
                "hostname": {"type": "string"},
                "password": {"type": "string"},
            },
            "required": ["username", "hostname", "password"],
            "additionalProperties": False,
        },
        "ssh": {
            "type": "object",
            "properties": {
                "install-server": {"type": "boolean"},
                "authorized-keys": {"type": "array", "items": {"type": "string"}},
                "allow-pw": {"type": "boolean"},
            },
        },
        "storage": {"type": "object"},
        "timezone": {"type": "string"},
        "network": {
            "type": "object",
            "properties": {
                "version": {"type": "integer", "minimum": 2, "maximum": 2},
                "ethernets": {"type": "object"},
            },
            "required": ["version"],
        },
        "late-commands": {
            "type": "array",
            "items": {"type": ["string", "array"], "items": {"type": "string"}},
        },
    },
    "required": ["version", "identity", "ssh", "storage", "late-commands"],
    "additionalProperties": True,
}


@pytest.fixture(scope="module")
def autoinstall(debian: Built, debs: dict[str, Artifact]) -> dict[str, Artifact]:
    return {
        n.name: build_autoinstall_seed(
            n, debian.trees[n.name], deb=debs[n.name], repo_keyring=None, mtime=MTIME
        )
        for n in debian.cluster.nodes
    }


def test_autoinstall_user_data(
    debian: Built, debs: dict[str, Artifact], autoinstall: dict[str, Artifact], tmp_path: Path
) -> None:
    for node in debian.cluster.nodes:
        art = autoinstall[node.name]
        assert art.path == f"images/{node.name}/autoinstall.iso" and art.secret
        files = read_seed(art, tmp_path / node.name)
        assert set(files) == {"user-data", "meta-data"}
        assert PASSWORD.encode() not in art.data  # only the hash travels
        ud = files["user-data"]
        assert ud.startswith(b"#cloud-config\n")
        path = tmp_path / f"{node.name}.user-data"
        path.write_bytes(ud)
        r = subprocess.run(
            [tool("cloud-init"), "schema", "--config-file", str(path)],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        doc = yaml_doc(ud)
        ai = doc["autoinstall"]
        jsonschema.validate(ai, AUTOINSTALL_SCHEMA)
        assert ai["version"] == 1
        assert ai["identity"]["hostname"] == node.name
        assert ai["identity"]["username"] == "ops"
        password = ai["identity"]["password"]
        assert password == node.images.password_hash and password.startswith("$6$")
        salt = password.split("$")[2]
        assert openssl_sha512(PASSWORD, salt) == password  # it is the hash of PASSWORD
        assert ai["ssh"] == {
            "install-server": True,
            "allow-pw": False,
            "authorized-keys": list(KEYS),
        }
        assert ai["storage"]["layout"]["name"] in ("lvm", "direct")
        assert ai["timezone"] == "UTC" and Path("/usr/share/zoneinfo/UTC").exists()
        # the live session stages the .deb; late-commands install it into /target
        deb_name = debs[node.name].path.split("/")[-1]
        staged = f"/var/lib/nomad-build/{deb_name}"
        wf, *firstboot = doc["write_files"]
        assert wf["path"] == staged and wf["permissions"] == "0600"
        assert base64.b64decode(wf["content"]) == debs[node.name].data
        copy, *install, enable = ai["late-commands"]
        assert copy == ["install", "-D", "-m", "0600", staged, "/target" + staged]
        # the installed system's first boot installs it (retrying until it is in)
        assert [c[-1] for c in install] == [
            "/target/var/lib/nomad-build/install-pending",
            "/target/usr/local/sbin/nomad-build-install",
            "/target/etc/systemd/system/nomad-build-install.service",
        ]
        assert [c[-2] for c in install] == [f["path"] for f in firstboot]
        assert enable == [
            "curtin", "in-target", "--target=/target", "--",
            "systemctl", "enable", "nomad-build-install.service",
        ]  # fmt: skip
        script = firstboot[1]["content"]
        assert f"\nset -- {staged}\n" in script and "--force-confold" in script
    net = yaml_doc(read_seed(autoinstall["bi-node-sbg-3"], tmp_path / "n3")["user-data"])
    eth1 = net["autoinstall"]["network"]["ethernets"]["eth1"]
    assert eth1["addresses"] == ["10.20.131.43/24"]
    assert eth1["routes"] == [{"to": "0.0.0.0/0", "via": "10.20.131.1"}]


def test_autoinstall_needs_a_password_hash(tmp_path: Path) -> None:
    built = make_cluster(tmp_path, "debian", images=images_keys())
    node = built.node("bi-core-sbg-1")
    tree = built.trees[node.name]
    deb = build_deb(node, tree, version=1, mtime=MTIME)
    why = AutoinstallWriter().unfit(built.cluster, node)
    assert why is not None and why.startswith("images.password_hash: missing")
    with pytest.raises(BuildError, match="password_hash"):
        build_autoinstall_seed(node, tree, deb=deb, repo_keyring=None, mtime=MTIME)


def test_autoinstall_is_deterministic(
    debian: Built, debs: dict[str, Artifact], autoinstall: dict[str, Artifact]
) -> None:
    node = debian.node("bi-core-sbg-2")
    again = build_autoinstall_seed(
        node, debian.trees[node.name], deb=debs[node.name], repo_keyring=None, mtime=MTIME
    )
    assert again == autoinstall[node.name]


# ================================================================ OpenBSD
# What OpenBSD 7.8's installer asks, in order (install.sub; the transcripts in
# REFERENCE.md's sources), with its default; None: no default, an answer is required.
def installer_questions(static: bool, iface: str, site: str) -> list[tuple[str, str | None]]:
    qs: list[tuple[str, str | None]] = [
        ("Terminal type?", "vt220"),
        ("System hostname? (short form, e.g. 'foo')", None),
        ("Network interface to configure? (name, lladdr, '?', or 'done')", "vio0"),
        (f"IPv4 address for {iface}? (or 'autoconf' or 'none')", "autoconf"),
    ]
    if static:
        qs.append((f"Netmask for {iface}?", "255.255.255.0"))
    qs += [
        (f"IPv6 address for {iface}? (or 'autoconf' or 'none')", "none"),
        ("Network interface to configure? (name, lladdr, '?', or 'done')", "done"),
    ]
    if static:
        qs += [
            ("Default IPv4 route? (IPv4 address or 'none')", None),
            ("DNS domain name? (e.g. 'example.com')", "my.domain"),
            ("DNS nameservers? (IP address list or 'none')", "none"),
        ]
    qs += [
        ("Password for root account?", None),
        ("Public ssh key for root account?", "none"),
        ("Start sshd(8) by default?", "yes"),
        ("Do you expect to run the X Window System?", "yes"),
        ("Change the default console to com0?", "yes"),
        ("Setup a user? (enter a lower-case loginname, or 'no')", "no"),
        ("Full name for user ops?", "ops"),
        ("Password for user ops?", None),
        ("Public ssh key for user ops", "none"),
        ("Allow root ssh login? (yes, no, prohibit-password)", "no"),
        ("What timezone are you in? ('?' for list)", "Canada/Mountain"),
        ("Which disk is the root disk? ('?' for details)", "sd0"),
        ("Encrypt the root disk with a (p)assphrase or (k)eydisk?", "no"),
        ("Use (W)hole disk MBR, whole disk (G)PT, (O)penBSD area or (E)dit?", "gpt"),
        ("Use (A)uto layout, (E)dit auto layout, or create (C)ustom layout?", "a"),
        ("Which disk do you wish to initialize? (or 'done')", "done"),
        ("Location of sets? (cd0 disk http nfs or 'done')", "http"),
        ("HTTP proxy URL? (e.g. 'http://proxy:8080', or 'none')", "none"),
        ("HTTP Server? (hostname, list#, 'done' or '?')", None),
        ("Server directory?", "pub/OpenBSD/7.8/amd64"),
        ("Unable to connect using https. Use http instead?", "no"),
        ("Set name(s)? (or 'abort' or 'done')", "done"),
        ("Set name(s)? (or 'abort' or 'done')", "done"),
        (f"Unverified sets: {site}. Continue without verification?", "no"),
        ("Location of sets? (cd0 disk http nfs or 'done')", "done"),
        ("Exit to (S)hell, (H)alt or (R)eboot?", "reboot"),
    ]
    return qs


class NoAnswer(Exception):
    pass


def autorespond(lines: list[str], question: str, default: str | None) -> str:
    """install.sub's _autorespond: the first line whose key is a whole-word part of the
    question (case-insensitive) answers it and is used up; else the default; else fail."""
    q = question.lower()
    for i, line in enumerate(lines):
        line = line.strip(" \t")  # read -r with IFS=' \t'
        if not re.match(r"^[^#=].*=.", line):  # [[ $_l == [!#=]*=?* ]]
            continue
        key = re.sub(r"[ \t]*=.*$", "", line, count=1, flags=re.S).lower()
        val = re.sub(r"^[^=]*=[ \t]*", "", line, count=1)
        if re.fullmatch(r"(|.*[ \t])" + re.escape(key) + r"([ \t?].*|)", q, re.S):
            del lines[i]
            return val
    if default:
        return default
    raise NoAnswer(question)


def run_installer(conf: bytes, questions: list[tuple[str, str | None]]) -> tuple[dict, list]:
    lines = conf.decode().splitlines()
    answers: dict[str, list[str]] = {}
    for q, default in questions:
        answers.setdefault(q, []).append(autorespond(lines, q, default))
    unused = [line for line in lines if line.strip() and not line.startswith("#")]
    return answers, unused


@pytest.fixture(scope="module")
def openbsd(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return make_cluster(
        tmp_path_factory.mktemp("openbsd"),
        "openbsd",
        images=images_keys(crypt_hash("bcrypt"), openbsd_sets_url=SETS_URL),
        last_node=STATIC,
    )


@pytest.fixture(scope="module")
def signing() -> tuple[bytes, bytes]:
    return signify.generate_keypair(comment_name=KEY_NAME)


@pytest.fixture(scope="module")
def bsd_pkgs(openbsd: Built, signing: tuple[bytes, bytes]) -> dict[str, Artifact]:
    return {
        n.name: build_openbsd_pkg(
            n,
            openbsd.trees[n.name],
            version=1,
            mtime=MTIME,
            signing_key=signing[0],
            key_name=KEY_NAME,
        )
        for n in openbsd.cluster.nodes
    }


def build_bsd(openbsd: Built, pkgs: dict[str, Artifact], pub: bytes) -> dict[str, Artifact]:
    items = [(n, openbsd.trees[n.name], pkgs[n.name]) for n in openbsd.cluster.nodes]
    arts = build_openbsd_autoinstall(items, pub_key=pub, key_name=KEY_NAME, mtime=MTIME)
    return {a.path.removeprefix("openbsd-autoinstall/"): a for a in arts}


@pytest.fixture(scope="module")
def bsd_tree(openbsd: Built, bsd_pkgs: dict[str, Artifact], signing) -> dict[str, Artifact]:
    return build_bsd(openbsd, bsd_pkgs, signing[1])


def test_openbsd_tree_layout_and_secrets(bsd_tree: dict[str, Artifact]) -> None:
    names = set(bsd_tree)
    nodes = [f"bi-core-sbg-{i}" for i in (1, 2, 3)] + [f"bi-node-sbg-{i}" for i in (1, 2)]
    expected = {f"{n}-install.conf" for n in nodes} | {f"{MAC.lower()}-install.conf"}
    expected |= {f"site78-{n}.tgz" for n in [*nodes, "bi-node-sbg-3"]}
    expected |= {"index.txt", "SHA256"}
    assert names == expected
    for name, art in bsd_tree.items():
        assert art.path == f"openbsd-autoinstall/{name}"
        assert art.secret == (name not in ("index.txt", "SHA256")), name


def test_response_files_answer_the_installers_questions(
    openbsd: Built, bsd_tree: dict[str, Artifact]
) -> None:
    for node in openbsd.cluster.nodes:
        static = node.name == "bi-node-sbg-3"
        conf_name = f"{MAC.lower()}-install.conf" if static else f"{node.name}-install.conf"
        conf = bsd_tree[conf_name].data
        assert PASSWORD.encode() not in conf
        site = f"site78-{node.name}.tgz"
        answers, unused = run_installer(conf, installer_questions(static, "vio1", site))
        a = {q: v[0] for q, v in answers.items()}
        assert a["System hostname? (short form, e.g. 'foo')"] == node.name
        assert answers["Network interface to configure? (name, lladdr, '?', or 'done')"] == [
            "vio1",
            "done",
        ]
        ipv4 = a["IPv4 address for vio1? (or 'autoconf' or 'none')"]
        assert ipv4 == ("10.20.131.43" if static else "autoconf")
        if static:
            assert a["Netmask for vio1?"] == "255.255.255.0"
            assert a["Default IPv4 route? (IPv4 address or 'none')"] == "10.20.131.1"
            assert a["DNS nameservers? (IP address list or 'none')"] == "10.20.130.1 10.20.130.2"
            assert a["DNS domain name? (e.g. 'example.com')"] == "intra.terror.ninja"
        assert a["IPv6 address for vio1? (or 'autoconf' or 'none')"] == "none"
        pw = a["Password for root account?"]
        assert pw == node.images.password_hash and re.fullmatch(r"\$2b\$\d\d\$.{53}", pw)
        # install.sub's encr_pwd keeps such a value as it is (a hash, not a password)
        assert pw.startswith("$2") and pw[3] == "$" and len(pw) > 40
        assert a["Password for user ops?"] == pw
        assert a["Setup a user? (enter a lower-case loginname, or 'no')"] == "ops"
        assert a["Public ssh key for user ops"] == KEYS[0]
        assert a["Public ssh key for root account?"] == "none"
        assert a["Allow root ssh login? (yes, no, prohibit-password)"] == "no"
        assert a["Start sshd(8) by default?"] == "yes"
        assert a["What timezone are you in? ('?' for list)"] == "UTC"
        assert a["Which disk is the root disk? ('?' for details)"] == "sd0"
        assert a["Use (A)uto layout, (E)dit auto layout, or create (C)ustom layout?"] == "a"
        assert answers["Location of sets? (cd0 disk http nfs or 'done')"] == ["http", "done"]
        assert a["HTTP Server? (hostname, list#, 'done' or '?')"] == "10.20.130.10"
        assert a["Server directory?"] == "pub/OpenBSD/7.8/amd64"
        assert a["Unable to connect using https. Use http instead?"] == "yes"
        sets = answers["Set name(s)? (or 'abort' or 'done')"]
        assert sets[1] == "done" and site in sets[0].split()
        assert a[f"Unverified sets: {site}. Continue without verification?"] == "yes"
        assert a["Exit to (S)hell, (H)alt or (R)eboot?"] == "reboot"
        # every line answered a real question (no typo'd question lines), except
        # those for questions a DHCP install does not ask
        allowed = {"DNS domain name = intra.terror.ninja"}
        assert set(unused) <= allowed, unused


def test_response_file_accepts_nothing_else_unverified(
    openbsd: Built, bsd_tree: dict[str, Artifact]
) -> None:
    conf = bsd_tree["bi-core-sbg-1-install.conf"].data
    for q in (
        "Unverified sets: bsd bsd.mp site78-bi-core-sbg-1.tgz. Continue without verification?",
        "Unverified sets: site78.tgz site78-bi-core-sbg-1.tgz. Continue without verification?",
        "Checksum test for site78-bi-core-sbg-1.tgz failed. Continue anyway?",
        "Directory does not contain SHA256.sig. Continue without verification?",
    ):
        assert autorespond(conf.decode().splitlines(), q, "no") == "no", q
    # and the port really matches like install.sub: whole words, case-insensitive
    assert autorespond(["system HOSTNAME = x"], "System hostname? (short form)", None) == "x"
    with pytest.raises(NoAnswer):
        autorespond(["stem hostname = x"], "System hostname? (short form)", None)


def site_members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def site_file(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


def test_site_sets(
    openbsd: Built,
    bsd_tree: dict[str, Artifact],
    bsd_pkgs: dict[str, Artifact],
    signing: tuple[bytes, bytes],
    tmp_path: Path,
) -> None:
    for node in openbsd.cluster.nodes:
        data = bsd_tree[f"site78-{node.name}.tgz"].data
        assert data[:3] == b"\x1f\x8b\x08"
        members = site_members(data)
        pkg_name = bsd_pkgs[node.name].path.split("/")[-1]
        assert set(members) == {
            "./etc/signify/bi-sbg-pkg.pub",
            "./install.site",
            "./var/nomad-build",
            f"./var/nomad-build/{pkg_name}",
        }
        for m in members.values():  # rooted at /, owned by root
            assert m.name.startswith("./") and m.uid == 0 and m.gid == 0 and m.uname == "root"
            assert m.mtime == MTIME
        site = members["./install.site"]
        assert site.isfile() and site.mode == 0o755
        assert members["./var/nomad-build"].isdir() and members["./var/nomad-build"].mode == 0o700
        assert members[f"./var/nomad-build/{pkg_name}"].mode == 0o600
        assert site_file(data, f"./var/nomad-build/{pkg_name}") == bsd_pkgs[node.name].data
        pub = site_file(data, "./etc/signify/bi-sbg-pkg.pub")
        assert pub == signing[1]
        # the key the set installs verifies the package it carries (what pkg_add checks)
        (tmp_path / "key.pub").write_bytes(pub)
        (tmp_path / "pkg.tgz").write_bytes(site_file(data, f"./var/nomad-build/{pkg_name}"))
        r = subprocess.run(
            [tool("signify-openbsd"), "-zV", "-t", "pkg", "-p", str(tmp_path / "key.pub"),
             "-x", str(tmp_path / "pkg.tgz"), "-m", "/dev/null"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        script = site_file(data, "./install.site")
        (tmp_path / "install.site").write_bytes(script)
        r = subprocess.run(
            [tool("mksh"), "-n", str(tmp_path / "install.site")], capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr
        text = script.decode()
        assert text.startswith("#!/bin/ksh\n")
        assert 'add="pkg_add -I $pkgs"' in text and f"pkgs=/var/nomad-build/{pkg_name}\n" in text
        service = openbsd.trees[node.name].service.name
        assert f"rcctl enable {service}" in text
        assert "-D unsigned" not in text  # signed: pkg_add checks it
        for key in KEYS:
            assert f"\n{key}\n" in text


def test_install_site_runs(openbsd: Built, bsd_tree: dict[str, Artifact], tmp_path: Path) -> None:
    """install.site under mksh with stand-ins for OpenBSD's pkg_add, rcctl and install
    (logging their arguments), /etc relocated into a scratch root."""
    node = openbsd.node("bi-core-sbg-1")
    script = site_file(bsd_tree["site78-bi-core-sbg-1.tgz"].data, "./install.site").decode()
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "home/ops").mkdir(parents=True)
    (root / "etc/passwd").write_text(f"ops:*:1000:1000:ops:{root}/home/ops:/bin/ksh\n")
    script = script.replace("/etc/", f"{root}/etc/")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "log"
    for name, rc in (("pkg_add", "$PKG_ADD_RC"), ("rcctl", "0"), ("chown", "0"), ("id", "0")):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >>{log}\nexit {rc}\n')
        (bin_dir / name).chmod(0o755)
    (bin_dir / "install").write_text(
        f'#!/bin/sh\necho "install $*" >>{log}\nfor a; do d=$a; done\nmkdir -p "$d"\n'
    )
    (bin_dir / "install").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PKG_ADD_RC": "0"}
    (tmp_path / "s").write_text(script)
    r = subprocess.run([tool("mksh"), str(tmp_path / "s")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    pkg = next(c for c in calls if c.startswith("pkg_add"))
    assert re.fullmatch(r"pkg_add -I /var/nomad-build/nomad-config-bi-core-sbg_1-1\.tgz", pkg)
    assert f"rcctl enable {openbsd.trees[node.name].service.name}" in calls
    assert (root / "home/ops/.ssh/authorized_keys").read_text() == "".join(k + "\n" for k in KEYS)
    assert (root / "etc/doas.conf").read_text() == "permit persist keepenv :wheel\n"
    assert not (root / "etc/rc.firsttime").exists()
    # pkg_add failing (no mirror yet): an rc.d script retries from the first boot on
    log.unlink()
    script = script.replace("/var/db/", f"{root}/var/db/").replace(
        "/usr/local/libexec", f"{root}/usr/local/libexec"
    )
    (root / "etc/rc.d").mkdir()
    (tmp_path / "s").write_text(script)
    r = subprocess.run(
        [tool("mksh"), str(tmp_path / "s")],
        env={**env, "PKG_ADD_RC": "1"},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert not (root / "etc/rc.firsttime").exists()
    assert "NOT installed yet" in (root / "var/db/nomad-build/install-pending").read_text()
    assert "rcctl enable nomad_build_install" in log.read_text().splitlines()
    rcd = (root / "etc/rc.d/nomad_build_install").read_text()
    assert re.search(r'^daemon=".*/usr/local/libexec/nomad-build-install"$', rcd, re.M)
    retry = (root / "usr/local/libexec/nomad-build-install").read_text()
    assert "\npkgs=/var/nomad-build/nomad-config-bi-core-sbg_1-1.tgz\n" in retry
    assert "if pkg_add -I $pkgs >" in retry
    svc = openbsd.trees[node.name].service.name
    assert f"rcctl enable {svc} && rcctl start {svc}" in retry
    for text in (rcd, retry):
        r = subprocess.run([tool("mksh"), "-n", "-c", text], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    # the retry loop: pkg_add fails twice (no mirror yet), then the package goes in
    log.unlink()
    count = tmp_path / "count"
    (bin_dir / "pkg_add").write_text(
        f'#!/bin/sh\necho "pkg_add $*" >>{log}\necho x >>{count}\n'
        f'[ "$(wc -l <{count})" -ge 3 ] || {{ echo "pkg_add: no mirror" >&2; exit 1; }}\n'
    )
    for name in ("sleep", "logger"):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >>{log}\n')
        (bin_dir / name).chmod(0o755)
    retry = retry.replace("/var/log/", f"{tmp_path}/").replace(
        "/dev/console", str(tmp_path / "con")
    )
    r = subprocess.run([tool("mksh"), "-c", retry], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    assert [c for c in calls if c.startswith("sleep")] == ["sleep 5", "sleep 10"]
    assert calls[-2:] == [
        "rcctl disable nomad_build_install",
        f"logger -t nomad-build-install -- installed on attempt 3; {svc} started",
    ]
    assert not (root / "var/db/nomad-build/install-pending").exists()
    console = (tmp_path / "con").read_text()
    assert "attempt 2 failed: pkg_add: no mirror; next try in 10s" in console


def test_index_and_sha256(bsd_tree: dict[str, Artifact], tmp_path: Path) -> None:
    index = bsd_tree["index.txt"].data.decode().splitlines()
    sites = sorted(n for n in bsd_tree if n.startswith("site78-"))
    assert set(sites) <= set(index)
    for name in ("bsd", "bsd.mp", "bsd.rd", "base78.tgz", "comp78.tgz", "man78.tgz",
                 "SHA256.sig", "INSTALL.amd64"):  # fmt: skip
        assert name in index  # the release's own sets stay visible beside ours
    sums = bsd_tree["SHA256"].data.decode().splitlines()
    assert [re.match(r"SHA256 \((.+)\) = [0-9a-f]{64}$", s).group(1) for s in sums] == sites  # type: ignore[union-attr]
    for name in sites:
        (tmp_path / name).write_bytes(bsd_tree[name].data)
        h = hashlib.sha256(bsd_tree[name].data).hexdigest()
        assert f"SHA256 ({name}) = {h}" in sums
    (tmp_path / "SHA256").write_bytes(bsd_tree["SHA256"].data)
    r = subprocess.run(
        [tool("sha256sum"), "-c", "SHA256"], cwd=tmp_path, capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout.count(": OK") == len(sites), r.stdout + r.stderr
    (tmp_path / sites[0]).write_bytes(bsd_tree[sites[0]].data + b"\0")
    r = subprocess.run(
        [tool("sha256sum"), "-c", "SHA256"], cwd=tmp_path, capture_output=True, text=True
    )
    assert r.returncode != 0


def test_openbsd_tree_is_deterministic(
    openbsd: Built, bsd_pkgs: dict[str, Artifact], signing, bsd_tree: dict[str, Artifact]
) -> None:
    assert build_bsd(openbsd, bsd_pkgs, signing[1]) == bsd_tree


def test_openbsd_refusals(openbsd: Built, bsd_pkgs: dict[str, Artifact], signing) -> None:
    other = signify.generate_keypair(comment_name=KEY_NAME)[1]
    with pytest.raises(BuildError, match="does not verify"):
        build_bsd(openbsd, bsd_pkgs, other)
    # (cluster.py refuses non-bcrypt hashes for OpenBSD nodes: test_bad_input)
    with pytest.raises(UserError, match="openbsd_sets_url"):
        split_sets_url("http://10.0.0.1/")
    with pytest.raises(UserError, match="architecture"):
        split_sets_url("http://10.0.0.1/pub/OpenBSD/7.8/vax")
    assert split_sets_url("https://mirror.example:8080/pub/OpenBSD/7.8/arm64/") == (
        "https",
        "mirror.example:8080",
        "pub/OpenBSD/7.8/arm64",
        "arm64",
    )


def test_openbsd_without_password_hash(tmp_path: Path, signing) -> None:
    built = make_cluster(tmp_path, "openbsd", images=images_keys(openbsd_sets_url=SETS_URL))
    node = built.node("bi-node-sbg-1")
    tree = built.trees[node.name]
    pkg = build_openbsd_pkg(
        node, tree, version=1, mtime=MTIME, signing_key=signing[0], key_name=KEY_NAME
    )
    arts = build_openbsd_autoinstall(
        [(node, tree, pkg)], pub_key=signing[1], key_name=KEY_NAME, mtime=MTIME
    )
    conf = next(a for a in arts if a.path.endswith("-install.conf")).data
    answers, _ = run_installer(conf, installer_questions(False, "vio1", "site78-bi-node-sbg-1.tgz"))
    assert answers["Password for root account?"] == [NO_PASSWORD]  # no password login
    assert answers["Password for user ops?"] == [NO_PASSWORD]
    site = next(a for a in arts if a.path.endswith(".tgz")).data
    assert "permit nopass keepenv $admin" in site_file(site, "./install.site").decode()
