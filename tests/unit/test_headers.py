"""proto/headers.py: the header-section reads the SMTP server makes (Received count, From:)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailstead.core.errors import InvalidInput
from mailstead.proto.headers import (
    count_received,
    from_fields,
    header_section,
    parse_mailbox_list,
)


def test_header_section_stops_at_the_empty_line() -> None:
    assert header_section(b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore") == b"A: 1\r\nB: 2\r\n"
    assert header_section(b"\r\nReceived: x\r\n") == b""
    assert header_section(b"A: 1\r\nB: 2\r\n") == b"A: 1\r\nB: 2\r\n"


def test_count_received_stops_early() -> None:
    header = b"Received: x\r\n" * 1000
    assert count_received(header, 100) == 101
    assert count_received(b"X-Received: 1\r\n Received: 2\r\nreceived\t: 3\r\n", 100) == 1


def test_from_fields_unfolded() -> None:
    header = b"Subject: a\r\n From: not this\r\nFROM: Alice\r\n\t<a@b.test>\r\nfrom :x@y.test\r\n"
    assert from_fields(header) == [" Alice\t<a@b.test>", "x@y.test"]


@pytest.mark.parametrize("value,expected", [
    ("a@b.test", ["a@b.test"]),
    (" A (x (nested) y) <a@b.test> (c) , \"q\\\"d\" <c.d@e.test>", ["a@b.test", "c.d@e.test"]),
    ("John Q. Public <jqp@example.test>", ["jqp@example.test"]),
    ("\"a@b\"@c.test", ['"a@b"@c.test']),
    ("=?utf-8?b?w6k=?= <x@y.test>", ["x@y.test"]),
])
def test_parse_mailbox_list(value: str, expected: list[str]) -> None:
    assert parse_mailbox_list(value) == expected


@pytest.mark.parametrize("value", [
    "", " ", "a@b.test,", "a@b.test,,c@d.test", "g: a@b.test;", "a@b.test <c@d.test>",
    "<a@b.test", "a@b.test>", "(a@b.test", "\"a <a@b.test>", "a@[1.2.3.4]", "a.@b.test",
    "a..b@c.test", "a@b..test", "<@r.test:a@b.test>", "a@b.test\x00", "a b@c.test", ". <a@b.test>",
    "a@b.test\r\n", "A \x01 <a@b.test>",
])
def test_parse_mailbox_list_refuses(value: str) -> None:
    with pytest.raises(InvalidInput):
        parse_mailbox_list(value)


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('ab.@<>,;:"()\\ \t[]é\x00')), max_size=30))
def test_parse_mailbox_list_total(value: str) -> None:
    # Any input: a list of addresses whose parts are each written in the value (comments and
    # folding white space may stand between them: "a()@a" is a@a), or InvalidInput.
    try:
        found = parse_mailbox_list(value)
    except InvalidInput:
        return
    assert found
    for address in found:
        local, at, domain = address.rpartition("@")
        assert at and local in value and domain in value
