"""Store fixtures: the same contract suite runs on SQLite and on PostgreSQL.

``make_store()`` builds a new, unopened store on the test's database (SQLite: one file in the
test's tmp dir; PostgreSQL: a fresh schema ``t_<hex>`` in database ``test``, dropped afterwards),
so a test can open several instances on the same data or reopen after close.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from mailstead.store.changes import ChangeBus
from mailstead.store.postgres import PostgresStore
from mailstead.store.sql import SqlStore
from mailstead.store.sqlite import SqliteStore
from tests.conftest import PG_DSN, pg_available
from tests.store.helpers import StoreMaker


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreMaker]:
    if request.param == "sqlite":
        path = tmp_path / "meta.db"

        def make_sqlite(changes: ChangeBus | None = None) -> SqlStore:
            return SqliteStore(path, changes or ChangeBus())

        yield make_sqlite
        return
    if not pg_available():
        pytest.fail(f"PostgreSQL does not answer at {PG_DSN}: start it, these tests need it")
    schema = f"t_{secrets.token_hex(6)}"

    def make_pg(changes: ChangeBus | None = None) -> SqlStore:
        return PostgresStore(PG_DSN, changes or ChangeBus(), schema=schema)

    yield make_pg
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
async def store(make_store: StoreMaker) -> AsyncIterator[SqlStore]:
    s = make_store()
    await s.open()
    yield s
    await s.close()
