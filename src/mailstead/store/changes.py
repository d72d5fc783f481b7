"""Change feed: who is watching which mailbox (IMAP IDLE, other sessions, webmail).

Stores call ``publish`` from the event loop after a commit that touched a mailbox; watchers wake
and ask the store what changed. On PostgreSQL the store also relays LISTEN/NOTIFY from other
nodes into ``publish``.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable


class Watch:
    """One watcher of one mailbox. ``wait`` returns when something changed since the last wait."""

    def __init__(self, bus: ChangeBus, mailbox_id: int) -> None:
        self.bus = bus
        self.mailbox_id = mailbox_id
        self.event = asyncio.Event()

    async def wait(self, timeout: float | None = None) -> bool:
        """True if woken by a change, False on timeout."""
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except TimeoutError:
            return False
        self.event.clear()
        return True

    def close(self) -> None:
        self.bus._unsubscribe(self)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChangeBus:
    def __init__(self) -> None:
        self._watches: defaultdict[int, set[Watch]] = defaultdict(set)

    def watch(self, mailbox_id: int) -> Watch:
        w = Watch(self, mailbox_id)
        self._watches[mailbox_id].add(w)
        return w

    def _unsubscribe(self, w: Watch) -> None:
        watchers = self._watches.get(w.mailbox_id)
        if watchers is not None:
            watchers.discard(w)
            if not watchers:
                del self._watches[w.mailbox_id]

    def publish(self, mailbox_ids: Iterable[int]) -> None:
        for mailbox_id in set(mailbox_ids):
            for w in self._watches.get(mailbox_id, ()):
                w.event.set()
