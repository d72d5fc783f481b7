"""SQL operations on the state all nodes share: DKIM keys and named secrets (plain functions
``op(db, ...)``). Each "create if missing" is one INSERT ... ON CONFLICT DO NOTHING, so two
nodes doing it at once agree on one winner, which both then read."""

from __future__ import annotations

from mailstead.core.models import DkimKey, DkimKeySet
from mailstead.store.sql_base import Db, _now, from_micros


def dkim_keys(db: Db, domain: str) -> DkimKeySet | None:
    active = db.value("SELECT active FROM dkim_domains WHERE domain = ?", (domain,))
    if active is None:
        return None
    rows = db.rows("SELECT selector, rsa_pem, ed25519_pem, created FROM dkim_keys "
                   "WHERE domain = ? ORDER BY created, selector", (domain,))
    keys = tuple(DkimKey(r[0], r[1], r[2], from_micros(r[3])) for r in rows)
    return DkimKeySet(domain, str(active), keys)


def add_dkim_keys(db: Db, domain: str, keys: list[DkimKey], active: str,
                  only_if_none: bool) -> bool:
    """Stores ``keys`` with ``active`` signing. ``only_if_none``: only when the domain has no
    keys yet (False, and nothing written, when another node was first)."""
    if only_if_none:
        row = db.one("INSERT INTO dkim_domains (domain, active) VALUES (?, ?) "
                     "ON CONFLICT (domain) DO NOTHING RETURNING domain", (domain, active))
        if row is None:
            return False
    else:
        db.run("INSERT INTO dkim_domains (domain, active) VALUES (?, ?) "
               "ON CONFLICT (domain) DO UPDATE SET active = excluded.active", (domain, active))
    for key in keys:
        db.run("INSERT INTO dkim_keys (domain, selector, rsa_pem, ed25519_pem, created) "
               "VALUES (?, ?, ?, ?, ?) ON CONFLICT (domain, selector) DO NOTHING",
               (domain, key.selector, key.rsa_pem, key.ed25519_pem, _now()))
    return True


def remove_dkim_selector(db: Db, domain: str, selector: str) -> None:
    active = db.value("SELECT active FROM dkim_domains WHERE domain = ?", (domain,))
    if db.value("SELECT 1 FROM dkim_keys WHERE domain = ? AND selector = ?",
                (domain, selector)) is None:
        raise KeyError(f"{domain} has no DKIM selector {selector!r}")
    if selector == active:
        raise ValueError(f"{selector} is the active selector of {domain}: rotate first")
    db.run("DELETE FROM dkim_keys WHERE domain = ? AND selector = ?", (domain, selector))


def get_secret(db: Db, name: str) -> str | None:
    value = db.value("SELECT value FROM shared_secrets WHERE name = ?", (name,))
    return None if value is None else str(value)


def put_secret(db: Db, name: str, value: str, replace: bool) -> str:
    """Stores the secret (``replace``: even over an existing one) and returns the value now
    stored: without ``replace``, the first node's value wins and every node gets it."""
    if replace:
        db.run("INSERT INTO shared_secrets (name, value, created) VALUES (?, ?, ?) "
               "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value, _now()))
        return value
    db.run("INSERT INTO shared_secrets (name, value, created) VALUES (?, ?, ?) "
           "ON CONFLICT (name) DO NOTHING", (name, value, _now()))
    stored = db.value("SELECT value FROM shared_secrets WHERE name = ?", (name,))
    return str(stored)


def delete_secret(db: Db, name: str) -> None:
    db.run("DELETE FROM shared_secrets WHERE name = ?", (name,))
