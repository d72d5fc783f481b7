"""SQL operations on the outbound queue: enqueue, leases (claimed with FOR UPDATE SKIP LOCKED
on PostgreSQL), recipients' results, recall (plain functions ``op(db, ...)``)."""

from __future__ import annotations

from datetime import datetime

from mailstead.core.errors import Conflict, NotFound
from mailstead.store.interfaces import (
    QueueEntry,
)
from mailstead.store.sql_base import (
    QUEUE_COLS,
    Db,
    _add_blob_refs,
    _queue_entry,
    _recipients_json,
    _release_blobs,
    to_micros,
)

# ---------------------------------------------------------------------------------------------
# Outbound queue


def _insert_queue_entry(db: Db, e: QueueEntry) -> None:
    try:
        db.run(
            f"INSERT INTO queue ({QUEUE_COLS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                e.id,
                e.sender,
                _recipients_json(e),
                e.blob_id,
                e.size,
                to_micros(e.created),
                to_micros(e.next_attempt),
                e.attempts,
                e.state,
                e.account_id,
                e.envid,
                e.ret,
                e.requiretls,
                e.smtputf8,
                e.body_8bit,
                e.delay_notified,
                e.lease_owner,
                None if e.lease_until is None else to_micros(e.lease_until),
            ),
        )
    except Conflict:
        raise Conflict(f"queue entry {e.id} exists already") from None


def enqueue(db: Db, entry: QueueEntry) -> None:
    _insert_queue_entry(db, entry)
    _add_blob_refs(db, {entry.blob_id: 1})


def get_queue_entry(db: Db, queue_id: str) -> QueueEntry | None:
    row = db.one(f"SELECT {QUEUE_COLS} FROM queue WHERE id = ?", (queue_id,))
    return None if row is None else _queue_entry(row)


def list_queue(db: Db, include_done: bool, account_id: int | None = None) -> list[QueueEntry]:
    terms = ([] if include_done else ["state <> 'done'"]) + (
        [] if account_id is None else ["account_id = ?"])
    where = f" WHERE {' AND '.join(terms)}" if terms else ""
    params = () if account_id is None else (account_id,)
    rows = db.rows(f"SELECT {QUEUE_COLS} FROM queue{where} ORDER BY created, id", params)
    return [_queue_entry(r) for r in rows]


def claim_due(
    db: Db, now: datetime, owner: str, lease_seconds: int, limit: int
) -> list[QueueEntry]:
    now_us = to_micros(now)
    # SKIP LOCKED (PostgreSQL): an entry another node is claiming right now is passed over.
    skip = " FOR UPDATE SKIP LOCKED" if db.for_update else ""
    rows = db.rows(
        "SELECT id FROM queue WHERE state = 'queued' AND next_attempt <= ? "
        f"AND (lease_until IS NULL OR lease_until <= ?) ORDER BY next_attempt, id LIMIT ?{skip}",
        (now_us, now_us, limit),
    )
    ids = [r[0] for r in rows]
    until = now_us + lease_seconds * 1_000_000
    db.run_many(
        "UPDATE queue SET lease_owner = ?, lease_until = ? WHERE id = ?",
        [(owner, until, i) for i in ids],
    )
    claimed = [get_queue_entry(db, i) for i in ids]
    return [e for e in claimed if e is not None]


def _locked_queue_entry(db: Db, queue_id: str) -> QueueEntry:
    lock = " FOR UPDATE" if db.for_update else ""  # SQLite: the write transaction serialises
    row = db.one(f"SELECT {QUEUE_COLS} FROM queue WHERE id = ?{lock}", (queue_id,))
    if row is None:
        raise NotFound(f"no queue entry {queue_id}")
    return _queue_entry(row)


def _keep_settled(stored: QueueEntry, e: QueueEntry) -> None:
    """A recipient settled in the store (delivered, failed, recalled) never goes back to
    pending because a writer read the entry before it was settled."""
    settled = {r.address: r for r in stored.recipients if r.status != "pending"}
    for recipient in e.recipients:
        before = settled.get(recipient.address)
        if before is not None and recipient.status == "pending":
            recipient.status, recipient.last_reply = before.status, before.last_reply
    if all(r.status != "pending" for r in e.recipients):
        e.state = "done"


def make_due(db: Db, queue_id: str, now: datetime) -> bool:
    return db.run("UPDATE queue SET next_attempt = ? WHERE id = ? AND state = 'queued'",
                  (to_micros(now), queue_id)) > 0


def recall_pending(db: Db, queue_id: str, now: datetime, reason: str) -> QueueEntry:
    e = _locked_queue_entry(db, queue_id)
    marked = 0
    for recipient in e.recipients:
        if recipient.status == "pending":
            recipient.status, recipient.last_reply = "recalled", reason
            marked += 1
    if marked and all(r.status != "pending" for r in e.recipients):
        e.state, e.next_attempt = "done", now
    if marked:
        db.run("UPDATE queue SET recipients = ?, state = ?, next_attempt = ? WHERE id = ?",
               (_recipients_json(e), e.state, to_micros(e.next_attempt), queue_id))
    return e


def update_queue_entry(db: Db, e: QueueEntry) -> None:
    """Writes every mutable field; the blob and creation time of an entry never change."""
    _keep_settled(_locked_queue_entry(db, e.id), e)  # NotFound when it is gone; else row-locked
    db.run(
        "UPDATE queue SET sender = ?, recipients = ?, next_attempt = ?, attempts = ?, state = ?, "
        "account_id = ?, envid = ?, ret = ?, requiretls = ?, smtputf8 = ?, body_8bit = ?, "
        "delay_notified = ?, lease_owner = ?, lease_until = ? WHERE id = ?",
        (
            e.sender,
            _recipients_json(e),
            to_micros(e.next_attempt),
            e.attempts,
            e.state,
            e.account_id,
            e.envid,
            e.ret,
            e.requiretls,
            e.smtputf8,
            e.body_8bit,
            e.delay_notified,
            e.lease_owner,
            None if e.lease_until is None else to_micros(e.lease_until),
            e.id,
        ),
    )


def delete_queue_entry(db: Db, queue_id: str) -> list[str]:
    blob_id = db.value("DELETE FROM queue WHERE id = ? RETURNING blob_id", (queue_id,))
    if blob_id is None:
        return []  # already gone (recalled, or another worker finished it): nothing to do
    return _release_blobs(db, {blob_id: 1}, forget=True)
