"""Layering (DESIGN.md): every protocol module under proto/ and everything in core/ is pure: no
asyncio, sockets, TLS, threads or store. Protocols reach the world only through small interfaces
(e.g. imap_backend's Protocols, SmtpBackend) and the plain records of core/models.py, so they are
tested with bytes. Services sit below the faces and the composition root: they never import
app.py, wiring.py, the listeners or the web."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mailstead.core
import mailstead.proto
import mailstead.services

MODULES = [
    *sorted(Path(mailstead.proto.__file__).parent.glob("*.py")),
    *sorted(Path(mailstead.core.__file__).parent.glob("*.py")),
]
FORBIDDEN = ("asyncio", "socket", "ssl", "sqlite3", "psycopg", "threading", "mailstead.net",
             "mailstead.services", "mailstead.app", "mailstead.store")
SERVICES = sorted(Path(mailstead.services.__file__).parent.glob("*.py"))
ABOVE_SERVICES = ("mailstead.app", "mailstead.wiring", "mailstead.net", "mailstead.web",
                  "mailstead.cli", "mailstead.client")


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


@pytest.mark.parametrize("path", SERVICES, ids=lambda p: p.name)
def test_services_do_not_reach_up(path: Path) -> None:
    """Imports under TYPE_CHECKING count too: a circle in the types is still a circle."""
    for name in _imports(path):
        assert not name.startswith(ABOVE_SERVICES), f"services/{path.name} imports {name}"
