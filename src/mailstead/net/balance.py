"""Accepting on a listening socket that every worker process shares, so that new connections
go to the worker holding the fewest (supervisor.py forks the workers).

Why not let the kernel choose: every worker waits on the same socket, and the kernel wakes
them all for a new connection; the one that runs first takes it. On a machine that is not
saturated that is nearly always the same worker, so long IMAP sessions (mostly idle when the
next client arrives) pile up in one process while the others stay empty -- the workers then buy
nothing. ``SO_REUSEPORT`` (one socket per worker, the kernel hashing connections over them)
would spread them, but it also lets any other process of the same user bind the same port and
quietly receive a share of the mail; a second ``serve`` must fail at its first bind instead.

So each worker publishes how many sockets it holds open (net/sharedcaps.py) and, offered a
connection while a sibling holds fewer, steps back for ``DEFER`` seconds: the sibling, woken
by the same readiness, takes it. If nobody did (the sibling is busy with a long command), the
worker takes it after all, so a connection never waits more than ``DEFER`` for a busy sibling.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Protocol

from mailstead.obs import log_event

DEFER = 0.01  # seconds a busier worker leaves a new connection to a less busy sibling
BURST = 16  # connections taken per wake-up before giving the loop back to the sessions
EMFILE_PAUSE = 0.1  # out of descriptors: stop accepting this long


class LoadBoard(Protocol):
    def note_accepted(self, sock: socket.socket) -> None: ...

    def busier_than_a_sibling(self) -> bool: ...


class BalancedServer:
    """What ``asyncio.start_server`` would run on ``sock``, taking connections only when this
    worker is (one of) the least busy; ``close``/``wait_closed``/``sockets`` as asyncio's."""

    def __init__(self, sock: socket.socket, factory: Callable[[], asyncio.BaseProtocol],
                 ssl_context: ssl.SSLContext | None, board: LoadBoard) -> None:
        self.sock = sock
        self.factory = factory
        self.ssl_context = ssl_context
        self.board = board
        self.loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = None
        self.handshakes: set[asyncio.Task[None]] = set()
        self.closed = False
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._offered)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self.closed else (self.sock,)

    def _offered(self, take: bool = False) -> None:
        """The socket has a connection waiting (``take``: a sibling was given its chance)."""
        for _ in range(BURST):
            if not take and self.board.busier_than_a_sibling():
                self._step_back(DEFER, self._take_after_all)
                return
            take = False
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # a sibling took it
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS...: let sessions end first
                log_event("listener.accept_failed", error=exc.strerror or str(exc))
                self._step_back(EMFILE_PAUSE, self._offered)
                return
            conn.setblocking(False)
            self.board.note_accepted(conn)
            task = self.loop.create_task(self._connect(conn))
            self.handshakes.add(task)
            task.add_done_callback(self.handshakes.discard)

    def _step_back(self, delay: float, then: Callable[[], None]) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.timer = self.loop.call_later(delay, self._resume, then)

    def _resume(self, then: Callable[[], None]) -> None:
        self.timer = None
        if self.closed:
            return
        self.loop.add_reader(self.sock.fileno(), self._offered)
        then()

    def _take_after_all(self) -> None:
        self._offered(take=True)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.factory, conn, ssl=self.ssl_context)
        except (OSError, ssl.SSLError, TimeoutError):
            conn.close()  # a failed TLS handshake, or a client gone before it began
        except asyncio.CancelledError:
            conn.close()
            raise

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        for task in self.handshakes:
            task.cancel()
        self.sock.close()  # this worker's descriptor; the supervisor and siblings keep theirs

    async def wait_closed(self) -> None:
        return None
