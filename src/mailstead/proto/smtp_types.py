"""The SMTP session's types and interfaces (moved out of proto/smtp.py): replies, the
transaction, what the session asks of the server (``SmtpBackend``, ``SessionChecks``) and the
policy of a listener. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal, Protocol, TypeVar

from mailstead.core.addresses import Address
from mailstead.core.models import Account
from mailstead.proto.lines import MAX_LINE_DEFAULT, BareNewlines

T = TypeVar("T")

# Extensions lengthen the 512-octet command line (RFC 5321 4.5.3.1.4): SIZE adds 26 (RFC 1870),
# DSN 100 to MAIL and 500 to RCPT (RFC 3461 4), AUTH= 500 to MAIL (RFC 4954 5), and the AUTH
# command with its initial response may reach 12288 (RFC 4954 4). These round the sums up.
LONGEST_LINE = 12288

# RFC 5321 6.3: a message that has passed more hops than this is looping. The RFC asks for a limit
# of at least 100 Received fields; one more than that is refused.
MAX_RECEIVED = 100
# Distinct addresses a submitted From: field may name (each is one ownership look-up).
MAX_FROM_MAILBOXES = 100

BodyType = Literal["7BIT", "8BITMIME", "BINARYMIME"]
QuotaState = Literal["ok", "full", "too_big"]


class Action(Enum):
    """What the driver does after writing a reply."""

    NONE = "none"
    READ_DATA = "read_data"  # read the message up to <CRLF>.<CRLF>, then call on_data
    READ_CHUNK = "read_chunk"  # read chunk_size octets (on_chunk), then call on_chunk_end
    DISCARD_CHUNK = "discard_chunk"  # write the reply now, then read and drop chunk_size octets
    START_TLS = "start_tls"  # handshake, then call tls_started
    CLOSE = "close"  # hang up


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    lines: tuple[str, ...]
    action: Action = Action.NONE
    chunk_size: int = 0  # for READ_CHUNK and DISCARD_CHUNK

    def encode(self) -> bytes:
        """Wire form: "250-..." for every line but the last, "250 ..." for the last."""
        lines = self.lines
        if len(lines) == 1:  # nearly every reply
            return f"{self.code} {lines[0]}\r\n".encode()
        if not lines:
            return b""
        code = self.code
        return (f"{code}-" + f"\r\n{code}-".join(lines[:-1])
                + f"\r\n{code} {lines[-1]}\r\n").encode("utf-8")


def reply(code: int, status: str, text: str, action: Action = Action.NONE) -> Reply:
    """A one-line reply with its enhanced status code (RFC 2034)."""
    return Reply(code, (f"{status} {text}",), action)


# RFC 5321 4.5.3.1.10: the client sends the recipients over the limit in a later transaction; this
# is no protocol error, so it neither counts towards max_errors nor refuses the transaction.
TOO_MANY_RECIPIENTS = reply(452, "4.5.3", "Too many recipients")


class MessageRefused(Exception):
    """Raised by ``SmtpBackend.deliver`` to refuse a message for good (e.g. DMARC reject)."""

    def __init__(self, text: str, code: int = 550, status: str = "5.7.1") -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.status = status


class MessageDeferred(Exception):
    """Raised by ``SmtpBackend.deliver`` to refuse a message for now (e.g. a sending cap)."""

    def __init__(self, text: str, code: int = 450, status: str = "4.7.1") -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.status = status


class AuthRefused(Exception):
    """The backend refused a login. ``temporary`` marks a lockout (454) rather than bad
    credentials (535)."""

    def __init__(self, temporary: bool = False) -> None:
        super().__init__("temporary" if temporary else "invalid credentials")
        self.temporary = temporary


class RouteLike(Protocol):
    """Where one recipient's mail goes (``mailstead.services.accounts.Route`` fits)."""

    @property
    def local(self) -> Sequence[Account]: ...

    @property
    def remote(self) -> Sequence[str]: ...


@dataclass(slots=True)
class Recipient:
    address: str  # as accepted, domain normalised
    local: list[Account]
    remote: list[str]
    notify: str = ""  # DSN NOTIFY, upper case, comma separated
    orcpt: str = ""  # DSN ORCPT, xtext decoded: "rfc822;bob@example.org"


@dataclass(slots=True)
class Transaction:
    """One mail transaction: MAIL, its RCPTs, and how the message was announced."""

    sender: str  # "" is the null reverse-path
    body: BodyType = "7BIT"
    smtputf8: bool = False
    declared_size: int = 0
    ret: str = ""  # DSN RET: FULL or HDRS
    envid: str = ""  # DSN ENVID, xtext decoded
    requiretls: bool = False
    recipients: list[Recipient] = field(default_factory=list)
    rcpt_refused: int = 0
    # Filled in when the message is handed to the backend:
    helo: str = ""
    protocol: str = ""  # Received "with" keyword: ESMTP, ESMTPSA, UTF8SMTPS... (RFC 3848, 6531)
    account: Account | None = None
    client_ip: str = ""


class SmtpBackend(Protocol):
    """What the session needs from the rest of the server."""

    async def is_local_domain(self, domain: str) -> bool: ...

    async def route(self, address: Address) -> RouteLike:
        """Accounts and remote addresses that mail for ``address`` goes to; empty if unknown."""

    async def check_recipient(self, txn: Transaction, route: RouteLike) -> Reply | None: ...

    async def quota_state(self, account: Account, size: int) -> QuotaState:
        """"full" when the account cannot take more now, "too_big" when ``size`` alone can
        never fit its quota."""

    async def authenticate(self, username: str, password: str) -> Account:
        """The account, or AuthRefused (after any rate-limit delay)."""

    async def owns_address(self, account: Account, address: Address) -> bool: ...

    def postmaster(self) -> Address | None:
        """The address an unqualified ``<postmaster>`` means (RFC 5321 4.5.1)."""

    async def deliver(self, txn: Transaction, message: bytes) -> str:
        """Stores the message durably for every recipient; returns its queue id. Raises
        QuotaExceeded when a mailbox cannot take it."""

    def transaction_done(self, txn: Transaction, size: int, result: Reply) -> None:
        """Called once per finished transaction (accepted or refused), for the log."""

    async def off_loop(self, work: Callable[[], T]) -> T:
        """``work()``, a pure step that passes over a whole large message (the checks of a
        BDAT message over ``lines.OFF_LOOP_SIZE``), run where it does not hold the other
        sessions (a thread)."""


class SessionChecks(Protocol):
    """The inbound checks of the connect, MAIL and RCPT phases (net/smtp_server.py runs them
    through checks/chain.py); each answers None to go on, or the refusal. The DATA phase's
    run inside ``SmtpBackend.deliver``."""

    async def at_connect(self) -> Reply | None: ...

    async def at_mail(self, txn: Transaction) -> Reply | None: ...

    async def at_rcpt(self, txn: Transaction, address: str, route: RouteLike) -> Reply | None:
        ...


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    hostname: str
    submission: bool  # RFC 6409 rules: AUTH required, sender must be owned, any recipient
    max_message_size: int
    max_recipients: int
    max_errors: int
    starttls_offered: bool  # this connection may upgrade with STARTTLS
    plaintext_auth_allowed: bool  # AUTH without TLS is allowed (loopback client, config says so)
    client_ip: str = ""
    bare_newlines: BareNewlines = "normalize"  # a lone CR or LF in a message: CRLF, or refused
    max_line: int = MAX_LINE_DEFAULT  # longest message line accepted, CRLF included
