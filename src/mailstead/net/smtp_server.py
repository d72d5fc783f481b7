"""SMTP and submission listeners: drives ``proto.smtp.SmtpSession`` over a ``Connection``.

The driver owns the socket-side concerns: framing (command lines, DATA up to <CRLF>.<CRLF>,
BDAT chunks by size, all through one ``proto.lines.InputBuffer`` filled by large reads),
PIPELINING (replies are written together once the client has nothing more buffered, RFC 2920),
the STARTTLS switch, the idle timeout, and the log line per transaction. Everything else is the
session's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from mailstead.app import Services
from mailstead.checks import CheckContext
from mailstead.checks.builtin import inbound_state
from mailstead.checks.chain import CheckChain, Outcome, check_chain
from mailstead.config import ListenerConfig
from mailstead.core.addresses import Address, parse_address
from mailstead.core.errors import InvalidInput, QuotaExceeded
from mailstead.core.models import Integrity
from mailstead.mailsec.integrity import dkim_integrity
from mailstead.net.imap_server import shared_mailboxes
from mailstead.net.listener import (
    Connection,
    ConnectionClosed,
    IdleTimeout,
    ProtocolHandler,
)
from mailstead.obs import log_event
from mailstead.proto.imap_urlauth import fetch_authorized
from mailstead.proto.lines import (
    OFF_LOOP_SIZE,
    DataOutcome,
    DotReader,
    InputBuffer,
    LineTooLong,
    is_tls_handshake,
)
from mailstead.proto.smtp import (
    LONGEST_LINE,
    Action,
    AuthRefused,
    MessageDeferred,
    MessageRefused,
    QuotaState,
    Reply,
    RouteLike,
    SessionPolicy,
    SmtpSession,
    Transaction,
    reply,
)
from mailstead.services import spam_log
from mailstead.services.accounts import AuthFailed
from mailstead.services.delivery import (
    DeliveryService,
    InboundEnvelope,
    InboundRecipient,
    RefusedByRules,
    delivery_service,
    unique_accounts,
)
from mailstead.services.sendcap import SendingCapExceeded, sending_cap
from mailstead.services.sender_lists import apply_decisions
from mailstead.services.urlauth import UrlAuthService
from mailstead.store.interfaces import Account

T = TypeVar("T")

READ_SIZE = 64 * 1024  # bytes asked of the socket at a time
# How long the sessions of a listener reuse a recipient's route or a domain lookup (store reads
# in a thread for every RCPT otherwise, most of what a one-message connection costs). A change
# made through this process's store drops them at once (``accounts_version``); one made by the
# CLI or another node reaches them within this time.
ROUTE_CACHE_SECONDS = 1.0
ROUTE_CACHE_ENTRIES = 4096


class RecentLookups(Generic[T]):
    """Answers of less than ROUTE_CACHE_SECONDS ago, shared by the sessions of a listener."""

    def __init__(self, store: object) -> None:
        self.store = store
        self.entries: dict[str, tuple[float, int, T]] = {}

    async def get(self, key: str, look_up: Callable[[], Awaitable[T]]) -> T:
        version = getattr(self.store, "accounts_version", None)
        if not isinstance(version, int):
            return await look_up()  # a store that cannot tell when accounts change
        now = time.monotonic()
        cached = self.entries.get(key)
        if cached is not None and cached[0] > now and cached[1] == version:
            return cached[2]
        found = await look_up()
        if len(self.entries) >= ROUTE_CACHE_ENTRIES:
            self.entries.clear()
        # Tagged with the version from before the look-up: a change committed meanwhile
        # makes the entry stale at once.
        self.entries[key] = (now + ROUTE_CACHE_SECONDS, version, found)
        return found


class SessionBackend:
    """The session's view of the server for one connection (``proto.smtp.SmtpBackend``)."""

    def __init__(self, services: Services, delivery: DeliveryService, conn: Connection,
                 routes: RecentLookups[RouteLike], domains: RecentLookups[bool],
                 chain: CheckChain, submission: bool = False) -> None:
        self.services = services
        self.delivery = delivery
        self.conn = conn
        self._queue_id = ""
        self._spam_score: float | None = None
        self._routes = routes
        self._domains = domains
        # The inbound checks (checks/chain.py) and what they know of this session.
        self.chain = chain
        self.ctx = CheckContext(client_ip=conn.peer_ip, listener=conn.listener,
                                session_id=conn.session_id, submission=submission)
        self._connect_said = Outcome()  # headers and points of the connect phase

    # -- inbound checks per phase (proto.smtp.SessionChecks) --------------------------------

    async def at_connect(self) -> Reply | None:
        if not self.chain.has("connect"):
            return None
        outcome = await self.chain.run("connect", self.ctx)
        self._connect_said = outcome
        return _refusal_reply(outcome)

    async def at_mail(self, txn: Transaction) -> Reply | None:
        ctx = self.ctx
        ctx.helo, ctx.tls = txn.helo, self.conn.is_tls
        ctx.account = txn.account.address if txn.account is not None else None
        ctx.sender, ctx.recipients, ctx.accounts, ctx.message = txn.sender, [], (), b""
        ctx.notes = {}
        said = self._connect_said
        ctx.headers, ctx.points, ctx.tests = list(said.headers), said.points, list(said.tests)
        if not self.chain.has("mail"):
            return None
        return _refusal_reply(await self.chain.run("mail", ctx, txn.sender))

    async def at_rcpt(self, txn: Transaction, address: str, route: RouteLike) -> Reply | None:
        ctx = self.ctx
        if self.chain.has("rcpt"):
            ctx.accounts = list(route.local)
            refused = _refusal_reply(await self.chain.run("rcpt", ctx, address))
            if refused is not None:
                return refused
        ctx.recipients.append(address)
        return None

    async def is_local_domain(self, domain: str) -> bool:
        return await self._domains.get(domain.lower(),
                                       lambda: self.services.accounts.is_local_domain(domain))

    async def route(self, address: Address) -> RouteLike:
        return await self._routes.get(str(address),
                                      lambda: self.services.accounts.route(address))

    def forget_routes(self) -> None:
        self._routes.entries.clear()
        self._domains.entries.clear()

    async def check_recipient(self, txn: Transaction, route: RouteLike) -> Reply | None:
        """Forged SRS addresses (RFC 5321 4.2.5 leaves the policy to us; 550 5.7.1 as other
        policy refusals). The recipients' block lists are a check (checks/builtin.py)."""
        refused = getattr(route, "refusal", "")
        return None if not refused else reply(550, "5.7.1", _printable(refused))

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
        accounts = unique_accounts(envelope.recipients)
        message = await self._run_data_checks(txn, envelope, accounts, message)
        state = inbound_state(self.ctx)
        spam = apply_decisions(state.decisions, accounts, state.spam, self.services.cfg.spam)
        # Shown to readers (mailsec/integrity.py): from the Authentication-Results the trust
        # check wrote, naming our hostname; none for our users' own mail.
        integrity: Integrity | None = (
            dkim_integrity(state.auth_results, self.services.cfg.hostname)
            if txn.account is None else None)
        cap = sending_cap(self.services.extra, self.services.cfg.web)
        if txn.account is not None:
            try:
                cap.check(txn.account, len(txn.recipients))
            except SendingCapExceeded as exc:
                raise MessageDeferred(str(exc)) from None
        # The admin console's last verdicts, for mail scored here: stored with the message.
        logged = spam_log.delivered_rows(envelope.recipients, spam, state.junk) \
            if txn.account is None and state.spam is not None and spam else []
        try:
            result = await self.delivery.deliver(envelope, message, junk=state.junk,
                                                 auth_results=state.auth_results, spam=spam,
                                                 spam_fields=state.spam_fields,
                                                 integrity=integrity, verdict_log=logged)
        except QuotaExceeded:
            raise
        except RefusedByRules as exc:  # a Sieve reject of a one-recipient message (RFC 5429)
            raise MessageRefused(str(exc)) from None
        except Exception as exc:
            self.forget_routes()  # e.g. an account removed since RCPT: the retry looks afresh
            log_event("smtp.delivery_error", logging.ERROR, session=self.conn.session_id,
                      error=f"{type(exc).__name__}: {exc}")
            raise
        if txn.account is not None:
            cap.record(txn.account, len(txn.recipients))
        self._queue_id = result.queue_id
        return result.queue_id

    async def _run_data_checks(self, txn: Transaction, envelope: InboundEnvelope,
                               accounts: list[Account], message: bytes) -> bytes:
        """The DATA phase of the checks (trust, lists, plug-ins, spam); the message to store,
        headed by the fields the checks added. Raises MessageRefused / MessageDeferred."""
        ctx = self.ctx
        ctx.helo, ctx.sender, ctx.accounts, ctx.message = txn.helo, txn.sender, accounts, message
        ctx.account = txn.account.address if txn.account is not None else None
        state = inbound_state(ctx)
        state.has_remote = any(r.remote for r in envelope.recipients)
        outcome = await self.chain.run("data", ctx)
        self._spam_score = state.spam_score
        if outcome.action == "reject":
            if state.spam_refused is not None:  # the admin console's last verdicts
                await spam_log.refused(self.services.store, envelope.recipients,
                                       state.spam_refused)
            raise MessageRefused(outcome.text, outcome.code, outcome.status)
        if outcome.action == "tempfail":
            raise MessageDeferred(outcome.text, outcome.code, outcome.status)
        if not ctx.headers:
            return ctx.message
        added = "".join(f"{name}: {value}\r\n" for name, value in ctx.headers)
        return added.encode("utf-8") + ctx.message

    async def off_loop(self, work: Callable[[], T]) -> T:
        return await asyncio.to_thread(work)

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
            spam=self._spam_score,
            result=" ".join(result.lines),
            code=result.code,
        )
        self._queue_id = ""
        self._spam_score = None


class _Input:
    """The connection's unread bytes, filled by large reads: one read serves many pipelined
    commands, and a whole small message is usually one read."""

    def __init__(self, conn: Connection, timeout: float) -> None:
        self.conn = conn
        self.timeout = timeout
        self.buffer = InputBuffer()

    def pending(self) -> bool:
        return len(self.buffer) > 0 or self.conn.pending_input()

    async def fill(self) -> None:
        self.buffer.append(await self.conn.read_some(READ_SIZE, self.timeout))

    async def line(self, max_length: int) -> bytes | LineTooLong:
        while (line := self.buffer.take_line(max_length)) is None:
            await self.fill()
        return line

    async def message(self, policy: SessionPolicy) -> DataOutcome:
        """The lines after DATA up to <CRLF>.<CRLF>; what follows stays buffered."""
        reader = DotReader(policy.max_message_size, bare_newlines=policy.bare_newlines,
                           max_line=policy.max_line)
        rest = reader.feed(self.buffer.take_all())
        while not reader.done:
            # Straight from the socket to the reader: the buffer would copy each chunk twice.
            rest = reader.feed(await self.conn.read_some(READ_SIZE, self.timeout))
        self.buffer.append(rest)
        if reader.raw_size > OFF_LOOP_SIZE:
            # Unstuffing, line-end normalising and the line bound each pass over the whole
            # message: in a thread for a large one, so other sessions get the loop between steps.
            return await asyncio.to_thread(reader.finish)
        return reader.finish()

    async def chunk(self, size: int, sink: Callable[[bytes], None]) -> None:
        """Exactly ``size`` octets (a BDAT chunk), handed to ``sink`` piece by piece."""
        remaining = size
        while remaining:
            if not len(self.buffer):
                await self.fill()
            piece = self.buffer.take(remaining)
            sink(piece)
            remaining -= len(piece)


class SmtpHandler:
    def __init__(self, services: Services, listener_name: str, lc: ListenerConfig) -> None:
        self.services = services
        self.listener_name = listener_name
        self.submission = lc.protocol == "submission"
        self.tls_mode = lc.tls
        self.timeout = float(services.cfg.limits.smtp_idle_timeout)
        self.routes: RecentLookups[RouteLike] = RecentLookups(services.store)
        self.domains: RecentLookups[bool] = RecentLookups(services.store)
        self.urlauth: UrlAuthService | None = None
        if self.submission:  # BURL (RFC 4468) reads our own IMAP URLs
            self.urlauth = UrlAuthService(services.store, shared_mailboxes(services))

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
            bare_newlines=cfg.smtp.bare_line_feeds,
            max_line=cfg.smtp.max_line_length,
        )
        backend = SessionBackend(self.services, delivery_service(self.services), conn,
                                 self.routes, self.domains, check_chain(self.services),
                                 self.submission)
        session = SmtpSession(policy, backend, tls_active=conn.is_tls)
        session.checks = backend
        if self.urlauth is not None:
            session.url_fetcher = self._fetch_url
        return session

    async def _fetch_url(self, url: str, address: str) -> bytes | None:
        """BURL's data: a URLAUTH URL of this server, read as the submission server acting
        for ``address`` (RFC 4467 "submit+", RFC 4468 3.2)."""
        assert self.urlauth is not None
        return await fetch_authorized(self.urlauth, self.services.cfg.hostname, url,
                                      submitter=address)

    async def handle(self, conn: Connection) -> None:
        session = self._session(conn)
        pending: list[bytes] = []
        data = _Input(conn, self.timeout)
        try:
            first = await session.start()  # the greeting, or a connect check's refusal
            pending.append(first.encode())
            if first.action is Action.CLOSE:
                await _flush(conn, pending)
                return
            waited = False
            if not conn.is_tls:
                await _flush(conn, pending)
                # The client's first bytes (its EHLO, usually whole), read as any input is: a
                # peek first would cost a wait of its own on every connection.
                first_bytes = await conn.read_some(READ_SIZE, self.timeout)
                # A client speaking TLS to a plaintext port (it wanted 465): no line will come.
                if is_tls_handshake(first_bytes[:3]):
                    log_event("smtp.hang_up", session=conn.session_id, client=conn.peer_ip,
                              reason="tls_on_plaintext")
                    await conn.send(f"421 4.7.0 {self.services.cfg.hostname} TLS handshake "
                                    "on a plaintext port\r\n".encode())
                    return
                data.buffer.append(first_bytes)
                waited = True
            await self._serve(conn, session, data, pending, waited)
        except IdleTimeout:
            pending.append(session.timeout_reply().encode())
            with contextlib.suppress(Exception):
                await _flush(conn, pending)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # the server is stopping: say so if we can
                conn.write(b"".join(pending) + session.shutdown_reply().encode())
            raise
        except (ConnectionClosed, ConnectionError, ssl.SSLError, OSError):
            raise  # the client went away; the listener closes and logs
        except Exception as exc:  # a bug: tell the client to retry later, keep the process up
            log_event("smtp.internal_error", logging.ERROR, session=conn.session_id,
                      error=f"{type(exc).__name__}: {exc}")
            pending.append(session.internal_error_reply().encode())
            with contextlib.suppress(Exception):
                await _flush(conn, pending)

    async def _serve(self, conn: Connection, session: SmtpSession, data: _Input,
                     pending: list[bytes], waited: bool = False) -> None:
        """``waited``: the input buffered was just read by a wait for it (the other sessions
        had their turn meanwhile)."""
        while True:
            if not data.pending():
                await _flush(conn, pending)  # nothing more pipelined: answer before waiting
            elif waited:
                waited = False
            else:
                # Pipelined lines are read without waiting: without a turn here one client's
                # stream of commands would hold every other session (issue 16).
                await asyncio.sleep(0)
            line = await data.line(LONGEST_LINE + 2)
            if isinstance(line, LineTooLong):
                answer = session.on_line_too_long()
            else:
                answer = await session.on_line(line)
            if answer.action is Action.READ_DATA:
                pending.append(answer.encode())
                await _flush(conn, pending)  # the client waits for 354 before sending
                outcome = await data.message(session.policy)
                answer = await session.on_data(outcome)
            elif answer.action is Action.READ_CHUNK:
                await data.chunk(answer.chunk_size, session.on_chunk)
                answer = await session.on_chunk_end()
            elif answer.action is Action.DISCARD_CHUNK:
                # Refused from the command alone (no transaction, too big): the reply goes out
                # at once, and the octets on their way are read and dropped as they come (RFC
                # 3030 2: a refused chunk is still consumed).
                pending.append(answer.encode())
                await _flush(conn, pending)
                await data.chunk(answer.chunk_size, _drop)
                continue
            pending.append(answer.encode())
            if answer.action is Action.CLOSE:
                await _flush(conn, pending)
                return
            if answer.action is Action.START_TLS:
                await _flush(conn, pending)
                if not await self._start_tls(conn, session, data):
                    return

    async def _start_tls(self, conn: Connection, session: SmtpSession, data: _Input) -> bool:
        dropped = data.buffer.clear()
        try:
            discarded = await conn.start_tls() or dropped > 0
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


def _printable(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:400]


def _refusal_reply(outcome: Outcome) -> Reply | None:
    if not outcome.refused:
        return None
    return reply(outcome.code, outcome.status, _printable(outcome.text))


def _drop(piece: bytes) -> None:
    """A sink for octets that are read and not kept."""


async def _flush(conn: Connection, pending: list[bytes]) -> None:
    if pending:
        data = b"".join(pending)
        pending.clear()
        await conn.send(data)


def make_smtp_handler(
    services: Services, listener_name: str, listener_config: ListenerConfig
) -> ProtocolHandler:
    return SmtpHandler(services, listener_name, listener_config)
