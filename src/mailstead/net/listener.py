"""asyncio listeners shared by every protocol: TLS (implicit and STARTTLS), connection caps,
idle timeouts and line framing. No mail logic lives here.

A protocol plugs in with a ``ProtocolHandler``: ``handle(conn)`` runs one session over a
``Connection``; ``busy_reply`` is what a client hears when the caps refuse it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import random
import socket
import ssl
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

from mailstead.net.balance import BalancedServer, LoadBoard
from mailstead.net.tls import describe
from mailstead.obs import log_event

BACKLOG = 4096
STREAM_LIMIT = 256 * 1024  # asyncio buffer cap; protocol line limits are checked below it
CLOSE_GRACE = 2.0  # seconds a closing connection may take to flush and end TLS politely
STOP_GRACE = 0.1  # the same while the server stops

# Session ids only tell log lines apart: drawn from a generator seeded once per process (and
# again in a forked child), not from os.urandom, a system call for every connection.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_session_id() -> str:
    return f"{_ids.getrandbits(48):012x}"


class ConnectionClosed(Exception):
    """The peer went away (EOF or reset)."""


class IdleTimeout(Exception):
    """The peer sent nothing for longer than the allowed idle time."""


class LineTooLong(Exception):
    """A line exceeded the protocol's limit; the rest of it was read and thrown away.
    ``prefix`` keeps its first bytes (up to ``KEPT_PREFIX``), so an IMAP tag can still be
    answered."""

    KEPT_PREFIX = 1024

    def __init__(self, prefix: bytes = b"") -> None:
        super().__init__("line too long")
        self.prefix = prefix[: self.KEPT_PREFIX]


class ProtocolHandler(Protocol):
    async def handle(self, conn: Connection) -> None: ...

    def busy_reply(self) -> bytes:
        """Sent, then the connection closed, when a connection cap is reached."""


@lru_cache(maxsize=4096)  # asked for every session, parsed once per client address
def _is_loopback(peer_ip: str) -> bool:
    try:
        return ipaddress.ip_address(peer_ip).is_loopback
    except ValueError:
        return False


@dataclass(slots=True)  # no instance dict: one of these per open connection
class Connection:
    """One client connection: framing helpers plus what a session needs to know about it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    listener: str
    protocol: str
    tls_mode: str
    peer_ip: str
    peer_port: int
    ssl_context: ssl.SSLContext | None
    session_id: str = field(default_factory=new_session_id)
    is_tls: bool = False
    # COMPRESS=DEFLATE (net/deflate.py): what each write goes through, and the inflating task.
    compress: Callable[[bytes], bytes] | None = None
    pump: asyncio.Future[None] | None = None
    # The idle timeout of every protocol: one timer per connection, moved on only when it
    # fires (a timer set and cancelled around every read cost more than the read's own work).
    _waiting_since: float | None = field(default=None, repr=False)  # the pending read began
    _timeout: float = field(default=0.0, repr=False)
    _timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    _loop_cache: asyncio.AbstractEventLoop | None = field(default=None, repr=False)

    @property
    def is_loopback(self) -> bool:
        return _is_loopback(self.peer_ip)

    @property
    def local_port(self) -> int:
        """The port the client connected to; asked of the socket only when wanted (a
        getsockname system call no session of ours makes)."""
        sock = self.writer.get_extra_info("sockname") or ("?", 0)
        return int(sock[1])

    @property
    def tls_description(self) -> str:
        if not self.is_tls:  # most MX connections: no transport lookup for the TLS object
            return ""
        return describe(self.writer.get_extra_info("ssl_object"))

    # -- the idle timeout --

    def _loop(self) -> asyncio.AbstractEventLoop:
        """The connection's event loop, looked up once: on Python 3.11
        ``asyncio.get_running_loop()`` makes a getpid system call each time."""
        loop = self._loop_cache
        if loop is None:
            loop = self._loop_cache = asyncio.get_running_loop()
        return loop

    def _wait_from_now(self, timeout: float | None) -> None:
        """A read starts: it may wait at most ``timeout`` seconds (None: forever)."""
        if timeout is None:
            return
        loop = self._loop_cache or self._loop()
        self._timeout = timeout
        self._waiting_since = loop.time()
        if self._timer is None:
            self._timer = loop.call_at(self._waiting_since + timeout, self._idle_check)

    def _idle_check(self) -> None:
        loop = self._loop()
        since = self._waiting_since
        if since is not None and loop.time() >= since + self._timeout:
            self._timer = None
            # Ends the pending read with IdleTimeout; the reader is not read again after it.
            self.reader.set_exception(IdleTimeout())
            return
        start = loop.time() if since is None else since  # a later read starts later still
        self._timer = loop.call_at(start + self._timeout, self._idle_check)

    def _stop_waiting(self) -> None:
        self._waiting_since = None

    # -- reading --

    async def readline(self, max_length: int, timeout: float | None) -> bytes:
        """Reads one line ending in LF (CR LF kept). Raises LineTooLong (after consuming the
        whole line, so the session can go on), ConnectionClosed, or IdleTimeout."""
        reader = self.reader
        if type(reader) is not asyncio.StreamReader or reader.exception() is not None:
            return await self._readline_waiting(max_length, timeout)
        # asyncio's StreamReader, read from its buffer: what readuntil does, without its
        # coroutine and its generic steps (this runs once per command of every session).
        buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
        end = buffer.find(b"\n")
        if end < 0:
            # The usual case between commands: nothing has come yet. One await of the
            # reader's own wait; anything unusual (end of input, an error, more bytes than
            # the reader's limit without an LF) goes the general way, readuntil's.
            wait = reader._wait_for_data  # type: ignore[attr-defined]
            self._wait_from_now(timeout)
            try:
                while end < 0:
                    if (reader._eof or reader.exception() is not None  # type: ignore[attr-defined]
                            or len(buffer) > reader._limit):  # type: ignore[attr-defined]
                        return await self._readline_raw(max_length)
                    try:
                        await wait("readuntil")
                    except (ConnectionError, OSError):
                        raise ConnectionClosed() from None
                    end = buffer.find(b"\n")
            finally:
                self._stop_waiting()
        if end > reader._limit:  # type: ignore[attr-defined]
            return await self._readline_waiting(max_length, timeout)  # LimitOverrunError
        line = bytes(buffer[: end + 1])
        del buffer[: end + 1]
        reader._maybe_resume_transport()  # type: ignore[attr-defined]
        if len(line) > max_length:
            raise LineTooLong(line)
        return line

    async def _readline_waiting(self, max_length: int, timeout: float | None) -> bytes:
        self._wait_from_now(timeout)
        try:
            return await self._readline_raw(max_length)
        finally:
            self._stop_waiting()

    async def read_some(self, size: int, timeout: float | None) -> bytes:
        """What the client has sent, at most ``size`` octets (at least one: b"" never comes
        back, end of input raises ConnectionClosed)."""
        self._wait_from_now(timeout)
        try:
            data = await self.reader.read(size)
        except (ConnectionError, OSError):
            raise ConnectionClosed() from None
        finally:
            self._stop_waiting()
        if not data:
            raise ConnectionClosed()
        return data

    async def _readline_raw(self, max_length: int) -> bytes:
        try:
            line = await self.reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise ConnectionClosed() from None
            raise ConnectionClosed() from None
        except asyncio.LimitOverrunError as exc:
            prefix = await self._discard_line(exc.consumed)
            raise LineTooLong(prefix) from None
        except (ConnectionError, OSError):
            raise ConnectionClosed() from None
        if len(line) > max_length:
            raise LineTooLong(line)
        return line

    async def _discard_line(self, consumed: int) -> bytes:
        """Reads and drops the rest of an over-long line; returns its first bytes."""
        try:
            head = await self.reader.readexactly(consumed)
        except asyncio.IncompleteReadError:
            raise ConnectionClosed() from None
        while True:
            try:
                await self.reader.readuntil(b"\n")
                return head[: LineTooLong.KEPT_PREFIX]
            except asyncio.LimitOverrunError as exc:
                await self.reader.readexactly(exc.consumed)
            except asyncio.IncompleteReadError:
                raise ConnectionClosed() from None

    async def readexactly(self, n: int, timeout: float | None) -> bytes:
        self._wait_from_now(timeout)
        try:
            return await self.reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            raise ConnectionClosed() from None
        finally:
            self._stop_waiting()

    async def peek(self, size: int, timeout: float | None) -> bytes:
        """Up to ``size`` bytes the client has sent, left unread: waits for the first byte
        (b"" at end of input). Lets a plaintext listener see a TLS ClientHello before it
        reads lines."""
        reader = self.reader
        buffer = getattr(reader, "_buffer", None)
        wait = getattr(reader, "_wait_for_data", None)
        if not isinstance(buffer, bytearray) or wait is None:
            return b""  # not asyncio's StreamReader: nothing to peek at
        self._wait_from_now(timeout)
        try:
            while not buffer and not reader.at_eof():
                failed = reader.exception()
                if failed is not None:
                    raise failed
                await wait("peek")
        except (ConnectionError, OSError):
            raise ConnectionClosed() from None
        finally:
            self._stop_waiting()
        failed = reader.exception()
        if failed is not None and not buffer:
            raise failed
        return bytes(buffer[:size])

    def pending_input(self) -> bool:
        """True when the client has sent bytes we have not read yet (pipelining checks)."""
        buffer: bytes = getattr(self.reader, "_buffer", b"")
        return len(buffer) > 0

    def write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data if self.compress is None else self.compress(data))

    async def drain(self) -> None:
        writer = self.writer
        transport = writer.transport
        if (not transport.get_write_buffer_size() and not transport.is_closing()
                and self.reader.exception() is None):
            # All sent already (the usual case after a short answer): StreamWriter.drain
            # would find nothing to wait for, after three coroutine steps.
            return
        try:
            await writer.drain()
        except (ConnectionError, OSError):
            raise ConnectionClosed() from None

    async def send(self, data: bytes) -> None:
        self.write(data)
        # A reply the kernel took whole (nearly every one) on an open connection leaves
        # nothing to wait for: the drain's two coroutines are skipped. A closing one still
        # drains, which raises once the connection is lost (a client gone mid-FETCH).
        transport = self.writer.transport
        if transport.get_write_buffer_size() or transport.is_closing():
            await self.drain()

    async def start_tls(self) -> bool:
        """Upgrades to TLS (STARTTLS/STLS). Anything the client pipelined in plain text after
        the command is thrown away first (CVE-2011-0411 family); returns True if there was."""
        if self.ssl_context is None:
            raise RuntimeError("no TLS context")
        discarded = self.pending_input()
        if discarded:
            buffer = getattr(self.reader, "_buffer", None)
            if isinstance(buffer, bytearray):
                buffer.clear()
        await self.writer.start_tls(self.ssl_context)
        self.is_tls = True
        return discarded

    async def close(self) -> None:
        if self._timer is not None:  # no timer may outlive the connection
            self._timer.cancel()
            self._timer = None
        if self.pump is not None:
            self.pump.cancel()
        try:
            self.writer.close()
            if not self.is_tls and not self.writer.transport.get_write_buffer_size():
                # Plain TCP with nothing left to send closes at the loop's next turn: no
                # timer needed (9 µs of a connection's CPU on the bench machine).
                await self.writer.wait_closed()
                return
            # A TLS close waits for the client's close_notify, which many clients never
            # send: give it CLOSE_GRACE (less while the server stops), then drop the socket.
            task = asyncio.current_task()
            grace = STOP_GRACE if task is not None and task.cancelling() else CLOSE_GRACE
            async with asyncio.timeout(grace):  # no task of its own, as wait_for would make
                await self.writer.wait_closed()
        except Exception:
            with contextlib.suppress(Exception):
                self.writer.transport.abort()


class ConnectionCaps:
    """Total and per-IP open connection counters shared by all listeners of a process, and
    the logged-in sessions per (protocol, user, IP), in process memory. With several worker
    processes, ``net.sharedcaps.SharedConnectionCaps`` keeps the same counts across them."""

    def __init__(self, total: int, per_ip: int) -> None:
        self.total_limit = total
        self.per_ip_limit = per_ip
        self.open_total = 0
        self.open_by_ip: Counter[str] = Counter()
        self.open_by_protocol: Counter[str] = Counter()
        self.sessions_by_user_ip: Counter[tuple[str, str, str]] = Counter()

    def acquire_session(self, protocol: str, user: str, ip: str, limit: int) -> bool:
        """Counts one more logged-in session of ``user`` from ``ip``; False (nothing counted)
        when ``limit`` of them are open already. Give it back with ``release_session``."""
        key = (protocol, user.lower(), ip)
        if self.sessions_by_user_ip[key] >= limit:
            return False
        self.sessions_by_user_ip[key] += 1
        return True

    def release_session(self, protocol: str, user: str, ip: str) -> None:
        key = (protocol, user.lower(), ip)
        self.sessions_by_user_ip[key] -= 1
        if self.sessions_by_user_ip[key] <= 0:
            del self.sessions_by_user_ip[key]

    def open_counts(self) -> Counter[str]:
        """Open connections per protocol (for the statistics)."""
        return self.open_by_protocol

    def load_board(self) -> LoadBoard | None:
        """Where worker processes compare their loads (None: this process is the only one)."""
        return None

    def acquire(self, ip: str, protocol: str) -> bool:
        if self.open_total >= self.total_limit or self.open_by_ip[ip] >= self.per_ip_limit:
            return False
        self.open_total += 1
        self.open_by_ip[ip] += 1
        self.open_by_protocol[protocol] += 1
        return True

    def release(self, ip: str, protocol: str) -> None:
        self.open_total -= 1
        self.open_by_ip[ip] -= 1
        if self.open_by_ip[ip] <= 0:
            del self.open_by_ip[ip]
        self.open_by_protocol[protocol] -= 1


def _lighter(protocol: asyncio.StreamReaderProtocol) -> asyncio.StreamReaderProtocol:
    """asyncio gives each connection's protocol a deque of drain waiters: some 700 bytes of
    every idle connection, for what is empty except while a write waits for the client. A
    list does all that is asked of it there (append, remove, iterate) in 56 bytes: 7 MB less
    for 10,000 idle IMAP connections. Left alone if asyncio changes what it keeps."""
    waiters = getattr(protocol, "_drain_waiters", None)
    if type(waiters) is deque and not waiters:
        protocol._drain_waiters = []  # type: ignore[attr-defined]
    return protocol


@dataclass
class Listener:
    name: str
    protocol: str
    address: str
    port: int
    tls_mode: str
    server: asyncio.Server | BalancedServer

    @property
    def bound_port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])


async def start_listener(
    *,
    name: str,
    protocol: str,
    address: str,
    port: int,
    tls_mode: str,
    ssl_context: ssl.SSLContext | None,
    handler: ProtocolHandler,
    caps: ConnectionCaps,
    tasks: set[asyncio.Task[None]] | None = None,
    sock: socket.socket | None = None,
) -> Listener:
    """Binds and starts serving (on ``sock`` if given: a socket bound already, the worker
    processes' shared one). ``tasks`` collects running sessions so shutdown can end them."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        conn = Connection(
            reader=reader,
            writer=writer,
            listener=name,
            protocol=protocol,
            tls_mode=tls_mode,
            peer_ip=str(peer[0]),
            peer_port=int(peer[1]),
            ssl_context=ssl_context,
            is_tls=tls_mode == "implicit",
            _loop_cache=loop,
        )
        if not caps.acquire(conn.peer_ip, protocol):
            log_event("conn.refused", listener=name, client=conn.peer_ip, reason="cap")
            with contextlib.suppress(Exception):
                await conn.send(handler.busy_reply())
            await conn.close()
            return
        # The loop named: current_task() would look it up, a getpid() system call on 3.11.
        task = asyncio.current_task(loop) if tasks is not None else None
        if tasks is not None and task is not None:
            tasks.add(task)  # type: ignore[arg-type]
        log_event("conn.open", session=conn.session_id, listener=name, client=conn.peer_ip,
                  tls=tls_mode)
        try:
            await handler.handle(conn)
        except (ConnectionClosed, ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            caps.release(conn.peer_ip, protocol)
            if tasks is not None and task is not None:
                tasks.discard(task)  # type: ignore[arg-type]
            await conn.close()
            log_event("conn.close", session=conn.session_id, listener=name)

    tls = ssl_context if tls_mode == "implicit" else None
    server: asyncio.Server | BalancedServer
    board = caps.load_board()
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.StreamReaderProtocol:  # what asyncio.start_server makes
        reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
        return _lighter(asyncio.StreamReaderProtocol(reader, on_connect, loop=loop))

    if sock is not None and board is not None:  # a worker of several (net/balance.py)
        server = BalancedServer(sock, factory, tls, board)
    elif sock is not None:
        server = await loop.create_server(factory, sock=sock, ssl=tls, backlog=BACKLOG)
    else:
        server = await loop.create_server(
            factory, host=address, port=port, ssl=tls, reuse_address=True, backlog=BACKLOG)
    return Listener(name, protocol, address, port, tls_mode, server)


Callback = Callable[[], Awaitable[None]]
