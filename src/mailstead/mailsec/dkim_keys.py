"""DKIM keys shared by every node through the store: one active selector per domain for the
whole cluster, older selectors still published during a rotation's overlap.

The first node to need a domain's keys makes them (or moves in the key files an earlier version
kept in its data directory) with a write that only the first node wins; every other node reads
the winner's keys, so mail signed through any node verifies against the published selector.
Each node keeps what it read for ``ttl`` seconds: a rotation on one node reaches the others
within that time (and the old selector stays published meanwhile).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from mailstead.core.models import DkimKey, DkimKeySet
from mailstead.mailsec import dkim
from mailstead.obs import log_event
from mailstead.store.interfaces import MetadataStore

KEYS_TTL = 30.0


class DkimKeyring:
    def __init__(self, store: MetadataStore, files_root: Path | None = None,
                 ttl: float = KEYS_TTL) -> None:
        self.store = store
        self.files_root = files_root  # where earlier versions kept keys: moved in once
        self.ttl = ttl
        self._cache: dict[str, tuple[float, DkimKeySet]] = {}

    async def keyset(self, domain: str) -> DkimKeySet:
        """The domain's keys, made (once, cluster-wide) the first time it needs them."""
        domain = domain.lower()
        cached = self._cache.get(domain)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        found = await self.store.dkim_keys(domain)
        if found is None:
            found = await self._first_keys(domain)
        self._cache[domain] = (time.monotonic() + self.ttl, found)
        return found

    async def existing(self, domain: str) -> DkimKeySet | None:
        """The domain's keys if it has some (in the store, or in an earlier version's files,
        which are moved in); never makes new ones."""
        domain = domain.lower()
        found = await self.store.dkim_keys(domain)
        if found is None and await self._move_key_files(domain):
            found = await self.store.dkim_keys(domain)
        return found

    async def _move_key_files(self, domain: str) -> bool:
        if self.files_root is None:
            return False
        old = await asyncio.to_thread(dkim.read_key_files, self.files_root, domain)
        if old is None:
            return False
        active, keys = old
        if await self.store.add_dkim_keys(domain, keys, active, only_if_none=True):
            log_event("dkim.keys_moved_to_store", domain=domain, selectors=len(keys))
        return True

    async def _first_keys(self, domain: str) -> DkimKeySet:
        if not await self._move_key_files(domain):
            key = await asyncio.to_thread(dkim.generate_keys)
            if await self.store.add_dkim_keys(domain, [key], key.selector, only_if_none=True):
                log_event("dkim.keys_created", domain=domain, selector=key.selector)
        found = await self.store.dkim_keys(domain)  # ours, or the node's that was first
        assert found is not None
        return found

    async def signing_key(self, domain: str) -> DkimKey:
        keyset = await self.keyset(domain)
        return keyset.key(keyset.active)

    async def rotate(self, domain: str) -> str:
        """A new key pair becomes the active selector at once (publish its records first);
        the previous ones stay listed (published) until removed."""
        domain = domain.lower()
        await self.keyset(domain)  # earlier keys are kept, never replaced by the new one
        key = await asyncio.to_thread(dkim.generate_keys)
        await self.store.add_dkim_keys(domain, [key], key.selector)
        self._cache.pop(domain, None)
        log_event("dkim.rotated", domain=domain, selector=key.selector)
        return key.selector

    async def remove(self, domain: str, selector: str) -> None:
        await self.store.remove_dkim_selector(domain.lower(), selector)
        self._cache.pop(domain.lower(), None)

    async def published(self, domain: str) -> list[tuple[str, str]]:
        """(name, TXT value) of every selector kept, both algorithms."""
        return dkim.published_records(await self.keyset(domain))


def dkim_keyring(services: object) -> DkimKeyring:
    """The process's DkimKeyring from ``services.extra`` (created by wiring.build)."""
    extra: dict[str, object] = getattr(services, "extra")  # noqa: B009
    found = extra.get("dkim")
    if not isinstance(found, DkimKeyring):
        raise RuntimeError("the DKIM keyring was not made (wiring.py)")
    return found
