"""The cluster file as input: its rules through the real command (exit 2, one line
naming the file and the key, nothing written), how it is read, the declarations
and OS profiles the model is built from, and that its name reaches no artifact."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder import settings
from builder.cluster import MAX_BYTES, load, read_cluster_file
from builder.errors import UserError
from builder.model import (
    ConsulAgentSettings,
    ConsulSettings,
    ImageSettings,
    PackageSettings,
    PKISettings,
)
from builder.os_profile import PROFILES, profile
from builder.render import node_secrets, render_node, render_tree
from builder.state import State
from builder.writers.deb import build_deb

from conftest import REPO, example_text, nomad_build

CLUSTER = "cluster.toml"
NODE_INDEX = {"bi-core-sbg-1": 0, "bi-node-sbg-1": 3, "bi-node-sbg-2": 4}


def tree_hash(root: Path) -> str:
    """Every path, mode and content under root (the state and out dirs included)."""
    h = hashlib.sha256()
    for dirpath, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(dirs + files):
            p = Path(dirpath, name)
            st = p.lstat()
            h.update(f"{p.relative_to(root)}\0{st.st_mode:o}\0".encode())
            if p.is_file() and not p.is_symlink() and name != "zero":
                h.update(p.read_bytes())
    return h.hexdigest()


def workdir(tmp_path: Path) -> Path:
    """A real state store S and an out dir O with a file: neither may change."""
    with State.open(tmp_path / "S", create=True) as st:
        st.gossip_key()
    (tmp_path / "O").mkdir()
    (tmp_path / "O" / "keep").write_text("mine\n")
    return tmp_path


def refused(tmp_path: Path, cluster: str, expect: str) -> str:
    """`check` and `build` refuse with one line naming the file and matching `expect`,
    and the directory (cluster file, state, out) is byte for byte as before."""
    before = tree_hash(tmp_path)
    lines = []
    for args in (
        ["check", "-c", cluster, "--state", "S"],
        ["build", "-c", cluster, "--state", "S", "--out", "O"],
    ):
        proc = nomad_build(tmp_path, *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr + proc.stdout
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"nomad-build: {cluster}: "), lines[0]
        assert re.search(expect, lines[0]), f"{expect!r} not in {lines[0]!r}"
        assert tree_hash(tmp_path) == before
    return lines[0]


def on_node(text: str, name: str, line: str) -> str:
    old = f'name = "{name}"\n'
    assert old in text
    return text.replace(old, f"{old}{line}\n", 1)


def key(name: str, what: str) -> str:
    return re.escape(f"nodes[{NODE_INDEX[name]}] ({name}).{what}: ")


# ---------------------------------------------------------------- rules, through the CLI
@dataclass(frozen=True)
class Case:
    id: str
    mutate: Callable[[str], str]
    expect: str


def sub(old: str, new: str) -> Callable[[str], str]:
    def apply(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)

    return apply


def node(name: str, line: str) -> Callable[[str], str]:
    return lambda text: on_node(text, name, line)


SERVER_ADDR = 'address = "10.20.130.52"'
LONG_DOMAIN = ".".join(["a" * 60] * 4)  # 243 characters: bi-core-sbg-1.<it> is 257
SETS = 'openbsd_sets_url = "http://10.20.130.10/pub/OpenBSD/7.8/amd64"'
MAC1, MAC2 = 'mac = "52:54:00:ab:00:01"', 'mac = "52:54:00:AB:00:01"'

CASES = [
    Case(
        "zone-scoped-ipv6",
        node("bi-node-sbg-2", 'extra_ips = ["fe80::1%eth0"]'),
        key("bi-node-sbg-2", "extra_ips") + r"'fe80::1%eth0' has a zone index",
    ),
    Case(
        "zone-scoped-advertise",
        node("bi-node-sbg-1", 'advertise = "fe80::1%vio1"'),
        key("bi-node-sbg-1", "advertise") + "'fe80::1%vio1' has a zone index",
    ),
    Case(
        "multicast-address",
        sub(SERVER_ADDR, 'address = "224.0.0.1"'),
        key("bi-core-sbg-1", "address") + "'224.0.0.1' is a multicast address",
    ),
    Case(
        "multicast-ipv6-in-defaults",
        sub("[defaults]\n", '[defaults]\nadvertise = "ff02::1"\n'),
        r"defaults\.advertise: 'ff02::1' is a multicast address",
    ),
    Case(
        "unspecified-v4",
        sub(SERVER_ADDR, 'address = "0.0.0.0"'),
        key("bi-core-sbg-1", "address") + "'0.0.0.0' is not a usable node address",
    ),
    Case(
        "unspecified-v6",
        sub(SERVER_ADDR, 'address = "::"'),
        key("bi-core-sbg-1", "address") + "'::' is not a usable node address",
    ),
    # "$" in a pattern matches before a final newline: every name check must not
    Case(
        "newline-after-a-name",
        sub('name = "bi-node-sbg-1"', 'name = "bi-node-sbg-1\\n"'),
        r"nodes\[3\] \('bi-node-sbg-1\\n'\)\.name: ",
    ),
    Case(
        "newline-after-a-mac",
        node("bi-node-sbg-1", 'mac = "52:54:00:ab:00:99\\n"'),
        key("bi-node-sbg-1", "mac"),
    ),
    Case(
        "broadcast",
        sub(SERVER_ADDR, 'address = "255.255.255.255"'),
        key("bi-core-sbg-1", "address") + "'255.255.255.255' is the broadcast address",
    ),
    Case(
        "broadcast-gateway",
        node("bi-node-sbg-1", 'prefix = 24\ngateway = "255.255.255.255"'),
        key("bi-node-sbg-1", "gateway") + "'255.255.255.255' is the broadcast address",
    ),
    Case(
        "unspecified-nameserver",
        node("bi-node-sbg-1", 'nameservers = ["10.0.0.53", "0.0.0.0"]'),
        key("bi-node-sbg-1", "nameservers") + "'0.0.0.0' is not a usable node address",
    ),
    Case(
        "multicast-bind-addr",
        node("bi-node-sbg-1", 'bind_addr = "239.1.1.1"'),
        key("bi-node-sbg-1", "bind_addr") + "'239.1.1.1' is a multicast address",
    ),
    Case(
        "fqdn-over-253",
        sub('domain = "intra.terror.ninja"', f'domain = "{LONG_DOMAIN}"'),
        key("bi-core-sbg-1", "name") + r"its FQDN .* is longer than 253 characters",
    ),
    Case(
        "domain-label-over-63",
        sub('domain = "intra.terror.ninja"', f'domain = "{"a" * 64}.ninja"'),
        r"cluster\.domain: 'a{64}\.ninja' is not a DNS domain",
    ),
    Case(
        "extra-name-label-over-63",
        node("bi-core-sbg-1", f'extra_names = ["{"b" * 64}.intra.terror.ninja"]'),
        key("bi-core-sbg-1", "extra_names") + "'b{64}.intra.terror.ninja' is not a DNS name",
    ),
    Case(
        "duplicate-mac",
        lambda t: on_node(on_node(t, "bi-core-sbg-1", MAC1), "bi-node-sbg-1", MAC1),
        key("bi-node-sbg-1", "mac") + "52:54:00:ab:00:01 is already used by node bi-core-sbg-1",
    ),
    Case(
        "duplicate-mac-other-case",
        lambda t: on_node(on_node(t, "bi-core-sbg-1", MAC1), "bi-node-sbg-2", MAC2),
        key("bi-node-sbg-2", "mac") + "52:54:00:ab:00:01 is already used by node bi-core-sbg-1",
    ),
    Case(
        "default-maintainer-needs-a-dotted-domain",
        lambda t: re.sub(
            r"^maintainer = .*\n",
            "",
            t.replace('domain = "intra.terror.ninja"', 'domain = "lan"').replace(
                'os = "openbsd"', 'os = "debian"'
            ),
            flags=re.M,
        ),
        r"packages\.maintainer: missing, and the default 'nomad-build <nomad-build@lan>' is no "
        r"mail address lintian accepts",
    ),
    Case(
        "sets-url-without-arch",
        sub(SETS, 'openbsd_sets_url = "http://10.20.130.10/pub/OpenBSD/7.8"'),
        r"images\.openbsd_sets_url: '.*/7\.8' must end in the architecture "
        r"\(amd64, arm64, i386\)",
    ),
    Case(
        "sets-url-trailing-release",
        sub(SETS, 'openbsd_sets_url = "http://10.20.130.10/pub/OpenBSD/amd64/7.8/"'),
        r"images\.openbsd_sets_url: .* must end in the architecture",
    ),
    Case(
        "sets-url-query",
        sub(SETS, 'openbsd_sets_url = "http://10.20.130.10/7.8/amd64?x=1"'),
        r"images\.openbsd_sets_url: .*no query, fragment or user",
    ),
    Case(
        "sets-url-no-directory",
        sub(SETS, 'openbsd_sets_url = "http://10.20.130.10/"'),
        r"images\.openbsd_sets_url: .* must name the sets directory",
    ),
    Case(
        "sets-url-ftp",
        sub(SETS, 'openbsd_sets_url = "ftp://10.20.130.10/7.8/amd64"'),
        r"images\.openbsd_sets_url: must be an http\(s\):// URL",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule_is_refused_and_nothing_written(case: Case, tmp_path: Path) -> None:
    text = case.mutate(example_text("openbsd"))
    (workdir(tmp_path) / CLUSTER).write_text(text)
    refused(tmp_path, CLUSTER, case.expect)


@pytest.mark.parametrize(
    "line",
    [
        'bind_addr = "0.0.0.0"',  # every interface: allowed for bind_addr only
        'extra_ips = ["2001:db8::1"]',
        'mac = "52:54:00:00:00:01"',
    ],
)
def test_what_the_rules_still_accept(line: str, tmp_path: Path) -> None:
    (tmp_path / CLUSTER).write_text(on_node(example_text("openbsd"), "bi-node-sbg-1", line))
    proc = nomad_build(tmp_path, "check", "-c", CLUSTER, "--state", "S")
    assert proc.returncode == 0, proc.stderr


def test_fqdn_of_253_is_accepted(tmp_path: Path) -> None:
    # every node name has 13 characters: <name>.<domain> is 253 exactly
    domain = ".".join(["c" * 59, "c" * 59, "c" * 59, "c" * 59])  # 239
    text = example_text("openbsd").replace('domain = "intra.terror.ninja"', f'domain = "{domain}"')
    cluster = tmp_path / CLUSTER
    cluster.write_text(text)
    assert all(len(n.fqdn) <= 253 for n in load(cluster).nodes)
    longest = max(len(n.fqdn) for n in load(cluster).nodes)
    assert longest == 253


# ---------------------------------------------------------------- reading the file
def case_file(tmp_path: Path, kind: str) -> str:
    if kind == "empty":
        (tmp_path / "empty.toml").write_bytes(b"")
        return "empty.toml"
    if kind == "blank":
        (tmp_path / "blank.toml").write_text("\n  \n\t\n")
        return "blank.toml"
    if kind == "binary":
        (tmp_path / "bin.toml").write_bytes(example_text().encode()[:200] + b"\0\1\2garbage")
        return "bin.toml"
    if kind == "fifo":  # no writer: as root, the way to a file we cannot read the usual way
        os.mkfifo(tmp_path / "fifo.toml")
        return "fifo.toml"
    if kind == "dangling-symlink":
        (tmp_path / "link.toml").symlink_to(tmp_path / "gone.toml")
        return "link.toml"
    if kind == "oversized":
        (tmp_path / "big.toml").write_text(example_text() + "#" * MAX_BYTES + "\n")
        return "big.toml"
    assert kind == "dev-zero"
    (tmp_path / "zero").symlink_to("/dev/zero")
    return "zero"


FILE_CASES = {
    "empty": r"is empty",
    "blank": r"is empty",
    "binary": r"holds NUL bytes: a binary file",
    "fifo": r"is empty",
    "dangling-symlink": r"a symbolic link to .*gone\.toml, which does not exist",
    "oversized": r"larger than 1 MiB: not a cluster file",
    "dev-zero": r"larger than 1 MiB: not a cluster file",
}


@pytest.mark.parametrize("kind", list(FILE_CASES))
def test_unusable_cluster_file_is_one_line(kind: str, tmp_path: Path) -> None:
    name = case_file(workdir(tmp_path), kind)
    line = refused(tmp_path, name, FILE_CASES[kind])
    assert line.count(name) == 1


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / CLUSTER
    path.write_text(example_text())
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: a mode-000 file is readable (the FIFO case stands in)")
        with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: cannot read: "):
            load(path)
    finally:
        path.chmod(0o644)


def test_directory_is_refused_in_one_line(tmp_path: Path) -> None:
    # The CLI's -c option refuses a directory itself (click: dir_okay=False); the loader
    # gives its own one line to any caller.
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(UserError, match=r"dir\.toml: is a directory, not a cluster file$"):
        load(tmp_path / "dir.toml")


def test_dev_zero_is_never_slurped() -> None:
    with pytest.raises(UserError, match="larger than 1 MiB"):
        read_cluster_file(Path("/dev/zero"))


def test_a_file_of_exactly_the_limit_is_read(tmp_path: Path) -> None:
    text = example_text().encode()
    path = tmp_path / CLUSTER
    path.write_bytes(text + b"#" * (MAX_BYTES - len(text) - 1) + b"\n")
    assert path.stat().st_size == MAX_BYTES
    assert len(load(path).nodes) == 6


# ---------------------------------------------------------------- the file's name
def test_the_cluster_file_name_reaches_no_artifact(tmp_path: Path) -> None:
    """Same content under two names, same secrets: byte-identical node trees."""
    text = example_text("openbsd")
    a, b = tmp_path / "a" / CLUSTER, tmp_path / "b" / "site-zz9-renamed.toml"
    for path in (a, b):
        path.parent.mkdir()
        path.write_text(text)
    first, second = load(a), load(b)
    with State.open(tmp_path / "state", create=True) as st:
        for node in first.nodes:
            secrets = node_secrets(first, node, st)
            one = render_tree(first, node, secrets)
            two = render_tree(second, second.node(node.name), secrets)
            assert one.digest() == two.digest(), node.name
            for f in two.files:
                assert b"site-zz9-renamed" not in f.content, f.path
                assert CLUSTER.encode() not in f.content, f.path


def test_the_debian_trees_do_not_name_the_file_either(tmp_path: Path) -> None:
    text = example_text("debian")
    a, b = tmp_path / "one.toml", tmp_path / "two.toml"
    a.write_text(text)
    b.write_text(text)
    first, second = load(a), load(b)
    with State.open(tmp_path / "state", create=True) as st:
        for node in first.nodes:
            secrets = node_secrets(first, node, st)
            assert (
                render_tree(first, node, secrets).digest()
                == render_tree(second, second.node(node.name), secrets).digest()
            )


# ---------------------------------------------------------------- declarations
MODEL_TABLES = [
    (PKISettings, settings.PKI),
    (ConsulSettings, settings.CONSUL),
    (ConsulAgentSettings, settings.CONSUL_AGENT),
    (PackageSettings, settings.PACKAGES),
    (ImageSettings, settings.IMAGES),
]


@pytest.mark.parametrize("cls,table", MODEL_TABLES, ids=[t.name for _, t in MODEL_TABLES])
def test_model_defaults_are_the_declared_ones(cls: type, table: settings.Table) -> None:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, setting in table.settings.items():
        field = fields[setting.field or name]
        assert field.default == setting.default, name
    assert len(fields) == len(table.settings)


def test_every_key_is_declared_once_with_help() -> None:
    tables = [
        settings.CLUSTER,
        settings.PKI,
        settings.CONSUL,
        settings.CONSUL_AGENT,
        settings.PACKAGES,
        settings.BUNDLE,
        settings.NOMAD_APT,
        settings.IMAGES,
        settings.LAYER,
        settings.NODE_ONLY,
    ]
    for table in tables:
        for name, setting in table.settings.items():
            assert setting.key == name
            assert setting.help, f"{table.name}.{name} has no help"
            if setting.default is not None:
                assert (
                    setting.kind.problem(
                        list(setting.default)
                        if isinstance(setting.default, tuple)
                        else setting.default
                    )
                    is None
                ), f"{table.name}.{name}: default of the wrong type"
    assert not set(settings.LAYER.settings) & set(settings.NODE_ONLY.settings)


def test_the_default_maintainer_is_in_the_cluster_domain(tmp_path: Path) -> None:
    text = re.sub(r"^maintainer = .*\n", "", example_text("debian"), flags=re.M)
    (tmp_path / CLUSTER).write_text(text)
    cluster = load(tmp_path / CLUSTER)
    assert cluster.packages.maintainer == "nomad-build <nomad-build@intra.terror.ninja>"
    assert "localhost" not in cluster.packages.maintainer


# ---------------------------------------------------------------- OS profiles
def test_os_profiles() -> None:
    debian, openbsd = profile("debian"), profile("openbsd")
    assert (debian.package_format, debian.image_kinds) == ("deb", ("cloud-init", "autoinstall"))
    assert (openbsd.package_format, openbsd.image_kinds) == ("openbsd", ("openbsd-autoinstall",))
    assert (debian.firewall, openbsd.firewall) == ("nftables", "pf")
    assert (debian.server_user, openbsd.server_user) == ("nomad", "_nomad")
    assert openbsd.config_dir == "/etc/nomad" and debian.config_dir == "/etc/nomad.d"
    assert set(PROFILES) == {"debian", "openbsd"}
    with pytest.raises(ValueError, match="unknown OS 'freebsd'"):
        profile("freebsd")
    with pytest.raises(dataclasses.FrozenInstanceError):
        debian.name = "ubuntu"  # type: ignore[misc]


@pytest.mark.parametrize("os_name", ["debian", "openbsd"])
def test_nodes_take_their_paths_from_the_profile(os_name: str, tmp_path: Path) -> None:
    text = example_text(os_name).replace('data_dir = "/var/nomad"\n', "")
    (tmp_path / CLUSTER).write_text(text)
    p = profile(os_name)
    for n in load(tmp_path / CLUSTER).nodes:
        assert (n.config_dir, n.tls_dir, n.data_dir) == (p.config_dir, p.tls_dir, p.data_dir)
        assert n.user == (p.server_user if n.role == "server" else "root")


# ---------------------------------------------------------------- module shape
def test_rendering_does_not_import_the_loader() -> None:
    code = (
        "import sys, builder.render, builder.agent_config, builder.writers; "
        "sys.exit('builder.cluster' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    assert subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode == 0


MODULES = [
    "cluster.py",
    "nodes.py",
    "settings.py",
    "cross_checks.py",
    "os_profile.py",
    "model.py",
    "render.py",
    "agent_config.py",
]


@pytest.mark.parametrize("module", MODULES)
def test_no_function_over_60_lines(module: str) -> None:
    tree = ast.parse((REPO / "builder" / module).read_text())
    for f in ast.walk(tree):
        if isinstance(f, ast.FunctionDef):
            assert f.end_lineno is not None
            assert f.end_lineno - f.lineno + 1 <= 60, f"{module}: {f.name}"


def test_the_default_maintainer_is_lintian_clean(tmp_path: Path) -> None:
    """Without packages.maintainer the .deb still passes lintian (root@localhost did not:
    maintainer-address-is-on-localhost)."""
    if shutil.which("lintian") is None:
        pytest.skip("lintian is not installed")
    text = re.sub(r"^maintainer = .*\n", "", example_text("debian"), flags=re.M)
    (tmp_path / CLUSTER).write_text(text)
    cluster = load(tmp_path / CLUSTER)
    node = cluster.node("bi-core-sbg-1")
    with State.open(tmp_path / "state", create=True) as st:
        tree = render_node(cluster, node, st)
    artifact = build_deb(node, tree, version=1, mtime=1_700_000_000)
    deb = tmp_path / Path(artifact.path).name
    deb.write_bytes(artifact.data)
    control = subprocess.run(
        ["dpkg-deb", "--field", str(deb), "Maintainer"], capture_output=True, text=True, check=True
    )
    assert control.stdout.strip() == "nomad-build <nomad-build@intra.terror.ninja>"
    proc = subprocess.run(
        ["lintian", "--allow-root", "--no-cfg", "--tag-display-limit", "0", str(deb)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode in (0, 1, 2), proc.stderr
    assert [ln for ln in proc.stdout.splitlines() if ln.startswith(("E:", "W:"))] == []
