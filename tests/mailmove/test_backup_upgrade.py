"""`mailstead backup` / `restore` while mail arrives, and safe schema upgrades: `migrate
--dry-run`, the store copy `serve` takes before migrating, refusal of a newer schema, and a
failing migration that leaves the old schema as it was (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import secrets
import smtplib
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from mailstead import bootstrap
from mailstead.config import Config, deep_merge, load_config
from mailstead.mailmove.backup import backup_before_upgrade
from mailstead.store.changes import ChangeBus
from mailstead.store.snapshot import sqlite_version
from mailstead.store.sql_base import EXTRA_MIGRATIONS_ENV, apply_migrations, known_version
from mailstead.store.sqlite import SqliteDb
from tests.conftest import (
    DOMAIN,
    PG_DSN,
    RunningServer,
    ServeProcess,
    pg_available,
    run_outside_loop,
)
from tests.conftest import test_config_overrides as server_overrides
from tests.mailmove.helpers import imap, ms, ok

ALICE = f"alice@{DOMAIN}"
BROKEN = ("CREATE TABLE half_done (x INTEGER);\n"
          "ALTER TABLE accounts ADD COLUMN half INTEGER;\n"
          "INSERT INTO no_such_table VALUES (1);\n")


def sender(port: int, acked: list[tuple[float, str]], stop: threading.Event) -> None:
    """Sends until told to stop; records the Message-ID of every message the server took."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        number = 0
        while not stop.is_set():
            mid = f"<m{number}@remote.test>"
            raw = (f"From: carol@remote.test\r\nTo: {ALICE}\r\nSubject: n{number}\r\n"
                   f"Message-ID: {mid}\r\n\r\nbody {number}\r\n").encode()
            if smtp.sendmail("carol@remote.test", [ALICE], raw) == {}:
                acked.append((time.monotonic(), mid))
            number += 1


def message_ids(server: RunningServer) -> set[str]:
    client = imap(server, ALICE)
    client.select_folder("INBOX", readonly=True)
    rows = client.fetch(client.search("ALL"), ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
    client.logout()
    found = set()
    for row in rows.values():
        header = row[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].decode()
        found.add(header.split(":", 1)[1].strip())
    return found


def test_backup_while_smtp_delivers_then_restore(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = make_server()
    acked: list[tuple[float, str]] = []
    stop = threading.Event()
    thread = threading.Thread(target=sender, args=(server.ports["smtp"], acked, stop))
    thread.start()
    try:
        while len(acked) < 20:
            time.sleep(0.05)
            assert thread.is_alive()
        started = time.monotonic()
        out = ok(server.data_dir, "backup", str(tmp_path / "bk"))
        assert "backed up" in out
    finally:
        stop.set()
        thread.join(30)
    before = {mid for when, mid in acked if when <= started}
    assert len(before) >= 20

    restored = tmp_path / "restored"
    ok(restored, "restore", str(tmp_path / "bk"))
    assert sqlite_version(restored / "mailstead.db") == known_version()
    again = make_server(data_dir=restored)
    found = message_ids(again)  # every body is read: a missing or corrupt file would fail
    assert before <= found
    assert found <= {mid for _when, mid in acked}
    assert ok(restored, "check").strip().endswith("0 corrupt, 0 missing")


def test_restore_refuses_a_tampered_backup(mail_server: RunningServer, tmp_path: Path) -> None:
    backup = tmp_path / "bk"
    ok(mail_server.data_dir, "backup", str(backup))
    key = next((backup / "data" / "tls").glob("key.pem"))
    key.write_bytes(key.read_bytes().replace(b"A", b"B", 1))
    proc = ms(tmp_path / "new", "restore", str(backup))
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"mailstead: backup {backup} was tampered with or damaged: "
                                   "data/tls/key.pem does not match its SHA-256")
    assert not (tmp_path / "new").exists()

    clean = tmp_path / "bk2"
    ok(mail_server.data_dir, "backup", str(clean))
    (clean / "data" / "extra.sh").write_text("echo owned\n")
    proc = ms(tmp_path / "new", "restore", str(clean))
    assert proc.returncode == 1
    assert "extra.sh is not in its SHA256SUMS" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_backup_of_a_postgresql_deployment(mail_server: RunningServer, tmp_path: Path) -> None:
    """Files and keys, checked by the manifest; the database is pg_dump's (README)."""
    client = imap(mail_server, ALICE)
    client.append("INBOX", b"Message-ID: <pg@x>\r\nSubject: pg\r\n\r\nkept\r\n")
    client.logout()
    out = ok(mail_server.data_dir, "backup", str(tmp_path / "bk"))
    assert "backed up 1 message files" in out and "pg_dump" in out
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    assert manifest["backend"] == "postgresql" and manifest["store_included"] is False
    ok(tmp_path / "restored", "restore", str(tmp_path / "bk"))
    assert (tmp_path / "restored" / "tls" / "key.pem").read_bytes() == \
        (mail_server.data_dir / "tls" / "key.pem").read_bytes()
    assert len(list((tmp_path / "restored" / "blobs").rglob("*.eml"))) == 1


@pytest.fixture
def data(tmp_path: Path, tls_files: tuple[Path, Path]) -> Path:
    """A data dir (no demo) whose only listener is SMTP on a free loopback port."""
    only_smtp = {"listeners": {name: {"enabled": name == "smtp", "address": "127.0.0.1",
                                      "port": 0} for name in Config().listeners}}
    cfg = bootstrap.build_config(tmp_path / "var", deep_merge(server_overrides(),
                                                              only_smtp))
    run_outside_loop(bootstrap.initialise(cfg, demo_domain=None, cert_from=tls_files))
    return cfg.data_dir


def version_one_store(path: Path) -> None:
    """A store as mailstead's first schema made it, with one account."""
    path.unlink()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    assert apply_migrations(SqliteDb(conn), upto=1) == 1
    conn.execute("INSERT INTO domains (name, created) VALUES ('old.test', 0)")
    conn.execute("INSERT INTO accounts (address, domain_id, password_hash, created) "
                 "VALUES ('kept@old.test', 1, 'x', 0)")
    conn.execute("COMMIT")
    conn.close()


def test_upgrade_from_version_one(data: Path,
                                  serve_process: Callable[..., ServeProcess]) -> None:
    store = data / "mailstead.db"
    version_one_store(store)
    out = ok(data, "migrate", "--dry-run")
    assert "the store is at schema version 1; these migrations would run:" in out
    assert "  0002_subscriptions.sql" in out and "  0005_env_references.sql" in out
    assert sqlite_version(store) == 1  # a dry run changes nothing

    server = serve_process(data, "smtp=127.0.0.1:0")
    server.terminate()
    assert sqlite_version(store) == known_version()
    [copy] = (data / "backups").glob("mailstead-v1-*.sqlite3")
    assert sqlite_version(copy) == 1
    assert "kept@old.test" in ok(data, "user", "list")
    assert "up to date" in ok(data, "migrate", "--dry-run")


def test_upgrade_copies_keep_the_newest(data: Path) -> None:
    cfg = load_config(data)
    made = [backup_before_upgrade(cfg, known_version(), keep=2) for _ in range(4)]
    kept = sorted((data / "backups").glob("*.sqlite3"))
    assert kept == sorted(p for p in made[-2:] if p is not None)
    assert backup_before_upgrade(cfg, known_version(), keep=0) is None


def test_newer_schema_is_refused(data: Path) -> None:
    conn = sqlite3.connect(data / "mailstead.db")
    with conn:
        conn.execute("INSERT INTO schema_version (version, applied) VALUES (999, 0)")
    conn.close()
    line = (f"mailstead: the store's schema is version 999, newer than this mailstead knows "
            f"({known_version()}): run the newer mailstead (or restore a backup)")
    for args in (("serve", "--listen", "smtp=127.0.0.1:0"), ("migrate", "--dry-run")):
        proc = ms(data, *args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == line


def test_failed_migration_leaves_the_schema_intact_sqlite(data: Path, tmp_path: Path) -> None:
    extra = tmp_path / "migrations"
    extra.mkdir()
    (extra / "0099_half.sql").write_text(BROKEN)
    env = {EXTRA_MIGRATIONS_ENV: str(extra)}
    dry = ms(data, "migrate", "--dry-run", env=env)
    assert dry.returncode == 0 and "  0099_half.sql" in dry.stdout
    for args in (("migrate",), ("serve", "--listen", "smtp=127.0.0.1:0")):
        proc = ms(data, *args, env=env)
        assert proc.returncode == 2, proc.stderr
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith("mailstead: migration 0099_half.sql failed (")
        assert line.endswith(f"; the schema stays at version {known_version()}")
    conn = sqlite3.connect(data / "mailstead.db")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    columns = {r[1] for r in conn.execute("PRAGMA table_info(accounts)")}
    conn.close()
    assert "half_done" not in tables and "half" not in columns
    assert sqlite_version(data / "mailstead.db") == known_version()
    assert len(list((data / "backups").glob("*.sqlite3"))) == 2  # one per attempt


async def test_failed_migration_leaves_the_schema_intact_postgresql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not pg_available():
        pytest.fail(f"PostgreSQL does not answer at {PG_DSN}")
    from mailstead.core.errors import SchemaError
    from mailstead.store.postgres import PostgresStore

    schema = f"t_{secrets.token_hex(6)}"
    expected = known_version()
    try:
        store = PostgresStore(PG_DSN, ChangeBus(), schema=schema)
        await store.open()
        await store.close()
        (tmp_path / "0099_half.sql").write_text(BROKEN)
        monkeypatch.setenv(EXTRA_MIGRATIONS_ENV, str(tmp_path))
        with pytest.raises(SchemaError, match=r"migration 0099_half\.sql failed"):
            await PostgresStore(PG_DSN, ChangeBus(), schema=schema).open()
        with psycopg.connect(PG_DSN) as conn:
            version = conn.execute(f'SELECT MAX(version) FROM "{schema}".schema_version'
                                   ).fetchone()
            half = conn.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = %s "
                                "AND table_name = 'half_done'", (schema,)).fetchone()
        assert version == (expected,) and half is None
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
