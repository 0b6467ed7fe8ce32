"""The service and firewall files, checked by the tools that read them where they run
here (mksh, nft, systemd-analyze) and by small parsers where they do not (pf).

Who may reach what (REFERENCE.md "Ports"): 4647/tcp (RPC) of a server from every
other node, 4648/tcp+udp (Serf) of a server from the other servers only, 4647/tcp of
a client from the servers only; 4646 (HTTP API, loopback) from nobody.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.cluster import load
from builder.model import Cluster, Node
from builder.nodetree import NodeTree
from builder.render import render_node
from builder.state import State

from conftest import Rendered, bundle_table, example_text, render_all

Rule = tuple[str, int, frozenset[str]]  # (proto, port, source addresses)

# A second cluster: a node of role "both", IPv6 addresses beside IPv4 ones.
VARIANT = {
    'name = "bi-core-sbg-3"\nrole = "server"': 'name = "bi-core-sbg-3"\nrole = "both"',
    'address = "10.20.130.52"\n': 'address = "10.20.130.52"\nextra_ips = ["fd00:20::52"]\n',
    'address = "10.20.131.41"\n': 'address = "10.20.131.41"\nextra_ips = ["fd00:21::41"]\n',
}


def _variant_text(os_name: str) -> str:
    text = example_text(os_name)
    for old, new in VARIANT.items():
        assert old in text
        text = text.replace(old, new, 1)
    return text


def _render_text(directory: Path, text: str) -> Rendered:
    """What conftest's render_all does, for a cluster file of our own text."""
    (directory / "cluster.toml").write_text(text)
    cluster = load(directory / "cluster.toml")
    with State.open(directory / "state", create=True) as st:
        trees = {n.name: render_node(cluster, n, st) for n in cluster.nodes}
    return Rendered(cluster, directory / "state", trees)


@pytest.fixture(scope="module")
def variant_openbsd(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    return _render_text(tmp_path_factory.mktemp("v-obsd"), _variant_text("openbsd"))


@pytest.fixture(scope="module")
def variant_debian(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    return _render_text(tmp_path_factory.mktemp("v-deb"), _variant_text("debian"))


@pytest.fixture(params=["example", "variant"])
def openbsd(request: pytest.FixtureRequest) -> Rendered:
    name = "rendered_openbsd" if request.param == "example" else "variant_openbsd"
    return request.getfixturevalue(name)


@pytest.fixture(params=["example", "variant"])
def debian(request: pytest.FixtureRequest) -> Rendered:
    name = "rendered_debian" if request.param == "example" else "variant_debian"
    return request.getfixturevalue(name)


def expected_rules(cluster: Cluster, node: Node) -> set[Rule]:
    others = [n for n in cluster.nodes if n.name != node.name]
    everyone = frozenset(ip for n in others for ip in n.ips)
    servers = frozenset(ip for n in others if n.role in ("server", "both") for ip in n.ips)
    if node.role in ("server", "both"):
        rules = {("tcp", 4647, everyone), ("tcp", 4648, servers), ("udp", 4648, servers)}
    else:
        rules = {("tcp", 4647, servers)}
    return {r for r in rules if r[2]}


def tool(name: str) -> str:
    exe = shutil.which(name)
    assert exe, f"{name} is required (scripts/debian-packages.txt; make tools)"
    return exe


def file_of_kind(tree: NodeTree, kind: str) -> tuple[str, bytes]:
    (f,) = [f for f in tree.files if f.kind == kind]
    return f.path, f.content


# ---------------------------------------------------------------- OpenBSD rc.d

FAKE_RC_SUBR = """\
# stands in for OpenBSD's /etc/rc.d/rc.subr: records what it sees when sourced
print -r -- "at-source daemon=$daemon"
print -r -- "at-source daemon_flags=$daemon_flags"
print -r -- "at-source daemon_user=$daemon_user"
rc_cmd() {
\tprint -r -- "rc_cmd $1 rc_bg=$rc_bg rc_reload=$rc_reload rc_stop_signal=$rc_stop_signal"
}
"""


def test_rc_script(openbsd: Rendered, tmp_path: Path) -> None:
    mksh = tool("mksh")
    for name, tree in openbsd.trees.items():
        node = openbsd.node(name)
        path, content = file_of_kind(tree, "script")
        assert path == tree.service.unit_path
        script_name = Path(path).name
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", script_name), script_name
        assert script_name == tree.service.name
        assert path == f"/etc/rc.d/{script_name}"
        assert next(f for f in tree.files if f.path == path).mode == 0o555

        text = content.decode()
        script = tmp_path / f"{name}.rc"
        script.write_text(text)
        syntax = subprocess.run([mksh, "-n", str(script)], capture_output=True, text=True)
        assert syntax.returncode == 0, syntax.stderr

        lines = text.splitlines()
        assert lines[0] == "#!/bin/ksh"
        subr = lines.index(". /etc/rc.d/rc.subr")
        user = "_nomad" if node.role == "server" else "root"
        wanted = {
            "daemon": "/usr/local/bin/nomad",
            "daemon_flags": f"agent -config {node.config_file}",
            "daemon_user": user,
        }
        for var, value in wanted.items():
            (at,) = [i for i, ln in enumerate(lines) if ln.startswith(f"{var}=")]
            assert at < subr, f"{var} is set after rc.subr is sourced"
            assert lines[at] == f'{var}="{value}"'
        assert [ln for ln in lines if ln.strip()][-1] == "rc_cmd $1"

        # run it: rc.subr must see the daemon variables when it is sourced
        (tmp_path / "rc.subr").write_text(FAKE_RC_SUBR)
        runnable = tmp_path / f"{name}.run"
        runnable.write_text(text.replace(". /etc/rc.d/rc.subr", f". {tmp_path}/rc.subr"))
        run = subprocess.run([mksh, str(runnable), "start"], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert run.stdout.splitlines() == [
            f"at-source daemon={wanted['daemon']}",
            f"at-source daemon_flags={wanted['daemon_flags']}",
            f"at-source daemon_user={user}",
            "rc_cmd start rc_bg=YES rc_reload= rc_stop_signal=INT",  # default reload: SIGHUP
        ]


# ---------------------------------------------------------------- OpenBSD pf

PF_TABLE = re.compile(r"table <([A-Za-z_][A-Za-z0-9_]*)> const \{ ([^{}]+) \}")
PF_PASS = re.compile(
    r"pass in proto (tcp|udp|\{ tcp udp \}) from <([A-Za-z_][A-Za-z0-9_]*)> to \(self\) port (\d+)"
)


def parse_pf_anchor(text: str) -> set[Rule]:
    """The anchor's rules as (proto, port, sources); AssertionError on any other line."""
    tables: dict[str, frozenset[str]] = {}
    rules: set[Rule] = set()
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if m := PF_TABLE.fullmatch(line):
            name, addrs = m.group(1), m.group(2).split()
            assert name not in tables, f"table <{name}> defined twice"
            for a in addrs:
                ipaddress.ip_address(a)
            assert len(set(addrs)) == len(addrs)
            tables[name] = frozenset(addrs)
            continue
        m = PF_PASS.fullmatch(line)
        assert m, f"unexpected pf line: {line!r}"
        protos = ["tcp", "udp"] if m.group(1).startswith("{") else [m.group(1)]
        assert m.group(2) in tables, f"table <{m.group(2)}> used before it is defined"
        for proto in protos:
            rules.add((proto, int(m.group(3)), tables[m.group(2)]))
    return rules


def test_pf_parser_refuses_what_pf_would() -> None:
    with pytest.raises(AssertionError, match="used before"):
        parse_pf_anchor("pass in proto tcp from <x> to (self) port 4647\n")
    with pytest.raises(AssertionError, match="unexpected"):
        parse_pf_anchor("pass in proto tcp from any to any port 4646\n")
    with pytest.raises(ValueError):
        parse_pf_anchor("table <x> const { 10.0.0.300 }\n")


def test_pf_anchor(openbsd: Rendered) -> None:
    for name, tree in openbsd.trees.items():
        node = openbsd.node(name)
        path, content = file_of_kind(tree, "firewall")
        assert path == f"{node.config_dir}/pf.anchor"
        rules = parse_pf_anchor(content.decode())
        assert rules == expected_rules(openbsd.cluster, node), name
        assert all(port != 4646 for _, port, _ in rules)
        assert any(f'load anchor "nomad" from "{path}"' in note for note in tree.notes)


# ---------------------------------------------------------------- Debian nftables

NFT_SET = re.compile(
    r"\tset (\w+) \{\n\t\ttype (ipv4_addr|ipv6_addr)\n\t\telements = \{ ([^{}]+) \}\n\t\}\n"
)
NFT_ACCEPT = re.compile(r"(ip|ip6) saddr @(\w+) (tcp|udp) dport (\d+) accept")


def parse_nft(text: str) -> set[Rule]:
    sets: dict[str, tuple[str, frozenset[str]]] = {}
    for m in NFT_SET.finditer(text):
        family = 4 if m.group(2) == "ipv4_addr" else 6
        addrs = [a.strip() for a in m.group(3).split(",")]
        assert all(ipaddress.ip_address(a).version == family for a in addrs)
        sets[m.group(1)] = (m.group(2), frozenset(addrs))
    (chain,) = re.findall(r"\tchain input \{\n(.*?)\n\t\}", text, re.S)
    lines = [ln.strip() for ln in chain.splitlines()]
    assert lines[0] == "type filter hook input priority filter - 1; policy accept;"
    assert lines[1] == 'iif "lo" accept'
    assert lines[-2:] == ["tcp dport { 4646, 4647, 4648 } drop", "udp dport 4648 drop"]
    rules: dict[tuple[str, int], set[str]] = {}
    for line in lines[2:-2]:
        rule = NFT_ACCEPT.fullmatch(line)
        assert rule, f"unexpected nft rule {line!r}"
        keyword, set_name, proto, port = rule.groups()
        kind, members = sets[set_name]
        assert (keyword == "ip") == (kind == "ipv4_addr"), line
        rules.setdefault((proto, int(port)), set()).update(members)
    return {(p, port, frozenset(a)) for (p, port), a in rules.items()}


def nft_check(path: Path) -> subprocess.CompletedProcess[str]:
    nft = tool("nft")
    cmd = [nft, "-c", "-f", str(path)]
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        cmd = [unshare, "-n", *cmd]  # a private network namespace: nothing real is touched
    return subprocess.run(cmd, capture_output=True, text=True)


def test_nftables_file(debian: Rendered, tmp_path: Path) -> None:
    for name, tree in debian.trees.items():
        node = debian.node(name)
        path, content = file_of_kind(tree, "firewall")
        assert path == "/etc/nftables.d/nomad-build.nft"
        target = tmp_path / f"{name}.nft"
        target.write_bytes(content)
        proc = nft_check(target)
        assert proc.returncode == 0, proc.stderr
        assert parse_nft(content.decode()) == expected_rules(debian.cluster, node), name
        # loading it twice is fine (it replaces its own table)
        twice = tmp_path / f"{name}-twice.nft"
        twice.write_text(f'include "{target}"\ninclude "{target}"\n')
        assert nft_check(twice).returncode == 0


def test_nft_check_refuses_a_broken_file(rendered_debian: Rendered, tmp_path: Path) -> None:
    """The oracle can fail: a wrong address type is refused."""
    _, content = file_of_kind(rendered_debian.trees["bi-core-sbg-1"], "firewall")
    broken = tmp_path / "broken.nft"
    broken.write_bytes(content.replace(b"type ipv4_addr", b"type ipv6_addr", 1))
    assert nft_check(broken).returncode != 0


# ---------------------------------------------------------------- systemd

# HashiCorp's nomad.service, as REFERENCE.md describes it (the unit our drop-in edits).
HASHICORP_UNIT = """\
[Unit]
Description=Nomad
Documentation=https://developer.hashicorp.com/nomad/docs
Wants=network-online.target
After=network-online.target
ConditionFileNotEmpty=/etc/nomad.d/nomad.hcl

[Service]
EnvironmentFile=-/etc/nomad.d/nomad.env
ExecReload=/bin/kill -HUP $MAINPID
ExecStart=/usr/bin/nomad agent -config /etc/nomad.d
KillMode=process
KillSignal=SIGINT
LimitNOFILE=65536
LimitNPROC=infinity
Restart=on-failure
RestartSec=2
TasksMax=infinity
OOMScoreAdjust=-1000
Type=notify
User=root
Group=root

[Install]
WantedBy=multi-user.target
"""


def systemd_root(tmp_path: Path, binary: bytes) -> Path:
    """A root directory systemd-analyze can verify in: the host's targets, kill, nomad."""
    root = tmp_path / "root"
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for target in Path("/usr/lib/systemd/system").glob("*.target"):
        shutil.copy(target, units / target.name, follow_symlinks=True)
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy(tool("kill"), root / "usr/bin/kill")
    (root / "bin").symlink_to("usr/bin")
    (root / "usr/bin/nomad").write_bytes(binary)
    (root / "usr/bin/nomad").chmod(0o755)
    return root


def verify(root: Path, unit: str = "nomad.service") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("systemd-analyze"), "verify", "--man=no", f"--root={root}", unit],
        capture_output=True,
        text=True,
    )


def unit_lines(text: str, section: str) -> list[str]:
    (body,) = re.findall(rf"^\[{section}\]\n(.*?)(?=^\[|\Z)", text, re.S | re.M)
    return [ln for ln in body.splitlines() if ln and not ln.startswith("#")]


def test_systemd_drop_in(rendered_debian: Rendered, tmp_path: Path) -> None:
    for name, tree in rendered_debian.trees.items():
        node = rendered_debian.node(name)
        path, content = file_of_kind(tree, "unit")
        assert path == "/usr/lib/systemd/system/nomad.service.d/nomad-build.conf"
        text = content.decode()
        service = unit_lines(text, "Service")
        user = "nomad" if node.role == "server" else "root"
        assert f"User={user}" in service and f"Group={user}" in service
        starts = [ln for ln in service if ln.startswith("ExecStart=")]
        assert starts == [
            "ExecStart=",
            f"ExecStart=/usr/bin/nomad agent -config {node.config_file}",
        ]
        assert unit_lines(text, "Unit") == [
            "ConditionFileNotEmpty=",
            f"ConditionFileNotEmpty={node.config_file}",
        ]

        root = systemd_root(tmp_path / name, b"#!/bin/sh\n")
        units = root / "usr/lib/systemd/system"
        (units / "nomad.service").write_text(HASHICORP_UNIT)
        (units / "nomad.service.d").mkdir()
        (units / "nomad.service.d/nomad-build.conf").write_bytes(content)
        proc = verify(root)
        assert (proc.returncode, proc.stderr) == (0, "")

    # the check can fail: without the reset, a notify service has two ExecStart=
    (units / "nomad.service.d/nomad-build.conf").write_text(text.replace("ExecStart=\n", "", 1))
    proc = verify(root)
    assert proc.returncode != 0
    assert "more than one ExecStart=" in proc.stderr


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    directory = tmp_path_factory.mktemp("bundled")
    binary = b"#!/bin/sh\necho 'Nomad v1.9.3'\n"
    return render_all(directory, "debian", append=bundle_table(directory, binary))


def test_systemd_full_unit_with_bundled_binary(bundled: Rendered, tmp_path: Path) -> None:
    for name, tree in bundled.trees.items():
        node = bundled.node(name)
        path, content = file_of_kind(tree, "unit")
        assert path == "/usr/lib/systemd/system/nomad.service"
        assert tree.service.unit_path == path
        (binary,) = [f for f in tree.files if f.kind == "binary"]
        assert (binary.path, binary.mode) == ("/usr/bin/nomad", 0o755)
        text = content.decode()
        service = unit_lines(text, "Service")
        user = "nomad" if node.role == "server" else "root"
        assert f"User={user}" in service and f"Group={user}" in service
        assert [ln for ln in service if ln.startswith("ExecStart=")] == [
            f"ExecStart=/usr/bin/nomad agent -config {node.config_file}"
        ]
        for line in ("Type=notify", "KillMode=process", "KillSignal=SIGINT", "Restart=on-failure"):
            assert line in service
        assert unit_lines(text, "Install") == ["WantedBy=multi-user.target"]

        root = systemd_root(tmp_path / name, binary.content)
        (root / "usr/lib/systemd/system/nomad.service").write_bytes(content)
        proc = verify(root)
        assert (proc.returncode, proc.stderr) == (0, "")

    # the check can fail: a typo'd key is reported
    (root / "usr/lib/systemd/system/nomad.service").write_text(
        text.replace("Type=notify", "Typ=notify")
    )
    assert "Unknown key" in verify(root).stderr


def test_bundled_nomad_before_1_8_runs_as_a_simple_service(tmp_path: Path) -> None:
    """Nomad sends systemd READY=1 only from 1.8 on: an older bundled binary under
    Type=notify would be killed when the start timeout runs out."""
    binary = b"#!/bin/sh\necho 'Nomad v1.7.7'\n"
    old = render_all(tmp_path, "debian", append=bundle_table(tmp_path, binary, "1.7.7"))
    for tree in old.trees.values():
        service = unit_lines(file_of_kind(tree, "unit")[1].decode(), "Service")
        assert "Type=simple" in service and "Type=notify" not in service
