"""IMAP value encoding: exact bytes, and a round trip through an independent reader."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstead.proto.imap_sexpr import (
    MAX_QUOTED,
    Atom,
    Unspaced,
    encode,
    literal,
    literal8,
    quoted_or_literal,
)

# --------------------------------------------------------------------------------------------
# A tiny reader for IMAP response values (RFC 3501 section 4), written independently of the
# encoder: NIL -> None, number -> int, quoted / literal -> bytes, atom -> str, list -> list.


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def value(self) -> object:
        d = self.data
        c = d[self.pos : self.pos + 1]
        if c == b"(":
            self.pos += 1
            items: list[object] = []
            while d[self.pos : self.pos + 1] != b")":
                if items:
                    assert d[self.pos : self.pos + 1] == b" ", (d, self.pos)
                    self.pos += 1
                items.append(self.value())
            self.pos += 1
            return items
        if c == b'"':
            out = bytearray()
            self.pos += 1
            while d[self.pos : self.pos + 1] != b'"':
                ch = d[self.pos]
                assert ch not in (0, 10, 13), "CR, LF and NUL are not allowed in quoted strings"
                if ch == 0x5C:
                    self.pos += 1
                    assert d[self.pos] in b'"\\', "only \\ and \" may be escaped"
                    ch = d[self.pos]
                out.append(ch)
                self.pos += 1
            self.pos += 1
            return bytes(out)
        if c in (b"{", b"~"):
            m = re.compile(rb"~?\{(\d+)\}\r\n").match(d, self.pos)
            assert m is not None
            n = int(m.group(1))
            self.pos = m.end() + n
            assert self.pos <= len(d)
            return d[m.end() : self.pos]
        m = re.compile(rb"[^ ()]+").match(d, self.pos)
        assert m is not None, (d, self.pos)
        self.pos = m.end()
        word = m.group().decode("ascii")
        if word == "NIL":
            return None
        if word.isdigit():
            return int(word)
        return word


def read(data: bytes) -> object:
    reader = Reader(data)
    value = reader.value()
    assert reader.pos == len(data), "trailing bytes after the value"
    return value


def normalise(value: object) -> object:
    """What the reader should give back for an encoded value."""
    if isinstance(value, Atom):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, list | tuple):
        return [normalise(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Exact encodings


def test_scalars() -> None:
    assert encode(None) == b"NIL"
    assert encode(0) == b"0"
    assert encode(4294967295) == b"4294967295"
    assert encode(Atom("\\Seen")) == b"\\Seen"
    assert encode(Atom("BODYSTRUCTURE")) == b"BODYSTRUCTURE"
    assert encode("") == b'""'
    assert encode("hello world") == b'"hello world"'
    assert encode(b"bytes too") == b'"bytes too"'


def test_quoting_escapes_backslash_and_quote() -> None:
    assert encode('say "hi" \\o/') == b'"say \\"hi\\" \\\\o/"'


@pytest.mark.parametrize("raw", [b"a\r\nb", b"line\n", b"cr\r", b"nul\x00"])
def test_control_characters_force_a_literal(raw: bytes) -> None:
    assert encode(raw) == b"{%d}\r\n" % len(raw) + raw


def test_eight_bit_is_a_literal_unless_utf8_allowed() -> None:
    assert encode("Grüße") == b"{7}\r\nGr\xc3\xbc\xc3\x9fe"
    assert encode("Grüße", utf8_ok=True) == b'"Gr\xc3\xbc\xc3\x9fe"'
    # Invalid UTF-8 can never be quoted, even for a UTF8=ACCEPT client.
    assert quoted_or_literal(b"\xff\xfe", utf8_ok=True) == b"{2}\r\n\xff\xfe"
    assert quoted_or_literal(b"plain", utf8_ok=True) == b'"plain"'


def test_long_strings_become_literals() -> None:
    assert encode("x" * MAX_QUOTED) == b'"' + b"x" * MAX_QUOTED + b'"'
    assert encode("x" * (MAX_QUOTED + 1)) == b"{1001}\r\n" + b"x" * (MAX_QUOTED + 1)


def test_literals() -> None:
    assert literal(b"") == b"{0}\r\n"
    assert literal(b"abc") == b"{3}\r\nabc"
    assert literal8(b"\x00\x01") == b"~{2}\r\n\x00\x01"


def test_lists_and_unspaced() -> None:
    assert encode([]) == b"()"
    flags = [Atom("FLAGS"), [Atom("\\Seen"), Atom("$Junk")]]
    assert encode(flags) == b"(FLAGS (\\Seen $Junk))"
    assert encode((1, None, "a")) == b'(1 NIL "a")'
    # body-type-mpart: child bodies are written back to back (RFC 3501 section 9).
    mpart = [Unspaced(([1], [2])), "MIXED"]
    assert encode(mpart) == b'((1)(2) "MIXED")'


def test_refuses_unknown_types() -> None:
    with pytest.raises(TypeError):
        encode(True)
    with pytest.raises(TypeError):
        encode(1.5)


# --------------------------------------------------------------------------------------------
# Round trip

values = st.recursive(
    st.none()
    | st.integers(min_value=0, max_value=2**63 - 1)
    | st.binary(max_size=1200)
    | st.text(max_size=300),
    lambda children: st.lists(children, max_size=6),
    max_leaves=30,
)


@given(values)
def test_encode_round_trips_through_a_reader(value: object) -> None:
    assert read(encode(value)) == normalise(value)


@given(values)
def test_encode_round_trips_with_utf8_allowed(value: object) -> None:
    assert read(encode(value, utf8_ok=True)) == normalise(value)


@given(st.binary(max_size=2000))
def test_quoted_strings_never_contain_forbidden_octets(raw: bytes) -> None:
    out = quoted_or_literal(raw)
    if out.startswith(b'"'):
        assert not any(c in out for c in (b"\r", b"\n", b"\x00"))
        assert all(c < 0x80 for c in out)
    assert read(out) == raw
