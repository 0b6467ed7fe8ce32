"""Malformed cluster files, through the real command: exit 2, one line on stderr naming
the file and the offending key, no traceback, and nothing written anywhere.

Each case is a small mutation of examples/bi-sbg.toml (as conftest writes it).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import example_text, nomad_build

CLUSTER = "cluster.toml"
NODE_INDEX = {
    "bi-core-sbg-1": 0,
    "bi-core-sbg-2": 1,
    "bi-core-sbg-3": 2,
    "bi-node-sbg-1": 3,
    "bi-node-sbg-2": 4,
    "bi-node-sbg-3": 5,
}


# ---------------------------------------------------------------- mutations
Mutation = Callable[[str, Path], str | bytes | None]  # None: write no cluster file


def sub(old: str, new: str, count: int = 1) -> Mutation:
    def apply(text: str, _: Path) -> str:
        assert text.count(old) >= count, f"example lacks {old!r}"
        return text.replace(old, new, count)

    return apply


def drop_line(prefix: str) -> Mutation:
    def apply(text: str, _: Path) -> str:
        out = re.sub(rf"^{re.escape(prefix)}.*\n", "", text, count=1, flags=re.M)
        assert out != text
        return out

    return apply


def add(text_to_add: str) -> Mutation:
    return lambda text, _: text + text_to_add


def on_node(name: str, line: str) -> Mutation:
    return sub(f'name = "{name}"\n', f'name = "{name}"\n{line}\n')


def node_key(name: str, key: str) -> str:
    """The key path the error must name: nodes[<index>] (<name>).<key>."""
    return re.escape(f"nodes[{NODE_INDEX[name]}] ({name}).{key}")


def cut_nodes(text: str, _: Path) -> str:
    return text[: text.index("[[nodes]]")]


def not_utf8(text: str, _: Path) -> bytes:
    return text.replace("# Every node", "# Every n\xf6de", 1).encode("latin-1")


def missing_file(text: str, _: Path) -> None:
    return None


def toml_error(text: str, _: Path) -> str:
    return text.replace("cert_days = 365", "cert_days = = 365", 1)


CERT_DAYS_LINE = example_text().split("\n").index("cert_days = 365") + 1


def bundle(good: bool) -> Mutation:
    """A fake Nomad binary and SHA256SUMS beside the cluster file."""

    def apply(text: str, directory: Path) -> str:
        binary = directory / "nomad"
        binary.write_bytes(b"#!/bin/sh\necho fake nomad\n")
        digest = hashlib.sha256(binary.read_bytes()).hexdigest()
        if not good:
            digest = hashlib.sha256(b"another build").hexdigest()
        (directory / "SHA256SUMS").write_text(f"{digest}  nomad\n")
        return text + (
            '\n[packages.bundle]\nbinary = "nomad"\nsha256sums = "SHA256SUMS"\nversion = "1.9.3"\n'
        )

    return apply


def bundle_missing(text: str, directory: Path) -> str:
    (directory / "SHA256SUMS").write_text(f"{'0' * 64}  nomad\n")
    return text + (
        '\n[packages.bundle]\nbinary = "nomad"\nsha256sums = "SHA256SUMS"\nversion = "1.9.3"\n'
    )


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Mutation
    expect: str  # regex the one stderr line must match (the key path, at least)
    package: bool = False  # also run `package --node bi-core-sbg-1`


CASES = [
    Case("unknown-table", add("\n[packagez]\nx = 1\n"), r": packagez: unknown table"),
    Case(
        "unknown-cluster-key",
        sub("[cluster]\n", '[cluster]\ncolour = "blue"\n'),
        r": cluster\.colour: unknown key",
    ),
    Case(
        "typo-bootstrap_expext",
        sub("[cluster]\n", "[cluster]\nbootstrap_expext = 3\n"),
        r": cluster\.bootstrap_expext: unknown key; did you mean 'bootstrap_expect'",
        package=True,
    ),
    Case(
        "cert_days-string",
        sub("cert_days = 365", 'cert_days = "365"'),
        r": pki\.cert_days: must be an integer, not a string",
    ),
    Case("cert_days-zero", sub("cert_days = 365", "cert_days = 0"), r": pki\.cert_days: 0 "),
    Case("missing-region", drop_line("region = "), r": cluster\.region: missing"),
    Case("missing-domain", drop_line("domain = "), r": cluster\.domain: missing"),
    Case(
        "region-not-a-label",
        sub('region = "eu"', 'region = "EU west"'),
        r": cluster\.region: 'EU west'",
    ),
    Case("missing-nodes", cut_nodes, r": nodes: missing"),
    Case(
        "duplicate-node-name",
        sub('name = "bi-core-sbg-2"', 'name = "bi-core-sbg-1"'),
        r": nodes\[1\] \(bi-core-sbg-1\).*already used by node bi-core-sbg-1",
        package=True,
    ),
    Case(
        "duplicate-ip",
        sub('address = "10.20.130.53"', 'address = "10.20.130.52"'),
        r": nodes\[1\] \(bi-core-sbg-2\).*10\.20\.130\.52 is already used by node bi-core-sbg-1",
    ),
    Case(
        "invalid-ip",
        sub('address = "10.20.130.52"', 'address = "10.20.130.300"'),
        node_key("bi-core-sbg-1", "address") + r": '10\.20\.130\.300' is not an IP address",
        package=True,
    ),
    Case(
        "loopback-address",
        sub('address = "10.20.130.52"', 'address = "127.0.0.1"'),
        node_key("bi-core-sbg-1", "address") + r": '127\.0\.0\.1' is a loopback address",
    ),
    Case(
        "extra_ips-invalid",
        on_node("bi-node-sbg-2", 'extra_ips = ["10.0.0"]'),
        node_key("bi-node-sbg-2", "extra_ips") + r": '10\.0\.0' is not an IP address",
    ),
    Case(
        "uppercase-name",
        sub('name = "bi-core-sbg-1"', 'name = "Bi-core-sbg-1"'),
        r": nodes\[0\] \(Bi-core-sbg-1\)\.name: 'Bi-core-sbg-1' is not a DNS label",
    ),
    Case(
        "underscore-name",
        sub('name = "bi-node-sbg-1"', 'name = "bi_node_sbg_1"'),
        r": nodes\[3\] \(bi_node_sbg_1\)\.name: 'bi_node_sbg_1' is not a DNS label",
    ),
    Case(
        "name-longer-than-63",
        sub('name = "bi-node-sbg-1"', f'name = "{"n" * 64}"'),
        r": nodes\[3\] \(n{64}\)\.name: ",
    ),
    Case(
        "bootstrap_expect-mismatch",
        sub("[cluster]\n", "[cluster]\nbootstrap_expect = 5\n"),
        r": cluster\.bootstrap_expect: is 5 but the file defines 3 server",
    ),
    Case(
        "zero-servers",
        sub('role = "server"', 'role = "client"', 3),
        r": nodes: no node has role 'server' or 'both'",
    ),
    Case(
        "unknown-role",
        sub('role = "server"', 'role = "leader"'),
        node_key("bi-core-sbg-1", "role") + r": 'leader' is not one of",
        package=True,
    ),
    Case(
        "unknown-role-table",
        add('\n[roles.leader]\nnode_class = "x"\n'),
        r": roles\.leader: unknown role",
    ),
    Case(
        "unknown-os",
        on_node("bi-node-sbg-1", 'os = "freebsd"'),
        node_key("bi-node-sbg-1", "os") + r": 'freebsd' is not one of",
    ),
    Case(
        "unknown-node-key",
        on_node("bi-core-sbg-1", 'adress = "10.0.0.1"'),
        node_key("bi-core-sbg-1", "adress") + r": unknown key; did you mean 'address'",
    ),
    Case(
        "unknown-defaults-key",
        sub("[defaults]\n", '[defaults]\ncolour = "x"\n'),
        r": defaults\.colour: unknown key",
    ),
    Case(
        "extra_names-outside-constraints",
        on_node("bi-core-sbg-1", 'extra_names = ["nomad.example.com"]'),
        node_key("bi-core-sbg-1", "extra_names")
        + r": 'nomad\.example\.com' lies outside the CA's name constraints",
    ),
    Case(
        "extra-consul-adress",
        on_node("bi-core-sbg-1", 'extra = { consul = { adress = "127.0.0.1:8500" } }'),
        node_key("bi-core-sbg-1", "extra.consul.adress") + r": unknown key.*'address'",
        package=True,
    ),
    Case(
        "extra-tls-typo",
        on_node("bi-node-sbg-2", "extra = { tls = { verfy_server_hostname = true } }"),
        node_key("bi-node-sbg-2", "extra.tls.verfy_server_hostname") + r": unknown key",
    ),
    Case(
        "extra-telemetry-reserved",
        on_node("bi-node-sbg-2", "extra = { telemetry = { prometheus_metrics = true } }"),
        node_key("bi-node-sbg-2", "extra.telemetry") + r": set by nomad-build; use telemetry$",
    ),
    Case(
        "extra-plugin-confg",
        on_node(
            "bi-node-sbg-1", "extra = { plugin = { raw_exec = { confg = { enabled = true } } } }"
        ),
        node_key("bi-node-sbg-1", "extra.plugin.raw_exec.confg") + r": unknown key",
    ),
    Case(
        "extra-consul-tags-not-a-list",
        on_node("bi-node-sbg-1", 'extra = { consul = { tags = "a" } }'),
        node_key("bi-node-sbg-1", "extra.consul.tags") + r": must be a list of strings",
    ),
    Case(
        "extra-tls-not-a-block",
        on_node("bi-node-sbg-1", 'extra = { tls = "on" }'),
        node_key("bi-node-sbg-1", "extra.tls") + r": must be a block",
    ),
    Case(
        "extra-client-on-a-server",
        on_node("bi-core-sbg-1", "extra = { client = { gc_max_allocs = 5 } }"),
        node_key("bi-core-sbg-1", "extra.client") + r": a server-only node has no client block",
    ),
    Case(
        "telemetry-typo",
        on_node("bi-node-sbg-3", "telemetry = { prometheus_metric = true }"),
        node_key("bi-node-sbg-3", "telemetry.prometheus_metric") + r": unknown key",
    ),
    Case(
        "meta-not-a-string",
        sub('meta = { client_type = "edge" }', "meta = { client_type = 3 }"),
        node_key("bi-node-sbg-1", "meta.client_type") + r": must be a string",
    ),
    Case(
        "toml-syntax-error",
        toml_error,
        rf": TOML syntax error: .*line {CERT_DAYS_LINE}\b",
        package=True,
    ),
    Case(
        "docker-on-openbsd",
        on_node("bi-node-sbg-1", 'drivers = ["docker"]'),
        node_key("bi-node-sbg-1", "drivers") + r": the docker driver does not run on openbsd",
    ),
    Case(
        "unknown-driver",
        on_node("bi-node-sbg-1", 'drivers = ["podman"]'),
        node_key("bi-node-sbg-1", "drivers") + r": 'podman' is unknown",
    ),
    Case(
        "drivers-on-a-server",
        on_node("bi-core-sbg-1", 'drivers = ["raw_exec"]'),
        node_key("bi-core-sbg-1", "drivers") + r": a server-only node runs no tasks",
    ),
    Case(
        "log_level-bogus",
        on_node("bi-node-sbg-1", 'log_level = "LOUD"'),
        node_key("bi-node-sbg-1", "log_level") + r": 'LOUD' is not one of",
    ),
    Case(
        "mac-malformed",
        on_node("bi-node-sbg-1", 'mac = "52:54:00:zz:00:01"'),
        node_key("bi-node-sbg-1", "mac") + r": '52:54:00:zz:00:01' is not a MAC address",
    ),
    Case(
        "password_hash-plain-text",
        sub('admin_user = "ops"\n', 'admin_user = "ops"\npassword_hash = "hunter2"\n'),
        r": images\.password_hash: must be a crypt\(3\) hash",
    ),
    Case(
        "password_hash-sha512-for-openbsd",
        sub(
            'admin_user = "ops"\n',
            'admin_user = "ops"\npassword_hash = "$6$salt$'
            'qzSLox10o6KQYYwQm9TncYklmTzY2WJxEk0k7I8gbueT3UQb1ZA9mNaxLgZU2AeTXy6GuZLUQbgnYtBCm8L630"\n',
        ),
        r": images\.password_hash: OpenBSD's installer takes only a bcrypt hash",
    ),
    Case(
        "ssh_keys-not-a-key",
        sub('admin_user = "ops"\n', 'admin_user = "ops"\nssh_keys = ["hello"]\n'),
        r": images\.ssh_keys\[0\]: is not an OpenSSH public key",
    ),
    Case(
        "signing_key_name-without-pkg",
        sub("[packages]\n", '[packages]\nsigning_key_name = "bi-sbg"\n'),
        r": packages\.signing_key_name: 'bi-sbg' must end in '-pkg'",
        package=True,
    ),
    Case(
        "bundle-sha-mismatch",
        bundle(good=False),
        r": packages\.bundle\.binary: .*nomad: SHA-256 [0-9a-f]{64} does not match",
        package=True,
    ),
    Case(
        "bundle-binary-missing",
        bundle_missing,
        r": packages\.bundle\.binary: .*nomad: no such file",
    ),
    Case(
        "renew_before_days-not-below-cert_days",
        sub("renew_before_days = 30", "renew_before_days = 365"),
        r": pki\.renew_before_days: 365 must be shorter than cert_days \(365\)",
    ),
    Case("not-utf-8", not_utf8, r": not UTF-8"),
    Case("missing-cluster-file", missing_file, r": no such cluster file", package=True),
    # Values set in [defaults] or [roles.*] are wrong THERE: the message must say so.
    Case(
        "defaults-log_level-bogus",
        sub('log_level = "INFO"', 'log_level = "LOUD"'),
        r": defaults\.log_level: 'LOUD' is not one of",
    ),
    Case(
        "roles-extra-consul-adress",
        sub("[roles.client]\n", '[roles.client]\nextra = { consul = { adress = "x:1" } }\n'),
        r": roles\.client\.extra\.consul\.adress: unknown key",
    ),
]


# ---------------------------------------------------------------- running


def listing(directory: Path) -> list[tuple[str, int, int]]:
    """Every path below `directory` with its size and mtime: any write shows."""
    out = []
    for root, dirs, files in os.walk(directory):
        for name in sorted(dirs + files):
            p = Path(root, name)
            st = p.lstat()
            out.append((str(p.relative_to(directory)), st.st_size, st.st_mtime_ns))
    return sorted(out)


def assert_refused(
    proc: subprocess.CompletedProcess[str], expect: str, *, file_name: str = CLUSTER
) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("nomad-build: "), line
    if file_name:
        assert file_name in line, line
    assert re.search(expect, line), f"{expect!r} not in {line!r}"
    return line


def write_case(case: Case, directory: Path) -> None:
    result = case.mutate(example_text("openbsd"), directory)
    if isinstance(result, bytes):
        (directory / CLUSTER).write_bytes(result)
    elif result is not None:
        (directory / CLUSTER).write_text(result)


def test_the_unmutated_example_is_accepted(tmp_path: Path) -> None:
    """The baseline of every case below: without the mutation, check passes."""
    (tmp_path / CLUSTER).write_text(example_text("openbsd"))
    proc = nomad_build(tmp_path, "check", "-c", CLUSTER)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_the_bundle_fixture_is_accepted(tmp_path: Path) -> None:
    """The bundle cases differ from an accepted bundle only by what they break."""
    # a shell script is a valid bundle only for Debian (an OpenBSD package needs its ELF)
    (tmp_path / CLUSTER).write_text(bundle(good=True)(example_text("debian"), tmp_path))
    assert nomad_build(tmp_path, "check", "-c", CLUSTER).returncode == 0


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_cluster_file_is_refused_and_nothing_written(case: Case, tmp_path: Path) -> None:
    write_case(case, tmp_path)
    before = listing(tmp_path)

    line = assert_refused(nomad_build(tmp_path, "check", "-c", CLUSTER), case.expect)
    assert listing(tmp_path) == before
    assert "hunter2" not in line  # a plain password given by mistake is never echoed

    build = nomad_build(tmp_path, "build", "-c", CLUSTER, "--state", "S", "--out", "O")
    assert assert_refused(build, case.expect) == line
    assert not (tmp_path / "S").exists() and not (tmp_path / "O").exists()
    assert listing(tmp_path) == before

    if case.package:
        pkg = nomad_build(
            tmp_path, "package", "-c", CLUSTER, "--node", "bi-core-sbg-1", "--state", "S",
            "--out", "O",
        )  # fmt: skip
        assert assert_refused(pkg, case.expect) == line
        assert listing(tmp_path) == before


def test_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


# ---------------------------------------------------------------- bad requests


@pytest.fixture
def example_dir(tmp_path: Path) -> Path:
    (tmp_path / CLUSTER).write_text(example_text("openbsd"))
    return tmp_path


def test_package_role_guard(example_dir: Path) -> None:
    before = listing(example_dir)
    proc = nomad_build(
        example_dir, "package", "-c", CLUSTER, "--node", "bi-core-sbg-1", "--role", "client",
        "--out", "O",
    )  # fmt: skip
    assert_refused(proc, r"node bi-core-sbg-1 has role 'server', not 'client'")
    assert listing(example_dir) == before


def test_unknown_node_lists_the_nodes(example_dir: Path) -> None:
    before = listing(example_dir)
    for args in (
        ["package", "--node", "nosuch", "--out", "O"],
        ["render", "--node", "nosuch", "--out", "R"],
        ["image", "--node", "nosuch", "--kind", "cloud-init", "--out", "O"],
    ):
        proc = nomad_build(example_dir, args[0], "-c", CLUSTER, *args[1:])
        line = assert_refused(proc, r"no node named 'nosuch'")
        for name in NODE_INDEX:
            assert name in line
        assert listing(example_dir) == before


def test_package_format_must_match_the_os(example_dir: Path) -> None:
    before = listing(example_dir)
    proc = nomad_build(
        example_dir, "package", "-c", CLUSTER, "--node", "bi-node-sbg-1", "--format", "deb",
        "--out", "O",
    )  # fmt: skip
    assert_refused(proc, r"node bi-node-sbg-1 runs openbsd; its package format is openbsd, not deb")
    assert listing(example_dir) == before


def test_image_kind_must_match_the_os(example_dir: Path) -> None:
    before = listing(example_dir)
    proc = nomad_build(
        example_dir, "image", "-c", CLUSTER, "--node", "bi-node-sbg-1", "--kind", "cloud-init",
        "--state", "S", "--out", "O",
    )  # fmt: skip
    assert_refused(proc, r"node bi-node-sbg-1 runs openbsd; a cloud-init image is for debian")
    assert listing(example_dir) == before
