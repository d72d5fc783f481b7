"""IMAP pull: copies every folder of an account on any IMAP server into one of ours, with flags
(keywords too), internal dates and folder roles (RFC 6154 SPECIAL-USE, else the name).

Resumable: before fetching a folder's messages, their Message-ID, Date and RFC822.SIZE are
compared with what the target mailbox holds, and only the missing ones are fetched. The IMAP
client is imapclient (blocking), driven from worker threads.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from imapclient import IMAPClient

from mailstead.core.errors import InvalidInput, MailsteadError
from mailstead.core.models import SYSTEM_FLAG_NAMES
from mailstead.mailmove.importer import Importer, message_key
from mailstead.mailmove.sources import SourceMessage, to_crlf
from mailstead.proto.mime import parse_envelope_fields

FETCH_CHUNK = 100  # messages per FETCH of bodies
HEADER_ITEM = b"BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE)]"
TIMEOUT = 60.0
ROLE_FLAGS = {"\\sent": "\\Sent", "\\drafts": "\\Drafts", "\\trash": "\\Trash",
              "\\junk": "\\Junk", "\\archive": "\\Archive"}
_FLAG_BITS = {name.lower(): int(bit) for name, bit in SYSTEM_FLAG_NAMES.items()}

Security = Literal["ssl", "starttls", "none"]


@dataclass
class ImapAccount:
    host: str
    user: str
    password: str
    port: int | None = None
    security: Security | None = None  # default: ssl on port 993, else starttls
    insecure: bool = False  # plain text to a remote host, certificates not checked
    cafile: str | None = None

    @property
    def mode(self) -> Security:
        if self.security is not None:
            return self.security
        return "ssl" if self.port in (None, 993) else "starttls"


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_security(account: ImapAccount) -> None:
    """Passwords cross the network only under TLS: plain text is for loopback hosts, or when
    the user says --insecure."""
    if account.mode == "none" and not account.insecure and not is_loopback(account.host):
        raise InvalidInput(f"{account.host} is not a loopback host: use TLS (ssl or starttls) "
                           "or --insecure")


def _context(account: ImapAccount) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=account.cafile)
    if account.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def connect(account: ImapAccount) -> IMAPClient:
    check_security(account)
    mode = account.mode
    port = account.port or (993 if mode == "ssl" else 143)
    client = IMAPClient(account.host, port=port, ssl=mode == "ssl",
                        ssl_context=_context(account) if mode == "ssl" else None,
                        timeout=TIMEOUT)
    try:
        if mode == "starttls":
            client.starttls(_context(account))
        client.normalise_times = False  # internal dates keep their zone
        client.login(account.user, account.password)
    except BaseException:
        client.shutdown()
        raise
    return client


@dataclass
class RemoteFolder:
    name: str  # ours: levels joined by "/"
    remote: str
    special_use: str | None


def list_folders(client: IMAPClient) -> list[RemoteFolder]:
    folders = []
    for flags, delimiter, name in client.list_folders():
        names = {f.decode("ascii", "replace").lower() if isinstance(f, bytes) else str(f).lower()
                 for f in flags}
        if "\\noselect" in names or "\\nonexistent" in names:
            continue
        sep = delimiter.decode() if isinstance(delimiter, bytes) else (delimiter or "")
        text = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        ours = "/".join(text.split(sep)) if sep and sep != "/" else text
        if ours.upper() == "INBOX":
            ours = "INBOX"
        role = next((ROLE_FLAGS[f] for f in names if f in ROLE_FLAGS), None)
        folders.append(RemoteFolder(ours, text, role))
    return folders


def flags_of(items: Sequence[Any]) -> tuple[int, frozenset[str]]:
    bits = 0
    words = set()
    for raw in items:
        flag = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        if flag.startswith("\\"):
            bits |= _FLAG_BITS.get(flag.lower(), 0)  # \Recent and unknown ones are dropped
        else:
            words.add(flag)
    return bits, frozenset(words)


def _header_part(fields: dict[bytes, Any]) -> bytes:
    for name, value in fields.items():
        if name.startswith(b"BODY[HEADER") and isinstance(value, bytes):
            return value
    return b""


def _internal_date(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Puller:
    """One pull of a whole account into ``importer``'s account."""

    def __init__(self, account: ImapAccount, importer: Importer) -> None:
        self.account = account
        self.importer = importer
        self.client: IMAPClient | None = None

    async def run(self) -> None:
        try:
            self.client = await asyncio.to_thread(connect, self.account)
        except IMAPClient.Error as exc:
            raise PullFailed(f"IMAP server {self.account.host}: {_text(exc)}") from None
        try:
            folders = await asyncio.to_thread(list_folders, self.client)
            for folder in folders:
                try:
                    await self._folder(self.client, folder)
                except IMAPClient.Error as exc:
                    raise PullFailed(f"IMAP server {self.account.host}, folder "
                                     f"{folder.remote}: {_text(exc)}") from None
        finally:
            await self.importer.finish()  # what was read is stored: a rerun resumes after it
            await asyncio.to_thread(_logout, self.client)

    async def _folder(self, client: IMAPClient, folder: RemoteFolder) -> None:
        status = await asyncio.to_thread(client.select_folder, folder.remote, True)
        exists = int(status.get(b"EXISTS", 0))
        report = self.importer.report
        report.total = (report.total or 0) + exists
        box = await self.importer.target(folder.name, folder.special_use)
        if exists == 0:
            return
        known = await self.importer.known_keys(box)
        uids = await asyncio.to_thread(client.search, "ALL")
        listing = await asyncio.to_thread(
            client.fetch, uids, [b"RFC822.SIZE", b"INTERNALDATE", b"FLAGS", HEADER_ITEM])
        missing: list[int] = []
        for uid, fields in sorted(listing.items()):
            envelope = parse_envelope_fields(to_crlf(_header_part(fields)))
            size = int(fields.get(b"RFC822.SIZE", 0))
            if envelope.message_id and message_key(envelope, size, "") in known:
                continue
            missing.append(uid)
        self.importer.skipped(exists - len(missing))
        for start in range(0, len(missing), FETCH_CHUNK):
            chunk = missing[start : start + FETCH_CHUNK]
            bodies = await asyncio.to_thread(client.fetch, chunk, [b"BODY.PEEK[]"])
            items = []
            for uid in chunk:
                body = bodies.get(uid, {}).get(b"BODY[]")
                if not isinstance(body, bytes):
                    report.failed.append(f"{folder.remote} UID {uid}: the server sent no body")
                    continue
                flags, keywords = flags_of(listing[uid].get(b"FLAGS", ()))
                items.append(SourceMessage(
                    folder.name, to_crlf(body), flags, keywords,
                    _internal_date(listing[uid].get(b"INTERNALDATE")),
                    origin=f"{folder.remote} UID {uid}", special_use=folder.special_use))
            await self.importer.add(items)


class PullFailed(MailsteadError):
    """The other server refused or broke off (login failed, a command failed)."""


def _text(exc: Exception) -> str:
    text = str(exc)
    if text.startswith("b'") or text.startswith('b"'):
        text = text[2:-1]
    return text or type(exc).__name__


def _logout(client: IMAPClient) -> None:
    try:
        client.logout()
    except Exception:  # the pull is over either way
        client.shutdown()


