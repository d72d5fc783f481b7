"""The plug-in interface for inbound checks and delivery filters (README: "Checks and plug-ins").

An inbound check is an object with any of four async hooks, one per SMTP phase:

    connect(ctx)            a client connected (before the greeting)
    mail(ctx, sender)       MAIL FROM:<sender> ("" is the null sender)
    rcpt(ctx, address)      RCPT TO:<address>, a recipient we would accept
    data(ctx, message)      the whole message, before it is acknowledged

Each hook returns ``None`` (accept), one ``Verdict`` or a sequence of them, made with the
helpers below: ``accept()``, ``reject(code, status, text)``, ``tempfail(code, status, text)``,
``add_header(name, value)`` and ``score(points, test)``. The chain (checks/chain.py) runs the
checks in order and merges what they say: the first reject or tempfail answers the client,
headers accumulate and head the stored message, scores add into the spam score.

A check is made by a factory: ``factory(setup: CheckSetup) -> check``, named by a Python entry
point of the group ``mailstead.checks`` in the plug-in's package, or by ``[checks] modules =
["pkg.mod:factory"]``. ``setup.options`` is the check's own table of the configuration
(``[checks.NAME]``).

A delivery filter (``DeliveryFilter``) runs for each local recipient account when the message
is stored, and may file the copy in another mailbox, set flags and add header fields. It cannot
discard a copy: mail we acknowledged is kept (file it in Junk or Trash instead). Factories of
delivery filters are entry points of the group ``mailstead.filters``.

Nothing here may raise at the client: an exception or a hook slower than ``[checks] timeout`` is
logged and counts as accept (or as tempfail, with ``[checks] on_error = "tempfail"``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from mailstead.dns import Resolver
    from mailstead.store.interfaces import Account

Phase = Literal["connect", "mail", "rcpt", "data"]
PHASES: tuple[Phase, ...] = ("connect", "mail", "rcpt", "data")
Action = Literal["accept", "reject", "tempfail"]

# RFC 5322 2.2: a field name is printable US-ASCII but the colon.
_FIELD_NAME = re.compile(r"^[!-9;-~]{1,76}$")
_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")  # RFC 3463 2: class.subject.detail


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one hook says. Build it with the helpers, not by hand."""

    action: Action = "accept"
    code: int = 0
    status: str = ""  # enhanced status code (RFC 3463), e.g. "5.7.1"
    text: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    points: float = 0.0
    tests: tuple[str, ...] = ()


def accept() -> Verdict:
    return Verdict()


def reject(code: int = 550, status: str = "5.7.1", text: str = "Message refused") -> Verdict:
    """A permanent refusal: ``code`` 5xx, ``status`` 5.x.y (RFC 5321 4.2, RFC 3463)."""
    if not 500 <= code <= 599 or not _STATUS.match(status) or status[0] != "5":
        raise ValueError(f"reject needs a 5xx code and a 5.x.y status, not {code} {status}")
    return Verdict("reject", code, status, _one_line(text))


def tempfail(code: int = 451, status: str = "4.7.1", text: str = "Try again later") -> Verdict:
    """A refusal for now: ``code`` 4xx, ``status`` 4.x.y; the client tries again later."""
    if not 400 <= code <= 499 or not _STATUS.match(status) or status[0] != "4":
        raise ValueError(f"tempfail needs a 4xx code and a 4.x.y status, not {code} {status}")
    return Verdict("tempfail", code, status, _one_line(text))


def add_header(name: str, value: str) -> Verdict:
    """A header field put at the top of the stored message (one line; no CR or LF)."""
    if not _FIELD_NAME.match(name):
        raise ValueError(f"not a header field name: {name!r}")
    if "\r" in value or "\n" in value or "\x00" in value or len(value) > 900:
        raise ValueError(f"header value for {name} must be one line of at most 900 characters")
    return Verdict(headers=((name, value),))


def score(points: float, test: str) -> Verdict:
    """Points added to the message's spam score, under the test name ``test``."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", test):
        raise ValueError(f"not a test name (letters, digits, _ . -): {test!r}")
    return Verdict(points=float(points), tests=(test,))


def _one_line(text: str) -> str:
    return "".join(c for c in text if c.isprintable())[:400] or "-"


HookResult = Verdict | Sequence[Verdict] | None


@dataclass(slots=True)
class CheckContext:
    """What a check knows about the session. One per connection; the transaction fields are
    reset at each MAIL."""

    client_ip: str
    listener: str
    session_id: str
    submission: bool = False  # the submission listener (plug-ins skip it unless configured)
    helo: str = ""
    tls: bool = False
    account: str | None = None  # the authenticated user (submission), else None
    sender: str | None = None  # after MAIL
    recipients: list[str] = field(default_factory=list)  # accepted so far
    # Accounts the current recipient (rcpt) or the message (data) goes to.
    accounts: Sequence[Account] = ()
    message: bytes = b""  # at data: the message as the built-in checks left it
    # Free space for checks to leave notes for later phases (per transaction).
    notes: dict[str, Any] = field(default_factory=dict)
    # What the checks said so far in this transaction (the connect phase's included).
    headers: list[tuple[str, str]] = field(default_factory=list)
    points: float = 0.0
    tests: list[str] = field(default_factory=list)


class Check:
    """Base class of inbound checks: override the hooks you need (the others are skipped)."""

    name = "check"

    async def connect(self, ctx: CheckContext) -> HookResult:
        return None

    async def mail(self, ctx: CheckContext, sender: str) -> HookResult:
        return None

    async def rcpt(self, ctx: CheckContext, address: str) -> HookResult:
        return None

    async def data(self, ctx: CheckContext, message: bytes) -> HookResult:
        return None

    async def close(self) -> None:
        """Called once when the server stops."""


@dataclass(frozen=True, slots=True)
class CheckSetup:
    """Handed to a factory: the check's name, its options table and what it may use."""

    name: str
    options: Mapping[str, Any]
    hostname: str
    resolver: Resolver  # the server's resolver for inbound checks (mailstead.dns)
    log: Callable[..., None]  # log(event, **fields): one structured line


Factory = Callable[[CheckSetup], Any]


# -- delivery filters ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FilterContext:
    """One local recipient's copy at delivery."""

    account: str  # the account's address
    sender: str
    recipients: Sequence[str]
    client_ip: str
    is_spam: bool
    spam_score: float | None
    authenticated: bool  # submitted by one of our users


@dataclass(frozen=True, slots=True)
class Filing:
    """What a delivery filter decides for one copy. ``mailbox``: file it there (it must exist;
    a missing one keeps the usual mailbox). ``flags``: IMAP flags or keywords to set (``\\Seen``,
    ``$Label1``). ``headers``: fields put at the top of this copy. There is no discard."""

    mailbox: str | None = None
    flags: frozenset[str] = frozenset()
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for name, value in self.headers:
            add_header(name, value)  # the same rules as a check's


class DeliveryFilter:
    """Base class of delivery filters."""

    name = "filter"

    async def deliver(self, ctx: FilterContext, message: bytes) -> Filing | None:
        return None


class FilterHook(Protocol):
    """How DeliveryService sees the filters (checks/chain.py FilterChain)."""

    def __bool__(self) -> bool: ...

    def run(self, ctx: FilterContext, message: bytes) -> Awaitable[Filing]: ...


__all__ = [
    "PHASES", "Check", "CheckContext", "CheckSetup", "DeliveryFilter", "Factory", "Filing",
    "FilterContext", "FilterHook", "HookResult", "Phase", "Verdict", "accept", "add_header",
    "reject", "score", "tempfail",
]
