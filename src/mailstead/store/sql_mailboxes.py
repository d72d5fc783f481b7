"""SQL operations on mailboxes: create, rename, delete, subscriptions, status, \\Recent, the
POP3 maildrop lock (plain functions ``op(db, ...)``)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from mailstead.core.errors import Conflict, NotFound
from mailstead.core.feed_ids import access_key_channel, access_keys_channel
from mailstead.store.changes import account_channel
from mailstead.store.interfaces import (
    Mailbox,
    MailboxStatus,
)
from mailstead.store.sql_base import (
    MAILBOX_COLS,
    Db,
    Row,
    _change_usage,
    _mailbox,
    _now,
    _release_blobs,
)

# ---------------------------------------------------------------------------------------------
# Mailboxes


def list_mailboxes(db: Db, account_id: int) -> list[Mailbox]:
    rows = db.rows(f"SELECT {MAILBOX_COLS} FROM mailboxes WHERE account_id = ?", (account_id,))
    return sorted((_mailbox(r) for r in rows), key=lambda m: m.name)


def get_mailbox(db: Db, account_id: int, name: str) -> Mailbox | None:
    row = db.one(
        f"SELECT {MAILBOX_COLS} FROM mailboxes WHERE account_id = ? AND name = ?",
        (account_id, name),
    )
    return None if row is None else _mailbox(row)


def get_mailbox_by_id(db: Db, mailbox_id: int) -> Mailbox | None:
    row = db.one(f"SELECT {MAILBOX_COLS} FROM mailboxes WHERE id = ?", (mailbox_id,))
    return None if row is None else _mailbox(row)


def _new_uidvalidity(db: Db) -> int:
    """Epoch seconds, but always above the last one handed out: a mailbox deleted and created
    again gets a new UIDVALIDITY even within the same second (RFC 3501 2.3.1.1)."""
    now = int(time.time())
    return int(
        db.value(
            "UPDATE counters SET value = CASE WHEN value + 1 > ? THEN value + 1 ELSE ? END "
            "WHERE name = 'uidvalidity' RETURNING value",
            (now, now),
        )
    )


def create_mailbox(db: Db, account_id: int, name: str, special_use: str | None) -> Mailbox:
    """A new mailbox is not subscribed: subscriptions are the user's own list, changed only by
    SUBSCRIBE and UNSUBSCRIBE (RFC 3501 6.3.6, 6.3.3: CREATE does not subscribe)."""
    uidvalidity = _new_uidvalidity(db)
    try:
        row = db.one(
            "INSERT INTO mailboxes (account_id, name, special_use, uidvalidity) "
            f"VALUES (?, ?, ?, ?) RETURNING {MAILBOX_COLS}",
            (account_id, name, special_use, uidvalidity),
        )
    except Conflict:
        raise Conflict(f"mailbox {name} exists already") from None
    except NotFound:
        raise NotFound(f"no account with id {account_id}") from None
    assert row is not None
    db.touched.add(row[0])
    db.touched.add(account_channel(account_id))
    return _mailbox(row)


def _subscribe(db: Db, account_id: int, names: Iterable[str]) -> None:
    db.run_many(
        "INSERT INTO subscriptions (account_id, name) VALUES (?, ?) ON CONFLICT DO NOTHING",
        [(account_id, name) for name in names],
    )


def _mailbox_id(db: Db, account_id: int, name: str) -> int:
    mailbox_id = db.value(
        f"SELECT id FROM mailboxes WHERE account_id = ? AND name = ?{db.for_update}",
        (account_id, name),
    )
    if mailbox_id is None:
        raise NotFound(f"no mailbox {name}")
    return int(mailbox_id)


def rename_mailbox(db: Db, account_id: int, old: str, new: str) -> None:
    mailbox_id = _mailbox_id(db, account_id, old)
    if old == new:
        return
    prefix = old + "/"
    children = db.rows(
        "SELECT id, name FROM mailboxes WHERE account_id = ? AND substr(name, 1, ?) = ? "
        f"ORDER BY id{db.for_update}",
        (account_id, len(prefix), prefix),
    )
    renames = [(new, mailbox_id)] + [(new + "/" + name[len(prefix) :], i) for i, name in children]
    try:
        db.run_many("UPDATE mailboxes SET name = ? WHERE id = ?", renames)
    except Conflict:
        raise Conflict(f"mailbox {new} exists already") from None
    # A renamed mailbox keeps its subscription under the new name (as users of a client that
    # renames a folder expect), and the old name is no longer subscribed.
    old_names = [old] + [name for _, name in children]
    db.run_many(
        "INSERT INTO subscriptions (account_id, name) SELECT account_id, ? FROM subscriptions "
        "WHERE account_id = ? AND name = ? ON CONFLICT DO NOTHING",
        [(name, account_id, was) for (name, _), was in zip(renames, old_names, strict=True)],
    )
    db.run_many("DELETE FROM subscriptions WHERE account_id = ? AND name = ?",
                [(account_id, name) for name in old_names])
    db.touched.update(i for _, i in renames)
    db.touched.add(account_channel(account_id))


def _drop_mailbox(db: Db, mailbox_id: int, account_id: int) -> list[str]:
    """Deletes one mailbox with its messages; returns the blobs no longer used."""
    rows = db.rows(
        "SELECT blob_id, COUNT(*), SUM(size) FROM messages WHERE mailbox_id = ? GROUP BY blob_id",
        (mailbox_id,),
    )
    counts = {r[0]: int(r[1]) for r in rows}
    total_size = sum(int(r[2]) for r in rows)
    db.run("DELETE FROM messages WHERE mailbox_id = ?", (mailbox_id,))
    db.run("DELETE FROM vanished WHERE mailbox_id = ?", (mailbox_id,))
    db.run("DELETE FROM mailboxes WHERE id = ?", (mailbox_id,))
    if counts:
        _change_usage(db, account_id, -total_size, -sum(counts.values()), check=False)
    db.touched.add(mailbox_id)
    return _release_blobs(db, counts, forget=True)


def delete_mailbox(db: Db, account_id: int, name: str) -> list[str]:
    db.touched.add(account_channel(account_id))
    return _drop_mailbox(db, _mailbox_id(db, account_id, name), account_id)


def set_subscribed(db: Db, account_id: int, name: str, subscribed: bool) -> None:
    """Subscribing needs the mailbox to exist; unsubscribing a name whose mailbox is gone
    works (else a client could never drop it, RFC 9051 6.3.8)."""
    if subscribed:
        _mailbox_id(db, account_id, name)
        _subscribe(db, account_id, [name])
    else:
        db.run("DELETE FROM subscriptions WHERE account_id = ? AND name = ?", (account_id, name))
    db.touched.add(account_channel(account_id))


def list_subscriptions(db: Db, account_id: int) -> list[str]:
    rows = db.rows("SELECT name FROM subscriptions WHERE account_id = ? ORDER BY name",
                   (account_id,))
    return [r[0] for r in rows]


# One statement, so two nodes asking at once cannot both win: the row is inserted, or taken
# over when it is ours or its lease has run out; no row back means someone else holds it.
LOCK_MAILDROP = (
    "INSERT INTO maildrop_locks (mailbox_id, owner, expires) VALUES (?, ?, ?) "
    "ON CONFLICT (mailbox_id) DO UPDATE SET owner = excluded.owner, expires = excluded.expires "
    "WHERE maildrop_locks.owner = excluded.owner OR maildrop_locks.expires <= ? "
    "RETURNING owner"
)


def lock_maildrop(db: Db, mailbox_id: int, owner: str, lease_seconds: float) -> bool:
    now = _now()
    expires = now + int(lease_seconds * 1_000_000)
    return db.one(LOCK_MAILDROP, (mailbox_id, owner, expires, now)) is not None


def unlock_maildrop(db: Db, mailbox_id: int, owner: str) -> None:
    db.run("DELETE FROM maildrop_locks WHERE mailbox_id = ? AND owner = ?", (mailbox_id, owner))


# -- the learning spam filter (spam/) --

SPAM_TOKEN_CHUNK = 500  # tokens per IN (...) list: far below either backend's parameter cap
ADD_SPAM_TOKEN = (
    "INSERT INTO spam_tokens (account_id, token, spam, ham) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (account_id, token) DO UPDATE SET spam = spam_tokens.spam + excluded.spam, "
    "ham = spam_tokens.ham + excluded.ham"
)


def spam_totals(db: Db, account_id: int) -> tuple[int, int]:
    """(spam, good) messages the account has trained."""
    rows = db.rows("SELECT is_spam, COUNT(*) FROM spam_trained WHERE account_id = ? "
                   "GROUP BY is_spam", (account_id,))
    counts = {bool(is_spam): int(n) for is_spam, n in rows}
    return counts.get(True, 0), counts.get(False, 0)


def spam_token_counts(db: Db, account_id: int, tokens: Sequence[int]
                      ) -> dict[int, tuple[int, int]]:
    """(spam, good) counts of those ``tokens`` the account has seen."""
    found: dict[int, tuple[int, int]] = {}
    for start in range(0, len(tokens), SPAM_TOKEN_CHUNK):
        chunk = tokens[start : start + SPAM_TOKEN_CHUNK]
        marks = ", ".join("?" * len(chunk))
        for token, spam, ham in db.rows(
                f"SELECT token, spam, ham FROM spam_tokens WHERE account_id = ? "
                f"AND token IN ({marks})", (account_id, *chunk)):
            found[int(token)] = (int(spam), int(ham))
    return found


def train_spam(db: Db, account_id: int, message: str, tokens: Sequence[int],
               is_spam: bool) -> bool:
    """Counts ``message`` (its tokens) as spam or good for the account; one trained before
    in the other class moves over. False when it was trained so already (nothing changes)."""
    before = db.value(f"SELECT is_spam FROM spam_trained WHERE account_id = ? AND message = ?"
                      f"{db.for_update}", (account_id, message))
    if before is not None and bool(before) == is_spam:
        return False
    if before is not None:
        db.run("UPDATE spam_trained SET is_spam = ? WHERE account_id = ? AND message = ?",
               (is_spam, account_id, message))
    else:
        db.run("INSERT INTO spam_trained (account_id, message, is_spam) VALUES (?, ?, ?)",
               (account_id, message, is_spam))
    spam, ham = (1, 0) if is_spam else (0, 1)
    if before is not None:  # take it out of the class it was in
        spam, ham = (1, -1) if is_spam else (-1, 1)
    # In token order, so two writers on PostgreSQL lock the rows in the same order.
    db.run_many(ADD_SPAM_TOKEN, [(account_id, t, spam, ham) for t in sorted(set(tokens))])
    if before is not None:
        db.run("DELETE FROM spam_tokens WHERE account_id = ? AND spam <= 0 AND ham <= 0",
               (account_id,))
    return True


def mailbox_status(db: Db, mailbox_id: int) -> MailboxStatus:
    box = db.one(
        "SELECT uidnext, uidvalidity, highestmodseq, first_recent_uid FROM mailboxes WHERE id = ?",
        (mailbox_id,),
    )
    if box is None:
        raise NotFound(f"no mailbox with id {mailbox_id}")
    uidnext, uidvalidity, highestmodseq, first_recent = box
    row = db.one(
        "SELECT COUNT(*), "
        "COALESCE(SUM(CASE WHEN sysflags & 1 = 0 THEN 1 ELSE 0 END), 0), "
        "COALESCE(SUM(CASE WHEN uid >= ? THEN 1 ELSE 0 END), 0), "
        "COALESCE(SUM(size), 0), "
        "COALESCE(SUM(CASE WHEN sysflags & 8 <> 0 THEN 1 ELSE 0 END), 0), "
        "COALESCE(SUM(CASE WHEN sysflags & 8 <> 0 THEN size ELSE 0 END), 0) "
        "FROM messages WHERE mailbox_id = ?",
        (first_recent, mailbox_id),
    )
    assert row is not None
    messages, unseen, recent, size, deleted, deleted_size = (int(v) for v in row)
    return MailboxStatus(
        messages=messages,
        unseen=unseen,
        recent=recent,
        size=size,
        uidnext=uidnext,
        uidvalidity=uidvalidity,
        highestmodseq=highestmodseq,
        deleted=deleted,
        deleted_size=deleted_size,
    )


def _lock_mailbox(db: Db, mailbox_id: int) -> Row:
    """(account_id, uidvalidity, highestmodseq, uidnext, first_recent_uid), row-locked."""
    row = db.one(
        "SELECT account_id, uidvalidity, highestmodseq, uidnext, first_recent_uid "
        f"FROM mailboxes WHERE id = ?{db.for_update}",
        (mailbox_id,),
    )
    if row is None:
        raise NotFound(f"no mailbox with id {mailbox_id}")
    return row


def claim_recent(db: Db, mailbox_id: int) -> int:
    first_recent = _lock_mailbox(db, mailbox_id)[4]
    db.run("UPDATE mailboxes SET first_recent_uid = uidnext WHERE id = ?", (mailbox_id,))
    return int(first_recent)


def first_recent_uid(db: Db, mailbox_id: int) -> int:
    """The first UID nobody has claimed as \\Recent yet (0 for no such mailbox)."""
    value = db.value("SELECT first_recent_uid FROM mailboxes WHERE id = ?", (mailbox_id,))
    return 0 if value is None else int(value)


def _next_modseq(db: Db, mailbox_id: int) -> int:
    """One new MODSEQ for everything an operation changes in the mailbox (RFC 7162 3.1: it
    only has to be greater than every earlier one)."""
    return int(
        db.value(
            "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = ? "
            "RETURNING highestmodseq",
            (mailbox_id,),
        )
    )


def mailbox_access_key(db: Db, mailbox_id: int, new_key: str | None) -> str | None:
    """The mailbox's URLAUTH access key (RFC 4467 2.2, hex); with ``new_key`` one is stored
    first when there is none (two sessions asking at once get the same key)."""
    if new_key is not None:
        db.run(
            "INSERT INTO mailbox_access_keys (mailbox_id, account_id, access_key) "
            "SELECT id, account_id, ? FROM mailboxes WHERE id = ? ON CONFLICT DO NOTHING",
            (new_key, mailbox_id),
        )
    value = db.value("SELECT access_key FROM mailbox_access_keys WHERE mailbox_id = ?",
                     (mailbox_id,))
    return None if value is None else str(value)


def reset_access_keys(db: Db, account_id: int, mailbox_id: int | None) -> None:
    """RESETKEY (RFC 4467 7): forgets the keys of one mailbox or of all the account's. The
    change feed tells the sessions that have such a mailbox selected (RFC 4467 7.1: they get
    an untagged URLMECH), and wakes them (the mailbox ids) should they be idling."""
    if mailbox_id is None:
        db.run("DELETE FROM mailbox_access_keys WHERE account_id = ?", (account_id,))
        db.touched.add(access_keys_channel(account_id))
        db.touched.update(row[0] for row in db.rows(
            "SELECT id FROM mailboxes WHERE account_id = ?", (account_id,)))
    else:
        db.run("DELETE FROM mailbox_access_keys WHERE account_id = ? AND mailbox_id = ?",
               (account_id, mailbox_id))
        db.touched.update((access_key_channel(mailbox_id), mailbox_id))
