"""What the worker processes of one ``mailstead serve`` share besides the store and the
listening sockets (``supervisor.py`` starts them).

The peer channel: each worker binds a Unix datagram socket ``w<index>`` in a private
directory the supervisor made, and sends each event to the others' sockets. One datagram, one
event; the sender pays one ``sendto`` per sibling, the receiver reads it on its event loop.
It carries:

- the change feed: a commit in one worker wakes IDLE, NOTIFY and the mailbox caches in the
  others. The datagram goes out right after the commit, before the committing session answers
  its client, so a client that is told "done" by one worker and then asks another finds the
  other worker already told (it reads the datagram before the client's next command). On
  PostgreSQL the workers share one node name, so they ignore each other's NOTIFYs, which
  would come later and twice; other nodes are still heard through LISTEN.
- the failed-login limiter's failures and successes (``SharedAuthLimiter``): each worker keeps
  the whole record and replays its siblings' events, so a block earned in one worker holds in
  every worker. Only the probation queues and the guesses in flight stay per worker.

A sibling that is not running (restarting) misses what is sent meanwhile: it starts with no
IDLE session and reads the store afresh, and its limiter starts empty, as after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import mmap
import os
import socket
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mailstead.auth.ratelimit import AuthLimiter
from mailstead.core.models import FlagState
from mailstead.obs import log_event
from mailstead.store.changes import FlagsHandler

IDS_PER_DATAGRAM = 8192  # 64 KiB of ids, below the datagram size Linux allows by default
RECEIVE_BUFFER = 4 << 20
MAX_BACKLOG = 100_000  # datagrams kept for one busy sibling before they are dropped
FLUSH_DELAY = 0.002  # seconds before a busy sibling is tried again


@dataclass
class WorkerContext:
    """One worker's place among its siblings (made by the supervisor, used by ``App``)."""

    index: int
    count: int
    peer_dir: Path  # where the peer channel's sockets are
    group: str  # the node name the workers share (PostgreSQL's change feed)
    caps: mmap.mmap  # the shared connection counters (net/sharedcaps.py)
    secret: bytes  # keys the password digests the limiters compare (the same in every worker)
    sockets: dict[str, socket.socket] = field(default_factory=dict)  # listener -> bound socket
    message_files: Path | None = None  # where the shared message-file helper listens

    @property
    def runs_singletons(self) -> bool:
        """The outbound queue, the blob sweeper, StatsD and the web run in worker 0 only."""
        return self.index == 0


Handler = Callable[[bytes], None]


class PeerChannel:
    def __init__(self, directory: Path, index: int, count: int) -> None:
        self.path = str(directory / f"w{index}")
        self.peers = [str(directory / f"w{i}") for i in range(count) if i != index]
        self.handlers: dict[int, Handler] = {}
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by the worker this one replaces
        self.sock.bind(self.path)
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self.sock.setblocking(False)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Datagrams a busy sibling could not take yet, in order, sent again shortly.
        self._backlog: dict[str, deque[bytes]] = {}
        self._flushing: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        if self._flushing is not None:
            self._flushing.cancel()
            self._flushing = None
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def send(self, kind: bytes, payload: bytes) -> None:
        datagram = kind + payload
        for peer in self.peers:
            queued = self._backlog.get(peer)
            if queued is not None:  # keeps the order behind what waits already
                if len(queued) < MAX_BACKLOG:
                    queued.append(datagram)
                else:
                    log_event("peers.dropped", peer=peer, kind=kind.decode())
            elif not self._sendto(peer, datagram):
                self._backlog[peer] = deque([datagram])
                self._schedule_flush()

    def _sendto(self, peer: str, datagram: bytes) -> bool:
        """False when the sibling's queue is full (it is busy): try again shortly."""
        try:
            self.sock.sendto(datagram, peer)
        except (FileNotFoundError, ConnectionRefusedError):
            pass  # that sibling is not running now (restarting)
        except BlockingIOError:
            return False
        except OSError as exc:
            log_event("peers.send_failed", peer=peer, error=str(exc))
        return True

    def _schedule_flush(self) -> None:
        if self._loop is not None and self._flushing is None:
            self._flushing = self._loop.call_later(FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        self._flushing = None
        for peer, queued in list(self._backlog.items()):
            while queued and self._sendto(peer, queued[0]):
                queued.popleft()
            if not queued:
                del self._backlog[peer]
        if self._backlog:
            self._schedule_flush()

    def _readable(self) -> None:
        for _ in range(256):  # then let the loop run other callbacks
            try:
                datagram = self.sock.recv(1 << 17)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            handler = self.handlers.get(datagram[0]) if datagram else None
            if handler is None:
                continue
            try:
                handler(datagram[1:])
            except Exception as exc:  # a bad datagram must not stop the channel
                log_event("peers.bad_datagram", error=f"{type(exc).__name__}: {exc}")


# -- the change feed --

CHANGES = b"c"


def forward_changes(channel: PeerChannel) -> Callable[[Iterable[int]], None]:
    """What ``ChangeBus.forward`` calls: sends the touched ids to the siblings."""

    def forward(ids: Iterable[int]) -> None:
        ordered = sorted(ids)
        for start in range(0, len(ordered), IDS_PER_DATAGRAM):
            channel.send(CHANGES, array("q", ordered[start:start + IDS_PER_DATAGRAM]).tobytes())

    return forward


def receive_changes(deliver: Callable[[Iterable[int]], None]) -> Handler:
    def handle(payload: bytes) -> None:
        ids = array("q")
        ids.frombytes(payload)
        deliver(ids)

    return handle


# A flag change, APPEND or UID EXPUNGE with its message states and vanished UIDs
# (ChangeBus.publish_flags): the sibling applies them to its shared mailbox state instead of
# asking the store. A large one goes as
# its mailbox id alone.
FLAGS = b"f"
FLAGS_PER_DATAGRAM = 500  # ~25 bytes each: far below the datagram size limit


def forward_flags(channel: PeerChannel) -> FlagsHandler:
    """What ``ChangeBus.forward_flags`` calls."""
    ids = forward_changes(channel)

    def forward(mailbox_id: int, highestmodseq: int, changed: Sequence[FlagState],
                vanished: Sequence[int]) -> None:
        if len(changed) + len(vanished) > FLAGS_PER_DATAGRAM:
            ids({mailbox_id})
            return
        rows = [(st.uid, st.modseq, int(st.flags), tuple(st.keywords)) for st in changed]
        channel.send(FLAGS, marshal.dumps((mailbox_id, highestmodseq, rows, list(vanished))))

    return forward


def receive_flags(deliver: FlagsHandler) -> Handler:
    def handle(payload: bytes) -> None:
        mailbox_id, highestmodseq, rows, vanished = marshal.loads(payload)
        deliver(mailbox_id, highestmodseq,
                [FlagState(uid, modseq, flags, frozenset(keywords))
                 for uid, modseq, flags, keywords in rows], vanished)

    return handle


# -- the failed-login limiter --

AUTH = b"a"


class SharedAuthLimiter(AuthLimiter):
    """An ``AuthLimiter`` that tells its siblings each failure and success it records, and
    replays theirs (the module docstring says what stays per worker)."""

    channel: PeerChannel | None = None

    def record_failure(self, ip: str, account: str, guess: str = "") -> float:
        delay = super().record_failure(ip, account, guess)
        self._tell("f", ip, account, guess)
        return delay

    def record_success(self, ip: str, account: str, guess: str = "") -> None:
        super().record_success(ip, account, guess)
        self._tell("s", ip, account, guess)

    def _tell(self, event: str, ip: str, account: str, guess: str) -> None:
        if self.channel is not None:
            # Only a prefix of the keyed digest travels: enough to tell guesses apart.
            self.channel.send(AUTH, marshal.dumps((event, ip, account, guess[:16])))

    def replay(self, payload: bytes) -> None:
        event, ip, account, guess = marshal.loads(payload)
        if event == "f":
            AuthLimiter.record_failure(self, str(ip), str(account), str(guess))
        elif event == "s":
            AuthLimiter.record_success(self, str(ip), str(account), str(guess))


def connect_peers(channel: PeerChannel, limiter: AuthLimiter,
                  deliver: Callable[[Iterable[int]], None],
                  deliver_flags: FlagsHandler | None = None) -> None:
    """Routes the channel's datagrams: changes to ``deliver`` (flag changes with their states
    to ``deliver_flags``), login events to the limiter."""
    channel.handlers[CHANGES[0]] = receive_changes(deliver)
    if deliver_flags is not None:
        channel.handlers[FLAGS[0]] = receive_flags(deliver_flags)
    if isinstance(limiter, SharedAuthLimiter):
        limiter.channel = channel
        channel.handlers[AUTH[0]] = limiter.replay
