"""IMAP response formatting helpers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstead.proto import imap_format as fmt
from mailstead.store.interfaces import SystemFlag


def test_sequence_set() -> None:
    assert fmt.sequence_set([]) == ""
    assert fmt.sequence_set([1, 2, 3, 5, 7, 8]) == "1:3,5,7:8"


@given(st.sets(st.integers(1, 500)))
def test_sequence_set_covers_exactly(numbers: set[int]) -> None:
    text = fmt.sequence_set(sorted(numbers))
    found: set[int] = set()
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition(":")
        found.update(range(int(lo), int(hi or lo) + 1))
    assert found == numbers


def test_flags() -> None:
    bits = SystemFlag.SEEN | SystemFlag.DELETED
    assert fmt.flag_list(bits, frozenset({"b", "$a"}), recent=True) == (
        b"(\\Deleted \\Seen \\Recent $a b)"
    )
    assert fmt.parse_flags(["\\seen", "$Junk", "\\Recent"]) == (SystemFlag.SEEN,
                                                                 frozenset({"$Junk"}))
    with pytest.raises(fmt.FlagError):
        fmt.parse_flags(["\\Important"])


def test_internal_date_same_instant_in_two_zones() -> None:
    """The answers are memoised: equal instants in other zones must still print apart."""
    utc = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)
    paris = utc.astimezone(timezone(timedelta(hours=1)))
    assert utc == paris
    for _ in range(2):
        assert fmt.internal_date(utc) == b'"01-Mar-2024 10:00:00 +0000"'
        assert fmt.internal_date(paris) == b'"01-Mar-2024 11:00:00 +0100"'
        assert fmt.internal_date(datetime(2024, 3, 1, 10, 0)) == b'"01-Mar-2024 10:00:00 +0000"'


def test_internal_date_and_replies() -> None:
    when = datetime(1996, 7, 17, 2, 44, 25, tzinfo=timezone(-timedelta(hours=7)))
    assert fmt.internal_date(when) == b'"17-Jul-1996 02:44:25 -0700"'
    assert fmt.internal_date(datetime(2024, 1, 2, tzinfo=UTC)) == b'"02-Jan-2024 00:00:00 +0000"'
    assert fmt.tagged("a1", "NO", "Nope", "TRYCREATE") == b"a1 NO [TRYCREATE] Nope\r\n"
    assert fmt.string("a\"b", False) == b'"a\\"b"'
    assert fmt.string("é", False) == b"{2}\r\n\xc3\xa9"
    assert fmt.string("é", True) == b'"\xc3\xa9"'
