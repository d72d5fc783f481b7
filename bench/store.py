"""Store benchmark: durable deliveries per second under concurrent writers, and the time to list
the flags of a 100,000-message mailbox, on SQLite and/or PostgreSQL.

    .venv/bin/python bench/store.py [--backend sqlite|postgresql|both] [--messages N]

Deliveries are what SMTP does before its 250: write the blob (fsync'd) and commit the rows
(fsync'd; with SQLite both in the message file helper, as the delivery service does), here
from ``--writers`` concurrent tasks, twice: into a new store, then again into the same store.
The big mailbox is filled through the public API (store_message calls of
many deliveries each), then ``list_flags`` is timed several times.
Targets on a 2-core machine: >= 2,000 deliveries/s on SQLite, list_flags(100,000) < 0.2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from mailstead.services.message_files import MessageFileWriter
from mailstead.store.blob_fs import FsBlobStore
from mailstead.store.changes import ChangeBus
from mailstead.store.interfaces import Delivery, MetadataStore, NewMessage, SystemFlag
from mailstead.store.postgres import PostgresStore
from mailstead.store.sql import SqlStore
from mailstead.store.sqlite import SqliteStore

PG_DSN = os.environ.get("MAILSTEAD_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


async def deliveries_per_second(
    store: MetadataStore, blobs: FsBlobStore, mailbox_ids: list[int], messages: int, writers: int
) -> tuple[float, float]:
    """(deliveries per second of wall time, per second of CPU time: this process's and that of
    the message file helper, counted once close() has waited for it to exit)."""
    body = b"X" * 4000 + b"\r\n"
    counter = iter(range(messages))
    # As the delivery service stores a message: with SQLite the helper writes the file and
    # commits the rows; with PostgreSQL it writes the file and this process commits the rows.
    database = store.path if isinstance(store, SqliteStore) else None
    files = MessageFileWriter(blobs.root, database)

    async def writer() -> None:
        for n in counter:
            mailbox_id = mailbox_ids[n % len(mailbox_ids)]
            data = f"Message-Id: <{n}.{secrets.token_hex(4)}@bench>\r\n".encode() + body
            now = datetime.now(UTC)
            if database is not None:
                await files.deliver(data, [Delivery(mailbox_id, NewMessage(
                    blob_id="", size=len(data), internal_date=now))], None)
                continue
            blob_id, _fields = await files.submit(data)
            await store.store_message([Delivery(mailbox_id, NewMessage(
                blob_id=blob_id, size=len(data), internal_date=now))])

    def cpu_seconds() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    start, cpu = time.perf_counter(), cpu_seconds()
    await asyncio.gather(*(writer() for _ in range(writers)))
    elapsed = time.perf_counter() - start
    await files.close()
    return messages / elapsed, messages / (cpu_seconds() - cpu)


async def fill(store: MetadataStore, mailbox_id: int, count: int) -> float:
    """Adds ``count`` messages in store_message calls of 1,000 deliveries, 4 at a time."""
    now = datetime.now(UTC)
    flag_cycle = [0, SystemFlag.SEEN, SystemFlag.SEEN | SystemFlag.FLAGGED, 0, SystemFlag.SEEN]
    keyword_cycle = [frozenset(), frozenset(), frozenset({"$Label1"}), frozenset(), frozenset()]

    def batch(start: int, size: int) -> list[Delivery]:
        return [
            Delivery(
                mailbox_id,
                NewMessage(
                    blob_id=f"{n:064x}",
                    size=4096,
                    internal_date=now,
                    flags=flag_cycle[n % 5],
                    keywords=keyword_cycle[n % 5],
                ),
            )
            for n in range(start, start + size)
        ]

    starts = list(range(0, count, 1000))
    began = time.perf_counter()
    for i in range(0, len(starts), 4):
        await asyncio.gather(
            *(store.store_message(batch(s, min(1000, count - s))) for s in starts[i : i + 4])
        )
    return count / (time.perf_counter() - began)


async def list_time(store: MetadataStore, mailbox_id: int, runs: int) -> tuple[float, float, int]:
    """Median wall time and median CPU time of list_flags, and the count listed."""
    times, cpu_times, count = [], [], 0
    for _ in range(runs):
        start, cpu = time.perf_counter(), time.process_time()
        count = len(await store.list_flags(mailbox_id))
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu)
    return statistics.median(times), statistics.median(cpu_times), count


async def bench(backend: str, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="mailstead-bench-", dir=args.dir) as tmp:
        schema = f"bench_{secrets.token_hex(4)}"
        store: SqlStore
        if backend == "sqlite":
            store = SqliteStore(Path(tmp) / "meta.db", ChangeBus())
        else:
            store = PostgresStore(PG_DSN, ChangeBus(), schema=schema)
        await store.open()
        try:
            await store.add_domain("bench.example")
            inboxes = []
            for n in range(args.mailboxes):
                account = await store.add_account(f"user{n}@bench.example", "x")
                inbox = await store.get_mailbox(account.id, "INBOX")
                assert inbox is not None
                inboxes.append(inbox.id)
            big = await store.create_mailbox(account.id, "Big")
            blobs = FsBlobStore(Path(tmp) / "blobs")
            for phase in ("new store", "second round"):
                rate, cpu_rate = await deliveries_per_second(
                    store, blobs, inboxes, args.messages, args.writers
                )
                print(
                    f"{backend:10} deliveries: {rate:8.0f} messages/s durable, blob + rows, "
                    f"{phase} ({args.messages} x 4 KiB, {args.writers} concurrent "
                    f"writers, {args.mailboxes} mailboxes; {cpu_rate:.0f}/s of CPU time)"
                )
            fill_rate = await fill(store, big.id, args.list_size)
            print(f"{backend:10} bulk fill:  {fill_rate:8.0f} messages/s (1,000 per call)")
            median, cpu_median, count = await list_time(store, big.id, args.runs)
            print(
                f"{backend:10} list_flags: {median * 1000:8.1f} ms for {count} messages "
                f"(median of {args.runs}; {cpu_median * 1000:.1f} ms CPU)"
            )
        finally:
            await store.close()
            if backend == "postgresql":
                with psycopg.connect(PG_DSN, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--messages", type=int, default=10_000, help="deliveries to time")
    parser.add_argument("--writers", type=int, default=20, help="concurrent delivering tasks")
    parser.add_argument(
        "--mailboxes",
        type=int,
        default=20,
        help="recipients' INBOXes the deliveries go round (1: all into one mailbox, which "
        "PostgreSQL serialises on the mailbox row until each commit)",
    )
    parser.add_argument("--list-size", type=int, default=100_000, help="big mailbox size")
    parser.add_argument("--runs", type=int, default=7, help="list_flags runs (median)")
    parser.add_argument(
        "--dir",
        help="where to make the store (default: the system temp dir). Creating files costs "
        "kernel CPU time that depends on the filesystem and how its inodes were churned, so "
        "measure on the one that will hold the mail",
    )
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    load = os.getloadavg()[0]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load:.1f}")
    for backend in backends:
        asyncio.run(bench(backend, args))


if __name__ == "__main__":
    main()
