"""HCL1 output for Nomad agent configs, and validation against Nomad's key schema.

Escaping follows hashicorp/hcl v1's strconv.Unquote: Go-style backslash escapes,
and `${` must never appear literally (v1 copies `${…}` through verbatim, brace
counting), so `$` before `{` is written as \\u0024.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from functools import cache
from typing import Any

from builder.data import data_path

_BARE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_INDENT = "  "


def quote(value: str) -> str:
    out = ['"']
    for i, ch in enumerate(value):
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "$" and value[i + 1 : i + 2] == "{":
            out.append("\\u0024")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or ch == "\ue123":
            # hcl/scanner refuses U+E123 anywhere in a file ("reserved for internal use")
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _key(name: str) -> str:
    # A bare true/false scans as a BOOL token, which hcl's parser refuses as a key.
    return name if _BARE_KEY.match(name) and name not in ("true", "false") else quote(name)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as an HCL value")


def dumps(config: Mapping[str, Any], *, labelled: frozenset[str] = frozenset({"plugin"})) -> str:
    """Write a nested mapping as HCL1: mappings become blocks, keys in a
    `labelled` set become `key "label" { … }` blocks."""
    lines: list[str] = []

    def emit(mapping: Mapping[str, Any], depth: int) -> None:
        pad = _INDENT * depth
        for name, value in mapping.items():
            if isinstance(value, Mapping):
                if depth == 0 and name in labelled:
                    for label, body in value.items():
                        lines.append(f"{pad}{_key(name)} {quote(label)} {{")
                        emit(body, depth + 1)
                        lines.append(f"{pad}}}")
                    continue
                lines.append(f"{pad}{_key(name)} {{")
                emit(value, depth + 1)
                lines.append(f"{pad}}}")
            else:
                lines.append(f"{pad}{_key(name)} = {_scalar(value)}")

    emit(config, 0)
    return "\n".join(lines) + "\n"


@cache
def schema() -> dict[str, dict[str, str]]:
    with open(data_path("recipes", "nomad-schema.toml"), "rb") as f:
        return tomllib.load(f)


_SCALAR_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "duration": (str,),
    "bool": (bool,),
    "int": (int,),
    "number": (int, float),
}


def validate(config: Mapping[str, Any], *, block: str = "agent", where: str = "") -> list[str]:
    """Problems with `config` against Nomad's schema, as 'path: what is wrong' strings."""
    spec = schema()[block]
    problems: list[str] = []
    for name, value in config.items():
        path = f"{where}.{name}" if where else name
        kind = spec.get(name)
        if kind is None:
            close = [k for k in spec if _similar(k, name)]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{path}: unknown key in Nomad's {block} block{hint}")
            continue
        problems.extend(_check(kind, value, path))
    return problems


def _check(kind: str, value: Any, path: str) -> list[str]:
    if kind in _SCALAR_TYPES:
        ok = isinstance(value, _SCALAR_TYPES[kind]) and not (
            kind != "bool" and isinstance(value, bool)
        )
        return [] if ok else [f"{path}: must be {_article(kind)}, not {_describe(value)}"]
    if kind == "list":
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return []
        return [f"{path}: must be a list of strings, not {_describe(value)}"]
    if kind == "map":
        if isinstance(value, Mapping) and all(
            isinstance(v, str | int | float | bool) for v in value.values()
        ):
            return []
        return [f"{path}: must be a table of plain values, not {_describe(value)}"]
    if kind == "any":
        return []
    target = kind.split(":", 1)[1]
    if not isinstance(value, Mapping):
        return [f"{path}: must be a block (a table), not {_describe(value)}"]
    if kind.startswith("block:"):
        return validate(value, block=target, where=path)
    problems = []  # labels:<name>: label -> block
    for label, body in value.items():
        if not isinstance(body, Mapping):
            problems.append(f"{path}.{label}: must be a block (a table), not {_describe(body)}")
        else:
            problems.extend(validate(body, block=target, where=f"{path}.{label}"))
    return problems


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


def _similar(a: str, b: str) -> bool:
    """Cheap typo detector: same letters give or take one edit."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b, strict=True)) <= 1 or sorted(a) == sorted(b)
    short, long_ = sorted((a, b), key=len)
    return any(long_[:i] + long_[i + 1 :] == short for i in range(len(long_)))
