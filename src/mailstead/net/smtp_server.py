"""SMTP and submission listeners: drives ``proto.smtp.SmtpSession`` over a ``Connection``.

The driver owns the socket-side concerns: framing (command lines, DATA up to <CRLF>.<CRLF>, BDAT
chunks by size), PIPELINING (replies are written together once the client has nothing more
buffered, RFC 2920), the STARTTLS switch, the idle timeout, and the log line per transaction.
Everything else is the session's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from mailstead.app import Services
from mailstead.config import ListenerConfig
from mailstead.core.addresses import Address, parse_address
from mailstead.core.errors import InvalidInput, QuotaExceeded
from mailstead.net.listener import (
    Connection,
    ConnectionClosed,
    IdleTimeout,
    LineTooLong,
    ProtocolHandler,
)
from mailstead.obs import log_event
from mailstead.proto.lines import DATA_READ_SEPARATOR, DataOutcome, DotReader
from mailstead.proto.smtp import (
    LONGEST_LINE,
    Action,
    AuthRefused,
    QuotaState,
    Reply,
    RouteLike,
    SessionPolicy,
    SmtpSession,
    Transaction,
)
from mailstead.services.accounts import AuthFailed
from mailstead.services.delivery import (
    DeliveryService,
    InboundEnvelope,
    InboundRecipient,
    delivery_service,
)
from mailstead.store.interfaces import Account

CHUNK_PIECE = 256 * 1024  # BDAT chunks are read in pieces of at most this size


class SessionBackend:
    """The session's view of the server for one connection (``proto.smtp.SmtpBackend``)."""

    def __init__(self, services: Services, delivery: DeliveryService, conn: Connection) -> None:
        self.services = services
        self.delivery = delivery
        self.conn = conn
        self._queue_id = ""

    async def is_local_domain(self, domain: str) -> bool:
        return await self.services.accounts.is_local_domain(domain)

    async def route(self, address: Address) -> RouteLike:
        return await self.services.accounts.route(address)

    async def quota_state(self, account: Account, size: int) -> QuotaState:
        if not account.quota_bytes and not account.quota_messages:
            return "ok"
        if account.quota_bytes and size > account.quota_bytes:
            return "too_big"
        used_bytes, used_messages = await self.services.store.quota_usage(account.id)
        if account.quota_bytes and used_bytes + max(size, 1) > account.quota_bytes:
            return "full"
        if account.quota_messages and used_messages >= account.quota_messages:
            return "full"
        return "ok"

    async def authenticate(self, username: str, password: str) -> Account:
        try:
            return await self.services.accounts.authenticate(username, password, self.conn.peer_ip)
        except AuthFailed as exc:
            raise AuthRefused(exc.temporary) from None

    async def owns_address(self, account: Account, address: Address) -> bool:
        return await self.services.accounts.owns_address(account, address)

    def postmaster(self) -> Address | None:
        cfg = self.services.cfg
        domain = cfg.domains[0] if cfg.domains else cfg.hostname.partition(".")[2]
        try:
            return parse_address(f"postmaster@{domain}")
        except InvalidInput:
            return None

    async def deliver(self, txn: Transaction, message: bytes) -> str:
        envelope = InboundEnvelope(
            sender=txn.sender,
            recipients=[
                InboundRecipient(r.address, r.local, r.remote, r.notify, r.orcpt)
                for r in txn.recipients
            ],
            protocol=txn.protocol,
            client_ip=txn.client_ip,
            helo=txn.helo,
            tls=self.conn.tls_description,
            account=txn.account,
            envid=txn.envid,
            ret=txn.ret,
            requiretls=txn.requiretls,
            smtputf8=txn.smtputf8,
            body=txn.body,
        )
        try:
            result = await self.delivery.deliver(envelope, message)
        except QuotaExceeded:
            raise
        except Exception as exc:
            log_event("smtp.delivery_error", logging.ERROR, session=self.conn.session_id,
                      error=f"{type(exc).__name__}: {exc}")
            raise
        self._queue_id = result.queue_id
        return result.queue_id

    def transaction_done(self, txn: Transaction, size: int, result: Reply) -> None:
        log_event(
            "smtp.transaction",
            session=self.conn.session_id,
            listener=self.conn.listener,
            queue_id=self._queue_id or None,
            client=self.conn.peer_ip,
            tls=self.conn.tls_description or "no",
            auth=txn.account.address if txn.account else None,
            sender=f"<{txn.sender}>",
            recipients=",".join(r.address for r in txn.recipients),
            size=size,
            result=" ".join(result.lines),
            code=result.code,
        )
        self._queue_id = ""


class SmtpHandler:
    def __init__(self, services: Services, listener_name: str, lc: ListenerConfig) -> None:
        self.services = services
        self.listener_name = listener_name
        self.submission = lc.protocol == "submission"
        self.tls_mode = lc.tls
        self.timeout = float(services.cfg.limits.smtp_idle_timeout)

    def busy_reply(self) -> bytes:
        host = self.services.cfg.hostname
        return f"421 4.7.0 {host} Too many connections, try again later\r\n".encode()

    def _session(self, conn: Connection) -> SmtpSession:
        cfg = self.services.cfg
        policy = SessionPolicy(
            hostname=cfg.hostname,
            submission=self.submission,
            max_message_size=cfg.limits.max_message_size,
            max_recipients=cfg.limits.max_recipients,
            max_errors=cfg.limits.max_errors,
            starttls_offered=self.tls_mode == "starttls" and conn.ssl_context is not None,
            plaintext_auth_allowed=cfg.auth.allow_plaintext_on_loopback and conn.is_loopback,
            client_ip=conn.peer_ip,
        )
        backend = SessionBackend(self.services, delivery_service(self.services), conn)
        return SmtpSession(policy, backend, tls_active=conn.is_tls)

    async def handle(self, conn: Connection) -> None:
        session = self._session(conn)
        pending: list[bytes] = [session.greeting().encode()]
        try:
            await self._serve(conn, session, pending)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # the server is stopping: say so if we can
                conn.write(b"".join(pending) + session.shutdown_reply().encode())
            raise

    async def _serve(self, conn: Connection, session: SmtpSession, pending: list[bytes]) -> None:
        while True:
            if not conn.pending_input():
                await _flush(conn, pending)  # nothing more pipelined: answer before waiting
            try:
                line = await conn.readline(LONGEST_LINE + 2, self.timeout)
                answer = await session.on_line(line)
            except LineTooLong:
                answer = session.on_line_too_long()
            except IdleTimeout:
                pending.append(session.timeout_reply().encode())
                await _flush(conn, pending)
                return
            if answer.action is Action.READ_DATA:
                pending.append(answer.encode())
                await _flush(conn, pending)  # the client waits for 354 before sending
                answer = await session.on_data(await self._read_data(conn, session))
            elif answer.action is Action.READ_CHUNK:
                answer = await self._read_chunk(conn, session, answer.chunk_size)
            pending.append(answer.encode())
            if answer.action is Action.CLOSE:
                await _flush(conn, pending)
                return
            if answer.action is Action.START_TLS:
                await _flush(conn, pending)
                if not await self._start_tls(conn, session):
                    return

    async def _read_data(self, conn: Connection, session: SmtpSession) -> DataOutcome:
        reader = DotReader(session.policy.max_message_size)
        while not reader.done:
            reader.feed(await _read_until(conn, DATA_READ_SEPARATOR, self.timeout))
        return reader.finish()

    async def _read_chunk(self, conn: Connection, session: SmtpSession, size: int) -> Reply:
        remaining = size
        while remaining:
            piece = await conn.readexactly(min(remaining, CHUNK_PIECE), self.timeout)
            session.on_chunk(piece)
            remaining -= len(piece)
        return await session.on_chunk_end()

    async def _start_tls(self, conn: Connection, session: SmtpSession) -> bool:
        try:
            discarded = await conn.start_tls()
        except (ssl.SSLError, OSError, ConnectionError) as exc:
            log_event("smtp.tls_failed", session=conn.session_id, client=conn.peer_ip,
                      error=str(exc))
            return False
        session.tls_started()
        if discarded:
            # RFC 3207 4.2 / CVE-2011-0411: plain-text commands sent after STARTTLS were dropped.
            log_event("smtp.pipelined_after_starttls", session=conn.session_id,
                      client=conn.peer_ip)
        return True


async def _flush(conn: Connection, pending: list[bytes]) -> None:
    if pending:
        data = b"".join(pending)
        pending.clear()
        await conn.send(data)


async def _read_until(conn: Connection, separator: bytes, timeout: float) -> bytes:
    """Bytes up to and including ``separator``, or (for very long stretches without it) the
    part that certainly does not hold the start of one. Raises IdleTimeout/ConnectionClosed."""
    reader = conn.reader
    try:
        async with asyncio.timeout(timeout):
            try:
                return await reader.readuntil(separator)
            except asyncio.LimitOverrunError as exc:
                return await reader.readexactly(exc.consumed)
    except TimeoutError:
        raise IdleTimeout() from None
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        raise ConnectionClosed() from None


def make_smtp_handler(
    services: Services, listener_name: str, listener_config: ListenerConfig
) -> ProtocolHandler:
    return SmtpHandler(services, listener_name, listener_config)
