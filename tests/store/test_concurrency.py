"""Concurrent writers, several store instances on one database, durability across close/open and
a killed process, migrations racing, and the cross-node change feed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mailstead.core.errors import Conflict, QuotaExceeded
from mailstead.services.mailbox import MailboxService
from mailstead.store.blob_fs import FsBlobStore
from mailstead.store.changes import ChangeBus, Watch
from mailstead.store.interfaces import Changes, Delivery, MetadataStore, SystemFlag
from mailstead.store.postgres import PostgresStore
from mailstead.store.sqlite import SqliteStore
from tests.store.helpers import (
    StoreMaker,
    blob,
    deliver,
    inbox,
    make_account,
    new_message,
    queue_entry,
)


async def test_fifty_concurrent_writers_get_distinct_uids(store: MetadataStore) -> None:
    box = await inbox(store, await make_account(store))
    results = await asyncio.gather(*(deliver(store, box, n) for n in range(50)))
    assert sorted(m.uid for m in results) == list(range(1, 51))
    assert len({m.modseq for m in results}) == 50
    listed = await store.list_flags(box.id)
    assert [f.uid for f in listed] == list(range(1, 51))
    by_uid = {m.uid: m.blob_id for m in await store.get_messages(box.id)}
    assert {m.uid: m.blob_id for m in results} == by_uid
    status = await store.mailbox_status(box.id)
    assert (status.messages, status.uidnext) == (50, 51)


async def test_crossing_multi_mailbox_deliveries(store: MetadataStore) -> None:
    """Deliveries to {A, B} and {B, A} at once must neither deadlock nor lose a message."""
    alice = await make_account(store, "alice@example.test")
    bob = await make_account(store, "bob@example.test")
    a, b = await inbox(store, alice), await inbox(store, bob)

    async def both(n: int) -> None:
        first, second = (a, b) if n % 2 else (b, a)
        m = new_message(n)
        await store.store_message([Delivery(first.id, m), Delivery(second.id, m)])

    await asyncio.gather(*(both(n) for n in range(40)))
    assert [f.uid for f in await store.list_flags(a.id)] == list(range(1, 41))
    assert [f.uid for f in await store.list_flags(b.id)] == list(range(1, 41))


async def test_failures_in_a_batch_stay_alone(store: MetadataStore) -> None:
    """On SQLite these calls share group commits: the refused ones must not undo the others."""
    await store.add_domain("dup.example")
    full = await make_account(store, "full@example.test", quota_messages=1)
    roomy = await make_account(store, "roomy@example.test")
    full_box, roomy_box = await inbox(store, full), await inbox(store, roomy)

    async def good(n: int) -> str:
        await deliver(store, roomy_box, n)
        return "ok"

    async def over_quota(n: int) -> str:
        try:
            await deliver(store, full_box, n)
        except QuotaExceeded:
            return "quota"
        return "ok"

    async def duplicate() -> str:
        try:
            await store.add_domain("dup.example")
        except Conflict:
            return "conflict"
        return "ok"

    calls = []
    for n in range(30):
        calls += [good(n), over_quota(100 + n), duplicate()]
    outcomes = await asyncio.gather(*calls)
    assert outcomes.count("conflict") == 30
    assert outcomes.count("quota") == 29  # exactly one fits the quota of one message
    assert (await store.mailbox_status(roomy_box.id)).messages == 30
    assert (await store.mailbox_status(full_box.id)).messages == 1
    assert await store.quota_usage(full.id) == (100, 1)


async def test_concurrent_flag_updates_and_deliveries(store: MetadataStore) -> None:
    box = await inbox(store, await make_account(store))
    for n in range(1, 11):
        await deliver(store, box, n)
    flag_for = [SystemFlag.SEEN, SystemFlag.FLAGGED, SystemFlag.ANSWERED, SystemFlag.DRAFT]
    jobs: list[Awaitable[object]] = [
        store.update_flags(box.id, [uid], "add", flag_for[uid % 4]) for uid in range(1, 11)
    ]
    jobs += [store.update_flags(box.id, list(range(1, 11)), "add", 0, frozenset({"$Done"}))]
    jobs += [deliver(store, box, 100 + n) for n in range(10)]
    await asyncio.gather(*jobs)
    states = {f.uid: f for f in await store.list_flags(box.id)}
    assert len(states) == 20
    for uid in range(1, 11):
        assert states[uid].flags == flag_for[uid % 4]
        assert states[uid].keywords == frozenset({"$Done"})
    status = await store.mailbox_status(box.id)
    assert status.highestmodseq == max(f.modseq for f in states.values())


async def test_two_instances_never_claim_the_same_entry(make_store: StoreMaker) -> None:
    one, two = make_store(), make_store()
    await one.open()
    await two.open()
    try:
        now = datetime.now(UTC)
        for n in range(60):
            await one.enqueue(queue_entry(f"Q{n:03}", n, next_attempt=now - timedelta(seconds=n)))

        async def claimer(store: MetadataStore, owner: str) -> list[str]:
            got: list[str] = []
            while True:
                batch = await store.claim_due(now, owner, 300, 3)
                if not batch:
                    return got
                got += [e.id for e in batch]

        results = await asyncio.gather(
            claimer(one, "a"), claimer(two, "b"), claimer(one, "c"), claimer(two, "d")
        )
        claimed = [qid for r in results for qid in r]
        assert sorted(claimed) == sorted(f"Q{n:03}" for n in range(60))  # each exactly once
        owners = {e.id: e.lease_owner for e in await one.list_queue()}
        for owner, ids in zip("abcd", results, strict=True):
            assert all(owners[qid] == owner for qid in ids)
    finally:
        await one.close()
        await two.close()


async def test_two_instances_write_one_mailbox(make_store: StoreMaker) -> None:
    one, two = make_store(), make_store()
    await one.open()
    await two.open()
    try:
        box = await inbox(one, await make_account(one))
        await asyncio.gather(*(deliver(one if n % 2 else two, box, n) for n in range(40)))
        assert [f.uid for f in await two.list_flags(box.id)] == list(range(1, 41))
    finally:
        await one.close()
        await two.close()


async def test_reopened_store_sees_everything(make_store: StoreMaker) -> None:
    store = make_store()
    await store.open()
    account = await make_account(store)
    await store.add_alias("team@example.test", "alice@example.test")
    box = await inbox(store, account)
    await asyncio.gather(*(deliver(store, box, n) for n in range(20)))
    await store.update_flags(box.id, [1, 2], "add", SystemFlag.SEEN, frozenset({"kw"}))
    await store.enqueue(queue_entry("Q1"))
    status = await store.mailbox_status(box.id)
    messages = await store.get_messages(box.id)
    await store.close()

    again = make_store()
    await again.open()
    try:
        assert await again.get_account("alice@example.test") == account
        assert await again.alias_destinations("team@example.test") == ["alice@example.test"]
        assert await again.mailbox_status(box.id) == status
        assert await again.get_messages(box.id) == messages
        assert await again.get_queue_entry("Q1") == queue_entry("Q1")
        # Writing goes on where it stopped.
        assert (await deliver(again, box, 99)).uid == 21
    finally:
        await again.close()


async def test_concurrent_first_open_migrates_once(make_store: StoreMaker) -> None:
    stores = [make_store() for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        await stores[0].add_domain("example.test")
        for s in stores:
            assert [d.name for d in await s.list_domains()] == ["example.test"]
    finally:
        for s in stores:
            await s.close()


KILLED_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import UTC, datetime
    from pathlib import Path
    from mailstead.store.changes import ChangeBus, Watch
    from mailstead.store.interfaces import Delivery, NewMessage
    from mailstead.store.postgres import PostgresStore
    from mailstead.store.sqlite import SqliteStore

    async def main() -> None:
        kind, where, schema, box = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
        if kind == "sqlite":
            store = SqliteStore(Path(where), ChangeBus())
        else:
            store = PostgresStore(where, ChangeBus(), schema=schema)
        await store.open()
        n = 0
        while True:
            msgs = [
                store.store_message(
                    [Delivery(box, NewMessage("%064x" % (n + i), 10, datetime.now(UTC)))]
                )
                for i in range(8)
            ]
            n += 8
            for done in asyncio.as_completed(msgs):
                [meta] = await done
                print(meta.uid, flush=True)  # acknowledged: must survive the kill

    asyncio.run(main())
    """
)


async def test_acknowledged_writes_survive_a_killed_process(make_store: StoreMaker) -> None:
    store = make_store()
    await store.open()
    box = await inbox(store, await make_account(store))
    await store.close()
    if isinstance(store, SqliteStore):
        args = ["sqlite", str(store.path), ""]
    else:
        assert isinstance(store, PostgresStore)
        args = ["postgresql", store.url, store.schema]
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, *args, str(box.id)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.stdout is not None
    acknowledged: list[int] = []
    try:
        while len(acknowledged) < 200:
            line = await asyncio.to_thread(proc.stdout.readline)
            assert line, "the writer died before acknowledging 200 messages"
            acknowledged.append(int(line))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    again = make_store()
    await again.open()
    try:
        present = {f.uid for f in await again.list_flags(box.id)}
        assert set(acknowledged) <= present
        assert (await deliver(again, box, 1)).uid > max(present)
    finally:
        await again.close()


@pytest.mark.parametrize("make_store", ["postgresql"], indirect=True)
async def test_idle_on_one_node_hears_a_delivery_on_another(make_store: StoreMaker) -> None:
    bus_a, bus_b = ChangeBus(), ChangeBus()
    node_a, node_b = make_store(bus_a), make_store(bus_b)
    await node_a.open()
    await node_b.open()
    try:
        account = await make_account(node_b)
        box, other = await inbox(node_b, account), await inbox(node_b, account, "Sent")
        with bus_a.watch(box.id) as watch, bus_a.watch(other.id) as unrelated:
            # The account's creation touched both mailboxes; its notice may reach node A only
            # now, after the watches were made: heard out first, so that what follows is told
            # by this test's own changes alone (else "unrelated" could fire from it).
            async def drained(w: Watch) -> None:
                while await w.wait(0.3):
                    pass

            await asyncio.gather(drained(watch), drained(unrelated))
            await deliver(node_b, box, 1)
            assert await watch.wait(10)
            await node_b.update_flags(box.id, [1], "add", SystemFlag.SEEN)
            assert await watch.wait(10)
            assert not await unrelated.wait(0.2)
    finally:
        await node_a.close()
        await node_b.close()


async def test_blob_refs_under_concurrency(store: MetadataStore) -> None:
    box = await inbox(store, await make_account(store))
    await asyncio.gather(*(deliver(store, box, 7) for _ in range(30)))
    await asyncio.gather(*(store.expunge(box.id, [uid]) for uid in range(1, 30)))
    assert not await store.blob_unused(blob(7))
    await store.expunge(box.id, [30])
    assert await store.reap_blobs() == [blob(7)]


async def test_sqlite_deliveries_wait_for_another_process_without_blocking_the_loop(
        tmp_path: Path) -> None:
    """While another process holds SQLite's write lock (as the CLI does while it writes), the
    writer thread waits for it; the event loop goes on meanwhile, and every delivery is stored
    once the lock is free."""
    import sqlite3

    store = SqliteStore(tmp_path / "meta.db", ChangeBus())
    await store.open()
    try:
        box = await inbox(store, await make_account(store))
        other = sqlite3.connect(tmp_path / "meta.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        deliveries = asyncio.gather(*(deliver(store, box, n) for n in range(20)))
        ticks = 0
        for _ in range(20):
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 20 and not deliveries.done()  # the loop ran; nothing committed yet
        other.execute("COMMIT")
        other.close()
        stored = await asyncio.wait_for(deliveries, 30)
        assert sorted(m.uid for m in stored) == list(range(1, 21))
        assert (await store.mailbox_status(box.id)).messages == 20
    finally:
        await store.close()


async def test_status_read_during_deliveries_is_one_snapshot(store: MetadataStore) -> None:
    """A status read while deliveries commit sees one moment: MESSAGES and UIDNEXT agree (no
    expunges here, so MESSAGES = UIDNEXT - 1). On PostgreSQL a read runs REPEATABLE READ: under
    READ COMMITTED its two statements could straddle a commit (seen: MESSAGES 2, UIDNEXT 2)."""
    box = await inbox(store, await make_account(store))
    seen: list[tuple[int, int]] = []
    done = False

    async def reader() -> None:
        while not done:
            status = await store.mailbox_status(box.id)
            seen.append((status.messages, status.uidnext))

    task = asyncio.create_task(reader())
    for n in range(60):
        await asyncio.gather(*(deliver(store, box, 100 * n + k) for k in range(3)))
    done = True
    await task
    assert seen and all(messages == uidnext - 1 for messages, uidnext in seen), [
        pair for pair in seen if pair[0] != pair[1] - 1][:5]


async def test_a_forced_refresh_sees_an_unannounced_commit_and_skips_the_query_else(
    make_store: StoreMaker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NOOP's forced round asks the store even when no change was announced (here: made by
    another store instance on another change bus); on SQLite, when nothing at all was
    committed since the last forced round, it asks nothing (the commit marker)."""
    here, elsewhere = make_store(ChangeBus()), make_store(ChangeBus())
    await here.open()
    await elsewhere.open()
    try:
        box = await inbox(here, await make_account(here))
        await deliver(here, box, 1)
        await deliver(here, box, 2)
        service = MailboxService(here, FsBlobStore(tmp_path / "blobs"), here.changes, 1 << 20)
        view = await service.open(box.account_id, "INBOX", readonly=False, track_recent=False)
        await elsewhere.update_flags(box.id, [1], "add", SystemFlag.FLAGGED)
        await view.refresh(force=True)
        assert view.take_updates(True).flags[0][1].flags & SystemFlag.FLAGGED
        queries = 0
        real = here.changes_since

        async def counted(mailbox_id: int, modseq: int) -> Changes:
            nonlocal queries
            queries += 1
            return await real(mailbox_id, modseq)

        monkeypatch.setattr(here, "changes_since", counted)
        await view.refresh(force=True)
        await view.refresh(force=True)
        if isinstance(here, SqliteStore):
            assert queries == 0
        await elsewhere.update_flags(box.id, [2], "add", SystemFlag.SEEN)
        await view.refresh(force=True)
        assert [uid for _seq, st in view.take_updates(True).flags for uid in [st.uid]] == [2]
        assert queries >= 1
        view.close()
    finally:
        await here.close()
        await elsewhere.close()


async def test_sqlite_runs_only_a_small_flag_change_on_the_event_loop(tmp_path: Path) -> None:
    """A STORE of a few UIDs commits on the event loop (no fsync to wait for); a STORE of many
    UIDs and the \\Recent claim, whose work grows with the mailbox, go to the writer thread,
    so one session's STORE 1:* never stalls the others. Both are committed and seen."""
    store = SqliteStore(tmp_path / "meta.db", ChangeBus())
    await store.open()
    try:
        box = await inbox(store, await make_account(store))
        await asyncio.gather(*(deliver(store, box, n) for n in range(100)))
        uids = list(range(1, 101))
        inline = 0
        real = store._write_inline

        def counted(op: Any) -> Any:
            nonlocal inline
            inline += 1
            return real(op)

        store._write_inline = counted  # type: ignore[method-assign]
        await store.claim_recent(box.id)
        await store.update_flags(box.id, uids, "add", SystemFlag.SEEN)
        assert inline == 0  # neither ran on the loop's own connection
        await store.update_flags(box.id, [7], "add", SystemFlag.FLAGGED)
        assert inline == 1
        messages = await store.get_messages(box.id)
        assert all(m.flags & SystemFlag.SEEN for m in messages)
        assert [m.uid for m in messages if m.flags & SystemFlag.FLAGGED] == [7]
    finally:
        await store.close()
