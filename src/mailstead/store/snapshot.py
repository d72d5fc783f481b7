"""What backups and upgrades ask of the store without opening it as a server does: the schema
version and the migrations still to run, and a consistent online copy of a SQLite store (the
sqlite3 backup API: pages copied under a read transaction, never a file copy that could catch a
half-written page or miss the WAL)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from mailstead.config import Config
from mailstead.store.sql_base import check_not_newer, migration_files, schema_version
from mailstead.store.sql_messages import blob_ids_after
from mailstead.store.sqlite import BUSY_TIMEOUT_MS, SqliteDb


def sqlite_version(path: Path) -> int:
    """The schema version of a SQLite store file (0 when there is none yet)."""
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        return schema_version(SqliteDb(conn))
    finally:
        conn.close()


def postgres_version(url: str, schema: str) -> int:
    import psycopg
    from psycopg import sql

    from mailstead.store.postgres import PgDb

    with psycopg.connect(url, connect_timeout=10) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        return schema_version(PgDb(conn.cursor()))


def current_version(cfg: Config) -> int:
    path = cfg.sqlite_path
    if path is not None:
        return sqlite_version(path)
    return postgres_version(cfg.store.url, cfg.store.pg_schema)


def pending_migrations(cfg: Config) -> tuple[int, list[str]]:
    """(the store's version, the file names of the migrations that would run). Raises
    SchemaError when the store is newer than this binary."""
    current = current_version(cfg)
    check_not_newer(current)
    return current, [name for version, name, _text in migration_files() if version > current]


def backup_sqlite(source: Path, dest: Path) -> None:
    """A consistent copy of a live SQLite store at ``dest`` (fsync'd), taken with the backup
    API while other connections keep writing."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(source, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst)  # all pages in one step: one read transaction, one snapshot
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        finally:
            dst.close()
    finally:
        src.close()
    with dest.open("rb") as fh:
        os.fsync(fh.fileno())


def referenced_blobs(path: Path) -> list[str]:
    """Blob ids a SQLite store file references (to check a backup holds every one)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        db, found, after = SqliteDb(conn), [], ""
        while page := blob_ids_after(db, after, 10_000):
            found += page
            after = page[-1]
        return found
    finally:
        conn.close()
