"""Replies a strict IMAP compliance run checks (issue 17): each case over a real socket, on
SQLite and PostgreSQL where the store decides the answer."""

from __future__ import annotations

import pytest

from tests.conftest import RunningServer
from tests.imap.helpers import Raw, connect, deliver, message, ok

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)


@BOTH
def test_examine_reports_recent_like_select_and_leaves_it(mail_server: RunningServer) -> None:
    """RFC 3501 6.3.2: EXAMINE answers as SELECT does, only read-only: the same RECENT count
    (today's STATUS says 2, so must EXAMINE), and \\Recent stays for the next SELECT."""
    deliver(mail_server, message("one"))
    deliver(mail_server, message("two"))
    watcher = Raw(mail_server)
    watcher.login()
    assert watcher.cmd("STATUS INBOX (RECENT)")[0] == b'* STATUS "INBOX" (RECENT 2)'
    lines = watcher.cmd("EXAMINE INBOX")
    assert b"* 2 RECENT" in lines and b"[READ-ONLY]" in lines[-1]
    fetched = watcher.cmd("FETCH 1:* (FLAGS)")
    assert fetched[:2] == [b"* 1 FETCH (FLAGS (\\Recent))", b"* 2 FETCH (FLAGS (\\Recent))"]
    # A third message arrives while EXAMINEd: announced as recent too, still not taken.
    deliver(mail_server, message("three"))
    lines = watcher.cmd("NOOP")
    assert lines[:2] == [b"* 3 EXISTS", b"* 3 RECENT"]
    assert watcher.cmd("STATUS INBOX (RECENT)")[0] == b'* STATUS "INBOX" (RECENT 3)'

    first = connect(mail_server)
    second = connect(mail_server)
    try:
        ok(first.select("INBOX"))
        assert first.response("RECENT") == ("RECENT", [b"3"])  # EXAMINE took none of them
        ok(second.select("INBOX"))
        assert second.response("RECENT") == ("RECENT", [b"0"])  # the first SELECT did
        lines = watcher.cmd("EXAMINE INBOX")
        assert b"* 0 RECENT" in lines and lines[-1].split()[1] == b"OK"
    finally:
        first.logout()
        second.logout()
        watcher.close()
