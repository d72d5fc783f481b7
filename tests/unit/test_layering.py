"""Layering (DESIGN.md): every protocol module under proto/ and everything in core/ is pure: no
asyncio, sockets, TLS, threads or store implementation. Protocols reach the world only through
small interfaces (e.g. imap_backend's Protocols, SmtpBackend), so they are tested with bytes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mailstead.core
import mailstead.proto

MODULES = [
    *sorted(Path(mailstead.proto.__file__).parent.glob("*.py")),
    *sorted(Path(mailstead.core.__file__).parent.glob("*.py")),
]
FORBIDDEN = ("asyncio", "socket", "ssl", "sqlite3", "psycopg", "threading", "mailstead.net",
             "mailstead.services", "mailstead.app")
ALLOWED_STORE = ("mailstead.store.interfaces",)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_is_pure(path: Path) -> None:
    for name in _imports(path):
        assert not name.startswith(FORBIDDEN), f"{path.name} imports {name}"
        if name.startswith("mailstead.store"):
            assert name in ALLOWED_STORE, f"{path.name} imports {name}"
