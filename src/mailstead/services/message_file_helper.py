"""The message-file helper process: writes the files of the messages its workers send, flushes
them with one syncfs per batch and, with SQLite, commits their rows (services/message_files.py
says why a process, and what the frames carry).

    python -m mailstead.services.message_file_helper [--shared FD] BLOB_DIR [DATABASE]
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import queue
import selectors
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mailstead.core.models import SPAM_LOG_KEEP
from mailstead.proto.mime import parse_envelope_fields
from mailstead.services import message_file_wire as wire
from mailstead.store.blob_fs import FsBlobStore
from mailstead.store.interfaces import (
    Delivery,
    MessageMeta,
    QueueEntry,
    SpamVerdictRow,
)
from mailstead.store.sql_base import Db
from mailstead.store.sql_messages import store_message
from mailstead.store.sql_spam_log import record_spam_verdicts
from mailstead.store.sqlite import CHECKPOINT_EVERY, commit_batch, connect, take_batches

READ_SIZE = 1 << 20


_Item = tuple[list[Delivery], QueueEntry | None, list[SpamVerdictRow]]


class _Rows:
    """The helper's writing connection to the SQLite store, opened at the first delivery."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.conn: sqlite3.Connection | None = None
        self.commits = 0  # since the last checkpoint

    def checkpoint(self) -> None:
        """Every CHECKPOINT_EVERY commits, a PASSIVE checkpoint on this connection, between
        two of its transactions (called once a batch is answered). During ingest this is the
        only writer, so this checkpoint can copy the whole log, and the next commit then
        writes the log from its start again, over blocks the file already has. The store's
        checkpointer (another process's thread, once a second) never caught up with a writer
        that commits every millisecond or two: the log grew without end (9 KiB a 4 KiB
        message), and each commit's fdatasync, extending the file, waited for a journal
        commit of the file system, in turn with the syncfs of the next batch's files. Measured
        (5 messages a commit, syncfs in a thread alongside): commit 0.51 -> 0.30 ms median,
        0.57 -> 0.33 ms mean with the checkpoints; the log stays ~3 MiB instead of growing."""
        self.commits += 1
        if self.conn is None or self.commits < CHECKPOINT_EVERY:
            return
        self.commits = 0
        # Busy (another connection checkpointing, a reader on an old snapshot): this one
        # copies what it can; the next one goes on.
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

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
            answers.append(wire.frame(b"+", payload))
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
                envelope = wire.envelope_to_bytes(parse_envelope_fields(payload))
                answers.append(wire.frame(b"+", blob_id.encode() + envelope))
                continue
        except Exception as exc:  # this message failed; the others of the batch go on
            answers.append(wire.failure(f"writing the message file: {exc}"))
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
        part_rows, _ = wire.with_blob(deliveries, None, blob_ids[-1], parse_envelope_fields(data))
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
        _fail(batches, f"flushing message files: {exc}")


def _fail(batches: list[_Written], reason: str) -> None:
    """Every answer of ``batches`` says ``reason``; none of their rows is committed."""
    for written in batches:
        written.answers[:] = [wire.failure(reason)] * len(written.answers)
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
            written.answers[index] = wire.frame(b"*", pickle.dumps((blob_ids, stored, touched),
                                                               pickle.HIGHEST_PROTOCOL))
        else:
            written.answers[index] = wire.frame(b"!", _pickled_error(value))


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
                    _fail(batches, f"flushing: {exc}")
                self.flushed.put(batches)
        finally:
            self.flushed.put(None)  # the committing thread ends after what came before

    def _commit(self) -> None:
        for groups in take_batches(self.flushed):
            batches = [written for group in groups for written in group]
            try:
                commit_rows(batches, self.rows)
            except Exception as exc:  # e.g. the database unreachable: every answer says so
                _fail(batches, f"committing: {exc}")
            for written in batches:
                # A reader gone (our parent died): its answers are lost, but the batches
                # still queued are settled all the same, as the helper always did.
                with contextlib.suppress(OSError):
                    self.answer(written)
            if self.rows is not None:
                self.rows.checkpoint()  # after the answers: they do not wait for it


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
        batch = wire.take_frames(buffer)
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
                batch += [(client, tag, payload)
                          for tag, payload in wire.take_frames(client.unread)]
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
            client.sock.settimeout(wire.STOP_TIMEOUT)
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
                self.process.wait(wire.STOP_TIMEOUT)
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
        sys.exit("usage: python -m mailstead.services.message_file_helper [--shared FD] BLOB_DIR "
                 "[SQLITE_DB] (the server starts this itself)")


if __name__ == "__main__":
    _main(sys.argv[1:])
