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
import dataclasses
import logging
import marshal
import os
import pickle
import queue
import selectors
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from mailstead.core.models import SPAM_LOG_KEEP
from mailstead.obs import log_event
from mailstead.proto.mime import parse_envelope_fields
from mailstead.store.blob_fs import FsBlobStore, by_size
from mailstead.store.interfaces import (
    Delivery,
    Envelope,
    MessageMeta,
    QueueEntry,
    SpamVerdictRow,
)
from mailstead.store.sql_base import Db
from mailstead.store.sql_messages import store_message
from mailstead.store.sql_spam_log import record_spam_verdicts
from mailstead.store.sqlite import commit_batch, connect, take_batches

_FRAME = struct.Struct(">cI")  # tag, then the length of the payload that follows
READ_SIZE = 1 << 20
STOP_TIMEOUT = 30.0  # seconds the helper gets to finish its batch when we stop


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
            written = blob_id.encode() + _envelope_to_bytes(parse_envelope_fields(data))
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
        helper.send(_FRAME.pack(tag, len(payload)), payload, future)
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
            lambda: _Helper(self), sys.executable, "-m", __name__, str(self.root), *database,
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
        for tag, payload in _take_frames(self.unread):
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
            future.set_result((blob_id, _envelope_from_bytes(payload[64:])))
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
            await asyncio.wait_for(asyncio.shield(self.exited), STOP_TIMEOUT)
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
            await asyncio.wait_for(asyncio.shield(self.exited), STOP_TIMEOUT)
        except TimeoutError:
            pass
        if self.stdin is not None:
            self.stdin.close()


def _envelope_to_bytes(env: Envelope) -> bytes:
    date = None if env.date is None else env.date.isoformat()
    return marshal.dumps((env.subject, env.from_, env.to, env.cc, date, env.message_id,
                          env.in_reply_to, env.references))


def _envelope_from_bytes(data: bytes) -> Envelope:
    subject, from_, to, cc, date, message_id, in_reply_to, references = marshal.loads(data)
    return Envelope(subject, from_, to, cc, None if date is None else datetime.fromisoformat(date),
                    message_id, in_reply_to, references)


# -- the helper process ----------------------------------------------------------------------


def _take_frames(buffer: bytearray) -> list[tuple[bytes, bytes]]:
    """The complete (tag, payload) frames at the start of ``buffer``, removed from it (both
    ends read with this)."""
    frames = []
    pos = 0
    while len(buffer) - pos >= _FRAME.size:
        tag, length = _FRAME.unpack_from(buffer, pos)
        start = pos + _FRAME.size
        if len(buffer) - start < length:
            break
        frames.append((tag, bytes(buffer[start : start + length])))
        pos = start + length
    del buffer[:pos]
    return frames


def _frame(tag: bytes, payload: bytes) -> bytes:
    return _FRAME.pack(tag, len(payload)) + payload


def _failure(text: str) -> bytes:
    return _frame(b"-", text.encode("utf-8", "replace"))


_Item = tuple[list[Delivery], QueueEntry | None, list[SpamVerdictRow]]


class _Rows:
    """The helper's writing connection to the SQLite store, opened at the first delivery."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.conn: sqlite3.Connection | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def commit(self, items: list[_Item]) -> list[tuple[bool, Any]]:
        """Each item's rows, and after them the spam log rows of the items that stored, in
        one transaction; an outcome per item."""
        if self.conn is None:
            self.conn = connect(self.database)
        logged: dict[int, list[SpamVerdictRow]] = {}
        ops: list[Callable[[Db], object]] = [
            _storing(index, item, logged) for index, item in enumerate(items)]
        if any(item[2] for item in items):
            # An operation of its own: if it fails, commit_batch rolls it back alone, and the
            # mail is stored without its log lines (the log never fails a delivery).
            ops.append(lambda db: _log_verdicts(db, logged))
        return commit_batch(self.conn, ops)[: len(items)]


def _storing(index: int, item: _Item, logged: dict[int, list[SpamVerdictRow]]
             ) -> Callable[[Db], list[MessageMeta]]:
    deliveries, entry, verdict_log = item

    def store(db: Db) -> list[MessageMeta]:
        # Run again after a failure of another item (each in its SAVEPOINT then): only a run
        # that stored leaves its log rows.
        logged.pop(index, None)
        stored = store_message(db, deliveries, entry)
        if verdict_log:
            logged[index] = verdict_log
        return stored

    return store


def _log_verdicts(db: Db, logged: dict[int, list[SpamVerdictRow]]) -> None:
    rows = [row for index in sorted(logged) for row in logged[index]]
    if rows:
        record_spam_verdicts(db, rows, SPAM_LOG_KEEP)


def with_blob(deliveries: Sequence[Delivery], entry: QueueEntry | None, blob_id: str,
              envelope: Envelope) -> tuple[list[Delivery], QueueEntry | None]:
    """The rows to commit for a message whose file is now ``blob_id`` (here, and in the
    delivery service when the store is not SQLite)."""
    filled = [Delivery(d.mailbox_id, dataclasses.replace(d.message, blob_id=blob_id,
                                                         envelope=envelope)) for d in deliveries]
    return filled, None if entry is None else dataclasses.replace(entry, blob_id=blob_id)


def _pickled_error(exc: BaseException) -> bytes:
    """The exception as our parent will raise it; its type and text where it does not pickle
    back (an exception whose constructor takes more than its message)."""
    with contextlib.suppress(Exception):
        data = pickle.dumps(exc, pickle.HIGHEST_PROTOCOL)
        pickle.loads(data)
        return data
    return pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))


def write_batch(blobs: FsBlobStore, batch: list[tuple[bytes, bytes]],
                rows: _Rows | None = None) -> bytes:
    """The answers for ``batch``: its files written and flushed, then its deliveries' rows
    committed in one transaction."""
    return b"".join(answer_batch(blobs, batch, rows))


def answer_batch(blobs: FsBlobStore, batch: list[tuple[bytes, bytes]],
                 rows: _Rows | None = None) -> list[bytes]:
    """``write_batch``'s answers, one frame per request."""
    written = write_files(blobs, batch, rows is not None)
    settle(blobs, [written], rows)
    return written.answers


@dataclasses.dataclass(slots=True)
class _Written:
    """A batch whose files are written, not yet flushed: its answers so far (b"" where the
    rows' commit will tell), and the rows to commit."""

    answers: list[bytes]
    pending: list[tuple[int, list[str], _Item]]
    reply_to: Any = None  # whom the answers go to (serve_shared: the clients)


def write_files(blobs: FsBlobStore, batch: list[tuple[bytes, bytes]],
                has_rows: bool) -> _Written:
    """The first half of a batch: its files written (not yet durable) and parsed."""
    answers: list[bytes] = []
    pending: list[tuple[int, list[str], _Item]] = []
    for tag, payload in batch:
        if tag == b"f":  # written by the worker: durable once the flush has run
            answers.append(_frame(b"+", payload))
            continue
        try:
            if tag in (b"d", b"w") and not has_rows:
                raise RuntimeError("this helper has no database for the rows")
            if tag == b"w":  # written by the worker, the rows filled in
                blob_ids, filled, queued, verdict_log = pickle.loads(payload)
            elif tag == b"d":
                parts, entry, entry_part, verdict_log = pickle.loads(payload)
                blob_ids, filled, queued = written_rows(blobs, parts, entry, entry_part)
            else:
                blob_id = blobs.write(payload)
                envelope = _envelope_to_bytes(parse_envelope_fields(payload))
                answers.append(_frame(b"+", blob_id.encode() + envelope))
                continue
        except Exception as exc:  # this message failed; the others of the batch go on
            answers.append(_failure(f"writing the message file: {exc}"))
            continue
        pending.append((len(answers), blob_ids, (filled, queued, verdict_log)))
        answers.append(b"")  # once the rows are committed
    return _Written(answers, pending)


def written_rows(blobs: FsBlobStore, parts: Sequence[tuple[bytes, Sequence[Delivery]]],
                 entry: QueueEntry | None, entry_part: int
                 ) -> tuple[list[str], list[Delivery], QueueEntry | None]:
    """Each part's file written (durable after ``blobs.flush``, or a flush by any process of
    the same filesystem), and the rows naming them: (blob ids, deliveries, queue entry)."""
    blob_ids: list[str] = []
    filled: list[Delivery] = []
    for data, deliveries in parts:
        blob_ids.append(blobs.write(data))
        part_rows, _ = with_blob(deliveries, None, blob_ids[-1], parse_envelope_fields(data))
        filled += part_rows
    queued = None if entry is None else dataclasses.replace(entry, blob_id=blob_ids[entry_part])
    return blob_ids, filled, queued


def settle(blobs: FsBlobStore, batches: list[_Written], rows: _Rows | None) -> None:
    """The second half: one flush for the files of ``batches``, then one transaction for
    their rows; their answers complete."""
    flush_files(blobs, batches)
    commit_rows(batches, rows)


def flush_files(blobs: FsBlobStore, batches: list[_Written]) -> None:
    """One flush for the files of ``batches``. If it fails, nothing in them is known to be
    durable: every answer says so, and no row of theirs is committed."""
    try:
        blobs.flush()
    except OSError as exc:
        for written in batches:
            written.answers[:] = [_failure(f"flushing message files: {exc}")] * \
                len(written.answers)
            written.pending = []


def commit_rows(batches: list[_Written], rows: _Rows | None) -> None:
    """One transaction for the rows of ``batches``, whose files are durable."""
    pending = [item for written in batches for item in written.pending]
    if not pending or rows is None:
        return
    outcomes = rows.commit([item for _index, _blob_ids, item in pending])
    places = [(written, index, blob_ids) for written in batches
              for index, blob_ids, _item in written.pending]
    for (written, index, blob_ids), (ok, value) in zip(places, outcomes, strict=True):
        if ok:
            stored, touched = value
            written.answers[index] = _frame(b"*", pickle.dumps((blob_ids, stored, touched),
                                                               pickle.HIGHEST_PROTOCOL))
        else:
            written.answers[index] = _frame(b"!", _pickled_error(value))


class _Settler:
    """Flushes and commits written batches in threads of their own, so that the next batch's
    files are written meanwhile: a flush and a commit wait on the disk, most of a batch's time
    with large messages (100 KiB: the helper waited four fifths of its time, its loop stopped
    meanwhile). Batches waiting together share one flush; batches flushed meanwhile share one
    commit; each batch's answers go to ``answer`` in the order the batches came.

    The flush and the commit run in two threads, one batch apart: while the rows of one batch
    commit (a WAL fsync), the files of the batches that came meanwhile are flushed (syncfs),
    instead of waiting for that commit to end first. A batch still waits for its own flush,
    then its own commit (files durable before any row naming them), but no longer for the
    commit of the batch before it (issue 24, 4 KiB over 20 sessions, two workers: flush
    1.0 ms, commit 1.7 ms, and 1.4-1.9 ms queued behind the previous batch's settling, of a
    round trip to the helper of ~8.5 ms). Measured: neutral on a quiet machine (A/B 0.98-1.02x
    msgs/s, the same CPU), ahead on a loaded one (two workers 1.15x, 5% less CPU)."""

    def __init__(self, blobs: FsBlobStore, rows: _Rows | None,
                 answer: Callable[[_Written], None]) -> None:
        self.blobs = blobs
        self.rows = rows
        self.answer = answer
        self.queue: queue.SimpleQueue[_Written | None] = queue.SimpleQueue()
        self.flushed: queue.SimpleQueue[list[_Written] | None] = queue.SimpleQueue()
        self.flusher = threading.Thread(target=self._flush, name="flush", daemon=True)
        self.thread = threading.Thread(target=self._commit, name="settle", daemon=True)
        self.flusher.start()
        self.thread.start()

    def put(self, written: _Written) -> None:
        self.queue.put(written)

    def stop(self) -> None:
        """Settles what was put, then ends the threads."""
        self.queue.put(None)
        self.flusher.join()
        self.thread.join()

    def _flush(self) -> None:
        try:
            for batches in take_batches(self.queue):
                try:
                    flush_files(self.blobs, batches)
                except Exception as exc:  # not an OSError of the flush: fail them all
                    for written in batches:
                        written.answers[:] = [_failure(f"flushing: {exc}")] * \
                            len(written.answers)
                        written.pending = []
                self.flushed.put(batches)
        finally:
            self.flushed.put(None)  # the committing thread ends after what came before

    def _commit(self) -> None:
        for groups in take_batches(self.flushed):
            batches = [written for group in groups for written in group]
            try:
                commit_rows(batches, self.rows)
            except Exception as exc:  # e.g. the database unreachable: every answer says so
                for written in batches:
                    written.answers[:] = [_failure(f"committing: {exc}")] * len(written.answers)
            for written in batches:
                # A reader gone (our parent died): its answers are lost, but the batches
                # still queued are settled all the same, as the helper always did.
                with contextlib.suppress(OSError):
                    self.answer(written)


def _helper_state(root: Path, database: Path | None) -> tuple[FsBlobStore, _Rows | None]:
    """What a helper process (``serve``, ``serve_shared``) works with. Ctrl-C and a service
    manager's SIGTERM reach the whole process group: a helper leaves the stopping to its
    parent, which closes the pipe (or the control pipe) once nothing is in flight."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return FsBlobStore(root), None if database is None else _Rows(database)


def serve(root: Path, stdin: int = 0, stdout: int = 1, database: Path | None = None) -> None:
    blobs, rows = _helper_state(root, database)

    def answer(written: _Written) -> None:
        data = memoryview(b"".join(written.answers))
        while data:
            data = data[os.write(stdout, data) :]

    settler = _Settler(blobs, rows, answer)
    buffer = bytearray()
    while chunk := os.read(stdin, READ_SIZE):
        buffer += chunk
        batch = _take_frames(buffer)
        if batch:
            settler.put(write_files(blobs, batch, rows is not None))
    settler.stop()
    if rows is not None:
        rows.close()


class _Client:
    """A worker process connected to the shared helper: its unread requests, and the
    answers it has not taken yet."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.unread = bytearray()
        self.out = bytearray()
        self.ended = False  # it sent all it will send (EOF), or went away
        self.waiting = 0  # its requests being settled (answers to come)

    def read(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset: it died; nothing it asked for can be answered
            data = b""
            self.out.clear()
        if data:
            self.unread += data
        else:
            self.ended = True

    def flush(self) -> None:
        try:
            while self.out:
                del self.out[: self.sock.send(self.out)]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # it went away: its answers have no reader
            self.out.clear()
            self.ended = True

    @property
    def events(self) -> int:
        return (0 if self.ended else selectors.EVENT_READ) | \
            (selectors.EVENT_WRITE if self.out else 0)

    @property
    def done(self) -> bool:
        return self.ended and not self.out and not self.waiting


def serve_shared(root: Path, listener: socket.socket, control: int = 0,
                 database: Path | None = None) -> None:
    """The helper shared by the worker processes of one ``serve`` (supervisor.py starts it):
    each worker connects to ``listener`` and sends the frames it would send a helper of its
    own; the requests of every worker that are ready together make one batch, one flush and
    one commit (two helpers, one per worker, each flushed and committed half a batch: 14-38%
    more CPU per message, issue 24). Each worker hears its answers in the order it asked.
    Ends when ``control`` (the supervisor's pipe) closes, once the batch in hand is answered:
    the supervisor stopped, or died."""
    blobs, rows = _helper_state(root, database)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    selector.register(control, selectors.EVENT_READ, None)
    # The committing thread sends each batch's answers itself, straight after the commit,
    # rather than handing them to this loop: one thread wake-up (and one hand-over of the
    # interpreter lock) less between a commit and the workers hearing of it, which on a busy
    # machine cost up to a millisecond a batch. ``lock`` keeps it and this loop apart on the
    # clients' state; it wakes this loop (``wake_w``) only for what it could not finish: an
    # answer the socket did not take whole, or a client to close.
    lock = threading.Lock()
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    selector.register(wake_r, selectors.EVENT_READ, None)

    def answer(written: _Written) -> None:
        wake = False
        with lock:
            for client, frame in zip(written.reply_to, written.answers, strict=True):
                client.out += frame
                client.waiting -= 1
            for client in dict.fromkeys(written.reply_to):
                client.flush()
                wake = wake or bool(client.out) or client.done
        if wake:
            with contextlib.suppress(BlockingIOError):
                wake_w.send(b"x")

    settler = _Settler(blobs, rows, answer)
    clients: dict[socket.socket, _Client] = {}
    stopping = False

    while not stopping:
        ready = selector.select()
        with lock:
            for key, _mask in ready:
                client = key.data
                if isinstance(client, _Client):
                    client.read()
                    client.flush()
                elif key.fileobj is wake_r:
                    with contextlib.suppress(BlockingIOError):
                        wake_r.recv(4096)
                elif key.fileobj is listener:
                    with contextlib.suppress(BlockingIOError, InterruptedError):
                        while True:
                            sock, _address = listener.accept()
                            sock.setblocking(False)
                            clients[sock] = _Client(sock)
                            selector.register(sock, selectors.EVENT_READ, clients[sock])
                elif not os.read(control, 4096):
                    stopping = True
            batch: list[tuple[_Client, bytes, bytes]] = []
            for client in clients.values():
                batch += [(client, tag, payload) for tag, payload in _take_frames(client.unread)]
            if batch:
                written = write_files(blobs, [(tag, payload) for _c, tag, payload in batch],
                                      rows is not None)
                written.reply_to = [client for client, _tag, _payload in batch]
                for client in written.reply_to:
                    client.waiting += 1
                settler.put(written)
            for sock, client in list(clients.items()):
                client.flush()
                events = client.events
                registered = selector.get_map().get(sock)
                if client.done or not events:  # nothing to read or send now
                    if registered is not None:
                        selector.unregister(sock)
                    if client.done:
                        sock.close()
                        del clients[sock]
                elif registered is None:
                    selector.register(sock, events, client)
                elif registered.events != events:
                    selector.modify(sock, events, client)
    settler.stop()
    for client in clients.values():  # the answers of the last batches, as far as they go
        with contextlib.suppress(OSError):
            client.sock.setblocking(True)
            client.sock.settimeout(STOP_TIMEOUT)
            client.sock.sendall(client.out)
    if rows is not None:
        rows.close()


def start_shared(root: Path, database: Path | None, path: Path) -> SharedHelper:
    """The shared helper of a supervisor's workers, listening at ``path`` (bound here, before
    any worker starts, so none can find it missing)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    return SharedHelper(root, database, listener)


class SharedHelper:
    """The supervisor's handle on the shared helper: started again if it dies (the workers
    fall back on helpers of their own meanwhile), stopped by closing its control pipe."""

    def __init__(self, root: Path, database: Path | None, listener: socket.socket) -> None:
        self.root = root
        self.database = database
        self.listener = listener
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        if self.process is not None and self.process.stdin is not None:
            self.process.stdin.close()  # the control pipe of the helper that died
        database = [] if self.database is None else [str(self.database)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__, "--shared", str(self.listener.fileno()),
             str(self.root), *database], stdin=subprocess.PIPE,
            pass_fds=(self.listener.fileno(),))

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else -1

    def close_in_child(self) -> None:
        """In a forked worker: the supervisor's ends are not the worker's to hold (the
        helper's input must close when the supervisor goes)."""
        if self.process is not None and self.process.stdin is not None:
            os.close(self.process.stdin.fileno())
        self.listener.close()

    def stop(self) -> None:
        if self.process is not None:
            if self.process.stdin is not None:
                self.process.stdin.close()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.listener.close()


def _main(args: list[str]) -> None:
    if len(args) >= 3 and args[0] == "--shared" and len(args) <= 4:
        listener = socket.socket(fileno=int(args[1]))
        serve_shared(Path(args[2]), listener, database=Path(args[3]) if len(args) == 4 else None)
    elif 1 <= len(args) <= 2:
        serve(Path(args[0]), database=Path(args[1]) if len(args) == 2 else None)
    else:
        sys.exit("usage: python -m mailstead.services.message_files [--shared FD] BLOB_DIR "
                 "[SQLITE_DB] (the server starts this itself)")


if __name__ == "__main__":
    _main(sys.argv[1:])
