"""DMTP and DMAP as a netcat user speaks them: raw sockets, one line at a time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import imaplib
import os
import smtplib
import socket
import stat
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mailstead.store.interfaces import SystemFlag
from tests.conftest import PASSWORD, RunningServer

ALICE = "alice@example.test"
BOB = "bob@example.test"
SECRET = "test-secret"  # tests.conftest sets dmtp.hmac_secret to this


@pytest.fixture
def server(make_server: Callable[..., RunningServer]) -> RunningServer:
    return make_server(listeners={"dmtp": {"enabled": True}, "dmap": {"enabled": True}})


class LineClient:
    """What netcat does: write a line, read a line."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")

    def line(self) -> str:
        return self.file.readline().decode().rstrip("\r\n")

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n")

    def say(self, text: str) -> str:
        self.send(text)
        return self.line()

    def until_ok(self, text: str) -> list[str]:
        self.send(text)
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line == "ok" or line.startswith("error"):
                return lines

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def seed_hash(sender: str, to: str, subject: str, data: str, secret: str = SECRET) -> str:
    text = "\n".join([sender, to, subject, data]).encode()
    return base64.b64encode(hmac.new(secret.encode(), text, hashlib.sha256).digest()).decode()


def dmtp_send(server: RunningServer, sender: str, to: str, subject: str, data: str,
              hash_line: str | None) -> None:
    client = LineClient(server.ports["dmtp"])
    assert client.line() == "ok DMTP2.0"
    assert client.say("begin") == "ok"
    assert client.say(f"from {sender}") == "ok"
    assert client.say(f"to {to}") == f"ok {len(to.split(','))}"
    assert client.say(f"subject {subject}") == "ok"
    assert client.say(f"data {data}") == "ok"
    if hash_line is not None:
        assert client.say(f"hash {hash_line}") == "ok"
    assert client.say("send") == "ok"
    assert client.say("quit") == "ok bye"
    assert client.line() == ""
    client.close()


def dmap_login(server: RunningServer, user: str = ALICE) -> LineClient:
    client = LineClient(server.ports["dmap"])
    assert client.line() == "ok DMAP2.0"
    assert client.say(f"login {user} {PASSWORD}") == "ok"
    return client


def inbox_rows(server: RunningServer, address: str) -> list[tuple[int, int, frozenset[str]]]:
    async def go() -> list[tuple[int, int, frozenset[str]]]:
        store = server.services.store
        account = await store.get_account(address)
        assert account is not None
        box = await store.get_mailbox(account.id, "INBOX")
        assert box is not None
        return [(m.uid, m.flags, m.keywords) for m in await store.get_messages(box.id)]

    return server.run(go())


def stored_message(server: RunningServer, address: str, uid: int) -> bytes:
    async def go() -> bytes:
        store = server.services.store
        account = await store.get_account(address)
        assert account is not None
        box = await store.get_mailbox(account.id, "INBOX")
        assert box is not None
        [row] = await store.get_messages(box.id, [uid])
        return server.services.blobs.get(row.blob_id)

    return server.run(go())


def test_listeners_are_off_by_default(mail_server: RunningServer) -> None:
    assert "dmtp" not in mail_server.ports and "dmap" not in mail_server.ports


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_dmtp_send_then_read_over_dmap(server: RunningServer) -> None:
    to = f"{ALICE},{BOB}"
    digest = seed_hash("carol@example.org", to, "greetings", "hello from  the seed")
    dmtp_send(server, "carol@example.org", to, "greetings", "hello from  the seed", digest)
    [(uid, _flags, keywords)] = inbox_rows(server, ALICE)
    assert keywords == frozenset()
    assert len(inbox_rows(server, BOB)) == 1
    raw = stored_message(server, ALICE, uid)
    assert b"\r\nX-DMTP-Integrity" not in raw and f"X-DMTP-Hash: {digest}".encode() in raw
    assert b"with DMTP id" in raw  # the Received field of the SMTP delivery path

    client = dmap_login(server)
    assert client.until_ok("list") == [f"{uid} carol@example.org greetings", "ok"]
    assert client.until_ok(f"show {uid}") == [
        "from carol@example.org",
        f"to {ALICE},{BOB}",
        "subject greetings",
        "data hello from  the seed",
        f"hash {digest}",
        "ok",
    ]
    assert client.say(f"delete {uid}") == "ok"
    assert client.say(f"show {uid}") == "error unknown message id"
    assert client.until_ok("list") == ["ok"]
    assert client.say("logout") == "ok"
    assert client.say("list") == "error not logged in"
    assert client.say("quit") == "ok bye"
    client.close()
    assert inbox_rows(server, ALICE) == []  # expunged for IMAP too
    assert len(inbox_rows(server, BOB)) == 1


@pytest.mark.parametrize("hash_line", ["d3JvbmcgaGFzaA==", None], ids=["wrong", "missing"])
def test_bad_hash_is_delivered_but_marked(server: RunningServer, hash_line: str | None) -> None:
    dmtp_send(server, BOB, ALICE, "tampered", "pay 1000 euros", hash_line)
    [(uid, flags, keywords)] = inbox_rows(server, ALICE)
    assert keywords == frozenset({"$IntegrityFailed"}) and not flags & SystemFlag.SEEN
    raw = stored_message(server, ALICE, uid)
    assert b"\r\nX-DMTP-Integrity: fail\r\n" in raw
    client = dmap_login(server)
    shown = client.until_ok(f"show {uid}")
    # The stored hash is returned as received, so the client can see it does not verify.
    assert shown[4] == f"hash {hash_line or ''}"
    client.close()


def test_unknown_users_and_relaying(server: RunningServer) -> None:
    client = LineClient(server.ports["dmtp"])
    client.line()
    assert client.say("begin") == "ok"
    assert client.say("to nobody@example.test") == "error unknown recipient nobody@example.test"
    assert client.say(f"to {ALICE},ghost@example.test") == (
        "error unknown recipient ghost@example.test"
    )
    assert client.say(f"to {ALICE}") == "ok 1"
    client.close()

    client = LineClient(server.ports["dmap"])
    client.line()
    assert client.say(f"login nobody@example.test {PASSWORD}") == "error invalid credentials"
    assert client.say(f"login {ALICE} wrong-password") == "error invalid credentials"
    assert client.say(f"login {ALICE} {PASSWORD}") == "ok"
    client.close()


def test_remote_recipient_from_loopback_is_queued(server: RunningServer) -> None:
    digest = seed_hash(ALICE, "dave@example.org", "out", "leaving")
    dmtp_send(server, ALICE, "dave@example.org", "out", "leaving", digest)
    queue = server.run(server.services.store.list_queue())
    assert [r.address for entry in queue for r in entry.recipients] == ["dave@example.org"]


def test_garbage_lines_keep_the_session(server: RunningServer) -> None:
    client = LineClient(server.ports["dmtp"])
    client.line()
    assert client.say("helo there") == "error unknown command"
    assert client.say("\x00\x01\xff garbage") == "error unknown command"
    assert client.say("") == "error empty line"
    assert client.say("send") == "error begin first"
    assert client.say("begin") == "ok"
    assert client.say("send") == "error no from"
    assert client.say("from not-an-address") == "error invalid address"
    assert client.say("data") == "error data expected"
    assert client.say("x" * 300_000) == "error line too long"
    assert client.say("quit") == "ok bye"
    client.close()

    client = LineClient(server.ports["dmap"])
    client.line()
    assert client.say("show 1") == "error not logged in"
    assert client.say("what is this") == "error unknown command"
    assert client.say(f"login {ALICE} {PASSWORD}") == "ok"
    assert client.say("show abc") == "error usage: show <id>"
    assert client.say("delete 999") == "error unknown message id"
    assert client.until_ok("list") == ["ok"]
    client.close()


def test_smtp_mail_is_readable_over_dmap_with_a_verifiable_hash(server: RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as smtp:
        smtp.sendmail(
            "carol@example.org", [ALICE],
            b"From: Carol <carol@example.org>\r\nTo: Alice <alice@example.test>\r\n"
            b"Subject: via SMTP\r\n\r\nfirst line\r\nsecond line\r\n",
        )
    [(uid, _flags, _kw)] = inbox_rows(server, ALICE)
    client = dmap_login(server)
    assert client.until_ok("list") == [f"{uid} carol@example.org via SMTP", "ok"]
    shown = client.until_ok(f"show {uid}")
    assert shown[:4] == [
        "from carol@example.org", f"to {ALICE}", "subject via SMTP", "data first line second line",
    ]
    expected = seed_hash("carol@example.org", ALICE, "via SMTP", "first line second line")
    assert shown[4] == f"hash {expected}"
    client.close()


def test_dmtp_mail_is_readable_over_imap(server: RunningServer) -> None:
    pytest.importorskip("mailstead.net.imap_server")
    dmtp_send(server, BOB, ALICE, "to imap", "read me in IMAP", None)
    imap = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30)
    imap.starttls(server.ssl_context())
    imap.login(ALICE, PASSWORD)
    imap.select("INBOX")
    _, data = imap.fetch("1", "(FLAGS BODY.PEEK[])")
    first = data[0]
    assert isinstance(first, tuple)
    flags, body = first
    assert b"$IntegrityFailed" in flags and b"read me in IMAP" in body
    imap.logout()


# -- startsecure -------------------------------------------------------------------------------


class SecureClient:
    """A DMAP client doing the seed's handshake with the `cryptography` library."""

    def __init__(self, server: RunningServer) -> None:
        pem = server.cfg.path("dmap/server_pub.pem").read_bytes()
        public = serialization.load_pem_public_key(pem)
        assert isinstance(public, rsa.RSAPublicKey)
        self.public = public
        self.key, self.iv = os.urandom(32), os.urandom(16)
        self.challenge = base64.b64encode(os.urandom(32)).decode()
        self.conn = LineClient(server.ports["dmap"])

    def _ctr(self, data: bytes) -> bytes:
        ctx = Cipher(algorithms.AES(self.key), modes.CTR(self.iv)).encryptor()
        return ctx.update(data) + ctx.finalize()

    def handshake(self, component_id: str) -> None:
        assert self.conn.line() == "ok DMAP2.0"
        assert self.conn.say("startsecure") == f"ok {component_id}"
        hello = " ".join([
            "ok", self.challenge, base64.b64encode(self.key).decode(),
            base64.b64encode(self.iv).decode(),
        ])
        secret = self.public.encrypt(hello.encode(), padding.PKCS1v15())  # the seed's padding
        answer = self.conn.say(base64.b64encode(secret).decode())
        assert self._ctr(base64.b64decode(answer)).decode() == f"ok {self.challenge}"
        self.conn.send(base64.b64encode(self._ctr(b"ok")).decode())

    def say(self, text: str) -> list[str]:
        self.conn.send(base64.b64encode(self._ctr(text.encode())).decode())
        line = self.conn.line()
        assert line, "connection closed"
        return self._ctr(base64.b64decode(line)).decode().split("\n")


def test_startsecure_full_session(server: RunningServer) -> None:
    key_file = server.cfg.path("dmap/server_key.pem")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    digest = seed_hash(BOB, ALICE, "secret plans", "meet at noon")
    dmtp_send(server, BOB, ALICE, "secret plans", "meet at noon", digest)
    [(uid, _f, _k)] = inbox_rows(server, ALICE)

    client = SecureClient(server)
    client.handshake(server.cfg.hostname)
    assert client.say(f"login {ALICE} {PASSWORD}") == ["ok"]
    assert client.say("list") == [f"{uid} {BOB} secret plans", "ok"]
    shown = client.say(f"show {uid}")
    assert shown == [f"from {BOB}", f"to {ALICE}", "subject secret plans", "data meet at noon",
                     f"hash {digest}", "ok"]
    assert client.say("nonsense") == ["error unknown command"]
    assert client.say(f"delete {uid}") == ["ok"]
    assert client.say("quit") == ["ok bye"]
    client.conn.close()
    assert inbox_rows(server, ALICE) == []


def test_startsecure_with_garbage_stays_usable(server: RunningServer) -> None:
    client = LineClient(server.ports["dmap"])
    client.line()
    assert client.say("startsecure") == f"ok {server.cfg.hostname}"
    assert client.say("this is not RSA") == "error startsecure failed"
    assert client.say(f"login {ALICE} {PASSWORD}") == "ok"
    client.close()


def test_key_survives_restart(make_server: Callable[..., RunningServer]) -> None:
    listeners = {"dmtp": {"enabled": True}, "dmap": {"enabled": True}}
    first = make_server(listeners=listeners)
    pem = first.cfg.path("dmap/server_pub.pem").read_bytes()
    first.stop()
    second = make_server(data_dir=first.data_dir, listeners=listeners)
    assert second.cfg.path("dmap/server_pub.pem").read_bytes() == pem
    client = SecureClient(second)
    client.handshake(second.cfg.hostname)
    assert client.say(f"login {ALICE} {PASSWORD}") == ["ok"]
    client.conn.close()
