"""NOTIFY's grammar (RFC 5465 8), parsed by proto/imap_notify.py through imap_parse."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstead.proto import imap_parse as p
from mailstead.proto import imap_reader
from mailstead.proto.imap_notify import EventGroup, NotifyArgs


def parse(data: bytes) -> NotifyArgs:
    args = p.parse_command(data).args
    assert isinstance(args, NotifyArgs)
    return args


def test_notify_none_and_set() -> None:
    assert parse(b"a NOTIFY NONE") == NotifyArgs(none=True)
    args = parse(b"a notify set status (selected (MessageNew (UID FLAGS) messageexpunge)) "
                 b'(mailboxes (INBOX "a b") (MailboxName)) (subtree Lists NONE) '
                 b"(personal (MessageNew MessageExpunge FlagChange))")
    assert args.status and not args.none
    sel, boxes, sub, personal = args.groups
    assert sel.filter == "SELECTED" and sel.events == {"MESSAGENEW", "MESSAGEEXPUNGE"}
    assert [f.name for f in sel.fetch] == ["UID", "FLAGS"]
    assert boxes == EventGroup("MAILBOXES", ("INBOX", "a b"), frozenset({"MAILBOXNAME"}))
    assert sub == EventGroup("SUBTREE", ("Lists",), None)
    assert personal.events == {"MESSAGENEW", "MESSAGEEXPUNGE", "FLAGCHANGE"}


@pytest.mark.parametrize("bad", [
    b"a NOTIFY", b"a NOTIFY SET", b"a NOTIFY SET ()", b"a NOTIFY MAYBE",
    b"a NOTIFY SET (PERSONAL)", b"a NOTIFY SET (PERSONAL ())", b"a NOTIFY SET (NOWHERE NONE)",
    b"a NOTIFY SET (SUBTREE (MessageNew MessageExpunge))",
    b"a NOTIFY SET (SELECTED (MessageNew (NOSUCH) MessageExpunge))",
    b"a NOTIFY SET (PERSONAL NONE) trailing", b"a NOTIFY NONE extra",
])
def test_notify_syntax_errors(bad: bytes) -> None:
    with pytest.raises(imap_reader.ParseError):
        p.parse_command(bad)


@given(st.binary(max_size=80))
def test_notify_never_crashes(tail: bytes) -> None:
    try:
        p.parse_command(b"a NOTIFY SET " + tail)
    except imap_reader.ParseError:
        pass
