"""HCL1 output for Nomad agent configs (their keys are checked by builder.nomad_schema).

Escaping follows hashicorp/hcl v1's strconv.Unquote: Go-style backslash escapes,
and `${` must never appear literally (v1 copies `${…}` through verbatim, brace
counting), so `$` before `{` is written as \\u0024.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")  # fullmatch: "$" would let "a\n" through
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
    return name if _BARE_KEY.fullmatch(name) and name not in ("true", "false") else quote(name)


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
