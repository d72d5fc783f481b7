"""SQL operations on messages and the blobs they reference: storing (with quota checks and
blob reference counts), flags and MODSEQ, expunge, copy, the change log, sort fields (plain
functions ``op(db, ...)``)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from itertools import repeat
from typing import Any, Literal

from mailstead.core.errors import NotFound
from mailstead.store.gcpause import gc_paused
from mailstead.store.interfaces import (
    SORT_FIELDS,
    Changes,
    CopyResult,
    Delivery,
    FlagState,
    FlagUpdate,
    MessageMeta,
    QueueEntry,
    SortFields,
)
from mailstead.store.sql_base import (
    FLAG_COLS,
    MESSAGE_COLS,
    Db,
    Row,
    _add_blob_refs,
    _change_usage,
    _count_blobs,
    _flag_states,
    _message,
    _release_blobs,
    decode_keywords,
    encode_keywords,
    from_micros,
    stored_thread_keys,
    to_micros,
)
from mailstead.store.sql_mailboxes import (
    _lock_mailbox,
    _next_modseq,
    claim_recent,
)
from mailstead.store.sql_queue import (
    _insert_queue_entry,
)

# ---------------------------------------------------------------------------------------------
# Messages

INSERT_MESSAGE = (
    "INSERT INTO messages (mailbox_id, uid, modseq, sysflags, keywords, internal_date, size, "
    "blob_id, env_subject, env_from, env_to, env_cc, env_date, env_message_id, env_in_reply_to, "
    "env_references, sort_subject, sort_reply, thread_id, thread_parents, integrity) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def store_message(
    db: Db, deliveries: Sequence[Delivery], queue_entry: QueueEntry | None
) -> list[MessageMeta]:
    # Lock mailboxes, then accounts, each in id order, so concurrent deliveries cannot deadlock.
    order = sorted(range(len(deliveries)), key=lambda i: deliveries[i].mailbox_id)
    allocated: dict[int, Row] = {}
    usage: dict[int, list[int]] = {}
    for i in order:
        delivery = deliveries[i]
        row = db.one(
            "UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1 "
            "WHERE id = ? RETURNING uidnext - 1, highestmodseq, account_id",
            (delivery.mailbox_id,),
        )
        if row is None:
            raise NotFound(f"no mailbox with id {delivery.mailbox_id}")
        allocated[i] = row
        total = usage.setdefault(row[2], [0, 0])
        total[0] += delivery.message.size
        total[1] += 1
    for account_id in sorted(usage):
        _change_usage(db, account_id, usage[account_id][0], usage[account_id][1], check=True)
    stored = []
    for i, delivery in enumerate(deliveries):
        uid, modseq, _account_id = allocated[i]
        m, env = delivery.message, delivery.message.envelope
        date = None if env.date is None else to_micros(env.date)
        message_id = db.value(
            INSERT_MESSAGE + " RETURNING id",
            (
                delivery.mailbox_id,
                uid,
                modseq,
                m.flags,
                encode_keywords(m.keywords),
                to_micros(m.internal_date),
                m.size,
                m.blob_id,
                env.subject,
                env.from_,
                env.to,
                env.cc,
                date,
                env.message_id,
                env.in_reply_to,
                env.references,
                *stored_thread_keys(env.subject, env.from_, env.to, env.cc, date,
                                    env.message_id, env.in_reply_to, env.references),
                m.integrity,
            ),
        )
        db.touched.add(delivery.mailbox_id)
        stored.append(
            MessageMeta(
                id=message_id,
                mailbox_id=delivery.mailbox_id,
                uid=uid,
                modseq=modseq,
                flags=m.flags,
                keywords=decode_keywords(encode_keywords(m.keywords)),
                internal_date=from_micros(to_micros(m.internal_date)),
                size=m.size,
                blob_id=m.blob_id,
                envelope=env,
                integrity=m.integrity,
            )
        )
    blob_counts = _count_blobs(((d.message.blob_id,) for d in deliveries), 0)
    if queue_entry is not None:
        _insert_queue_entry(db, queue_entry)
        blob_counts[queue_entry.blob_id] = blob_counts.get(queue_entry.blob_id, 0) + 1
    _add_blob_refs(db, blob_counts)
    return stored


IN_LIST_LIMIT = 500


def _select_by_uids(
    db: Db, cols: str, mailbox_id: int, uids: Iterable[int] | None, uid_index: int
) -> list[Row]:
    """Rows of the given UIDs (all when None), in UID order. Long UID sets read the UID range
    and filter here, so no statement carries thousands of parameters."""
    base = f"SELECT {cols} FROM messages WHERE mailbox_id = ?"
    suffix = " ORDER BY uid"
    if uids is None:
        return db.rows(base + suffix, (mailbox_id,))
    wanted = sorted(set(uids))
    if not wanted:
        return []
    if len(wanted) <= IN_LIST_LIMIT:
        marks = ",".join("?" * len(wanted))
        return db.rows(f"{base} AND uid IN ({marks}){suffix}", (mailbox_id, *wanted))
    rows = db.rows(f"{base} AND uid BETWEEN ? AND ?{suffix}", (mailbox_id, wanted[0], wanted[-1]))
    keep = set(wanted)
    return [r for r in rows if r[uid_index] in keep]


def append_claiming_recent(db: Db, delivery: Delivery) -> tuple[MessageMeta, int]:
    """An APPEND to the mailbox the session has selected: the message stored and the
    mailbox's \\Recent messages (it among them) claimed in the same transaction."""
    stored = store_message(db, [delivery], None)[0]
    return stored, claim_recent(db, delivery.mailbox_id)


def flags_of(db: Db, mailbox_id: int, uids: Sequence[int]) -> list[FlagState]:
    """FlagStates of a few UIDs (those that exist), in UID order: one statement."""
    return _flag_states(_select_by_uids(db, FLAG_COLS, mailbox_id, uids, 0))


def list_flags(db: Db, mailbox_id: int) -> list[FlagState]:
    with gc_paused(keeps=True):  # a SELECT keeps them as the mailbox's shared state
        rows = db.rows(
            f"SELECT {FLAG_COLS} FROM messages WHERE mailbox_id = ? ORDER BY uid", (mailbox_id,)
        )
        return _flag_states(rows)


# SortFields' columns in order: (field, column, what stands in when it is not wanted). Reading
# only the columns a SORT needs makes 100,000 rows several times cheaper.
_SORT_COLUMNS = (
    ("size", "size", "0"), ("subject", "env_subject", "''"),
    ("from_", "env_from", "''"), ("to", "env_to", "''"), ("cc", "env_cc", "''"),
    ("date", "env_date", "NULL"), ("message_id", "env_message_id", "''"),
    ("in_reply_to", "env_in_reply_to", "''"), ("references", "env_references", "NULL"),
)
_BARE = (
    "(env_subject = '' AND env_from = '' AND env_to = '' AND env_cc = '' AND env_date IS NULL "
    "AND env_message_id = '' AND env_in_reply_to = '')"
)


def sort_fields(
    db: Db, mailbox_id: int, wanted: Collection[str], after_uid: int, limit: int | None
) -> list[SortFields]:
    unknown = set(wanted) - SORT_FIELDS
    if unknown:
        raise ValueError(f"unknown sort fields {sorted(unknown)}")
    cols = ", ".join(column if name in wanted else blank for name, column, blank in _SORT_COLUMNS)
    with gc_paused():
        rows = db.rows(
            f"SELECT uid, internal_date, {cols}, {_BARE} FROM messages WHERE mailbox_id = ? "
            "AND uid > ? ORDER BY uid" + ("" if limit is None else f" LIMIT {int(limit)}"),
            (mailbox_id, after_uid),
        )
        return list(map(_new_sort_fields, repeat(SortFields), rows))


# The expressions behind the names ``sort_columns`` accepts (see MetadataStore.sort_columns).
# On SQLite the index messages_sort_keys (migration 0013) holds all but the addresses and
# the size: a SORT by date or subject, or a THREAD, reads no table row.
SORT_COLUMN_SQL = {
    "arrival": "internal_date", "sent": "COALESCE(env_date, internal_date)", "size": "size",
    "from": "env_from", "to": "env_to", "cc": "env_cc", "subject_key": "sort_subject",
    "reply": "sort_reply", "thread_id": "thread_id", "thread_parents": "thread_parents",
}


def sort_columns(db: Db, mailbox_id: int, columns: Sequence[str], after_uid: int,
                 limit: int | None) -> list[list[Any]]:
    unknown = set(columns) - SORT_COLUMN_SQL.keys()
    if unknown:
        raise ValueError(f"unknown sort columns {sorted(unknown)}")
    cols = "".join(", " + SORT_COLUMN_SQL[name] for name in columns)
    with gc_paused():
        rows = db.rows(
            f"SELECT uid{cols} FROM messages WHERE mailbox_id = ? AND uid > ? ORDER BY uid"
            + ("" if limit is None else f" LIMIT {int(limit)}"),
            (mailbox_id, after_uid),
        )
        # Columns, not rows: the row tuples die here, before the collector is back on, so
        # it never scans 100,000 of them.
        if not rows:
            return [[] for _ in range(len(columns) + 1)]
        return list(map(list, zip(*rows, strict=True)))


_new_sort_fields: Callable[[type[SortFields], Iterable[Any]], SortFields] = (
    tuple.__new__  # type: ignore[assignment]
)


def get_messages(db: Db, mailbox_id: int, uids: Iterable[int] | None) -> list[MessageMeta]:
    return [_message(r) for r in _select_by_uids(db, MESSAGE_COLS, mailbox_id, uids, 2)]


def update_flags(
    db: Db,
    mailbox_id: int,
    uids: Sequence[int],
    mode: Literal["add", "remove", "replace"],
    flags: int,
    keywords: frozenset[str],
    unchanged_since: int | None,
) -> FlagUpdate:
    highestmodseq = _lock_mailbox(db, mailbox_id)[2]
    failed: list[int] = []
    updates: list[tuple[int, int, str]] = []  # (uid, new flags, new keywords)
    for uid, modseq, old_flags, old_kw in _select_by_uids(db, FLAG_COLS, mailbox_id, uids, 0):
        # RFC 7162 3.1.3: a message changed after UNCHANGEDSINCE is left alone and reported.
        if unchanged_since is not None and modseq > unchanged_since:
            failed.append(uid)
            continue
        current = decode_keywords(old_kw)
        if mode == "add":
            new_flags, new_kw = old_flags | flags, current | keywords
        elif mode == "remove":
            new_flags, new_kw = old_flags & ~flags, current - keywords
        else:
            new_flags, new_kw = flags, keywords
        if new_flags != old_flags or new_kw != current:
            updates.append((uid, new_flags, encode_keywords(new_kw)))
    changed: list[FlagState] = []
    if updates:
        highestmodseq = _next_modseq(db, mailbox_id)
        db.run_many(
            "UPDATE messages SET sysflags = ?, keywords = ?, modseq = ? "
            "WHERE mailbox_id = ? AND uid = ?",
            [(f, kw, highestmodseq, mailbox_id, uid) for uid, f, kw in updates],
        )
        changed = [FlagState(uid, highestmodseq, f, decode_keywords(kw)) for uid, f, kw in updates]
        db.touched.add(mailbox_id)
    return FlagUpdate(changed=changed, failed_uids=failed, highestmodseq=int(highestmodseq))


def _remove_messages(
    db: Db, mailbox_id: int, account_id: int, rows: list[Row], *, usage: bool = True
) -> int:
    """Deletes (uid, size, blob_id) rows and records them as vanished with a new MODSEQ (the
    one returned); with ``usage`` gives their size back to the account. Blob references are
    the caller's."""
    modseq = _next_modseq(db, mailbox_id)
    db.run_many(
        "DELETE FROM messages WHERE mailbox_id = ? AND uid = ?", [(mailbox_id, r[0]) for r in rows]
    )
    db.run_many(
        "INSERT INTO vanished (mailbox_id, uid, modseq) VALUES (?, ?, ?)",
        [(mailbox_id, r[0], modseq) for r in rows],
    )
    if usage:
        _change_usage(db, account_id, -sum(r[1] for r in rows), -len(rows), check=False)
    db.touched.add(mailbox_id)
    return modseq


def expunge(db: Db, mailbox_id: int, uids: Sequence[int] | None) -> list[int]:
    return expunge_with_modseq(db, mailbox_id, uids)[0]


def expunge_with_modseq(db: Db, mailbox_id: int, uids: Sequence[int] | None
                        ) -> tuple[list[int], int]:
    """``expunge``, and the MODSEQ of the change (0 when nothing was removed): the mailbox's
    HIGHESTMODSEQ after it, which the change feed sends along with the UIDs."""
    account_id = _lock_mailbox(db, mailbox_id)[0]
    if uids is None:
        rows = db.rows(
            "SELECT uid, size, blob_id FROM messages WHERE mailbox_id = ? AND sysflags & 8 <> 0 "
            "ORDER BY uid",
            (mailbox_id,),
        )
    else:
        rows = _select_by_uids(db, "uid, size, blob_id", mailbox_id, uids, 0)
    if not rows:
        return [], 0
    modseq = _remove_messages(db, mailbox_id, account_id, rows)
    _release_blobs(db, _count_blobs(rows, 2), forget=False)
    return [r[0] for r in rows], modseq


def copy_messages(
    db: Db, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int, move: bool
) -> CopyResult:
    locked = {i: _lock_mailbox(db, i) for i in sorted({src_mailbox_id, dst_mailbox_id})}
    src_account = locked[src_mailbox_id][0]
    dst_account, dst_uidvalidity = locked[dst_mailbox_id][:2]
    rows = _select_by_uids(db, MESSAGE_COLS, src_mailbox_id, uids, 2)
    if not rows:
        return CopyResult(uidvalidity=int(dst_uidvalidity), pairs=[])
    count = len(rows)
    allocated = db.one(
        "UPDATE mailboxes SET uidnext = uidnext + ?, highestmodseq = highestmodseq + 1 "
        "WHERE id = ? RETURNING uidnext - ?, highestmodseq",
        (count, dst_mailbox_id, count),
    )
    assert allocated is not None
    first_uid, modseq = allocated
    same_account = src_account == dst_account
    if not (move and same_account):
        # RFC 9208 4.2: COPY/MOVE into an account over quota fails ([OVERQUOTA]).
        _change_usage(db, dst_account, sum(r[7] for r in rows), count, check=True)
    # MESSAGE_COLS: r[4:17] sysflags .. env_references, r[17] integrity (INSERT_MESSAGE's last).
    db.run_many(
        INSERT_MESSAGE,
        [(dst_mailbox_id, first_uid + n, modseq, *r[4:17], *stored_thread_keys(*r[9:17]), r[17])
         for n, r in enumerate(rows)],
    )
    db.touched.add(dst_mailbox_id)
    if move:
        # The blobs move with the messages: their reference counts do not change.
        removed = [(r[2], r[7], r[8]) for r in rows]
        _remove_messages(db, src_mailbox_id, src_account, removed, usage=not same_account)
    else:
        _add_blob_refs(db, _count_blobs(rows, 8))
    return CopyResult(
        uidvalidity=int(dst_uidvalidity), pairs=[(r[2], first_uid + n) for n, r in enumerate(rows)]
    )


# One statement (one snapshot, one round trip; on SQLite it needs no BEGIN): the changed
# messages (kind 0), the vanished UIDs (kind 1) and the mailbox's HIGHESTMODSEQ (kind 2).
_CHANGES_SINCE = (
    f"SELECT 0, {FLAG_COLS} FROM messages WHERE mailbox_id = ? AND modseq > ? "
    "UNION ALL SELECT 1, uid, 0, 0, '' FROM vanished WHERE mailbox_id = ? AND modseq > ? "
    "UNION ALL SELECT 2, highestmodseq, 0, 0, '' FROM mailboxes WHERE id = ? "
    "ORDER BY 1, 2"
)


def changes_since(db: Db, mailbox_id: int, modseq: int) -> Changes:
    rows = db.rows(_CHANGES_SINCE, (mailbox_id, modseq, mailbox_id, modseq, mailbox_id))
    if not rows or rows[-1][0] != 2:
        raise NotFound(f"no mailbox with id {mailbox_id}")
    highestmodseq = rows.pop()[1]
    changed = [r[1:] for r in rows if r[0] == 0]
    return Changes(
        changed=_flag_states(changed),
        vanished=[r[1] for r in rows[len(changed):]],
        highestmodseq=int(highestmodseq),
    )


def blob_unused(db: Db, blob_id: str) -> bool:
    refs = db.value("SELECT refs FROM blobs WHERE blob_id = ?", (blob_id,))
    return refs is None or refs <= 0


def blob_ids_after(db: Db, after: str, limit: int) -> list[str]:
    rows = db.rows(
        "SELECT blob_id FROM blobs WHERE blob_id > ? AND refs > 0 ORDER BY blob_id LIMIT ?",
        (after, limit),
    )
    return [r[0] for r in rows]


def reap_blobs(db: Db, limit: int) -> list[str]:
    rows = db.rows(
        f"SELECT blob_id FROM blobs WHERE refs = 0 ORDER BY blob_id LIMIT ?{db.for_update}",
        (limit,),
    )
    unused = [r[0] for r in rows]
    db.run_many("DELETE FROM blobs WHERE blob_id = ? AND refs = 0", [(b,) for b in unused])
    return unused
