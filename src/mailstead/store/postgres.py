"""PostgreSQL metadata store: several mailstead nodes sharing one database.

The operations of ``sql.py`` run unchanged in threads over a psycopg 3 connection pool, one
transaction per call (PostgreSQL's synchronous_commit makes COMMIT durable before it returns).
Tables live in the configured schema (created if missing). Concurrent writers to one mailbox queue
on its row lock; the outbound queue is claimed with ``FOR UPDATE SKIP LOCKED``.

Change feed across nodes: a commit that touched mailboxes also NOTIFYs ``mailstead_changes`` with
the mailbox ids (delivered by PostgreSQL only if the transaction commits), and a listener task
relays other nodes' notifications into the local ChangeBus, so IDLE on one node hears a delivery
made on another.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, Literal, TypeVar

import psycopg
from psycopg import IsolationLevel, errors, sql
from psycopg_pool import ConnectionPool

from mailstead.core.errors import Conflict, NotFound
from mailstead.obs import log_event
from mailstead.store.changes import ChangeBus
from mailstead.store.sql import SqlStore
from mailstead.store.sql_base import Db, Row, apply_migrations

REPEATABLE_READ = IsolationLevel.REPEATABLE_READ
T = TypeVar("T")

POOL_SIZE = 8
CHANNEL = "mailstead_changes"
IDS_PER_NOTIFY = 500  # keeps each payload far below PostgreSQL's 8000-byte limit
RETRIES = 3  # a deadlock or serialization failure rolls back whole: safe to run again
Conn = psycopg.Connection[tuple[Any, ...]]


@lru_cache(maxsize=1024)
def _placeholders(query: str) -> str:
    """``?`` placeholders -> psycopg's ``%s`` (and literal ``%`` escaped)."""
    return query.replace("%", "%%").replace("?", "%s")


class PgDb(Db):
    dialect = "postgresql"
    for_update = " FOR UPDATE"

    def __init__(self, cur: psycopg.Cursor[Row]) -> None:
        super().__init__()
        self.cur = cur

    def rows(self, query: str, params: Sequence[Any] = ()) -> list[Row]:
        self.run(query, params)
        return self.cur.fetchall() if self.cur.description else []

    def run(self, query: str, params: Sequence[Any] = ()) -> int:
        try:
            self.cur.execute(_placeholders(query), params)
        except errors.UniqueViolation as exc:
            raise Conflict(str(exc)) from exc
        except errors.ForeignKeyViolation as exc:
            raise NotFound(str(exc)) from exc
        return self.cur.rowcount

    def run_many(self, query: str, params: Iterable[Sequence[Any]]) -> None:
        batch = list(params)
        if not batch:
            return
        try:
            self.cur.executemany(_placeholders(query), batch)
        except errors.UniqueViolation as exc:
            raise Conflict(str(exc)) from exc
        except errors.ForeignKeyViolation as exc:
            raise NotFound(str(exc)) from exc


class PostgresStore(SqlStore):
    backend = "postgresql"

    def __init__(self, url: str, changes: ChangeBus, schema: str = "public") -> None:
        super().__init__(changes)
        self.url = url
        self.schema = schema
        self.node = secrets.token_hex(8)  # tells our own notifications from other nodes'
        self._pool: ConnectionPool[Conn] | None = None
        self._threads: ThreadPoolExecutor | None = None
        self._listener: asyncio.Task[None] | None = None

    # -- lifecycle --

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool: ConnectionPool[Conn] = ConnectionPool(
            self.url,
            min_size=1,
            max_size=POOL_SIZE,
            open=False,
            configure=self._configure,
            name=f"mailstead-{self.schema}",
        )
        await asyncio.to_thread(pool.open, wait=True, timeout=15)
        try:
            await asyncio.to_thread(self._migrate, pool)
        except BaseException:
            await asyncio.to_thread(pool.close)
            raise
        self._pool = pool
        self._threads = ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="pg")
        listening = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(listening))
        # Wait until LISTEN is in place: a change made elsewhere after open() returns is heard.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(listening.wait(), 10)

    def _configure(self, conn: Conn) -> None:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        conn.commit()

    def _migrate(self, pool: ConnectionPool[Conn]) -> None:
        with pool.connection() as conn, conn.transaction():
            # One node migrates at a time; the others wait here, then find nothing to do.
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"mailstead:{self.schema}",)
            )
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
            )
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(self.schema)))
            apply_migrations(PgDb(conn.cursor()))

    async def close(self) -> None:
        pool, threads, listener = self._pool, self._threads, self._listener
        self._pool = self._threads = self._listener = None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(BaseException):
                await listener
        if threads is not None:
            threads.shutdown(wait=True)
        if pool is not None:
            await asyncio.to_thread(pool.close)

    # -- runners --

    async def _run_read(self, op: Callable[[Db], T]) -> T:
        value, _touched = await self._in_thread(op, True)
        return value

    async def _run_write(
        self, op: Callable[[Db], T], before: Callable[[], None] | None = None,
        durable: bool = True, small: bool = False,
    ) -> tuple[T, set[int]]:
        return await self._in_thread(op, False, before, durable)

    async def _in_thread(
        self, op: Callable[[Db], T], read: bool, before: Callable[[], None] | None = None,
        durable: bool = True,
    ) -> tuple[T, set[int]]:
        if self._threads is None:
            raise RuntimeError("store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._threads, self._transaction, op, read, before, durable)

    def _transaction(
        self, op: Callable[[Db], T], read: bool, before: Callable[[], None] | None = None,
        durable: bool = True,
    ) -> tuple[T, set[int]]:
        """``op`` in one transaction (after ``before``, in this thread: one hand-over for
        both steps). A read runs REPEATABLE READ, READ ONLY: all its statements see one
        snapshot, as a SQLite read transaction does (under READ COMMITTED each statement
        takes its own, so a STATUS could count a message that arrived after it read
        UIDNEXT). A read-only transaction never fails to serialize; the BEGIN says the
        level, no extra round trip."""
        if before is not None:
            before()
        pool = self._pool
        if pool is None:
            raise RuntimeError("store is not open")
        conflicts = reconnects = 0
        while True:
            committing = False
            conn: Conn | None = None
            try:
                with pool.connection() as conn:
                    if conn.read_only is not read:  # set only on a change: no lock taken
                        conn.isolation_level = REPEATABLE_READ if read else None
                        conn.read_only = read
                    with conn.transaction():
                        # Binary results: ints and booleans arrive without text parsing.
                        db = PgDb(conn.cursor(binary=True))
                        value = op(db)
                        self._notify(db, durable)
                        committing = True  # leaving the block sends COMMIT
                return value, db.touched
            except (errors.DeadlockDetected, errors.SerializationFailure):
                # Rolled back whole: safe to run again.
                conflicts += 1
                if conflicts == RETRIES:
                    raise
            except psycopg.OperationalError:
                # A connection the pool kept may have died with the server (a PostgreSQL
                # restart). Broken before COMMIT was sent, the transaction stored nothing, so
                # it runs again on another connection, once the pool has dropped its other
                # dead ones. Broken during COMMIT, the outcome is unknown: the error goes up
                # and nothing is acknowledged (SMTP answers 451, the client retries).
                if committing or conn is None or not conn.broken or reconnects == RETRIES:
                    raise
                reconnects += 1
                log_event("store.connection_lost", retry=reconnects)
                pool.check()

    def _notify(self, db: PgDb, durable: bool = True) -> None:
        """Queues the change notification in the transaction: sent only if it commits. A
        write that need not wait for the disk (``SqlStore._write_flags``) turns
        synchronous_commit off for its own transaction (set_config's ``true``: SET LOCAL)
        in the same statement, no round trip of its own (one of its own when no mailbox
        was touched: a \\Recent claim)."""
        ids = sorted(db.touched)
        relax = "" if durable else ", set_config('synchronous_commit', 'off', true)"
        if relax and not ids:
            db.cur.execute("SELECT set_config('synchronous_commit', 'off', true)")
        for start in range(0, len(ids), IDS_PER_NOTIFY):
            chunk = " ".join(str(i) for i in ids[start : start + IDS_PER_NOTIFY])
            db.cur.execute(
                f"SELECT pg_notify(%s, %s){relax}",
                (CHANNEL, f"{self.schema} {self.node} {chunk}"),
            )
            relax = ""

    # -- change feed from other nodes --

    async def _listen(self, listening: asyncio.Event) -> None:
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                    listening.set()
                    async for note in conn.notifies():
                        self._relay(note.payload)
            except psycopg.Error as exc:
                log_event("store.listen_failed", error=str(exc))
                await asyncio.sleep(1)

    def _relay(self, payload: str) -> None:
        schema, _, rest = payload.partition(" ")
        node, _, ids = rest.partition(" ")
        if schema != self.schema or node == self.node:
            return  # another site, or our own change (published locally already)
        self.changes.publish_here(int(i) for i in ids.split())


def schema_state(url: str, schema: str) -> Literal["absent", "empty", "mailstead", "foreign"]:
    """What ``schema`` of the database at ``url`` holds: nothing ("absent" or "empty"), a
    mailstead store ("mailstead": it has our schema_version table), or tables of something
    else ("foreign"), which ``init`` must not write into unless told to."""
    with psycopg.connect(url, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                              (schema,)).fetchone()
        if exists is None:
            return "absent"
        tables = {row[0] for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,)).fetchall()}
    if not tables:
        return "empty"
    return "mailstead" if "schema_version" in tables else "foreign"
