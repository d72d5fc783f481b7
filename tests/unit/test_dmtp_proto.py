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
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

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
        integrity="fail",
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


@pytest.mark.parametrize("text", [
    "nul\x00here", "tab\there", "vt\x0bff\x0cfs\x1c", "esc\x1b[31m", "nel\x85ls\u2028ps\u2029",
    "del\x7f", "cr\rlf\n", "\ufffd\ufffe",
])
def test_to_rfc5322_survives_control_characters(text: str) -> None:
    message = DmtpMessage("a@x.test", ["b@x.test"], text, text, text)
    raw = to_rfc5322(message, date=datetime(2024, 1, 2, tzinfo=UTC), message_id="<1@x.test>",
                     integrity=None)
    assert b"\x00" not in raw
    assert b"\n" not in raw.replace(b"\r\n", b"") and b"\r" not in raw.replace(b"\r\n", b"")
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    assert not any(ord(c) < 0x20 and c not in "\t\r\n" for c in head)
    parsed = message_from_bytes(raw, policy=default)
    assert isinstance(parsed, EmailMessage) and parsed["From"] == "a@x.test"
    assert str(parsed["Subject"]).startswith(text[:2])  # the rest of the text is kept


async def test_dmtp_too_many_recipients_costs_no_lookups() -> None:
    class Counting(FakeTransfer):
        checked = 0

        async def check_recipient(self, address: str) -> None:
            self.checked += 1

    backend = Counting()
    session = DmtpSession(backend, max_errors=10, max_recipients=5)
    await dmtp(session, "begin")
    many = ",".join(f"u{i}@example.test" for i in range(10_000))
    assert await dmtp(session, f"to {many}") == "error too many recipients (at most 5)"
    assert backend.checked == 0
    five = ",".join(f"u{i}@example.test" for i in range(5))
    assert await dmtp(session, f"to {five},,") == "ok 5"


async def test_dmtp_header_fields_are_bounded() -> None:
    session = DmtpSession(FakeTransfer(), max_errors=10)
    await dmtp(session, "begin")
    assert await dmtp(session, "subject " + "s" * 999) == (
        "error subject too long (at most 998 characters)"
    )
    assert await dmtp(session, "subject " + "s" * 998) == "ok"
    assert await dmtp(session, "hash " + "h" * 257) == (
        "error hash too long (at most 256 characters)"
    )
    assert await dmtp(session, "hash " + "h" * 44) == "ok"


async def test_dmtp_binary_garbage() -> None:
    session = DmtpSession(FakeTransfer(), max_errors=3)
    garbage = bytes(range(256)).replace(b"\n", b"") + b"\n"
    assert (await session.receive(garbage)).text == "error unknown command"
    assert (await session.receive(b"\xff\xfe\x00\n")).text == "error unknown command"
    reply = await session.receive(b"\x00\n")
    assert reply.close


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


class Peer:
    """The client half, written from the protocol's description with `cryptography` directly
    (not with dmap_crypto), so the tests check the documented wire format."""

    def __init__(self, key_size: int = 32) -> None:
        self.challenge = base64.b64encode(os.urandom(32)).decode()
        self.key, self.iv = os.urandom(key_size), os.urandom(16)
        self.sent = self.received = 0
        self.c2s = self.s2c = b""

    def hello(self, public_key: rsa.RSAPublicKey, pad: padding.AsymmetricPadding | None = None,
              text: str | None = None) -> str:
        if text is None:
            text = (f"ok {self.challenge} {base64.b64encode(self.key).decode()} "
                    f"{base64.b64encode(self.iv).decode()}")
        if pad is None:
            pad = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
        return base64.b64encode(public_key.encrypt(text.encode(), pad)).decode()

    def start(self, server_line: str) -> None:
        assert server_line.startswith("ok mail.example.test ")
        nonce = base64.b64decode(server_line.split()[2])
        assert len(nonce) == 16

        def derive(label: bytes) -> bytes:
            return HKDF(hashes.SHA256(), 32, nonce, b"mailstead dmap v1 " + label).derive(
                self.key + self.iv)

        self.c2s, self.s2c = derive(b"c2s"), derive(b"s2c")

    def encrypt(self, text: str) -> str:
        nonce = b"c2s\0" + self.sent.to_bytes(8, "big")
        self.sent += 1
        return base64.b64encode(AESGCM(self.c2s).encrypt(nonce, text.encode(), None)).decode()

    def decrypt(self, line: str) -> str:
        nonce = b"s2c\0" + self.received.to_bytes(8, "big")
        self.received += 1
        return AESGCM(self.s2c).decrypt(nonce, base64.b64decode(line.strip()), None).decode()


async def secure_session(peer: Peer) -> DmapSession:
    session = DmapSession(FakeMailboxServer(), max_errors=10)
    peer.start((await dmap(session, "startsecure")).strip())
    answer = await dmap(session, peer.hello(KEY.public_key()))
    assert answer.endswith("\r\n") and answer.count("\n") == 1
    assert peer.decrypt(answer) == f"ok {peer.challenge}"
    assert await dmap(session, peer.encrypt("ok")) == ""
    return session


@pytest.mark.parametrize("key_size", [16, 32])
async def test_dmap_startsecure_session(key_size: int) -> None:
    client = Peer(key_size)
    session = await secure_session(client)
    reply = await dmap(session, client.encrypt("login alice@example.test pw pw"))
    assert client.decrypt(reply) == "ok"
    reply = await dmap(session, client.encrypt("list"))
    assert reply.endswith("\r\n") and reply.count("\n") == 1  # one line on the wire
    assert client.decrypt(reply) == "3 bob@example.test hello\n5 carol@example.org two\nok"
    reply = await dmap(session, client.encrypt("show 3"))
    assert client.decrypt(reply).split("\n") == [
        "from bob@example.test", "to alice@example.test", "subject hello", "data hi there",
        "hash h", "ok",
    ]
    reply = await dmap(session, client.encrypt("bogus"))
    assert client.decrypt(reply) == "error unknown command"  # ordinary errors keep the session
    reply = await dmap(session, client.encrypt("startsecure"))
    assert client.decrypt(reply) == "error already secure"
    result = await session.receive(client.encrypt("quit").encode() + b"\r\n")
    assert client.decrypt(result.data.decode()) == "ok bye" and result.close


async def test_dmap_repo_client_half_talks_to_the_server() -> None:
    session = DmapSession(FakeMailboxServer(), max_errors=10)
    client = dmap_crypto.ClientHandshake(KEY.public_key())
    server_line = (await dmap(session, "startsecure")).strip()
    answer = await dmap(session, client.hello())
    channel, confirmation = client.finish(server_line, answer)
    assert await dmap(session, confirmation) == ""
    reply = await dmap(session, channel.seal("login alice@example.test pw pw"))
    assert channel.open(reply) == "ok"


def channel_pair(nonce: bytes = b"n" * 16) -> tuple[dmap_crypto.SecureChannel,
                                                    dmap_crypto.SecureChannel]:
    key, iv = os.urandom(32), os.urandom(16)
    return (dmap_crypto.SecureChannel(key, iv, nonce, server=False),
            dmap_crypto.SecureChannel(key, iv, nonce, server=True))


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def test_no_two_lines_share_a_keystream() -> None:
    client, _server = channel_pair()
    first, second = "login alice@example.test pw", "list and some padding text!"
    assert len(first) == len(second)
    c1 = base64.b64decode(client.seal(first))[:-16]
    c2 = base64.b64decode(client.seal(second))[:-16]
    assert xor(c1, c2) != xor(first.encode(), second.encode())
    # The same text twice, and the same text each way at the same counter: all different.
    again = [client.seal("ok"), client.seal("ok")]
    assert again[0] != again[1]
    fresh_client, fresh_server = channel_pair()
    assert fresh_client.seal("ok") != fresh_server.seal("ok")


def test_directions_have_their_own_keys() -> None:
    c2s, s2c = dmap_crypto.derive_keys(b"k" * 32, b"i" * 16, b"n" * 16)
    assert c2s != s2c and len(c2s) == len(s2c) == 32
    other = dmap_crypto.derive_keys(b"k" * 32, b"i" * 16, b"m" * 16)
    assert not {c2s, s2c} & set(other)  # another server nonce: other keys
    for bad in [(b"k" * 31, b"i" * 16, b"n" * 16), (b"k" * 32, b"i" * 12, b"n" * 16),
                (b"k" * 32, b"i" * 16, b"n" * 8)]:
        with pytest.raises(ValueError):
            dmap_crypto.derive_keys(*bad)


def flip_bit(line: str) -> str:
    data = bytearray(base64.b64decode(line))
    data[0] ^= 1
    return base64.b64encode(bytes(data)).decode()


@pytest.mark.parametrize("attack", ["replay", "reorder", "alter", "drop", "reflect", "truncate",
                                    "not base64"])
def test_channel_refuses_lines_out_of_turn(attack: str) -> None:
    client, server = channel_pair()
    lines = [client.seal("list"), client.seal("show 3"), client.seal("delete 3")]
    assert server.open(lines[0]) == "list"
    bad = {
        "replay": lines[0],
        "reorder": lines[2],
        "alter": flip_bit(lines[1]),
        "drop": lines[2],
        "reflect": server.seal("show 3"),  # the server's own line sent back to it
        "truncate": lines[1][:8],
        "not base64": "show 3",
    }[attack]
    with pytest.raises(dmap_crypto.ChannelError):
        server.open(bad)
    assert server.broken
    with pytest.raises(dmap_crypto.ChannelError):  # and it stays broken
        server.open(lines[1])


def test_counter_never_wraps() -> None:
    client, _server = channel_pair()
    client._out.counter = dmap_crypto.MAX_COUNTER
    client.seal("last")
    with pytest.raises(dmap_crypto.ChannelError):
        client.seal("one too many")


@pytest.mark.parametrize("attack", ["replay", "reorder", "alter"])
async def test_dmap_secure_session_closes_on_a_bad_line(attack: str) -> None:
    client = Peer()
    session = await secure_session(client)
    login = client.encrypt("login alice@example.test pw pw")
    assert client.decrypt(await dmap(session, login)) == "ok"
    first, second = client.encrypt("list"), client.encrypt("show 3")
    bad = {"replay": login, "reorder": second, "alter": flip_bit(first)}[attack]
    result = await session.receive(bad.encode() + b"\r\n")
    assert result.close
    assert client.decrypt(result.data.decode()) == (
        "error line altered, replayed or out of order, closing connection"
    )


async def test_dmap_secure_line_too_long_closes() -> None:
    client = Peer()
    session = await secure_session(client)
    result = session.line_too_long()
    assert result.close and client.decrypt(result.data.decode()).startswith("error line too long")


async def test_captured_session_cannot_be_replayed_on_a_new_connection() -> None:
    client = Peer()
    original = FakeMailboxServer()
    session = DmapSession(original, max_errors=10)
    client.start((await dmap(session, "startsecure")).strip())
    captured = [client.hello(KEY.public_key())]
    await dmap(session, captured[0])
    captured += [client.encrypt("ok"), client.encrypt("login alice@example.test pw pw"),
                 client.encrypt("delete 3")]
    for line in captured[1:]:
        await dmap(session, line)
    assert 3 not in original.mailbox.messages
    # An attacker replays every captured line into a new connection: it gets a new server
    # nonce, so new keys, and the first sealed line is refused.
    target = FakeMailboxServer()
    replayed = DmapSession(target, max_errors=10)
    await dmap(replayed, "startsecure")
    await dmap(replayed, captured[0])
    result = await replayed.receive(captured[1].encode() + b"\r\n")
    assert result.close and replayed.channel.value == "secure" and replayed.mailbox is None
    assert 3 in target.mailbox.messages


async def test_dmap_old_seed_padding_is_refused() -> None:
    session = DmapSession(FakeMailboxServer(), max_errors=10)
    client = Peer()
    await dmap(session, "startsecure")
    hello = client.hello(KEY.public_key(), padding.PKCS1v15())
    assert await dmap(session, hello) == "error startsecure failed\r\n"
    assert await dmap(session, "login alice@example.test pw pw") == "ok\r\n"  # still plain


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


@pytest.mark.parametrize("text", [
    "ok only three",
    "ok {c} {short} {iv}",
    "ok = {key} {iv}",
    "ok {c} {key} {short}",
    "no {c} {key} {iv}",
])
async def test_dmap_handshake_with_wrong_fields(text: str) -> None:
    session = DmapSession(FakeMailboxServer(), max_errors=10)
    await dmap(session, "startsecure")
    b64 = {name: base64.b64encode(value).decode() for name, value in [
        ("c", os.urandom(32)), ("short", b"short"), ("key", os.urandom(32)),
        ("iv", os.urandom(16))]}
    hello = Peer().hello(KEY.public_key(), text=text.format(**b64))
    assert await dmap(session, hello) == "error startsecure failed\r\n"


@pytest.mark.parametrize("confirmation", ["nope", "ok", "bad"])
async def test_dmap_unconfirmed_handshake_closes(confirmation: str) -> None:
    session = DmapSession(FakeMailboxServer(), max_errors=10)
    client = Peer()
    client.start((await dmap(session, "startsecure")).strip())
    client.decrypt(await dmap(session, client.hello(KEY.public_key())))
    line = client.encrypt("not ok") if confirmation == "bad" else confirmation
    result = await session.receive(line.encode() + b"\r\n")
    assert result.close
    assert client.decrypt(result.data.decode()) == (
        "error startsecure not confirmed, closing connection"
    )


async def test_client_half_checks_the_challenge_and_the_nonce() -> None:
    session = DmapSession(FakeMailboxServer(), max_errors=10)
    client = dmap_crypto.ClientHandshake(KEY.public_key())
    server_line = (await dmap(session, "startsecure")).strip()
    # A server without the RSA private key cannot read the challenge, only guess it.
    impostor = dmap_crypto.SecureChannel(client.secret_key, client.iv,
                                         base64.b64decode(server_line.split()[2]), server=True)
    with pytest.raises(dmap_crypto.HandshakeError):
        client.finish(server_line, impostor.seal("ok guessed-challenge"))
    answer = await dmap(session, client.hello())
    tampered = server_line.split()
    tampered[2] = base64.b64encode(b"x" * 16).decode()  # a man in the middle changed the nonce
    with pytest.raises(dmap_crypto.HandshakeError):
        client.finish(" ".join(tampered), answer)
    with pytest.raises(dmap_crypto.HandshakeError):
        client.finish("ok mail.example.test", answer)


@pytest.mark.parametrize("argument", ["\u00b2", "\u0661", "1.5", "-1", "99999999999999999999999",
                                      "4294967296", "0"])
async def test_dmap_odd_message_ids(argument: str) -> None:
    session = DmapSession(FakeMailboxServer(), max_errors=50)
    await dmap(session, "login alice@example.test pw pw")
    for command in ("show", "delete"):
        answer = await dmap(session, f"{command} {argument}")
        assert answer in (f"error usage: {command} <id>\r\n", "error unknown message id\r\n")


async def test_dmap_failed_handshakes_add_up() -> None:
    session = DmapSession(FakeMailboxServer(), max_errors=3)
    garbage = base64.b64encode(b"x" * 256).decode()
    replies = []
    for _ in range(3):
        assert (await dmap(session, "startsecure")).startswith("ok mail.example.test ")
        replies.append(await session.receive(garbage.encode() + b"\r\n"))
    assert [r.close for r in replies] == [False, False, True]


def test_public_key_pem_round_trip() -> None:
    pem = dmap_crypto.public_key_pem(KEY)
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
