"""Secrets every node of a site must agree on, kept in the store (``shared_secrets``) rather
than in each node's data directory: the web session and API token key, the DMAP RSA key.

The first node to need one makes it (or moves in the file an earlier version kept) with a
write only the first node wins; every node then reads that one value. So sessions, API tokens
and DMAP clients' pinned key work on whichever node a load balancer picks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from mailstead.obs import log_event
from mailstead.store.interfaces import MetadataStore

WEB_SESSION = "web.session_key"
DMAP_KEY = "dmap.rsa_key"


def _read_file(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


async def shared_secret(store: MetadataStore, name: str, make: Callable[[], str],
                        earlier_file: Path | None = None) -> str:
    """The secret called ``name``: from the store; else the content of ``earlier_file``
    (where an earlier version kept it), else ``make()``: stored, first writer wins."""
    found = await store.get_secret(name)
    if found is not None:
        return found
    value = await asyncio.to_thread(_read_file, earlier_file)
    origin = "moved" if value is not None else "created"
    if value is None:
        value = await asyncio.to_thread(make)
    stored = await store.put_secret(name, value)
    if stored == value:  # made once per site: worth a line only when moved from a file
        log_event("secret." + origin, logging.INFO if origin == "moved" else logging.DEBUG,
                  name=name)
    return stored
