"""SQLite metadata store: the embedded default.

Durability with speed: one writer thread owns the only writing connection and GROUP-COMMITS.
Write calls queue (operation, future); the writer takes every pending operation (up to
``MAX_BATCH``), runs them in one ``BEGIN IMMEDIATE`` transaction and COMMITs once. When one of
them fails (Conflict, QuotaExceeded...), the batch is rolled back and run again with each
operation inside its own SAVEPOINT, so the failing one rolls back alone. With WAL and
``synchronous=FULL`` that COMMIT fsyncs the log, so one fsync covers the whole batch. Futures
resolve only after COMMIT returned: that is where the durability contract of interfaces.py is kept.

Small writes (a STORE, an APPEND's row, a UID EXPUNGE of a few UIDs) skip the writer thread:
they commit on the event loop's own connection without waiting for the disk, and a durable one
is answered after the syncer thread's fdatasync of the log (SqliteStore._sync_log says why
that is as durable as FULL).

The rows of delivered mail have a second writer: the message file helper process commits them
on its own connection right after flushing their files (services/message_files.py says why).
SQLite's write lock takes the two in turn (BEGIN IMMEDIATE waits up to the busy timeout).

Reads run on a few reader connections in threads; WAL lets them proceed while the writer writes,
and each read is one transaction, so it sees a consistent snapshot. WAL checkpoints (copying the
log into the database file, with its own fsyncs) run in a separate thread, so they never hold up
a commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from mailstead.core.errors import Conflict, NotFound
from mailstead.store.changes import ChangeBus
from mailstead.store.sql import P, SqlStore
from mailstead.store.sql_accounts import get_account, get_account_by_id
from mailstead.store.sql_base import Db, Op, Row, apply_migrations
from mailstead.store.sql_mailboxes import first_recent_uid, get_mailbox, get_mailbox_by_id
from mailstead.store.sql_messages import (
    changes_since,
    flags_of,
    get_messages,
    list_flags,
    sort_columns,
    sort_fields,
)

T = TypeVar("T")
J = TypeVar("J")

MAX_BATCH = 256  # operations per group commit
READERS = 3  # reader connections (threads)
CHECKPOINT_EVERY = 64  # commits between two nudges of the checkpointer
CHECKPOINT_INTERVAL = 1.0  # seconds: the checkpointer also runs this often when idle
BUSY_TIMEOUT_MS = 30_000  # another process holding the write lock (e.g. the CLI while serving)
# A small write that finds the write lock taken tries again on the event loop after each of
# these pauses (seconds; 0: the loop's next turn) before it queues for the writer thread: the
# lock is mostly held for the few hundred microseconds of another small write's statements.
INLINE_RETRIES = (0.0, 0.0005, 0.002)


class SqliteDb(Db):
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__()
        self.conn = conn

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.IntegrityError as exc:
            raise _translate(exc) from exc

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            return self.conn.execute(sql, params).rowcount
        except sqlite3.IntegrityError as exc:
            raise _translate(exc) from exc

    def run_many(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        try:
            self.conn.executemany(sql, params)
        except sqlite3.IntegrityError as exc:
            raise _translate(exc) from exc


def _translate(exc: sqlite3.IntegrityError) -> Exception:
    text = str(exc)
    if "UNIQUE" in text or "PRIMARY KEY" in text:
        return Conflict(text)
    if "FOREIGN KEY" in text:
        return NotFound(text)
    return exc


def connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    _use_wal(conn)
    # FULL: the WAL is fsync'd at every COMMIT, so a committed batch survives a power cut.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer thread does it
    return conn


def _use_wal(conn: sqlite3.Connection) -> None:
    """``PRAGMA journal_mode = WAL``. Switching a new database to WAL needs a lock for which
    SQLite does not call its busy handler, so when several connections (or processes) open a
    new store at once, all but one get "database is locked" at once: they try again here,
    within the same time the busy timeout allows."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


# Reads cheap enough to run on the event loop (SqliteStore._read): one or a few rows each.
_INLINE_READS: frozenset[Callable[..., Any]] = frozenset({
    changes_since, get_mailbox, get_mailbox_by_id, get_account, get_account_by_id,
    first_recent_uid,
})
INLINE_ROWS = 50  # get_messages and flags_of of at most this many UIDs run inline too
# Reads of one SELECT statement: SQLite gives a statement a consistent snapshot of its own,
# so they run without BEGIN ... ROLLBACK around them (two statements fewer per read).
_ONE_STATEMENT: frozenset[Callable[..., Any]] = _INLINE_READS | {
    flags_of, get_messages, list_flags, sort_columns, sort_fields,
}


def _few(args: tuple[Any, ...]) -> bool:
    """get_messages/flags_of(mailbox_id, uids): a short list of UIDs (not None: all)."""
    return len(args) == 2 and isinstance(args[1], list) and len(args[1]) <= INLINE_ROWS


# A pending write: the operation, where to report its outcome, a blocking step to run
# before its transaction (a message file's flush: one thread hand-over for both), and
# whether its commit must reach the disk before it is acknowledged (False: flags only).
_Job = tuple[Callable[[Db], Any], asyncio.Future[tuple[Any, set[int]]],
             Callable[[], None] | None, bool]
_STOP = None
# A flush for the syncer thread, and whom to tell when it is done.
_Sync = tuple[Callable[[], None], asyncio.Future[None]]
_Resolution = tuple[asyncio.Future[Any], bool, Any]


class SqliteStore(SqlStore):
    backend = "sqlite"
    changes_inline = True  # changes_since is in _INLINE_READS

    def __init__(self, path: Path, changes: ChangeBus) -> None:
        super().__init__(changes)
        self.path = Path(path)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        # The event loop's own writing connection, for writes that need no fsync (_run_write).
        self._inline: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_now = threading.Event()
        self._closing = threading.Event()
        # Makes the log (the -wal file) durable after a commit on the loop's own connection:
        # one fdatasync for every commit made before it began (_sync_log).
        self._log_fd: int | None = None
        self._syncs: queue.SimpleQueue[_Sync | None] = queue.SimpleQueue()
        self._syncer: threading.Thread | None = None

    async def open(self) -> None:
        if self._writer is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = await asyncio.to_thread(self._open_writer)
        self._readers = ThreadPoolExecutor(READERS, thread_name_prefix="sqlite-read")
        self._writer = threading.Thread(
            target=self._write_loop, args=(conn,), name="sqlite-writer", daemon=True
        )
        self._writer.start()
        self._closing.clear()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="sqlite-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _open_writer(self) -> sqlite3.Connection:
        conn = connect(self.path)
        try:
            # BEGIN IMMEDIATE takes the write lock: two processes opening at once migrate in turn.
            conn.execute("BEGIN IMMEDIATE")
            try:
                apply_migrations(SqliteDb(conn))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        writer, readers = self._writer, self._readers
        if writer is None or readers is None:
            return
        self._writer = self._readers = None
        self._jobs.put(_STOP)
        await asyncio.to_thread(writer.join)
        if self._checkpointer is not None:
            self._closing.set()
            self._checkpoint_now.set()
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        readers.shutdown(wait=True)
        with self._lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        if self._syncer is not None:
            self._syncs.put(None)
            await asyncio.to_thread(self._syncer.join)
            self._syncer = None
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None
        self._local = threading.local()

    def commit_marker(self) -> int | None:
        """PRAGMA data_version of this thread's reading connection (the event loop's): it
        changes whenever another connection, of this process or another, commits."""
        if self._readers is None:
            raise RuntimeError("store is not open")
        return int(self._db().conn.execute("PRAGMA data_version").fetchone()[0])

    # -- reads --

    async def _read(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        # A read of a few rows through an index runs right here on the event loop's thread
        # (on a connection of its own): handing it to a reader thread and back costs more
        # CPU than the query (a queue, two thread wake-ups, the interpreter lock changing
        # hands twice: ~50 us, more than a NOOP's own work). WAL readers never wait for the
        # writer, so this does not stall the loop.
        one = op in _ONE_STATEMENT
        if op in _INLINE_READS or ((op is get_messages or op is flags_of) and _few(args)):
            if self._readers is None:
                raise RuntimeError("store is not open")
            return op(self._db(), *args, **kwargs)
        if self._readers is None:
            raise RuntimeError("store is not open")
        loop = asyncio.get_running_loop()
        if one:
            return await loop.run_in_executor(
                self._readers, lambda: op(self._db(), *args, **kwargs))
        return await loop.run_in_executor(
            self._readers, self._read_in_thread, lambda db: op(db, *args, **kwargs))

    async def _run_read(self, op: Callable[[Db], T]) -> T:
        if self._readers is None:
            raise RuntimeError("store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_in_thread, op)

    def _db(self) -> SqliteDb:
        """This thread's reading connection (opened on first use), autocommitting: each
        statement reads a snapshot of its own."""
        db: SqliteDb | None = getattr(self._local, "db", None)
        if db is None:
            conn = connect(self.path)
            db = self._local.db = SqliteDb(conn)
            with self._lock:
                self._reader_conns.append(conn)
        return db

    def _read_in_thread(self, op: Callable[[Db], T]) -> T:
        """``op`` in one read transaction: one snapshot for all its statements."""
        db = self._db()
        db.conn.execute("BEGIN")
        try:
            return op(db)
        finally:
            db.conn.execute("ROLLBACK")  # nothing to keep: ends the read snapshot

    # -- writes: group commit --

    async def _run_write(
        self, op: Callable[[Db], T], before: Callable[[], None] | None = None,
        durable: bool = True, small: bool = False,
    ) -> tuple[T, set[int]]:
        if self._writer is None:
            raise RuntimeError("store is not open")
        if small:
            # A small write (a STORE, an APPEND's row, a UID EXPUNGE of a few UIDs) runs its
            # statements right here on the event loop's own connection: handing it to the
            # writer thread costs more CPU than the statements (a queue, two thread wake-ups,
            # and under load the interpreter lock changing hands at every statement, each a
            # forced switch between the busy loop and the writer). Its commit writes the log
            # without waiting for the disk; a durable one then waits, in a thread, for an
            # fdatasync of the log (shared with every commit made before it began) before it
            # returns: acknowledged only once on disk, as with synchronous=FULL.
            if before is not None:  # the message file made durable before its row commits
                await self._in_syncer(before)
                before = None
            done = self._write_inline(op)
            for pause in INLINE_RETRIES:
                if done is not None:
                    break
                # The write lock is taken (the writer thread, another process): wait for
                # the holder here, without a thread, and try again.
                await asyncio.sleep(pause)
                if self._writer is None:
                    raise RuntimeError("store is not open")
                done = self._write_inline(op)
            if done is not None:
                if durable:
                    await self._sync_log()
                return done
        future: asyncio.Future[tuple[Any, set[int]]] = asyncio.get_running_loop().create_future()
        self._jobs.put((op, future, before, durable))
        value, touched = await future
        return value, touched

    async def _sync_log(self) -> None:
        """Returns once every commit made so far on the loop's connection is on disk.

        Why this equals synchronous=FULL: with NORMAL, a COMMIT writes its frames to the log
        (WAL) and publishes them, without the fdatasync FULL makes before publishing; the
        fdatasync here then makes them durable before the caller is answered. A crash
        before it loses nothing acknowledged (a power cut may drop this commit, which no one
        was told of, and the log's checksums end it at the last whole commit). Frames the
        checkpointer copies into the database file meanwhile are synced there by it (its
        connection is FULL) before the log may restart. The one difference: other readers
        may see the row a moment before it is durable (as they see a flag change)."""
        await self._in_syncer(self._fsync_log)

    async def _in_syncer(self, step: Callable[[], None]) -> None:
        """``step`` (a flush to disk) run in the syncer thread: cheaper than a thread pool's
        hand-over, and the steps queued together run once each for all their callers (one
        fdatasync of the log, one flush of the message files, for every write waiting)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._syncer is None:
            self._syncer = threading.Thread(target=self._sync_loop, name="sqlite-sync",
                                            daemon=True)
            self._syncer.start()
        self._syncs.put((step, future))
        await future

    def _sync_loop(self) -> None:
        for batch in take_batches(self._syncs):
            done: dict[Callable[[], None], Outcome] = {}
            by_loop: dict[asyncio.AbstractEventLoop, list[_Resolution]] = {}
            for step, future in batch:
                if step not in done:
                    try:
                        step()
                        done[step] = (True, None)
                    except OSError as exc:
                        done[step] = (False, exc)
                by_loop.setdefault(future.get_loop(), []).append((future, *done[step]))
            for loop, items in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_resolve, items)
                except RuntimeError:
                    pass  # that loop is closed: nobody is waiting any more

    def _fsync_log(self) -> None:
        """fdatasync of the -wal file (Linux syncs the file, whichever descriptor): opened
        once, and again should the file ever be a new one (it is deleted only when the last
        connection closes, after a full checkpoint)."""
        path = f"{self.path}-wal"
        fd = self._log_fd
        if fd is None or os.fstat(fd).st_ino != os.stat(path).st_ino:
            if fd is not None:
                os.close(fd)
                self._log_fd = None
            fd = self._log_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        os.fdatasync(fd)

    def _write_inline(self, op: Callable[[Db], T]) -> tuple[T, set[int]] | None:
        """A small write (``small``: a few rows, never work that grows with the mailbox)
        run and committed right here on the event loop when the write lock is free at once;
        the commit does not wait for the disk (synchronous=NORMAL: _run_write syncs the log
        after it when the write is durable). None when the lock is taken (the writer thread,
        another process): nothing was written. The connection never waits for a lock
        (busy_timeout 0), so the loop never stalls."""
        conn = self._inline
        if conn is None:
            conn = self._inline = connect(self.path)
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA synchronous = NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return None  # locked (SQLITE_BUSY): the writer thread will wait for it
        db = SqliteDb(conn)
        try:
            value = op(db)
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            _roll_back(conn)
            if "locked" in str(exc) or "busy" in str(exc):
                return None  # nothing kept: the writer thread runs it again, waiting its turn
            raise
        except BaseException:
            _roll_back(conn)
            raise
        return value, db.touched

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        commits = 0
        synced = True  # the connection's synchronous level: FULL (True) or NORMAL
        try:
            for batch in take_batches(self._jobs, MAX_BATCH):
                # A batch of flag changes alone commits without fsync (SqlStore._write_flags
                # says why that is safe enough); one durable job makes the whole batch, and
                # the WAL frames of earlier batches, durable. PRAGMA synchronous cannot change
                # inside a transaction, so it is switched here, between two, when it differs.
                durable = any(job[3] for job in batch)
                if durable is not synced:
                    conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                    synced = durable
                self._commit_batch(conn, batch)
                commits += 1
                if commits % CHECKPOINT_EVERY == 0:
                    self._checkpoint_now.set()
        finally:
            conn.close()

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        if any(job[2] is not None for job in batch):
            batch = _run_befores(batch)
            if not batch:
                return
        _settle(batch, commit_batch(conn, [job[0] for job in batch]))

    def _checkpoint_loop(self) -> None:
        """PASSIVE checkpoints: copy what readers no longer need, never blocking the writer."""
        conn = connect(self.path)
        try:
            while not self._closing.is_set():
                self._checkpoint_now.wait(CHECKPOINT_INTERVAL)
                self._checkpoint_now.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.OperationalError:
                    continue  # busy: try again at the next turn
            with contextlib.suppress(sqlite3.OperationalError):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # leave a short log behind
        finally:
            conn.close()


Outcome = tuple[bool, Any]  # (True, (value, touched mailbox ids)) or (False, the exception)


def commit_batch(conn: sqlite3.Connection, ops: Sequence[Callable[[Db], Any]]) -> list[Outcome]:
    """Runs ``ops`` in one transaction with one COMMIT (the group commit); when one of them
    fails, runs them again each in its SAVEPOINT, so the failing one rolls back alone. Also
    used by the message file helper for the rows of the deliveries it writes."""
    outcomes = _commit_all_or_none(conn, ops)
    if outcomes is None:
        outcomes = _commit_each_alone(conn, ops)
    return outcomes


def _commit_all_or_none(conn: sqlite3.Connection, ops: Sequence[Callable[[Db], Any]]
                        ) -> list[Outcome] | None:
    """The usual case, every operation succeeding, without a SAVEPOINT each: two statements
    less per operation, and each statement is a hand-over of the interpreter lock between
    this thread and the event loop. None (all rolled back) when one of them raised."""
    dbs = [SqliteDb(conn) for _ in ops]
    values = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        for op, db in zip(ops, dbs, strict=True):
            values.append(op(db))
        conn.execute("COMMIT")  # the one fsync for the whole batch
    except Exception:
        _roll_back(conn)
        return None
    return [(True, (value, db.touched)) for value, db in zip(values, dbs, strict=True)]


def _commit_each_alone(conn: sqlite3.Connection, ops: Sequence[Callable[[Db], Any]]
                       ) -> list[Outcome]:
    outcomes: list[Outcome] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        for op in ops:
            outcomes.append(_run_one(conn, op))
            if not conn.in_transaction:
                # SQLite rolled the whole transaction back (disk full, I/O error): the
                # operations that "succeeded" before this one are gone too.
                raise sqlite3.OperationalError("transaction rolled back by SQLite")
        conn.execute("COMMIT")
    except Exception as exc:  # nothing of this batch was committed: every caller hears so
        _roll_back(conn)
        outcomes = [(False, exc)] * len(ops)
    return outcomes


def _run_one(conn: sqlite3.Connection, op: Callable[[Db], Any]) -> Outcome:
    db = SqliteDb(conn)
    conn.execute("SAVEPOINT op")
    try:
        value = op(db)
    except Exception as exc:
        if conn.in_transaction:  # else the batch is lost; _commit_each_alone sees to it
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
        return False, exc
    conn.execute("RELEASE op")
    return True, (value, db.touched)


def _roll_back(conn: sqlite3.Connection) -> None:
    """Ends a failed batch's transaction, if SQLite has not already ended it."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def take_batches(jobs: queue.SimpleQueue[J | None], limit: int | None = None
                 ) -> Iterator[list[J]]:
    """What is put on ``jobs``, in order, in batches: each batch waits for its first job, then
    takes what is queued already (at most ``limit`` in all). Ends at the stop marker (None),
    once the jobs put before it are yielded: a group commit's loop (the store's writer, the
    message-file helper's settling thread)."""
    while True:
        first = jobs.get()
        if first is None:
            return
        batch = [first]
        while limit is None or len(batch) < limit:
            try:
                job = jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                yield batch
                return
            batch.append(job)
        yield batch


def _run_befores(batch: list[_Job]) -> list[_Job]:
    """Runs the steps that must precede the batch's transaction, each distinct one once (a
    file flush covers every file written before it began: one serves the whole batch);
    returns the jobs that go on, after telling those whose step failed."""
    results: dict[Callable[[], None], Exception | None] = {}
    kept: list[_Job] = []
    failed: list[_Job] = []
    errors: list[Outcome] = []
    for job in batch:
        before = job[2]
        if before is not None:
            if before not in results:
                try:
                    before()
                    results[before] = None
                except Exception as exc:  # e.g. OSError from the disk: these jobs fail alone
                    results[before] = exc
            error = results[before]
            if error is not None:
                failed.append(job)
                errors.append((False, error))
                continue
        kept.append(job)
    if failed:
        _settle(failed, errors)
    return kept


def _settle(batch: list[_Job], outcomes: list[Outcome]) -> None:
    """Hands the outcomes to the waiting coroutines, one wake-up per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for (_op, future, _before, _durable), (ok, value) in zip(batch, outcomes, strict=True):
        by_loop.setdefault(future.get_loop(), []).append((future, ok, value))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, items)
        except RuntimeError:
            pass  # that loop is closed: nobody is waiting any more


def _resolve(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in items:
        if future.cancelled():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
