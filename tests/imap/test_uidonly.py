"""UIDONLY (RFC 9586) over real sockets, both stores: after ENABLE UIDONLY, commands by
sequence number are BAD [UIDREQUIRED], FETCH responses are UIDFETCH (asked for or not) and
expunges are told by VANISHED."""

from __future__ import annotations

import re

import pytest

from mailstead.store.interfaces import SystemFlag
from tests.conftest import RunningServer
from tests.imap.helpers import Raw, deliver, message, status_of

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)


def _uidonly(server: RunningServer, select: str = "SELECT INBOX") -> Raw:
    raw = Raw(server)
    raw.login()
    lines = raw.cmd("ENABLE UIDONLY")
    assert b"* ENABLED UIDONLY" in lines and status_of(lines) == b"OK", lines
    lines = raw.cmd(select)
    assert status_of(lines).startswith(b"OK"), lines
    return raw


def _four(server: RunningServer) -> list[int]:
    """INBOX with three messages whose UIDs differ from their sequence numbers (the first
    delivered one is gone): returns [gone, uid1, uid2, uid3]."""
    uids = [deliver(server, message(f"Message {i}"), flags=SystemFlag.SEEN if i == 2 else 0)
            for i in range(4)]
    raw = Raw(server)
    raw.login()
    raw.cmd("SELECT INBOX")
    assert status_of(raw.cmd(f"UID STORE {uids[0]} +FLAGS.SILENT (\\Deleted)")) == b"OK"
    assert status_of(raw.cmd("EXPUNGE")) == b"OK"
    raw.close()
    return uids


@BOTH
def test_sequence_numbers_are_refused_with_uidrequired(mail_server: RunningServer) -> None:
    uids = _four(mail_server)
    raw = Raw(mail_server)
    raw.login()
    [caps] = [ln for ln in raw.cmd("CAPABILITY") if ln.startswith(b"* CAPABILITY")]
    assert b" UIDONLY" in caps
    raw.close()
    raw = _uidonly(mail_server)
    for command in (
        "FETCH 1 (FLAGS)", "FETCH 1:* (UID)", "STORE 1 +FLAGS (\\Seen)", "SEARCH ALL",
        "COPY 1 Trash", "MOVE 1 Trash", "SORT (ARRIVAL) UTF-8 ALL",
        "THREAD REFERENCES UTF-8 ALL",
        # RFC 9586 3: sequence numbers inside a UID command are refused too.
        "UID SEARCH 1:2", "UID SEARCH OR 1 SEEN", "UID SORT (ARRIVAL) UTF-8 NOT 2",
        "UID THREAD ORDEREDSUBJECT UTF-8 1:*",
    ):
        lines = raw.cmd(command)
        assert status_of(lines) == b"BAD [UIDREQUIRED]", (command, lines)
        assert not any(b" FETCH " in ln or b"* SEARCH" in ln for ln in lines), lines
    # What names messages by UID keeps working.
    lines = raw.cmd(f"UID SEARCH UID {uids[1]}:* UNSEEN")
    assert f"* SEARCH {uids[1]} {uids[3]}".encode() in lines, lines
    lines = raw.cmd("UID SEARCH RETURN (SAVE ALL) SEEN", tag="s1")
    assert f'* ESEARCH (TAG "s1") UID ALL {uids[2]}'.encode() in lines, lines
    lines = raw.cmd("UID SEARCH $")
    assert f"* SEARCH {uids[2]}".encode() in lines, lines
    lines = raw.cmd("UID SORT (REVERSE ARRIVAL) UTF-8 ALL")
    assert f"* SORT {uids[3]} {uids[2]} {uids[1]}".encode() in lines, lines
    lines = raw.cmd(f"UID COPY {uids[1]} Trash")
    assert status_of(lines).startswith(b"OK [COPYUID"), lines
    # QRESYNC's sequence match data is sequence numbers too (RFC 9586 3).
    raw.close()
    raw = Raw(mail_server)
    raw.login()
    raw.cmd("ENABLE UIDONLY QRESYNC")
    lines = raw.cmd("SELECT INBOX (QRESYNC (1 1 1:* (1:2 1:2)))")
    assert status_of(lines) == b"BAD [UIDREQUIRED]", lines


@BOTH
def test_fetch_answers_are_uidfetch_and_expunges_vanished(mail_server: RunningServer) -> None:
    gone, u1, u2, u3 = _four(mail_server)
    raw = _uidonly(mail_server, "SELECT INBOX")
    lines = raw.cmd(f"UID FETCH {u1}:* (FLAGS)")
    fetches = [ln for ln in lines if ln.startswith(b"* ")]
    assert fetches == [
        f"* {u1} UIDFETCH (FLAGS ())".encode(),
        f"* {u2} UIDFETCH (FLAGS (\\Seen))".encode(),
        f"* {u3} UIDFETCH (FLAGS ())".encode(),
    ], lines
    lines = raw.cmd(f"UID FETCH {u2} (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert lines[0].startswith(f"* {u2} UIDFETCH (UID {u2} RFC822.SIZE ".encode()), lines
    assert b"Subject: Message 2" in lines[0]
    lines = raw.cmd(f"UID STORE {u1} +FLAGS (\\Flagged)")
    assert lines[0] == f"* {u1} UIDFETCH (FLAGS (\\Flagged))".encode(), lines
    lines = raw.cmd(f"UID STORE {u1} (UNCHANGEDSINCE 1000000) +FLAGS.SILENT (\\Answered)")
    assert any(re.match(rb"^\* %d UIDFETCH \(MODSEQ \(\d+\)\)$" % u1, ln) for ln in lines), lines
    # Changes made by another session arrive as UIDFETCH and VANISHED.
    other = Raw(mail_server)
    other.login()
    other.cmd("SELECT INBOX")
    other.cmd(f"UID STORE {u3} +FLAGS (\\Seen \\Deleted)")
    other.cmd("EXPUNGE")
    new = deliver(mail_server, message("Message 4"))
    lines = raw.cmd("NOOP")
    assert f"* VANISHED {u3}".encode() in lines, lines
    assert not any(b"EXPUNGE" in ln or b" FETCH " in ln for ln in lines), lines
    assert b"* 3 EXISTS" in lines, lines
    # An expunge of its own is told by VANISHED as well; UID EXPUNGE too.
    raw.cmd(f"UID STORE {u1},{new} +FLAGS.SILENT (\\Deleted)")
    lines = raw.cmd("EXPUNGE")
    assert lines[0] == f"* VANISHED {u1},{new}".encode() and status_of(lines) == b"OK", lines
    lines = raw.cmd(f"UID MOVE {u2} Trash")
    assert f"* VANISHED {u2}".encode() in lines and status_of(lines) == b"OK", lines
    assert gone < u1


@BOTH
def test_select_without_sequence_numbers_and_notify_news(mail_server: RunningServer) -> None:
    _gone, u1, _u2, _u3 = _four(mail_server)
    raw = _uidonly(mail_server, "EXAMINE INBOX")
    assert status_of(raw.cmd("FETCH 1 (FLAGS)")) == b"BAD [UIDREQUIRED]"
    raw.cmd("UNSELECT")
    lines = raw.cmd("SELECT INBOX")
    # rev1 would say [UNSEEN 1], a sequence number (RFC 9586 3).
    assert not any(b"[UNSEEN" in ln for ln in lines), lines
    assert status_of(raw.cmd("NOTIFY SET (SELECTED (MessageNew (UID FLAGS) MessageExpunge))")) \
        == b"OK"
    new = deliver(mail_server, message("Told"))
    raw.sock.settimeout(10)
    told = [raw.readline(), raw.readline(), raw.readline()]
    assert told[:2] == [b"* 4 EXISTS", b"* 1 RECENT"], told
    assert told[2] == f"* {new} UIDFETCH (UID {new} FLAGS (\\Recent))".encode(), told
    # UNAUTHENTICATE ends UIDONLY with the other ENABLEd extensions (RFC 8437).
    raw.cmd("NOTIFY NONE")
    assert status_of(raw.cmd("UNAUTHENTICATE")) == b"OK"
    raw.login()
    raw.cmd("SELECT INBOX")
    lines = raw.cmd("FETCH 1 (UID)")
    assert lines[0] == f"* 1 FETCH (UID {u1})".encode(), lines
