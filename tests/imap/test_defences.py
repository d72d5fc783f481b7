"""Limits and defences: line length, literal size (checked before reading), garbage gets BAD
and the session goes on, too many errors or commands end it, autologout, and nothing stored
is damaged along the way."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import RunningServer
from tests.imap.helpers import Raw, deliver, message, status_of


def test_garbage_gets_bad_and_session_goes_on(mail_server: RunningServer) -> None:
    raw = Raw(mail_server)
    raw.login()
    for junk in [b"\x00\x01\x02", b"GET /", b"a1 SELECT", b"a2 FETCH x y z",
                 b")))(((", b"a3 LOGIN", b"\xff\xfe\xfd"]:
        raw.send(junk + b"\r\n")
        line = raw.readline()
        assert b" BAD " in line, (junk, line)
    assert status_of(raw.cmd("SELECT INBOX")) == b"OK [READ-WRITE]"


def test_too_many_errors_end_the_session(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(limits={"imap_max_errors": 3})
    raw = Raw(server)
    for _ in range(2):
        assert status_of(raw.cmd("BOGUS")) == b"BAD"
    raw.send(b"x BOGUS\r\n")
    assert raw.readline().startswith(b"x BAD")
    assert raw.readline() == b"* BYE Too many invalid commands"
    assert raw.closed()


def test_command_limit(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(limits={"imap_max_commands": 3})
    raw = Raw(server)
    for _ in range(3):
        assert status_of(raw.cmd("NOOP")) == b"OK"
    raw.send(b"n4 NOOP\r\n")
    assert raw.readline() == b"* BYE Too many commands in one session"
    assert raw.closed()


def test_long_line_is_refused_and_skipped(mail_server: RunningServer) -> None:
    raw = Raw(mail_server)
    raw.send(b"a1 NOOP " + b"x" * 300_000 + b"\r\n")
    assert raw.readline() == b"a1 BAD Line too long"
    assert status_of(raw.cmd("NOOP")) == b"OK"


def test_literal_limits(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(limits={"max_message_size": 4096})
    raw = Raw(server)
    assert b"APPENDLIMIT" not in raw.greeting  # only announced after login
    # Before login, no literal above the line limit is invited.
    raw.send(b"a1 LOGIN {100000}\r\n")
    assert raw.readline().startswith(b"a1 BAD")
    raw.login()
    caps = raw.cmd("CAPABILITY")[0]
    assert b"APPENDLIMIT=4096" in caps
    # A synchronising literal over APPENDLIMIT: NO [TOOBIG] and no "+" invitation.
    raw.send(b"a2 APPEND INBOX {5000}\r\n")
    assert raw.readline() == b"a2 NO [TOOBIG] Message too big"
    # Within the limit it is invited and stored.
    raw.send(b"a3 APPEND INBOX {4000}\r\n")
    assert raw.readline() == b"+ Ready for literal data"
    raw.send(b"Subject: x\r\n\r\n" + b"y" * 3984 + b"\r\n" + b"\r\n")
    assert status_of(raw.until("a3")).startswith(b"OK [APPENDUID")
    # LITERAL+ over the limit: the bytes are already coming, so the session ends.
    raw.send(b"a4 APPEND INBOX {5000+}\r\n" + b"z" * 5000 + b"\r\n")
    assert raw.readline() == b"* BYE Literal too big"
    assert raw.closed()
    # The message stored before is intact.
    check = Raw(server)
    check.login()
    assert check.cmd("STATUS INBOX (MESSAGES SIZE)")[0] == (
        b'* STATUS "INBOX" (MESSAGES 1 SIZE 4000)'
    )


def test_autologout(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(limits={"imap_idle_timeout": 1})
    raw = Raw(server)
    raw.login()
    assert raw.readline() == b"* BYE Autologout; idle for too long"
    assert raw.closed()
    # IDLE is ended the same way when the client stays silent past the limit.
    idle = Raw(server)
    idle.login()
    idle.send(b"i IDLE\r\n")
    assert idle.readline() == b"+ idling"
    assert idle.readline() == b"* BYE Autologout; idle for too long"


def test_shutdown_says_bye(make_server: Callable[..., RunningServer]) -> None:
    server = make_server()
    raw = Raw(server)
    raw.login()
    raw.cmd("SELECT INBOX")
    server.stop()
    assert raw.readline() == b"* BYE Server shutting down"


def test_corrupt_message_file_is_not_served(mail_server: RunningServer) -> None:
    raw_message = message("precious", body="original text\r\n")
    deliver(mail_server, raw_message)
    import hashlib

    blob_id = hashlib.sha256(raw_message).hexdigest()
    root = mail_server.cfg.path(mail_server.cfg.store.blob_dir)
    path = root / blob_id[:2] / f"{blob_id}.eml"
    path.write_bytes(raw_message.replace(b"original", b"tampered"))
    raw = Raw(mail_server)
    raw.login()
    raw.cmd("SELECT INBOX")
    lines = raw.cmd("FETCH 1 (BODY.PEEK[])")
    assert status_of(lines) == b"NO [CORRUPTION]"
    assert b"tampered" not in b"".join(lines)
    assert status_of(raw.cmd("FETCH 1 (FLAGS)")) == b"OK"  # the session goes on
