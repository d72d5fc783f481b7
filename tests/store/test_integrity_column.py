"""The integrity column (migration 0011) on SQLite and PostgreSQL: stored with a delivery,
read back, kept by COPY and MOVE, NULL for messages stored without one; a store made at
0010 upgrades."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mailstead.core.models import INTEGRITY_STATES
from mailstead.store.changes import ChangeBus
from mailstead.store.interfaces import MetadataStore
from mailstead.store.sql_base import apply_migrations
from mailstead.store.sqlite import SqliteDb, SqliteStore
from tests.store.helpers import deliver, inbox, make_account


async def test_stored_read_back_copied_and_moved(store: MetadataStore) -> None:
    alice = await make_account(store)
    box = await inbox(store, alice)
    archive = await inbox(store, alice, "Archive")
    stored = [await deliver(store, box, n, integrity=state)
              for n, state in enumerate(INTEGRITY_STATES, 1)]
    plain = await deliver(store, box, 9)
    assert [m.integrity for m in stored] == ["verified", "unsigned", "failed"]
    assert plain.integrity is None
    read = await store.get_messages(box.id)
    assert [m.integrity for m in read] == ["verified", "unsigned", "failed", None]
    assert [m.envelope for m in read] == [m.envelope for m in [*stored, plain]]

    copied = await store.copy_messages(box.id, [1, 3, 4], archive.id)
    assert [m.integrity for m in await store.get_messages(archive.id)] == [
        "verified", "failed", None]
    moved = await store.copy_messages(box.id, [2], archive.id, move=True)
    assert [m.integrity for m in await store.get_messages(archive.id, [moved.pairs[0][1]])] == [
        "unsigned"]
    assert [m.uid for m in await store.get_messages(box.id)] == [1, 3, 4]
    assert len(copied.pairs) == 3


async def test_a_store_at_0010_upgrades_and_stores_it(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    assert apply_migrations(SqliteDb(conn), upto=10) == 10
    conn.execute("COMMIT")
    conn.close()
    store = SqliteStore(path, ChangeBus())
    await store.open()
    try:
        alice = await make_account(store)
        box = await inbox(store, alice)
        await deliver(store, box, 1)
        await deliver(store, box, 2, integrity="failed")
        assert [m.integrity for m in await store.get_messages(box.id)] == [None, "failed"]
    finally:
        await store.close()
