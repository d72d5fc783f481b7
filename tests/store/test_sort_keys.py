"""The SORT/THREAD keys stored at delivery (migration 0010, core/base_subject.thread_keys):
read column-wise, carried by COPY, and filled in for rows stored before the migration; on
SQLite read from a covering index (migration 0013)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailstead.core.base_subject import casemap
from mailstead.store.changes import ChangeBus
from mailstead.store.interfaces import Delivery, Envelope, MetadataStore, NewMessage
from mailstead.store.sql import SqlStore
from mailstead.store.sql_base import (
    Db,
    apply_migrations,
    backfill_thread_keys,
    load_migrations,
    split_statements,
)
from mailstead.store.sql_messages import SORT_COLUMN_SQL
from mailstead.store.sqlite import SqliteDb, SqliteStore
from tests.store.helpers import WHEN, blob, inbox, make_account

KEYS = ("subject_key", "reply", "thread_id", "thread_parents")
REPLY = Envelope(subject="Re: [list] Ünïcode Plan", from_="A <a@example.org>",
                 to="b@example.org", date=datetime(2024, 5, 17, 11, 0, tzinfo=UTC),
                 message_id="<1@x> <extra@x>", in_reply_to="<0@x>", references="<r@x>\r\n <0@x>")
ONLY_IRT = Envelope(subject="Plan", message_id="<2@x>", in_reply_to="<1@x> <9@x>",
                    references="")


async def _store_three(store: MetadataStore) -> int:
    alice = await make_account(store, "keys@example.test")
    box = await inbox(store, alice)
    await store.store_message([
        Delivery(box.id, NewMessage(blob_id=blob(1), size=10, internal_date=WHEN,
                                    envelope=REPLY)),
        Delivery(box.id, NewMessage(blob_id=blob(2), size=20, internal_date=WHEN,
                                    envelope=ONLY_IRT)),
        Delivery(box.id, NewMessage(blob_id=blob(3), size=30, internal_date=WHEN)),  # bare
    ])
    return box.id


EXPECTED = [
    [casemap("ÜNÏCODE plan"), 1, "1@x", "r@x 0@x"],  # casefolded, decomposed (NFKD)
    ["plan", 0, "2@x", "1@x"],  # no References: the first msg-id of In-Reply-To
    [None, None, None, None],  # stored without envelope: only its file knows
]


async def test_keys_stored_at_delivery_and_read_column_wise(store: MetadataStore) -> None:
    box_id = await _store_three(store)
    uids, sent, size, *keys = await store.sort_columns(box_id, ("sent", "size", *KEYS))
    assert uids == [1, 2, 3] and size == [10, 20, 30]
    when = int(WHEN.timestamp()) * 1_000_000
    assert sent == [int(REPLY.date.timestamp()) * 1_000_000, when, when]  # type: ignore[union-attr]
    assert [list(row) for row in zip(*keys, strict=True)] == EXPECTED
    assert (await store.sort_columns(box_id, ("from",), after_uid=1, limit=1)) == [[2], [""]]
    assert await store.sort_columns(box_id, ("to",), after_uid=3) == [[], []]
    with pytest.raises(ValueError):
        await store.sort_columns(box_id, ("sort_subject; DROP TABLE messages",))


async def test_copy_keeps_the_keys(store: MetadataStore) -> None:
    box_id = await _store_three(store)
    account = await store.get_account("keys@example.test")
    assert account is not None
    other = await store.create_mailbox(account.id, "Kept keys")
    await store.copy_messages(box_id, [1, 2, 3], other.id, move=False)
    _uids, *keys = await store.sort_columns(other.id, KEYS)
    assert [list(row) for row in zip(*keys, strict=True)] == EXPECTED


def _forget_keys(db: Db) -> None:
    """As rows stored before migration 0010 (and one before 0005: no References) are."""
    db.run("UPDATE messages SET sort_subject = NULL, sort_reply = NULL, thread_id = NULL, "
           "thread_parents = NULL")
    db.run("UPDATE messages SET env_references = NULL WHERE uid = 2")


async def test_backfill_fills_rows_stored_before(store: SqlStore) -> None:
    box_id = await _store_three(store)
    await store._write(_forget_keys)
    _uids, *keys = await store.sort_columns(box_id, KEYS)
    assert all(value is None for column in keys for value in column)
    await store._write(backfill_thread_keys)
    _uids, *keys = await store.sort_columns(box_id, KEYS)
    # References not recorded: the parents stay unknown (a THREAD reads the file for them)
    assert [list(row) for row in zip(*keys, strict=True)] == [
        EXPECTED[0], ["plan", 0, "2@x", None], EXPECTED[2]]


async def test_migration_from_version_5_backfills(tmp_path: Path) -> None:
    """A store made before migration 0010 gets the keys of its messages when opened."""
    path = tmp_path / "meta.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied BIGINT)")
    for version, text in load_migrations():
        if version <= 5:
            for statement in split_statements(text, "sqlite"):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?, 0)", (version,))
    conn.execute("INSERT INTO domains (name, created) VALUES ('example.test', 0)")
    conn.execute("INSERT INTO accounts (address, domain_id, password_hash, created) "
                 "VALUES ('alice@example.test', 1, 'hash', 0)")
    conn.execute("INSERT INTO mailboxes (account_id, name, uidvalidity) VALUES (1, 'INBOX', 1)")
    conn.execute(
        "INSERT INTO messages (mailbox_id, uid, modseq, internal_date, size, blob_id, "
        "env_subject, env_message_id, env_in_reply_to, env_references) VALUES "
        "(1, 1, 1, 0, 5, 'b1', 'Fwd: Old news', '<old@x>', '', '<a@x> <b@x>'), "
        "(1, 2, 2, 0, 5, 'b2', '', '', '', NULL)")
    conn.close()
    store = SqliteStore(path, ChangeBus())
    await store.open()
    try:
        _uids, *keys = await store.sort_columns(1, KEYS)
        assert [list(row) for row in zip(*keys, strict=True)] == [
            ["old news", 1, "old@x", "a@x b@x"], [None, None, None, None]]
    finally:
        await store.close()


THREAD_READ = ("sent", "subject_key", "reply", "thread_id", "thread_parents")


def _plan(conn: sqlite3.Connection) -> str:
    cols = ", ".join(SORT_COLUMN_SQL[name] for name in THREAD_READ)
    rows = conn.execute(f"EXPLAIN QUERY PLAN SELECT uid, {cols} FROM messages WHERE "
                        "mailbox_id = ? AND uid > ? ORDER BY uid LIMIT 10", (1, 0)).fetchall()
    return " ".join(str(row[-1]) for row in rows)


async def test_thread_keys_read_from_the_covering_index(tmp_path: Path) -> None:
    """Migration 0013 (SQLite): what a THREAD reads comes from messages_sort_keys alone, on
    a new store and on one made at version 12 (upgraded when opened)."""
    fresh = SqliteStore(tmp_path / "new.db", ChangeBus())
    await fresh.open()
    await fresh.close()
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    assert apply_migrations(SqliteDb(conn), upto=12) == 12
    conn.execute("COMMIT")
    assert "COVERING INDEX messages_sort_keys" not in _plan(conn)
    conn.close()
    old = SqliteStore(path, ChangeBus())
    await old.open()
    try:
        box_id = await _store_three(old)
        uids, *keys = await old.sort_columns(box_id, KEYS)
        assert uids == [1, 2, 3] and keys[2] == ["1@x", "2@x", None]
    finally:
        await old.close()
    for db in ("new.db", "old.db"):
        conn = sqlite3.connect(tmp_path / db)
        assert "COVERING INDEX messages_sort_keys" in _plan(conn), db
        conn.close()
