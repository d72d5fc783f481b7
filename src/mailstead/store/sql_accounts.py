"""SQL operations on domains, accounts and aliases (plain functions ``op(db, ...)``)."""

from __future__ import annotations

from typing import Any

from mailstead.core.errors import Conflict, NotFound
from mailstead.store.interfaces import (
    DEFAULT_MAILBOXES,
    Account,
    Alias,
    Domain,
)
from mailstead.store.sql_base import (
    ACCOUNT_COLS,
    DOMAIN_COLS,
    Db,
    _account,
    _domain,
    _domain_of,
    _now,
)
from mailstead.store.sql_mailboxes import (
    _drop_mailbox,
    _subscribe,
    create_mailbox,
)

# ---------------------------------------------------------------------------------------------
# Domains


def add_domain(db: Db, name: str) -> Domain:
    name = name.lower()
    try:
        row = db.one(
            f"INSERT INTO domains (name, created) VALUES (?, ?) RETURNING {DOMAIN_COLS}",
            (name, _now()),
        )
    except Conflict:
        raise Conflict(f"domain {name} exists already") from None
    assert row is not None
    return _domain(row)


def get_domain(db: Db, name: str) -> Domain | None:
    row = db.one(f"SELECT {DOMAIN_COLS} FROM domains WHERE name = ?", (name.lower(),))
    return None if row is None else _domain(row)


def list_domains(db: Db) -> list[Domain]:
    # Sorted here, not by ORDER BY: PostgreSQL collations would order names differently.
    return sorted(
        (_domain(r) for r in db.rows(f"SELECT {DOMAIN_COLS} FROM domains")), key=lambda d: d.name
    )


def _domain_id(db: Db, name: str) -> int:
    domain_id = db.value("SELECT id FROM domains WHERE name = ?", (name.lower(),))
    if domain_id is None:
        raise NotFound(f"no domain {name}")
    return int(domain_id)


def remove_domain(db: Db, name: str) -> None:
    domain_id = _domain_id(db, name)
    if db.value("SELECT 1 FROM accounts WHERE domain_id = ? LIMIT 1", (domain_id,)):
        raise Conflict(f"domain {name} still has accounts")
    if db.value("SELECT 1 FROM aliases WHERE domain_id = ? LIMIT 1", (domain_id,)):
        raise Conflict(f"domain {name} still has aliases")
    db.run("DELETE FROM domains WHERE id = ?", (domain_id,))


# ---------------------------------------------------------------------------------------------
# Accounts


def add_account(
    db: Db,
    address: str,
    password_hash: str,
    quota_bytes: int,
    quota_messages: int,
    is_admin: bool,
) -> Account:
    address = address.lower()
    domain_id = _domain_id(db, _domain_of(address))
    try:
        account_id = db.value(
            "INSERT INTO accounts (address, domain_id, password_hash, quota_bytes, "
            "quota_messages, is_admin, created) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (address, domain_id, password_hash, quota_bytes, quota_messages, is_admin, _now()),
        )
    except Conflict:
        raise Conflict(f"account {address} exists already") from None
    for name, special_use in DEFAULT_MAILBOXES:
        create_mailbox(db, account_id, name, special_use)
    # A new account's folders start subscribed, for clients that show only subscribed ones.
    _subscribe(db, account_id, [name for name, _use in DEFAULT_MAILBOXES])
    account = get_account_by_id(db, account_id)
    assert account is not None
    return account


def get_account(db: Db, address: str) -> Account | None:
    row = db.one(f"SELECT {ACCOUNT_COLS} WHERE a.address = ?", (address.lower(),))
    return None if row is None else _account(row)


def get_account_by_id(db: Db, account_id: int) -> Account | None:
    row = db.one(f"SELECT {ACCOUNT_COLS} WHERE a.id = ?", (account_id,))
    return None if row is None else _account(row)


def list_accounts(db: Db, domain: str | None) -> list[Account]:
    if domain is None:
        rows = db.rows(f"SELECT {ACCOUNT_COLS}")
    else:
        rows = db.rows(f"SELECT {ACCOUNT_COLS} WHERE d.name = ?", (domain.lower(),))
    return sorted((_account(r) for r in rows), key=lambda a: a.address)


def _account_id(db: Db, address: str) -> int:
    account_id = db.value("SELECT id FROM accounts WHERE address = ?", (address.lower(),))
    if account_id is None:
        raise NotFound(f"no account {address}")
    return int(account_id)


def set_password(db: Db, address: str, password_hash: str) -> None:
    db.run(
        "UPDATE accounts SET password_hash = ? WHERE id = ?",
        (password_hash, _account_id(db, address)),
    )


def set_quota(db: Db, address: str, quota_bytes: int, quota_messages: int) -> None:
    db.run(
        "UPDATE accounts SET quota_bytes = ?, quota_messages = ? WHERE id = ?",
        (quota_bytes, quota_messages, _account_id(db, address)),
    )


def remove_account(db: Db, address: str) -> list[str]:
    account_id = _account_id(db, address)
    unused: list[str] = []
    mailbox_ids = [
        r[0]
        for r in db.rows(
            f"SELECT id FROM mailboxes WHERE account_id = ? ORDER BY id{db.for_update}",
            (account_id,),
        )
    ]
    for mailbox_id in mailbox_ids:
        unused += _drop_mailbox(db, mailbox_id, account_id)
    db.run("DELETE FROM accounts WHERE id = ?", (account_id,))
    return sorted(set(unused))


def quota_usage(db: Db, account_id: int) -> tuple[int, int]:
    row = db.one("SELECT used_bytes, used_messages FROM accounts WHERE id = ?", (account_id,))
    if row is None:
        raise NotFound(f"no account with id {account_id}")
    return int(row[0]), int(row[1])


# ---------------------------------------------------------------------------------------------
# Aliases


def add_alias(db: Db, source: str, destination: str) -> Alias:
    source = source.lower()
    domain_id = _domain_id(db, _domain_of(source))
    try:
        db.run(
            "INSERT INTO aliases (source, destination, domain_id) VALUES (?, ?, ?)",
            (source, destination, domain_id),
        )
    except Conflict:
        raise Conflict(f"alias {source} -> {destination} exists already") from None
    return Alias(source=source, destination=destination)


def remove_alias(db: Db, source: str, destination: str | None) -> int:
    source = source.lower()
    if destination is None:
        removed = db.run("DELETE FROM aliases WHERE source = ?", (source,))
    else:
        removed = db.run(
            "DELETE FROM aliases WHERE source = ? AND destination = ?", (source, destination)
        )
    if removed == 0:
        raise NotFound(f"no alias {source}" + (f" -> {destination}" if destination else ""))
    return removed


def list_aliases(db: Db, domain: str | None) -> list[Alias]:
    sql = "SELECT a.source, a.destination FROM aliases a"
    params: tuple[Any, ...] = ()
    if domain is not None:
        sql += " JOIN domains d ON d.id = a.domain_id WHERE d.name = ?"
        params = (domain.lower(),)
    return [Alias(source=s, destination=d) for s, d in sorted(db.rows(sql, params))]


def alias_destinations(db: Db, source: str) -> list[str]:
    rows = db.rows(
        "SELECT destination FROM aliases WHERE source = ? ORDER BY id", (source.lower(),)
    )
    return [r[0] for r in rows]
