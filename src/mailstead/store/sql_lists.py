"""SQL operations on the allow/block lists of senders (``op(db, ...)``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from mailstead.core.errors import Conflict, InvalidInput, NotFound
from mailstead.store.interfaces import ListEntry
from mailstead.store.sql_base import Db, Row, _now, from_micros

# ---------------------------------------------------------------------------------------------
# Allow and block lists

Scope = Literal["user", "domain"]

_COLS = (
    "l.id, CASE WHEN l.account_id IS NULL THEN 'domain' ELSE 'user' END, "
    "COALESCE(a.address, d.name), l.kind, l.pattern, l.action, l.created "
    "FROM sender_lists l LEFT JOIN accounts a ON a.id = l.account_id "
    "LEFT JOIN domains d ON d.id = l.domain_id"
)


def _entry(row: Row) -> ListEntry:
    return ListEntry(id=int(row[0]), scope=row[1], owner=row[2], kind=row[3], pattern=row[4],
                     action=row[5], created=from_micros(row[6]))


def _owner(db: Db, scope: Scope, owner: str) -> tuple[str, int]:
    if scope == "user":
        found = db.value("SELECT id FROM accounts WHERE address = ?", (owner.lower(),))
        column = "account_id"
    else:
        found = db.value("SELECT id FROM domains WHERE name = ?", (owner.lower(),))
        column = "domain_id"
    if found is None:
        raise NotFound(f"no {'account' if scope == 'user' else 'domain'} {owner}")
    return column, int(found)


def list_entries(db: Db, scope: Scope, owner: str) -> list[ListEntry]:
    column, owner_id = _owner(db, scope, owner)
    return [_entry(r) for r in db.rows(f"SELECT {_COLS} WHERE l.{column} = ? ORDER BY l.id",
                                       (owner_id,))]


def add_list_entry(db: Db, scope: Scope, owner: str, kind: str, pattern: str, action: str,
                   max_entries: int) -> ListEntry:
    column, owner_id = _owner(db, scope, owner)
    if db.for_update:  # PostgreSQL: one writer per owner at a time, so the cap holds
        table = "accounts" if column == "account_id" else "domains"
        db.rows(f"SELECT id FROM {table} WHERE id = ? {db.for_update}", (owner_id,))
    held = db.rows(f"SELECT kind, pattern FROM sender_lists WHERE {column} = ?", (owner_id,))
    if (kind, pattern) in {(k, p) for k, p in held}:
        raise Conflict(f"{pattern} is on the {kind} list already")
    if len(held) >= max_entries:
        raise InvalidInput(f"the lists of {owner} hold {len(held)} entries, the most allowed "
                           f"(lists.max_entries = {max_entries})")
    params: list[Any] = [owner_id, kind, pattern, action, _now()]
    row = db.one(f"INSERT INTO sender_lists ({column}, kind, pattern, action, created) "
                 "VALUES (?, ?, ?, ?, ?) RETURNING id", params)
    assert row is not None
    _bump(db)
    found = db.one(f"SELECT {_COLS} WHERE l.id = ?", (row[0],))
    assert found is not None
    return _entry(found)


def remove_list_entry(db: Db, scope: Scope, owner: str, kind: str, pattern: str) -> int:
    column, owner_id = _owner(db, scope, owner)
    removed = db.run(f"DELETE FROM sender_lists WHERE {column} = ? AND kind = ? AND "
                     "pattern = ?", (owner_id, kind, pattern))
    if removed:
        _bump(db)
    return removed


def lists_version(db: Db) -> int:
    return int(db.value("SELECT version FROM sender_lists_version WHERE id = 1") or 0)


def _bump(db: Db) -> None:
    db.run("UPDATE sender_lists_version SET version = version + 1 WHERE id = 1")


def entries_for_accounts(db: Db, account_ids: Sequence[int]) -> dict[int, list[ListEntry]]:
    """Each account's own entries and its domain's, in one query."""
    if not account_ids:
        return {}
    marks = ", ".join("?" for _ in account_ids)
    rows = db.rows(
        f"SELECT r.id, {_COLS} JOIN accounts r ON (r.id = l.account_id OR "
        f"(l.domain_id IS NOT NULL AND r.domain_id = l.domain_id)) WHERE r.id IN ({marks}) "
        "ORDER BY l.id", list(account_ids))
    found: dict[int, list[ListEntry]] = {i: [] for i in account_ids}
    for row in rows:
        found[int(row[0])].append(_entry(row[1:]))
    return found
