"""ManageSieve (RFC 5804), pure: the command reader (lines, quoted strings, literals) and the
session state machine. No sockets, no store: the session calls a ``ManageSieveBackend``.

Responses: ``OK``/``NO``/``BYE`` with an optional response code and a quoted or literal
human-readable string (RFC 5804 1.3); data (LISTSCRIPTS, GETSCRIPT, CAPABILITY) comes before
the final OK.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

MAX_LINE = 8 * 1024  # octets of one command line outside literals
MAX_LITERAL = 1024 * 1024  # octets of one literal (the script limit is smaller, see backend)
MAX_ARGS = 8
_LITERAL_AT_END = re.compile(rb"\{([0-9]{1,10})(\+?)\}$")
_ATOM = re.compile(rb"[^ \"{}\r\n]+")


class ProtocolError(Exception):
    pass


class CommandReader:
    """Cuts the byte stream into commands: each a list of words, where an atom is a str and
    a quoted string or literal is bytes (RFC 5804 4)."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def next_command(self) -> list[str | bytes] | None:
        """The next complete command, or None (more input needed). ProtocolError on a
        malformed one (its input is dropped)."""
        buf = self.buffer
        pos = 0
        words: list[str | bytes] = []
        while True:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                if len(buf) - pos > MAX_LINE:
                    self.buffer = b""
                    raise ProtocolError("line too long")
                return None
            line = buf[pos:end]
            if len(line) > MAX_LINE:
                self.buffer = buf[end + 2 :]
                raise ProtocolError("line too long")
            literal = _LITERAL_AT_END.search(line)
            head = line[: literal.start()] if literal else line
            try:
                words += _words(head)
            except ProtocolError:
                self.buffer = buf[end + 2 :]
                raise
            if literal is None:
                self.buffer = buf[end + 2 :]
                if len(words) > MAX_ARGS + 1:
                    raise ProtocolError("too many arguments")
                return words
            size = int(literal.group(1))
            if size > MAX_LITERAL:
                self.buffer = b""
                raise ProtocolError("literal too large")
            start = end + 2
            if len(buf) < start + size:
                return None
            words.append(buf[start : start + size])
            pos = start + size  # the command goes on after the literal


def _words(text: bytes) -> list[str | bytes]:
    words: list[str | bytes] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i : i + 1]
        if ch == b" ":
            i += 1
            continue
        if ch == b'"':
            out = bytearray()
            i += 1
            while True:
                if i >= n:
                    raise ProtocolError("unterminated quoted string")
                c = text[i]
                if c == 0x5C and i + 1 < n:  # backslash quotes " and \ (RFC 5804 4)
                    out.append(text[i + 1])
                    i += 2
                    continue
                if c == 0x22:
                    i += 1
                    break
                out.append(c)
                i += 1
            words.append(bytes(out))
            continue
        m = _ATOM.match(text, i)
        if m is None:
            raise ProtocolError("unexpected character")
        words.append(m.group().decode("ascii", "replace"))
        i = m.end()
    return words


def quoted(text: str) -> bytes:
    """A string for a response: quoted when short and plain, else a literal."""
    data = text.encode("utf-8")
    if len(data) < 1024 and not re.search(rb'[\r\n"\\\x00]', data):
        return b'"' + data + b'"'
    return b"{%d}\r\n" % len(data) + data


def response(kind: str, text: str = "", code: str = "") -> bytes:
    parts = [kind.encode()]
    if code:
        parts.append(b"(" + code.encode() + b")")
    if text:
        parts.append(quoted(text))
    return b" ".join(parts) + b"\r\n"


class Refused(Exception):
    """A backend's NO, with its response code (RFC 5804 1.3), e.g. NONEXISTENT, ACTIVE."""

    def __init__(self, text: str, code: str = "") -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class ManageSieveBackend(Protocol):
    async def authenticate(self, username: str, password: str) -> str: ...
    async def list_scripts(self) -> list[tuple[str, bool]]: ...
    async def get_script(self, name: str) -> str: ...
    async def put_script(self, name: str, text: str) -> str: ...  # returns warnings or ""
    async def check_script(self, text: str) -> str: ...
    async def have_space(self, name: str, size: int) -> None: ...
    async def set_active(self, name: str) -> None: ...
    async def delete_script(self, name: str) -> None: ...
    async def rename_script(self, old: str, new: str) -> None: ...


@dataclass(slots=True)
class Reply:
    data: bytes
    start_tls: bool = False
    close: bool = False


@dataclass(slots=True, kw_only=True)
class ManageSieveSession:
    backend: ManageSieveBackend
    extensions: Sequence[str]
    tls_active: bool
    tls_available: bool
    plaintext_allowed: bool  # passwords without TLS only where the config allows (loopback)
    max_script: int
    max_errors: int = 10
    user: str = ""
    errors: int = 0
    sasl_pending: bool = False
    closed: bool = False

    def capabilities(self) -> bytes:
        """RFC 5804 1.7."""
        lines = [
            b'"IMPLEMENTATION" "mailstead"',
            b'"SIEVE" ' + quoted(" ".join(self.extensions)),
            b'"VERSION" "1.0"',
            b'"MAXREDIRECTS" "5"',
        ]
        if not self.user:
            lines.append(b'"SASL" "PLAIN"' if self._auth_allowed() else b'"SASL" ""')
            if self.tls_available and not self.tls_active:
                lines.append(b'"STARTTLS"')
        return b"\r\n".join(lines) + b"\r\n"

    def greeting(self) -> bytes:
        return self.capabilities() + response("OK", "mailstead ManageSieve ready")

    def tls_started(self) -> None:
        self.tls_active = True

    def _auth_allowed(self) -> bool:
        return self.tls_active or self.plaintext_allowed

    def _no(self, text: str, code: str = "") -> Reply:
        self.errors += 1
        if self.errors >= self.max_errors:
            self.closed = True
            return Reply(response("BYE", "too many errors"), close=True)
        return Reply(response("NO", text, code))

    def _too_large(self) -> Reply:
        return self._no(f"the script is larger than {self.max_script} octets", "QUOTA/MAXSIZE")

    def protocol_error(self, text: str) -> Reply:
        return self._no(text)

    async def receive(self, words: list[str | bytes]) -> Reply:
        if self.sasl_pending:
            self.sasl_pending = False
            answer = words[0] if words else b""
            if isinstance(answer, str):
                answer = answer.encode()
            if answer == b"*":
                return self._no("authentication cancelled")
            return await self._sasl_plain(answer)
        if not words or not isinstance(words[0], str):
            return self._no("expected a command")
        name = words[0].upper()
        args = words[1:]
        try:
            return await self._dispatch(name, args)
        except Refused as refused:
            return self._no(refused.text, refused.code)
        except (IndexError, UnicodeDecodeError):
            return self._no(f"bad arguments for {name}")

    async def _dispatch(self, name: str, args: list[str | bytes]) -> Reply:
        if name == "CAPABILITY":
            return Reply(self.capabilities() + response("OK"))
        if name == "NOOP":
            tag = _text(args[0]) if args else ""
            return Reply(response("OK", "done", f'TAG {quoted(tag).decode()}' if args else ""))
        if name == "LOGOUT":
            self.closed = True
            return Reply(response("OK", "bye"), close=True)
        if name == "STARTTLS":
            if self.user or self.tls_active or not self.tls_available:
                return self._no("STARTTLS is not available now")
            return Reply(response("OK", "begin TLS"), start_tls=True)
        if name == "AUTHENTICATE":
            return await self._authenticate(args)
        if not self.user:
            return self._no("authenticate first")
        b = self.backend
        if name == "LISTSCRIPTS":
            lines = b"".join(quoted(n) + (b" ACTIVE" if active else b"") + b"\r\n"
                             for n, active in await b.list_scripts())
            return Reply(lines + response("OK"))
        if name == "GETSCRIPT":
            text = await b.get_script(_text(args[0]))
            data = text.encode("utf-8")
            return Reply(b"{%d}\r\n" % len(data) + data + b"\r\n" + response("OK"))
        if name == "PUTSCRIPT":
            text = _text(args[1])
            if len(args[1]) > self.max_script:
                return self._too_large()
            warnings = await b.put_script(_text(args[0]), text)
            return Reply(response("OK", warnings, "WARNINGS" if warnings else ""))
        if name == "CHECKSCRIPT":
            warnings = await b.check_script(_text(args[0]))
            return Reply(response("OK", warnings, "WARNINGS" if warnings else ""))
        if name == "HAVESPACE":
            size = int(_text(args[1]))
            if size > self.max_script:
                return self._too_large()
            await b.have_space(_text(args[0]), size)
            return Reply(response("OK"))
        if name == "SETACTIVE":
            await b.set_active(_text(args[0]))
            return Reply(response("OK"))
        if name == "DELETESCRIPT":
            await b.delete_script(_text(args[0]))
            return Reply(response("OK"))
        if name == "RENAMESCRIPT":
            await b.rename_script(_text(args[0]), _text(args[1]))
            return Reply(response("OK"))
        if name == "UNAUTHENTICATE":
            self.user = ""
            return Reply(response("OK"))
        return self._no(f"unknown command {name}")

    async def _authenticate(self, args: list[str | bytes]) -> Reply:
        if self.user:
            return self._no("already authenticated")
        if not self._auth_allowed():
            return self._no("use STARTTLS first", "ENCRYPT-NEEDED")
        mechanism = _text(args[0]).upper() if args else ""
        if mechanism != "PLAIN":
            return self._no("only PLAIN is offered")
        if len(args) < 2:
            self.sasl_pending = True
            return Reply(b'""\r\n')  # RFC 5804 2.1: an empty challenge, then the response
        initial = args[1]
        return await self._sasl_plain(initial if isinstance(initial, bytes)
                                      else initial.encode())

    async def _sasl_plain(self, answer: bytes) -> Reply:
        try:
            decoded = base64.b64decode(answer, validate=True)
        except (binascii.Error, ValueError):
            return self._no("invalid base64")
        parts = decoded.split(b"\0")
        if len(parts) != 3:  # RFC 4616 2: [authzid] NUL authcid NUL passwd
            return self._no("malformed PLAIN response")
        authzid, username, password = (p.decode("utf-8", "replace") for p in parts)
        if authzid and authzid.lower() != username.lower():
            return self._no("authorization identity not allowed", "AUTH-TOO-WEAK")
        try:
            self.user = await self.backend.authenticate(username, password)
        except Refused as refused:
            return self._no(refused.text, refused.code)
        return Reply(response("OK", "logged in"))


def _text(word: str | bytes) -> str:
    return word.decode("utf-8") if isinstance(word, bytes) else word
