"""POP3 over real sockets with Python's poplib (and a raw socket for SASL): STLS and 995, the
store shared with IMAP, the IN-USE lock, dropped sessions, UIDL stability, dot-stuffing."""

from __future__ import annotations

import base64
import contextlib
import poplib
import socket
import sqlite3
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailstead.net import pop3_server
from mailstead.obs import EVENT_COUNTS
from tests.conftest import PASSWORD, RunningServer
from tests.pop3.helpers import (
    blob_path,
    deliver,
    inbox,
    message,
    wait_until_unlocked,
)

ALICE = "alice@example.test"


def stls_client(server: RunningServer, user: str = ALICE, login: bool = True) -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=30)
    client.stls(context=server.ssl_context())
    if login:
        client.user(user)
        client.pass_(PASSWORD)
    return client


def ssl_client(server: RunningServer, user: str = ALICE) -> poplib.POP3_SSL:
    client = poplib.POP3_SSL(
        "127.0.0.1", server.ports["pop3s"], context=server.ssl_context(), timeout=30
    )
    client.user(user)
    client.pass_(PASSWORD)
    return client


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_retrieve_and_delete_over_stls_expunges_for_imap(mail_server: RunningServer) -> None:
    raws = [message(f"note {i}", body=f"body {i}\r\n") for i in range(3)]
    uids = [deliver(mail_server, ALICE, raw) for raw in raws]
    client = stls_client(mail_server)
    count, size = client.stat()
    assert (count, size) == (3, sum(len(r) for r in raws))
    _, listing, _ = client.list()
    assert listing == [f"{i + 1} {len(r)}".encode() for i, r in enumerate(raws)]
    _, lines, octets = client.retr(2)
    assert b"\r\n".join(lines) + b"\r\n" == raws[1] and octets == len(raws[1])
    client.dele(1)
    client.dele(3)
    # Nothing is gone before QUIT: an IMAP client still sees all three.
    assert sorted(inbox(mail_server, ALICE)) == uids
    assert client.quit().startswith(b"+OK")
    assert inbox(mail_server, ALICE) == {uids[1]: True}  # the one read is now \Seen


def test_implicit_tls_on_995(mail_server: RunningServer) -> None:
    deliver(mail_server, ALICE, message("over 995"))
    client = ssl_client(mail_server)
    _, lines, _ = client.retr(1)
    assert b"Subject: over 995" in lines
    client.dele(1)
    client.quit()
    assert inbox(mail_server, ALICE) == {}


def test_plaintext_login_refused_before_stls(mail_server: RunningServer) -> None:
    client = poplib.POP3("127.0.0.1", mail_server.ports["pop3"], timeout=30)
    caps = client.capa()
    assert "STLS" in caps and "USER" not in caps and "SASL" not in caps
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] TLS required"):
        client.user(ALICE)
    client.stls(context=mail_server.ssl_context())
    caps = client.capa()
    assert "USER" in caps and caps["SASL"] == ["PLAIN", "LOGIN"] and "STLS" not in caps
    assert "UIDL" in caps and "TOP" in caps and "RESP-CODES" in caps
    client.user(ALICE)
    assert client.pass_(PASSWORD).startswith(b"+OK")
    client.quit()


def test_plaintext_allowed_on_loopback_when_configured(
    make_server: Callable[..., RunningServer],
) -> None:
    server = make_server(auth={"allow_plaintext_on_loopback": True})
    client = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=30)
    assert "USER" in client.capa()
    client.user(ALICE)
    client.pass_(PASSWORD)
    assert client.stat() == (0, 0)
    client.quit()


def test_bad_password_answers_auth_code(mail_server: RunningServer) -> None:
    client = stls_client(mail_server, login=False)
    client.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] invalid credentials"):
        client.pass_("wrong password")
    client.user("nobody@example.test")
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\]"):
        client.pass_(PASSWORD)
    client.user(ALICE)
    assert client.pass_(PASSWORD).startswith(b"+OK")
    client.quit()


def test_repeated_failures_lock_out_with_sys_temp(
    make_server: Callable[..., RunningServer],
) -> None:
    server = make_server(auth={"max_failures": 2, "failure_delay": 0})
    client = stls_client(server, login=False)
    for n in range(2):  # distinct guesses (the same wrong one again is not counted again)
        client.user(ALICE)
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            client.pass_(f"wrong password {n}")
    client.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"-ERR \[SYS/TEMP\]"):
        client.pass_(PASSWORD)


def test_uidl_top_and_rset(mail_server: RunningServer) -> None:
    body = "".join(f"line {i}\r\n" for i in range(10))
    first = deliver(mail_server, ALICE, message("top me", body=body))
    second = deliver(mail_server, ALICE, message("other"))
    uidvalidity = mail_server.run(_uidvalidity(mail_server))
    client = stls_client(mail_server)
    _, uidls, _ = client.uidl()
    assert uidls == [f"1 {uidvalidity}.{first}".encode(), f"2 {uidvalidity}.{second}".encode()]
    assert client.uidl(2) == f"+OK 2 {uidvalidity}.{second}".encode()
    _, lines, _ = client.top(1, 2)
    assert lines[-3:] == [b"", b"line 0", b"line 1"]
    assert b"Subject: top me" in lines
    client.dele(1)
    with pytest.raises(poplib.error_proto, match="already deleted"):
        client.retr(1)
    client.rset()
    assert client.stat()[0] == 2
    client.quit()
    assert sorted(inbox(mail_server, ALICE)) == [first, second]


async def _uidvalidity(server: RunningServer) -> int:
    store = server.services.store
    account = await store.get_account(ALICE)
    assert account is not None
    box = await store.get_mailbox(account.id, "INBOX")
    assert box is not None
    return box.uidvalidity


def test_uidl_stable_across_restart(make_server: Callable[..., RunningServer]) -> None:
    server = make_server()
    for i in range(3):
        deliver(server, ALICE, message(f"keep {i}"))
    client = stls_client(server)
    client.dele(2)
    client.quit()
    client = stls_client(server)
    _, before, _ = client.uidl()
    client.quit()
    server.stop()
    restarted = make_server(data_dir=server.data_dir)
    client = stls_client(restarted)
    _, after, _ = client.uidl()
    client.quit()
    assert after == before and len(after) == 2


def refused_in_use(server: RunningServer) -> poplib.POP3:
    """A client whose login as Alice got [IN-USE] (RFC 2449), still connected."""
    client = stls_client(server, login=False)
    client.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"-ERR \[IN-USE\]"):
        client.pass_(PASSWORD)
    return client


def test_second_session_gets_in_use(mail_server: RunningServer) -> None:
    deliver(mail_server, ALICE, message("locked"))
    first = stls_client(mail_server)
    second = refused_in_use(mail_server)
    # Another user's maildrop is not affected.
    other = stls_client(mail_server, user="bob@example.test")
    other.quit()
    first.quit()
    second.user(ALICE)
    assert second.pass_(PASSWORD).startswith(b"+OK")
    second.quit()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_maildrop_lock_holds_across_nodes(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """Two nodes sharing PostgreSQL (and the message files): a POP3 session on one locks the
    maildrop for the other as well, until its QUIT."""
    shared = {"blob_dir": str(tmp_path / "blobs")}
    first = make_server(store=shared)
    second = make_server(data_dir=tmp_path / "second", store=shared, tls={
        "cert": str(first.cert_file), "key": str(first.cfg.path(first.cfg.tls.key))})
    deliver(first, ALICE, message("shared"))
    holder = stls_client(first)
    other = refused_in_use(second)
    holder.quit()
    other.user(ALICE)
    assert other.pass_(PASSWORD).startswith(b"+OK")
    assert other.stat()[0] == 1
    other.quit()


def test_a_session_that_lost_its_lock_deletes_nothing(
    make_server: Callable[..., RunningServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session whose lease was taken over (its node paused longer than the lease, and
    another session got the maildrop) refuses its QUIT's deletions: they would come from a
    snapshot the other session may be changing."""
    monkeypatch.setattr(pop3_server, "LOCK_LEASE", 0.3)  # renewed every 0.1 s
    server = make_server()
    uid = deliver(server, ALICE, message("keep me"))
    client = stls_client(server)
    client.dele(1)
    assert server.cfg.sqlite_path is not None
    with contextlib.closing(sqlite3.connect(server.cfg.sqlite_path)) as db, db:
        db.execute("UPDATE maildrop_locks SET owner = 'another node', expires = ?",
                   (2**62,))
    lost = EVENT_COUNTS["pop3.lock_lost"]
    deadline = time.monotonic() + 10
    while EVENT_COUNTS["pop3.lock_lost"] == lost:  # until a renewal finds the lock gone
        assert time.monotonic() < deadline, "the session never noticed"
        time.sleep(0.05)
    with pytest.raises(poplib.error_proto, match=r"-ERR \[SYS/TEMP\] the maildrop lock was lost"):
        client.quit()
    assert list(inbox(server, ALICE)) == [uid]


def test_dropped_connection_deletes_nothing(mail_server: RunningServer) -> None:
    uids = [deliver(mail_server, ALICE, message(f"precious {i}")) for i in range(2)]
    client = stls_client(mail_server)
    client.dele(1)
    client.dele(2)
    client.close()  # the line drops: no QUIT
    wait_until_unlocked(mail_server)
    assert sorted(inbox(mail_server, ALICE)) == uids
    client = stls_client(mail_server)
    assert client.stat()[0] == 2
    client.quit()


def test_snapshot_taken_at_login(mail_server: RunningServer) -> None:
    deliver(mail_server, ALICE, message("before"))
    client = stls_client(mail_server)
    deliver(mail_server, ALICE, message("after"))
    assert client.stat()[0] == 1
    client.quit()
    client = stls_client(mail_server)
    assert client.stat()[0] == 2
    client.quit()


def test_dot_stuffing_round_trip(mail_server: RunningServer) -> None:
    body = ".leading dot\r\n..two dots\r\n.\r\nmiddle\r\n. space\r\nend\r\n"
    raw = message("dots", body=body)
    deliver(mail_server, ALICE, raw)
    client = stls_client(mail_server)
    # Raw wire bytes: every dot-led line is stuffed, and the end marker is CRLF.CRLF.
    client.sock.sendall(b"RETR 1\r\n")
    wire = b""
    while not wire.endswith(b"\r\n.\r\n"):
        chunk = client.file.readline()
        assert chunk
        wire += chunk
    assert b"\r\n..leading dot\r\n...two dots\r\n..\r\nmiddle\r\n.. space\r\nend\r\n.\r\n" in wire
    # poplib undoes it: the message arrives exactly as stored.
    _, lines, _ = client.retr(1)
    assert b"\r\n".join(lines) + b"\r\n" == raw
    client.quit()


def test_corrupt_message_is_refused(mail_server: RunningServer) -> None:
    bad = message("will rot")
    deliver(mail_server, ALICE, bad)
    deliver(mail_server, ALICE, message("fine"))
    path = blob_path(mail_server, bad)
    path.chmod(0o644)
    path.write_bytes(bad.replace(b"Hello", b"Jello"))
    client = stls_client(mail_server)
    with pytest.raises(poplib.error_proto, match=r"-ERR \[SYS/PERM\] message 1 is damaged"):
        client.retr(1)
    with pytest.raises(poplib.error_proto, match=r"-ERR \[SYS/PERM\]"):
        client.top(1, 0)
    _, lines, _ = client.retr(2)
    assert b"Subject: fine" in lines
    client.quit()


# -- SASL over a raw TLS socket ---------------------------------------------------------------


class RawClient:
    def __init__(self, server: RunningServer) -> None:
        sock = socket.create_connection(("127.0.0.1", server.ports["pop3s"]), timeout=30)
        self.sock: ssl.SSLSocket = server.ssl_context().wrap_socket(sock)
        self.file = self.sock.makefile("rb")
        assert self.line().startswith(b"+OK")

    def line(self) -> bytes:
        return self.file.readline()

    def say(self, text: str) -> bytes:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_auth_plain_with_initial_response(mail_server: RunningServer) -> None:
    client = RawClient(mail_server)
    assert client.say(f"AUTH PLAIN {b64(chr(0) + ALICE + chr(0) + PASSWORD)}").startswith(
        b"+OK maildrop has 0 messages"
    )
    assert client.say("QUIT").startswith(b"+OK")
    client.close()


def test_auth_plain_continuation_and_login(mail_server: RunningServer) -> None:
    client = RawClient(mail_server)
    assert client.say("AUTH PLAIN") == b"+ \r\n"
    assert client.say(b64(f"\0{ALICE}\0wrong")).startswith(b"-ERR [AUTH] ")
    assert client.say("AUTH LOGIN") == b"+ VXNlcm5hbWU6\r\n"
    assert client.say(b64(ALICE)) == b"+ UGFzc3dvcmQ6\r\n"
    assert client.say(b64(PASSWORD)).startswith(b"+OK")
    assert client.say("STAT") == b"+OK 0 0\r\n"
    client.say("QUIT")
    client.close()


def test_garbage_and_long_lines(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(limits={"max_errors": 3})
    client = RawClient(server)
    assert client.say("X" * 5000).startswith(b"-ERR line too long")
    assert client.say("HELO") == b"-ERR unknown command\r\n"
    assert client.say("RETR 1") == b"-ERR RETR not allowed in this state\r\n"
    assert client.line() == b"-ERR too many errors, closing connection\r\n"
    assert client.line() == b""  # closed
    client.close()


def test_idle_session_is_logged_out_without_deleting(
    make_server: Callable[..., RunningServer],
) -> None:
    server = make_server(limits={"pop3_idle_timeout": 1})
    uid = deliver(server, ALICE, message("idle"))
    client = stls_client(server)
    client.dele(1)
    # Say nothing: the server ends the session by itself (RFC 1939 autologout, no UPDATE).
    assert client.file.readline() == b"-ERR autologout: idle for too long\r\n"
    assert client.file.readline() == b""
    wait_until_unlocked(server)
    assert list(inbox(server, ALICE)) == [uid]


def test_stls_discards_pipelined_plaintext(mail_server: RunningServer) -> None:
    sock = socket.create_connection(("127.0.0.1", mail_server.ports["pop3"]), timeout=30)
    file = sock.makefile("rb")
    assert file.readline().startswith(b"+OK")
    # A man in the middle appends a command after STLS; it must not run inside TLS.
    sock.sendall(b"STLS\r\nUSER injected@example.test\r\n")
    assert file.readline() == b"+OK Begin TLS negotiation\r\n"
    file.close()
    tls = mail_server.ssl_context().wrap_socket(sock)
    tls_file = tls.makefile("rb")
    tls.sendall(b"PASS " + PASSWORD.encode() + b"\r\n")
    assert tls_file.readline() == b"-ERR USER first\r\n"
    tls.sendall(b"QUIT\r\n")
    assert tls_file.readline() == b"+OK bye\r\n"
    tls_file.close()
    tls.close()


def test_imap_session_sees_pop3_deletions(mail_server: RunningServer) -> None:
    import imaplib

    pytest.importorskip("mailstead.net.imap_server")
    for i in range(3):
        deliver(mail_server, ALICE, message(f"shared {i}"))
    imap = imaplib.IMAP4("127.0.0.1", mail_server.ports["imap"], timeout=30)
    imap.starttls(mail_server.ssl_context())
    imap.login(ALICE, PASSWORD)
    assert imap.select("INBOX") == ("OK", [b"3"])
    client = stls_client(mail_server)
    client.dele(2)
    client.quit()
    imap.noop()
    _, data = imap.search(None, "ALL")
    assert data == [b"1 2"]
    _, subjects = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    found = b"".join(part[1] for part in subjects if isinstance(part, tuple))
    assert b"shared 0" in found and b"shared 2" in found and b"shared 1" not in found
    imap.logout()
