"""recipes/nomad-schema.toml against Nomad's own structs, and `extra` checked with it.

The key lists below were read from Nomad's source (command/agent/config.go and
nomad/structs/config/*.go at each release tag); they are what the old schema got wrong.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from builder import nomad_schema
from builder.nomad_schema import RESERVED, check_config, check_extra

from conftest import REPO, example_text, nomad_build

RAW = tomllib.loads((REPO / "recipes" / "nomad-schema.toml").read_text())
NEWEST = nomad_schema.newest_version()

# Real keys the old schema refused: block -> keys.
ADDED = {
    "server": [
        "client_introduction", "deploy_query_rate_limit", "enable_event_broker",
        "job_max_count", "job_max_source_size", "log_file", "non_production",
        "plan_apply_pipeline", "raft_logstore", "start_timeout",
    ],
    "client": [
        "bind_wildcard_default_host_network", "bridge_network_subnet_ipv6", "client_max_port",
        "client_min_port", "common_plugin_dir", "default_ineligible", "fingerprint",
        "host_volume_plugin_dir", "host_volumes_dir", "log_file", "node_max_allocs",
        "nomad_service_discovery", "reservable_cores", "users",
    ],
    "telemetry": [
        "allowed_metadata_keys_in_metrics", "disable_allocation_hook_metrics",
        "include_alloc_metadata_in_metrics",
    ],
    "vault": ["name"],
    "rpc": ["dial_timeout"],
    "ui": ["show_cli_hints"],
}  # fmt: skip
# Keys the old schema accepted that no Nomad release ≥1.7 knows (block, key, a real neighbour).
UNKNOWN = [
    ("server", "deployment_query_rate_limit", "deploy_query_rate_limit"),
    ("vault", "role", None),
    ("rpc", "enable_keep_alive", None),
    ("rpc", "header_write_timeout", None),
    ("rpc", "max_stream_window_size", None),
]
REMOVED = [("vault", "task_token_ttl", "1.10.0"), ("vault", "allow_unauthenticated", "1.10.0")]
SAMPLE: dict[str, Any] = {
    "string": "x",
    "duration": "10s",
    "bool": True,
    "int": 1,
    "number": 1.5,
    "list": ["a"],
    "map": {"k": "v"},
    "any": {},
}


def sample(kind: str) -> Any:
    if kind.startswith("block:"):
        return {}
    if kind.startswith("labels:"):
        return {"label": {}}
    return SAMPLE[kind]


def spec_of(block: str, key: str) -> tuple[str, str | None]:
    spec = RAW[block][key]
    return (spec, None) if isinstance(spec, str) else (spec["type"], spec.get("since"))


def nest(path: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


# ---------------------------------------------------------------- the schema file


def test_schema_states_its_newest_release_and_lax_blocks() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", RAW["newest"])
    assert {"consul", "vault", "plugin", "rpc", "ui", "limits"} <= set(RAW["lax_blocks"])
    assert not {"agent", "server", "client", "tls", "telemetry"} & set(RAW["lax_blocks"])


def test_every_key_has_a_known_type_and_every_block_a_table() -> None:
    tables = {k for k, v in RAW.items() if isinstance(v, dict)}
    for block in tables:
        for key in RAW[block]:
            kind, _ = spec_of(block, key)
            if ":" in kind:
                assert kind.split(":")[0] in ("block", "labels") and kind.split(":")[1] in tables
            else:
                assert kind in SAMPLE, (block, key, kind)


@pytest.mark.parametrize(
    "block,key", [pytest.param(b, k, id=f"{b}.{k}") for b, keys in ADDED.items() for k in keys]
)
def test_real_key_is_accepted_from_the_release_that_knows_it(block: str, key: str) -> None:
    kind, since = spec_of(block, key)
    config = nest(f"{block}.{key}", sample(kind))  # check_config: telemetry is not `extra`'s
    assert check_config(config, where="extra", min_version=since or "1.7.0") == []
    assert check_config(config, where="extra", min_version=NEWEST) == []
    if since:  # the key, or its block (rpc came in 1.10.0), is gated
        (line,) = check_config(config, where="extra", min_version="1.7.0")
        assert re.match(rf"extra\.{block}(\.{key})?: only known to Nomad [\d.]+ to {NEWEST}", line)


@pytest.mark.parametrize("block,key,hint", UNKNOWN)
def test_key_nomad_does_not_know_is_refused(block: str, key: str, hint: str | None) -> None:
    (line,) = check_extra(nest(f"{block}.{key}", 1), where="extra", min_version=NEWEST)
    assert line.startswith(f"extra.{block}.{key}: unknown key in Nomad's {block} block")
    if hint:
        assert f"did you mean {hint!r}" in line


@pytest.mark.parametrize("block,key,until", REMOVED)
def test_removed_key_is_refused_with_the_release_that_removed_it(
    block: str, key: str, until: str
) -> None:
    (line,) = check_extra(nest(f"{block}.{key}", "1h"), where="extra", min_version="1.7.0")
    assert line.startswith(f"extra.{block}.{key}: removed in Nomad {until}")


@pytest.mark.parametrize(
    "extra,path",
    [
        ({"consul": {"tagz": ["a"]}}, "consul.tagz"),
        ({"vault": {"adress": "https://v:8200"}}, "vault.adress"),
        ({"plugin": {"docker": {"confg": {}}}}, "plugin.docker.confg"),
        ({"client": {"template": {"max_stael": "1s"}}}, "client.template.max_stael"),
        ({"ui": {"enable": True}}, "ui.enable"),
        (
            {"consul": {"service_identity": {"aud": ["a"], "tll": "1h"}}},
            "consul.service_identity.tll",
        ),
    ],
)
def test_typo_in_a_block_nomad_is_lax_about_is_refused(extra: dict[str, Any], path: str) -> None:
    (line,) = check_extra(extra, where="extra", min_version=NEWEST)
    assert line.startswith(f"extra.{path}: unknown key")
    assert "Nomad would silently ignore it" in line


def test_typo_in_a_strict_block_says_nomad_would_refuse_it() -> None:
    (line,) = check_extra({"server": {"raft_protocl": 3}}, where="extra")
    assert "Nomad refuses to start" in line and "did you mean 'raft_protocol'" in line


@pytest.mark.parametrize("path", list(RESERVED))
def test_reserved_key_is_refused_with_what_to_use(path: str) -> None:
    assert check_extra(nest(path, True), where="x.extra") == [
        f"x.extra.{path}: set by nomad-build; {RESERVED[path]}"
    ]


def test_settings_next_to_a_reserved_key_stay_free() -> None:
    extra = {
        "server": {"raft_multiplier": 2},
        "client": {"gc_max_allocs": 50},
        "plugin": {"raw_exec": {"config": {"no_cgroups": True}}},
        "consul": {"tags": ["a"]},
        "tls": {"rpc_upgrade_mode": False},
    }
    assert check_extra(extra, where="extra") == []


# ---------------------------------------------------------------- through the CLI


def run_check(tmp_path: Path, node: str, line: str, min_version: str = "1.7.0") -> Any:
    text = example_text("debian").replace(f'name = "{node}"\n', f'name = "{node}"\n{line}\n', 1)
    text = text.replace('nomad_min_version = "1.7.0"', f'nomad_min_version = "{min_version}"')
    (tmp_path / "cluster.toml").write_text(text)
    return nomad_build(tmp_path, "check", "-c", "cluster.toml")


def refused_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    (line,) = proc.stderr.splitlines()
    assert line.startswith("nomad-build: cluster.toml: ") and "Traceback" not in line
    return line


def test_cli_refuses_deployment_query_rate_limit_and_names_the_real_key(tmp_path: Path) -> None:
    proc = run_check(
        tmp_path, "bi-core-sbg-1", "extra = { server = { deployment_query_rate_limit = 10.0 } }"
    )
    line = refused_line(proc)
    assert "nodes[0] (bi-core-sbg-1).extra.server.deployment_query_rate_limit: unknown key" in line
    assert "did you mean 'deploy_query_rate_limit'" in line


def test_cli_accepts_the_real_deploy_query_rate_limit(tmp_path: Path) -> None:
    proc = run_check(
        tmp_path, "bi-core-sbg-1", "extra = { server = { deploy_query_rate_limit = 10.0 } }"
    )
    assert proc.returncode == 0, proc.stderr


def test_cli_gates_a_key_on_nomad_min_version(tmp_path: Path) -> None:
    line = "extra = { client = { node_max_allocs = 50 } }"
    proc = run_check(tmp_path, "bi-node-sbg-2", line)
    assert "nodes[4] (bi-node-sbg-2).extra.client.node_max_allocs: only known to Nomad 1.10.2" in (
        refused_line(proc)
    )
    assert "raise [packages] nomad_min_version to 1.10.2" in refused_line(proc)
    assert run_check(tmp_path, "bi-node-sbg-2", line, min_version="1.10.2").returncode == 0


def test_cli_refuses_a_typo_nomad_would_ignore(tmp_path: Path) -> None:
    proc = run_check(tmp_path, "bi-node-sbg-2", 'extra = { vault = { adress = "https://v:8200" } }')
    assert "extra.vault.adress: unknown key" in refused_line(proc)


@pytest.mark.parametrize("path", list(RESERVED))
def test_cli_refuses_each_reserved_key_and_names_its_replacement(tmp_path: Path, path: str) -> None:
    node = "bi-node-sbg-2" if path.startswith(("client.", "plugin.")) else "bi-core-sbg-1"
    inline = "extra = " + _toml_inline(nest(path, True))
    line = refused_line(run_check(tmp_path, node, inline))
    assert line.endswith(f".extra.{path}: set by nomad-build; {RESERVED[path]}"), line


def _toml_inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_inline(v)}" for k, v in value.items()) + " }"
    return "true"
