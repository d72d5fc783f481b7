"""Helpers for the IMAP tests: connecting real clients and putting mail in place."""

from __future__ import annotations

import imaplib
from datetime import UTC, datetime

from mailstead.store.interfaces import Delivery, NewMessage
from tests.conftest import DOMAIN, PASSWORD, RunningServer

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"


def message(subject: str, body: str = "Hello.\r\n", sender: str = "carol@example.org",
            to: str = ALICE, extra: str = "") -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@example.org>\r\n{extra}\r\n{body}"
    ).encode()


def connect(server: RunningServer, user: str = ALICE, password: str = PASSWORD,
            login: bool = True) -> imaplib.IMAP4_SSL:
    """An imaplib client over implicit TLS, logged in unless told otherwise."""
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", server.ports["imaps"], ssl_context=server.ssl_context(), timeout=30
    )
    if login:
        client.login(user, password)
    return client


def deliver(server: RunningServer, raw: bytes, address: str = ALICE,
            mailbox: str = "INBOX", flags: int = 0) -> int:
    """Stores a message the way SMTP delivery does (store API); returns its UID."""

    async def go() -> int:
        store = server.services.store
        account = await store.get_account(address)
        assert account is not None
        box = await store.get_mailbox(account.id, mailbox)
        assert box is not None
        blob_id = server.services.blobs.put(raw)
        new = NewMessage(blob_id=blob_id, size=len(raw), internal_date=datetime.now(UTC),
                         flags=flags)
        [meta] = await store.store_message([Delivery(box.id, new)])
        return meta.uid

    return server.run(go())


def ok(response: tuple[str, list[object]]) -> list[object]:
    typ, data = response
    assert typ == "OK", (typ, data)
    return data


class Raw:
    """A bare IMAP client on a socket, for exact transcripts (and bad behaviour)."""

    def __init__(self, server: RunningServer, port: str = "imaps", tls: bool = True) -> None:
        import socket
        import ssl

        sock = socket.create_connection(("127.0.0.1", server.ports[port]), timeout=30)
        self.sock: socket.socket | ssl.SSLSocket = sock
        if tls:
            self.sock = server.ssl_context().wrap_socket(sock)
        self.server = server
        self.buffer = b""
        self.counter = 0
        self.greeting = self.readline()

    def starttls(self) -> None:
        lines = self.cmd("STARTTLS")
        assert lines[-1].split()[1] == b"OK", lines
        self.sock = self.server.ssl_context().wrap_socket(self.sock)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def readline(self) -> bytes:
        """One response line; a literal it announces is read and kept inline."""
        import re

        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"connection closed; partial: {self.buffer!r}")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        m = re.search(rb"~?\{(\d+)\}$", line)
        if m:
            size = int(m.group(1))
            while len(self.buffer) < size:
                if not self._fill():
                    raise ConnectionError("closed inside a literal")
            literal, self.buffer = self.buffer[:size], self.buffer[size:]
            return line + b"\r\n" + literal + self.readline()
        return line

    def closed(self) -> bool:
        """True when the server has closed the connection (after reading what is left)."""
        try:
            while True:
                if not self._fill():
                    return True
        except OSError:
            return True

    def tag(self) -> str:
        self.counter += 1
        return f"t{self.counter}"

    def cmd(self, command: str | bytes, tag: str | None = None) -> list[bytes]:
        """Sends ``tag command`` and returns every line up to and including the tagged one."""
        tag = tag or self.tag()
        raw = command.encode() if isinstance(command, str) else command
        self.send(tag.encode() + b" " + raw + b"\r\n")
        return self.until(tag)

    def until(self, tag: str) -> list[bytes]:
        lines = []
        while True:
            line = self.readline()
            lines.append(line)
            if line.startswith(tag.encode() + b" "):
                return lines

    def login(self, user: str = ALICE, password: str = PASSWORD) -> None:
        lines = self.cmd(f'LOGIN {user} "{password}"')
        assert b" OK " in lines[-1], lines

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def status_of(lines: list[bytes]) -> bytes:
    """The tagged line's status and response code, e.g. b"NO [TRYCREATE]" or b"OK"."""
    import re

    m = re.match(rb"^\S+ (\S+)(?: (\[[^\]]*\]))?", lines[-1])
    assert m is not None, lines
    return m.group(1) + (b" " + m.group(2) if m.group(2) else b"")
