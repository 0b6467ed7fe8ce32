"""What Nomad reads from a quoted HCL1 string: a port of hashicorp/hcl v1.

`unquote` is hcl/strconv/quote.go `Unquote` (how a STRING token's text becomes
the value Nomad sees) and `scan_string` is hcl/scanner/scanner.go `scanString`
with `next`/`scanEscape`/`scanDigits` (where the scanner ends a string token, and
which bytes it refuses). Both work on UTF-8 bytes as Go does; a Go string may
hold bytes that are not UTF-8 (`\\xff`), so `unquote` returns them as
surrogate escapes, which never compare equal to a real Python string.

This is the test oracle for builder.hcl.quote: nothing here imports builder.
"""

from __future__ import annotations

RUNE_ERROR = 0xFFFD
MAX_RUNE = 0x10FFFF
RUNE_SELF = 0x80
EOF = 0  # the scanner's eof marker is rune(0)


class GoSyntaxError(ValueError):
    """strconv.ErrSyntax, or an error the scanner reports."""


def decode_rune(b: bytes) -> tuple[int, int]:
    """utf8.DecodeRune: (rune, size); (RuneError, 1) for a byte that starts no valid
    UTF-8 sequence (overlong forms and surrogates included, as in Go)."""
    if not b:
        return RUNE_ERROR, 0
    first = b[0]
    if first < RUNE_SELF:
        return first, 1
    size = 2 if 0xC2 <= first <= 0xDF else 3 if 0xE0 <= first <= 0xEF else 4
    if not 0xC2 <= first <= 0xF4:
        return RUNE_ERROR, 1
    try:
        ch = b[:size].decode("utf-8")  # strict: refuses overlongs and surrogates like Go
    except UnicodeDecodeError:
        return RUNE_ERROR, 1
    return ord(ch), size


def encode_rune(r: int) -> bytes:
    """utf8.EncodeRune: surrogates and runes past MaxRune become U+FFFD."""
    if 0xD800 <= r <= 0xDFFF or r > MAX_RUNE or r < 0:
        r = RUNE_ERROR
    return chr(r).encode("utf-8")


def _unhex(c: int) -> int | None:
    if 0x30 <= c <= 0x39:
        return c - 0x30
    if 0x61 <= c <= 0x66:
        return c - 0x61 + 10
    if 0x41 <= c <= 0x46:
        return c - 0x41 + 10
    return None


_SIMPLE = {
    ord("a"): 0x07,
    ord("b"): 0x08,
    ord("f"): 0x0C,
    ord("n"): 0x0A,
    ord("r"): 0x0D,
    ord("t"): 0x09,
    ord("v"): 0x0B,
}


def _unquote_char(s: bytes, quote: int) -> tuple[int, bool, bytes]:
    """unquoteChar: (value, multibyte, tail)."""
    c = s[0]
    if c == quote and quote in (ord("'"), ord('"')):
        raise GoSyntaxError("unescaped quote")
    if c >= RUNE_SELF:
        r, size = decode_rune(s)
        return r, True, s[size:]
    if c != ord("\\"):
        return c, False, s[1:]
    if len(s) <= 1:
        raise GoSyntaxError("backslash at the end")
    c = s[1]
    s = s[2:]
    if c in _SIMPLE:
        return _SIMPLE[c], False, s
    if c in b"xuU":
        n = {ord("x"): 2, ord("u"): 4, ord("U"): 8}[c]
        if len(s) < n:
            raise GoSyntaxError("short hex escape")
        v = 0
        for j in range(n):
            x = _unhex(s[j])
            if x is None:
                raise GoSyntaxError("bad hex digit")
            v = v << 4 | x
        s = s[n:]
        if c == ord("x"):
            return v, False, s  # a single byte, possibly not UTF-8
        if v > MAX_RUNE:
            raise GoSyntaxError("rune out of range")
        return v, True, s
    if ord("0") <= c <= ord("7"):
        v = c - ord("0")
        if len(s) < 2:
            raise GoSyntaxError("short octal escape")
        for j in range(2):
            x = s[j] - ord("0")
            if x < 0 or x > 7:
                raise GoSyntaxError("bad octal digit")
            v = (v << 3) | x
        s = s[2:]
        if v > 255:
            raise GoSyntaxError("octal escape above 255")
        return v, False, s
    if c == ord("\\"):
        return ord("\\"), False, s
    if c in (ord("'"), ord('"')):
        if c != quote:
            raise GoSyntaxError("escaped quote of the other kind")
        return c, False, s
    raise GoSyntaxError(f"unknown escape \\{chr(c)}")


def unquote_bytes(s: bytes) -> bytes:
    """strconv.Unquote of hashicorp/hcl v1, on bytes."""
    n = len(s)
    if n < 2:
        raise GoSyntaxError("too short")
    quote = s[0]
    if quote != s[n - 1]:
        raise GoSyntaxError("unbalanced quotes")
    s = s[1 : n - 1]
    if quote != ord('"'):
        raise GoSyntaxError("not double-quoted")
    if b"\n" in s:
        raise GoSyntaxError("raw newline")
    if b"\\" not in s and bytes([quote]) not in s and b"$" not in s:
        return s  # trivial
    buf = bytearray()
    while s:
        # `${…}` is copied through verbatim, counting braces, never unescaped
        if s[0] == ord("$") and len(s) > 1 and s[1] == ord("{"):
            buf += b"${"
            s = s[2:]
            braces = 1
            while s and braces > 0:
                r, size = decode_rune(s)
                if r == RUNE_ERROR:  # also a literal U+FFFD, as in Go
                    raise GoSyntaxError("bad UTF-8 inside ${}")
                s = s[size:]
                buf += encode_rune(r)
                if r == ord("{"):
                    braces += 1
                elif r == ord("}"):
                    braces -= 1
            if braces != 0:
                raise GoSyntaxError("unterminated ${")
            if not s:
                break
        c, multibyte, s = _unquote_char(s, quote)
        if c < RUNE_SELF or not multibyte:
            buf.append(c & 0xFF)
        else:
            buf += encode_rune(c)
    return bytes(buf)


def unquote(token: str) -> str:
    """The value Nomad gets from a STRING token's text (quotes included)."""
    raw = unquote_bytes(token.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "surrogateescape")


# ---------------------------------------------------------------- scanner


class _Scanner:
    def __init__(self, src: bytes, offset: int) -> None:
        self.src = src
        self.pos = offset
        self.prev = offset

    def err(self, msg: str) -> None:
        raise GoSyntaxError(f"offset {self.pos}: {msg}")

    def next(self) -> int:
        if self.pos >= len(self.src):
            return EOF
        ch, size = decode_rune(self.src[self.pos :])
        self.prev = self.pos
        self.pos += size
        if ch == RUNE_ERROR and size == 1:
            self.err("illegal UTF-8 encoding")
        if ch == 0:
            self.err("unexpected null character (0x00)")
        if ch == 0xE123:
            self.err("unicode code point U+E123 reserved for internal use")
        return ch

    def peek(self) -> int:
        if self.pos >= len(self.src):
            return EOF
        return decode_rune(self.src[self.pos :])[0]

    def unread(self) -> None:
        self.pos = self.prev

    def scan_string(self) -> None:
        braces = 0
        while True:
            ch = self.next()
            if (ch == ord("\n") and braces == 0) or ch < 0 or ch == EOF:
                self.err("literal not terminated")
            if ch == ord('"') and braces == 0:
                return
            if braces == 0 and ch == ord("$") and self.peek() == ord("{"):
                braces += 1
                self.next()
            elif braces > 0 and ch == ord("{"):
                braces += 1
            if braces > 0 and ch == ord("}"):
                braces -= 1
            if ch == ord("\\"):
                self.scan_escape()

    def scan_escape(self) -> None:
        ch = self.next()
        if ch < RUNE_SELF and ch in b'abfnrtv\\"':
            return
        if ord("0") <= ch <= ord("7"):
            self.scan_digits(ch, 8, 3)
        elif ch == ord("x"):
            self.scan_digits(self.next(), 16, 2)
        elif ch == ord("u"):
            self.scan_digits(self.next(), 16, 4)
        elif ch == ord("U"):
            self.scan_digits(self.next(), 16, 8)
        else:
            self.err("illegal char escape")

    def scan_digits(self, ch: int, base: int, n: int) -> None:
        start = n
        while n > 0 and _digit_val(ch) < base:
            ch = self.next()
            if ch == EOF:
                break
            n -= 1
        if n > 0:
            self.err("illegal char escape")
        if n != start and ch != EOF:
            self.unread()


def _digit_val(ch: int) -> int:
    x = _unhex(ch) if ch < 0x80 else None
    return 16 if x is None else x


def scan_string(src: str | bytes, start: int) -> int:
    """Where hcl/scanner ends the STRING token opened by the quote at byte offset
    `start` of `src`: the offset just past its closing quote. Raises GoSyntaxError
    on anything the scanner reports (which makes Nomad refuse the whole file)."""
    data = src.encode("utf-8") if isinstance(src, str) else src
    if data[start : start + 1] != b'"':
        raise ValueError(f"no quote at offset {start}")
    s = _Scanner(data, start + 1)
    s.scan_string()
    return s.pos


def is_letter(ch: str) -> bool:
    """scanner.isLetter."""
    return "a" <= ch <= "z" or "A" <= ch <= "Z" or ch == "_" or (ord(ch) >= 0x80 and ch.isalpha())


def is_digit(ch: str) -> bool:
    """scanner.isDigit (unicode.IsDigit is category Nd, Python's isdecimal)."""
    return "0" <= ch <= "9" or (ord(ch) >= 0x80 and ch.isdecimal())


def bare_key_token(key: str) -> str | None:
    """The token type hcl/scanner gives an unquoted key: "IDENT", "BOOL" (true/false,
    which the parser refuses as a key), or None if it is not one identifier token."""
    if not key or not is_letter(key[0]):
        return None
    if not all(is_letter(c) or is_digit(c) or c in "-." for c in key[1:]):
        return None
    return "BOOL" if key in ("true", "false") else "IDENT"


# ---------------------------------------------------------------- whole files
# A port of the parts of hcl/scanner Scan and hcl/parser that nomad-build's output
# uses (comments, identifiers, strings, integers/floats, booleans, = { } [ ] ,),
# decoding to nested dicts the way hcl's decoder flattens `a "b" { … }` into
# {"a": {"b": {…}}}. Anything else is refused, as is a repeated key (which the
# decoder would turn into a list: nomad-build never means that).


def tokenize(src: str) -> list[tuple[str, str]]:
    """(type, text) tokens as hcl/scanner produces them; GoSyntaxError otherwise."""
    data = src.encode("utf-8")

    def text_of(start: int, end: int) -> str:
        return data[start:end].decode("utf-8")

    tokens: list[tuple[str, str]] = []
    i = 0
    while i < len(data):
        ch, size = decode_rune(data[i:])
        c = chr(ch)
        if c in " \t\n\r":
            i += size
        elif c == "#":
            j = data.find(b"\n", i)
            i = len(data) if j < 0 else j
        elif c == '"':
            end = scan_string(data, i)
            tokens.append(("STRING", text_of(i, end)))
            i = end
        elif is_letter(c):
            j = i + size
            while j < len(data):
                r, n = decode_rune(data[j:])
                if not (is_letter(chr(r)) or is_digit(chr(r)) or chr(r) in "-."):
                    break
                j += n
            word = text_of(i, j)
            tokens.append(("BOOL" if word in ("true", "false") else "IDENT", word))
            i = j
        elif c.isdigit() or (c == "-" and data[i + 1 : i + 2].isdigit()):
            j = i + 1
            while j < len(data) and chr(data[j]) in "0123456789.eE+-":
                j += 1
            word = text_of(i, j)
            kind = "FLOAT" if any(x in word for x in ".eE") else "NUMBER"
            tokens.append((kind, word))
            i = j
        elif c in "{}[],=":
            tokens.append(({"{": "LBRACE", "}": "RBRACE", "[": "LBRACK", "]": "RBRACK",
                            ",": "COMMA", "=": "ASSIGN"}[c], c))  # fmt: skip
            i += 1
        else:
            raise GoSyntaxError(f"offset {i}: illegal char {c!r}")
    return tokens


def parse(src: str) -> dict[str, object]:
    """The nested structure Nomad's HCL1 decoder would see in `src`."""
    tokens = tokenize(src)
    pos = 0

    def peek() -> str:
        return tokens[pos][0] if pos < len(tokens) else "EOF"

    def take(*kinds: str) -> tuple[str, str]:
        nonlocal pos
        if peek() not in kinds:
            got = tokens[pos] if pos < len(tokens) else ("EOF", "")
            raise GoSyntaxError(f"expected {' | '.join(kinds)}, got {got}")
        pos += 1
        return tokens[pos - 1]

    def literal(kind: str, text: str) -> object:
        if kind == "STRING":
            return unquote(text)
        if kind == "BOOL":
            return text == "true"
        if kind == "NUMBER":
            return int(text, 0)
        return float(text)

    def object_list(closing: str) -> dict[str, object]:
        out: dict[str, object] = {}
        while peek() != closing:
            keys = []
            while peek() in ("IDENT", "STRING"):  # objectKey: anything else is an error
                kind, text = take("IDENT", "STRING")
                keys.append(text if kind == "IDENT" else unquote(text))
            if not keys:
                take("IDENT", "STRING")  # raises with what was found instead
            if peek() == "ASSIGN":
                if len(keys) > 1:
                    raise GoSyntaxError("nested object expected: LBRACE got: ASSIGN")
                take("ASSIGN")
                value = value_()
            else:
                take("LBRACE")
                value = object_list("RBRACE")
                take("RBRACE")
            target = out
            for k in keys[:-1]:
                nested = target.setdefault(k, {})
                if not isinstance(nested, dict):
                    raise GoSyntaxError(f"key {k!r} is both a value and a block")
                target = nested
            if keys[-1] in target:
                raise GoSyntaxError(f"repeated key {keys[-1]!r}")
            target[keys[-1]] = value
        return out

    def value_() -> object:
        kind = peek()
        if kind in ("NUMBER", "FLOAT", "BOOL", "STRING"):
            return literal(*take(kind))
        if kind == "LBRACE":
            take("LBRACE")
            inner = object_list("RBRACE")
            take("RBRACE")
            return inner
        take("LBRACK")
        items: list[object] = []
        while peek() != "RBRACK":
            if peek() == "COMMA":
                take("COMMA")
                continue
            items.append(literal(*take("NUMBER", "FLOAT", "STRING")))
        take("RBRACK")
        return items

    result = object_list("EOF")
    return result
