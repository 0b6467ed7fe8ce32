"""Bad input, through the real command: exit 2, one line on stderr naming the file (cluster
file, state file or path) and the offending key, no traceback, and nothing written
anywhere: state/ and the --out directory stay byte-identical, modes included
(conftest.tree_fingerprint), whether they exist yet or not.

One table per category (the count is test_catalogue_is_large_enough):

- CLUSTER_CASES: cluster keys, each a small mutation of examples/bi-sbg.toml;
- EXTRA_CASES: `extra` setting what nomad-build writes itself, or Nomad keys misspelt;
- ADDRESS_CASES: addresses, names and MACs no node can have;
- ENV_CASES: SOURCE_DATE_EPOCH that is not a plain number of seconds;
- STATE_CASES: state/ damaged after a good build: refused, with the way out ("restore");
- OUT_CASES: --out that would destroy the state, the cluster file or a foreign directory;
- USAGE_CASES: command-line mistakes (options, choices, files that are no cluster file).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import (
    STATE_LEDGER,
    copy_tree,
    example_of,
    example_text,
    nomad_build,
    tree_fingerprint,
)

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
TextMutation = Callable[[str, Path], str]  # a Mutation that always yields text


def sub(old: str, new: str, count: int = 1) -> TextMutation:
    def apply(text: str, _: Path) -> str:
        assert text.count(old) >= count, f"example lacks {old!r}"
        return text.replace(old, new, count)

    return apply


def drop_line(prefix: str) -> TextMutation:
    def apply(text: str, _: Path) -> str:
        out = re.sub(rf"^{re.escape(prefix)}.*\n", "", text, count=1, flags=re.M)
        assert out != text
        return out

    return apply


def add(text_to_add: str) -> TextMutation:
    return lambda text, _: text + text_to_add


def on_node(name: str, line: str) -> TextMutation:
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


def bundle(good: bool) -> TextMutation:
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
    os_name: str = "openbsd"  # the example it mutates (conftest.example_of)


CLUSTER_CASES = [
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
        # the key the operator wrote, down to the leaf
        node_key("bi-node-sbg-2", "extra.telemetry.prometheus_metrics")
        + r": set by nomad-build; use telemetry$",
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
        lambda text, _: re.sub(r"^ssh_keys = .*$", 'ssh_keys = ["hello"]', text, flags=re.M),
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


def rest_of(key: str, hint: str) -> str:
    """The key path, then (later on the line, after the colon) the hint."""
    return re.escape(key) + r": .*" + hint


# ---------------------------------------------------------------- extra
# `extra` passes Nomad settings through; what nomad-build writes itself must be set
# through the cluster file's own key, which the message names (after the colon).
# (node, extra table, the key path under extra, the hint regex)
OWN_KEYS = [
    ("bi-node-sbg-1", 'region = "us"', "region", r"cluster\.region"),
    ("bi-node-sbg-1", 'datacenter = "dc2"', "datacenter", r"cluster\.datacenter"),
    ("bi-node-sbg-1", 'name = "other"', "name", r"\bname\b"),
    (
        "bi-core-sbg-1",
        "server = { bootstrap_expect = 1 }",
        "server.bootstrap_expect",
        r"cluster\.bootstrap_expect",
    ),
    ("bi-core-sbg-1", 'server = { encrypt = "x" }', "server.encrypt", r"gossip"),
    ("bi-core-sbg-1", 'tls = { ca_file = "/x" }', "tls.ca_file", r"tls_dir"),
    ("bi-core-sbg-1", 'tls = { cert_file = "/x" }', "tls.cert_file", r"tls_dir"),
    ("bi-node-sbg-2", 'tls = { key_file = "/x" }', "tls.key_file", r"tls_dir"),
    (
        "bi-node-sbg-2",
        'addresses = { http = "0.0.0.0" }',
        "addresses.http",
        r"loopback|127\.0\.0\.1",
    ),
    ("bi-node-sbg-2", 'advertise = { rpc = "10.0.0.9" }', "advertise.rpc", r"\badvertise\b"),
    (
        "bi-node-sbg-2",
        'consul = { address = "10.0.0.1:8500" }',
        "consul.address",
        r"consul\.address",
    ),
    (
        "bi-core-sbg-1",
        'consul = { server_service_name = "x" }',
        "consul.server_service_name",
        r"consul\.server_service_name",
    ),
    ("bi-node-sbg-3", 'client = { meta = { a = "b" } }', "client.meta.a", r"\bmeta\b"),
    ("bi-node-sbg-3", 'data_dir = "/srv/nomad"', "data_dir", r"\bdata_dir\b"),
    ("bi-node-sbg-3", 'log_level = "DEBUG"', "log_level", r"\blog_level\b"),
]

EXTRA_CASES = [
    Case(
        f"extra-sets-{key}",
        on_node(node, f"extra = {{ {table} }}"),
        rest_of(f"nodes[{NODE_INDEX[node]}] ({node}).extra.{key}", hint),
    )
    for node, table, key, hint in OWN_KEYS
] + [
    Case(
        "roles-extra-sets-region",
        sub("[roles.client]\n", '[roles.client]\nextra = { region = "us" }\n'),
        rest_of("roles.client.extra.region", r"cluster\.region"),
    ),
    Case(
        "defaults-extra-sets-data_dir",
        sub("[defaults]\n", '[defaults]\nextra = { data_dir = "/srv/nomad" }\n'),
        rest_of("defaults.extra.data_dir", r"\bdata_dir\b"),
    ),
    # Nomad's server block is strict (an unknown key stops the agent): did-you-mean.
    Case(
        "extra-server-deployment_query_rate_limit",
        on_node("bi-core-sbg-1", "extra = { server = { deployment_query_rate_limit = 5 } }"),
        node_key("bi-core-sbg-1", "extra.server.deployment_query_rate_limit")
        + r": unknown key.*'deploy_query_rate_limit'",
        package=True,
    ),
    # consul and vault blocks are lax in Nomad (a typo is silently ignored): refused here.
    Case(
        "extra-consul-adress-on-a-client",
        on_node("bi-node-sbg-2", 'extra = { consul = { adress = "127.0.0.1:8500" } }'),
        node_key("bi-node-sbg-2", "extra.consul.adress") + r": unknown key.*'address'",
    ),
    Case(
        "extra-vault-adress",
        on_node("bi-core-sbg-1", 'extra = { vault = { adress = "https://vault:8200" } }'),
        node_key("bi-core-sbg-1", "extra.vault.adress") + r": unknown key.*'address'",
    ),
]


# ---------------------------------------------------------------- addresses
BAD_IPS = [
    ("zone-scoped", "fe80::1%eth0"),
    ("multicast4", "224.0.0.1"),
    ("multicast6", "ff02::1"),
    ("unspecified4", "0.0.0.0"),
    ("unspecified6", "::"),
    ("broadcast", "255.255.255.255"),
]
IP_FIELDS = {
    "address": sub('address = "10.20.131.42"', 'address = "{ip}"'),
    "extra_ips": on_node("bi-node-sbg-2", 'extra_ips = ["{ip}"]'),
    "advertise": on_node("bi-node-sbg-2", 'advertise = "{ip}"'),
}


def with_ip(field: str, ip: str) -> Mutation:
    def apply(text: str, d: Path) -> str | bytes | None:
        out = IP_FIELDS[field](text, d)
        assert isinstance(out, str)
        return out.replace("{ip}", ip)

    return apply


def two_nodes(line_1: str, line_2: str) -> Mutation:
    first, second = on_node("bi-node-sbg-1", line_1), on_node("bi-node-sbg-2", line_2)

    def apply(text: str, d: Path) -> str:
        out = first(text, d)
        assert isinstance(out, str)
        out = second(out, d)
        assert isinstance(out, str)
        return out

    return apply


LONG_DOMAIN = ".".join(["d" * 61] * 4)  # 247 characters: a valid domain ...
assert len(LONG_DOMAIN) == 247  # ... but bi-core-sbg-1.<it> is 261 > 253

ADDRESS_CASES = [
    Case(
        f"{field}-{kind}",
        with_ip(field, ip),
        node_key("bi-node-sbg-2", field) + r"(\[0\])?: '" + re.escape(ip) + "'",
    )
    for field in IP_FIELDS
    for kind, ip in BAD_IPS
] + [
    Case(
        "fqdn-longer-than-253",
        sub('domain = "intra.terror.ninja"', f'domain = "{LONG_DOMAIN}"'),
        r"(cluster\.domain|nodes\[0\] \(bi-core-sbg-1\)).*: .*253",
    ),
    Case(
        "domain-label-longer-than-63",
        sub('domain = "intra.terror.ninja"', f'domain = "{"x" * 64}.ninja"'),
        r"cluster\.domain: '" + "x" * 64,
    ),
    Case(
        "extra_names-label-longer-than-63",
        on_node("bi-core-sbg-1", f'extra_names = ["{"e" * 64}.intra.terror.ninja"]'),
        node_key("bi-core-sbg-1", "extra_names") + r"(\[0\])?: '" + "e" * 64,
    ),
    Case(
        "duplicate-mac",
        two_nodes('mac = "52:54:00:00:00:01"', 'mac = "52:54:00:00:00:01"'),
        node_key("bi-node-sbg-2", "mac") + r": .*already used by node bi-node-sbg-1",
    ),
    Case(
        "duplicate-mac-other-case",
        two_nodes('mac = "52:54:00:ab:00:01"', 'mac = "52:54:00:AB:00:01"'),
        node_key("bi-node-sbg-2", "mac") + r": .*already used by node bi-node-sbg-1",
    ),
    Case(
        # The cloud-init seed's network-config must match the NIC by name or MAC.
        "prefix-without-interface-or-mac-on-debian",
        lambda text, d: on_node("bi-node-sbg-2", "prefix = 24")(
            drop_line('interface = "eth1"')(text, d), d
        ),
        node_key("bi-node-sbg-2", "prefix") + r": .*(interface|mac)",
        os_name="debian",
    ),
    Case(
        "openbsd_sets_url-without-architecture",
        sub(
            'openbsd_sets_url = "http://10.20.130.10/pub/OpenBSD/7.8/amd64"',
            'openbsd_sets_url = "http://10.20.130.1/pub/OpenBSD/7.8"',
        ),
        r"images\.openbsd_sets_url: .*(architecture|amd64)",
    ),
]

FILE_CASES = CLUSTER_CASES + EXTRA_CASES + ADDRESS_CASES


# ---------------------------------------------------------------- running


def assert_refused(
    proc: subprocess.CompletedProcess[str], expect: str, *, file_name: str | None = CLUSTER
) -> str:
    """Exit 2, no traceback, exactly one stderr line: 'nomad-build: ', naming file_name
    (unless None) and matching `expect`."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("nomad-build: "), line
    assert "Usage:" not in line, line
    if file_name:
        assert file_name in line, line
    assert re.search(expect, line), f"{expect!r} not in {line!r}"
    return line


def write_case(case: Case, directory: Path) -> None:
    result = case.mutate(example_of(case.os_name), directory)
    path = directory / CLUSTER
    if isinstance(result, bytes):
        path.write_bytes(result)
    elif result is not None:
        path.write_text(result)
    else:
        path.unlink(missing_ok=True)


def test_the_unmutated_example_is_accepted(tmp_path: Path) -> None:
    """The baseline of every case below: without the mutation, check passes."""
    for kind in ("openbsd", "debian", "mixed"):
        (tmp_path / CLUSTER).write_text(example_of(kind))
        proc = nomad_build(tmp_path, "check", "-c", CLUSTER)
        assert proc.returncode == 0, proc.stderr
        # Debian nodes: an apt repository without the URL it is served at, seeds without
        # HashiCorp's apt source, no autoinstall seeds without a password hash (warnings,
        # tests/test_operator.py); nothing else.
        keys = [
            re.search(r"^warning: cluster\.toml: ([\w.]+):", ln) for ln in proc.stderr.splitlines()
        ]
        assert [m.group(1) if m else None for m in keys] == (
            []
            if kind == "openbsd"
            else ["packages.repo_url", "packages.nomad_apt", "images.password_hash"]
        ), proc.stderr


def test_the_bundle_fixture_is_accepted(tmp_path: Path) -> None:
    """The bundle cases differ from an accepted bundle only by what they break."""
    # a shell script is a valid bundle only for Debian (an OpenBSD package needs its ELF)
    (tmp_path / CLUSTER).write_text(bundle(good=True)(example_text("debian"), tmp_path))
    assert nomad_build(tmp_path, "check", "-c", CLUSTER).returncode == 0


def test_good_addresses_are_accepted(tmp_path: Path) -> None:
    """What the address cases refuse is the value, not the key: these pass."""
    text = example_text("openbsd")
    text = text.replace('address = "10.20.131.42"', 'address = "2001:db8::42"')
    text = text.replace(
        'name = "bi-node-sbg-2"\n',
        'name = "bi-node-sbg-2"\nextra_ips = ["10.20.140.42"]\nadvertise = "10.20.131.42"\n'
        'mac = "52:54:00:00:00:02"\n',
    )
    (tmp_path / CLUSTER).write_text(text)
    proc = nomad_build(tmp_path, "check", "-c", CLUSTER)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("case", FILE_CASES, ids=[c.id for c in FILE_CASES])
def test_bad_cluster_file_is_refused_and_nothing_written(
    case: Case, tmp_path: Path, built_example: Callable[[str], Path]
) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    write_case(case, fresh)
    before = tree_fingerprint(fresh)

    line = assert_refused(nomad_build(fresh, "check", "-c", CLUSTER), case.expect)
    assert tree_fingerprint(fresh) == before
    assert "hunter2" not in line  # a plain password given by mistake is never echoed

    build = nomad_build(fresh, "build", "-c", CLUSTER, "--state", "S", "--out", "O")
    assert assert_refused(build, case.expect) == line
    assert not (fresh / "S").exists() and not (fresh / "O").exists()
    assert tree_fingerprint(fresh) == before

    if case.package:
        pkg = nomad_build(
            fresh, "package", "-c", CLUSTER, "--node", "bi-core-sbg-1", "--state", "S",
            "--out", "O",
        )  # fmt: skip
        assert assert_refused(pkg, case.expect) == line
        assert tree_fingerprint(fresh) == before

    # The same file over the state and dist/ of an earlier good build: both untouched.
    old = tmp_path / "old"
    copy_tree(built_example(case.os_name), old)
    write_case(case, old)
    state, dist = tree_fingerprint(old / "state"), tree_fingerprint(old / "dist")
    assert assert_refused(nomad_build(old, "build", "-c", CLUSTER), case.expect) == line
    assert tree_fingerprint(old / "state") == state
    assert tree_fingerprint(old / "dist") == dist


# ---------------------------------------------------------------- environment


@dataclass(frozen=True)
class EnvCase:
    id: str
    env: dict[str, str]
    expect: str


# Only digits are seconds since the epoch (reproducible-builds.org); anything else,
# the empty string included, is refused the same way by every command.
ENV_CASES = [
    EnvCase(f"SOURCE_DATE_EPOCH-{name}", {"SOURCE_DATE_EPOCH": value}, r"SOURCE_DATE_EPOCH")
    for name, value in (("abc", "abc"), ("negative", "-5"), ("float", "1e9"), ("empty", ""))
]


def test_a_plain_source_date_epoch_is_accepted(tmp_path: Path) -> None:
    (tmp_path / CLUSTER).write_text(example_text("openbsd"))
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    assert nomad_build(tmp_path, "check", "-c", CLUSTER, env=env).returncode == 0
    assert nomad_build(tmp_path, "build", "-c", CLUSTER, env=env).returncode == 0


@pytest.mark.parametrize("case", ENV_CASES, ids=[c.id for c in ENV_CASES])
def test_bad_environment_is_refused_and_nothing_written(
    case: EnvCase, tmp_path: Path, built_example: Callable[[str], Path]
) -> None:
    (tmp_path / "fresh").mkdir()
    fresh = tmp_path / "fresh"
    (fresh / CLUSTER).write_text(example_text("openbsd"))
    before = tree_fingerprint(fresh)
    lines = set()
    for cmd in (["check"], ["build"], ["package", "--node", "bi-core-sbg-1"]):
        proc = nomad_build(fresh, *cmd, "-c", CLUSTER, env=case.env)
        lines.add(assert_refused(proc, case.expect, file_name=None))
        assert tree_fingerprint(fresh) == before  # no state/ created, no dist/
    assert len(lines) == 1, lines

    old = tmp_path / "old"
    copy_tree(built_example("openbsd"), old)
    before = tree_fingerprint(old)
    proc = nomad_build(old, "build", "-c", CLUSTER, env=case.env)
    assert assert_refused(proc, case.expect, file_name=None) in lines
    assert tree_fingerprint(old) == before


# ---------------------------------------------------------------- state damage
# After a good build of the mixed example (every kind of secret), one file in state/ is
# damaged; the next build must refuse, naming that file and the way out ("restore it
# from your backup"), and leave state/ and dist/ exactly as they were: a missing or
# damaged secret is never silently replaced by a fresh one.

SIGNIFY_SEC = "bi-sbg-pkg.sec"
SIGNIFY_PUB = "bi-sbg-pkg.pub"
STATE_FILES = [
    "ca/ca.key",
    "ca/ca.pem",
    "gossip.key",
    "apt-signing.key",
    SIGNIFY_SEC,
    "versions.json",
    "nodes/bi-core-sbg-1/key.pem",
    "nodes/bi-core-sbg-1/cert.pem",
]
Damage = Callable[[Path], None]  # gets the state directory


def existing(state: Path, rel: str) -> Path:
    path = state / rel
    assert path.is_file(), f"the first build left no {path}"
    return path


def deleted(rel: str) -> Damage:
    return lambda state: existing(state, rel).unlink()


def truncated(rel: str) -> Damage:
    def apply(state: Path) -> None:
        path = existing(state, rel)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    return apply


def garbage(rel: str) -> Damage:
    def apply(state: Path) -> None:
        path = existing(state, rel)
        rng = random.Random(rel)
        path.write_bytes(bytes(rng.randrange(256) for _ in range(len(path.read_bytes()))))

    return apply


def swapped(rel_a: str, rel_b: str) -> Damage:
    def apply(state: Path) -> None:
        a, b = existing(state, rel_a), existing(state, rel_b)
        data_a, data_b = a.read_bytes(), b.read_bytes()
        a.write_bytes(data_b)
        b.write_bytes(data_a)

    return apply


DEB_NODE = "bi-node-sbg-3"  # the mixed example's Debian node: its .deb is published


def version_set(value: object) -> Damage:
    """The published .deb's version in versions.json set to `value`."""

    def apply(state: Path) -> None:
        path = existing(state, "versions.json")
        data = json.loads(path.read_text())
        (entry,) = data[DEB_NODE].values()
        assert isinstance(entry, dict) and entry["version"] >= 1
        entry["version"] = value
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

    return apply


@dataclass(frozen=True)
class StateCase:
    id: str
    damage: Damage
    names: str  # the state file the message must name, relative to state/


STATE_CASES = [
    StateCase(f"{how.__name__}-{rel.replace('/', '-')}", how(rel), rel)
    for how in (deleted, truncated, garbage)
    for rel in STATE_FILES
] + [
    StateCase(
        "ca-key-swapped-with-a-node-key",
        swapped("ca/ca.key", "nodes/bi-core-sbg-1/key.pem"),
        "ca/ca.key",
    ),
    StateCase("version-below-published-0", version_set(0), "versions.json"),
    StateCase("version-below-published-minus-1", version_set(-1), "versions.json"),
    StateCase("version-not-a-number", version_set("x"), "versions.json"),
    StateCase(f"deleted-{STATE_LEDGER}", deleted(STATE_LEDGER), STATE_LEDGER),
]


@pytest.mark.parametrize("case", STATE_CASES, ids=[c.id for c in STATE_CASES])
def test_damaged_state_is_refused_and_nothing_written(
    case: StateCase, tmp_path: Path, built_example: Callable[[str], Path]
) -> None:
    copy_tree(built_example("mixed"), tmp_path)
    case.damage(tmp_path / "state")
    before = tree_fingerprint(tmp_path)
    proc = nomad_build(tmp_path, "build", "-c", CLUSTER)
    line = assert_refused(proc, r"\brestore\b", file_name=f"state/{case.names}")
    assert "PRIVATE KEY" not in line
    assert tree_fingerprint(tmp_path) == before


def test_a_lost_signify_public_key_is_derived_again(
    tmp_path: Path, built_example: Callable[[str], Path]
) -> None:
    """The .pub is no secret of its own (signify keeps it inside the .sec too)."""
    copy_tree(built_example("mixed"), tmp_path)
    pub = tmp_path / "state" / SIGNIFY_PUB
    data, mode = pub.read_bytes(), pub.stat().st_mode
    dist = tree_fingerprint(tmp_path / "dist")
    pub.unlink()
    proc = nomad_build(tmp_path, "build", "-c", CLUSTER)
    assert proc.returncode == 0, proc.stderr
    assert pub.read_bytes() == data and pub.stat().st_mode == mode
    assert tree_fingerprint(tmp_path / "dist") == dist


# ---------------------------------------------------------------- output paths
# --out is never the state, never inside it, never around it or the cluster file:
# refused before anything happens (not even state/ created on a first run).

COMMANDS = {
    "build": ["build"],
    "repo": ["repo"],
    "package": ["package", "--node", "bi-core-sbg-1"],
    "image": ["image", "--node", "bi-node-sbg-1", "--kind", "openbsd-autoinstall"],
    "render": ["render", "--node", "bi-core-sbg-1"],
}


@dataclass(frozen=True)
class OutCase:
    id: str
    command: str
    out: str  # --out, relative to the working directory
    expect: str
    cluster: str = CLUSTER  # the cluster file, relative to the working directory
    foreign: bool = False  # `out` holds an index.html nomad-build did not make

    def args(self) -> list[str]:
        return [*COMMANDS[self.command], "-c", self.cluster, "--state", "state", "--out", self.out]

    def prepare(self, directory: Path, text: str) -> None:
        (directory / self.cluster).parent.mkdir(parents=True, exist_ok=True)
        (directory / self.cluster).write_text(text)
        if self.foreign:
            (directory / self.out).mkdir(parents=True, exist_ok=True)
            (directory / self.out / "index.html").write_text("<h1>my site</h1>\n")


OUT_RELATIONS = [
    ("is-the-state", "state", CLUSTER),
    ("inside-the-state", "state/out", CLUSTER),
    ("contains-the-state", ".", CLUSTER),
    ("contains-the-cluster-file", "conf", "conf/cluster.toml"),
]
OUT_CASES = [
    OutCase(f"{command}-out-{relation}", command, out, r"--out", cluster=cluster)
    for command in COMMANDS
    for relation, out, cluster in OUT_RELATIONS
] + [
    OutCase(f"{command}-out-foreign-dir", command, "site", r"--force", foreign=True)
    for command in COMMANDS
]


@pytest.mark.parametrize("case", OUT_CASES, ids=[c.id for c in OUT_CASES])
def test_dangerous_out_is_refused_and_nothing_written(
    case: OutCase, tmp_path: Path, built_example: Callable[[str], Path]
) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    case.prepare(fresh, example_text("openbsd"))
    before = tree_fingerprint(fresh)
    line = assert_refused(nomad_build(fresh, *case.args()), case.expect, file_name=case.out)
    assert not (fresh / "state").exists()
    assert tree_fingerprint(fresh) == before

    # Over the state of an earlier build: the same refusal, the state untouched.
    old = tmp_path / "old"
    old.mkdir()
    built = built_example("openbsd")
    copy_tree(built / "state", old / "state")
    copy_tree(built / "dist", old / "dist")
    case.prepare(old, example_text("openbsd"))
    before = tree_fingerprint(old)
    proc = nomad_build(old, *case.args())
    assert assert_refused(proc, case.expect, file_name=case.out) == line
    assert tree_fingerprint(old) == before


@pytest.mark.parametrize("command", list(COMMANDS))
def test_force_replaces_a_foreign_out(command: str, tmp_path: Path) -> None:
    case = OutCase("force", command, "site", "", foreign=True)
    case.prepare(tmp_path, example_text("openbsd"))
    proc = nomad_build(tmp_path, *case.args(), "--force")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "site" / "index.html").exists()
    assert any(p.is_file() for p in (tmp_path / "site").rglob("*"))


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_out_nomad_build_made_is_replaced_without_force(command: str, tmp_path: Path) -> None:
    case = OutCase("again", command, "out", "")
    case.prepare(tmp_path, example_text("openbsd"))
    first = nomad_build(tmp_path, *case.args())
    assert first.returncode == 0, first.stderr
    # a change, so that the second run has something to replace
    text = example_text("openbsd").replace('client_type = "edge"', 'client_type = "edge-2"')
    (tmp_path / CLUSTER).write_text(text)
    second = nomad_build(tmp_path, *case.args())
    assert second.returncode == 0, second.stderr
    assert any(p.is_file() for p in (tmp_path / "out").rglob("*"))


# ---------------------------------------------------------------- usage


def make_dir(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).mkdir()


def make_file(name: str, data: bytes) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        (d / name).write_bytes(data)

    return make


def make_fifo(name: str) -> Callable[[Path], None]:
    return lambda d: os.mkfifo(d / name)


def nothing(_: Path) -> None:
    return None


@dataclass(frozen=True)
class UsageCase:
    id: str
    args: list[str]
    expect: str
    setup: Callable[[Path], None] = nothing
    file_name: str | None = None


USAGE_CASES = [
    UsageCase("unknown-option-build", ["build", "--bogus"], r"--bogus"),
    UsageCase("unknown-option-check", ["check", "--colour", "blue"], r"--colour"),
    UsageCase("unknown-command", ["frobnicate"], r"frobnicate"),
    UsageCase(
        "bad-kind-choice",
        ["image", "--node", "bi-node-sbg-1", "--kind", "iso", "--out", "O"],
        r"--kind.*'iso'",
    ),
    UsageCase(
        "bad-role-choice",
        ["package", "--node", "bi-core-sbg-1", "--role", "leader", "--out", "O"],
        r"--role.*'leader'",
    ),
    UsageCase(
        "bad-format-choice",
        ["package", "--node", "bi-core-sbg-1", "--format", "rpm", "--out", "O"],
        r"--format.*'rpm'",
    ),
    UsageCase("missing-node-option", ["package", "--out", "O"], r"--node"),
    UsageCase(
        "cluster-is-a-directory",
        ["check", "-c", "confdir"],
        r"director",
        setup=make_dir("confdir"),
        file_name="confdir",
    ),
    UsageCase(
        "cluster-is-empty",
        ["build", "-c", "empty.toml", "--out", "O"],
        r"empty\.toml",
        setup=make_file("empty.toml", b""),
        file_name="empty.toml",
    ),
    UsageCase(
        "cluster-is-binary",
        ["build", "-c", "bin.toml", "--out", "O"],
        r"bin\.toml",
        setup=make_file("bin.toml", b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00" * 64),
        file_name="bin.toml",
    ),
    UsageCase(
        "cluster-is-dev-zero",
        ["build", "-c", "/dev/zero", "--out", "O"],
        r"/dev/zero",
        file_name="/dev/zero",
    ),
    UsageCase(
        "cluster-is-a-fifo",
        ["build", "-c", "fifo.toml", "--out", "O"],
        r"fifo\.toml",
        setup=make_fifo("fifo.toml"),
        file_name="fifo.toml",
    ),
    UsageCase(
        "state-is-a-file",
        ["build", "--state", "notadir", "--out", "O"],
        r"notadir",
        setup=make_file("notadir", b"x\n"),
        file_name="notadir",
    ),
    UsageCase(
        "out-is-a-file",
        ["build", "--out", "notadir"],
        r"notadir",
        setup=make_file("notadir", b"x\n"),
        file_name="notadir",
    ),
]


@pytest.mark.parametrize("case", USAGE_CASES, ids=[c.id for c in USAGE_CASES])
def test_usage_error_is_one_line(case: UsageCase, tmp_path: Path) -> None:
    (tmp_path / CLUSTER).write_text(example_text("openbsd"))
    case.setup(tmp_path)
    before = tree_fingerprint(tmp_path)
    # /dev/zero, a FIFO: no hang, and no eating all the memory while trying
    proc = nomad_build(tmp_path, *case.args, timeout=20, memory_limit=2 << 30)
    assert "Usage:" not in proc.stderr + proc.stdout
    assert_refused(proc, case.expect, file_name=case.file_name)
    assert tree_fingerprint(tmp_path) == before


# ---------------------------------------------------------------- the catalogue

CATALOGUE: dict[str, Sequence[Case | EnvCase | StateCase | OutCase | UsageCase]] = {
    "cluster keys": CLUSTER_CASES,
    "extra": EXTRA_CASES,
    "addresses": ADDRESS_CASES,
    "environment": ENV_CASES,
    "state damage": STATE_CASES,
    "output paths": OUT_CASES,
    "usage": USAGE_CASES,
}


def test_catalogue_is_large_enough() -> None:
    cases: list[Case | EnvCase | StateCase | OutCase | UsageCase] = [
        c for table in CATALOGUE.values() for c in table
    ]
    assert len(cases) >= 120, {k: len(v) for k, v in CATALOGUE.items()}
    assert len({c.id for c in cases}) == len(cases)


# ---------------------------------------------------------------- bad requests


@pytest.fixture
def example_dir(tmp_path: Path) -> Path:
    (tmp_path / CLUSTER).write_text(example_text("openbsd"))
    return tmp_path


def test_package_role_guard(example_dir: Path) -> None:
    before = tree_fingerprint(example_dir)
    proc = nomad_build(
        example_dir, "package", "-c", CLUSTER, "--node", "bi-core-sbg-1", "--role", "client",
        "--out", "O",
    )  # fmt: skip
    assert_refused(proc, r"node bi-core-sbg-1 has role 'server', not 'client'")
    assert tree_fingerprint(example_dir) == before


def test_unknown_node_lists_the_nodes(example_dir: Path) -> None:
    before = tree_fingerprint(example_dir)
    for args in (
        ["package", "--node", "nosuch", "--out", "O"],
        ["render", "--node", "nosuch", "--out", "R"],
        ["image", "--node", "nosuch", "--kind", "cloud-init", "--out", "O"],
    ):
        proc = nomad_build(example_dir, args[0], "-c", CLUSTER, *args[1:])
        line = assert_refused(proc, r"no node named 'nosuch'")
        for name in NODE_INDEX:
            assert name in line
        assert tree_fingerprint(example_dir) == before


def test_package_format_must_match_the_os(example_dir: Path) -> None:
    before = tree_fingerprint(example_dir)
    proc = nomad_build(
        example_dir, "package", "-c", CLUSTER, "--node", "bi-node-sbg-1", "--format", "deb",
        "--out", "O",
    )  # fmt: skip
    assert_refused(proc, r"node bi-node-sbg-1 runs openbsd; its package format is openbsd, not deb")
    assert tree_fingerprint(example_dir) == before


def test_image_kind_must_match_the_os(example_dir: Path) -> None:
    before = tree_fingerprint(example_dir)
    proc = nomad_build(
        example_dir, "image", "-c", CLUSTER, "--node", "bi-node-sbg-1", "--kind", "cloud-init",
        "--state", "S", "--out", "O",
    )  # fmt: skip
    assert_refused(proc, r"node bi-node-sbg-1 runs openbsd; a cloud-init image is for debian")
    assert tree_fingerprint(example_dir) == before
