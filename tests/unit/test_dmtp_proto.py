"""Transcripts of the DMTP and DMAP state machines and the startsecure cryptography."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mailstead.proto import dmap_crypto
from mailstead.proto.dmap import (
    DmapMailbox,
    DmapRefused,
    DmapSession,
    ListedMessage,
    ShownMessage,
)
from mailstead.proto.dmtp import (
    DmtpMessage,
    DmtpRefused,
    DmtpSession,
    compute_hash,
    hash_verifies,
    to_rfc5322,
)

KEY = dmap_crypto.load_private_key(dmap_crypto.generate_private_key_pem())

# -- DMTP ------------------------------------------------------------------------------------


class FakeTransfer:
    def __init__(self) -> None:
        self.sent: list[DmtpMessage] = []

    async def check_recipient(self, address: str) -> None:
        if address.startswith("nobody@"):
            raise DmtpRefused(f"unknown recipient {address}")

    async def send(self, message: DmtpMessage) -> None:
        self.sent.append(message)


async def dmtp(session: DmtpSession, line: str) -> str:
    return (await session.receive(line.encode() + b"\n")).text


async def test_dmtp_full_message() -> None:
    backend = FakeTransfer()
    session = DmtpSession(backend, max_errors=10)
    assert session.greeting() == b"ok DMTP2.0\r\n"
    assert await dmtp(session, "begin") == "ok"
    assert await dmtp(session, "from alice@example.test") == "ok"
    assert await dmtp(session, "to bob@example.test, carol@example.org") == "ok 2"
    assert await dmtp(session, "subject hi  there") == "ok"
    assert await dmtp(session, "data some  text") == "ok"
    assert await dmtp(session, "hash abc=") == "ok"
    assert await dmtp(session, "send") == "ok"
    [sent] = backend.sent
    assert sent == DmtpMessage(
        "alice@example.test", ["bob@example.test", "carol@example.org"], "hi  there",
        "some  text", "abc=",
    )
    assert await dmtp(session, "send") == "error begin first"
    reply = await session.receive(b"quit\r\n")
    assert reply.wire == b"ok bye\r\n" and reply.close


async def test_dmtp_errors_keep_the_session() -> None:
    backend = FakeTransfer()
    session = DmtpSession(backend, max_errors=10)
    assert await dmtp(session, "from a@example.test") == "error begin first"
    assert await dmtp(session, "hello?") == "error unknown command"
    assert await dmtp(session, "") == "error empty line"
    await dmtp(session, "begin")
    assert await dmtp(session, "to nobody@example.test") == (
        "error unknown recipient nobody@example.test"
    )
    assert await dmtp(session, "to not an address") == "error invalid address not an address"
    assert await dmtp(session, "from @@") == "error invalid address"
    assert await dmtp(session, "subject") == "error subject expected"
    assert await dmtp(session, "send") == "error no from"
    await dmtp(session, "from a@example.test")
    assert await dmtp(session, "send") == "error no to"
    await dmtp(session, "to b@example.test")
    assert await dmtp(session, "send") == "error no subject"
    await dmtp(session, "subject s")
    assert await dmtp(session, "send") == "error no data"
    await dmtp(session, "data d")
    assert await dmtp(session, "send") == "ok"
    assert backend.sent[0].hash is None


async def test_dmtp_disconnects_after_many_errors_in_a_row() -> None:
    session = DmtpSession(FakeTransfer(), max_errors=3)
    for _ in range(2):
        assert not (await session.receive(b"junk\n")).close
    assert await dmtp(session, "begin") == "ok"  # a good command resets the count
    for _ in range(2):
        assert not (await session.receive(b"junk\n")).close
    reply = await session.receive(b"junk\n")
    assert reply.close and reply.text.endswith("error too many errors, closing connection")


def test_hash_matches_seed_definition() -> None:
    message = DmtpMessage("a@x.test", ["b@x.test", "c@x.test"], "s", "d", None)
    import hashlib
    import hmac

    expected = base64.b64encode(
        hmac.new(b"k", b"a@x.test\nb@x.test,c@x.test\ns\nd", hashlib.sha256).digest()
    ).decode()
    assert compute_hash("k", message.sender, message.recipients, "s", "d") == expected
    assert not hash_verifies("k", message)
    message.hash = expected
    assert hash_verifies("k", message)
    assert not hash_verifies("other", message)


def test_to_rfc5322() -> None:
    message = DmtpMessage("a@x.test", ["b@x.test", "c@y.test"], "Grüße\r", "text ünïcode", "h=")
    raw = to_rfc5322(
        message, date=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), message_id="<1@x.test>",
        integrity_failed=True,
    )
    assert b"\n" not in raw.replace(b"\r\n", b"")
    parsed = message_from_bytes(raw, policy=default)
    assert isinstance(parsed, EmailMessage)
    assert parsed["From"] == "a@x.test" and parsed["To"] == "b@x.test, c@y.test"
    assert parsed["Subject"] == "Grüße "
    assert parsed["X-DMTP-Hash"] == "h=" and parsed["X-DMTP-Integrity"] == "fail"
    assert parsed["Message-ID"] == "<1@x.test>"
    body = parsed.get_body()
    assert body is not None and body.get_content() == "text ünïcode\r\n"


# -- DMAP ------------------------------------------------------------------------------------


class FakeMailbox:
    def __init__(self) -> None:
        self.messages = {
            3: ShownMessage("bob@example.test", ["alice@example.test"], "hello", "hi\nthere", "h"),
            5: ShownMessage(
                "carol@example.org", ["alice@example.test", "x@y.test"], "two", "d", ""
            ),
        }

    async def list(self) -> list[ListedMessage]:
        return [ListedMessage(i, m.sender, m.subject) for i, m in self.messages.items()]

    async def show(self, message_id: int) -> ShownMessage:
        if message_id not in self.messages:
            raise DmapRefused("unknown message id")
        return self.messages[message_id]

    async def delete(self, message_id: int) -> None:
        if self.messages.pop(message_id, None) is None:
            raise DmapRefused("unknown message id")


class FakeMailboxServer:
    component_id = "mail.example.test"

    def __init__(self) -> None:
        self.mailbox = FakeMailbox()

    async def login(self, username: str, password: str) -> DmapMailbox:
        if (username, password) != ("alice@example.test", "pw pw"):
            raise DmapRefused("invalid credentials")
        return self.mailbox

    def server_key(self) -> rsa.RSAPrivateKey:
        return KEY


async def dmap(session: DmapSession, line: str) -> str:
    return (await session.receive(line.encode() + b"\r\n")).data.decode()


async def test_dmap_plain_session() -> None:
    session = DmapSession(FakeMailboxServer(), max_errors=10)
    assert session.greeting() == b"ok DMAP2.0\r\n"
    assert await dmap(session, "list") == "error not logged in\r\n"
    assert await dmap(session, "login alice@example.test nope") == "error invalid credentials\r\n"
    assert await dmap(session, "login alice@example.test pw pw") == "ok\r\n"
    assert await dmap(session, "login alice@example.test pw pw") == "error logout first\r\n"
    assert await dmap(session, "list") == (
        "3 bob@example.test hello\r\n5 carol@example.org two\r\nok\r\n"
    )
    assert await dmap(session, "show 3") == (
        "from bob@example.test\r\nto alice@example.test\r\nsubject hello\r\n"
        "data hi there\r\nhash h\r\nok\r\n"
    )
    assert (await dmap(session, "show 5")).startswith(
        "from carol@example.org\r\nto alice@example.test,x@y.test\r\n"
    )
    assert await dmap(session, "show 9") == "error unknown message id\r\n"
    assert await dmap(session, "show x") == "error usage: show <id>\r\n"
    assert await dmap(session, "delete 3") == "ok\r\n"
    assert await dmap(session, "delete 3") == "error unknown message id\r\n"
    assert await dmap(session, "whatever") == "error unknown command\r\n"
    assert await dmap(session, "logout") == "ok\r\n"
    assert await dmap(session, "show 5") == "error not logged in\r\n"
    reply = await session.receive(b"quit\r\n")
    assert reply.data == b"ok bye\r\n" and reply.close


class SeedClient:
    """The client half of startsecure, as the seed's Java client does it (PKCS #1 v1.5)."""

    def __init__(self, oaep: bool = False) -> None:
        self.challenge = base64.b64encode(os.urandom(32)).decode()
        self.key, self.iv = os.urandom(32), os.urandom(16)
        self.oaep = oaep

    def hello(self, public_key: rsa.RSAPublicKey) -> str:
        text = (
            f"ok {self.challenge} {base64.b64encode(self.key).decode()} "
            f"{base64.b64encode(self.iv).decode()}"
        ).encode()
        pad: padding.AsymmetricPadding = padding.PKCS1v15()
        if self.oaep:
            pad = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
        return base64.b64encode(public_key.encrypt(text, pad)).decode()

    def _ctr(self, data: bytes) -> bytes:
        ctx = Cipher(algorithms.AES(self.key), modes.CTR(self.iv)).encryptor()
        return ctx.update(data) + ctx.finalize()

    def encrypt(self, text: str) -> str:
        return base64.b64encode(self._ctr(text.encode())).decode()

    def decrypt(self, line: str) -> str:
        return self._ctr(base64.b64decode(line)).decode()


@pytest.mark.parametrize("oaep", [False, True])
@pytest.mark.parametrize("clear_confirmation", [False, True])
async def test_dmap_startsecure_session(oaep: bool, clear_confirmation: bool) -> None:
    session = DmapSession(FakeMailboxServer(), max_errors=10)
    client = SeedClient(oaep)
    assert await dmap(session, "startsecure") == "ok mail.example.test\r\n"
    answer = await dmap(session, client.hello(KEY.public_key()))
    assert client.decrypt(answer.strip()) == f"ok {client.challenge}"
    confirmation = "ok" if clear_confirmation else client.encrypt("ok")
    assert await dmap(session, confirmation) == ""
    reply = await dmap(session, client.encrypt("login alice@example.test pw pw"))
    assert client.decrypt(reply.strip()) == "ok"
    reply = await dmap(session, client.encrypt("list"))
    assert reply.endswith("\r\n") and reply.count("\n") == 1  # one line on the wire
    assert client.decrypt(reply) == "3 bob@example.test hello\n5 carol@example.org two\nok"
    reply = await dmap(session, client.encrypt("show 3"))
    assert client.decrypt(reply).split("\n") == [
        "from bob@example.test", "to alice@example.test", "subject hello", "data hi there",
        "hash h", "ok",
    ]
    reply = await dmap(session, client.encrypt("bogus"))
    assert client.decrypt(reply) == "error unknown command"
    reply = await dmap(session, "not base64 !!")
    assert client.decrypt(reply) == "error expected a base64 encrypted line"
    reply = await dmap(session, client.encrypt("startsecure"))
    assert client.decrypt(reply) == "error already secure"
    result = await session.receive(client.encrypt("quit").encode() + b"\r\n")
    assert client.decrypt(result.data.decode()) == "ok bye" and result.close


def test_every_line_restarts_the_keystream_like_the_seed() -> None:
    # The seed's test expects encrypt("ok") to be a prefix of encrypt("ok <challenge>").
    cipher = dmap_crypto.LineCipher(b"k" * 32, b"i" * 16)
    long = base64.b64decode(cipher.encrypt("ok challenge"))
    short = base64.b64decode(cipher.encrypt("ok"))
    assert long.startswith(short)
    assert cipher.decrypt(cipher.encrypt("ok ü")) == "ok ü"


@pytest.mark.parametrize(
    "hello",
    [
        "garbage",
        base64.b64encode(b"x" * 256).decode(),
        "",
    ],
)
async def test_dmap_bad_handshake_answers_error_and_stays_plain(hello: str) -> None:
    session = DmapSession(FakeMailboxServer(), max_errors=10)
    await dmap(session, "startsecure")
    assert await dmap(session, hello) == "error startsecure failed\r\n"
    assert await dmap(session, "login alice@example.test pw pw") == "ok\r\n"


async def test_dmap_handshake_with_wrong_fields() -> None:
    session = DmapSession(FakeMailboxServer(), max_errors=10)
    await dmap(session, "startsecure")
    blob = KEY.public_key().encrypt(b"ok only three", padding.PKCS1v15())
    assert await dmap(session, base64.b64encode(blob).decode()) == "error startsecure failed\r\n"
    await dmap(session, "startsecure")
    bad_key = f"ok {base64.b64encode(b'c').decode()} {base64.b64encode(b'short').decode()} " + (
        base64.b64encode(b"i" * 16).decode()
    )
    blob = KEY.public_key().encrypt(bad_key.encode(), padding.PKCS1v15())
    assert await dmap(session, base64.b64encode(blob).decode()) == "error startsecure failed\r\n"


async def test_dmap_unconfirmed_handshake_falls_back_to_plain() -> None:
    session = DmapSession(FakeMailboxServer(), max_errors=10)
    client = SeedClient()
    await dmap(session, "startsecure")
    await dmap(session, client.hello(KEY.public_key()))
    assert await dmap(session, "nope") == "error startsecure not confirmed\r\n"
    assert await dmap(session, "list") == "error not logged in\r\n"


def test_public_key_pem_round_trip() -> None:
    pem = dmap_crypto.public_key_pem(KEY)
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
