"""Sieve scripts, the active-script choice and the vacation reply log (migration 0006).

Operations over ``Db`` as in the other sql_* modules; ``SqlStore`` exposes them async.
"""

from __future__ import annotations

from mailstead.core.errors import Conflict, NotFound
from mailstead.store.changes import SETTINGS_CHANGED
from mailstead.store.sql_base import Db, _now


def _changed(db: Db) -> None:
    """Scripts changed: every process and node drops its cache of active scripts when this
    commits (the change feed's SETTINGS_CHANGED; sieve/service.py ``forget``)."""
    db.touched.add(SETTINGS_CHANGED)


def list_sieve_scripts(db: Db, account_id: int) -> list[tuple[str, bool]]:
    """(name, active) of the account's scripts, by name."""
    rows = db.rows("SELECT name, active FROM sieve_scripts WHERE account_id = ? ORDER BY name",
                   (account_id,))
    return [(str(name), bool(active)) for name, active in rows]


def get_sieve_script(db: Db, account_id: int, name: str) -> str | None:
    value = db.value("SELECT script FROM sieve_scripts WHERE account_id = ? AND name = ?",
                     (account_id, name))
    return None if value is None else str(value)


def active_sieve_script(db: Db, account_id: int) -> tuple[str, str] | None:
    """(name, text) of the active script, or None."""
    row = db.one("SELECT name, script FROM sieve_scripts WHERE account_id = ? AND active",
                 (account_id,))
    return None if row is None else (str(row[0]), str(row[1]))


def put_sieve_script(db: Db, account_id: int, name: str, script: str, max_count: int) -> None:
    """Stores or replaces a script; Conflict when a new one would pass ``max_count``."""
    _changed(db)
    exists = db.value(f"SELECT 1 FROM sieve_scripts WHERE account_id = ? AND name = ?"
                      f"{db.for_update}", (account_id, name))
    if exists is not None:
        db.run("UPDATE sieve_scripts SET script = ?, updated = ? WHERE account_id = ? AND "
               "name = ?", (script, _now(), account_id, name))
        return
    count = db.value("SELECT COUNT(*) FROM sieve_scripts WHERE account_id = ?", (account_id,))
    if max_count and int(count or 0) >= max_count:
        raise Conflict(f"at most {max_count} scripts per user")
    db.run("INSERT INTO sieve_scripts (account_id, name, script, active, updated) "
           "VALUES (?, ?, ?, ?, ?)", (account_id, name, script, False, _now()))


def set_active_sieve_script(db: Db, account_id: int, name: str) -> None:
    """Makes ``name`` the active script; "" deactivates all (RFC 5804 2.8)."""
    _changed(db)
    if name and db.value("SELECT 1 FROM sieve_scripts WHERE account_id = ? AND name = ?",
                         (account_id, name)) is None:
        raise NotFound(f"no script {name!r}")
    db.run("UPDATE sieve_scripts SET active = ? WHERE account_id = ? AND active",
           (False, account_id))
    if name:
        db.run("UPDATE sieve_scripts SET active = ? WHERE account_id = ? AND name = ?",
               (True, account_id, name))


def delete_sieve_script(db: Db, account_id: int, name: str) -> None:
    """NotFound when missing; Conflict when active (RFC 5804 2.10)."""
    _changed(db)
    active = db.value("SELECT active FROM sieve_scripts WHERE account_id = ? AND name = ?",
                      (account_id, name))
    if active is None:
        raise NotFound(f"no script {name!r}")
    if active:
        raise Conflict("the active script cannot be deleted")
    db.run("DELETE FROM sieve_scripts WHERE account_id = ? AND name = ?", (account_id, name))


def rename_sieve_script(db: Db, account_id: int, old: str, new: str) -> None:
    _changed(db)
    if db.value("SELECT 1 FROM sieve_scripts WHERE account_id = ? AND name = ?",
                (account_id, old)) is None:
        raise NotFound(f"no script {old!r}")
    if db.value("SELECT 1 FROM sieve_scripts WHERE account_id = ? AND name = ?",
                (account_id, new)) is not None:
        raise Conflict(f"a script {new!r} exists")
    db.run("UPDATE sieve_scripts SET name = ?, updated = ? WHERE account_id = ? AND name = ?",
           (new, _now(), account_id, old))


def get_global_sieve_script(db: Db, name: str) -> str | None:
    value = db.value("SELECT script FROM sieve_global_scripts WHERE name = ?", (name,))
    return None if value is None else str(value)


def list_global_sieve_scripts(db: Db) -> list[str]:
    return [str(r[0]) for r in db.rows("SELECT name FROM sieve_global_scripts ORDER BY name")]


def delete_global_sieve_script(db: Db, name: str) -> None:
    _changed(db)
    if db.value("SELECT 1 FROM sieve_global_scripts WHERE name = ?", (name,)) is None:
        raise NotFound(f"no global script {name!r}")
    db.run("DELETE FROM sieve_global_scripts WHERE name = ?", (name,))


def put_global_sieve_script(db: Db, name: str, script: str) -> None:
    _changed(db)
    db.run("DELETE FROM sieve_global_scripts WHERE name = ?", (name,))
    db.run("INSERT INTO sieve_global_scripts (name, script, updated) VALUES (?, ?, ?)",
           (name, script, _now()))


def note_vacation_reply(db: Db, account_id: int, sender: str, handle: str, now: int,
                        until: int) -> bool:
    """True (and the reply is recorded until ``until``) when no reply to ``sender`` with
    ``handle`` was recorded that is still in force at ``now`` (RFC 5230 4.1)."""
    found = db.value(f"SELECT until FROM vacation_replies WHERE account_id = ? AND sender = ? "
                     f"AND handle = ?{db.for_update}", (account_id, sender, handle))
    if found is not None and int(found) > now:
        return False
    if found is not None:
        db.run("UPDATE vacation_replies SET until = ? WHERE account_id = ? AND sender = ? AND "
               "handle = ?", (until, account_id, sender, handle))
    elif not db.run("INSERT INTO vacation_replies (account_id, sender, handle, until) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (account_id, sender, handle) DO NOTHING",
                    (account_id, sender, handle, until)):
        return False  # another node answered this sender just now
    if found is None and now % 64 == 0:  # now and then, forget replies long out of force
        db.run("DELETE FROM vacation_replies WHERE account_id = ? AND until < ?",
               (account_id, now))
    return True
