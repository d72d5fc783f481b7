"""Hostile and confused input over real sockets: over-long lines keep their tag, HTTP requests
and TLS handshakes on the plaintext port end the session, the error budget, the per-user-and-IP
session cap, mailbox names that look like paths. After each, an ordinary client is still served
promptly."""

from __future__ import annotations

import hashlib
import imaplib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailstead.config import LimitsConfig
from mailstead.proto import mutf7
from tests.conftest import PASSWORD, RunningServer
from tests.imap.helpers import ALICE, BOB, Raw, connect, deliver, message, status_of

PLAIN = {"auth": {"allow_plaintext_on_loopback": True}}


def served_promptly(server: RunningServer) -> None:
    """A second, ordinary client gets its greeting and a NOOP answer within a couple of
    seconds (generous: the machine is shared)."""
    sock = socket.create_connection(("127.0.0.1", server.ports["imap"]), timeout=2)
    try:
        sock.settimeout(2)
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"* OK")
        sock.sendall(b"p1 NOOP\r\n")
        assert reader.readline().startswith(b"p1 OK")
    finally:
        sock.close()


def client_hello() -> bytes:
    """The first flight of a real TLS client (its ClientHello record), made in memory."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="mail.example.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# -- over-long lines --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [70_000, 300_000])  # over MAX_LINE; over the stream buffer
def test_long_line_gets_a_tagged_bad(mail_server: RunningServer, size: int) -> None:
    raw = Raw(mail_server)
    raw.send(b"a1 NOOP " + b"x" * (size // 2))
    served_promptly(mail_server)  # while the hostile line is half sent
    raw.send(b"x" * (size - size // 2) + b"\r\n")
    assert raw.readline() == b"a1 BAD Line too long"
    assert status_of(raw.cmd("NOOP")) == b"OK"  # the rest of the line was skipped
    raw.login()
    assert status_of(raw.cmd("SELECT INBOX")) == b"OK [READ-WRITE]"
    served_promptly(mail_server)


def test_long_line_without_a_tag_ends_the_session(mail_server: RunningServer) -> None:
    raw = Raw(mail_server)
    raw.send(b"x" * 300_000 + b"\r\n")
    assert raw.readline() == b"* BYE Line too long"
    assert raw.closed()
    served_promptly(mail_server)


def test_long_line_inside_authenticate_and_idle(mail_server: RunningServer) -> None:
    raw = Raw(mail_server)
    raw.send(b"a1 AUTHENTICATE PLAIN\r\n")
    assert raw.readline() == b"+ "
    raw.send(b"A" * 70_000 + b"\r\n")
    assert raw.readline() == b"a1 BAD Line too long"
    raw.login()
    raw.cmd("SELECT INBOX")
    raw.send(b"i1 IDLE\r\n")
    assert raw.readline() == b"+ idling"
    raw.send(b"DONE" + b" " * 70_000 + b"\r\n")
    assert raw.readline() == b"i1 BAD Line too long"
    assert status_of(raw.cmd("NOOP")) == b"OK"
    served_promptly(mail_server)


# -- other protocols on the IMAP port ---------------------------------------------------------


@pytest.mark.parametrize("request_line", [b"GET / HTTP/1.1", b"POST /login HTTP/1.0",
                                          b"CONNECT mail.example.test:143 HTTP/1.1"])
def test_http_request_gets_bye(mail_server: RunningServer, request_line: bytes) -> None:
    raw = Raw(mail_server, port="imap", tls=False)
    raw.send(request_line + b"\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
    assert raw.readline() == b"* BYE This is an IMAP server, not HTTP"
    assert raw.closed()
    served_promptly(mail_server)


def test_http_request_after_login_gets_bye(mail_server: RunningServer) -> None:
    raw = Raw(mail_server)
    raw.login()
    raw.send(b"POST /form HTTP/1.1\r\n")
    assert raw.readline() == b"* BYE This is an IMAP server, not HTTP"
    assert raw.closed()
    served_promptly(mail_server)


def test_tls_handshake_on_plaintext_port_gets_bye(mail_server: RunningServer) -> None:
    sock = socket.create_connection(("127.0.0.1", mail_server.ports["imap"]), timeout=10)
    try:
        # An implicit-TLS client sends its ClientHello at once, without waiting for a greeting.
        sock.sendall(client_hello())
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    finally:
        sock.close()
    greeting, bye = received.split(b"\r\n")[:2]
    assert greeting.startswith(b"* OK")
    assert bye == b"* BYE TLS handshake on a plaintext port"
    served_promptly(mail_server)


def test_tls_handshake_on_pop3_and_smtp_plaintext_ports(mail_server: RunningServer) -> None:
    for port, expected in (("pop3", b"-ERR TLS handshake on a plaintext port"),
                           ("smtp", b"421 4.7.0 mail.example.test TLS handshake on a "
                                    b"plaintext port")):
        sock = socket.create_connection(("127.0.0.1", mail_server.ports[port]), timeout=10)
        try:
            sock.sendall(client_hello())
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
        finally:
            sock.close()
        assert received.split(b"\r\n")[1] == expected, port
    served_promptly(mail_server)


def test_http_request_on_pop3_port(mail_server: RunningServer) -> None:
    sock = socket.create_connection(("127.0.0.1", mail_server.ports["pop3"]), timeout=10)
    try:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.readline() == b"-ERR this is a POP3 server, not HTTP\r\n"
        assert reader.readline() == b""  # closed
    finally:
        sock.close()
    served_promptly(mail_server)


# -- the error budget -------------------------------------------------------------------------


def test_twenty_errors_end_the_session(mail_server: RunningServer) -> None:
    assert LimitsConfig().imap_max_errors == 20
    raw = Raw(mail_server)
    for _ in range(19):
        assert status_of(raw.cmd("BOGUS")) == b"BAD"
    assert status_of(raw.cmd("NOOP")) == b"OK"  # still served after 19
    raw.send(b"z BOGUS\r\n")
    assert raw.readline().startswith(b"z BAD")
    assert raw.readline() == b"* BYE Too many invalid commands"
    assert raw.closed()
    served_promptly(mail_server)


# -- sessions per user and IP -----------------------------------------------------------------


def plain_client(server: RunningServer) -> imaplib.IMAP4:
    return imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30)


def test_sessions_per_user_and_ip(make_server: Callable[..., RunningServer]) -> None:
    assert LimitsConfig().imap_sessions_per_user_ip == 10
    assert LimitsConfig().max_connections_per_ip == 50
    server = make_server(**PLAIN)
    sessions = []
    for _ in range(10):
        client = plain_client(server)
        client.login(ALICE, PASSWORD)
        sessions.append(client)
    eleventh = plain_client(server)
    with pytest.raises(imaplib.IMAP4.error, match=r"\[LIMIT\] Too many sessions"):
        eleventh.login(ALICE, PASSWORD)
    # A wrong password at the cap still says only that the credentials are wrong.
    with pytest.raises(imaplib.IMAP4.error, match=r"AUTHENTICATIONFAILED"):
        eleventh.login(ALICE, "wrong password")
    # SASL PLAIN is counted the same way.
    raw = Raw(server, port="imap", tls=False)
    import base64

    token = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
    assert status_of(raw.cmd(f"AUTHENTICATE PLAIN {token}")) == b"NO [LIMIT]"
    # Another user from the same address is not affected.
    other = plain_client(server)
    other.login(BOB, PASSWORD)
    other.logout()
    # The refused sessions stayed usable: once one of the ten ends, a login succeeds.
    sessions.pop().logout()
    deadline = time.monotonic() + 10
    while True:
        try:
            eleventh.login(ALICE, PASSWORD)
            break
        except imaplib.IMAP4.error:
            assert time.monotonic() < deadline, "the slot was never given back"
            time.sleep(0.1)
    eleventh.select("INBOX")
    sessions.append(eleventh)
    # A dropped connection (no LOGOUT) gives its slot back too.
    sessions.pop(0).shutdown()
    deadline = time.monotonic() + 10
    while True:
        client = plain_client(server)
        try:
            client.login(ALICE, PASSWORD)
            sessions.append(client)
            break
        except imaplib.IMAP4.error:
            client.shutdown()
            assert time.monotonic() < deadline, "a dropped session kept its slot"
            time.sleep(0.1)
    for client in sessions:
        client.logout()
    served_promptly(server)


# -- mailbox names ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "~", "~alice", "~/mail", "..", "a/../b", "a/..", "../etc", "a/./b", ".", "a//b",
    # RFC 9051 5.1: no C1 control (NEL here) and no LINE SEPARATOR, sent in modified UTF-7
    mutf7.encode("a\u0085b"), mutf7.encode("a\u2028b"),
])
def test_path_like_mailbox_names_are_refused(mail_server: RunningServer, name: str) -> None:
    client = connect(mail_server)
    try:
        client.create('"Real"')
        quoted = '"' + name + '"'
        typ, _ = client.create(quoted)
        assert typ == "NO", name
        typ, _ = client.rename('"Real"', quoted)
        assert typ == "NO", name
        typ, _ = client.select(quoted)
        assert typ == "NO", name
        typ, _ = client.status(quoted, "(MESSAGES)")
        assert typ == "NO", name
        typ, listed = client.list()
        assert typ == "OK"
        names = [line.decode().rsplit(" ", 1)[-1] for line in listed if isinstance(line, bytes)]
        assert '"Real"' in names
        assert not any("~" in n or ".." in n for n in names)
        assert client.select('"Real"')[0] == "OK"  # the session goes on
    finally:
        client.logout()


# -- damaged message files --------------------------------------------------------------------


def blob_file(server: RunningServer, raw: bytes) -> Path:
    blob_id = hashlib.sha256(raw).hexdigest()
    root = server.cfg.path(server.cfg.store.blob_dir)
    return root / blob_id[:2] / f"{blob_id}.eml"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("damage", ["same length", "truncated"])
def test_damaged_file_is_never_served(
    mail_server: RunningServer, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailstead")
    good = message("intact", body="fine text\r\n")
    bad = message("precious", body="original text\r\n" * 20)
    deliver(mail_server, good)
    deliver(mail_server, bad)
    deliver(mail_server, message("after", body="later text\r\n"))
    path = blob_file(mail_server, bad)
    path.chmod(0o644)
    changed = (bad.replace(b"original", b"tampered") if damage == "same length"
               else bad[: len(bad) // 2])
    path.write_bytes(changed)
    raw = Raw(mail_server)
    raw.login()
    raw.cmd("SELECT INBOX")
    for items in ("BODY.PEEK[]", "BODY.PEEK[]<0.20>", "BINARY.PEEK[]", "BODY.PEEK[TEXT]",
                  "RFC822", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]", "BODYSTRUCTURE"):
        lines = raw.cmd(f"FETCH 2 ({items})")
        assert status_of(lines) == b"NO [CORRUPTION]", (items, lines)
        assert not any(line.startswith(b"* 2 FETCH") for line in lines), lines
        assert b"tampered" not in b"".join(lines)
    # Flags, sizes and the other message are still served.
    assert status_of(raw.cmd("FETCH 2 (FLAGS RFC822.SIZE)")) == b"OK"
    lines = raw.cmd("FETCH 1 (BODY.PEEK[])")
    assert status_of(lines) == b"OK"
    assert b"fine text" in lines[0]
    # A range holding the damaged message: the others are sent, the command ends NO.
    lines = raw.cmd("FETCH 1:3 (BODY.PEEK[])")
    assert status_of(lines) == b"NO [CORRUPTION]"
    fetched = [line for line in lines if line.startswith(b"* ")]
    assert [line.split()[1] for line in fetched] == [b"1", b"3"]
    assert b"later text" in fetched[1]
    logged = [r.getMessage() for r in caplog.records if "imap.corrupt" in r.getMessage()]
    assert len(logged) >= 8
    assert hashlib.sha256(bad).hexdigest() in logged[0]
    assert "SHA-256 mismatch" in logged[0]
    served_promptly(mail_server)


def test_silent_client_is_logged_out(make_server: Callable[..., RunningServer]) -> None:
    """The look for a TLS handshake at the start waits no longer than the idle limit."""
    server = make_server(limits={"imap_idle_timeout": 1, "pop3_idle_timeout": 1})
    raw = Raw(server, port="imap", tls=False)
    assert raw.readline() == b"* BYE Autologout; idle for too long"
    assert raw.closed()
    sock = socket.create_connection(("127.0.0.1", server.ports["pop3"]), timeout=10)
    try:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        assert reader.readline() == b"-ERR autologout: idle for too long\r\n"
    finally:
        sock.close()
