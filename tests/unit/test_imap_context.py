"""The pure parts of CONTEXT=SEARCH / CONTEXT=SORT (RFC 5267 4): RETURN option and
CANCELUPDATE parsing, PARTIAL windows, kept results and their ADDTO / REMOVEFROM lines."""

from __future__ import annotations

import bisect
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstead.core.models import Envelope, MessageMeta
from mailstead.proto.imap_args import CancelUpdateArgs, SearchArgs, SkAll, SortArgs
from mailstead.proto.imap_cmd_sort import order_keys
from mailstead.proto.imap_context import (
    UpdateContext,
    esearch_update,
    partial_data,
    partial_slice,
    sort_row,
)
from mailstead.proto.imap_parse import parse_command
from mailstead.proto.imap_parse_search import partial_range
from mailstead.proto.imap_reader import ParseError


def test_partial_range() -> None:
    assert partial_range("1:100") == (1, 100)
    assert partial_range("100:1") == (1, 100)
    assert partial_range("-1:-10") == (-1, -10)
    assert partial_range("-10:-1") == (-1, -10)
    for bad in ("0:5", "1:-5", "-1:5", "x:1", "1", "1:", ":1", "1:4294967296", "١:٢"):
        assert partial_range(bad) is None, bad


def test_return_options() -> None:
    args = parse_command(b"a UID SEARCH RETURN (COUNT PARTIAL -1:-50 UPDATE CONTEXT) ALL").args
    assert isinstance(args, SearchArgs)
    assert args.return_options == ("COUNT", "PARTIAL", "UPDATE", "CONTEXT")
    assert args.partial == (-1, -50)
    args = parse_command(b"a SORT RETURN (PARTIAL 1:10) (DATE) UTF-8 ALL").args
    assert isinstance(args, SortArgs) and args.partial == (1, 10)
    args = parse_command(b"a SEARCH RETURN () ALL").args
    assert isinstance(args, SearchArgs) and args.return_options == ("ALL",)
    assert args.partial is None
    for bad in (b"a SEARCH RETURN (PARTIAL) ALL", b"a SEARCH RETURN (PARTIAL 1:2 ALL) ALL",
                b"a SEARCH RETURN (NOPE) ALL", b"a SORT RETURN (SAVE) (DATE) UTF-8 ALL",
                b"a SEARCH RETURN (PARTIAL 0:1) ALL"):
        with pytest.raises(ParseError):
            parse_command(bad)


def test_cancelupdate_parse() -> None:
    cmd = parse_command(b'a CANCELUPDATE "t1" "t 2" t3')
    assert cmd.name == "CANCELUPDATE"
    assert cmd.args == CancelUpdateArgs(("t1", "t 2", "t3"))
    with pytest.raises(ParseError):
        parse_command(b"a CANCELUPDATE")


def test_partial_slice_examples() -> None:
    items = list(range(1, 11))
    assert items[partial_slice(10, (1, 3))] == [1, 2, 3]
    assert items[partial_slice(10, (9, 20))] == [9, 10]
    assert items[partial_slice(10, (11, 20))] == []
    assert items[partial_slice(10, (-1, -3))] == [8, 9, 10]
    assert items[partial_slice(10, (-9, -20))] == [1, 2]
    assert items[partial_slice(10, (-11, -20))] == []
    assert partial_data((1, 3), [5, 6, 7]) == "PARTIAL (1:3 5:7)"
    assert partial_data((-1, -3), [9, 4, 5]) == "PARTIAL (-1:-3 9,4:5)"
    assert partial_data((1, 3), []) == "PARTIAL (1:3 NIL)"


@given(st.integers(0, 50), st.integers(1, 60), st.integers(1, 60), st.booleans())
def test_partial_slice_positions(count: int, a: int, b: int, from_end: bool) -> None:
    """The window holds exactly the items whose position (1-based, or from the end) lies in
    the range."""
    lo, hi = sorted((a, b))
    items = list(range(count))
    window = items[partial_slice(count, (-lo, -hi) if from_end else (lo, hi))]
    expected = [i for i in items
                if lo <= ((count - i) if from_end else (i + 1)) <= hi]
    assert window == expected


def test_search_context_lines() -> None:
    ctx = UpdateContext("A1", True, SkAll(), frozenset(), None, [3, 5, 9], {3: 3, 5: 5, 9: 9})
    assert ctx.remove(5) == 2
    assert ctx.insert(7, 7) == 2
    assert ctx.order == [3, 7, 9]
    line = esearch_update(ctx, [(0, 5)], [(0, 8), (0, 7)])
    assert line == b'* ESEARCH (TAG "A1") UID REMOVEFROM (0 5) ADDTO (0 7:8)\r\n'
    plain = UpdateContext("x", False, SkAll(), frozenset(), None)
    assert esearch_update(plain, [], [(0, 2)]) == b'* ESEARCH (TAG "x") ADDTO (0 2)\r\n'


def _meta(uid: int, subject: str, size: int) -> MessageMeta:
    when = datetime(2024, 1, uid, tzinfo=UTC)
    return MessageMeta(uid, 1, uid, 1, 0, frozenset(), when, size, "b" * 64,
                       Envelope(subject=subject, from_="a@example.org", date=when))


def test_sort_keys_order_and_reverse() -> None:
    rows = [sort_row(_meta(u, s, z)) for u, s, z in
            [(1, "delta", 10), (2, "Re: alpha", 30), (3, "charlie", 10), (4, "alpha", 20)]]
    assert not any(r.bare for r in rows)
    criteria = (("SIZE", True), ("SUBJECT", False))
    keys = order_keys(criteria, rows)
    # By size descending, then subject, then UID: 2 (30), 4 (20), 3 and 1 (10: charlie, delta).
    assert [k[-1] for k in sorted(keys)] == [2, 4, 3, 1]
    ordered = sorted(keys)
    ctx = UpdateContext("S", True, SkAll(), frozenset(), criteria, ordered,
                        {k[-1]: k for k in ordered})
    [new] = order_keys(criteria, [sort_row(_meta(5, "bravo", 10))])
    assert ctx.insert(5, new) == 3  # before charlie among the size-10 ones
    assert ctx.position(1) == 5 and ctx.remove(2) == 1
    line = esearch_update(ctx, [(1, 2)], [(2, 5)])
    assert line == b'* ESEARCH (TAG "S") UID REMOVEFROM (1 2) ADDTO (2 5)\r\n'
    assert bisect.bisect_left(ctx.order, new) == 1


def test_bare_row() -> None:
    meta = MessageMeta(1, 1, 1, 1, 0, frozenset(), datetime(2024, 1, 1, tzinfo=UTC), 5,
                       "b" * 64, Envelope())
    assert sort_row(meta).bare
