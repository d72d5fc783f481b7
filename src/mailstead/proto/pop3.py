"""POP3 session state machine: RFC 1939, with CAPA and response codes (RFC 2449), STLS
(RFC 2595), AUTH PLAIN/LOGIN (RFC 5034) and the extended codes of RFC 3206.

Pure code: no sockets, no store. A ``Pop3Session`` is fed one command line at a time and
answers with the bytes to send. Logins go through a ``Pop3Backend`` that hands back a locked
``Maildrop`` (the INBOX snapshot taken at login, RFC 1939 section 8); deletions reach it only
in the UPDATE state after QUIT, so a dropped connection deletes nothing.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# RFC 2449 section 4: a command line is at most 255 octets. Some slack for sloppy clients and
# for AUTH initial responses carrying long passwords.
MAX_LINE = 1024

CRLF = b"\r\n"


class State(enum.Enum):
    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"
    UPDATE = "update"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Pop3Message:
    """One entry of the maildrop snapshot: its unique id (UIDL) and its size in octets."""

    uid: str
    size: int


class Refused(Exception):
    """A backend or maildrop refusal that becomes ``-ERR [CODE] text`` (RFC 2449 section 8)."""

    def __init__(self, code: str | None, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class Maildrop(Protocol):
    """The locked mailbox of one POP3 session."""

    @property
    def messages(self) -> Sequence[Pop3Message]:
        """The snapshot taken at login, message 1 first."""
        ...

    async def fetch(self, index: int) -> bytes:
        """The raw message at 0-based ``index``. Raises Refused when it cannot be served."""
        ...

    async def commit(self, deleted: Sequence[int], retrieved: Sequence[int]) -> int:
        """UPDATE state: removes the messages at the 0-based ``deleted`` indexes (marking the
        ``retrieved`` ones as seen); returns how many were removed. Raises Refused."""
        ...

    def release(self) -> None:
        """Gives the maildrop lock back. Called exactly once, whatever happened."""
        ...


class Pop3Backend(Protocol):
    async def open_maildrop(self, username: str, password: str) -> Maildrop:
        """Checks the password and locks the maildrop. Raises Refused with code AUTH (bad
        credentials), SYS/TEMP (login rate limit) or IN-USE (another session holds it)."""
        ...


@dataclass(frozen=True, slots=True)
class Reply:
    data: bytes
    start_tls: bool = False  # the driver must now run the TLS handshake (STLS)
    close: bool = False  # the driver must close the connection after sending ``data``


def ok(text: str = "") -> bytes:
    return b"+OK" + (b" " + text.encode("utf-8") if text else b"") + CRLF


def err(text: str, code: str | None = None) -> bytes:
    prefix = f"[{code}] " if code else ""
    return b"-ERR " + (prefix + text).encode("utf-8") + CRLF


def multiline(first: bytes, lines: Sequence[str]) -> bytes:
    """A +OK reply followed by lines and the terminating dot (RFC 1939 section 3)."""
    body = b"".join(stuff_line(line.encode("utf-8")) + CRLF for line in lines)
    return first + body + b"." + CRLF


def stuff_line(line: bytes) -> bytes:
    # RFC 1939 section 3: a line starting with the termination octet gets one more.
    return b"." + line if line.startswith(b".") else line


def message_lines(data: bytes) -> list[bytes]:
    """The message split into lines without their endings (CRLF or a bare LF)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the final line ending, not an empty last line
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def dot_stuffed(lines: Sequence[bytes]) -> bytes:
    """Lines sent as a multi-line body: CRLF endings, dot-stuffed, ending in CRLF.CRLF."""
    return b"".join(stuff_line(line) + CRLF for line in lines) + b"." + CRLF


def crlf_lines(data: bytes) -> bytes:
    """``message_lines`` joined with CRLF after each line, computed at C speed: a 25 MB
    message of short lines would otherwise cost seconds of the event loop (issue 16)."""
    if data.endswith(b"\r"):
        data = data[:-1] + b"\r\n"  # a final line "x\r" without its LF is the line "x"
    if data.count(b"\n") != data.count(b"\r\n"):  # bare LFs: each line ending becomes CRLF
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def stuffed(lines: bytes) -> bytes:
    """CRLF lines (``crlf_lines``) dot-stuffed and terminated (RFC 1939 section 3)."""
    if lines.startswith(b"."):
        lines = b"." + lines
    return lines.replace(b"\r\n.", b"\r\n..") + b"." + CRLF


def top_section(data: bytes, body_lines: int) -> bytes:
    """``top_lines`` as CRLF lines, at C speed: the header, the blank line and the first
    ``body_lines`` lines of the body."""
    lines = crlf_lines(data)
    if lines.startswith(b"\r\n"):
        blank = 0
    else:
        blank = lines.find(b"\r\n\r\n")
        if blank < 0:
            return lines  # headers only
        blank += 2
    pos = blank + 2
    left = body_lines
    while True:  # whole 64 KB chunks counted at C speed, then line by line in the last one
        chunk_end = min(pos + 65536, len(lines))
        in_chunk = lines.count(b"\n", pos, chunk_end)
        if in_chunk >= left:
            break
        if chunk_end == len(lines):
            return lines
        left -= in_chunk
        pos = chunk_end
    for _ in range(left):
        pos = lines.find(b"\n", pos) + 1
    return lines[:pos]


def top_lines(data: bytes, body_lines: int) -> list[bytes]:
    """The header section, the blank line and the first ``body_lines`` body lines (TOP)."""
    lines = message_lines(data)
    try:
        blank = lines.index(b"")
    except ValueError:
        return lines  # headers only
    return lines[: blank + 1 + body_lines]


def _decode_b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


class Pop3Session:
    """One POP3 conversation. Call ``greeting`` once, then ``receive`` for each line; honour
    ``Reply.start_tls`` (then call ``tls_started``) and ``Reply.close``; call ``abort`` when
    the connection ends for any reason (it releases the lock and deletes nothing)."""

    def __init__(
        self,
        backend: Pop3Backend,
        *,
        tls_active: bool,
        tls_available: bool,
        plaintext_allowed: bool,
        max_errors: int,
        implementation: str = "mailstead",
    ) -> None:
        self.backend = backend
        self.tls_active = tls_active
        self.tls_available = tls_available
        # Passwords may travel without TLS only where the config allows it (loopback).
        self.plaintext_allowed = plaintext_allowed
        self.max_errors = max_errors
        self.implementation = implementation
        self.state = State.AUTHORIZATION
        self.errors = 0
        self.username: str | None = None
        self.maildrop: Maildrop | None = None
        self.deleted: set[int] = set()
        self.retrieved: set[int] = set()
        self._sasl: _SaslExchange | None = None

    # -- driver interface --

    def greeting(self) -> bytes:
        return ok(f"{self.implementation} POP3 server ready")

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def tls_started(self) -> None:
        self.tls_active = True

    def line_too_long(self) -> Reply:
        return self._error(err("line too long"))

    def abort(self) -> None:
        """The connection went away: unlock, delete nothing (RFC 1939 section 6)."""
        if self.maildrop is not None:
            self.maildrop.release()
            self.maildrop = None
        self.state = State.CLOSED

    async def receive(self, raw: bytes) -> Reply:
        line = raw.rstrip(b"\r\n").decode("utf-8", errors="replace")
        if self._sasl is not None:
            return await self._sasl_step(line)
        command, _, args = line.partition(" ")
        command = command.upper()
        args = args.strip()
        if self.state is State.AUTHORIZATION:
            handler = self._AUTHORIZATION.get(command)
        else:
            handler = self._TRANSACTION.get(command)
        if handler is None:
            if command in self._AUTHORIZATION or command in self._TRANSACTION:
                return self._error(err(f"{command} not allowed in this state"))
            return self._error(err("unknown command"))
        return await handler(self, args)

    # -- helpers --

    def _error(self, data: bytes) -> Reply:
        """Counts a client error; past the limit the session ends."""
        self.errors += 1
        if self.errors >= self.max_errors:
            self.abort()
            return Reply(data + err("too many errors, closing connection"), close=True)
        return Reply(data)

    @property
    def _login_allowed(self) -> bool:
        return self.tls_active or self.plaintext_allowed

    def _message_index(self, arg: str) -> int | Reply:
        """0-based index of a live message from a message-number argument, or the -ERR."""
        if not (arg.isascii() and arg.isdigit()):  # isdigit() alone takes "²", int() does not
            return self._error(err("invalid message number"))
        assert self.maildrop is not None
        number = int(arg)
        if number < 1 or number > len(self.maildrop.messages):
            return self._error(err("no such message"))
        if number - 1 in self.deleted:
            return self._error(err(f"message {number} already deleted"))
        return number - 1

    # -- AUTHORIZATION state --

    async def _capa(self, args: str) -> Reply:
        # RFC 2449 section 5; login methods only where a login would be accepted.
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.state is State.AUTHORIZATION:
            if self.tls_available and not self.tls_active:
                caps.append("STLS")
            if self._login_allowed:
                caps += ["USER", "SASL PLAIN LOGIN"]
        caps.append(f"IMPLEMENTATION {self.implementation}")
        return Reply(multiline(ok("Capability list follows"), caps))

    async def _stls(self, args: str) -> Reply:
        if self.tls_active:
            return self._error(err("already using TLS"))
        if not self.tls_available:
            return self._error(err("TLS not available"))
        if self.username is not None:
            return self._error(err("STLS not allowed after USER"))
        return Reply(ok("Begin TLS negotiation"), start_tls=True)

    def _tls_required(self) -> Reply | None:
        if self._login_allowed:
            return None
        # RFC 2595 section 4 / RFC 3206 AUTH: a policy refusal; the client should STLS.
        return self._error(err("TLS required: use STLS first", "AUTH"))

    async def _user(self, args: str) -> Reply:
        refusal = self._tls_required()
        if refusal is not None:
            return refusal
        if not args:
            return self._error(err("USER needs a name"))
        self.username = args
        # Same answer for every name: nothing tells a guesser which accounts exist.
        return Reply(ok("send PASS"))

    async def _pass(self, args: str) -> Reply:
        refusal = self._tls_required()
        if refusal is not None:
            return refusal
        if self.username is None:
            return self._error(err("USER first"))
        username, self.username = self.username, None
        # RFC 1939 section 7: PASS has one argument, so spaces belong to the password.
        return await self._login(username, args)

    async def _auth(self, args: str) -> Reply:
        if not args:
            # Pre-RFC 5034 clients probe with a bare AUTH to list the mechanisms.
            return Reply(multiline(ok("SASL mechanisms follow"), ["PLAIN", "LOGIN"]))
        refusal = self._tls_required()
        if refusal is not None:
            return refusal
        mechanism, _, initial = args.partition(" ")
        mechanism = mechanism.upper()
        if mechanism not in ("PLAIN", "LOGIN"):
            return self._error(err("unsupported SASL mechanism"))
        self._sasl = _SaslExchange(mechanism)
        initial = initial.strip()
        if initial:
            # RFC 5034 section 4: "=" is an empty initial response.
            return await self._sasl_step("" if initial == "=" else initial, initial=True)
        return Reply(self._sasl.challenge())

    async def _sasl_step(self, line: str, initial: bool = False) -> Reply:
        exchange = self._sasl
        assert exchange is not None
        if line == "*" and not initial:
            self._sasl = None
            return self._error(err("authentication cancelled"))
        decoded = _decode_b64(line) if line else b""
        if decoded is None:
            # RFC 5034 section 4: a response that is not base64 is rejected.
            self._sasl = None
            return self._error(err("invalid base64 in SASL response"))
        outcome = exchange.feed(decoded)
        if outcome is None:
            return Reply(exchange.challenge())
        self._sasl = None
        if isinstance(outcome, str):
            return self._error(err(outcome, "AUTH"))
        username, password = outcome
        return await self._login(username, password)

    async def _login(self, username: str, password: str) -> Reply:
        try:
            maildrop = await self.backend.open_maildrop(username, password)
        except Refused as refusal:
            return self._error(err(refusal.text, refusal.code))
        self.maildrop = maildrop
        self.state = State.TRANSACTION
        count, size = len(maildrop.messages), sum(m.size for m in maildrop.messages)
        return Reply(ok(f"maildrop has {count} messages ({size} octets)"))

    async def _quit(self, args: str) -> Reply:
        if self.state is State.AUTHORIZATION:
            self.state = State.CLOSED
            return Reply(ok("bye"), close=True)
        # RFC 1939 section 6: QUIT from TRANSACTION enters UPDATE, which removes the
        # messages marked deleted and only then releases the lock.
        self.state = State.UPDATE
        assert self.maildrop is not None
        try:
            removed = await self.maildrop.commit(sorted(self.deleted), sorted(self.retrieved))
        except Refused as refusal:
            self.abort()
            return Reply(err(f"{refusal.text}; no message was removed", refusal.code), close=True)
        self.abort()
        return Reply(ok(f"bye ({removed} messages deleted)"), close=True)

    async def _noop(self, args: str) -> Reply:
        return Reply(ok())

    # -- TRANSACTION state --

    def _live(self) -> list[tuple[int, Pop3Message]]:
        assert self.maildrop is not None
        return [(i, m) for i, m in enumerate(self.maildrop.messages) if i not in self.deleted]

    async def _stat(self, args: str) -> Reply:
        live = self._live()
        return Reply(ok(f"{len(live)} {sum(m.size for _, m in live)}"))

    async def _list(self, args: str) -> Reply:
        if args:
            index = self._message_index(args)
            if isinstance(index, Reply):
                return index
            assert self.maildrop is not None
            return Reply(ok(f"{index + 1} {self.maildrop.messages[index].size}"))
        live = self._live()
        lines = [f"{i + 1} {m.size}" for i, m in live]
        size = sum(m.size for _, m in live)
        return Reply(multiline(ok(f"{len(live)} messages ({size} octets)"), lines))

    async def _uidl(self, args: str) -> Reply:
        if args:
            index = self._message_index(args)
            if isinstance(index, Reply):
                return index
            assert self.maildrop is not None
            return Reply(ok(f"{index + 1} {self.maildrop.messages[index].uid}"))
        lines = [f"{i + 1} {m.uid}" for i, m in self._live()]
        return Reply(multiline(ok("unique-id listing follows"), lines))

    async def _fetch(self, index: int) -> bytes | Reply:
        assert self.maildrop is not None
        try:
            return await self.maildrop.fetch(index)
        except Refused as refusal:
            return self._error(err(refusal.text, refusal.code))

    async def _retr(self, args: str) -> Reply:
        index = self._message_index(args)
        if isinstance(index, Reply):
            return index
        data = await self._fetch(index)
        if isinstance(data, Reply):
            return data
        self.retrieved.add(index)
        lines = crlf_lines(data)
        return Reply(ok(f"{len(lines)} octets") + stuffed(lines))

    async def _top(self, args: str) -> Reply:
        number, _, count = args.partition(" ")
        count = count.strip()
        if not (count.isascii() and count.isdigit()):
            return self._error(err("usage: TOP message lines"))
        index = self._message_index(number)
        if isinstance(index, Reply):
            return index
        data = await self._fetch(index)
        if isinstance(data, Reply):
            return data
        return Reply(ok("top of message follows") + stuffed(top_section(data, int(count))))

    async def _dele(self, args: str) -> Reply:
        index = self._message_index(args)
        if isinstance(index, Reply):
            return index
        self.deleted.add(index)
        return Reply(ok(f"message {index + 1} deleted"))

    async def _rset(self, args: str) -> Reply:
        self.deleted.clear()
        live = self._live()
        size = sum(m.size for _, m in live)
        return Reply(ok(f"maildrop has {len(live)} messages ({size} octets)"))

    _AUTHORIZATION = {
        "CAPA": _capa,
        "STLS": _stls,
        "USER": _user,
        "PASS": _pass,
        "AUTH": _auth,
        "QUIT": _quit,
    }
    _TRANSACTION = {
        "CAPA": _capa,
        "STAT": _stat,
        "LIST": _list,
        "UIDL": _uidl,
        "RETR": _retr,
        "TOP": _top,
        "DELE": _dele,
        "RSET": _rset,
        "NOOP": _noop,
        "QUIT": _quit,
    }


class _SaslExchange:
    """The server side of AUTH PLAIN (RFC 4616) and AUTH LOGIN (the de facto two prompts).

    ``feed`` returns None when another response is needed, a (user, password) pair when the
    exchange is complete, or a string saying why the response is unacceptable.
    """

    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism
        self.username: str | None = None

    def challenge(self) -> bytes:
        if self.mechanism == "PLAIN":
            return b"+ " + CRLF
        prompt = b"Username:" if self.username is None else b"Password:"
        return b"+ " + base64.b64encode(prompt) + CRLF

    def feed(self, response: bytes) -> tuple[str, str] | str | None:
        try:
            text = response.decode("utf-8")
        except UnicodeDecodeError:
            return "credentials must be UTF-8"
        if self.mechanism == "PLAIN":
            parts = text.split("\0")
            if len(parts) != 3:
                return "malformed PLAIN response"
            authzid, authcid, password = parts
            if authzid and authzid != authcid:
                return "acting as another user is not allowed"
            return authcid, password
        if self.username is None:
            self.username = text
            return None
        return self.username, text
