"""Message files written and parsed by a helper process, made durable by one syncfs per batch.

Why a process and not a thread: a thread of ours takes the interpreter lock back after every
system call (open, write, rename, close, syncfs), and while the event loop is busy each of
those waits its turn. Measured with bench/smtp_ingest.py, a writer thread spent nine tenths of
its time waiting so, and a message spent most of its time between DATA and 250 in that queue.
The helper has an interpreter of its own: it writes the files, parses their envelope fields
and flushes them while the event loop goes on, and the event loop pays one pipe write per
message and one read per batch of answers.

With a SQLite store the helper also commits the rows of the deliveries it writes (``deliver``):
once the batch's files are flushed, one transaction adds every message row and queue entry of
the batch, and its fsync'd COMMIT is the batch's second and last wait. The spam log's rows
of those messages (services/spam_log.py) go into the same transaction, once per batch: a
commit of their own in the store's writer thread cost a fifth of a worker's CPU per message
(issue 24), and they become visible with the message, as before. Files are durable before
any row naming them commits, as with the store's own writer, and the rows skip a round trip
through the event loop and the writer thread, whose every statement waits for the interpreter
lock (bench/smtp_ingest.py: 17% more messages per second, median of five A/B pairs). The
helper's connection is a second writer beside the store's thread; SQLite's lock takes them in
turn.

Both pipes carry the same frames: a tag byte, a 4-byte big-endian length, then the payload.
To the helper: ``m`` and the message, or ``d`` and a pickle of (parts, queue entry, the
entry's part, spam log rows), each part a (message file, its deliveries), their blob ids and
envelopes left for the helper to fill in. A worker of a shared helper writes the files
itself (``MessageFileWriter`` says why) and sends ``f`` with the answer to give once they are
durable (blob id and envelope fields, as ``+`` carries them) instead of ``m``, and ``w`` with
a pickle of (blob ids, deliveries, queue entry, spam log rows), all filled in, instead of
``d``. From the helper, one per
request and in the same order: for ``m`` and ``f``, ``+`` with the SHA-256 (64 hex digits)
and the envelope fields (``marshal``: both ends run the same interpreter, and it costs a
tenth of JSON) once the file is durable; for ``d`` and ``w``, ``*`` with a pickle of (blob
ids, stored rows, touched mailbox ids) once the rows are committed, or ``!`` with the pickled
exception that refused them (QuotaExceeded, NotFound); for any, ``-`` with the reason the
file failed.
The helper answers a batch only after the one flush that covers it (``FsBlobStore.flush``), so
a ``+`` means what ``FsBlobStore.put`` returning means. The flush and the commit run in two
threads of the helper (``_Settler``), one batch apart, while its loop writes the files of the
next messages; batches written meanwhile share the next flush, batches flushed meanwhile the
next commit: that is the batching.

The helper ends when its input closes. If this process dies, even by SIGKILL, the kernel
closes the pipe: the helper finishes the batch in hand and exits. Files written for messages
nobody acknowledged are unreferenced, and the sweeper removes them like any other. Rows the
helper commits for such a message (SQLite) deliver it although its client never heard 250;
the client sends it again, and the recipient may get it twice: a duplicate, never a loss
(the case of a 250 lost on the way, RFC 1047).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from mailstead.obs import log_event
from mailstead.proto.mime import parse_envelope_fields
from mailstead.services import message_file_helper
from mailstead.services import message_file_wire as wire
from mailstead.services.message_file_helper import written_rows
from mailstead.store.blob_fs import FsBlobStore, by_size
from mailstead.store.interfaces import (
    Delivery,
    Envelope,
    MessageMeta,
    QueueEntry,
    SpamVerdictRow,
)


class WriterStopped(OSError):
    """The helper process went away before it answered: the file is not known to be durable."""


# What the helper answers: (blob id, envelope) for ``m``, (blob ids, rows, touched) for ``d``.
_Answer = tuple[str, Envelope] | tuple[list[str], list[MessageMeta], set[int]]


class MessageFileWriter:
    """``submit(data)`` returns (blob id, envelope fields) once the file is durable; with
    ``database`` (a SQLite store's file), ``deliver`` also commits the message's rows.

    The helper starts at the first request, and again at the next one after it died. (Two
    helpers, so that one writes while the other flushes, measured slower: the CPU they add
    costs more on two cores than the overlap gains. A thread in the helper committing one
    batch while the next is written measured slower too with 4 KiB messages on a quiet
    machine; with the flush in that thread as well (``_Settler``) it measured 1.2-1.8x the
    msgs/s of 100 KiB messages on a loaded one, where flushes wait long on the disk, and
    no worse with 4 KiB, for the same CPU.)"""

    def __init__(self, root: Path, database: Path | None = None,
                 shared: Path | None = None,
                 publish: Callable[[set[int]], None] | None = None) -> None:
        self.root = Path(root)
        self.database = database
        # Told the mailbox ids whose rows the helper committed (the change feed's publish):
        # once per answer read, for every delivery it answers, before any of their callers
        # resumes (so before any of them replies to its client). One publish per batch, not
        # one per message: with several workers each publish is a datagram to each sibling
        # and a wake-up of its loop (issue 24: 4 KiB, two workers).
        self.publish = publish
        # The helper the supervisor runs for all its workers (``serve_shared``), if any; a
        # helper of our own when it cannot be reached.
        self.shared = shared
        # With a shared helper, each worker writes its message files itself and the helper
        # only makes them durable (one syncfs covers the files of every process) and commits
        # their rows: the file's creation, the copy into it and its hash run on every core,
        # not one after another in the one helper, and the message is not copied through the
        # helper's socket (issue 24, 100 KiB: 13-23% more msgs/s, less CPU a message). The
        # write of a file up to SMALL_BLOB runs in the event loop (a larger one in a thread, so a
        # big message never stalls the other sessions): tens of microseconds, as long as ext4
        # finds its inode quickly, which the spreading of the fan directories over block groups sees
        # to (blob_fs.spread_subdirectories; without it two workers creating files in one busy
        # group raced for the same free inode and it measured worse). A helper of a worker's
        # own (one worker) still writes them: it has the other core.
        self._blobs = FsBlobStore(self.root) if shared is not None else None
        self._helper: _Helper | None = None
        self._starting: asyncio.Future[_Helper] | None = None

    async def submit(self, data: bytes) -> tuple[str, Envelope]:
        if self._blobs is not None:
            # Written (not yet durable) here; the helper answers once its flush covers it.
            blob_id = await by_size(len(data), self._blobs.write, data)
            written = blob_id.encode() + wire.envelope_to_bytes(parse_envelope_fields(data))
            blob_id, envelope = await self._request(b"f", written)
        else:
            blob_id, envelope = await self._request(b"m", data)
        return cast(str, blob_id), cast(Envelope, envelope)

    async def deliver(self, data: bytes, deliveries: Sequence[Delivery],
                      queue_entry: QueueEntry | None) -> tuple[str, list[MessageMeta], set[int]]:
        """Writes the file, then commits ``deliveries`` and ``queue_entry`` with its blob id
        and envelope filled in; returns the blob id, the stored rows and the mailbox ids they
        touched (already given to ``publish``, if set). Raises what ``store_message`` raised
        (nothing committed then)."""
        blob_ids, stored, touched = await self.deliver_parts([(data, deliveries)], queue_entry)
        return blob_ids[0], stored, touched

    async def deliver_parts(self, parts: Sequence[tuple[bytes, Sequence[Delivery]]],
                            queue_entry: QueueEntry | None, entry_part: int = 0,
                            verdict_log: Sequence[SpamVerdictRow] = ()
                            ) -> tuple[list[str], list[MessageMeta], set[int]]:
        """``deliver`` for a message stored as several files (each recipient group's copy
        with its own header fields), all rows in one transaction; the queue entry names the
        file of ``parts[entry_part]``. Returns each part's blob id. ``verdict_log``: spam
        log rows committed with the message's rows (when those commit), a failure of their
        own costing only the log rows."""
        if self.database is None:
            raise RuntimeError("deliver needs the writer to know the SQLite database")
        if self._blobs is not None:
            written = await by_size(sum(len(data) for data, _ in parts), written_rows,
                                    self._blobs, parts, queue_entry, entry_part)
            request = pickle.dumps((*written, list(verdict_log)), pickle.HIGHEST_PROTOCOL)
            blob_ids, stored, touched = await self._request(b"w", request)
        else:
            request = pickle.dumps(([(data, list(d)) for data, d in parts], queue_entry,
                                    entry_part, list(verdict_log)), pickle.HIGHEST_PROTOCOL)
            blob_ids, stored, touched = await self._request(b"d", request)
        return cast(list[str], blob_ids), cast(list[MessageMeta], stored), cast(set[int], touched)

    async def _request(self, tag: bytes, payload: bytes) -> tuple[Any, ...]:
        helper = self._helper
        if helper is None:
            helper = await self._start()
        future: asyncio.Future[_Answer] = helper.loop.create_future()
        helper.send(wire.FRAME.pack(tag, len(payload)), payload, future)
        return await future

    async def _start(self) -> _Helper:
        starting = self._starting
        if starting is None:
            starting = self._starting = asyncio.ensure_future(self._spawn())
        try:
            return await asyncio.shield(starting)
        finally:
            if starting.done() and self._starting is starting:
                self._starting = None

    async def _spawn(self) -> _Helper:
        loop = asyncio.get_running_loop()
        if self.shared is not None:
            try:
                _socket, shared = await loop.create_unix_connection(
                    lambda: _SharedHelperConnection(self), str(self.shared))
            except OSError as exc:
                log_event("blobs.shared_writer_unreachable", logging.WARNING, error=str(exc))
            else:
                self._helper = shared
                return shared
        database = [] if self.database is None else [str(self.database)]
        _process, helper = await loop.subprocess_exec(
            lambda: _Helper(self), sys.executable, "-m", message_file_helper.__name__,
            str(self.root), *database,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None)
        self._helper = helper
        return helper

    def _lost(self, helper: _Helper) -> None:
        if self._helper is helper:
            self._helper = None

    async def close(self) -> None:
        """Lets the helper finish what it was sent, then waits for it to exit."""
        helper, self._helper = self._helper, None
        if helper is not None:
            await helper.stop()


class _Helper(asyncio.SubprocessProtocol):
    """Our end of one helper process: sends messages, settles their futures in order."""

    def __init__(self, owner: MessageFileWriter) -> None:
        self.owner = owner
        self.transport: asyncio.SubprocessTransport | None = None
        self.stdin: asyncio.WriteTransport | None = None
        self.unread = bytearray()
        self.waiting: deque[asyncio.Future[_Answer]] = deque()
        self.stopping = False  # stop() was called: its exit is expected
        # Kept: asyncio.get_running_loop() costs a getpid() system call (its fork check).
        self.loop = asyncio.get_running_loop()
        self.exited = self.loop.create_future()
        # Frames asked for during this turn of the event loop, sent together at its end.
        self.outgoing: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do the same as asyncio's but are not their subclasses: cast.
        self.transport = cast(asyncio.SubprocessTransport, transport)
        self.stdin = cast(asyncio.WriteTransport, self.transport.get_pipe_transport(0))

    def send(self, head: bytes, payload: bytes, future: asyncio.Future[_Answer]) -> None:
        if self.stdin is None or self.stdin.is_closing():
            raise WriterStopped("the message file writer is stopping")
        self.waiting.append(future)
        # The frames of every session that asks during this turn of the loop go in one write
        # at its end: one system call, and one wake-up of the helper, for all of them. The
        # frame's head and payload are kept apart: joining them would copy the message once
        # more on its way to the helper.
        if not self.outgoing:
            self.loop.call_soon(self.send_outgoing)
        self.outgoing += (head, payload)

    def send_outgoing(self) -> None:
        frames, self.outgoing = self.outgoing, []
        if frames and self.stdin is not None and not self.stdin.is_closing():
            self.stdin.writelines(frames)
        # (Else the helper is gone or going: connection_lost fails what waits for it.)

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.unread += data
        touched: set[int] = set()
        for tag, payload in wire.take_frames(self.unread):
            committed = self._answer(tag, payload)
            if committed:
                touched |= committed
        # The futures' callers resume in a later callback of the loop: the change feed hears
        # of every commit answered here before any of them answers its client.
        if touched and self.owner.publish is not None:
            self.owner.publish(touched)

    def _answer(self, tag: bytes, payload: bytes) -> set[int] | None:
        """Settles the oldest request; returns the mailbox ids its commit touched, if any
        (committed whether or not its caller still waits)."""
        future = self.waiting.popleft()
        if tag == b"*":
            answer = pickle.loads(payload)
            if not future.done():
                future.set_result(answer)
            return cast(set[int], answer[2])
        if future.done():
            return None  # its caller was cancelled; an unreferenced file is swept later
        if tag == b"-":
            future.set_exception(OSError(payload.decode("utf-8", "replace")))
        elif tag == b"!":
            future.set_exception(pickle.loads(payload))
        else:
            blob_id = payload[:64].decode("ascii")
            future.set_result((blob_id, wire.envelope_from_bytes(payload[64:])))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        # Called once the process has exited and both pipes are read to the end, so every
        # answer it wrote has been taken before the futures still waiting are failed.
        self.owner._lost(self)
        if not self.stopping:
            code = self.transport.get_returncode() if self.transport is not None else None
            log_event("blobs.writer_exited", logging.ERROR, code=code, waiting=len(self.waiting))
        self._fail_waiting()

    def _fail_waiting(self) -> None:
        """Fails the requests still unanswered (they may be retried) and marks the end."""
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(WriterStopped("the message file writer stopped"))
        if not self.exited.done():
            self.exited.set_result(None)

    async def stop(self) -> None:
        self.stopping = True
        self.send_outgoing()
        if self.stdin is not None:
            self.stdin.close()  # the helper reads the end of its input and exits
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), wire.STOP_TIMEOUT)
        except TimeoutError:
            if self.transport is not None:
                with contextlib.suppress(ProcessLookupError):
                    self.transport.kill()
        if self.transport is not None:
            self.transport.close()


class _SharedHelperConnection(_Helper, asyncio.Protocol):
    """Our connection to the helper shared by the workers: the same frames over a Unix
    socket. It ends when the helper does (the supervisor restarts it) or when we close it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.stdin = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        self.pipe_data_received(1, data)

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost fails what is unanswered

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(self)
        if not self.stopping:
            log_event("blobs.shared_writer_lost", logging.WARNING, waiting=len(self.waiting))
        self._fail_waiting()

    async def stop(self) -> None:
        """Sends EOF: the helper answers what it was sent, then closes our connection."""
        self.stopping = True
        self.send_outgoing()
        if self.stdin is not None and not self.stdin.is_closing():
            self.stdin.write_eof()
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), wire.STOP_TIMEOUT)
        except TimeoutError:
            pass
        if self.stdin is not None:
            self.stdin.close()
