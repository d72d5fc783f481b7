"""DMTP and DMAP listeners (the MailService seed's line protocols, off by default).

DMTP ``send`` goes through the SMTP delivery path (``services.delivery``): local recipients
get the message in their INBOX, remote ones are queued. Because DMTP has no login, mail for
other domains is accepted only from loopback clients (otherwise it would be an open relay).
DMAP reads and deletes in the INBOX of the same store IMAP and POP3 use; message ids are UIDs.

The DMAP RSA key is made once for the whole site and kept in the store (services/secrets.py);
its public half is written to ``<data>/dmap/server_pub.pem`` for clients (the seed's clients look
for it as ``keys/client/<component-id>_pub.pem``; the component id is ``hostname``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import getaddresses, parseaddr
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import rsa

from mailstead.config import ListenerConfig
from mailstead.core.addresses import parse_address
from mailstead.core.errors import CorruptBlob, MailsteadError, NotFound, QuotaExceeded
from mailstead.mailsec.integrity import DMTP_HEADER_VALUES, dmtp_integrity
from mailstead.net.listener import Connection, IdleTimeout, LineTooLong
from mailstead.obs import log_event
from mailstead.proto import dmap, dmap_crypto, dmtp
from mailstead.proto.dmap import DmapMailbox, DmapRefused, ListedMessage, ShownMessage, one_line
from mailstead.proto.dmtp import DmtpMessage, DmtpRefused
from mailstead.services.accounts import AuthFailed, Route
from mailstead.services.delivery import InboundEnvelope, InboundRecipient, delivery_service
from mailstead.services.secrets import DMAP_KEY, shared_secret
from mailstead.store.interfaces import Account, Mailbox, MessageMeta

if TYPE_CHECKING:
    from mailstead.app import Services

KEY_FILE = "dmap/server_key.pem"
PUBLIC_KEY_FILE = "dmap/server_pub.pem"

# -- DMTP ------------------------------------------------------------------------------------


@dataclass
class DeliveryBackend:
    """DMTP's recipients and ``send``, over the accounts and delivery services."""

    services: Services
    conn: Connection
    routes: dict[str, Route] = field(default_factory=dict)

    async def check_recipient(self, address: str) -> None:
        accounts = self.services.accounts
        parsed = parse_address(address)
        if not await accounts.is_local_domain(parsed.domain) and not self.conn.is_loopback:
            raise DmtpRefused(f"relaying to {address} denied")
        route = await accounts.route(parsed)
        if route.empty:
            raise DmtpRefused(f"unknown recipient {address}")
        self.routes[address] = route

    async def send(self, message: DmtpMessage) -> None:
        cfg = self.services.cfg
        # Integrity (the seed's DMTP2 hash): verified, unsigned (no hash) or failed; a
        # message that fails still arrives, marked (mailsec/integrity.py).
        integrity = dmtp_integrity(cfg.dmtp.hmac_secret, message)
        # In a thread: building a message of a 200 KiB data line takes a while, and the
        # event loop serves everyone else meanwhile.
        raw = await asyncio.to_thread(
            dmtp.to_rfc5322,
            message,
            date=datetime.now(UTC),
            message_id=f"<{secrets.token_hex(12)}@{cfg.hostname}>",
            integrity=None if integrity is None else DMTP_HEADER_VALUES[integrity],
        )
        recipients = []
        for address in message.recipients:
            route = self.routes.get(address)
            if route is None:  # "to" answered ok, so it was checked; be safe anyway
                await self.check_recipient(address)
                route = self.routes[address]
            recipients.append(InboundRecipient(address, route.local, route.remote))
        envelope = InboundEnvelope(
            sender=message.sender, recipients=recipients, protocol="DMTP",
            client_ip=self.conn.peer_ip,
        )
        try:
            result = await delivery_service(self.services).deliver(envelope, raw,
                                                                   integrity=integrity)
        except QuotaExceeded:
            raise DmtpRefused("mailbox full") from None
        except (MailsteadError, LookupError) as exc:
            log_event("dmtp.failed", session=self.conn.session_id, error=str(exc))
            raise DmtpRefused("could not deliver, try again later") from None
        log_event("dmtp.delivered", session=self.conn.session_id, queue_id=result.queue_id,
                  sender=message.sender, local=len(result.stored), queued=len(result.queued),
                  integrity=integrity or "unchecked")


class DmtpHandler:
    def __init__(self, services: Services, listener_name: str, config: ListenerConfig) -> None:
        self.services = services
        self.listener_name = listener_name

    def busy_reply(self) -> bytes:
        return b"error too many connections\r\n"

    async def handle(self, conn: Connection) -> None:
        limits = self.services.cfg.limits
        session = dmtp.DmtpSession(DeliveryBackend(self.services, conn),
                                   max_errors=limits.max_errors,
                                   max_recipients=limits.max_recipients)
        await conn.send(session.greeting())
        while True:
            try:
                line = await conn.readline(dmtp.MAX_LINE, limits.smtp_idle_timeout)
            except LineTooLong:
                reply = session.line_too_long()
            except IdleTimeout:
                await conn.send(b"error idle for too long\r\n")
                return
            else:
                reply = await session.receive(line)
            await conn.send(reply.wire)
            if reply.close:
                return


def make_dmtp_handler(
    services: Services, listener_name: str, listener_config: ListenerConfig
) -> DmtpHandler:
    return DmtpHandler(services, listener_name, listener_config)


# -- DMAP ------------------------------------------------------------------------------------


def first_address(header: str | None) -> str:
    return parseaddr(header or "")[1]


def addresses(*headers: str | None) -> list[str]:
    return [addr for _name, addr in getaddresses([h for h in headers if h]) if addr]


@dataclass
class InboxView:
    """What DMAP shows of one account's INBOX."""

    services: Services
    account: Account
    inbox: Mailbox

    async def list(self) -> list[ListedMessage]:
        rows = await self.services.store.get_messages(self.inbox.id)
        listed = []
        for n, row in enumerate(rows):
            if n % 1000 == 999:  # parseaddr costs microseconds: a huge INBOX shares the loop
                await asyncio.sleep(0)
            listed.append(ListedMessage(
                row.uid, first_address(row.envelope.from_) or row.envelope.from_,
                row.envelope.subject))
        return listed

    async def _row(self, message_id: int) -> MessageMeta:
        rows = await self.services.store.get_messages(self.inbox.id, [message_id])
        if not rows:
            raise DmapRefused("unknown message id")
        return rows[0]

    async def show(self, message_id: int) -> ShownMessage:
        row = await self._row(message_id)
        try:
            raw = await asyncio.to_thread(self.services.blobs.get, row.blob_id)
        except CorruptBlob:
            raise DmapRefused("message is damaged and cannot be shown") from None
        except NotFound:
            raise DmapRefused("unknown message id") from None
        # Parsing a large message takes a while: not on the event loop.
        return await asyncio.to_thread(self._shown, raw)

    def _shown(self, raw: bytes) -> ShownMessage:
        parsed = message_from_bytes(raw, policy=default_policy)
        assert isinstance(parsed, EmailMessage)
        sender = first_address(parsed["From"])
        recipients = addresses(parsed["To"], parsed["Cc"])
        subject = one_line(str(parsed["Subject"] or ""))
        data = one_line(_text_of(parsed).rstrip("\r\n"))
        stored_hash = parsed[dmtp.HASH_HEADER]
        came_over_dmtp = stored_hash is not None or parsed[dmtp.INTEGRITY_HEADER] is not None
        if came_over_dmtp:
            # As received (possibly wrong or missing): the client checks it, not us.
            digest = str(stored_hash or "").strip()
        elif self.services.cfg.dmtp.hmac_secret:
            # Mail that did not come over DMTP: a hash of what is shown, so the seed's
            # client can verify what it reads.
            digest = dmtp.compute_hash(self.services.cfg.dmtp.hmac_secret, sender, recipients,
                                       subject, data)
        else:
            digest = ""
        return ShownMessage(sender, recipients, subject, data, digest)

    async def delete(self, message_id: int) -> None:
        removed = await self.services.store.expunge(self.inbox.id, [message_id])
        if not removed:
            raise DmapRefused("unknown message id")


def _text_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain", "html"))
    if body is None:
        return ""
    try:
        content = body.get_content()
    except (LookupError, ValueError):  # unknown charset or broken encoding
        payload = body.get_payload(decode=True)
        return payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else ""


@dataclass
class AccountsBackend:
    services: Services
    conn: Connection
    key: rsa.RSAPrivateKey
    component_id: str

    async def login(self, username: str, password: str) -> DmapMailbox:
        services = self.services
        try:
            account = await services.accounts.authenticate(username, password, self.conn.peer_ip)
        except AuthFailed as exc:
            raise DmapRefused(str(exc)) from None
        inbox = await services.store.get_mailbox(account.id, "INBOX")
        if inbox is None:
            raise DmapRefused("this account has no INBOX")
        log_event("dmap.login", session=self.conn.session_id, user=account.address)
        return InboxView(services, account, inbox)

    def server_key(self) -> rsa.RSAPrivateKey:
        return self.key


async def load_or_create_key(services: Services) -> rsa.RSAPrivateKey:
    """The DMAP RSA key (2048 bits), shared by every node through the store: moved in from
    ``dmap/server_key.pem`` where an earlier version made it, else generated once. Its public
    half is written to ``dmap/server_pub.pem`` for the seed's clients."""
    cfg = services.cfg
    pem = await shared_secret(
        services.store, DMAP_KEY,
        lambda: dmap_crypto.generate_private_key_pem().decode("ascii"), cfg.path(KEY_FILE))
    key = dmap_crypto.load_private_key(pem.encode("ascii"))
    public = dmap_crypto.public_key_pem(key)
    path = cfg.path(PUBLIC_KEY_FILE)
    if not path.exists() or path.read_bytes() != public:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_public(path, public)
    return key


def _write_public(path: Path, pem: bytes) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_bytes(pem)
    os.replace(temp, path)


class DmapHandler:
    def __init__(self, services: Services, listener_name: str, config: ListenerConfig) -> None:
        self.services = services
        self.listener_name = listener_name
        self.key: rsa.RSAPrivateKey | None = None  # loaded from the store on first use

    def busy_reply(self) -> bytes:
        return b"error too many connections\r\n"

    async def prepare(self) -> None:
        """Before the listener opens: the key, and its public half on disk for clients."""
        self.key = await load_or_create_key(self.services)

    async def handle(self, conn: Connection) -> None:
        cfg = self.services.cfg
        if self.key is None:
            self.key = await load_or_create_key(self.services)
        backend = AccountsBackend(self.services, conn, self.key, cfg.hostname)
        session = dmap.DmapSession(backend, max_errors=cfg.limits.max_errors)
        await conn.send(session.greeting())
        while True:
            try:
                line = await conn.readline(dmap.MAX_LINE, cfg.limits.pop3_idle_timeout)
            except LineTooLong:
                reply = session.line_too_long()
            except IdleTimeout:
                return
            else:
                reply = await session.receive(line)
            if reply.data:
                await conn.send(reply.data)
            if reply.close:
                return


def make_dmap_handler(
    services: Services, listener_name: str, listener_config: ListenerConfig
) -> DmapHandler:
    return DmapHandler(services, listener_name, listener_config)

