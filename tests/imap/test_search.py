"""SEARCH / UID SEARCH: every search key, CHARSET, ESEARCH return options, IMAP4rev2 form."""

from __future__ import annotations

import pytest

from mailstead.store.interfaces import SystemFlag
from tests.conftest import RunningServer
from tests.imap.helpers import Raw, deliver, message, status_of


@pytest.fixture
def raw(mail_server: RunningServer) -> Raw:
    """INBOX with four messages:
    1: from carol, subject "Lunch plans", seen+flagged, Date 2024-01-01, has Bcc
    2: from dave, subject "Invoice 42", answered, body mentions "payment", Date 2023-06-15
    3: from erin, subject "Ünïcode grüße", deleted+draft, keyword $Work, big body
    4: from carol, subject "Re: Lunch plans", unseen (arrives after the first SELECT)
    """
    deliver(mail_server, message("Lunch plans", extra="Bcc: secret@example.org\r\n"),
            flags=SystemFlag.SEEN | SystemFlag.FLAGGED)
    deliver(mail_server, message("Invoice 42", body="Please send the payment.\r\n",
                                 sender="dave@example.org").replace(
                b"Mon, 01 Jan 2024", b"Thu, 15 Jun 2023"), flags=SystemFlag.ANSWERED)
    deliver(mail_server, message("=?utf-8?q?=C3=9Cn=C3=AFcode_gr=C3=BC=C3=9Fe?=",
                                 body="x" * 5000 + "\r\n", sender="erin@example.org"),
            flags=SystemFlag.DELETED | SystemFlag.DRAFT)
    client = Raw(mail_server)
    client.login()
    client.cmd("SELECT INBOX")
    client.cmd("STORE 3 +FLAGS.SILENT ($Work)")
    deliver(mail_server, message("Re: Lunch plans"))
    client.cmd("NOOP")
    return client


def search(raw: Raw, criteria: str | bytes) -> list[int]:
    command = b"SEARCH " + (criteria.encode() if isinstance(criteria, str) else criteria)
    lines = raw.cmd(command)
    assert status_of(lines) == b"OK", lines
    [line] = [ln for ln in lines if ln.startswith(b"* SEARCH")]
    return [int(n) for n in line.split()[2:]]


CASES = [
    ("ALL", [1, 2, 3, 4]),
    ("SEEN", [1]),
    ("UNSEEN", [2, 3, 4]),
    ("FLAGGED", [1]),
    ("UNFLAGGED", [2, 3, 4]),
    ("ANSWERED", [2]),
    ("UNANSWERED", [1, 3, 4]),
    ("DELETED", [3]),
    ("UNDELETED", [1, 2, 4]),
    ("DRAFT", [3]),
    ("UNDRAFT", [1, 2, 4]),
    ("KEYWORD $Work", [3]),
    ("KEYWORD $work", [3]),
    ("UNKEYWORD $Work", [1, 2, 4]),
    ("RECENT", [1, 2, 3, 4]),
    ("NEW", [2, 3, 4]),
    ("OLD", []),
    ("FROM carol", [1, 4]),
    ("FROM DAVE@EXAMPLE.ORG", [2]),
    ("TO alice", [1, 2, 3, 4]),
    ("CC anyone", []),
    ("BCC secret", [1]),
    ('SUBJECT "lunch plans"', [1, 4]),
    ("BODY payment", [2]),
    ("TEXT payment", [2]),
    ("TEXT Invoice", [2]),
    ('HEADER Message-ID "Invoice.42@"', [2]),
    ('HEADER Bcc ""', [1]),
    ("LARGER 4000", [3]),
    ("SMALLER 4000", [1, 2, 4]),
    ("SENTBEFORE 1-Jan-2024", [2]),
    ("SENTON 15-Jun-2023", [2]),
    ("SENTSINCE 1-Jan-2024", [1, 3, 4]),
    ("SINCE 1-Jan-2020", [1, 2, 3, 4]),
    ("BEFORE 1-Jan-2020", []),
    ("YOUNGER 3600", [1, 2, 3, 4]),
    ("OLDER 3600", []),
    ("2:3", [2, 3]),
    ("3:*", [3, 4]),
    ("UID 1,4", [1, 4]),
    ("NOT SEEN", [2, 3, 4]),
    ("OR SEEN ANSWERED", [1, 2]),
    ("(OR SEEN ANSWERED) FROM dave", [2]),
    ("OR (FROM carol SEEN) DELETED", [1, 3]),
    ("NOT OR BODY payment FROM carol", [3]),
    ("UNSEEN BODY payment", [2]),
    # Message sets ANDed with other keys (only the messages inside the sets are read) and
    # system flags ANDed (tested on the flag bits): the answers must not change.
    ("2:* FROM carol", [4]),
    ("UID 1:3 FROM carol", [1]),
    ("UID 1:3 2:* FROM carol", []),
    ("1,4 UID 4:* SUBJECT lunch", [4]),
    ("5:* FROM carol", [4]),  # "*" is 4: the set is 4:5
    ("UID 99:100 SUBJECT lunch", []),
    ("3:2 UNSEEN", [2, 3]),
    ("FLAGGED SEEN", [1]),
    ("UNSEEN UNDELETED", [2, 4]),
    ("DELETED DRAFT UNSEEN", [3]),
    ("SEEN UNSEEN", []),
    ("(UNSEEN UNDRAFT) UNANSWERED", [4]),
    # Envelope strings ANDed (tested on the stored envelope; an empty column, such as Cc
    # here, is looked up in the message itself).
    ("SUBJECT lunch FROM carol", [1, 4]),
    ("UID 1:3 SUBJECT lunch FROM CAROL", [1]),
    ('SUBJECT ""', [1, 2, 3, 4]),
    ("FROM carol CC anyone", []),
    ("SUBJECT re: FROM carol", [4]),
]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_search_keys(raw: Raw) -> None:
    wrong = {}
    for criteria, expected in CASES:
        found = search(raw, criteria)
        if found != expected:
            wrong[criteria] = (found, expected)
    assert wrong == {}


def test_charset_and_utf8(raw: Raw) -> None:
    assert search(raw, "CHARSET UTF-8 SUBJECT {7}\r\ngr\xc3\xbc\xc3\x9fe".encode("latin-1")) == [3]
    # 8-bit text under the default US-ASCII charset is malformed.
    eight_bit = "SEARCH SUBJECT {7}\r\ngr\xc3\xbc\xc3\x9fe".encode("latin-1")
    assert status_of(raw.cmd(eight_bit)) == b"BAD"
    lines = raw.cmd("SEARCH CHARSET KOI9-NOPE ALL")
    assert status_of(lines) == b"BAD [BADCHARSET (US-ASCII UTF-8)]"


def test_uid_search_and_modseq(raw: Raw) -> None:
    raw.cmd("UID STORE 4 +FLAGS.SILENT (\\Flagged)")
    lines = raw.cmd("UID SEARCH FLAGGED")
    assert lines[0] == b"* SEARCH 1 4"
    lines = raw.cmd("SEARCH MODSEQ 1")
    assert lines[0].startswith(b"* OK [HIGHESTMODSEQ ")  # CONDSTORE enabled by MODSEQ
    assert lines[1].startswith(b"* SEARCH 1 2 3 4 (MODSEQ ")


def test_esearch_return_options(raw: Raw) -> None:
    lines = raw.cmd("SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN", tag="e1")
    assert lines[0] == b'* ESEARCH (TAG "e1") MIN 2 MAX 4 COUNT 3 ALL 2:4'
    lines = raw.cmd("UID SEARCH RETURN (COUNT) OLD", tag="e2")
    assert lines[0] == b'* ESEARCH (TAG "e2") UID COUNT 0'
    lines = raw.cmd("SEARCH RETURN () FLAGGED", tag="e3")
    assert lines[0] == b'* ESEARCH (TAG "e3") ALL 1'
    assert status_of(raw.cmd("SEARCH RETURN (BOGUS) ALL")) == b"BAD"


def test_rev2_answers_in_esearch_form(mail_server: RunningServer) -> None:
    deliver(mail_server, message("a"))
    deliver(mail_server, message("b"))
    raw = Raw(mail_server)
    raw.login()
    raw.cmd("ENABLE IMAP4rev2")
    lines = raw.cmd("SELECT INBOX")
    assert not any(b"RECENT" in line for line in lines)
    assert b'* LIST () "/" "INBOX"' in lines
    lines = raw.cmd("UID SEARCH ALL", tag="r1")
    assert lines[0] == b'* ESEARCH (TAG "r1") UID ALL 1:2'
    lines = raw.cmd("SEARCH SEEN", tag="r2")
    assert lines[0] == b'* ESEARCH (TAG "r2")'
    lines = raw.cmd("FETCH 1 (FLAGS)")
    assert lines[0] == b"* 1 FETCH (FLAGS ())"


def test_bad_search_syntax(raw: Raw) -> None:
    for bad in ["SEARCH", "SEARCH BOGUS", "SEARCH SINCE 32-Foo-2020", "SEARCH OR SEEN",
                "SEARCH (SEEN", "SEARCH LARGER x"]:
        assert status_of(raw.cmd(bad)) == b"BAD", bad


def test_searchres_saves_results_for_dollar(raw: Raw) -> None:
    lines = raw.cmd("SEARCH RETURN (SAVE) UNSEEN")
    assert len(lines) == 1 and status_of(lines) == b"OK"  # SAVE alone: no ESEARCH
    lines = raw.cmd("FETCH $ (UID)")
    assert lines[:-1] == [b"* 2 FETCH (UID 2)", b"* 3 FETCH (UID 3)", b"* 4 FETCH (UID 4)"]
    assert search(raw, "$ FROM carol") == [4]
    raw.cmd("UID SEARCH RETURN (SAVE MIN) UNSEEN")
    assert raw.cmd("UID FETCH $ (UID)")[:-1] == [b"* 2 FETCH (UID 2)"]
    raw.cmd("UID STORE $ +FLAGS.SILENT (\\Seen)")
    assert search(raw, "SEEN") == [1, 2]
    raw.cmd("UNSELECT")
    raw.cmd("SELECT INBOX")
    assert raw.cmd("FETCH $ (UID)")[:-1] == []  # cleared by SELECT
