"""Nomad's agent configuration keys (recipes/nomad-schema.toml) and the checks made with them.

`check_extra` is what the cluster model calls on an operator's `extra` table: every key
must be known to every Nomad release the cluster allows ([packages] nomad_min_version up
to the newest release the schema describes), typos are refused even in the blocks where
Nomad itself would silently ignore them, and keys nomad-build writes or cross-checks are
refused with the cluster-file key to use instead. `check_config` checks a whole agent
config (nomad-build's own keys included) against the same schema.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from builder.data import data_path

OLDEST = "1.7.0"  # the oldest release the schema describes (nomad_min_version's default)

# Keys of the agent config that nomad-build writes or cross-checks, and what the operator
# sets instead. Kept here, not in the schema file: the schema holds Nomad's facts, this is
# nomad-build's own business and names cluster-file keys. A path covers its whole subtree.
RESERVED: dict[str, str] = {
    "name": "use the node's name",
    "region": "use cluster.region",
    "datacenter": "use cluster.datacenter",
    "data_dir": "use data_dir",
    "bind_addr": "use bind_addr",
    "addresses": "use bind_addr (the HTTP API stays on 127.0.0.1)",
    "advertise": "use advertise",
    "ports": "the firewall rules nomad-build writes open 4646-4648",
    "log_level": "use log_level",
    "telemetry": "use telemetry",
    "disable_anonymous_signature": "always true",
    "disable_update_check": "always true",
    "enable_syslog": "always true",
    "leave_on_interrupt": "always true",
    "leave_on_terminate": "always true",
    "consul.address": "use consul.address",
    "consul.server_service_name": "use consul.server_service_name",
    "consul.client_service_name": "use consul.client_service_name",
    "consul.auto_advertise": "use consul.auto_advertise",
    "consul.server_auto_join": "use consul.server_auto_join",
    "consul.client_auto_join": "use consul.client_auto_join",
    "server.enabled": "use the node's role",
    "server.bootstrap_expect": "use cluster.bootstrap_expect",
    "server.encrypt": "the gossip key is generated once and kept in state/",
    "client.enabled": "use the node's role",
    "client.network_interface": "use interface",
    "client.node_class": "use node_class",
    "client.meta": "use meta",
    "tls.rpc": "RPC is always TLS with nomad-build's certificates ([pki])",
    "tls.http": "the HTTP API stays on loopback without TLS",
    "tls.verify_server_hostname": "always true: certificates name <role>.<region>.nomad",
    "tls.ca_file": "use tls_dir (where nomad-build puts its CA's certificate)",
    "tls.cert_file": "use tls_dir (where nomad-build puts the node's certificate)",
    "tls.key_file": "use tls_dir (where nomad-build puts the node's key)",
    # Only the switch: other raw_exec settings (no_cgroups, …) are the operator's.
    "plugin.raw_exec.config.enabled": 'use drivers = ["raw_exec"]',
}

_SCALAR_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "duration": (str,),
    "bool": (bool,),
    "int": (int,),
    "number": (int, float),
}

Version = tuple[int, ...]


@dataclass(frozen=True)
class KeySpec:
    kind: str  # a type name, "block:<table>" or "labels:<table>"
    since: Version | None  # first release that knows the key; None: 1.7.0 or older
    until: Version | None  # first release that no longer knows it; None: still known


@dataclass(frozen=True)
class Schema:
    newest: Version
    lax_blocks: frozenset[str]
    tables: Mapping[str, Mapping[str, KeySpec]]


def parse_version(text: str) -> Version:
    return tuple(int(n) for n in re.findall(r"\d+", text)[:3])


def show_version(version: Version) -> str:
    return ".".join(map(str, version))


@cache
def schema() -> Schema:
    with open(data_path("recipes", "nomad-schema.toml"), "rb") as f:
        raw = tomllib.load(f)
    tables: dict[str, dict[str, KeySpec]] = {}
    for name, table in raw.items():
        if isinstance(table, dict):
            tables[name] = {key: _key_spec(spec) for key, spec in table.items()}
    return Schema(parse_version(raw["newest"]), frozenset(raw["lax_blocks"]), tables)


def _key_spec(spec: str | Mapping[str, str]) -> KeySpec:
    if isinstance(spec, str):
        return KeySpec(spec, None, None)
    since, until = spec.get("since"), spec.get("until")
    return KeySpec(
        spec["type"],
        parse_version(since) if since else None,
        parse_version(until) if until else None,
    )


def newest_version() -> str:
    return show_version(schema().newest)


def check_extra(extra: Mapping[str, Any], *, where: str, min_version: str = OLDEST) -> list[str]:
    """Problems with an operator's `extra` table, one line each, named `<where>.<key path>`."""
    problems = [
        f"{where}.{_written(extra, path)}: set by nomad-build; {RESERVED[path]}"
        for path in _reserved_in(extra)
    ]
    free = _without(extra, set(_reserved_in(extra)))
    return problems + check_config(free, where=where, min_version=min_version)


def check_config(
    config: Mapping[str, Any], *, where: str = "", min_version: str = OLDEST
) -> list[str]:
    """Problems with an agent config against the keys of every Nomad release from
    `min_version` to the newest the schema describes."""
    s = schema()
    oldest = min(max(parse_version(min_version), parse_version(OLDEST)), s.newest)
    return _check_block(config, "agent", _Walk(where, "", oldest, s))


@dataclass(frozen=True)
class _Walk:
    where: str  # the cluster-file prefix, e.g. "nodes[0] (x).extra"
    path: str  # the Nomad block path, e.g. "client.template" ("" at the top)
    oldest: Version  # the oldest release the cluster allows
    schema: Schema

    def at(self, key: str) -> _Walk:
        return _Walk(
            self.where, f"{self.path}.{key}" if self.path else key, self.oldest, self.schema
        )

    @property
    def name(self) -> str:
        return f"{self.where}.{self.path}" if self.where else self.path


def _check_block(config: Mapping[str, Any], table: str, walk: _Walk) -> list[str]:
    spec = walk.schema.tables[table]
    problems: list[str] = []
    for key, value in config.items():
        here = walk.at(key)
        known = spec.get(key)
        if known is None:
            problems.append(f"{here.name}: {_unknown(walk, key, spec)}")
            continue
        gate = _version_problem(known, walk)
        if gate:
            problems.append(f"{here.name}: {gate}")
            continue
        problems.extend(_check_value(known.kind, value, here))
    return problems


def _unknown(walk: _Walk, key: str, spec: Mapping[str, KeySpec]) -> str:
    block = walk.path or "top-level"
    why = "Nomad would silently ignore it" if _is_lax(walk) else "Nomad refuses to start"
    close = difflib.get_close_matches(key, list(spec), n=1, cutoff=0.75)
    hint = ""
    if close:
        hint = f"; did you mean {close[0]!r}{_known_range(spec[close[0]], walk.schema)}?"
    return f"unknown key in Nomad's {block} block ({why}){hint}"


def _is_lax(walk: _Walk) -> bool:
    # Labelled blocks' paths hold the label: plugin.raw_exec.config is plugin's.
    parts = walk.path.split(".")
    return any(".".join(parts[:i]) in walk.schema.lax_blocks for i in range(1, len(parts) + 1))


def _known_range(spec: KeySpec, schema: Schema) -> str:
    if spec.since is None and spec.until is None:
        return ""
    first = show_version(spec.since) if spec.since else OLDEST
    if spec.until is None:
        return f" (Nomad {first} to {show_version(schema.newest)})"
    return f" (Nomad {first} until {show_version(spec.until)})"


def _version_problem(spec: KeySpec, walk: _Walk) -> str | None:
    oldest, newest = show_version(walk.oldest), show_version(walk.schema.newest)
    allowed = f"the cluster allows Nomad {oldest} to {newest}"
    known = _known_range(spec, walk.schema).strip(" ()")
    if spec.until is not None and spec.until <= walk.schema.newest:
        return f"removed in Nomad {show_version(spec.until)} (known to {known}); {allowed}"
    if spec.since is not None and spec.since > walk.oldest:
        return (
            f"only known to {known} but {allowed}; raise [packages] nomad_min_version "
            f"to {show_version(spec.since)} or drop the key"
        )
    return None


def _check_value(kind: str, value: Any, walk: _Walk) -> list[str]:
    if kind in _SCALAR_TYPES:
        ok = isinstance(value, _SCALAR_TYPES[kind]) and not (
            kind != "bool" and isinstance(value, bool)
        )
        return [] if ok else [f"{walk.name}: must be {_article(kind)}, not {_describe(value)}"]
    if kind == "list":
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return []
        return [f"{walk.name}: must be a list of strings, not {_describe(value)}"]
    if kind == "map":
        if isinstance(value, Mapping) and all(
            isinstance(v, str | int | float | bool) for v in value.values()
        ):
            return []
        return [f"{walk.name}: must be a table of plain values, not {_describe(value)}"]
    if kind == "any":
        return []
    table = kind.split(":", 1)[1]
    if not isinstance(value, Mapping):
        return [f"{walk.name}: must be a block (a table), not {_describe(value)}"]
    if kind.startswith("block:"):
        return _check_block(value, table, walk)
    problems = []  # labels:<table>: label -> block
    for label, body in value.items():
        if not isinstance(body, Mapping):
            problems.append(
                f"{walk.at(label).name}: must be a block (a table), not {_describe(body)}"
            )
        else:
            problems.extend(_check_block(body, table, walk.at(label)))
    return problems


def _reserved_in(extra: Mapping[str, Any]) -> Iterator[str]:
    for path in RESERVED:
        node: Any = extra
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            yield path


def _written(extra: Mapping[str, Any], path: str) -> str:
    """The key path the operator wrote at or below a reserved `path` (the first leaf)."""
    node: Any = extra
    for part in path.split("."):
        node = node[part]
    while isinstance(node, Mapping) and node:
        key = next(iter(node))
        path, node = f"{path}.{key}", node[key]
    return path


def _without(config: Mapping[str, Any], paths: set[str], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}.{key}" if prefix else key
        if path in paths:
            continue
        out[key] = _without(value, paths, path) if isinstance(value, Mapping) else value
    return out


def _article(kind: str) -> str:
    return {"int": "an integer", "duration": 'a duration string such as "10s"'}.get(
        kind, f"a {kind}"
    )


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__
