"""``mailstead init`` on PostgreSQL: its own schema (--pg-schema), never another application's
tables without being told, and a second node's data directory joining the same store."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.cli.test_cli import err, ok
from tests.conftest import PG_DSN, pg_available


@pytest.fixture
def schemas() -> Iterator[list[str]]:
    if not pg_available():
        pytest.fail(f"PostgreSQL does not answer at {PG_DSN}")
    made: list[str] = []
    yield made
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        for name in made:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def test_init_into_its_own_schema_then_a_second_node_joins(
        tmp_path: Path, schemas: list[str]) -> None:
    schema = f"i_{secrets.token_hex(5)}"
    schemas.append(schema)
    first, second = tmp_path / "node1", tmp_path / "node2"
    ok(first, "init", "--store-url", PG_DSN, "--pg-schema", schema,
       "--hostname", "mx1.example.test", "--domain", "example.test")
    with psycopg.connect(PG_DSN) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,))}
    assert {"schema_version", "accounts", "dkim_keys"} <= tables
    out = ok(second, "init", "--store-url", PG_DSN, "--pg-schema", schema,
             "--hostname", "mx2.example.test", "--no-demo")
    assert f"joining the mailstead store in PostgreSQL schema '{schema}'" in out
    domains = json.loads(ok(second, "domain", "list", "--json"))
    assert [d["name"] for d in domains] == ["example.test"]


def test_init_refuses_a_schema_of_another_application(
        tmp_path: Path, schemas: list[str]) -> None:
    schema = f"f_{secrets.token_hex(5)}"
    schemas.append(schema)
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".invoices (id INT PRIMARY KEY)')
    line = err(tmp_path / "var", "init", "--store-url", PG_DSN, "--pg-schema", schema,
               code=2)
    assert "holds tables that are not mailstead's" in line and "--existing-schema" in line
    with psycopg.connect(PG_DSN) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,))}
    assert tables == {"invoices"}  # nothing written
    assert not (tmp_path / "var" / "mailstead.toml").exists()
    ok(tmp_path / "var", "init", "--store-url", PG_DSN, "--pg-schema", schema,
       "--existing-schema")
