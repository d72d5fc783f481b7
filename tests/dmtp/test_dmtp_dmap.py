"""DMTP and DMAP as a netcat user speaks them: raw sockets, one line at a time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import imaplib
import os
import smtplib
import socket
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

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
    assert keywords == frozenset({"$IntegrityVerified"})
    assert len(inbox_rows(server, BOB)) == 1
    raw = stored_message(server, ALICE, uid)
    assert b"\r\nX-DMTP-Integrity: pass\r\n" in raw and f"X-DMTP-Hash: {digest}".encode() in raw
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


@pytest.mark.parametrize(("hash_line", "keyword", "value"), [
    ("d3JvbmcgaGFzaA==", "$IntegrityFailed", b"fail"), (None, "$IntegrityUnsigned", b"none"),
], ids=["wrong", "missing"])
def test_bad_hash_is_delivered_but_marked(server: RunningServer, hash_line: str | None,
                                          keyword: str, value: bytes) -> None:
    """A wrong hash is "failed"; a missing one only "unsigned", not the same as tampering."""
    dmtp_send(server, BOB, ALICE, "tampered", "pay 1000 euros", hash_line)
    [(uid, flags, keywords)] = inbox_rows(server, ALICE)
    assert keywords == frozenset({keyword}) and not flags & SystemFlag.SEEN
    raw = stored_message(server, ALICE, uid)
    assert b"\r\nX-DMTP-Integrity: " + value + b"\r\n" in raw
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
    assert b"$IntegrityUnsigned" in flags and b"read me in IMAP" in body
    imap.logout()


# -- startsecure -------------------------------------------------------------------------------


class SecureClient:
    """A DMAP client doing startsecure as README describes it, with the `cryptography` library
    directly (not mailstead's code). It records every line it sends and receives, as a passive
    attacker on the wire would see them."""

    def __init__(self, server: RunningServer) -> None:
        pem = server.cfg.path("dmap/server_pub.pem").read_bytes()
        public = serialization.load_pem_public_key(pem)
        assert isinstance(public, rsa.RSAPublicKey)
        self.public = public
        self.key, self.iv = os.urandom(32), os.urandom(16)
        self.challenge = base64.b64encode(os.urandom(32)).decode()
        self.conn = LineClient(server.ports["dmap"])
        self.wire: list[tuple[str, bytes]] = []  # ("c2s" | "s2c", the line's bytes)
        self.sent = self.received = 0
        self.c2s = self.s2c = b""

    def send_raw(self, line: str) -> None:
        self.wire.append(("c2s", line.encode()))
        self.conn.send(line)

    def line_raw(self) -> str:
        line = self.conn.line()
        self.wire.append(("s2c", line.encode()))
        return line

    def seal(self, text: str) -> str:
        nonce = b"c2s\0" + self.sent.to_bytes(8, "big")
        self.sent += 1
        return base64.b64encode(AESGCM(self.c2s).encrypt(nonce, text.encode(), None)).decode()

    def open(self, line: str) -> str:
        assert line, "connection closed"
        nonce = b"s2c\0" + self.received.to_bytes(8, "big")
        self.received += 1
        return AESGCM(self.s2c).decrypt(nonce, base64.b64decode(line), None).decode()

    def handshake(self, component_id: str) -> None:
        assert self.conn.line() == "ok DMAP2.0"
        self.send_raw("startsecure")
        ok, component, nonce_b64 = self.line_raw().split()
        assert (ok, component) == ("ok", component_id)
        nonce = base64.b64decode(nonce_b64)
        self.c2s, self.s2c = (
            HKDF(hashes.SHA256(), 32, nonce, b"mailstead dmap v1 " + label).derive(
                self.key + self.iv)
            for label in (b"c2s", b"s2c")
        )
        hello = " ".join([
            "ok", self.challenge, base64.b64encode(self.key).decode(),
            base64.b64encode(self.iv).decode(),
        ])
        oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
        self.send_raw(base64.b64encode(self.public.encrypt(hello.encode(), oaep)).decode())
        answer = self.open(self.line_raw()).encode()
        assert hmac.compare_digest(answer, f"ok {self.challenge}".encode())
        self.send_raw(self.seal("ok"))

    def say(self, text: str) -> list[str]:
        self.send_raw(self.seal(text))
        return self.open(self.line_raw()).split("\n")


def assert_served_promptly(server: RunningServer) -> None:
    """A second, ordinary DMAP client gets its greeting within 2 s."""
    with socket.create_connection(("127.0.0.1", server.ports["dmap"]), timeout=2) as sock:
        assert sock.makefile("rb").readline() == b"ok DMAP2.0\r\n"


def test_startsecure_full_session(server: RunningServer) -> None:
    # The private key is in the store (shared by every node), not in the data directory.
    assert not server.cfg.path("dmap/server_key.pem").exists()
    stored = server.run(server.services.store.get_secret("dmap.rsa_key"))
    assert stored is not None and stored.startswith("-----BEGIN")
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
    assert client.say("logout") == ["ok"]
    assert client.say("list") == ["error not logged in"]
    assert client.say(f"login {ALICE} {PASSWORD}") == ["ok"]
    assert client.say(f"delete {uid}") == ["ok"]
    assert client.say("quit") == ["ok bye"]
    assert client.conn.line() == ""
    client.conn.close()
    assert inbox_rows(server, ALICE) == []
    # Nothing readable went over the wire after the handshake.
    for _direction, line in client.wire[2:]:
        assert PASSWORD.encode() not in line and b"secret plans" not in line


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=False))


def old_attack(known_plain: bytes, known_line: bytes, target_line: bytes) -> bytes:
    """What broke the seed's channel: every line used the same keystream, so a line whose text
    is known gives the keystream, and the keystream gives any other line."""
    keystream = xor(known_plain, base64.b64decode(known_line))
    return xor(keystream, base64.b64decode(target_line))


def test_passive_attacker_learns_nothing(server: RunningServer) -> None:
    # The attacker mails Alice a message of their own, so they know the text of the server's
    # answer to "show", and records Alice's session from the wire.
    dmtp_send(server, BOB, ALICE, "hi", "x" * 200, None)
    [(uid, _f, _k)] = inbox_rows(server, ALICE)
    client = SecureClient(server)
    client.handshake(server.cfg.hostname)
    login = f"login {ALICE} {PASSWORD}"
    filler = "f" * len(login)  # a second client line of the same length
    assert client.say(login) == ["ok"]
    login_line = client.wire[-2][1]
    assert client.say(filler) == ["error unknown command"]
    filler_line = client.wire[-2][1]
    shown = client.say(f"show {uid}")
    known_line = client.wire[-1][1]
    client.conn.close()
    known_plain = "\n".join(shown).encode()
    # Two client lines of equal length: their XOR is not the XOR of their texts.
    c1, c2 = base64.b64decode(login_line)[:-16], base64.b64decode(filler_line)[:-16]
    assert len(c1) == len(c2) == len(login)
    assert xor(c1, c2) != xor(login.encode(), filler.encode())
    # The old attack gives nothing: neither the password nor the login line.
    recovered = old_attack(known_plain, known_line, login_line)
    assert PASSWORD.encode() not in recovered and not recovered.startswith(b"login")
    recovered = old_attack(filler.encode(), filler_line, login_line)
    assert PASSWORD.encode() not in recovered

    # The same attack on the seed's scheme (AES-CTR restarted at the IV for every line).
    def seed_line(text: bytes) -> bytes:
        ctx = Cipher(algorithms.AES(client.key), modes.CTR(client.iv)).encryptor()
        return base64.b64encode(ctx.update(text) + ctx.finalize())

    recovered = old_attack(known_plain, seed_line(known_plain), seed_line(login.encode()))
    assert recovered == login.encode()


@pytest.mark.parametrize("attack", ["replay", "reorder", "alter"])
def test_tampered_lines_end_the_session(server: RunningServer, attack: str) -> None:
    dmtp_send(server, BOB, ALICE, "keep me", "do not delete", None)
    [(uid, _f, _k)] = inbox_rows(server, ALICE)
    client = SecureClient(server)
    client.handshake(server.cfg.hostname)
    login = client.seal(f"login {ALICE} {PASSWORD}")
    client.send_raw(login)
    assert client.open(client.line_raw()) == "ok"
    if attack == "replay":  # the same line twice
        bad = client.seal("list")
        client.send_raw(bad)
        assert client.open(client.line_raw()) == f"{uid} {BOB} keep me\nok"
    elif attack == "reorder":  # the second of two lines first
        client.seal("list")
        bad = client.seal(f"delete {uid}")
    else:  # one bit flipped in "delete <uid>"
        data = bytearray(base64.b64decode(client.seal(f"delete {uid}")))
        data[len(data) // 2] ^= 0x01
        bad = base64.b64encode(bytes(data)).decode()
    client.send_raw(bad)
    answer = client.open(client.line_raw())
    assert answer == "error line altered, replayed or out of order, closing connection"
    assert client.conn.line() == ""  # closed
    client.conn.close()
    assert_served_promptly(server)
    assert [row[0] for row in inbox_rows(server, ALICE)] == [uid]  # nothing was deleted


def test_seed_clients_old_scheme_is_refused(server: RunningServer) -> None:
    """The seed's client (PKCS #1 v1.5 key wrap) cannot start a secure channel: README says so."""
    pem = server.cfg.path("dmap/server_pub.pem").read_bytes()
    public = serialization.load_pem_public_key(pem)
    assert isinstance(public, rsa.RSAPublicKey)
    client = LineClient(server.ports["dmap"])
    assert client.line() == "ok DMAP2.0"
    assert client.say("startsecure").startswith(f"ok {server.cfg.hostname} ")
    b64 = [base64.b64encode(os.urandom(n)).decode() for n in (32, 32, 16)]
    hello = public.encrypt(" ".join(["ok", *b64]).encode(), padding.PKCS1v15())
    assert client.say(base64.b64encode(hello).decode()) == "error startsecure failed"
    assert client.say(f"login {ALICE} {PASSWORD}") == "ok"  # plain DMAP still works
    client.close()


def test_startsecure_with_garbage_stays_usable(server: RunningServer) -> None:
    client = LineClient(server.ports["dmap"])
    client.line()
    assert client.say("startsecure").startswith(f"ok {server.cfg.hostname} ")
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


# -- hostile input ---------------------------------------------------------------------------


def assert_dmtp_served_promptly(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", server.ports["dmtp"]), timeout=2) as sock:
        assert sock.makefile("rb").readline() == b"ok DMTP2.0\r\n"


def test_dmtp_hostile_input(server: RunningServer) -> None:
    client = LineClient(server.ports["dmtp"])
    assert client.line() == "ok DMTP2.0"
    assert client.say("begin") == "ok"
    many = ",".join(f"user{i}@example.test" for i in range(5_000))
    assert client.say(f"to {many}") == "error too many recipients (at most 100)"
    assert_dmtp_served_promptly(server)
    assert client.say("data " + "y" * 1_000_000) == "error line too long"  # past the buffer too
    assert client.say("subject " + "x " * 100_000) == (
        "error subject too long (at most 998 characters)"
    )
    assert client.say("hash " + "h" * 1_000) == "error hash too long (at most 256 characters)"
    assert client.say("\x00\x01\x02\x7f\x1b[2J") == "error unknown command"
    client.sock.sendall(bytes(range(256)).replace(b"\n", b"") + b"\n")
    assert client.line() == "error unknown command"
    assert_dmtp_served_promptly(server)
    # Control characters in the fields still make a well-formed message.
    assert client.say(f"to {ALICE}") == "ok 1"
    assert client.say("from bob@example.test") == "ok"
    assert client.say("subject evil\x0b\x0c\x1c\x85\u2028 subject\x00") == "ok"
    assert client.say("data nul\x00 and\rcr") == "ok"
    assert client.say("send") == "ok"
    # A big awkward message (every CR becomes a line) while someone else connects.
    assert client.say("begin") == "ok"
    assert client.say(f"to {ALICE}") == "ok 1"
    for line in ["from bob@example.test", "subject big", "data " + "a\r" * 95_000]:
        assert client.say(line) == "ok"
    client.send("send")
    assert_dmtp_served_promptly(server)
    assert client.line() == "ok"
    for _ in range(10):
        client.send("junk")
    replies = [client.line() for _ in range(11)]
    assert replies == ["error unknown command"] * 10 + [
        "error too many errors, closing connection"
    ]
    assert client.line() == ""
    client.close()
    [(uid, _f, _k), (big, _f2, _k2)] = inbox_rows(server, ALICE)
    raw = stored_message(server, ALICE, uid)
    assert b"\x00" not in raw and b"Subject: evil" in raw
    assert stored_message(server, ALICE, big).count(b"\r\n") > 95_000
    reader = dmap_login(server)
    shown = reader.until_ok(f"show {uid}")
    assert shown[2].startswith("subject evil") and shown[3].startswith("data nul")
    reader.close()


def test_dmap_hostile_input(server: RunningServer) -> None:
    client = dmap_login(server)
    assert client.say("list " + "z" * 100_000) == "error line too long"
    client.sock.sendall(bytes(range(256)).replace(b"\n", b"") + b"\n")
    assert client.line() == "error unknown command"
    assert client.say("show \u00b2") == "error usage: show <id>"
    assert client.say("show 99999999999999999999999999") == "error unknown message id"
    assert client.say("delete 4294967296") == "error unknown message id"
    assert_served_promptly(server)
    client.close()

    # Failed handshakes (an RSA decryption each) count as errors and end the session.
    client = LineClient(server.ports["dmap"])
    client.line()
    garbage = base64.b64encode(os.urandom(256)).decode()
    answers = []
    for _ in range(10):
        assert client.say("startsecure").startswith("ok ")
        client.send(garbage)
        answers.append(client.line())
    assert answers == ["error startsecure failed"] * 10
    assert client.line() == "error too many errors, closing connection"
    assert client.line() == ""
    client.close()
    assert_served_promptly(server)

    # Inside the secure channel, an over-long line ends the session too.
    secure = SecureClient(server)
    secure.handshake(server.cfg.hostname)
    secure.send_raw("A" * 20_000)
    assert secure.open(secure.line_raw()) == "error line too long, closing connection"
    assert secure.conn.line() == ""
    secure.conn.close()
    assert_served_promptly(server)
