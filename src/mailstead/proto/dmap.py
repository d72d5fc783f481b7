"""DMAP, the MailService seed's line protocol for reading a mailbox.

    S: ok DMAP2.0
    C: login alice@example.test secret     S: ok
    C: list                                S: 3 bob@example.test hello
                                           S: ok
    C: show 3                              S: from bob@example.test
                                           S: to alice@example.test
                                           S: subject hello
                                           S: data the text
                                           S: hash <base64 HMAC or empty>
                                           S: ok
    C: delete 3                            S: ok
    C: logout                              S: ok
    C: quit                                S: ok bye

``startsecure`` switches to an encrypted, authenticated channel (see ``dmap_crypto``). Once
secure, a reply of several lines is sealed as one unit, its lines joined by LF, and sent as one
base64 line: that is how the seed's client reads ``list`` and ``show``. Problems are answered
``error <reason>`` and the session goes on, except that a line the secure channel refuses
(altered, replayed, out of order, not base64, too long) ends the session: ``error <reason>``,
sealed, then close.

Pure code: the mailbox is reached through a ``DmapBackend``.
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import rsa

from mailstead.proto.dmap_crypto import (
    ChannelError,
    HandshakeError,
    SecureChannel,
    new_server_nonce,
    open_client_hello,
)

GREETING = "ok DMAP2.0"
MAX_LINE = 8192


@dataclass(frozen=True, slots=True)
class ListedMessage:
    id: int
    sender: str
    subject: str


@dataclass(frozen=True, slots=True)
class ShownMessage:
    sender: str
    recipients: Sequence[str]
    subject: str
    data: str
    hash: str


class DmapRefused(Exception):
    """Becomes ``error <reason>``."""


class DmapMailbox(Protocol):
    async def list(self) -> list[ListedMessage]: ...

    async def show(self, message_id: int) -> ShownMessage:
        """Raises DmapRefused("unknown message id")."""
        ...

    async def delete(self, message_id: int) -> None:
        """Raises DmapRefused("unknown message id")."""
        ...


class DmapBackend(Protocol):
    component_id: str

    async def login(self, username: str, password: str) -> DmapMailbox:
        """Raises DmapRefused with the reason."""
        ...

    def server_key(self) -> rsa.RSAPrivateKey: ...


def one_line(text: str) -> str:
    """A field value that cannot break the line protocol: line breaks become spaces."""
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


class Channel(enum.Enum):
    PLAIN = "plain"
    AWAIT_HELLO = "await_hello"  # sent "ok <component-id> <nonce>", waiting for the RSA message
    AWAIT_CONFIRM = "await_confirm"  # sent the encrypted "ok <challenge>", waiting for "ok"
    SECURE = "secure"


@dataclass(frozen=True, slots=True)
class Reply:
    data: bytes
    close: bool = False


class DmapSession:
    def __init__(self, backend: DmapBackend, *, max_errors: int) -> None:
        self.backend = backend
        self.max_errors = max_errors
        self.errors_in_a_row = 0
        self.channel = Channel.PLAIN
        self.cipher: SecureChannel | None = None
        self.server_nonce = b""
        self.mailbox: DmapMailbox | None = None

    def greeting(self) -> bytes:
        return GREETING.encode("ascii") + b"\r\n"

    # -- framing --

    def _frame(self, lines: list[str], close: bool = False) -> Reply:
        if self.channel is Channel.SECURE:
            assert self.cipher is not None
            return Reply(self.cipher.seal("\n".join(lines)).encode("ascii") + b"\r\n", close)
        return Reply("".join(line + "\r\n" for line in lines).encode("utf-8"), close)

    def _error(self, reason: str) -> Reply:
        self.errors_in_a_row += 1
        lines = [f"error {reason}"]
        if self.errors_in_a_row >= self.max_errors:
            return self._frame([*lines, "error too many errors, closing connection"], True)
        return self._frame(lines)

    def _fatal(self, reason: str) -> Reply:
        """The secure channel refused a line: say why (sealed, so the client can read it)
        and close. Nothing after a bad line is accepted, so nothing can be slipped in."""
        return self._frame([f"error {reason}"], close=True)

    def line_too_long(self) -> Reply:
        if self.channel is Channel.AWAIT_HELLO:
            self.channel = Channel.PLAIN  # the handshake is abandoned
        elif self.channel is not Channel.PLAIN:
            # The client counted the line; we cannot: the two counters would disagree.
            self.channel = Channel.SECURE
            return self._fatal("line too long, closing connection")
        return self._error("line too long")

    async def receive(self, raw: bytes) -> Reply:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if self.channel is Channel.AWAIT_HELLO:
            return self._hello(line)
        if self.channel is Channel.AWAIT_CONFIRM:
            return self._confirm(line)
        if self.channel is Channel.SECURE:
            assert self.cipher is not None
            try:
                line = self.cipher.open(line)
            except ChannelError as refusal:
                return self._fatal(f"{refusal}, closing connection")
        return await self._command(line)

    # -- startsecure --

    def _hello(self, line: str) -> Reply:
        try:
            handshake = open_client_hello(self.backend.server_key(), line, self.server_nonce)
        except HandshakeError:
            self.channel = Channel.PLAIN
            return self._error("startsecure failed")
        self.cipher = handshake.channel
        self.channel = Channel.AWAIT_CONFIRM
        return Reply(self.cipher.seal(f"ok {handshake.challenge}").encode("ascii") + b"\r\n")

    def _confirm(self, line: str) -> Reply:
        assert self.cipher is not None
        # Only a sealed "ok" (the seed's client also took a clear one: no longer).
        self.channel = Channel.SECURE
        try:
            confirmed = self.cipher.open(line) == "ok"
        except ChannelError:
            confirmed = False
        if not confirmed:
            return self._fatal("startsecure not confirmed, closing connection")
        self.errors_in_a_row = 0
        return Reply(b"")

    # -- commands --

    async def _command(self, line: str) -> Reply:
        command, _, argument = line.partition(" ")
        handler = self._COMMANDS.get(command.lower())
        if handler is None:
            return self._error("unknown command" if command else "empty line")
        return await handler(self, argument.strip())

    def _ok(self, lines: list[str] | None = None, close: bool = False) -> Reply:
        self.errors_in_a_row = 0
        return self._frame([*(lines or []), "ok"], close)

    async def _startsecure(self, argument: str) -> Reply:
        if self.channel is Channel.SECURE:
            return self._error("already secure")
        self.channel = Channel.AWAIT_HELLO
        # errors_in_a_row is not reset: failed handshakes (an RSA decryption each) add up to
        # max_errors like any other error and end the session.
        # Fresh for every startsecure: the channel's keys depend on it (see dmap_crypto).
        self.server_nonce = new_server_nonce()
        nonce = base64.b64encode(self.server_nonce).decode("ascii")
        return Reply(f"ok {self.backend.component_id} {nonce}\r\n".encode())

    async def _login(self, argument: str) -> Reply:
        if self.mailbox is not None:
            return self._error("logout first")
        username, _, password = argument.partition(" ")
        if not username or not password:
            return self._error("usage: login <user> <password>")
        try:
            self.mailbox = await self.backend.login(username, password)
        except DmapRefused as refusal:
            return self._error(str(refusal))
        return self._ok()

    def _message_id(self, argument: str) -> int | None:
        # ASCII digits only: str.isdigit() also takes "²", which int() refuses. Ids are UIDs,
        # 32-bit (RFC 9051 section 2.3.1.1); a larger number is no message's (0 stands in).
        if not (argument.isascii() and argument.isdigit()):
            return None
        return int(argument) if len(argument) <= 10 and int(argument) < 2**32 else 0

    async def _list(self, argument: str) -> Reply:
        if self.mailbox is None:
            return self._error("not logged in")
        messages = await self.mailbox.list()
        return self._ok([f"{m.id} {one_line(m.sender)} {one_line(m.subject)}" for m in messages])

    async def _show(self, argument: str) -> Reply:
        if self.mailbox is None:
            return self._error("not logged in")
        message_id = self._message_id(argument)
        if message_id is None:
            return self._error("usage: show <id>")
        try:
            m = await self.mailbox.show(message_id)
        except DmapRefused as refusal:
            return self._error(str(refusal))
        return self._ok([
            f"from {one_line(m.sender)}",
            f"to {one_line(','.join(m.recipients))}",
            f"subject {one_line(m.subject)}",
            f"data {one_line(m.data)}",
            f"hash {one_line(m.hash)}",
        ])

    async def _delete(self, argument: str) -> Reply:
        if self.mailbox is None:
            return self._error("not logged in")
        message_id = self._message_id(argument)
        if message_id is None:
            return self._error("usage: delete <id>")
        try:
            await self.mailbox.delete(message_id)
        except DmapRefused as refusal:
            return self._error(str(refusal))
        return self._ok()

    async def _logout(self, argument: str) -> Reply:
        if self.mailbox is None:
            return self._error("not logged in")
        self.mailbox = None
        return self._ok()

    async def _quit(self, argument: str) -> Reply:
        self.mailbox = None
        self.errors_in_a_row = 0
        return self._frame(["ok bye"], close=True)

    _COMMANDS = {
        "startsecure": _startsecure,
        "login": _login,
        "list": _list,
        "show": _show,
        "delete": _delete,
        "logout": _logout,
        "quit": _quit,
    }
