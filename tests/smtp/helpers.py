"""Helpers for SMTP tests: a raw-socket client (for what smtplib will not send: pipelining,
smuggling, BDAT) and readers of what the server stored."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

from mailstead.config import Config
from mailstead.store.interfaces import MessageMeta, QueueEntry
from tests.conftest import DOMAIN, RunningServer, run_outside_loop

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"


def message(subject: str, body: str = "Hello.\r\n", sender: str = "carol@remote.test") -> bytes:
    return (
        f"From: {sender}\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@remote.test>\r\n\r\n{body}"
    ).encode()


@dataclass
class Stored:
    meta: MessageMeta
    data: bytes  # the blob, its SHA-256 checked by BlobStore.get

    @property
    def headers(self) -> str:
        return self.data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")


def inbox(server: RunningServer, address: str, mailbox: str = "INBOX") -> list[Stored]:
    """Every message the store holds in the account's mailbox, with its verified bytes."""

    async def rows() -> list[MessageMeta]:
        store = server.services.store
        account = await store.get_account(address)
        assert account is not None, address
        box = await store.get_mailbox(account.id, mailbox)
        assert box is not None
        return await store.get_messages(box.id)

    return [Stored(m, server.services.blobs.get(m.blob_id)) for m in server.run(rows())]


def stored_messages(cfg: Config, address: str, mailbox: str = "INBOX") -> list[bytes]:
    """The messages of a mailbox of a server that is not running here (a ``mailstead serve``
    subprocess), read from its data directory."""
    from mailstead.store.factory import make_blob_store, make_metadata_store

    async def read() -> list[bytes]:
        store = make_metadata_store(cfg)
        blobs = make_blob_store(cfg)
        await store.open()
        try:
            account = await store.get_account(address)
            assert account is not None, address
            box = await store.get_mailbox(account.id, mailbox)
            assert box is not None
            return [blobs.get(meta.blob_id) for meta in await store.get_messages(box.id)]
        finally:
            await store.close()

    return run_outside_loop(read())


def queue(server: RunningServer) -> list[QueueEntry]:
    return server.run(server.services.store.list_queue())


def body_of(stored: Stored) -> bytes:
    """The message as the client sent it: the stored bytes minus our trace fields."""
    data = stored.data
    for name in (b"Return-Path:", b"Received:"):
        assert data.startswith(name), data[:80]
        end = data.index(b"\r\n", 0)
        while data[end + 2:end + 3] in (b" ", b"\t"):
            end = data.index(b"\r\n", end + 2)
        data = data[end + 2:]
    while data.startswith((b"Authentication-Results:", b"Received-SPF:", b"DKIM-Signature:",
                           b"X-Spam-")):
        end = data.index(b"\r\n", 0)
        while data[end + 2:end + 3] in (b" ", b"\t"):
            end = data.index(b"\r\n", end + 2)
        data = data[end + 2:]
    return data


class RawClient:
    """Speaks SMTP byte by byte, so tests can send exactly what an attacker would."""

    def __init__(self, port: int, *, implicit_tls: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        if implicit_tls is not None:
            sock = implicit_tls.wrap_socket(sock)
        self.sock: socket.socket = sock
        self.buffer = b""
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"server closed the connection; unread: {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def reply(self) -> tuple[int, str]:
        """The next reply: its code and its lines' texts joined by newlines."""
        texts = []
        while True:
            line = self._line().decode("utf-8")
            texts.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), "\n".join(texts)

    def cmd(self, line: str | bytes) -> tuple[int, str]:
        self.send(line if isinstance(line, bytes) else line.encode() + b"\r\n")
        return self.reply()

    def code(self, line: str | bytes) -> str:
        """"250 2.1.0" style: the code and the enhanced status of the reply."""
        code, text = self.cmd(line)
        return f"{code} {text.split(' ')[0]}"

    def starttls(self, ctx: ssl.SSLContext) -> None:
        assert self.buffer == b"", self.buffer
        self.sock = ctx.wrap_socket(self.sock)

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def header_field(headers: str, name: str) -> str:
    """The unfolded value of the first ``name`` field in ``headers``."""
    for line in headers.replace("\r\n\t", " ").split("\r\n"):
        if line.lower().startswith(name.lower() + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in {headers!r}")
