"""LIST patterns (RFC 9051 6.3.9): the linear matcher agrees with the plain regex reading of
'*' and '%' on every small case, and a pattern that makes that regex backtrack exponentially
answers at once (issue 16)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from mailstead.proto.imap_cmd_mailbox import _pattern_regex


def _reference(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(
        ".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in pattern
    ), re.DOTALL)


@given(st.text("ab/*%", max_size=8), st.text("ab/", max_size=10))
def test_same_answers_as_the_regex(pattern: str, name: str) -> None:
    assert _pattern_regex(pattern).fullmatch(name) == bool(_reference(pattern).fullmatch(name))


def test_inbox_in_any_case_and_wildcards() -> None:
    assert _pattern_regex("inbox").fullmatch("INBOX")
    assert _pattern_regex("Inbox/%").fullmatch("INBOX/Sub")
    assert not _pattern_regex("%").fullmatch("a/b")
    assert _pattern_regex("*").fullmatch("a/b")


def test_backtracking_pattern_is_linear() -> None:
    assert not _pattern_regex("*a" * 5000 + "b").fullmatch("a" * 500)
