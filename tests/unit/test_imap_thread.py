"""The pure SORT/THREAD algorithms: base subject (RFC 5256 2.1), i;unicode-casemap keys,
ORDEREDSUBJECT and REFERENCES threading and the THREAD response's thread lists."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailstead.core.base_subject import base_subject, casemap
from mailstead.proto.imap_format import sequence_set
from mailstead.proto.imap_thread import (
    ThreadMessage,
    columns,
    extend_links,
    format_threads,
    ordered_subject,
    references,
    references_steps,
    run,
    thread_numbers,
)
from mailstead.proto.mime import parse_envelope_fields


@pytest.mark.parametrize(
    ("subject", "base", "refwd"),
    [
        ("Hello", "Hello", False),
        ("Re: Hello", "Hello", True),
        ("RE: re: Fw: FWD: Hello", "Hello", True),
        ("Re: [list] Fwd: Subject (fwd)", "Subject", True),
        ("[list] Re: Subject", "Subject", True),
        ("Re [list]: Subject", "Subject", True),
        ("[PATCH] [v2] fix it", "fix it", False),
        ("[only a blob]", "[only a blob]", False),
        ("[a] [b]", "[b]", False),
        ("[Fwd: Re: Lunch]", "Lunch", True),
        ("Re: [Fwd: [list] Lunch (fwd)]", "Lunch", True),
        ("Lunch (fwd) (FWD)  ", "Lunch", True),
        ("  lots \t of\r\n   space  ", "lots of space", False),
        ("Real estate", "Real estate", False),
        ("Fwdx: not a prefix", "Fwdx: not a prefix", False),
        ("Re:", "", True),
        ("", "", False),
        ("Grüße: Re: x", "Grüße: Re: x", False),
    ],
)
def test_base_subject(subject: str, base: str, refwd: bool) -> None:
    assert base_subject(subject) == (base, refwd)


def test_casemap_folds_case_and_compatibility_forms() -> None:
    assert casemap("Straße") == casemap("STRASSE")
    assert casemap("Ünïcode") == casemap("üNÏCODE")
    assert casemap("ﬁle") == casemap("FILE")  # the ligature decomposes (NFKD)
    assert casemap("Apple") < casemap("banana") < casemap("Cherry")


def msg(number: int, day: int, subject: str = "s", mid: str = "", irt: str = "",
        refs: str = "") -> ThreadMessage:
    return ThreadMessage(number, number, float(day), subject,
                         f"<{mid}@x>" if mid else "", irt, refs)


def refs_threads(messages: list[ThreadMessage]) -> str:
    return format_threads(references(messages))


def test_rfc_example_thread_shape() -> None:
    """RFC 5256 4: "(2)(3 6 (4 23)(44 7 96))"."""
    messages = [
        msg(2, 1, "other", "m2"),
        msg(3, 2, "topic", "m3"),
        msg(6, 3, "Re: topic", "m6", refs="<m3@x>"),
        msg(4, 4, "Re: topic", "m4", refs="<m3@x> <m6@x>"),
        msg(23, 5, "Re: topic", "m23", refs="<m3@x> <m6@x> <m4@x>"),
        msg(44, 6, "Re: topic", "m44", irt="<m6@x>"),  # In-Reply-To only
        msg(7, 7, "Re: topic", "m7", refs="<m3@x> <m6@x> <m44@x>"),
        msg(96, 8, "Re: topic", "m96", refs="<m44@x> <m7@x>"),
    ]
    assert refs_threads(messages) == "(2)(3 6 (4 23)(44 7 96))"


def test_missing_parent_becomes_a_dummy() -> None:
    # Two replies to a message that is not in the mailbox: a dummy holds both.
    messages = [msg(1, 1, "Re: gone", "a", refs="<root@x>"),
                msg(2, 2, "Re: gone", "b", refs="<root@x>")]
    assert refs_threads(messages) == "((1)(2))"
    # One reply only: the dummy is pruned and its child promoted.
    assert refs_threads(messages[:1]) == "(1)"
    # A dummy in the middle of a chain is pruned: 3's grandparent is 1.
    chain = [msg(1, 1, "a", "r1"), msg(3, 3, "Re: a", "r3", refs="<r1@x> <r2@x>")]
    assert refs_threads(chain) == "(1 3)"


def test_references_win_over_in_reply_to_and_loops_are_broken() -> None:
    messages = [msg(1, 1, "x", "a", refs="<b@x>"), msg(2, 2, "y", "b", refs="<a@x>")]
    shape = refs_threads(messages)
    assert sorted(int(n) for n in re.findall(r"\d+", shape)) == [1, 2]
    messages = [msg(1, 1, "x", "a"), msg(2, 2, "y", "b"),
                msg(3, 3, "z", "c", irt="<a@x>", refs="<b@x>")]
    assert refs_threads(messages) == "(1)(2 3)"


def test_duplicate_and_missing_message_ids() -> None:
    messages = [msg(1, 1, "x", "same"), msg(2, 2, "y", "same"), msg(3, 3, "z"),
                msg(4, 4, "Re: x", "r", refs="<same@x>")]
    # The reply links to the first message with the ID; the duplicate stands alone.
    assert refs_threads(messages) == "(1 4)(2)(3)"


def test_subject_grouping_of_root_messages() -> None:
    # A reply without headers joins the thread of its subject.
    assert refs_threads([msg(1, 1, "Lunch"), msg(2, 2, "Re: Lunch")]) == "(1 2)"
    assert refs_threads([msg(1, 1, "Re: Lunch"), msg(2, 2, "Lunch")]) == "(2 1)"
    # Two originals with the same subject: siblings under a dummy.
    assert refs_threads([msg(1, 1, "Lunch"), msg(2, 2, "Lunch")]) == "((1)(2))"
    # An empty base subject never groups.
    assert refs_threads([msg(1, 1, "Re:"), msg(2, 2, "")]) == "(1)(2)"


def test_siblings_sorted_by_sent_date_then_mailbox_order() -> None:
    messages = [msg(1, 1, "a", "p"), msg(2, 9, "Re: a", "c1", refs="<p@x>"),
                msg(3, 5, "Re: a", "c2", refs="<p@x>"), msg(4, 5, "Re: a", "c3", refs="<p@x>")]
    assert refs_threads(messages) == "(1 (3)(4)(2))"


def test_ordered_subject() -> None:
    messages = [msg(1, 3, "Lunch"), msg(2, 1, "Invoice"), msg(3, 4, "Re: lunch"),
                msg(4, 5, "[list] Lunch"), msg(5, 2, "Re: Invoice")]
    # Threads by the date of their first message; children of the first, by date.
    assert ordered_subject(messages) == "(2 5)(1 (3)(4))"


def test_long_chain_needs_no_recursion() -> None:
    n = 5000
    messages = [msg(i, i, "c", f"m{i}", refs=f"<m{i - 1}@x>" if i > 1 else "")
                for i in range(1, n + 1)]
    out = refs_threads(messages)
    assert out == "(" + " ".join(str(i) for i in range(1, n + 1)) + ")"


def test_references_field_and_ordered_set() -> None:
    raw = b"Subject: x\r\nReferences: <a@x>\r\n <b@x>\r\n\r\nReferences: <body@x>\r\n"
    assert parse_envelope_fields(raw).references.split() == ["<a@x>", "<b@x>"]
    assert parse_envelope_fields(b"Subject: x\r\n\r\n").references == ""
    assert sequence_set([5, 1, 2, 3, 9, 7, 8]) == "5,1:3,9,7:8"  # a sorted result's order


@st.composite
def mailboxes(draw: st.DrawFn) -> list[ThreadMessage]:
    count = draw(st.integers(0, 40))
    ids = [f"<m{i}@x>" for i in range(count + 5)]  # some never present: dummies
    subjects = ["a", "Re: a", "b", "Fwd: b", "", "[l] a", "c (fwd)"]
    out = []
    for i in range(1, count + 1):
        refs = draw(st.lists(st.sampled_from(ids), max_size=4)) if ids else []
        out.append(ThreadMessage(
            i, i, float(draw(st.integers(0, 5))), draw(st.sampled_from(subjects)),
            draw(st.sampled_from([*ids, ""])), draw(st.sampled_from([*ids, ""])),
            " ".join(refs),
        ))
    return out


@settings(max_examples=300, deadline=None)
@given(mailboxes())
def test_every_message_threaded_exactly_once(messages: list[ThreadMessage]) -> None:
    top = references(messages)
    expected = sorted(m.number for m in messages)
    assert sorted(thread_numbers(top)) == expected
    text = format_threads(top)
    assert sorted(int(n) for n in re.findall(r"\d+", text)) == expected
    depth = 0
    for ch in text:  # balanced, and no empty list "()"
        depth += {"(": 1, ")": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0 and "()" not in text
    plain = ordered_subject(messages)
    assert sorted(int(n) for n in re.findall(r"\d+", plain)) == expected


@settings(max_examples=200, deadline=None)
@given(mailboxes(), st.integers(0, 40))
def test_step_one_extended_with_new_messages_is_step_one_afresh(
        messages: list[ThreadMessage], split: int) -> None:
    """imap_sort_cache.LinkCache: step 1 over the first messages, extended over the later
    ones, threads as step 1 over all of them at once; the kept links stay as they were."""
    cols = columns(messages)
    links = run(extend_links(columns(messages[:split])))
    kept = links.copy()
    extended = run(references_steps(cols, links.copy()))
    assert format_threads(extended) == format_threads(references(messages))
    assert run(extend_links(columns(messages[:split]))) == kept
    again = run(references_steps(cols, run(extend_links(cols, kept.copy()))))
    assert format_threads(again) == format_threads(extended)
