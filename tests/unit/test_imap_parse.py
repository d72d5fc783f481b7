"""IMAP command parser: every command's grammar, literals, sequence sets, search keys,
fetch attributes, and malformed input (never an exception other than ParseError)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstead.proto import imap_args as pa
from mailstead.proto import imap_parse as p
from mailstead.proto import imap_reader as pr


def parse(data: bytes) -> pa.Command:
    return p.parse_command(data)


def test_literal_marker() -> None:
    assert pr.literal_marker(b"a APPEND x {12}\r\n") == pr.LiteralMarker(12, True, False)
    assert pr.literal_marker(b"a APPEND x {12+}\r\n") == pr.LiteralMarker(12, False, False)
    assert pr.literal_marker(b"a APPEND x ~{3}\r\n") == pr.LiteralMarker(3, True, True)
    assert pr.literal_marker(b"a NOOP\r\n") is None
    assert pr.literal_marker(b"a LOGIN {99999999999}\r\n") is None  # 11 digits: not a literal


def test_peek_tag_command() -> None:
    assert pr.peek_tag_command(b"x1 uid fetch 1 FLAGS\r\n") == ("x1", "UID FETCH")
    assert pr.peek_tag_command(b"a append INBOX {3}\r\n") == ("a", "APPEND")
    assert pr.peek_tag_command(b"\r\n") == ("*", "")


def test_login_astrings_and_literals() -> None:
    cmd = parse(b'a LOGIN "al\\"ice" {4}\r\np w!')
    assert cmd == pa.Command("a", "LOGIN", pa.LoginArgs('al"ice', "p w!"))
    cmd = parse(b"b login alice secret]")
    assert isinstance(cmd.args, pa.LoginArgs) and cmd.args.password == "secret]"


def test_sequence_sets() -> None:
    cmd = parse(b"a FETCH 1,3:5,7:*,* FLAGS")
    assert isinstance(cmd.args, pa.FetchArgs)
    numbers = cmd.args.numbers
    assert numbers.ranges == ((1, 1), (3, 5), (7, 0), (0, 0))
    assert numbers.bounds(10) == [(1, 1), (3, 5), (7, 10), (10, 10)]
    assert numbers.contains(8, 10) and not numbers.contains(2, 10)
    assert pa.SequenceSet(((5, 0),)).bounds(3) == [(3, 5)]  # "5:*" with 3 messages
    for bad in [b"a FETCH 0 FLAGS", b"a FETCH 1:2:3 FLAGS", b"a FETCH , FLAGS",
                b"a FETCH 1, FLAGS", b"a FETCH 99999999999 FLAGS"]:
        with pytest.raises(pr.ParseError):
            parse(bad)


def test_fetch_attributes() -> None:
    cmd = parse(
        b"a UID FETCH 1:* (UID FLAGS BODY.PEEK[1.2.HEADER.FIELDS.NOT (x-a \"B\")]<10.20> "
        b"BINARY[3] BINARY.SIZE[3] BODY[] RFC822.HEADER ENVELOPE) (CHANGEDSINCE 7 VANISHED)"
    )
    args = cmd.args
    assert isinstance(args, pa.FetchArgs) and cmd.uid
    names = [i.name for i in args.items]
    assert names == ["UID", "FLAGS", "BODY[]", "BINARY", "BINARY.SIZE", "BODY[]",
                     "RFC822.HEADER", "ENVELOPE"]
    peek = args.items[2]
    assert peek.peek and peek.partial == (10, 20)
    assert peek.section == pa.Section((1, 2), "HEADER.FIELDS.NOT", ("X-A", "B"))
    assert peek.section.spec == "1.2.HEADER.FIELDS.NOT (X-A B)"
    assert args.changedsince == 7 and args.vanished
    assert [i.name for i in parse(b"a FETCH 1 FULL").args.items] == [  # type: ignore[union-attr]
        "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"]
    for bad in [b"a FETCH 1 (BODY[MIME])", b"a FETCH 1 (BODY[1.FOO])", b"a FETCH 1 (BOGUS)",
                b"a FETCH 1 (BODY[]<1.0>)", b"a FETCH 1 FLAGS (VANISHED)",
                b"a FETCH 1 (BINARY[HEADER])", b"a FETCH 1 (FLAGS"]:
        with pytest.raises(pr.ParseError):
            parse(bad)


def test_fetch_items_kept_by_text_parse_the_same_and_keep_the_limits() -> None:
    """A FETCH's items (a STORE's flags) are parsed once per text (imap_parse._TAILS): the
    same items with other numbers give the same answer; limits and errors hold on every use."""
    p._TAILS.clear()
    tail = b"(UID FLAGS BODY.PEEK[HEADER.FIELDS (From To)] ENVELOPE)"
    first = parse(b"a UID FETCH 1:5 " + tail).args
    second = parse(b"b UID FETCH 7 " + tail).args
    assert isinstance(first, pa.FetchArgs) and isinstance(second, pa.FetchArgs)
    assert first.items == second.items and second.numbers.ranges == ((7, 7),)
    assert ("FETCH", tail) in p._TAILS
    flags = b"+FLAGS.SILENT (\\Seen $Work)"
    stored = [parse(b"s%d UID STORE %d " % (n, n) + flags).args for n in (3, 9)]
    assert isinstance(stored[1], pa.StoreArgs) and stored[1].numbers.ranges == ((9, 9),)
    assert (stored[1].mode, stored[1].silent, stored[1].flags) == ("add", True, ("\\Seen", "$Work"))
    assert stored[0].flags == stored[1].flags and ("STORE", flags) in p._TAILS
    # The same text after a FETCH's numbers is not a STORE's.
    with pytest.raises(pr.ParseError):
        parse(b"t FETCH 1 " + flags)
    for bad in [b"c FETCH 1 (FLAGS", b"c FETCH 1 (FLAGS) extra"]:
        for _ in range(2):  # refused again: a failed parse is not kept
            with pytest.raises(pr.ParseError):
                parse(bad)
    # Too many attributes: refused every time, never kept.
    many = b"(" + b" ".join([b"UID"] * (pr.MAX_FETCH_ITEMS + 1)) + b")"
    for _ in range(2):
        with pytest.raises(pr.ParseError) as info:
            parse(b"d FETCH 1 " + many)
        assert info.value.code == "LIMIT"


def test_store() -> None:
    cmd = parse(b"a STORE 1:3 (UNCHANGEDSINCE 12) -FLAGS.SILENT \\Seen $Junk")
    assert cmd.args == pa.StoreArgs(
        pa.SequenceSet(((1, 3),)), "remove", True, ("\\Seen", "$Junk"), 12
    )
    cmd = parse(b"a STORE 2 FLAGS ()")
    assert cmd.args == pa.StoreArgs(pa.SequenceSet(((2, 2),)), "replace", False, ())
    with pytest.raises(pr.ParseError):
        parse(b"a STORE 1 +LABELS (x)")


def test_append_variants() -> None:
    cmd = parse(
        b'a APPEND "Sent Items" (\\Seen) "1-Feb-2024 03:04:05 -0130" {3}\r\nabc'
        b" ~{2+}\r\n\x00x"
    )
    args = cmd.args
    assert isinstance(args, pa.AppendArgs) and args.mailbox == "Sent Items"
    first, second = args.messages
    assert first.flags == ("\\Seen",) and first.data == b"abc" and not first.binary
    assert first.date is not None and first.date.utcoffset() == -timedelta(hours=1, minutes=30)
    assert second.binary and second.data == b"\x00x"
    with pytest.raises(pr.ParseError):
        parse(b"a APPEND INBOX {3}\r\na\x00c")  # NUL only in literal8
    with pytest.raises(pr.ParseError):
        parse(b"a APPEND INBOX {10}\r\nshort")
    with pytest.raises(pr.ParseError):
        parse(b'a APPEND INBOX "31-Feb-2024 00:00:00 +0000" {1}\r\nx')


def test_search_keys() -> None:
    cmd = parse(
        b"a UID SEARCH RETURN (MIN COUNT) CHARSET UTF-8 NOT (OR FROM x SEEN) "
        b'SENTSINCE "1-Jan-2024" UID 5:* HEADER X-Spam yes KEYWORD $Junk MODSEQ 9 OLDER 60 '
        b"LARGER 100 1:2"
    )
    args = cmd.args
    assert isinstance(args, pa.SearchArgs)
    assert args.return_options == ("MIN", "COUNT") and args.charset == "UTF-8"
    assert isinstance(args.key, pa.SkAnd)
    keys = args.key.keys
    assert keys[0] == pa.SkNot(pa.SkOr(pa.SkText("FROM", "x"), pa.SkFlag("\\Seen", True)))
    assert keys[1] == pa.SkDate(True, "SINCE", date(2024, 1, 1))
    assert keys[2] == pa.SkSet(pa.SequenceSet(((5, 0),)), uid=True)
    assert keys[3] == pa.SkText("X-SPAM", "yes")
    assert keys[4] == pa.SkFlag("$Junk", True)
    assert keys[5:] == (pa.SkModseq(9), pa.SkAge(True, 60), pa.SkSize(True, 100),
                        pa.SkSet(pa.SequenceSet(((1, 2),)), uid=False))
    with pytest.raises(pr.ParseError) as exc:
        parse(b"a SEARCH CHARSET X-UNKNOWN ALL")
    assert exc.value.code.startswith("BADCHARSET")
    with pytest.raises(pr.ParseError):
        parse(b"a SEARCH " + b"NOT " * 200 + b"ALL")  # nesting cap


def test_list_forms() -> None:
    cmd = parse(b'a LIST (SUBSCRIBED) "" ("INBOX" %) RETURN (CHILDREN STATUS (UNSEEN))')
    assert cmd.args == pa.ListArgs(
        "", ("INBOX", "%"), frozenset({"SUBSCRIBED"}), frozenset({"CHILDREN", "STATUS"}),
        ("UNSEEN",), extended=True,
    )
    cmd = parse(b"a LIST ~/ Mail/*")
    assert cmd.args == pa.ListArgs("~/", ("Mail/*",))
    assert parse(b'a LSUB "" *').args == pa.ListArgs("", ("*",), lsub=True)


def test_select_qresync_and_misc() -> None:
    cmd = parse(b"a SELECT inbox (QRESYNC (67890007 90 1:200 (1,5 1,9)))")
    args = cmd.args
    assert isinstance(args, pa.SelectArgs) and args.mailbox == "INBOX"
    assert args.qresync is not None and args.qresync.seq_match is not None
    assert parse(b"a EXAMINE x (CONDSTORE)").args == pa.SelectArgs("x", condstore=True)
    assert parse(b"a ENABLE QRESYNC imap4rev2").args == pa.EnableArgs(("QRESYNC", "IMAP4REV2"))
    assert parse(b"a AUTHENTICATE plain =").args == pa.AuthenticateArgs("PLAIN", "")
    assert parse(b"a CREATE x (USE (\\Sent))").args == pa.CreateArgs("x", ("\\Sent",))
    assert parse(b"a STATUS x (MESSAGES SIZE)").args == pa.StatusArgs("x", ("MESSAGES", "SIZE"))
    assert parse(b"a UID EXPUNGE 3:4").args == pa.UidExpungeArgs(pa.SequenceSet(((3, 4),)))
    assert parse(b"a uid move 1 Trash").name == "UID MOVE"
    saved = parse(b"a UID COPY $ Trash").args
    assert isinstance(saved, pa.CopyArgs) and saved.numbers.saved
    search = parse(b"a SEARCH RETURN (SAVE) $ SEEN").args
    assert isinstance(search, pa.SearchArgs) and search.return_options == ("SAVE",)


@pytest.mark.parametrize(
    "bad",
    [b"", b" NOOP", b"a", b"a NOOP extra", b"+ NOOP", b"a FOO", b"a LOGIN x", b"a UID NOOP",
     b'a LOGIN "unterminated', b"a SELECT", b"a STATUS x ()", b"a ENABLE", b"a*b NOOP"],
)
def test_malformed(bad: bytes) -> None:
    with pytest.raises(pr.ParseError):
        parse(bad)


@given(st.binary(max_size=200))
def test_garbage_only_raises_parse_error(data: bytes) -> None:
    try:
        p.parse_command(data)
    except pr.ParseError:
        pass


@given(st.lists(st.tuples(st.integers(1, 1000), st.integers(1, 1000)), min_size=1, max_size=5))
def test_sequence_set_round_trip(ranges: list[tuple[int, int]]) -> None:
    text = ",".join(f"{a}:{b}" for a, b in ranges).encode()
    cmd = p.parse_command(b"a FETCH " + text + b" FLAGS")
    assert isinstance(cmd.args, pa.FetchArgs) and list(cmd.args.numbers.ranges) == ranges


# -- bounded work per command (issue 16) --


def test_caps_on_items_keys_and_ranges() -> None:
    keys = " ".join(f'TEXT "k{i}"' for i in range(pr.MAX_ITEMS + 1))
    with pytest.raises(pr.ParseError) as info:
        p.parse_command(b"a SEARCH " + keys.encode())
    assert info.value.code == "LIMIT" and info.value.tag == "a"
    ok = " ".join(f'TEXT "k{i}"' for i in range(pr.MAX_ITEMS))
    assert isinstance(p.parse_command(b"a SEARCH " + ok.encode()).args, pa.SearchArgs)
    with pytest.raises(pr.ParseError, match="FETCH attributes"):
        p.parse_command(b"a FETCH 1 (" + b" ".join([b"UID"] * (pr.MAX_FETCH_ITEMS + 1)) + b")")
    with pytest.raises(pr.ParseError, match="too many items"):
        p.parse_command(b"a STORE 1 +FLAGS (" + b" ".join(b"k%d" % i for i in range(1001)) + b")")
    ranges = b",".join(b"%d" % (2 * i + 1) for i in range(pr.MAX_RANGES + 1))
    with pytest.raises(pr.ParseError, match="too many ranges"):
        p.parse_command(b"a UID FETCH " + ranges + b" FLAGS")
    with pytest.raises(pr.ParseError, match="nested too deeply"):
        p.parse_command(b"a SEARCH " + b"NOT " * 60 + b"ALL")
