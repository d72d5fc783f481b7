"""Several sessions on one mailbox: each sees the others' changes at the allowed moments
(RFC 9051 7.5.1), IDLE wakes on an SMTP delivery, CONDSTORE and QRESYNC resynchronisation."""

from __future__ import annotations

import re
import smtplib

import pytest

from tests.conftest import RunningServer
from tests.imap.helpers import ALICE, Raw, deliver, message, status_of


def _is_expunge(line: bytes) -> bool:
    return re.match(rb"\* \d+ EXPUNGE$", line) is not None


def _opened(server: RunningServer, *commands: str) -> Raw:
    raw = Raw(server)
    raw.login()
    for command in commands:
        assert status_of(raw.cmd(command)).startswith(b"OK"), command
    return raw


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_two_sessions_see_each_other(mail_server: RunningServer) -> None:
    for i in range(3):
        deliver(mail_server, message(f"m{i}"))
    a = _opened(mail_server, "SELECT INBOX")
    b = _opened(mail_server, "SELECT INBOX")
    # A flag change by B reaches A as an untagged FETCH with the UID.
    b.cmd("STORE 1 +FLAGS.SILENT (\\Seen)")
    assert a.cmd("NOOP")[:-1] == [b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent))"]
    # B's own change is not echoed back to B.
    assert b.cmd("NOOP")[:-1] == []
    # A new message appended by B: EXISTS (and RECENT for rev1) in A.
    assert status_of(b.cmd(b"APPEND INBOX {14+}\r\nSubject: new\r\n")).startswith(b"OK")
    lines = a.cmd("NOOP")
    # B saw the new message first (at the end of its APPEND): it is \Recent there, not here.
    assert lines[:2] == [b"* 4 EXISTS", b"* 3 RECENT"]
    # B expunges message 2. A's FETCH must not get an EXPUNGE (sequence numbers would move);
    # asking for the gone message says EXPUNGEISSUED; NOOP then delivers the EXPUNGE.
    b.cmd("STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert b.cmd("EXPUNGE")[0] == b"* 2 EXPUNGE"
    lines = a.cmd("FETCH 1:4 (UID)")
    assert not any(_is_expunge(line) for line in lines)
    assert [ln for ln in lines if ln.startswith(b"* ") and b"FETCH" in ln] == [
        b"* 1 FETCH (UID 1)", b"* 3 FETCH (UID 3)", b"* 4 FETCH (UID 4)"
    ]
    assert status_of(lines) == b"NO [EXPUNGEISSUED]"
    lines = a.cmd("STORE 3 +FLAGS (\\Flagged)")
    assert not any(_is_expunge(line) for line in lines)
    lines = a.cmd("SEARCH ALL")
    assert lines[0] == b"* SEARCH 1 3 4" and not any(_is_expunge(ln) for ln in lines)
    # UID commands may receive it; so does NOOP.
    lines = a.cmd("UID FETCH 1 (FLAGS)")
    assert b"* 2 EXPUNGE" in lines
    assert a.cmd("FETCH 2 (UID)")[0] == b"* 2 FETCH (UID 3)"
    # B sees A's flag change with the new numbering.
    assert b"* 2 FETCH (UID 3 FLAGS (\\Flagged))" in b.cmd("NOOP")


def test_mailbox_deleted_under_a_session(mail_server: RunningServer) -> None:
    a = _opened(mail_server, "CREATE Doomed", "SELECT Doomed")
    b = _opened(mail_server)
    assert status_of(b.cmd("DELETE Doomed")) == b"OK"
    lines = a.cmd("NOOP")
    assert lines[0] == b"* BYE Selected mailbox was deleted"
    assert a.closed()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_idle_wakes_on_smtp_delivery(mail_server: RunningServer) -> None:
    raw = _opened(mail_server, "SELECT INBOX")
    raw.send(b"i1 IDLE\r\n")
    assert raw.readline() == b"+ idling"
    with smtplib.SMTP("127.0.0.1", mail_server.ports["smtp"], timeout=30) as smtp:
        smtp.sendmail("carol@example.org", [ALICE], message("while idling"))
    # The message brings a keyword the mailbox had not seen (its integrity, unsigned): the
    # new FLAGS come first (RFC 9051 7.3.5), then the permanent ones.
    flags = raw.readline()
    assert flags.startswith(b"* FLAGS (") and b"$IntegrityUnsigned" in flags
    assert raw.readline().startswith(b"* OK [PERMANENTFLAGS (")
    assert raw.readline() == b"* 1 EXISTS"
    assert raw.readline() == b"* 1 RECENT"
    raw.send(b"DONE\r\n")
    assert status_of(raw.until("i1")) == b"OK"
    lines = raw.cmd("FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"Subject: while idling" in lines[0]


def test_idle_reports_flags_and_expunges_and_rejects_garbage(mail_server: RunningServer) -> None:
    deliver(mail_server, message("x"))
    deliver(mail_server, message("y"))
    a = _opened(mail_server, "SELECT INBOX")
    b = _opened(mail_server, "SELECT INBOX")
    a.send(b"i1 IDLE\r\n")
    assert a.readline() == b"+ idling"
    b.cmd("STORE 2 +FLAGS.SILENT (\\Deleted \\Seen)")
    assert a.readline() == b"* 2 FETCH (UID 2 FLAGS (\\Deleted \\Seen \\Recent))"
    b.cmd("EXPUNGE")
    assert a.readline() == b"* 2 EXPUNGE"
    a.send(b"NOT-DONE\r\n")
    assert status_of(a.until("i1")) == b"BAD"
    assert status_of(a.cmd("NOOP")) == b"OK"


def test_imapclient_idle(mail_server: RunningServer) -> None:
    imapclient = pytest.importorskip("imapclient")
    client = imapclient.IMAPClient(
        "127.0.0.1", port=mail_server.ports["imaps"], ssl=True,
        ssl_context=mail_server.ssl_context(), timeout=30,
    )
    client.login(ALICE, "s3cret-Passw0rd!")
    client.select_folder("INBOX")
    client.idle()
    deliver(mail_server, message("ping"))
    responses = client.idle_check(timeout=30)
    client.idle_done()
    assert (1, b"EXISTS") in responses
    client.logout()


def test_condstore(mail_server: RunningServer) -> None:
    deliver(mail_server, message("a"))
    deliver(mail_server, message("b"))
    raw = _opened(mail_server)
    lines = raw.cmd("SELECT INBOX (CONDSTORE)")
    highest = int(re.search(rb"HIGHESTMODSEQ (\d+)", b"".join(lines)).group(1))  # type: ignore[union-attr]
    lines = raw.cmd("FETCH 1:2 (FLAGS MODSEQ)")
    assert re.match(rb"\* 1 FETCH \(FLAGS \(\\Recent\) MODSEQ \(\d+\)\)", lines[0])
    lines = raw.cmd(f"STORE 1 (UNCHANGEDSINCE {highest}) +FLAGS (\\Seen)")
    m = re.match(rb"\* 1 FETCH \(FLAGS \(\\Seen \\Recent\) MODSEQ \((\d+)\)\)", lines[0])
    assert m is not None and int(m.group(1)) > highest
    # Message 1 changed after `highest`: a second conditional STORE fails for it alone.
    lines = raw.cmd(f"STORE 1:2 (UNCHANGEDSINCE {highest}) +FLAGS.SILENT (\\Flagged)")
    assert status_of(lines) == b"OK [MODIFIED 1]"
    assert re.match(rb"\* 2 FETCH \(MODSEQ \(\d+\)\)", lines[0])
    lines = raw.cmd(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {highest})")
    assert len(lines) == 3 and b"UID 1 " in lines[0] and b"MODSEQ" in lines[0]
    assert b"(MODSEQ " in raw.cmd("SEARCH MODSEQ 1")[0]
    lines = raw.cmd("STATUS INBOX (HIGHESTMODSEQ)")
    assert int(lines[0].split()[-1].rstrip(b")")) > highest


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_qresync_resync_after_changes(mail_server: RunningServer) -> None:
    for i in range(4):
        deliver(mail_server, message(f"m{i}"))
    first = _opened(mail_server, "ENABLE QRESYNC")
    lines = first.cmd("SELECT INBOX")
    text = b"".join(lines)
    uidvalidity = int(re.search(rb"UIDVALIDITY (\d+)", text).group(1))  # type: ignore[union-attr]
    modseq = int(re.search(rb"HIGHESTMODSEQ (\d+)", text).group(1))  # type: ignore[union-attr]
    first.cmd("LOGOUT")
    # Changes while the client is away.
    other = _opened(mail_server, "SELECT INBOX")
    other.cmd("UID STORE 2 +FLAGS.SILENT (\\Answered)")
    other.cmd("UID STORE 3 +FLAGS.SILENT (\\Deleted)")
    other.cmd("UID EXPUNGE 3")
    deliver(mail_server, message("new"))
    again = _opened(mail_server)
    assert status_of(again.cmd(f"SELECT INBOX (QRESYNC ({uidvalidity} {modseq}))")) == b"BAD"
    again.cmd("ENABLE QRESYNC")
    lines = again.cmd(f"SELECT INBOX (QRESYNC ({uidvalidity} {modseq} 1:4))")
    assert b"* VANISHED (EARLIER) 3" in lines
    fetches = [ln for ln in lines if b" FETCH " in ln]
    assert any(re.match(rb"\* 2 FETCH \(UID 2 FLAGS \(\\Answered\) MODSEQ \(\d+\)\)", f)
               for f in fetches), fetches
    assert any(b"UID 5 " in f for f in fetches)
    assert not any(b"UID 1 " in f for f in fetches)
    # UID FETCH ... (CHANGEDSINCE ... VANISHED) tells the same story.
    lines = again.cmd(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
    assert lines[0] == b"* VANISHED (EARLIER) 3"
    # With QRESYNC on, expunges are reported as VANISHED (RFC 7162 3.2.10).
    other.cmd("UID STORE 1 +FLAGS.SILENT (\\Deleted)")
    other.cmd("EXPUNGE")
    assert again.cmd("NOOP")[0] == b"* VANISHED 1"
    # A wrong UIDVALIDITY: no resync data, a normal SELECT.
    lines = again.cmd("SELECT INBOX (QRESYNC (1 1))")
    assert lines[0] == b"* OK [CLOSED] Previous mailbox closed"
    assert not any(b"VANISHED" in ln for ln in lines)


def test_many_idlers_on_one_mailbox_all_hear_every_change(mail_server: RunningServer) -> None:
    idlers = [_opened(mail_server, "SELECT INBOX") for _ in range(5)]
    for raw in idlers:
        raw.send(b"i IDLE\r\n")
        assert raw.readline() == b"+ idling"
    writer = _opened(mail_server)
    for n in range(3):  # back-to-back changes: none may be lost between shared queries
        writer.cmd(f"APPEND INBOX {{{len(message(str(n)))}+}}\r\n".encode() + message(str(n)))
    for raw in idlers:
        seen = 0
        while seen < 3:
            line = raw.readline()
            m = re.match(rb"\* (\d+) EXISTS", line)
            if m:
                seen = int(m.group(1))
        raw.send(b"DONE\r\n")
        assert status_of(raw.until("i")) == b"OK"
