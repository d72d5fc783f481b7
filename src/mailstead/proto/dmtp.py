"""DMTP, the MailService seed's line protocol for handing a message to a transfer server.

A netcat user types::

    S: ok DMTP2.0
    C: begin                      S: ok
    C: from alice@example.test    S: ok
    C: to bob@example.test,c@x.y  S: ok 2
    C: subject hello              S: ok
    C: data one line of text      S: ok
    C: hash <base64 HMAC>         S: ok
    C: send                       S: ok
    C: quit                       S: ok bye

Every problem is answered ``error <reason>`` and the session goes on. ``hash`` is the base64
HMAC-SHA256, with a secret shared by sites and clients, of from, to (comma-joined), subject
and data joined by newlines (the seed's ``Email.calculateEmailHash``).

Pure code: recipients are checked and messages sent through a ``DmtpBackend``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Protocol

from mailstead.core.addresses import parse_address
from mailstead.core.errors import InvalidInput

GREETING = "ok DMTP2.0"
# The whole message travels on the "data" line; this bounds one line (the listener's stream
# buffer is 256 KiB).
MAX_LINE = 200 * 1024

# Header fields are folded by the email package, whose cost grows faster than their length: a
# subject is held to one RFC 5322 line (section 2.1.1: at most 998 characters), the hash (44
# characters of base64 when well-formed) to a little more than it needs.
MAX_SUBJECT = 998
MAX_HASH = 256

HASH_HEADER = "X-DMTP-Hash"
INTEGRITY_HEADER = "X-DMTP-Integrity"
_LINE_BREAKS = {0x0D: " ", 0x0A: " "}  # str.translate table: CR and LF become spaces


@dataclass
class DmtpMessage:
    sender: str = ""
    recipients: list[str] = field(default_factory=list)
    subject: str = ""
    data: str = ""
    hash: str | None = None


class DmtpRefused(Exception):
    """Becomes ``error <reason>``."""


class DmtpBackend(Protocol):
    async def check_recipient(self, address: str) -> None:
        """Raises DmtpRefused (e.g. "unknown recipient x@y") when mail cannot go there."""
        ...

    async def send(self, message: DmtpMessage) -> None:
        """Delivers or queues the message. Raises DmtpRefused."""
        ...


# -- integrity hash ------------------------------------------------------------------------


def hash_input(sender: str, recipients: Sequence[str], subject: str, data: str) -> bytes:
    return "\n".join([sender, ",".join(recipients), subject, data]).encode("utf-8")


def compute_hash(secret: str, sender: str, recipients: Sequence[str], subject: str,
                 data: str) -> str:
    digest = hmac.new(
        secret.encode("utf-8"), hash_input(sender, recipients, subject, data), hashlib.sha256
    ).digest()
    return base64.b64encode(digest).decode("ascii")


def hash_verifies(secret: str, message: DmtpMessage) -> bool:
    """True when the message carries the right HMAC; a missing hash never verifies."""
    if not message.hash:
        return False
    expected = compute_hash(secret, message.sender, message.recipients, message.subject,
                            message.data)
    return hmac.compare_digest(expected.encode("ascii"), message.hash.strip().encode("utf-8"))


# -- conversion to an Internet message -----------------------------------------------------


# Every control character but TAB, and everything str.splitlines() breaks on (which the email
# package would refuse in a header), becomes a space: RFC 5322 section 2.2 allows only
# printable characters and WSP in a field body, and a stray CR must not break the header.
_HEADER_UNSAFE = {
    **{c: " " for c in range(0x20) if c != 0x09},
    0x7F: " ",
    **{c: " " for c in range(0x80, 0xA0)},
    0x2028: " ",
    0x2029: " ",
}


def _header_safe(text: str) -> str:
    return text.translate(_HEADER_UNSAFE)


def _body_safe(text: str) -> str:
    # NUL may not appear in 8bit text (RFC 2045 section 2.8); CR and LF become CRLF.
    return text.replace("\x00", " ")


def to_rfc5322(
    message: DmtpMessage,
    *,
    date: datetime,
    message_id: str,
    integrity: str | None,
) -> bytes:
    """The RFC 5322 message (CRLF line ends) that DMTP ``send`` stores or relays, with an
    X-DMTP-Integrity field of value ``integrity`` unless it is None (hash not checked)."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _header_safe(message.sender)
    msg["To"] = ", ".join(_header_safe(r) for r in message.recipients)
    msg["Subject"] = _header_safe(message.subject)
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id
    if message.hash:
        msg[HASH_HEADER] = _header_safe(message.hash.strip())
    if integrity is not None:  # "pass", "none" or "fail" (mailsec/integrity.py)
        msg[INTEGRITY_HEADER] = integrity
    msg.set_content(_body_safe(message.data) + "\n")
    return msg.as_bytes()


# -- session -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    close: bool = False

    @property
    def wire(self) -> bytes:
        return self.text.encode("utf-8") + b"\r\n"


class DmtpSession:
    """Feed each line to ``receive``; send ``Reply.wire``; close when ``Reply.close``."""

    def __init__(self, backend: DmtpBackend, *, max_errors: int, max_recipients: int = 100
                 ) -> None:
        self.backend = backend
        # Like SMTP's limit (RFC 5321 section 4.5.3.1.8: at least 100 must be accepted).
        self.max_recipients = max_recipients
        # Mistakes are forgiven (netcat users type), but a stream of nothing else ends it.
        self.max_errors = max_errors
        self.errors_in_a_row = 0
        self.message: DmtpMessage | None = None

    def greeting(self) -> bytes:
        return Reply(GREETING).wire

    def error(self, reason: str) -> Reply:
        # A reason may quote the client's line, which can hold a lone CR: the seed's clients
        # (Java's readLine) end a line there too, and would read the rest as the next reply.
        reason = reason.translate(_LINE_BREAKS)
        self.errors_in_a_row += 1
        if self.errors_in_a_row >= self.max_errors:
            return Reply(f"error {reason}\r\nerror too many errors, closing connection",
                         close=True)
        return Reply(f"error {reason}")

    def line_too_long(self) -> Reply:
        return self.error("line too long")

    async def receive(self, raw: bytes) -> Reply:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        command, _, argument = line.partition(" ")
        handler = self._COMMANDS.get(command.lower())
        if handler is None:
            return self.error("unknown command" if command else "empty line")
        if command.lower() not in ("begin", "quit") and self.message is None:
            return self.error("begin first")
        reply = await handler(self, argument)
        if not reply.text.startswith("error"):
            self.errors_in_a_row = 0
        return reply

    async def _begin(self, argument: str) -> Reply:
        self.message = DmtpMessage()
        return Reply("ok")

    async def _from(self, argument: str) -> Reply:
        assert self.message is not None
        try:
            self.message.sender = str(parse_address(argument.strip()))
        except InvalidInput:
            return self.error("invalid address")
        return Reply("ok")

    async def _to(self, argument: str) -> Reply:
        assert self.message is not None
        items = [item.strip() for item in argument.split(",") if item.strip()]
        if len(items) > self.max_recipients:
            # Checked before any lookup, so a long list costs no work.
            return self.error(f"too many recipients (at most {self.max_recipients})")
        recipients: list[str] = []
        for item in items:
            try:
                address = str(parse_address(item))
            except InvalidInput:
                return self.error(f"invalid address {item}")
            try:
                await self.backend.check_recipient(address)
            except DmtpRefused as refusal:
                return self.error(str(refusal))
            if address not in recipients:
                recipients.append(address)
        if not recipients:
            return self.error("recipients expected")
        self.message.recipients = recipients
        return Reply(f"ok {len(recipients)}")

    async def _subject(self, argument: str) -> Reply:
        assert self.message is not None
        if not argument.strip():
            return self.error("subject expected")
        if len(argument) > MAX_SUBJECT:
            return self.error(f"subject too long (at most {MAX_SUBJECT} characters)")
        self.message.subject = argument
        return Reply("ok")

    async def _data(self, argument: str) -> Reply:
        assert self.message is not None
        if not argument.strip():
            return self.error("data expected")
        self.message.data = argument
        return Reply("ok")

    async def _hash(self, argument: str) -> Reply:
        assert self.message is not None
        if not argument.strip():
            return self.error("hash expected")
        if len(argument.strip()) > MAX_HASH:
            return self.error(f"hash too long (at most {MAX_HASH} characters)")
        self.message.hash = argument.strip()
        return Reply("ok")

    async def _send(self, argument: str) -> Reply:
        message = self.message
        assert message is not None
        for missing, name in (
            (not message.sender, "from"),
            (not message.recipients, "to"),
            (not message.subject, "subject"),
            (not message.data, "data"),
        ):
            if missing:
                return self.error(f"no {name}")
        try:
            await self.backend.send(message)
        except DmtpRefused as refusal:
            return self.error(str(refusal))
        self.message = None  # the next message starts with a new "begin"
        return Reply("ok")

    async def _quit(self, argument: str) -> Reply:
        return Reply("ok bye", close=True)

    _COMMANDS = {
        "begin": _begin,
        "from": _from,
        "to": _to,
        "subject": _subject,
        "data": _data,
        "hash": _hash,
        "send": _send,
        "quit": _quit,
    }
