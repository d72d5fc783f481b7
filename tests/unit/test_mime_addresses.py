"""The plain-address shortcut of parse_addresses gives what the full tokenizer gives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailstead.proto.mime_address import _parse_address_list, parse_addresses

# Pieces chosen to sit on the shortcut's edges: atoms, dots, specials, white space of every
# kind the tokenizer knows and some it does not, encoded words, quotes and comments.
PIECES = ["a", "Bob", "x.y", ".", "@", "<", ">", " ", "  ", "\t", "\r\n ", "\xa0", ",", ";",
          ":", '"', "(c)", "[1.2.3.4]", "=?utf-8?q?caf=C3=A9?=", "é", "-", "+tag", "\\"]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12))
def test_shortcut_agrees_with_the_tokenizer(pieces: list[str]) -> None:
    value = "".join(pieces)
    assert parse_addresses(value) == _parse_address_list(value)


def test_common_forms() -> None:
    cases = {
        "Sender <sender@remote.test>": [("Sender", None, "sender", "remote.test")],
        "  John \t Smith   <j.s@x.example>  ": [("John Smith", None, "j.s", "x.example")],
        "<someone@bench.test>": [(None, None, "someone", "bench.test")],
        "bob@example.test": [(None, None, "bob", "example.test")],
        "=?utf-8?q?caf=C3=A9?= <c@d.test>": [("=?utf-8?q?caf=C3=A9?=", None, "c", "d.test")],
    }
    for value, expected in cases.items():
        assert parse_addresses(value) == expected == _parse_address_list(value), value
