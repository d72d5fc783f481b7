"""IMAP listener glue: reads commands off a Connection (lines and literals), runs them through
the pure ImapSession, and provides STARTTLS, IDLE waiting and the autologout timer.

Framing defences: a line is at most ``MAX_LINE`` octets; a literal's size is checked against
the limit *before* any of it is read (a synchronising literal is refused instead of invited
with "+", a non-synchronising one that is too big ends the session since its bytes are
already on the way); a whole command is capped too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable

from mailstead.app import Services
from mailstead.config import ListenerConfig
from mailstead.net.deflate import BadCompressedData, start_deflate
from mailstead.net.listener import (
    Connection,
    ConnectionCaps,
    ConnectionClosed,
    IdleTimeout,
    LineTooLong,
    ProtocolHandler,
)
from mailstead.obs import log_event
from mailstead.proto.imap_backend import (
    ClientGone,
    ClientTimeout,
    LoginRefused,
    TooManySessions,
)
from mailstead.proto.imap_format import CommandError
from mailstead.proto.imap_notify import Notifier
from mailstead.proto.imap_reader import LiteralMarker, literal_marker, peek_tag_command
from mailstead.proto.imap_session import ImapSession, SessionSettings, State
from mailstead.proto.lines import is_http_request, is_tls_handshake, strip_eol
from mailstead.services.accounts import AccountService, AuthFailed
from mailstead.services.mailbox import MailboxService
from mailstead.services.urlauth import UrlAuthService
from mailstead.store.interfaces import Account

MAX_LINE = 64 * 1024
# Bounded work per command (issue 16): literals in one command, and the size of any command
# other than APPEND (whose limit is a message). A legitimate command needs a handful of
# literals (MULTIAPPEND: one a message); 100,000 one-byte ones are an attack on the parser.
MAX_LITERALS = 1000
MAX_OTHER_COMMAND = 1024 * 1024
# NOTIFY (RFC 5465 5.8): news a client leaves unread this long end its notifications.
NOTIFY_WRITE_SECONDS = 60.0


class _ConnIO:
    """The Connection as the session's ClientIO. Responses are gathered and sent together at
    each drain (or every WRITE_CHUNK bytes): one send per command instead of one per line."""

    WRITE_CHUNK = 64 * 1024
    __slots__ = ("_command_read", "_idle_read", "_out", "_pending", "_wake", "conn", "timeout")

    def __init__(self, conn: Connection, timeout: float) -> None:
        self.conn = conn
        self.timeout = timeout
        self._idle_read: asyncio.Task[bytes] | None = None
        self._command_read: asyncio.Task[bytes] | None = None  # NOTIFY: the next command line
        self._wake: asyncio.Future[None] | None = None  # idle_wait's, set by _woken
        self._out: list[bytes] = []
        self._pending = 0

    @property
    def is_tls(self) -> bool:
        return self.conn.is_tls

    @property
    def peer_ip(self) -> str:
        return self.conn.peer_ip

    def write(self, data: bytes) -> None:
        self._out.append(data)
        self._pending += len(data)
        if self._pending >= self.WRITE_CHUNK:
            self.flush()

    def flush(self) -> None:
        if self._out:
            self.conn.write(b"".join(self._out))
            self._out.clear()
            self._pending = 0

    async def drain(self) -> None:
        self.flush()
        try:
            await self.conn.drain()
        except ConnectionClosed:
            raise ClientGone() from None

    async def read_line(self) -> bytes:
        try:
            return await self.conn.readline(MAX_LINE, self.timeout)
        except BadCompressedData:
            raise  # answered BYE by the handler
        except ConnectionClosed:
            raise ClientGone() from None
        except IdleTimeout:
            raise ClientTimeout() from None
        except LineTooLong:  # an AUTHENTICATE response or a line in IDLE: the command fails
            raise CommandError("BAD", "Line too long") from None

    async def pause(self) -> None:
        await asyncio.sleep(0)

    def start_compression(self) -> None:
        start_deflate(self.conn)

    async def start_tls(self) -> None:
        try:
            await self.conn.start_tls()
        except (ssl.SSLError, ConnectionError, OSError):
            raise ClientGone() from None  # a failed handshake leaves nothing to talk over

    async def idle_wait(
        self, wait_change: Callable[[], Awaitable[bool]] | None
    ) -> bytes | None:
        # One read stays pending across wake-ups, so no byte of "DONE" is lost; its timeout
        # is the autologout timer, re-armed by each IDLE (RFC 2177: clients re-IDLE < 30 min).
        read = self._idle_read
        if read is None:
            read = self._idle_read = asyncio.ensure_future(self.read_line())
        # What asyncio.wait(FIRST_COMPLETED) does, without its set and its two coroutines
        # (every idle session sits here). A view's change_waiter is a plain future: no task.
        change = None if wait_change is None else asyncio.ensure_future(wait_change())
        try:
            if not read.done() and (change is None or not change.done()):
                wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._wake = wake
                read.add_done_callback(self._woken)
                if change is not None:
                    change.add_done_callback(self._woken)
                try:
                    await wake
                finally:
                    self._wake = None
                    read.remove_done_callback(self._woken)
                    if change is not None:
                        change.remove_done_callback(self._woken)
        finally:
            if change is not None and not change.done():
                change.cancel()
        if read.done():
            self._idle_read = None
            return read.result()
        return None

    def _woken(self, _done: object) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    @property
    def command_read_pending(self) -> bool:
        """A read started by command_or_change is still waiting (NOTIFY ended meanwhile)."""
        return self._command_read is not None

    async def command_or_change(
        self, wait_change: Callable[[], Awaitable[None]] | None
    ) -> bytes | None:
        """NOTIFY (RFC 5465) between commands: the first line of the next command, or None
        when ``wait_change`` returned first. Like idle_wait, one read stays pending across
        wake-ups so no byte of the command is lost; the read's errors (LineTooLong,
        IdleTimeout, ConnectionClosed) come out as from a plain readline."""
        if self._command_read is None:
            self._command_read = asyncio.ensure_future(
                self.conn.readline(MAX_LINE, self.timeout)
            )
        if wait_change is None:
            await asyncio.wait({self._command_read})
        else:
            change = asyncio.ensure_future(wait_change())
            try:
                await asyncio.wait({self._command_read, change},
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not change.done():
                    change.cancel()
        if self._command_read.done():
            task, self._command_read = self._command_read, None
            return task.result()
        return None

    def close(self) -> None:
        if self._command_read is not None:
            self._command_read.cancel()
            self._command_read = None
        if self._idle_read is not None:
            self._idle_read.cancel()
            self._idle_read = None


class _Auth:
    """AccountService as the session's Authenticator, with one log line per attempt. A login
    also takes one of the user's session slots for its address (given back by ``release``
    when the connection ends)."""

    __slots__ = ("accounts", "caps", "session_id", "sessions_per_user_ip", "slot")

    def __init__(
        self, accounts: AccountService, session_id: str, caps: ConnectionCaps,
        sessions_per_user_ip: int,
    ) -> None:
        self.accounts = accounts
        self.session_id = session_id
        self.caps = caps
        self.sessions_per_user_ip = sessions_per_user_ip
        self.slot: tuple[str, str] | None = None  # (user, ip) counted in caps

    async def login(self, user: str, password: str, ip: str) -> Account:
        try:
            account = await self.accounts.authenticate(user, password, ip)
        except AuthFailed as exc:
            log_event("imap.login_failed", session=self.session_id, user=user, client=ip)
            raise LoginRefused(exc.temporary) from None
        if not self.caps.acquire_session("imap", account.address, ip, self.sessions_per_user_ip):
            log_event("imap.login_refused", session=self.session_id, user=account.address,
                      client=ip, reason="sessions per user and IP")
            raise TooManySessions()
        self.slot = (account.address, ip)
        log_event("imap.login", session=self.session_id, user=account.address, client=ip)
        return account

    def release(self) -> None:
        if self.slot is not None:
            self.caps.release_session("imap", *self.slot)
            self.slot = None


def shared_mailboxes(services: Services) -> MailboxService:
    """The one MailboxService of this process (wiring builds it; made here if it did not)."""
    existing = services.extra.get("mailbox")
    if isinstance(existing, MailboxService):
        return existing
    made = MailboxService(services.store, services.blobs, services.changes,
                          services.cfg.limits.max_message_size)
    services.extra["mailbox"] = made
    return made


class ImapHandler:
    def __init__(self, services: Services, listener_name: str, lc: ListenerConfig) -> None:
        self.services = services
        self.listener_name = listener_name
        self.lc = lc
        cfg = services.cfg
        self.mailboxes = shared_mailboxes(services)
        self.urlauth = UrlAuthService(services.store, self.mailboxes)  # RFC 4467
        limits = cfg.limits
        self.timeout = float(limits.imap_idle_timeout)
        # Whole command, literals included: a message plus room for the command around it.
        self.max_command = limits.max_message_size + MAX_LINE

    def busy_reply(self) -> bytes:
        return b"* BYE Too many connections, try again later\r\n"

    def _settings(self, conn: Connection) -> SessionSettings:
        cfg = self.services.cfg
        return SessionSettings(
            hostname=cfg.hostname,
            starttls_available=self.lc.tls == "starttls" and conn.ssl_context is not None,
            plaintext_login_ok=cfg.auth.allow_plaintext_on_loopback and conn.is_loopback,
            max_message_size=cfg.limits.max_message_size,
            max_errors=cfg.limits.imap_max_errors,
            max_commands=cfg.limits.imap_max_commands,
            command_seconds=cfg.limits.imap_command_seconds,
        )

    async def handle(self, conn: Connection) -> None:
        io = _ConnIO(conn, self.timeout)
        auth = _Auth(self.services.accounts, conn.session_id, self.services.caps,
                     self.services.cfg.limits.imap_sessions_per_user_ip)
        session = ImapSession(auth, self.mailboxes, io, self._settings(conn))
        session.urlauth = self.urlauth
        try:
            io.write(session.greeting())
            await io.drain()
            if not conn.is_tls and is_tls_handshake(await conn.peek(3, self.timeout)):
                self._hang_up(conn, io, session, "TLS handshake on a plaintext port",
                              "tls_on_plaintext")
            while not session.logged_out:
                try:
                    first = None
                    notifier = session.notify
                    if notifier is not None or io.command_read_pending:
                        # RFC 5465: told between commands, no IDLE (a read begun while
                        # NOTIFY was on is finished even if it is off now).
                        first = await io.command_or_change(
                            notifier.wait if notifier is not None else None
                        )
                        if first is None:
                            if notifier is not None:
                                await self._notify(conn, io, session, notifier)
                            continue
                    data = await self._read_command(conn, io, session, first)
                except LineTooLong as exc:
                    await self._line_too_long(conn, io, session, exc.prefix)
                    continue
                except IdleTimeout:
                    io.write(b"* BYE Autologout; idle for too long\r\n")
                    break
                if data is None:
                    continue
                if is_http_request(data):  # a browser made to post here (cross-protocol)
                    self._hang_up(conn, io, session, "This is an IMAP server, not HTTP",
                                  "http_request")
                    continue
                await session.execute(data)
            await io.drain()
        except (IdleTimeout, ClientTimeout):  # during IDLE or an AUTHENTICATE exchange
            with contextlib.suppress(Exception):
                io.write(b"* BYE Autologout; idle for too long\r\n")
                await io.drain()
        except ClientGone:
            pass
        except BadCompressedData:  # RFC 4978: nothing more can be read from this client
            log_event("imap.hang_up", session=conn.session_id, client=conn.peer_ip,
                      reason="bad_compressed_data")
            with contextlib.suppress(Exception):
                io.write(b"* BYE Bad compressed data\r\n")
                await io.drain()
        except asyncio.CancelledError:  # the server is stopping
            with contextlib.suppress(Exception):
                io.write(b"* BYE Server shutting down\r\n")
                io.flush()
            raise
        finally:
            io.close()
            session.end_notify()
            session.close_view()
            auth.release()

    async def _notify(
        self, conn: Connection, io: _ConnIO, session: ImapSession, notifier: Notifier
    ) -> None:
        """Tells the news NOTIFY asked for. A client that does not read them for
        NOTIFY_WRITE_SECONDS gets no more (RFC 5465 5.8): NOTIFICATIONOVERFLOW, NOTIFY off,
        and the session goes back to waiting for commands (with the autologout timer)."""
        async def tell() -> None:
            await notifier.deliver()
            await io.drain()

        try:
            await asyncio.wait_for(tell(), NOTIFY_WRITE_SECONDS)
        except TimeoutError:
            log_event("imap.notify_overflow", session=conn.session_id, client=conn.peer_ip)
            session.end_notify()
            io.write(b"* OK [NOTIFICATIONOVERFLOW] Notifications not read; NOTIFY is off\r\n")
            io.flush()

    def _hang_up(
        self, conn: Connection, io: _ConnIO, session: ImapSession, text: str, reason: str
    ) -> None:
        """Input that is not IMAP at all: BYE (RFC 9051 7.1.5) and the session ends."""
        log_event("imap.hang_up", session=conn.session_id, client=conn.peer_ip, reason=reason)
        io.write(b"* BYE " + text.encode() + b"\r\n")
        session.state = State.LOGOUT

    async def _line_too_long(
        self, conn: Connection, io: _ConnIO, session: ImapSession, prefix: bytes
    ) -> None:
        """A line over MAX_LINE (already read and dropped): BAD with the command's tag when its
        first bytes name one, else BYE, as an untagged BAD would leave the client waiting."""
        tag, _name = peek_tag_command(prefix)
        if tag == "*":
            self._hang_up(conn, io, session, "Line too long", "line_too_long")
            return
        await session.reject(tag, "Line too long")

    async def _read_command(
        self, conn: Connection, io: _ConnIO, session: ImapSession, first: bytes | None = None
    ) -> bytes | None:
        """One whole command with its literals inline, without the final CRLF; None when a
        literal was refused (already answered). ``first``: its first line, already read."""
        if first is not None:
            line = first
        else:
            if conn.pending_input():
                # Pipelined commands are read without waiting, so without this one session's
                # stream of them would hold the loop (issue 16): the others get a turn between.
                await asyncio.sleep(0)
            line = await conn.readline(MAX_LINE, self.timeout)
        # Most commands are one line without a literal: that line is the command.
        if not line.endswith((b"}\r\n", b"}\n")) or (marker := literal_marker(line)) is None:
            return strip_eol(line)
        tag, name = peek_tag_command(line)
        chunks = [line]
        total = len(line)
        literals = 0
        max_command = self.max_command if name == "APPEND" else MAX_OTHER_COMMAND
        while marker is not None:
            literals += 1
            if literals > MAX_LITERALS:
                await self._skip_command(conn, io, session, tag, marker)
                return None
            if literals % 64 == 0:
                await asyncio.sleep(0)  # buffered literals are read without a pause too
            if marker.size > session.literal_limit(name) or total + marker.size > max_command:
                if marker.synchronizing:
                    await session.refuse_literal(tag, name, marker.size)
                    return None
                # LITERAL+ data is already on its way and cannot be told apart from commands.
                io.write(b"* BYE Literal too big\r\n")
                session.state = State.LOGOUT
                return None
            if marker.synchronizing:
                io.write(b"+ Ready for literal data\r\n")
                await io.drain()
            chunks.append(await conn.readexactly(marker.size, self.timeout))
            line = await conn.readline(MAX_LINE, self.timeout)
            chunks.append(line)
            total += marker.size + len(line)
            marker = literal_marker(line)
        return strip_eol(b"".join(chunks))

    async def _skip_command(
        self, conn: Connection, io: _ConnIO, session: ImapSession, tag: str,
        marker: LiteralMarker | None,
    ) -> None:
        """A command with too many literals: refused with BAD. A synchronising literal is
        simply not invited (RFC 3501 7.5: BAD instead of "+"); LITERAL+ bytes already on their
        way are read and dropped up to the end of the command if it ends within MAX_LINE more
        octets, else the session ends (reading tiny literals one by one costs real CPU)."""
        left = MAX_LINE
        while marker is not None and not marker.synchronizing:
            left -= marker.size
            if left < 0:
                io.write(b"* BYE Too many literals in one command\r\n")
                session.state = State.LOGOUT
                return
            await conn.readexactly(marker.size, self.timeout)
            line = await conn.readline(MAX_LINE, self.timeout)
            left -= len(line)
            marker = literal_marker(line)
        await session.reject(tag, f"Too many literals in one command (at most {MAX_LITERALS})",
                             "LIMIT")


def make_imap_handler(
    services: Services, listener_name: str, listener_config: ListenerConfig
) -> ProtocolHandler:
    return ImapHandler(services, listener_name, listener_config)
