"""Byte transcripts of the POP3 state machine against an in-memory maildrop."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstead.proto.pop3 import (
    Maildrop,
    Pop3Message,
    Pop3Session,
    Refused,
    State,
    dot_stuffed,
    message_lines,
)

MESSAGES = [
    b"Subject: one\r\nFrom: a@example.test\r\n\r\nfirst body\r\n",
    b"Subject: two\r\n\r\n.starts with a dot\r\n..two dots\r\nline 3\r\nline 4\r\n",
    b"Subject: three\n\nbare LF body\n",
]


class FakeMaildrop:
    def __init__(self, messages: list[bytes], corrupt: set[int] | None = None) -> None:
        self.data = messages
        self.corrupt = corrupt or set()
        self.committed: tuple[list[int], list[int]] | None = None
        self.released = 0

    @property
    def messages(self) -> Sequence[Pop3Message]:
        return [Pop3Message(f"7.{i + 1}", len(m)) for i, m in enumerate(self.data)]

    async def fetch(self, index: int) -> bytes:
        if index in self.corrupt:
            raise Refused("SYS/PERM", "message is damaged")
        return self.data[index]

    async def commit(self, deleted: Sequence[int], retrieved: Sequence[int]) -> int:
        self.committed = (list(deleted), list(retrieved))
        return len(deleted)

    def release(self) -> None:
        self.released += 1


class FakeBackend:
    def __init__(self, maildrop: FakeMaildrop) -> None:
        self.maildrop = maildrop
        self.logins: list[tuple[str, str]] = []
        self.in_use = False
        self.locked_out = False

    async def open_maildrop(self, username: str, password: str) -> Maildrop:
        self.logins.append((username, password))
        if self.locked_out:
            raise Refused("SYS/TEMP", "too many failed logins, try again later")
        if (username, password) != ("alice@example.test", "pw with space"):
            raise Refused("AUTH", "invalid credentials")
        if self.in_use:
            raise Refused("IN-USE", "mailbox in use by another POP3 session")
        return self.maildrop


def make(
    *, tls: bool = True, tls_available: bool = True, plaintext: bool = False, max_errors: int = 10,
    corrupt: set[int] | None = None,
) -> tuple[Pop3Session, FakeBackend]:
    backend = FakeBackend(FakeMaildrop(list(MESSAGES), corrupt))
    session = Pop3Session(
        backend, tls_active=tls, tls_available=tls_available, plaintext_allowed=plaintext,
        max_errors=max_errors,
    )
    return session, backend


async def say(session: Pop3Session, line: str) -> bytes:
    return (await session.receive(line.encode() + b"\r\n")).data


async def logged_in(**kwargs: object) -> tuple[Pop3Session, FakeBackend]:
    session, backend = make(**kwargs)  # type: ignore[arg-type]
    assert await say(session, "USER alice@example.test") == b"+OK send PASS\r\n"
    reply = await say(session, "PASS pw with space")
    assert reply.startswith(b"+OK maildrop has 3 messages"), reply
    return session, backend


async def test_greeting_and_capa_before_tls() -> None:
    session, _ = make(tls=False)
    assert session.greeting().startswith(b"+OK ")
    capa = await say(session, "CAPA")
    lines = capa.split(b"\r\n")
    assert lines[0].startswith(b"+OK")
    assert b"STLS" in lines and b"UIDL" in lines and b"TOP" in lines
    assert b"RESP-CODES" in lines and b"AUTH-RESP-CODE" in lines
    assert b"USER" not in lines and not any(x.startswith(b"SASL") for x in lines)
    assert capa.endswith(b"\r\n.\r\n")


async def test_capa_after_tls_offers_logins_not_stls() -> None:
    session, _ = make(tls=True)
    lines = (await say(session, "capa")).split(b"\r\n")
    assert b"USER" in lines and b"SASL PLAIN LOGIN" in lines and b"STLS" not in lines


async def test_plaintext_login_refused_without_tls() -> None:
    session, backend = make(tls=False)
    assert await say(session, "USER alice@example.test") == (
        b"-ERR [AUTH] TLS required: use STLS first\r\n"
    )
    assert (await say(session, "AUTH PLAIN AGFsaWNlAHB3")).startswith(b"-ERR [AUTH] TLS required")
    assert backend.logins == []


async def test_plaintext_allowed_on_loopback_when_configured() -> None:
    session, _ = await logged_in(tls=False, plaintext=True)
    assert session.state is State.TRANSACTION


async def test_stls_then_login() -> None:
    session, _ = make(tls=False)
    reply = await session.receive(b"STLS\r\n")
    assert reply.data == b"+OK Begin TLS negotiation\r\n" and reply.start_tls
    session.tls_started()
    assert (await say(session, "STLS")).startswith(b"-ERR")
    assert await say(session, "USER alice@example.test") == b"+OK send PASS\r\n"


async def test_stls_unavailable() -> None:
    session, _ = make(tls=False, tls_available=False)
    assert (await say(session, "STLS")).startswith(b"-ERR")
    assert b"STLS" not in (await say(session, "CAPA")).split(b"\r\n")


async def test_bad_password_gives_auth_code() -> None:
    session, _ = make()
    await say(session, "USER alice@example.test")
    assert await say(session, "PASS wrong") == b"-ERR [AUTH] invalid credentials\r\n"
    assert session.state is State.AUTHORIZATION
    assert await say(session, "PASS pw with space") == b"-ERR USER first\r\n"


async def test_lockout_and_in_use_codes() -> None:
    session, backend = make()
    backend.locked_out = True
    await say(session, "USER alice@example.test")
    assert (await say(session, "PASS pw with space")).startswith(b"-ERR [SYS/TEMP] ")
    backend.locked_out, backend.in_use = False, True
    await say(session, "USER alice@example.test")
    assert (await say(session, "PASS pw with space")).startswith(b"-ERR [IN-USE] ")


async def test_auth_plain_initial_response() -> None:
    session, backend = make()
    token = base64.b64encode(b"\0alice@example.test\0pw with space").decode()
    assert (await say(session, f"AUTH PLAIN {token}")).startswith(b"+OK maildrop has 3")
    assert backend.logins == [("alice@example.test", "pw with space")]


async def test_auth_plain_continuation_and_authzid() -> None:
    session, _ = make()
    assert await say(session, "AUTH PLAIN") == b"+ \r\n"
    token = base64.b64encode(b"bob@example.test\0alice@example.test\0pw with space").decode()
    assert (await say(session, token)).startswith(b"-ERR [AUTH] ")
    assert await say(session, "AUTH plain") == b"+ \r\n"
    token = base64.b64encode(b"alice@example.test\0alice@example.test\0pw with space").decode()
    assert (await say(session, token)).startswith(b"+OK")


async def test_auth_login_prompts() -> None:
    session, _ = make()
    assert await say(session, "AUTH LOGIN") == b"+ VXNlcm5hbWU6\r\n"
    assert await say(session, base64.b64encode(b"alice@example.test").decode()) == (
        b"+ UGFzc3dvcmQ6\r\n"
    )
    assert (await say(session, base64.b64encode(b"pw with space").decode())).startswith(b"+OK")


async def test_auth_login_with_initial_username() -> None:
    session, _ = make()
    user = base64.b64encode(b"alice@example.test").decode()
    assert await say(session, f"AUTH LOGIN {user}") == b"+ UGFzc3dvcmQ6\r\n"
    assert (await say(session, base64.b64encode(b"pw with space").decode())).startswith(b"+OK")


async def test_auth_cancel_bad_base64_unknown_mechanism() -> None:
    session, _ = make()
    await say(session, "AUTH PLAIN")
    assert await say(session, "*") == b"-ERR authentication cancelled\r\n"
    await say(session, "AUTH PLAIN")
    assert await say(session, "not base64!!") == b"-ERR invalid base64 in SASL response\r\n"
    assert (await say(session, "AUTH CRAM-MD5")).startswith(b"-ERR unsupported")
    listing = await say(session, "AUTH")
    assert listing.startswith(b"+OK") and b"\r\nPLAIN\r\nLOGIN\r\n.\r\n" in listing
    assert session.state is State.AUTHORIZATION


async def test_stat_list_uidl() -> None:
    session, _ = await logged_in()
    sizes = [len(m) for m in MESSAGES]
    assert await say(session, "STAT") == f"+OK 3 {sum(sizes)}\r\n".encode()
    assert await say(session, "LIST") == (
        f"+OK 3 messages ({sum(sizes)} octets)\r\n1 {sizes[0]}\r\n2 {sizes[1]}\r\n"
        f"3 {sizes[2]}\r\n.\r\n"
    ).encode()
    assert await say(session, "LIST 2") == f"+OK 2 {sizes[1]}\r\n".encode()
    assert await say(session, "UIDL") == (
        b"+OK unique-id listing follows\r\n1 7.1\r\n2 7.2\r\n3 7.3\r\n.\r\n"
    )
    assert await say(session, "UIDL 3") == b"+OK 3 7.3\r\n"
    assert await say(session, "LIST 4") == b"-ERR no such message\r\n"
    assert await say(session, "LIST 0") == b"-ERR no such message\r\n"
    assert await say(session, "LIST x") == b"-ERR invalid message number\r\n"


async def test_retr_dot_stuffs_and_normalises_line_endings() -> None:
    session, _ = await logged_in()
    reply = await say(session, "RETR 2")
    assert reply == (
        f"+OK {len(MESSAGES[1])} octets\r\n".encode()
        + b"Subject: two\r\n\r\n..starts with a dot\r\n...two dots\r\n"
        b"line 3\r\nline 4\r\n.\r\n"
    )
    assert await say(session, "RETR 3") == (
        f"+OK {len(MESSAGES[2]) + 3} octets\r\n".encode()
        + b"Subject: three\r\n\r\nbare LF body\r\n.\r\n"
    )


async def test_top() -> None:
    session, _ = await logged_in()
    assert await say(session, "TOP 2 1") == (
        b"+OK top of message follows\r\nSubject: two\r\n\r\n..starts with a dot\r\n.\r\n"
    )
    assert await say(session, "TOP 2 0") == (
        b"+OK top of message follows\r\nSubject: two\r\n\r\n.\r\n"
    )
    assert await say(session, "TOP 2 100") == (await say(session, "RETR 2")).replace(
        f"+OK {len(MESSAGES[1])} octets".encode(), b"+OK top of message follows"
    )
    assert (await say(session, "TOP 2")).startswith(b"-ERR")


async def test_dele_rset_and_quit_commits() -> None:
    session, backend = await logged_in()
    assert await say(session, "DELE 1") == b"+OK message 1 deleted\r\n"
    assert await say(session, "DELE 1") == b"-ERR message 1 already deleted\r\n"
    assert await say(session, "RETR 1") == b"-ERR message 1 already deleted\r\n"
    assert (await say(session, "LIST")).count(b"\r\n") == 4  # +OK, 2 lines, dot
    assert (await say(session, "STAT")).startswith(b"+OK 2 ")
    assert (await say(session, "RSET")).startswith(b"+OK maildrop has 3 messages")
    await say(session, "DELE 3")
    await say(session, "RETR 2")
    reply = await session.receive(b"QUIT\r\n")
    assert reply.data == b"+OK bye (1 messages deleted)\r\n" and reply.close
    assert backend.maildrop.committed == ([2], [1])
    assert backend.maildrop.released == 1
    assert session.closed


async def test_dropped_connection_deletes_nothing() -> None:
    session, backend = await logged_in()
    await say(session, "DELE 1")
    session.abort()
    session.abort()
    assert backend.maildrop.committed is None
    assert backend.maildrop.released == 1


async def test_quit_in_authorization_does_not_commit() -> None:
    session, backend = make()
    reply = await session.receive(b"QUIT\r\n")
    assert reply.data == b"+OK bye\r\n" and reply.close
    assert backend.maildrop.committed is None


async def test_corrupt_message_is_refused_not_served() -> None:
    session, _ = await logged_in(corrupt={0})
    assert await say(session, "RETR 1") == b"-ERR [SYS/PERM] message is damaged\r\n"
    assert (await say(session, "RETR 2")).startswith(b"+OK")


async def test_state_and_unknown_commands() -> None:
    session, _ = make()
    assert await say(session, "STAT") == b"-ERR STAT not allowed in this state\r\n"
    assert await say(session, "FOO") == b"-ERR unknown command\r\n"
    session, _ = await logged_in()
    assert await say(session, "USER x") == b"-ERR USER not allowed in this state\r\n"
    assert await say(session, "noop") == b"+OK\r\n"


async def test_too_many_errors_disconnects() -> None:
    session, backend = await logged_in(max_errors=3)
    await say(session, "FOO")
    await say(session, "FOO")
    reply = await session.receive(b"FOO\r\n")
    assert reply.close and reply.data.endswith(b"-ERR too many errors, closing connection\r\n")
    assert backend.maildrop.released == 1 and backend.maildrop.committed is None


@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))))
def test_dot_stuffing_round_trips(lines: list[bytes]) -> None:
    wire = dot_stuffed(lines)
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    received = wire.split(b"\r\n")[:-2]  # drop the terminating "." and the empty tail
    assert [line[1:] if line.startswith(b".") else line for line in received] == lines
    assert b"\r\n.\r\n" not in b"\r\n" + wire[:-3]


def test_message_lines_handles_missing_final_newline() -> None:
    assert message_lines(b"a\r\nb") == [b"a", b"b"]
    assert message_lines(b"a\r\n\r\n") == [b"a", b""]
    assert message_lines(b"") == []


@pytest.mark.parametrize("line", [b"PASS\r\n", b"\r\n", b"\xff\xfe\r\n"])
async def test_junk_is_answered(line: bytes) -> None:
    session, _ = make()
    reply = await session.receive(line)
    assert reply.data.startswith(b"-ERR") and not reply.close
