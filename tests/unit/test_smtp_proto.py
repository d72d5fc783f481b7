"""The SMTP session state machine and DATA framing, driven with byte strings and a fake backend."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstead.core.addresses import Address
from mailstead.core.errors import QuotaExceeded
from mailstead.proto import lines as lines_module
from mailstead.proto.lines import (
    LINE_TOO_LONG,
    OFF_LOOP_SIZE,
    DataProblem,
    DotReader,
    InputBuffer,
    dot_stuff,
    dot_unstuff,
    has_bare_cr_or_lf,
    normalize_line_ends,
)
from mailstead.proto.smtp import (
    Action,
    AuthRefused,
    QuotaState,
    Reply,
    SessionPolicy,
    SmtpSession,
    Transaction,
)
from mailstead.store.interfaces import Account

T = TypeVar("T")

PASSWORD = "pw-correct"


def account(address: str, account_id: int, quota_bytes: int = 0) -> Account:
    return Account(account_id, address, address.partition("@")[2], "hash", quota_bytes, 0,
                   False, datetime.now(UTC))


@dataclass
class Route:
    local: list[Account] = field(default_factory=list)
    remote: list[str] = field(default_factory=list)


class FakeBackend:
    def __init__(self) -> None:
        self.accounts = {
            "alice@example.test": account("alice@example.test", 1),
            "bob@example.test": account("bob@example.test", 2),
            "full@example.test": account("full@example.test", 3, quota_bytes=1000),
            "josé@example.test": account("josé@example.test", 4),
            "postmaster@example.test": account("postmaster@example.test", 5),
        }
        self.aliases = {
            "team@example.test": ["alice@example.test", "bob@example.test"],
            "fwd@example.test": ["friend@remote.test"],
            "alias-of-alice@example.test": ["alice@example.test"],
        }
        self.delivered: list[tuple[Transaction, bytes]] = []
        self.off_loop_sizes: list[int] = []  # what ``off_loop`` ran: the size of its result
        self.done: list[tuple[Transaction, int, Reply]] = []
        self.locked = False
        self.deliver_error: Exception | None = None

    async def is_local_domain(self, domain: str) -> bool:
        return domain == "example.test"

    async def route(self, address: Address) -> Route:
        key = address.without_tag().key
        if address.domain != "example.test":
            return Route(remote=[str(address)])
        if key in self.accounts:
            return Route(local=[self.accounts[key]])
        route = Route()
        for target in self.aliases.get(key, []):
            if target in self.accounts:
                route.local.append(self.accounts[target])
            else:
                route.remote.append(target)
        return route

    async def check_recipient(self, txn: Transaction, route: Route) -> Reply | None:
        return None

    async def quota_state(self, acct: Account, size: int) -> QuotaState:
        if acct.quota_bytes and size > acct.quota_bytes:
            return "too_big"
        return "full" if acct.quota_bytes else "ok"

    async def authenticate(self, username: str, password: str) -> Account:
        if self.locked:
            raise AuthRefused(temporary=True)
        acct = self.accounts.get(username.lower())
        if acct is None or password != PASSWORD:
            raise AuthRefused()
        return acct

    async def owns_address(self, acct: Account, address: Address) -> bool:
        key = address.without_tag().key
        return key == acct.address or acct.address in self.aliases.get(key, [])

    def postmaster(self) -> Address | None:
        return Address("postmaster", "example.test")

    async def deliver(self, txn: Transaction, message: bytes) -> str:
        if self.deliver_error is not None:
            raise self.deliver_error
        self.delivered.append((txn, message))
        return f"QID{len(self.delivered)}"

    def transaction_done(self, txn: Transaction, size: int, result: Reply) -> None:
        self.done.append((txn, size, result))

    async def off_loop(self, work: Callable[[], T]) -> T:
        result = work()
        self.off_loop_sizes.append(getattr(result, "size", -1))
        return result


def policy(**overrides: object) -> SessionPolicy:
    values: dict[str, object] = {
        "hostname": "mail.example.test",
        "submission": False,
        "max_message_size": 10_000,
        "max_recipients": 5,
        "max_errors": 10,
        "starttls_offered": True,
        "plaintext_auth_allowed": False,
        "client_ip": "192.0.2.1",
    }
    values.update(overrides)
    return SessionPolicy(**values)  # type: ignore[arg-type]


class Client:
    """Drives a session the way the network driver does."""

    def __init__(self, tls: bool = False, **overrides: object) -> None:
        self.backend = FakeBackend()
        self.session = SmtpSession(policy(**overrides), self.backend, tls_active=tls)

    async def cmd(self, line: str | bytes) -> Reply:
        raw = line if isinstance(line, bytes) else line.encode() + b"\r\n"
        return await self.session.on_line(raw)

    async def code(self, line: str | bytes) -> str:
        """"250 2.1.0" style: the code and the first line's enhanced status."""
        answer = await self.cmd(line)
        return f"{answer.code} {answer.lines[0].split(' ')[0]}"

    async def data(self, raw: bytes) -> Reply:
        policy = self.session.policy
        reader = DotReader(policy.max_message_size, bare_newlines=policy.bare_newlines,
                           max_line=policy.max_line)
        assert reader.feed(raw) == b""
        assert reader.done
        return await self.session.on_data(reader.finish())

    async def bdat(self, payload: bytes, last: bool = False) -> Reply:
        answer = await self.cmd(f"BDAT {len(payload)}{' LAST' if last else ''}")
        if answer.action is not Action.READ_CHUNK:
            return answer
        assert answer.chunk_size == len(payload)
        self.session.on_chunk(payload)
        return await self.session.on_chunk_end()

    async def envelope(self, *rcpts: str, sender: str = "<sender@remote.test>") -> None:
        assert (await self.cmd("EHLO client.test")).code == 250
        assert (await self.cmd(f"MAIL FROM:{sender}")).code == 250
        for rcpt in rcpts:
            assert (await self.cmd(f"RCPT TO:{rcpt}")).code == 250, rcpt


MESSAGE = b"Subject: hi\r\n\r\nHello\r\n..dot line\r\n"


def wire(content: bytes) -> bytes:
    return dot_stuff(content) + b".\r\n"


# -- replies and greeting -------------------------------------------------------------------


def test_reply_encoding_multiline() -> None:
    assert Reply(250, ("a", "b", "c")).encode() == b"250-a\r\n250-b\r\n250 c\r\n"
    assert Reply(334, ("",)).encode() == b"334 \r\n"


async def test_greeting_and_ehlo_on_mx() -> None:
    c = Client()
    assert c.session.greeting().encode() == b"220 mail.example.test ESMTP mailstead\r\n"
    answer = await c.cmd("EHLO client.test")
    assert answer.code == 250
    ext = answer.lines[1:]
    for keyword in ("PIPELINING", "SIZE 10000", "8BITMIME", "BINARYMIME", "CHUNKING",
                    "SMTPUTF8", "ENHANCEDSTATUSCODES", "DSN", "STARTTLS", "HELP"):
        assert keyword in ext
    assert not any(e.startswith("AUTH") for e in ext)
    assert "REQUIRETLS" not in ext


async def test_ehlo_on_submission_advertises_auth_only_over_tls() -> None:
    plain = Client(submission=True)
    ext = (await plain.cmd("EHLO c")).lines
    assert "AUTH PLAIN LOGIN" not in ext and "STARTTLS" in ext
    secure = Client(tls=True, submission=True, starttls_offered=False)
    ext = (await secure.cmd("EHLO c")).lines
    assert "AUTH PLAIN LOGIN" in ext and "REQUIRETLS" in ext and "STARTTLS" not in ext
    loopback = Client(submission=True, plaintext_auth_allowed=True)
    assert "AUTH PLAIN LOGIN" in (await loopback.cmd("EHLO c")).lines


async def test_helo_has_no_extensions_and_no_parameters() -> None:
    c = Client()
    assert (await c.cmd("HELO client.test")).lines == ("mail.example.test Hello client.test",)
    assert await c.code("MAIL FROM:<a@remote.test> SIZE=10") == "555 5.5.4"
    assert await c.code("MAIL FROM:<a@remote.test>") == "250 2.1.0"


async def test_simple_commands() -> None:
    c = Client()
    assert await c.code("EHLO") == "501 5.5.4"
    assert await c.code("NOOP") == "250 2.0.0"
    assert await c.code("VRFY alice") == "252 2.1.5"
    assert await c.code("EXPN team") == "502 5.5.1"
    assert (await c.cmd("HELP")).code == 214
    assert await c.code("FOO bar") == "500 5.5.1"
    assert await c.code("RSET") == "250 2.0.0"
    quit_reply = await c.cmd("QUIT")
    assert quit_reply.code == 221 and quit_reply.action is Action.CLOSE


async def test_http_request_hangs_up() -> None:
    answer = await Client().cmd("POST / HTTP/1.1")
    assert answer.action is Action.CLOSE and answer.code == 554


# -- MX transactions ------------------------------------------------------------------------


async def test_mx_delivery_to_users_and_alias() -> None:
    c = Client()
    await c.envelope("<alice@example.test>", "<Bob+tag@EXAMPLE.test>", "<team@example.test>")
    answer = await c.cmd("DATA")
    assert answer.code == 354 and answer.action is Action.READ_DATA
    final = await c.data(wire(MESSAGE))
    assert final.code == 250 and final.lines == ("2.0.0 Ok: queued as QID1",)
    txn, message = c.backend.delivered[0]
    assert message == MESSAGE
    assert txn.sender == "sender@remote.test"
    assert [r.address for r in txn.recipients] == [
        "alice@example.test", "Bob+tag@example.test", "team@example.test"]
    assert [a.address for a in txn.recipients[2].local] == [
        "alice@example.test", "bob@example.test"]
    assert txn.protocol == "ESMTP" and txn.helo == "client.test"
    assert txn.client_ip == "192.0.2.1"
    assert c.backend.done[0][2] is final
    # The session is ready for the next transaction.
    assert await c.code("MAIL FROM:<>") == "250 2.1.0"


async def test_mx_alias_forwarding_to_remote_is_accepted() -> None:
    c = Client()
    await c.envelope("<fwd@example.test>")
    assert c.session.txn is not None
    assert c.session.txn.recipients[0].remote == ["friend@remote.test"]


@pytest.mark.parametrize("rcpt, expected", [
    ("<user@other.test>", "550 5.7.1"),
    ("<user%other.test@example.test>", "553 5.1.3"),
    ("<@relay.test:user@other.test>", "553 5.1.3"),
    ("<@a.test,@b.test:user@example.test>", "553 5.1.3"),
    ('<"user@other.test"@example.test>', "553 5.1.3"),
    ("<nobody@example.test>", "550 5.1.1"),
    ("<>", "501 5.1.3"),
    ("alice@example.test", "501 5.1.3"),
    ("<alice@example.test", "501 5.1.3"),
    ("<alice@example.test> FOO=1", "555 5.5.4"),
    ("<user!other.test@example.test>", "553 5.1.3"),
])
async def test_mx_refuses_relaying_and_bad_recipients(rcpt: str, expected: str) -> None:
    c = Client()
    await c.envelope()
    assert await c.code(f"RCPT TO:{rcpt}") == expected
    assert await c.code("DATA") in ("554 5.5.1", "503 5.5.1")


async def test_postmaster_without_domain() -> None:
    c = Client()
    await c.envelope("<Postmaster>")
    assert c.session.txn is not None
    assert c.session.txn.recipients[0].address == "postmaster@example.test"


async def test_command_sequence_errors() -> None:
    c = Client()
    assert await c.code("MAIL FROM:<a@remote.test>") == "503 5.5.1"
    await c.cmd("EHLO c")
    assert await c.code("RCPT TO:<alice@example.test>") == "503 5.5.1"
    assert await c.code("DATA") == "503 5.5.1"
    assert await c.code("MAIL FROM:<a@remote.test>") == "250 2.1.0"
    assert await c.code("MAIL FROM:<a@remote.test>") == "503 5.5.1"
    assert await c.code("DATA") == "503 5.5.1"
    assert await c.code("DATA now") == "501 5.5.4"
    assert await c.code("MAIL TO:<x@y.test>") == "503 5.5.1"
    assert await c.code("RSET") == "250 2.0.0"
    assert await c.code("MAIL TO:<x@y.test>") == "501 5.5.4"
    assert await c.code("MAIL FROM: <a@remote.test>") == "250 2.1.0"  # a space is tolerated


async def test_sender_syntax_refusals() -> None:
    c = Client()
    await c.cmd("EHLO c")
    assert await c.code("MAIL FROM:<@a.test:x@remote.test>") == "553 5.1.7"
    assert await c.code("MAIL FROM:<x@bad_domain>") == "553 5.1.7"
    assert await c.code("MAIL FROM:x@remote.test") == "501 5.1.7"


async def test_too_many_recipients() -> None:
    c = Client(max_recipients=3)
    await c.envelope("<alice@example.test>", "<bob@example.test>", "<team@example.test>")
    assert await c.code("RCPT TO:<alice@example.test>") == "452 4.5.3"
    await c.cmd("DATA")
    assert (await c.data(wire(MESSAGE))).code == 250


async def test_too_many_recipients_is_not_an_error() -> None:
    # RFC 5321 4.5.3.1.10: far more 452s than max_errors, and the session and its transaction
    # go on; the message reaches the recipients accepted.
    c = Client(max_recipients=3, max_errors=2)
    await c.envelope("<alice@example.test>", "<bob@example.test>", "<fwd@example.test>")
    for _ in range(50):
        answer = await c.cmd("RCPT TO:<team@example.test>")
        assert (answer.code, answer.lines[0][:5], answer.action) == (452, "4.5.3", Action.NONE)
    assert c.session.errors == 0
    assert await c.code("DATA") == "354 End"
    assert (await c.data(wire(MESSAGE))).code == 250
    [(txn, _message)] = c.backend.delivered
    assert [r.address for r in txn.recipients] == [
        "alice@example.test", "bob@example.test", "fwd@example.test"]


async def test_recipient_listed_twice_is_accepted_twice() -> None:
    c = Client()
    await c.envelope("<alice@example.test>", "<alice@example.test>")
    assert c.session.txn is not None and len(c.session.txn.recipients) == 2


# -- parameters -----------------------------------------------------------------------------


async def test_mail_parameters() -> None:
    c = Client(tls=True)
    await c.cmd("EHLO c")
    answer = await c.code(
        "MAIL FROM:<a@remote.test> SIZE=100 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+2Bx "
        "REQUIRETLS AUTH=<>")
    assert answer == "250 2.1.0"
    txn = c.session.txn
    assert txn is not None
    assert (txn.declared_size, txn.body, txn.smtputf8, txn.ret, txn.envid, txn.requiretls) == (
        100, "8BITMIME", True, "HDRS", "id+x", True)
    assert await c.code(
        "RCPT TO:<alice@example.test> NOTIFY=success,failure ORCPT=rfc822;alice+40x") == \
        "250 2.1.5"
    assert (txn.recipients[0].notify, txn.recipients[0].orcpt) == ("SUCCESS,FAILURE",
                                                                   "rfc822;alice@x")


@pytest.mark.parametrize("params, expected", [
    ("SIZE=abc", "501 5.5.4"),
    ("SIZE=20000", "552 5.3.4"),
    ("BODY=9BIT", "501 5.5.4"),
    ("RET=ALL", "501 5.5.4"),
    ("ENVID=bad=xtext", "501 5.5.4"),
    ("REQUIRETLS", "555 5.5.4"),  # not advertised without TLS
    ("FOO=BAR", "555 5.5.4"),
    ("SIZE=1 SIZE=2", "501 5.5.4"),
])
async def test_bad_mail_parameters(params: str, expected: str) -> None:
    c = Client()
    await c.cmd("EHLO c")
    assert await c.code(f"MAIL FROM:<a@remote.test> {params}") == expected
    assert c.session.txn is None


@pytest.mark.parametrize("params", ["NOTIFY=NEVER,SUCCESS", "NOTIFY=", "ORCPT=nosemicolon",
                                    "NOTIFY=DELAY,DELAY"])
async def test_bad_rcpt_parameters(params: str) -> None:
    c = Client()
    await c.envelope()
    assert await c.code(f"RCPT TO:<alice@example.test> {params}") == "501 5.5.4"


async def test_smtputf8_addresses() -> None:
    c = Client()
    await c.envelope()
    assert await c.code("RCPT TO:<josé@example.test>") == "553 5.6.7"
    await c.cmd("RSET")
    assert await c.code("MAIL FROM:<ñ@remote.test>") == "553 5.6.7"
    assert await c.code("MAIL FROM:<ñ@remote.test> SMTPUTF8") == "250 2.1.0"
    assert await c.code("RCPT TO:<josé@example.test>") == "250 2.1.5"
    await c.cmd("DATA")
    assert (await c.data(wire("Subject: olé\r\n\r\nx\r\n".encode()))).code == 250
    assert c.backend.delivered[0][0].protocol == "UTF8SMTP"


@pytest.mark.parametrize("line", [b"NOOP\n", b"EHLO c\n", b"MAIL FROM:<a@remote.test>\n",
                                  b"QUIT\n", b"NOOP\r", b"NOOP\r\r\n", b"NO\rOP\r\n"])
async def test_command_line_must_end_with_crlf(line: bytes) -> None:
    # RFC 5321 2.3.8: a bare LF, like a bare CR, is no line end, and nothing is done.
    c = Client()
    answer = await c.cmd(line)
    assert (answer.code, answer.lines[0][:5], answer.action) == (500, "5.5.2", Action.NONE)
    assert c.session.helo is None and c.session.txn is None
    assert await c.code("NOOP") == "250 2.0.0"


async def test_auth_response_with_bare_lf_is_refused() -> None:
    c = submission()
    await c.cmd("EHLO c")
    assert (await c.cmd("AUTH PLAIN")).code == 334
    answer = await c.cmd(b64("\0alice@example.test\0" + PASSWORD).encode() + b"\n")
    assert (answer.code, answer.lines[0][:5]) == (500, "5.5.2")
    assert c.session.account is None and not c.session.in_auth_exchange


async def test_command_that_is_not_utf8() -> None:
    c = Client()
    assert await c.code(b"EHLO \xff\xfe\r\n") == "500 5.5.2"


# -- DATA and its defences ------------------------------------------------------------------


async def test_data_with_bare_lf_is_refused_and_nothing_stored() -> None:
    c = Client(bare_newlines="reject")
    await c.envelope("<alice@example.test>")
    await c.cmd("DATA")
    smuggled = b"Subject: x\r\n\r\nhi\n.\r\nMAIL FROM:<evil@remote.test>\r\n"
    answer = await c.data(smuggled + b".\r\n")
    assert (answer.code, answer.lines[0][:5]) == (550, "5.5.2")
    assert c.backend.delivered == []
    assert c.backend.done[0][2] is answer


async def test_data_with_bare_cr_is_refused() -> None:
    c = Client(bare_newlines="reject")
    await c.envelope("<alice@example.test>")
    await c.cmd("DATA")
    assert (await c.data(b"Subject: x\r\n\r\nhi\r.\r\nmore\r\n.\r\n")).code == 550


async def test_data_with_bare_lf_and_cr_is_normalised_by_default() -> None:
    c = Client()
    await c.envelope("<alice@example.test>")
    await c.cmd("DATA")
    # The ".\r\n" after a bare LF is message text, neither the end nor a stuffed line.
    answer = await c.data(b"Subject: x\n\nhi\n.\r\nMAIL FROM:<e@remote.test>\r..two\n"
                          b"..three\r\n..four\r\n.\r\n")
    assert answer.code == 250
    [(_txn, stored)] = c.backend.delivered
    assert stored == (b"Subject: x\r\n\r\nhi\r\n.\r\nMAIL FROM:<e@remote.test>\r\n..two\r\n"
                      b"..three\r\n.four\r\n")


async def test_data_with_overlong_line() -> None:
    c = Client(max_line=1000)
    await c.envelope("<alice@example.test>")
    await c.cmd("DATA")
    answer = await c.data(wire(b"Subject: x\r\n\r\n" + b"a" * 999 + b"\r\n"))
    assert (answer.code, answer.lines[0]) == (
        552, "5.3.4 Message refused: a line is longer than 1000 octets")
    await c.cmd("MAIL FROM:<>")
    await c.cmd("RCPT TO:<alice@example.test>")
    await c.cmd("DATA")
    assert (await c.data(wire(b"x" * 998 + b"\r\n"))).code == 250  # exactly 1000 with CRLF


async def test_data_long_lines_accepted_up_to_the_bound() -> None:
    c = Client(max_message_size=3_000_000)
    await c.envelope("<alice@example.test>")
    await c.cmd("DATA")
    long = b"<p>" + b"a" * 200_000 + b"</p>\r\n"
    assert (await c.data(wire(b"Subject: x\r\n\r\n" + long))).code == 250
    assert c.backend.delivered[0][1] == b"Subject: x\r\n\r\n" + long  # stored as received
    await c.cmd("MAIL FROM:<>")
    await c.cmd("RCPT TO:<alice@example.test>")
    await c.cmd("DATA")
    answer = await c.data(wire(b"Subject: x\r\n\r\n" + b"b" * 1_048_575 + b"\r\n"))
    assert (answer.code, answer.lines[0]) == (
        552, "5.3.4 Message refused: a line is longer than 1048576 octets")


async def test_data_too_big() -> None:
    c = Client(max_message_size=2000)
    await c.envelope("<alice@example.test>")
    await c.cmd("DATA")
    answer = await c.data(wire((b"x" * 100 + b"\r\n") * 30))
    assert (answer.code, answer.lines[0][:5]) == (552, "5.3.4")
    assert c.backend.delivered == []


async def test_declared_size_over_quota() -> None:
    c = Client()
    await c.cmd("EHLO c")
    await c.cmd("MAIL FROM:<a@remote.test> SIZE=5000")
    assert await c.code("RCPT TO:<full@example.test>") == "552 5.2.2"
    await c.cmd("RSET")
    await c.cmd("MAIL FROM:<a@remote.test> SIZE=10")
    assert await c.code("RCPT TO:<full@example.test>") == "452 4.2.2"


async def test_quota_exceeded_at_delivery_is_temporary() -> None:
    c = Client()
    c.backend.deliver_error = QuotaExceeded("over")
    await c.envelope("<alice@example.test>")
    await c.cmd("DATA")
    assert (await c.data(wire(MESSAGE))).lines[0].startswith("4.2.2")


async def test_store_failure_is_a_temporary_error() -> None:
    c = Client()
    c.backend.deliver_error = OSError("disk on fire")
    await c.envelope("<alice@example.test>")
    await c.cmd("DATA")
    answer = await c.data(wire(MESSAGE))
    assert (answer.code, answer.lines[0][:5]) == (451, "4.3.0")


async def test_data_without_valid_recipients() -> None:
    c = Client()
    await c.envelope()
    await c.cmd("RCPT TO:<nobody@example.test>")
    assert await c.code("DATA") == "554 5.5.1"


# -- line limits and errors -----------------------------------------------------------------


async def test_line_limits() -> None:
    c = Client()
    await c.cmd("EHLO c")
    assert await c.code("NOOP " + "x" * 600) == "500 5.5.2"
    long_mail = "MAIL FROM:<a@remote.test> ENVID=" + "x" * 100 + " AUTH=" + "y" * 400
    assert len(long_mail) > 512
    assert await c.code(long_mail) == "250 2.1.0"
    assert c.session.on_line_too_long().code == 500
    # RCPT may be longer than 512 for its DSN parameters (up to 1024), never beyond.
    orcpt = "RCPT TO:<alice@example.test> ORCPT=rfc822;" + "o" * 600
    assert 512 < len(orcpt) <= 1024
    assert (await c.code(orcpt))[:3] != "500"
    assert await c.code("RCPT TO:<alice@example.test> ORCPT=rfc822;" + "o" * 1000) == \
        "500 5.5.2"
    assert await c.code("RSET") == "250 2.0.0"
    assert await c.code("MAIL FROM:<a@remote.test> ENVID=" + "x" * 2100) == "500 5.5.2"


async def test_too_many_errors_closes() -> None:
    c = Client(max_errors=3)
    assert (await c.cmd("BAD1")).code == 500
    assert (await c.cmd("BAD2")).code == 500
    answer = await c.cmd("BAD3")
    assert (answer.code, answer.action) == (421, Action.CLOSE)


# -- STARTTLS -------------------------------------------------------------------------------


async def test_starttls_resets_the_session() -> None:
    c = Client()
    await c.cmd("EHLO c")
    assert await c.code("STARTTLS now") == "501 5.5.4"
    answer = await c.cmd("STARTTLS")
    assert (answer.code, answer.action) == (220, Action.START_TLS)
    c.session.tls_started()
    assert await c.code("MAIL FROM:<a@remote.test>") == "503 5.5.1"  # EHLO again first
    ext = (await c.cmd("EHLO c")).lines
    assert "STARTTLS" not in ext and "REQUIRETLS" in ext
    assert await c.code("STARTTLS") == "503 5.5.1"


async def test_starttls_not_offered_or_in_transaction() -> None:
    assert await Client(starttls_offered=False).code("STARTTLS") == "454 4.7.0"
    c = Client()
    await c.envelope()
    assert await c.code("STARTTLS") == "503 5.5.1"


async def test_mx_delivery_over_tls_is_esmtps() -> None:
    c = Client(tls=True)
    await c.envelope("<alice@example.test>")
    await c.cmd("DATA")
    await c.data(wire(MESSAGE))
    assert c.backend.delivered[0][0].protocol == "ESMTPS"


# -- AUTH and submission rules --------------------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def submission(tls: bool = True, **overrides: object) -> Client:
    return Client(tls=tls, submission=True, starttls_offered=not tls, **overrides)


async def test_auth_plain_with_initial_response() -> None:
    c = submission()
    await c.cmd("EHLO c")
    assert await c.code(f"AUTH PLAIN {b64(chr(0) + 'alice@example.test' + chr(0) + PASSWORD)}") \
        == "235 2.7.0"
    assert await c.code("AUTH PLAIN x") == "503 5.5.1"  # once per session
    assert "AUTH PLAIN LOGIN" not in (await c.cmd("EHLO c")).lines
    assert c.session.account is not None  # EHLO does not log out


async def test_auth_plain_with_challenge() -> None:
    c = submission()
    await c.cmd("EHLO c")
    challenge = await c.cmd("AUTH PLAIN")
    assert challenge.encode() == b"334 \r\n"
    assert c.session.in_auth_exchange
    assert await c.code(b64(f"alice@example.test\0alice@example.test\0{PASSWORD}")) == \
        "235 2.7.0"


async def test_auth_login_both_forms() -> None:
    c = submission()
    await c.cmd("EHLO c")
    assert (await c.cmd("AUTH LOGIN")).encode() == b"334 VXNlcm5hbWU6\r\n"
    assert (await c.cmd(b64("bob@example.test"))).encode() == b"334 UGFzc3dvcmQ6\r\n"
    assert await c.code(b64(PASSWORD)) == "235 2.7.0"
    c2 = submission()
    await c2.cmd("EHLO c")
    assert (await c2.cmd(f"AUTH LOGIN {b64('bob@example.test')}")).code == 334
    assert await c2.code(b64("wrong")) == "535 5.7.8"


async def test_auth_failures() -> None:
    c = submission()
    await c.cmd("EHLO c")
    assert await c.code("AUTH CRAM-MD5") == "504 5.5.4"
    assert await c.code("AUTH") == "501 5.5.4"
    await c.cmd("AUTH PLAIN")
    assert await c.code("*") == "501 5.0.0"
    await c.cmd("AUTH PLAIN")
    assert await c.code("not base64!") == "501 5.5.2"
    assert await c.code(f"AUTH PLAIN {b64('only-one-part')}") == "501 5.5.2"
    proxy = b64("other\0alice@example.test\0" + PASSWORD)
    assert await c.code(f"AUTH PLAIN {proxy}") == "535 5.7.8"  # no proxy authorisation
    c.backend.locked = True
    assert await c.code(f"AUTH PLAIN {b64(chr(0) + 'alice@example.test' + chr(0) + PASSWORD)}") \
        == "454 4.7.0"


async def test_auth_refused_before_tls_and_on_mx() -> None:
    c = submission(tls=False)
    await c.cmd("EHLO c")
    assert await c.code("AUTH PLAIN") == "538 5.7.11"
    assert await c.code("MAIL FROM:<alice@example.test>") == "530 5.7.0"
    mx = Client(tls=True)
    await mx.cmd("EHLO c")
    assert await mx.code("AUTH PLAIN") == "502 5.5.1"
    loopback = submission(tls=False, plaintext_auth_allowed=True)
    await loopback.cmd("EHLO c")
    assert await loopback.code(
        f"AUTH PLAIN {b64(chr(0) + 'alice@example.test' + chr(0) + PASSWORD)}") == "235 2.7.0"


async def test_auth_needs_ehlo_and_no_transaction() -> None:
    c = submission()
    assert await c.code("AUTH PLAIN") == "503 5.5.1"


async def logged_in(user: str = "alice@example.test") -> Client:
    c = submission()
    await c.cmd("EHLO c")
    assert (await c.cmd(f"AUTH PLAIN {b64(chr(0) + user + chr(0) + PASSWORD)}")).code == 235
    return c


async def test_submission_sender_must_be_owned() -> None:
    c = await logged_in()
    assert await c.code("MAIL FROM:<bob@example.test>") == "553 5.7.1"
    assert await c.code("MAIL FROM:<someone@remote.test>") == "553 5.7.1"
    assert await c.code("MAIL FROM:<Alice+lists@example.test>") == "250 2.1.0"
    await c.cmd("RSET")
    assert await c.code("MAIL FROM:<alias-of-alice@example.test>") == "250 2.1.0"


async def test_submission_to_any_recipient() -> None:
    c = await logged_in()
    await c.cmd("MAIL FROM:<alice@example.test>")
    assert await c.code("RCPT TO:<friend@remote.test>") == "250 2.1.5"
    assert await c.code("RCPT TO:<bob@example.test>") == "250 2.1.5"
    assert await c.code("RCPT TO:<nobody@example.test>") == "550 5.1.1"
    await c.cmd("DATA")
    assert (await c.data(wire(b"From: alice@example.test\r\n" + MESSAGE))).code == 250
    txn = c.backend.delivered[0][0]
    assert txn.protocol == "ESMTPSA"
    assert txn.account is not None and txn.account.address == "alice@example.test"
    assert txn.recipients[0].remote == ["friend@remote.test"]


# -- BDAT (RFC 3030) ------------------------------------------------------------------------


async def test_bdat_chunks() -> None:
    c = Client()
    await c.envelope("<alice@example.test>")
    first = await c.bdat(b"Subject: x\r\n\r\n")
    assert (first.code, first.lines[0][:5]) == (250, "2.0.0")
    assert await c.code("RCPT TO:<bob@example.test>") == "503 5.5.1"
    assert await c.code("DATA") == "503 5.5.1"
    last = await c.bdat(b"body\r\n", last=True)
    assert last.lines == ("2.0.0 Ok: queued as QID1",)
    assert c.backend.delivered[0][1] == b"Subject: x\r\n\r\nbody\r\n"


async def test_bdat_zero_last_and_binarymime() -> None:
    c = Client()
    await c.cmd("EHLO c")
    await c.cmd("MAIL FROM:<a@remote.test> BODY=BINARYMIME")
    await c.cmd("RCPT TO:<alice@example.test>")
    assert await c.code("DATA") == "503 5.5.1"
    binary = b"Content-Type: application/octet-stream\r\n\r\n\x00\n\r\xff"
    assert (await c.bdat(binary)).code == 250
    assert (await c.bdat(b"", last=True)).code == 250
    assert c.backend.delivered[0][1] == binary
    assert c.backend.delivered[0][0].body == "BINARYMIME"


async def test_bdat_bare_lf_refused_unless_binary() -> None:
    c = Client(bare_newlines="reject")
    await c.envelope("<alice@example.test>")
    answer = await c.bdat(b"Subject: x\r\n\r\nhi\n.\r\n", last=True)
    assert (answer.code, answer.lines[0][:5]) == (550, "5.5.2")
    assert c.backend.delivered == []


async def test_bdat_bare_lf_normalised_and_long_lines_bounded() -> None:
    c = Client(max_line=1000)
    await c.envelope("<alice@example.test>")
    assert (await c.bdat(b"Subject: x\n\nhi\n.\r", last=True)).code == 250
    assert c.backend.delivered[0][1] == b"Subject: x\r\n\r\nhi\r\n.\r\n"
    await c.envelope("<alice@example.test>")
    answer = await c.bdat(b"Subject: x\n\n" + b"y" * 999 + b"\n", last=True)
    assert (answer.code, answer.lines[0][:5]) == (552, "5.3.4")
    assert len(c.backend.delivered) == 1


async def test_bdat_large_message_checked_off_the_loop() -> None:
    """A BDAT message over OFF_LOOP_SIZE is joined and checked through ``off_loop`` (a thread
    in the server), with the same verdicts as a small one: bare LF made CRLF, long line 552."""
    body = b"z" * 99 + b"\n"
    c = Client(max_message_size=4 * OFF_LOOP_SIZE, max_line=1000)
    await c.envelope("<alice@example.test>")
    big = b"Subject: x\n\n" + body * (OFF_LOOP_SIZE // 100 + 10)
    assert (await c.bdat(big[:1000])).code == 250
    assert (await c.bdat(big[1000:], last=True)).code == 250
    assert c.backend.delivered[0][1] == big.replace(b"\n", b"\r\n")
    assert c.backend.off_loop_sizes == [len(big) + big.count(b"\n")]
    await c.envelope("<alice@example.test>")
    answer = await c.bdat(big + b"y" * 1000 + b"\n", last=True)
    assert (answer.code, answer.lines[0][:5]) == (552, "5.3.4")
    assert len(c.backend.delivered) == 1 and len(c.backend.off_loop_sizes) == 2
    await c.envelope("<alice@example.test>")
    assert (await c.bdat(b"Subject: small\r\n\r\nhi\r\n", last=True)).code == 250
    assert len(c.backend.off_loop_sizes) == 2  # a small message: checked in place


async def test_bdat_refused_chunk_is_still_consumed() -> None:
    c = Client()
    await c.cmd("EHLO c")
    answer = await c.cmd("BDAT 5")
    # Answered at once; the driver then reads the 5 octets and drops them.
    assert (answer.code, answer.action, answer.chunk_size) == (503, Action.DISCARD_CHUNK, 5)


async def test_bdat_too_big_fails_transaction_at_once() -> None:
    c = Client(max_message_size=1024)
    await c.envelope("<alice@example.test>")
    assert (await c.bdat(b"x" * 1000)).code == 250
    # The size alone tells: 552 before any of the chunk is read, and none of it is kept.
    answer = await c.cmd("BDAT 100")
    assert (answer.code, answer.lines[0][:5]) == (552, "5.3.4")
    assert (answer.action, answer.chunk_size) == (Action.DISCARD_CHUNK, 100)
    # RFC 3030 2: chunks pipelined after the failure are discarded.
    assert (await c.bdat(b"x", last=True)).code == 503
    assert c.backend.delivered == []
    assert [r.code for _t, _s, r in c.backend.done] == [552]
    # The session goes on: a new transaction works.
    await c.cmd("RSET")
    assert await c.code("MAIL FROM:<a@remote.test>") == "250 2.1.0"


async def test_bdat_chunk_larger_than_any_message_hangs_up() -> None:
    c = Client(max_message_size=1024)
    await c.envelope("<alice@example.test>")
    answer = await c.cmd(f"BDAT {10**18} LAST")
    assert (answer.code, answer.lines[0][:5], answer.action) == (552, "5.3.4", Action.CLOSE)
    assert c.backend.delivered == []


async def test_bdat_bad_syntax_hangs_up() -> None:
    c = Client()
    await c.envelope("<alice@example.test>")
    answer = await c.cmd("BDAT lots")
    assert (answer.code, answer.action) == (501, Action.CLOSE)


# -- the DATA reader (lines.py) -------------------------------------------------------------


def test_dot_reader_simple_and_leftover() -> None:
    reader = DotReader(1000)
    assert reader.feed(b"a\r\n..b\r\n") == b""
    assert not reader.done
    assert reader.feed(b".\r\nQUIT\r\n") == b"QUIT\r\n"
    outcome = reader.finish()
    assert outcome.content == b"a\r\n.b\r\n" and outcome.problem is None


def test_dot_reader_empty_message() -> None:
    reader = DotReader(1000)
    assert reader.feed(b".\r\n") == b""
    assert reader.done and reader.finish().content == b""


FAKE_ENDS = (b"\n.\r\n", b"\r\n.\n", b"\n.\n", b"\r.\r\n", b"\r\n.\r", b"\r.\r", b"\n.\r")


def test_smuggling_sequences_do_not_end_data() -> None:
    for fake_end in FAKE_ENDS:
        reader = DotReader(1000)
        reader.feed(b"hello" + fake_end + b"MAIL FROM:<x@y.test>\r\n")
        assert not reader.done, fake_end
        reader.feed(b".\r\n")
        assert reader.done
        assert reader.finish().problem is DataProblem.BARE_NEWLINE


def test_smuggling_sequences_normalised_into_one_message() -> None:
    for fake_end in FAKE_ENDS:
        reader = DotReader(1000, bare_newlines="normalize")
        reader.feed(b"hello" + fake_end + b"MAIL FROM:<x@y.test>\r\n")
        assert not reader.done, fake_end
        assert reader.feed(b".\r\nQUIT\r\n") == b"QUIT\r\n"
        outcome = reader.finish()
        assert outcome.problem is None
        assert not has_bare_cr_or_lf(outcome.content)
        assert outcome.content.startswith(b"hello\r\n")
        assert outcome.content.endswith(b"MAIL FROM:<x@y.test>\r\n")


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=400), max_size=5))
def test_normalised_reader_ends_only_at_crlf_dot_crlf(body: bytes, cuts: list[int]) -> None:
    # Whatever the client sends, the data ends at the first <CRLF>.<CRLF> of the stream (the
    # CRLF of the DATA command counts), and the message kept holds CRLF line ends only.
    stream = body + b"\r\n.\r\n"
    first = (b"\r\n" + stream).find(b"\r\n.\r\n")
    reader = DotReader(100_000, bare_newlines="normalize", max_line=100_000)
    start = 0
    rest = b""
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        rest += reader.feed(stream[start:cut]) if not reader.done else stream[start:cut]
        start = cut
    assert reader.done
    assert rest == stream[first + 3:]
    outcome = reader.finish()
    assert outcome.problem is None
    assert not has_bare_cr_or_lf(outcome.content)


@given(st.lists(st.sampled_from([b"\r", b"\n", b".", b"\r\n", b"a", b"\r\n.\r\n"]),
                max_size=40),
       st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_dot_reader_any_split_reads_as_whole(pieces: list[bytes], cuts: list[int]) -> None:
    # The seam between two chunks (a marker begun in one, ended in the next, chunks of one or
    # two octets) changes neither where the data ends nor what it holds.
    stream = b"".join(pieces) + b"\r\n.\r\n"
    whole = DotReader(100_000, bare_newlines="normalize", max_line=100_000)
    expected_rest = whole.feed(stream)
    split = DotReader(100_000, bare_newlines="normalize", max_line=100_000)
    start, rest = 0, b""
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        rest += split.feed(stream[start:cut]) if not split.done else stream[start:cut]
        start = cut
    assert split.done and rest == expected_rest
    assert split.finish() == whole.finish()


def test_dot_reader_too_big_keeps_no_content() -> None:
    reader = DotReader(1024)
    for _ in range(100):
        reader.feed(b"y" * 998 + b"\r\n")
    reader.feed(b".\r\n")
    outcome = reader.finish()
    assert outcome.problem is DataProblem.TOO_BIG and outcome.content == b""
    assert reader._parts == []


lines_st = st.lists(
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    max_size=20,
)


def _fed_in_pieces(reader: DotReader, stream: bytes, cuts: list[int]) -> bytes:
    """Feeds ``stream`` cut at ``cuts`` (modulo its length); what came after the end marker."""
    leftover = b""
    start = 0
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        leftover += reader.feed(stream[start:cut]) if not reader.done else stream[start:cut]
        start = cut
    return leftover


@given(lines=lines_st, cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
       after=st.binary(max_size=20))
def test_dot_reader_round_trip(lines: list[bytes], cuts: list[int], after: bytes) -> None:
    content = b"".join(line + b"\r\n" for line in lines)
    stream = dot_stuff(content) + b".\r\n" + after
    reader = DotReader(100_000)
    assert _fed_in_pieces(reader, stream, cuts) == after
    assert reader.done
    assert reader.finish().content == content


@given(pieces=st.lists(st.sampled_from([b"a", b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.",
                                         b"\r\n.\r\n"]), max_size=30),
       cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_dot_reader_matches_the_reference_on_any_wire(pieces: list[bytes], cuts: list[int]) -> None:
    """Wherever the chunks split it, the reader ends at the first <CRLF>.<CRLF> (the CRLF of
    the DATA command included) and keeps what a plain unstuff-then-normalise would: it skips
    unstuffing only when it saw no line starting with a dot."""
    wire = b"".join(pieces) + b"\r\n.\r\n"
    marker = (b"\r\n" + wire).find(b"\r\n.\r\n")
    reader = DotReader(100_000, bare_newlines="normalize", max_line=100_000)
    assert _fed_in_pieces(reader, wire, cuts) == wire[marker + 3 :]
    assert reader.done
    expected = dot_unstuff(wire[:marker])
    if has_bare_cr_or_lf(expected):
        expected = expected.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    assert reader.finish().content == expected


def _reference(wire: bytes) -> tuple[bytes, bytes]:
    """(the message a reader must keep, the octets after the marker), computed the slow way:
    the first <CRLF>.<CRLF> (the DATA command's CRLF counts), unstuffed, then normalised."""
    marker = (b"\r\n" + wire).find(b"\r\n.\r\n")
    content = dot_unstuff(wire[:marker])
    if has_bare_cr_or_lf(content):
        content = content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return content, wire[marker + 3 :]


def _read_split(wire: bytes, cuts: list[int]) -> tuple[bytes, bytes]:
    reader = DotReader(10_000_000, bare_newlines="normalize", max_line=10_000_000)
    after = _fed_in_pieces(reader, wire, cuts)
    assert reader.done
    outcome = reader.finish()
    assert outcome.problem is None
    return outcome.content, after


HEAD = (b"Received: from a.example.net (a.example.net [192.0.2.1]) by mx.example.org;\r\n"
        b"From: x@a.example.net\r\nTo: y@b.example.org\r\nSubject: s.t.u.v.w\r\n\r\n")
BIG = HEAD + (b"Z" * 78 + b"\r\n") * 1300  # 100 KiB, no dot in the body (as smtp-source)
PROSE = HEAD + b"One. Two. Three. Four. Five. Six. Seven. Eight.\r\n" * 2000  # dense dots


@pytest.mark.parametrize("body", [BIG, PROSE], ids=["dotless", "prose"])
def test_dot_reader_end_marker_split_at_every_octet(body: bytes) -> None:
    # The marker cut after each of its octets, and the first chunk a large read's worth.
    wire = body + b".\r\nQUIT\r\n"
    marker = len(body) - 2
    for offset in range(6):
        cuts = [65536, marker + offset]
        assert _read_split(wire, cuts) == (body, b"QUIT\r\n")


@pytest.mark.parametrize("body", [BIG, PROSE], ids=["dotless", "prose"])
@pytest.mark.parametrize("tail", [b"\r\n", b"\r\n.", b"\r\n..", b"\r", b"\r\n.\r"])
def test_dot_reader_dot_stuffed_line_at_a_chunk_boundary(body: bytes, tail: bytes) -> None:
    # A stuffed line, a bare CR and a marker look-alike straddling two reads: the chunk ends
    # with ``tail`` cut from what follows.
    cases = [b"\r\n..stuffed\r\nmore\r\n", b"\r\n.\r\n", b"\r\nx\r\n",
             b"\r\n.\rnot the end\r\n", b"\rbare cr\r\n", b"\r\n..\r\n"]
    for case in cases:
        if not case.startswith(tail[:len(case)]) or len(tail) >= len(case):
            continue
        wire = body[:-2] + case + b".\r\nRSET\r\n"
        cut = len(body) - 2 + len(tail)
        assert _read_split(wire, [cut]) == _reference(wire), (tail, case)
        assert _read_split(wire, [4096, cut]) == _reference(wire), (tail, case)


def test_dot_reader_cr_at_the_end_of_a_chunk() -> None:
    for rest in (b"\n.\r\n", b"\n..x\r\n.\r\n", b"x\r\n.\r\n", b"\r\n.\r\n"):
        wire = BIG + b"last line\r" + rest + b"NOOP\r\n"
        cut = len(BIG) + len(b"last line\r")
        assert _read_split(wire, [cut]) == _reference(wire), rest
    reader = DotReader(10_000_000)  # a bare CR refused once the data ends
    reader.feed(BIG + b"x\r")
    reader.feed(b"y\r\n.\r\n")
    assert reader.done and reader.finish().problem is DataProblem.BARE_NEWLINE


def test_dot_reader_finds_dot_lines_in_the_header_and_after_many_dots() -> None:
    for wire in (
        b"Subject: a\r\n.\r\nMAIL FROM:<x@y.test>\r\n",  # the marker inside the header
        b"Subject: a\r\n..b\r\n\r\nbody\r\n.\r\n",  # a stuffed header line
        HEAD + b".\r\nNOOP\r\n",  # the marker right after the blank line
        HEAD + b"..x\r\n.\r\n",  # a stuffed line right after it
        PROSE + b"..stuffed after a thousand dots\r\n.\r\nQUIT\r\n",
        PROSE + b".\r\nQUIT\r\n",
        HEAD + b"a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z\r\n..z\r\n.\r\n",
        # The dots visited one by one run out just before a stuffed line or the marker.
        *(HEAD + b"a" + b"." * n + b"\r\n..x\r\n.\r\n" for n in range(10, 40)),
        *(HEAD + b"a" + b"." * n + b"\r\n.\r\n" for n in range(10, 40)),
        *(b"a" + b"." * n + b"\r\n..x\r\n.\r\n" for n in range(10, 40)),
    ):
        for cuts in ([], [len(wire) // 2], [1, 2, 3], [len(HEAD) - 1, len(HEAD) + 1]):
            assert _read_split(wire, cuts) == _reference(wire), (wire[:40], cuts)


@given(st.lists(st.sampled_from([b"word", b".", b". ", b"\r\n", b"\r\n.", b"\r\n..",
                                 b"\r", b"\n", b"x" * 300, b"\r\n\r\n", b"\r\n.\r\n"]),
                max_size=200),
       st.lists(st.integers(min_value=0, max_value=20_000), max_size=6))
def test_dot_reader_long_wires_match_the_reference(pieces: list[bytes], cuts: list[int]) -> None:
    # Long enough for the visits of the dots to run out and fall back to the bulk search.
    wire = b"".join(pieces) + b"\r\n.\r\nQUIT\r\n"
    assert _read_split(wire, cuts) == _reference(wire)


@given(st.binary(max_size=200))
def test_stuffing_round_trip(data: bytes) -> None:
    content = data.replace(b"\r", b"").replace(b"\n", b"\r\n")
    assert dot_unstuff(dot_stuff(content)) == content


@given(st.lists(st.sampled_from([b".", b"..", b"\r\n", b"a", b"\r", b"\n"]), max_size=60))
def test_dot_unstuff_drops_each_line_s_leading_dot(pieces: list[bytes]) -> None:
    # RFC 5321 4.5.2: the first octet of every line (CRLF-ended) that is a dot is deleted.
    raw = b"".join(pieces)
    expected = b"\r\n".join(line[1:] if line.startswith(b".") else line
                             for line in raw.split(b"\r\n"))
    assert dot_unstuff(raw) == expected
    assert dot_unstuff(b"a\r\n.b\r\n..c\r\n.\r\n.") == b"a\r\nb\r\n.c\r\n\r\n"


@given(st.binary(max_size=100))
def test_bare_newline_detection(data: bytes) -> None:
    expected = b"\n" in data.replace(b"\r\n", b"") or b"\r" in data.replace(b"\r\n", b"")
    assert has_bare_cr_or_lf(data) == expected


@given(st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b"\n\r", b"."]), max_size=40))
def test_bare_newline_detection_of_line_end_soup(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    expected = b"\n" in data.replace(b"\r\n", b"") or b"\r" in data.replace(b"\r\n", b"")
    assert has_bare_cr_or_lf(data) == expected


def test_bare_cr_and_lf_apart_are_both_bare() -> None:
    # As many CRs as LFs, in CR-then-LF order, yet none of them a pair.
    for data in (b"\ra\n", b"x\r.\ny", b"a\r\nb\rc\nd\r\n", b"\n\r", b"\r\r\n\n"):
        assert has_bare_cr_or_lf(data), data
        # Short lines and long ones (the check once took two ways by line length).
        assert has_bare_cr_or_lf(b"y" * 500 + data + b"z" * 500), data
        reader = DotReader(1000)
        reader.feed(b"Subject: s\r\n\r\n" + data + b"\r\n.\r\n")
        assert reader.finish().problem is DataProblem.BARE_NEWLINE
    assert not has_bare_cr_or_lf(b"a\r\nb\r\n\r\n")
    assert not has_bare_cr_or_lf(b"y" * 500 + b"a\r\nb\r\n\r\n")


@given(st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b"\n\r", b"."]), max_size=40),
       st.integers(min_value=1, max_value=5))
def test_bare_newline_detection_in_pieces(pieces: list[bytes], piece: int) -> None:
    # A large message is scanned SCAN_PIECE octets at a time: a CR at a piece's end, its LF
    # at the next one's start, must still be a pair.
    data = b"".join(pieces)
    expected = b"\n" in data.replace(b"\r\n", b"") or b"\r" in data.replace(b"\r\n", b"")
    saved = lines_module.SCAN_PIECE
    lines_module.SCAN_PIECE = piece
    try:
        assert has_bare_cr_or_lf(data) == expected
        assert not has_bare_cr_or_lf(b"ab\r\ncd\r\n" * 3)
    finally:
        lines_module.SCAN_PIECE = saved


def test_bare_newline_detection_with_every_octet() -> None:
    # The check scans the octets as Latin-1 text: NUL, the C0 controls below CR (the scan's
    # fast loop stops at those), 0x85 (NEL) and the other high octets are no line ends.
    others = bytes(c for c in range(256) if c not in b"\r\n")
    assert not has_bare_cr_or_lf(others + b"\r\n" + others)
    for octet in others:
        one = bytes([octet])
        assert has_bare_cr_or_lf(b"a\r" + one + b"\nb"), one
        assert has_bare_cr_or_lf(one + b"\n"), one
        assert has_bare_cr_or_lf(b"\r" + one), one
        assert not has_bare_cr_or_lf(one + b"\r\n" + one), one
    for data in (b"\r", b"\n", b"x\r", b"\nx", b"\r\n\r", b"\n\r\n", b"\r\n" * 50 + b"\r"):
        assert has_bare_cr_or_lf(data), data
    assert not has_bare_cr_or_lf(b"")
    assert not has_bare_cr_or_lf(b"\x00" * 10)


@given(st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b"\n\r", b"x" * 60]),
                max_size=40))
def test_bare_newline_detection_with_long_and_short_lines(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    expected = b"\n" in data.replace(b"\r\n", b"") or b"\r" in data.replace(b"\r\n", b"")
    assert has_bare_cr_or_lf(data) == expected


@given(st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b"\n\r", b"."]), max_size=40))
def test_normalize_line_ends_makes_every_line_end_crlf(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    expected = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    assert normalize_line_ends(data) == expected
    assert normalize_line_ends(data.replace(b"\r", b"")) == \
        data.replace(b"\r", b"").replace(b"\n", b"\r\n")


# -- the input buffer -----------------------------------------------------------------------


def test_input_buffer_lines_and_counted_octets() -> None:
    buffer = InputBuffer()
    assert buffer.take_line(512) is None
    buffer.append(b"EHLO a\r\nMAIL FROM:<x@y.test>\r\nBDAT 3\r\nabcNO")
    assert buffer.take_line(512) == b"EHLO a\r\n"
    assert buffer.take_line(512) == b"MAIL FROM:<x@y.test>\r\n"
    assert buffer.take_line(512) == b"BDAT 3\r\n"
    assert buffer.take(3) == b"abc"
    assert buffer.take_line(512) is None
    buffer.append(b"OP\r\n")
    assert buffer.take_line(512) == b"NOOP\r\n"
    assert len(buffer) == 0


def test_input_buffer_drops_overlong_lines_whole() -> None:
    buffer = InputBuffer()
    buffer.append(b"x" * 600)
    assert buffer.take_line(512) is None
    assert len(buffer) == 0  # a runaway line is not kept in memory
    buffer.append(b"y" * 10_000)
    assert buffer.take_line(512) is None
    buffer.append(b"zz\r\nNOOP\r\n")
    assert buffer.take_line(512) is LINE_TOO_LONG
    assert buffer.take_line(512) == b"NOOP\r\n"
    buffer.append(b"a" * 520 + b"\r\nQUIT\r\n")  # too long, but its end is already here
    assert buffer.take_line(512) is LINE_TOO_LONG
    assert buffer.take_line(512) == b"QUIT\r\n"


# -- layering -------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["smtp", "lines"])
def test_protocol_modules_are_pure(module: str) -> None:
    """DESIGN.md: proto/ reaches the world only through Protocols (no asyncio, sockets, store)."""
    import ast
    from pathlib import Path

    import mailstead.proto

    source = (Path(mailstead.proto.__file__).parent / f"{module}.py").read_text()
    forbidden = ("asyncio", "socket", "ssl", "sqlite3", "psycopg", "threading", "mailstead.net",
                 "mailstead.services", "mailstead.app", "mailstead.obs")
    for node in ast.walk(ast.parse(source)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        for name in names:
            assert not name.startswith(forbidden), name
            assert not name.startswith("mailstead.store") or name == "mailstead.store.interfaces"


# -- header checks: loops (RFC 5321 6.3) and the submitted From: ---------------------------


def received(n: int) -> bytes:
    return b"".join(b"Received: from hop%d.example.org by x; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                    % i for i in range(n))


@pytest.mark.parametrize("hops,expected", [(100, 250), (101, 554)])
async def test_routing_loop_by_received_count(hops: int, expected: int) -> None:
    c = Client(max_message_size=100_000)
    await c.envelope("<alice@example.test>")
    await c.cmd("DATA")
    answer = await c.data(wire(received(hops) + MESSAGE))
    assert answer.code == expected
    if expected == 554:
        assert answer.lines[0].startswith("5.4.6 Routing loop detected")
        assert c.backend.delivered == []
        assert [r.code for _t, _s, r in c.backend.done] == [554]


async def test_received_fields_in_the_body_do_not_count() -> None:
    c = Client(max_message_size=100_000)
    await c.envelope("<alice@example.test>")
    answer = await c.bdat(b"Subject: fwd\r\n\r\n" + received(150), last=True)
    assert answer.code == 250
    # Case and obsolete white space before the colon are still the same field.
    await c.envelope("<alice@example.test>")
    answer = await c.bdat(received(60) + received(41).replace(b"Received:", b"rECEIVED :")
                          + MESSAGE, last=True)
    assert (answer.code, answer.lines[0][:5]) == (554, "5.4.6")


async def test_routing_loop_on_submission_too() -> None:
    c = await logged_in()
    await c.cmd("MAIL FROM:<alice@example.test>")
    await c.cmd("RCPT TO:<bob@example.test>")
    answer = await c.bdat(received(101) + b"From: alice@example.test\r\n" + MESSAGE, last=True)
    assert (answer.code, answer.lines[0][:5]) == (554, "5.4.6")


async def submit(header: bytes, user: str = "alice@example.test") -> Reply:
    c = await logged_in(user)
    assert await c.code(f"MAIL FROM:<{user}>") == "250 2.1.0"
    assert await c.code("RCPT TO:<friend@remote.test>") == "250 2.1.5"
    await c.cmd("DATA")
    answer = await c.data(wire(header + b"Subject: hi\r\n\r\nHello\r\n"))
    assert (answer.code == 250) == bool(c.backend.delivered)
    return answer


@pytest.mark.parametrize("header", [
    b"From: alice@example.test\r\n",
    b"From: Alice <alice@example.test>\r\n",
    b"From: \"Alice, at home\" <Alice+home@Example.Test>\r\n",
    b"from : Alice Q. Liddell (me) <alice@example.test> (really)\r\n",
    b"From: Alice\r\n <alice@example.test>\r\n",  # folded
    b"From: =?utf-8?q?Al=C3=AFce?= <alice@example.test>, alias-of-alice@example.test\r\n",
    "From: Alïce <alice@example.test>\r\n".encode(),  # RFC 6532
])
async def test_submitted_from_owned_is_accepted(header: bytes) -> None:
    assert (await submit(header)).code == 250


@pytest.mark.parametrize("header,shown", [
    (b"From: bob@example.test\r\n", "bob@example.test"),
    (b"From: Alice <bob@example.test>\r\n", "bob@example.test"),
    (b"From: alice@example.test, someone@remote.test\r\n", "someone@remote.test"),
    (b"From: \"alice@example.test\" <ceo@remote.test>\r\n", "ceo@remote.test"),
    (b"From: Alice <alice@example.test.evil.test>\r\n", "alice@example.test.evil.test"),
    (b"From: \"alice\"@example.test\r\n", '"alice"@example.test'),
])
async def test_submitted_from_not_owned_is_refused(header: bytes, shown: str) -> None:
    answer = await submit(header)
    assert (answer.code, answer.lines[0]) == (
        550, f"5.7.1 From: header address <{shown}> not owned by alice@example.test")


@pytest.mark.parametrize("header,text", [
    (b"", "no From: header field"),
    (b"Subject: From: alice@example.test\r\n", "no From: header field"),
    (b"From: alice@example.test\r\nFrom: alice@example.test\r\n", "more than one From:"),
    (b"From:\r\n", "Cannot read"),
    (b"From: undisclosed-senders:;\r\n", "Cannot read"),
    (b"From: friends: alice@example.test;\r\n", "Cannot read"),
    (b"From: alice@example.test <bob@example.test>\r\n", "Cannot read"),
    (b"From: alice@example.test,\r\n", "Cannot read"),
    (b"From: ,alice@example.test\r\n", "Cannot read"),
    (b"From: <alice@example.test\r\n", "Cannot read"),
    (b"From: \"Alice <alice@example.test>\r\n", "Cannot read"),
    (b"From: (Alice <alice@example.test>\r\n", "Cannot read"),
    (b"From: alice@[192.0.2.1]\r\n", "Cannot read"),
    (b"From: <@relay.test:alice@example.test>\r\n", "Cannot read"),
    (b"From: alice@example.test\x00@evil.test\r\n", "Cannot read"),
    (b"From: Alice <alice@example.test> <bob@example.test>\r\n", "Cannot read"),
])
async def test_submitted_from_missing_or_unreadable_is_refused(header: bytes, text: str) -> None:
    answer = await submit(header)
    assert (answer.code, answer.lines[0][:5]) == (550, "5.7.1")
    assert text in answer.lines[0]


async def test_from_is_not_checked_on_mx() -> None:
    c = Client()
    await c.envelope("<alice@example.test>")
    await c.cmd("DATA")
    assert (await c.data(wire(b"From: someone@remote.test\r\n" + MESSAGE))).code == 250
