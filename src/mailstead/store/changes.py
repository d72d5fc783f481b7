"""Change feed: who is watching which mailbox (IMAP IDLE, other sessions, webmail).

Stores call ``publish`` from the event loop after a commit that touched a mailbox; watchers wake
and ask the store what changed. ``forward``, when set, sends the same ids to the sibling worker
processes (net/peers.py), whose channel hands them to ``publish_here``. On PostgreSQL the store
also relays LISTEN/NOTIFY from other nodes into ``publish_here``.

Besides mailbox ids (positive), the feed carries one id per account (``account_channel``, a
negative number) published when the account's list of mailboxes or subscriptions changed
(CREATE, DELETE, RENAME, SUBSCRIBE): IMAP NOTIFY (RFC 5465) listens to it. Being plain ints
they travel over PostgreSQL's feed like mailbox ids. URLAUTH RESETKEY (RFC 4467 7.1) publishes
``access_key_channel`` (one mailbox's keys) or ``access_keys_channel`` (all of an account's,
core/feed_ids.py), so that sessions with such a mailbox selected, in any worker
or node, send the untagged URLMECH response.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

from mailstead.core.models import FlagState

# Callables that carry a flag change in full: (mailbox id, its new HIGHESTMODSEQ, the changes).
# (mailbox id, HIGHESTMODSEQ, changed message states, vanished UIDs)
FlagsHandler = Callable[[int, int, Sequence[FlagState], Sequence[int]], None]

# Not a mailbox: domains, accounts, aliases, Sieve scripts or lists changed in another process
# (store/announce.py); the caches of them registered in ``ChangeBus.settings_hooks`` drop.
SETTINGS_CHANGED = 0


class Signal:
    """``asyncio.Event``'s ``is_set``/``set``/``clear``/``wait`` for one watcher: no deque of
    waiters until one waits (a list then, dropped again once set), and no instance dict.
    Every IMAP session with a mailbox selected holds one, so that is some 0.9 KB less per
    idle connection than an asyncio.Event (10,000 IDLE sessions: 9 MB)."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[bool]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        waiters, self._waiters = self._waiters, None
        if waiters:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(True)

    def clear(self) -> None:
        self._value = False

    def waiter(self) -> asyncio.Future[bool]:
        """A future that gets True once this is set (at once if set already): awaited beside
        other futures, with no task to run a ``wait`` (IMAP IDLE). Cancel it to stop
        waiting."""
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._value:
            waiter.set_result(True)
            return waiter
        waiters = self._waiters
        if waiters is None:
            self._waiters = [waiter]
        else:
            waiters[:] = [w for w in waiters if not w.done()]  # drop the cancelled ones
            waiters.append(waiter)
        return waiter

    async def wait(self) -> bool:
        """Returns (True) once set; at once if set already. A wait cancelled leaves its
        future cancelled, dropped by the next ``waiter`` or ``set``."""
        if self._value:
            return True
        return await self.waiter()


def account_channel(account_id: int) -> int:
    """The feed id announcing changes to an account's mailbox list or subscriptions."""
    return -account_id


class Watch:
    """One watcher of one mailbox. ``wait`` returns when something changed since the last wait."""

    __slots__ = ("bus", "event", "fired", "mailbox_id")  # one per selected mailbox

    def __init__(self, bus: ChangeBus, mailbox_id: int) -> None:
        self.bus = bus
        self.mailbox_id = mailbox_id
        self.event = Signal()
        self.fired = 0  # publishes heard so far (a writer tells its own apart by the count)

    async def wait(self, timeout: float | None = None) -> bool:
        """True if woken by a change, False on timeout."""
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except TimeoutError:
            return False
        self.event.clear()
        return True

    def fire(self, mailbox_id: int) -> None:
        self.fired += 1
        self.event.set()

    def close(self) -> None:
        self.bus._unsubscribe(self)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MultiWatch:
    """One watcher of many feed ids (IMAP NOTIFY: every mailbox of an account and its
    account channel). A publish costs O(1) per id it names; the watcher learns which ids fired
    since the last ``take``, each once however often it fired (coalesced)."""

    def __init__(self, bus: ChangeBus) -> None:
        self.bus = bus
        self.ids: set[int] = set()
        self.dirty: set[int] = set()
        self.event = Signal()

    def fire(self, mailbox_id: int) -> None:
        self.dirty.add(mailbox_id)
        self.event.set()

    def set_ids(self, ids: Iterable[int]) -> None:
        wanted = set(ids)
        for i in self.ids - wanted:
            self.bus._drop(i, self)
        for i in wanted - self.ids:
            self.bus._watches[i].add(self)
        self.ids = wanted
        self.dirty &= wanted

    async def wait(self) -> None:
        await self.event.wait()

    def take(self) -> set[int]:
        self.event.clear()
        dirty, self.dirty = self.dirty, set()
        return dirty

    def close(self) -> None:
        self.set_ids(())


class ChangeBus:
    def __init__(self) -> None:
        self._watches: defaultdict[int, set[Watch | MultiWatch]] = defaultdict(set)
        # Called with each publish's ids after the local watchers were told (the other workers).
        self.forward: Callable[[set[int]], None] | None = None
        # Called when SETTINGS_CHANGED arrives (services' caches of settings drop theirs).
        self.settings_hooks: list[Callable[[], None]] = []
        # Called with the account id when an account's mailbox list changes (a mailbox
        # created, renamed or deleted: its account_channel), here or in another process.
        self.account_hooks: list[Callable[[int], None]] = []
        # A flag change sent to the other workers with its states (publish_flags), so that
        # they need not ask the store; and what takes such a change from them (the mailbox
        # service, which applies it to its shared state when it can).
        self.forward_flags: FlagsHandler | None = None
        self.flags_heard: FlagsHandler | None = None

    def watch(self, mailbox_id: int) -> Watch:
        w = Watch(self, mailbox_id)
        self._watches[mailbox_id].add(w)
        return w

    def watch_many(self, ids: Iterable[int] = ()) -> MultiWatch:
        w = MultiWatch(self)
        w.set_ids(ids)
        return w

    def _unsubscribe(self, w: Watch) -> None:
        self._drop(w.mailbox_id, w)

    def _drop(self, mailbox_id: int, w: Watch | MultiWatch) -> None:
        watchers = self._watches.get(mailbox_id)
        if watchers is not None:
            watchers.discard(w)
            if not watchers:
                del self._watches[mailbox_id]

    def publish(self, mailbox_ids: Iterable[int]) -> None:
        """A commit of this process touched these ids: wakes their watchers here and in the
        other worker processes."""
        ids = set(mailbox_ids)
        self.publish_here(ids)
        if self.forward is not None and ids:
            self.forward(ids)

    def publish_flags(self, mailbox_id: int, highestmodseq: int,
                      changed: Sequence[FlagState], vanished: Sequence[int] = ()) -> None:
        """``publish`` of a commit whose every change to one mailbox is in ``changed``
        (changed flags, or a new message) and ``vanished`` (expunged UIDs), to HIGHESTMODSEQ
        ``highestmodseq``: the other workers get the states and UIDs along."""
        self.publish_here((mailbox_id,))
        if self.forward_flags is not None:
            self.forward_flags(mailbox_id, highestmodseq, changed, vanished)
        elif self.forward is not None:
            self.forward({mailbox_id})

    def flags_from_peer(self, mailbox_id: int, highestmodseq: int,
                        changed: Sequence[FlagState], vanished: Sequence[int] = ()) -> None:
        """A sibling's ``publish_flags``: like ``publish_here`` of the mailbox, through the
        handler that may apply the states instead of asking the store."""
        if self.flags_heard is None:
            self.publish_here((mailbox_id,))
        else:
            self.flags_heard(mailbox_id, highestmodseq, changed, vanished)

    def publish_here(self, mailbox_ids: Iterable[int]) -> None:
        """Wakes this process's watchers only (ids that came from elsewhere)."""
        ids = set(mailbox_ids)
        if SETTINGS_CHANGED in ids:
            for hook in self.settings_hooks:
                hook()
        for mailbox_id in ids:
            if mailbox_id < 0:
                for account_hook in self.account_hooks:
                    account_hook(-mailbox_id)  # (account_channel)
            for w in self._watches.get(mailbox_id, ()):
                w.fire(mailbox_id)
