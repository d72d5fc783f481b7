"""SORT, SORT=DISPLAY, ESORT and THREAD (RFC 5256, RFC 5957, RFC 5267 section 3) over real
sockets, with imaplib-style transcripts and imapclient's sort() and thread()."""

from __future__ import annotations

import re
import time

import pytest

from tests.conftest import PASSWORD, RunningServer
from tests.imap.helpers import ALICE, Raw, deliver, message, status_of

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)

# (From, To, Cc, Subject, Date or None, Message-ID or None, reply fields, body size)
MESSAGES = [
    ("Zed <zed@example.org>", "Zoe <dan@example.org>", "", "Lunch plans",
     "Wed, 03 Jan 2024 10:00:00 +0000", "<m1@x>", "", 800),
    ('"Adams, Ann" <ann@example.org>', "bob@example.org", "yves@example.org", "Invoice 42",
     "Mon, 01 Jan 2024 09:00:00 +0000", "<m2@x>", "", 3000),
    ("carol@example.org", ALICE, "Xavier <xavier@example.org>",
     "Re: [list] Fwd: Lunch plans (fwd)", "Thu, 04 Jan 2024 10:00:00 +0100", "<m3@x>",
     "In-Reply-To: <m1@x>\r\n", 10),
    ("=?utf-8?q?=C3=89mile?= <emile@example.org>", "carl@example.org", "",
     "=?utf-8?q?Re=3A_Invoice_42?=", "Tue, 02 Jan 2024 12:00:00 +0000", "<m4@x>",
     "References: <m2@x>\r\n", 1200),
    ("bea@example.org", "eve@example.org", "", "Re: Budget",
     "Fri, 05 Jan 2024 10:00:00 +0000", "<m5@x>", "References: <gone@x>\r\n", 1600),
    ("Aaron <dave@example.org>", "frank@example.org", "", "RE:  Budget",
     "Sat, 06 Jan 2024 10:00:00 +0000", "<m6@x>", "References: <gone@x>\r\n", 2000),
    ("Zed <zed@example.org>", "", "", "Misc", None, None, "", 400),
]


def build(frm: str, to: str, cc: str, subject: str, date: str | None, mid: str | None,
          extra: str, size: int) -> bytes:
    head = f"From: {frm}\r\n"
    if to:
        head += f"To: {to}\r\n"
    if cc:
        head += f"Cc: {cc}\r\n"
    head += f"Subject: {subject}\r\n"
    if date:
        head += f"Date: {date}\r\n"
    if mid:
        head += f"Message-ID: {mid}\r\n"
    return (head + extra + "\r\n" + "x" * size + "\r\n").encode()


def append(raw: Raw, data: bytes, when: str) -> None:
    lines = raw.cmd(f'APPEND INBOX "{when}" {{{len(data)}+}}\r\n'.encode() + data)
    assert status_of(lines).startswith(b"OK"), lines


@pytest.fixture
def raw(mail_server: RunningServer) -> Raw:
    """INBOX holds MESSAGES as sequence numbers 1-7 and UIDs 2-8 (UID 1 was expunged);
    internal dates 1 Feb 2024 in APPEND order, so message 7 (no Date:) sorts last by DATE."""
    client = Raw(mail_server)
    client.login()
    append(client, b"Subject: placeholder\r\n\r\nx\r\n", "01-Feb-2024 09:00:00 +0000")
    for i, fields in enumerate(MESSAGES, start=1):
        append(client, build(*fields), f"01-Feb-2024 10:00:{i:02d} +0000")
    client.cmd("SELECT INBOX")
    client.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
    client.cmd("EXPUNGE")
    return client


def sort(raw: Raw, command: str) -> list[int]:
    lines = raw.cmd(command)
    assert status_of(lines) == b"OK", lines
    [line] = [ln for ln in lines if ln.startswith(b"* SORT")]
    return [int(n) for n in line.split()[2:]]


def thread(raw: Raw, command: str) -> bytes:
    lines = raw.cmd(command)
    assert status_of(lines) == b"OK", lines
    [line] = [ln for ln in lines if ln.startswith(b"* THREAD")]
    return line[len(b"* THREAD ") :]


SORTS = [
    ("(SUBJECT)", [5, 6, 2, 4, 1, 3, 7]),
    ("(REVERSE SUBJECT)", [7, 1, 3, 2, 4, 5, 6]),  # ties stay in mailbox order
    ("(DATE)", [2, 4, 1, 3, 5, 6, 7]),
    ("(REVERSE DATE)", [7, 6, 5, 3, 1, 4, 2]),
    ("(ARRIVAL)", [1, 2, 3, 4, 5, 6, 7]),
    ("(REVERSE ARRIVAL)", [7, 6, 5, 4, 3, 2, 1]),
    ("(SIZE)", [3, 7, 1, 4, 5, 6, 2]),
    ("(FROM)", [2, 5, 3, 6, 4, 1, 7]),
    ("(DISPLAYFROM)", [6, 2, 5, 3, 4, 1, 7]),
    ("(TO)", [7, 3, 2, 4, 1, 5, 6]),
    ("(DISPLAYTO)", [7, 3, 2, 4, 5, 6, 1]),
    ("(CC)", [1, 4, 5, 6, 7, 3, 2]),
    ("(SUBJECT REVERSE DATE)", [6, 5, 4, 2, 3, 1, 7]),
    ("(REVERSE FROM DATE)", [1, 7, 4, 6, 3, 5, 2]),
    ("(subject size)", [5, 6, 4, 2, 3, 1, 7]),
]


@BOTH
def test_sort_criteria(raw: Raw) -> None:
    for criteria, expected in SORTS:
        assert sort(raw, f"SORT {criteria} UTF-8 ALL") == expected, criteria
    # UID SORT answers UIDs (sequence number + 1 here), in the same order.
    for criteria, expected in SORTS:
        assert sort(raw, f"UID SORT {criteria} US-ASCII ALL") == [n + 1 for n in expected]


@BOTH
def test_sort_with_search_keys(raw: Raw) -> None:
    assert sort(raw, "SORT (REVERSE DATE) UTF-8 FROM zed") == [7, 1]
    assert sort(raw, "SORT (SIZE) UTF-8 OR SUBJECT budget SUBJECT invoice") == [4, 5, 6, 2]
    assert sort(raw, "SORT (DATE) UTF-8 HEADER References gone@x") == [5, 6]  # reads files
    assert sort(raw, "SORT (DATE) UTF-8 SUBJECT \"Émile\"") == []
    assert sort(raw, "SORT (DATE) UTF-8 FROM \"Émile\"") == [4]  # decoded display name
    assert sort(raw, "SORT (DATE) UTF-8 2:4") == [2, 4, 3]
    assert sort(raw, "UID SORT (DATE) UTF-8 UID 2:4") == [3, 2, 4]
    raw.cmd("STORE 1,5 +FLAGS.SILENT (\\Flagged)")
    assert sort(raw, "SORT (REVERSE SIZE) US-ASCII FLAGGED") == [5, 1]
    assert sort(raw, "SORT (DATE) UTF-8 NOT ALL") == []


@BOTH
def test_sort_errors(raw: Raw, mail_server: RunningServer) -> None:
    lines = raw.cmd("SORT (DATE) KOI8-R ALL")
    assert status_of(lines) == b"NO [BADCHARSET (US-ASCII UTF-8)]"
    lines = raw.cmd("THREAD REFERENCES ISO-8859-1 ALL")
    assert status_of(lines) == b"NO [BADCHARSET (US-ASCII UTF-8)]"
    for bad in ("SORT (FOO) UTF-8 ALL", "SORT (REVERSE) UTF-8 ALL", "SORT () UTF-8 ALL",
                "SORT DATE UTF-8 ALL", "SORT (DATE) UTF-8",
                "SORT (REVERSE REVERSE DATE) UTF-8 ALL", "THREAD FOO UTF-8 ALL",
                "THREAD REFERENCES UTF-8", "SORT RETURN (SAVE) (DATE) UTF-8 ALL",
                "SORT (DATE) US-ASCII SUBJECT \"\xc3\x89\""):
        assert status_of(raw.cmd(bad.encode("latin-1"))) == b"BAD", bad
    other = Raw(mail_server)
    other.login()
    assert status_of(other.cmd("SORT (DATE) UTF-8 ALL")) == b"BAD"  # nothing selected
    started = time.monotonic()
    assert status_of(other.cmd("NOOP")) == b"OK"  # the server still answers promptly
    assert time.monotonic() - started < 2


@BOTH
def test_esort_return_options(raw: Raw) -> None:
    def esearch(command: str) -> bytes:
        lines = raw.cmd(command, tag="e1")
        assert status_of(lines) == b"OK", lines
        assert not any(ln.startswith(b"* SORT") for ln in lines)
        [line] = [ln for ln in lines if ln.startswith(b"* ESEARCH")]
        return line

    assert esearch("SORT RETURN (MIN MAX COUNT) (DATE) UTF-8 ALL") == \
        b'* ESEARCH (TAG "e1") MIN 2 MAX 7 COUNT 7'
    assert esearch("SORT RETURN (ALL) (REVERSE DATE) UTF-8 ALL") == \
        b'* ESEARCH (TAG "e1") ALL 7,6,5,3,1,4,2'
    assert esearch("SORT RETURN () (ARRIVAL) UTF-8 ALL") == b'* ESEARCH (TAG "e1") ALL 1:7'
    assert esearch("UID SORT RETURN (MIN COUNT ALL) (SUBJECT) UTF-8 FROM zed") == \
        b'* ESEARCH (TAG "e1") UID MIN 2 COUNT 2 ALL 2,8'
    assert esearch("SORT RETURN (MIN MAX COUNT ALL) (DATE) UTF-8 NOT ALL") == \
        b'* ESEARCH (TAG "e1") COUNT 0'


@BOTH
def test_thread_both_algorithms(raw: Raw) -> None:
    # 3 answers 1 (In-Reply-To), 4 answers 2 (References); 5 and 6 answer a message that is
    # not in the mailbox: siblings under a dummy.
    assert thread(raw, "THREAD REFERENCES UTF-8 ALL") == b"(2 4)(1 3)((5)(6))(7)"
    assert thread(raw, "UID THREAD REFERENCES UTF-8 ALL") == b"(3 5)(2 4)((6)(7))(8)"
    assert thread(raw, "THREAD ORDEREDSUBJECT UTF-8 ALL") == b"(2 4)(1 3)(5 6)(7)"
    assert thread(raw, "UID THREAD ORDEREDSUBJECT US-ASCII ALL") == b"(3 5)(2 4)(6 7)(8)"
    # Without message 1, its reply 3 stands alone (its dummy parent is pruned).
    assert thread(raw, "THREAD REFERENCES UTF-8 NOT FROM zed") == b"(2 4)(3)((5)(6))"
    assert thread(raw, "THREAD ORDEREDSUBJECT UTF-8 SUBJECT nothing-matches") == b""
    lines = raw.cmd("THREAD REFERENCES UTF-8 SUBJECT nothing-matches")
    assert b"* THREAD" in lines


TREE = [  # (Message-ID, References, Subject, day)
    ("a", "<root@x>", "Re: Plan", 2),
    ("b", "<root@x> <a@x>", "Re: Plan", 3),
    ("c", "<root@x>", "Re: Plan", 4),
    ("d", "<root@x> <a@x> <b@x>", "Re: Plan", 5),
    ("e", "<root@x> <a@x>", "Re: Plan", 6),
    ("f", "", "Other topic", 1),
    ("g", "", "Re: Other topic", 7),
]


def append_tree(raw: Raw) -> None:
    """APPENDs TREE, each message's body 10 octets a day of its date."""
    for mid, refs, subject, day in TREE:
        extra = f"References: {refs}\r\n" if refs else ""
        data = build("p@example.org", ALICE, "", subject,
                     f"{day:02d} Mar 2024 10:00:00 +0000", f"<{mid}@x>", extra, 10 * day)
        append(raw, data, "01-Apr-2024 10:00:00 +0000")


@BOTH
def test_thread_reply_tree_with_missing_parent(mail_server: RunningServer) -> None:
    """A realistic discussion: the original is missing (deleted), replies form a tree, one
    reply lost its References and is joined to the thread by its subject."""
    raw = Raw(mail_server)
    raw.login()
    append_tree(raw)
    raw.cmd("SELECT INBOX")
    # root (missing) -> a -> (b -> d, e), c ; f <- g by subject
    assert thread(raw, "THREAD REFERENCES UTF-8 ALL") == b"(6 7)((1 (2 4)(5))(3))"
    assert thread(raw, "THREAD ORDEREDSUBJECT UTF-8 ALL") == b"(6 7)(1 (2)(3)(4)(5))"


@BOTH
def test_rows_without_envelope_read_the_message(mail_server: RunningServer) -> None:
    """Messages stored without the envelope columns still sort by their own header."""
    deliver(mail_server, message("Zebra"))
    deliver(mail_server, message("Re: apple", extra="References: <Zebra@example.org>\r\n")
            .replace(b"Mon, 01 Jan 2024", b"Sun, 31 Dec 2023"))
    deliver(mail_server, message("Mango", sender="Ann <ann@example.org>"))
    raw = Raw(mail_server)
    raw.login()
    raw.cmd("SELECT INBOX")
    assert sort(raw, "SORT (SUBJECT) UTF-8 ALL") == [2, 3, 1]
    assert sort(raw, "SORT (DATE) UTF-8 ALL") == [2, 1, 3]
    assert sort(raw, "SORT (DISPLAYFROM FROM) UTF-8 ALL") == [3, 1, 2]
    assert thread(raw, "THREAD REFERENCES UTF-8 ALL") == b"(1 2)(3)"


def test_capabilities_advertised(mail_server: RunningServer) -> None:
    raw = Raw(mail_server)
    raw.login()
    caps = next(ln for ln in raw.cmd("CAPABILITY") if ln.startswith(b"* CAPABILITY")).split()
    for cap in (b"SORT", b"SORT=DISPLAY", b"ESORT", b"THREAD=ORDEREDSUBJECT",
                b"THREAD=REFERENCES"):
        assert cap in caps


imapclient = pytest.importorskip("imapclient")


@BOTH
def test_imapclient_sort_and_thread(raw: Raw, mail_server: RunningServer) -> None:
    client = imapclient.IMAPClient(
        "127.0.0.1", port=mail_server.ports["imaps"], ssl=True,
        ssl_context=mail_server.ssl_context(), timeout=30,
    )
    client.login(ALICE, PASSWORD)
    client.select_folder("INBOX")
    # imapclient speaks UIDs: UID = sequence number + 1 here.
    assert client.sort(["REVERSE DATE"]) == [8, 7, 6, 4, 2, 5, 3]
    assert client.sort(["SUBJECT", "DATE"], ["FROM", "zed"]) == [2, 8]
    assert client.sort("DISPLAYFROM", charset="US-ASCII") == [7, 3, 6, 4, 5, 2, 8]
    threads = client.thread("REFERENCES")
    assert threads == ((3, 5), (2, 4), ((6,), (7,)), (8,))
    assert client.thread("ORDEREDSUBJECT", ["SINCE", "01-Jan-2024"]) == \
        ((3, 5), (2, 4), (6, 7), (8,))
    client.logout()


def test_sort_answers_through_parenthesised_response_format(raw: Raw) -> None:
    line = raw.cmd("SORT (DATE) UTF-8 ALL")[0]
    assert re.fullmatch(rb"\* SORT( \d+)+", line)


def test_hostile_subjects_stay_cheap(mail_server: RunningServer) -> None:
    """Subjects stacking tens of thousands of prefixes (each removal step is linear in the
    subject, never quadratic): SORT and THREAD answer, and another client is served."""
    raw = Raw(mail_server)
    raw.login()
    hostile = ["Re: " * 20000 + "zz", "[a] " * 20000 + "b", "[fwd: " * 5000 + "m" + "]" * 5000,
               "Re: [l] " * 10000 + "(fwd) " * 5000]
    for subject in hostile:
        append(raw, build("h@example.org", ALICE, "", subject, "Mon, 01 Jan 2024 10:00:00 +0000",
                          None, "", 10), "01-Feb-2024 10:00:00 +0000")
    raw.cmd("SELECT INBOX")
    # base subjects: "zz", "b", "m", "" (empty sorts first)
    assert sort(raw, "SORT (SUBJECT) UTF-8 ALL") == [4, 2, 3, 1]
    assert thread(raw, "THREAD ORDEREDSUBJECT UTF-8 ALL") == b"(1)(2)(3)(4)"
    assert thread(raw, "THREAD REFERENCES UTF-8 ALL") == b"(1)(2)(3)(4)"
    other = Raw(mail_server)
    other.login()
    started = time.monotonic()
    assert status_of(other.cmd("NOOP")) == b"OK"
    assert time.monotonic() - started < 2
