"""Arbitrary strings through the real agent config: what Nomad reads is what the
cluster file said.

The oracle is tests/go_hcl.py, a port of hashicorp/hcl v1's scanner and Unquote
(what Nomad runs); pyhcl is a second, independent parser for the values it can
decode (it only understands the \\" and \\\\ escapes, and mis-lexes an escaped
backslash followed by another escape).
"""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import hcl as pyhcl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from builder import hcl
from builder.model import Cluster, Node
from builder.render import NodeSecrets, node_secrets, render_tree
from builder.state import State

import go_hcl
from conftest import Rendered

Base = tuple[Cluster, Node, NodeSecrets]

# Strings that stress the escaping: quotes, backslashes, `${`, braces, newlines,
# control characters, and anything else unicode has (hypothesis never makes lone
# surrogates, which no TOML file can hold either).
NASTY = st.sampled_from(['"', "\\", "${", "}", "{", "$", "\n", "\r", "\t", "\x00", "\x7f"])
TEXT = st.one_of(
    st.text(),
    st.lists(st.one_of(NASTY, st.text(max_size=3)), max_size=8).map("".join),
)
META = st.dictionaries(TEXT, TEXT, min_size=1, max_size=4)
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def base(rendered_openbsd: Rendered) -> Base:
    cluster = rendered_openbsd.cluster
    node = cluster.node("bi-node-sbg-1")
    with State.open(rendered_openbsd.state_dir, create=True) as st_:
        secrets = node_secrets(cluster, node, st_)  # already made: nothing is written
    return cluster, node, secrets


def render_config(base: Base, **changes: Any) -> str:
    """The node's real nomad.hcl (template and all) with model fields replaced."""
    cluster, node, secrets = base
    tree = render_tree(cluster, replace(node, **changes), secrets)
    return tree.file(node.config_file).content.decode("utf-8")


def block_lines(text: str, header: str) -> list[str]:
    """The lines directly inside `header {` … `}` (two-space indentation)."""
    lines = text.split("\n")
    start = lines.index(header)
    indent = re.match(r" *", header).group()  # type: ignore[union-attr]
    end = lines.index(indent + "}", start)
    return lines[start + 1 : end]


def go_read_assignment(line: str) -> tuple[str, str]:
    """`key = "value"` as hcl/scanner + Unquote read it: (key, value)."""
    body = line.lstrip(" ")
    if body.startswith('"'):
        end = go_hcl.scan_string(body, 0)
        raw = body.encode()[:end].decode()
        key = go_hcl.unquote(raw)
    else:
        raw = body.split(" ", 1)[0]
        assert go_hcl.bare_key_token(raw) == "IDENT", f"bare key {raw!r} is no HCL identifier"
        key = raw
    rest = body[len(raw) :]
    assert rest.startswith(" = "), line
    value_token = rest[3:]
    end = go_hcl.scan_string(value_token, 0)
    assert end == len(value_token.encode()), f"the string token ends early in {line!r}"
    return key, go_hcl.unquote(value_token)


def pyhcl_safe(s: str) -> bool:
    """Values pyhcl's lexer reads correctly: no backslash in the value (pyhcl
    mis-lexes \\\\ followed by \\" or \\\\)."""
    return "\\" not in s


def pyhcl_exact(s: str) -> bool:
    """Values pyhcl decodes to exactly the original: nothing that needs an escape
    other than \\" (pyhcl leaves \\n, \\u0024 … as written; U+E123, which
    hcl.quote writes as \\ue123, too)."""
    return not re.search(r"[\\\x00-\x1f\x7f\ue123]|\$\{", s)


# ---------------------------------------------------------------- go_hcl itself


@pytest.mark.parametrize(
    ("token", "value"),
    [
        ('"abc"', "abc"),
        ('""', ""),
        (r'"a\"b"', 'a"b'),
        (r'"a\\b"', "a\\b"),
        (r'"\a\b\f\n\r\t\v"', "\a\b\f\n\r\t\v"),
        (r'"\x41\101\u00e9\U0001F600"', "AAé😀"),
        (r'"\u0024{x}"', "${x}"),
        (r'"${a\n}"', r"${a\n}"),  # copied verbatim inside ${ }
        (r'"${a{b}c}\t"', "${a{b}c}\t"),  # braces counted; escapes resume after
        ('"$"', "$"),
        ('"$x{"', "$x{"),
        ('"é☃"', "é☃"),
        (r'"\ud800"', "\ufffd"),  # EncodeRune turns a surrogate into U+FFFD
    ],
)
def test_go_unquote_hand_checked(token: str, value: str) -> None:
    assert go_hcl.unquote(token) == value


@pytest.mark.parametrize(
    "token",
    [
        '"a\nb"',  # raw newline
        r'"\q"',  # unknown escape
        r'"\400"',  # octal above 255
        r'"\12"',  # short octal
        r'"\u12"',  # short \u
        r'"\x4g"',  # bad hex digit
        r'"\U00110000"',  # past MaxRune
        '"a"b"',  # unescaped quote
        '"${a"',  # unterminated ${
        "'a'",  # single quotes
        '"a',
        '"',
        '"a\\"',  # backslash escapes the closing quote
    ],
)
def test_go_unquote_refuses(token: str) -> None:
    with pytest.raises(go_hcl.GoSyntaxError):
        go_hcl.unquote(token)


def test_go_unquote_keeps_non_utf8_bytes() -> None:
    assert go_hcl.unquote_bytes(b'"\\xff"') == b"\xff"
    assert go_hcl.unquote(r'"\xff"') != "ÿ"  # a Go string byte, not U+00FF


@pytest.mark.parametrize(
    ("src", "end"),
    [
        ('"abc" = 1', 5),
        (r'"a\"b" x', 6),
        ('"${"a"}" x', 8),  # a quote inside ${ } does not end the string
        (r'"\u0041" x', 8),
        (r'"\101" x', 6),
    ],
)
def test_go_scanner_string_end(src: str, end: int) -> None:
    assert go_hcl.scan_string(src, 0) == end


@pytest.mark.parametrize(
    "src",
    ['"a\nb"', '"a\x00"', '"a\ue123"', r'"\q"', r'"\u12x"', '"abc', b'"\xff"'],
)
def test_go_scanner_refuses(src: str | bytes) -> None:
    with pytest.raises(go_hcl.GoSyntaxError):
        go_hcl.scan_string(src, 0)


def test_go_parse_nests_labels_and_refuses_bool_keys() -> None:
    src = 'a = 1\nplugin "raw_exec" {\n  config {\n    enabled = true\n  }\n}\nl = ["x", "y"]\n'
    assert go_hcl.parse(src) == {
        "a": 1,
        "plugin": {"raw_exec": {"config": {"enabled": True}}},
        "l": ["x", "y"],
    }
    with pytest.raises(go_hcl.GoSyntaxError):
        go_hcl.parse('meta {\n  true = "x"\n}\n')
    assert go_hcl.bare_key_token("client_type") == "IDENT"
    assert go_hcl.bare_key_token("false") == "BOOL"
    assert go_hcl.bare_key_token("a b") is None


# ---------------------------------------------------------------- properties


@SETTINGS
@given(value=TEXT)
@example(value="")
@example(value='"${x}"\\\n\t\x00\x7f')
def test_quote_round_trips_through_go_unquote(value: str) -> None:
    token = hcl.quote(value)
    assert go_hcl.unquote(token) == value
    assert go_hcl.scan_string(token, 0) == len(token.encode())  # one whole token
    assert "\n" not in token


@SETTINGS
@given(meta=META, node_class=TEXT)
@example(meta={"client_type": 'a"b'}, node_class="prod")
@example(meta={"a b": "${x}", "x.y": "\\", "1st": "\n"}, node_class="}{")
@example(meta={"": "\ue123"}, node_class="")  # found by hypothesis: written escaped
def test_meta_and_node_class_read_back_exactly(
    base: Base, meta: dict[str, str], node_class: str
) -> None:
    text = render_config(base, meta=MappingProxyType(meta), node_class=node_class)
    plain = go_hcl.parse(render_config(base))

    # (c) every value and key, read the way Nomad reads it, is the original
    read = dict(go_read_assignment(line) for line in block_lines(text, "  meta {"))
    assert read == meta
    (nc_line,) = [ln for ln in block_lines(text, "client {") if ln.startswith("  node_class = ")]
    assert go_read_assignment(nc_line) == ("node_class", node_class)
    for v in (*meta.values(), node_class):
        assert hcl.quote(v) in text  # the quoted token, verbatim

    # (a) the whole file parses (Go port) to the same structure with these values
    expected = copy.deepcopy(plain)
    expected["client"]["meta"] = meta  # type: ignore[index]
    expected["client"]["node_class"] = node_class  # type: ignore[index]
    assert go_hcl.parse(text) == expected

    # (a)/(b) pyhcl, where its lexer is sound
    if all(pyhcl_safe(s) for s in (*meta, *meta.values(), node_class)):
        parsed = pyhcl.loads(text)
        want = copy.deepcopy(pyhcl.loads(render_config(base)))
        want["client"]["meta"] = {_pyhcl_view(k): _pyhcl_view(v) for k, v in meta.items()}
        want["client"]["node_class"] = _pyhcl_view(node_class)
        assert parsed == want
        for k, v in meta.items():
            if pyhcl_exact(k) and pyhcl_exact(v):
                assert parsed["client"]["meta"][k] == v
        if pyhcl_exact(node_class):
            assert parsed["client"]["node_class"] == node_class


def _pyhcl_view(s: str) -> str:
    """What pyhcl returns for a backslash-free value: the token body with only \\"
    decoded, i.e. Go's escapes left as written. Checked against the Go reading."""
    body = hcl.quote(s)[1:-1]
    assert go_hcl.unquote('"' + body + '"') == s
    return body.replace('\\"', '"')


# ---------------------------------------------------------------- bugs found here


@pytest.mark.parametrize("key", ["true", "false"])
def test_meta_key_true_or_false_is_quoted(base: Base, key: str) -> None:
    """hcl/scanner makes a bare `true`/`false` a BOOL token, and hcl/parser's objectKey
    accepts only IDENT or STRING: `true = "x"` makes Nomad refuse the whole file."""
    text = render_config(base, meta=MappingProxyType({key: "x"}))
    go_hcl.parse(text)  # raises GoSyntaxError while the key is written bare


def test_private_use_e123_is_escaped(base: Base) -> None:
    """hcl/scanner's next() refuses U+E123 anywhere in the file ("reserved for internal
    use"), even inside a string: quote() must write it as \\ue123."""
    value = "a\ue123b"
    text = render_config(base, meta=MappingProxyType({"k": value}))
    assert go_hcl.unquote(hcl.quote(value)) == value
    go_hcl.parse(text)  # raises GoSyntaxError while U+E123 is written raw
