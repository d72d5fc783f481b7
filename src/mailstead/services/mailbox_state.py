"""The state every IMAP view of one mailbox in a process shares (UIDs, flags, recent
changes), kept in step with the store by one query per round of published changes."""

from __future__ import annotations

import asyncio
import bisect
from array import array
from collections.abc import Sequence
from typing import TypeVar

from mailstead.store.changes import Watch
from mailstead.store.interfaces import (
    Changes,
    FlagState,
    MessageMeta,
    SystemFlag,
)

LOG_ENTRIES = 20_000  # changes each shared mailbox state remembers for its views
# Plain ints: IntFlag's "&" runs Python code, too slow in loops over 100,000 messages.
_SEEN = int(SystemFlag.SEEN)
_DELETED = int(SystemFlag.DELETED)


class SharedMailboxState:
    """What every view of one mailbox in this process shares: the mailbox's current UIDs and
    flags, and a log of recent changes, kept in step with the store by one ``changes_since``
    query per round of published changes (not one per view and command). Views read flags
    (FETCH FLAGS, SEARCH on flags) and their own updates from here, so 20 busy sessions or
    10,000 idle ones on a mailbox cost one copy of its flags and one query per change.

    ``generation`` counts rounds of changes heard on the bus (or forced by NOOP); the state
    reflects the store as of generation ``applied``. Only one catch-up query runs at a time, so
    answers are applied in order."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.users = 0
        self.generation = 0
        self.applied = -1  # -1: no state loaded yet (the first SELECT loads it)
        self.inflight: asyncio.Task[None] | None = None
        self.modseq = 0
        self.uids = array("Q")
        self.states: list[FlagState] = []
        # Changes in MODSEQ order; complete for any "since" >= floor.
        self.floor = 0
        self.log_modseqs: list[int] = []
        self.log_states: list[FlagState] = []
        self.vanished_modseqs: list[int] = []
        self.vanished_uids: list[int] = []
        self.metas: dict[int, MessageMeta] = {}  # uid -> row as read (its flags may be old)
        # Whether ``states`` are exactly the store's rows as of ``modseq``: the listing a SELECT
        # installs may hold changes newer than the MODSEQ read before it, until a catch-up
        # (one snapshot that covers every change after ``modseq``) has been applied.
        self.exact = False
        self._counts: tuple[int, int, int] | None = None  # (modseq, unseen, deleted)
        # The store's commit marker read right before the last catch-up's query (None: not
        # known): while it has not changed, a forced round (NOOP) has nothing to ask.
        self.marker: int | None = None

    @property
    def loaded(self) -> bool:
        return self.applied >= 0

    def install(self, states: list[FlagState], modseq: int, generation: int) -> None:
        self.uids = array("Q", (f.uid for f in states))
        self.states = states
        self.modseq = self.floor = modseq
        self.applied = generation
        self.exact = False
        self._counts = None
        self.marker = None

    def index_of(self, uid: int) -> int:
        i = bisect.bisect_left(self.uids, uid)
        return i if i < len(self.uids) and self.uids[i] == uid else -1

    def apply(self, changes: Changes) -> None:
        last = self.uids[-1] if self.uids else 0
        new_uids: list[int] = []
        new_states: list[FlagState] = []
        for st in changes.changed:
            if st.uid > last:
                new_uids.append(st.uid)
                new_states.append(st)
                continue
            i = self.index_of(st.uid)
            if i >= 0:
                self.states[i] = st
        if changes.vanished:
            gone = set(changes.vanished)
            for uid in gone:
                self.metas.pop(uid, None)
            positions = sorted(i for i in map(self.index_of, gone) if i >= 0)
            if positions:  # new objects: views may hold the old ones
                self.uids, self.states = without_positions(self.uids, positions), without_positions(
                    self.states, positions)
            new = [(u, st) for u, st in zip(new_uids, new_states, strict=True) if u not in gone]
            new_uids = [u for u, _st in new]
            new_states = [st for _u, st in new]
        self.uids.extend(new_uids)
        self.states.extend(new_states)
        top = max(self.modseq, changes.highestmodseq)
        for st in sorted(changes.changed, key=by_modseq):
            self.log_modseqs.append(st.modseq)
            self.log_states.append(st)
        for uid in changes.vanished:  # their exact MODSEQ is unknown: at most ``top``
            self.vanished_modseqs.append(top)
            self.vanished_uids.append(uid)
        self.modseq = top
        self.exact = True
        self._counts = None
        self._trim()

    def expect_change(self) -> tuple[int, int, int] | None:
        """Called before a change whose message states will be known (a session of this
        process changing flags or APPENDing, or another worker's such change heard with its
        states): what ``known_change`` needs to tell whether that change alone happened
        meanwhile (None: the state is not exactly caught up; a catch-up query will learn it
        as usual)."""
        if (not self.exact or self.inflight is not None or self.applied != self.generation
                or self.watch.event.is_set()):
            return None
        return self.generation, self.modseq, self.watch.fired

    def known_change(self, before: tuple[int, int, int], changed: Sequence[FlagState],
                     highestmodseq: int, vanished: Sequence[int] = ()) -> None:
        """A committed flag change (or expunge) whose states (UIDs) are known, applied without
        asking the store
        when it was the only change: its MODSEQ follows the state's (every change to the
        mailbox takes the next MODSEQ, so none came between) and its publish is the only one
        heard since. That publish is then taken as heard (its event cleared): the views here
        are told from the log, and the catch-up query it would cost is saved."""
        generation, modseq, fired = before
        if ((changed or vanished) and highestmodseq == modseq + 1 and self.modseq == modseq
                and self.generation == generation and self.applied == generation
                and self.inflight is None and self.watch.fired == fired + 1):
            self.apply(Changes(list(changed), list(vanished), highestmodseq))
            self.watch.event.clear()

    def flag_counts(self) -> tuple[int, int]:
        """(unseen, deleted) among the current states, counted once per MODSEQ."""
        counts = self._counts
        if counts is None or counts[0] != self.modseq:
            unseen = deleted = 0
            for st in self.states:
                flags = st.flags
                if not flags & _SEEN:
                    unseen += 1
                if flags & _DELETED:
                    deleted += 1
            counts = self._counts = (self.modseq, unseen, deleted)
        return counts[1], counts[2]

    def _trim(self) -> None:
        if len(self.log_modseqs) > LOG_ENTRIES:
            cut = len(self.log_modseqs) - LOG_ENTRIES // 2
            self.floor = max(self.floor, self.log_modseqs[cut - 1])
            del self.log_modseqs[:cut], self.log_states[:cut]
        if len(self.vanished_modseqs) > LOG_ENTRIES:
            cut = len(self.vanished_modseqs) - LOG_ENTRIES // 2
            self.floor = max(self.floor, self.vanished_modseqs[cut - 1])
            del self.vanished_modseqs[:cut], self.vanished_uids[:cut]

    def changes_after(self, since: int) -> Changes:
        """What the store's ``changes_since(since)`` would say now (since >= floor)."""
        latest: dict[int, FlagState] = {}
        for st in self.log_states[bisect.bisect_right(self.log_modseqs, since):]:
            latest[st.uid] = st  # the log is in MODSEQ order: the last one is current
        vanished = sorted(set(self.vanished_uids[
            bisect.bisect_right(self.vanished_modseqs, since):
        ]))
        for uid in vanished:
            latest.pop(uid, None)
        changed = [latest[uid] for uid in sorted(latest)]
        return Changes(changed=changed, vanished=vanished, highestmodseq=max(since, self.modseq))


S = TypeVar("S", "array[int]", "list[FlagState]")


def without_positions(items: S, positions: list[int]) -> S:
    """A new ``items`` without the (ascending) ``positions``: the runs between them copied
    at C speed, not a Python pass over a 100,000-message mailbox per expunge."""
    out = items[:0]
    start = 0
    for i in positions:
        out += items[start:i]
        start = i + 1
    out += items[start:]
    return out


def would_change(st: FlagState, mode: str, flags: int, keywords: frozenset[str]) -> bool:
    """Whether a STORE of ``mode`` would change the message (as store.update_flags decides)."""
    if mode == "add":
        return st.flags | flags != st.flags or not keywords <= st.keywords
    if mode == "remove":
        return st.flags & ~flags != st.flags or not keywords.isdisjoint(st.keywords)
    return st.flags != flags or st.keywords != keywords


def by_modseq(st: FlagState) -> int:
    return st.modseq
