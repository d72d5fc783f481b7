"""A session's view of a selected mailbox: its own sequence numbers, \\Recent, and the
updates (EXPUNGE, FETCH FLAGS, EXISTS) it owes its client, read from the shared state."""

from __future__ import annotations

import asyncio
import bisect
from array import array
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from mailstead.core.errors import InvalidInput
from mailstead.services.mailbox_names import is_junk
from mailstead.services.mailbox_state import without_positions, would_change
from mailstead.store.changes import Watch
from mailstead.store.interfaces import (
    Changes,
    CopyResult,
    Delivery,
    FlagState,
    FlagUpdate,
    Mailbox,
    MessageMeta,
    SortFields,
    SystemFlag,
)

if TYPE_CHECKING:
    from mailstead.services.mailbox import MailboxService

# Above this many wanted messages, read every flag row once instead of an IN (...) query.
BULK_FLAGS = 500
FEW_FLAGS = 50  # a STORE of at most this many messages first reads whether it changes any
SORT_SLICE = 10_000  # rows per store read of a SORT or THREAD
R = TypeVar("R", bound=tuple[Any, ...])
# Message rows (less their flags) that a shared mailbox state keeps for small FETCHes.
META_CACHE = 2000
META_CACHED_FETCH = 50  # larger FETCHes read rows in bulk anyway
# Plain ints: IntFlag's "&" runs Python code, too slow in loops over 100,000 messages.
_SEEN = int(SystemFlag.SEEN)
_DELETED = int(SystemFlag.DELETED)
_NO_UID = 1 << 64  # above every UID: (uid, _NO_UID) sorts after each range starting at uid


@dataclass
class ViewUpdates:
    """What a session must tell its client: EXPUNGEs (sequence number at the moment of the
    report, uid), the new message count, the new \\Recent count, and flag changes."""

    expunged: list[tuple[int, int]] = field(default_factory=list)
    exists: int | None = None
    recent: int | None = None
    flags: list[tuple[int, FlagState]] = field(default_factory=list)
    keywords: set[str] = field(default_factory=set)  # in the changes: new, or to check


class MailboxView:
    """One session's picture of a selected mailbox: the UIDs in sequence order (an expunged
    message stays until its EXPUNGE could be sent), the MODSEQ it is synced to, and what it
    has not told its client yet."""

    def __init__(
        self,
        service: MailboxService,
        mailbox: Mailbox,
        flags: Sequence[FlagState],
        *,
        readonly: bool,
        track_recent: bool,
        watch: Watch,
        modseq: int,
        uids: array[int] | None = None,
    ) -> None:
        self.service = service
        self.store = service.store
        self.mailbox = mailbox
        self.readonly = readonly
        self.track_recent = track_recent
        self.watch = watch
        self.uids = array("Q", uids) if uids is not None else array("Q", (f.uid for f in flags))
        self.modseq = modseq  # what ``flags`` reflect
        last = self.uids[-1] if self.uids else 0
        self.uidnext = max(mailbox.uidnext, last + 1)
        self.recent_ranges: list[tuple[int, int]] = []
        # None rather than an empty set (216 bytes) while there is nothing in them: every
        # session with a mailbox selected has a view, most of them idle.
        self.pending_expunge: set[int] | None = None
        self.pending_flags: dict[int, FlagState] = {}
        self.pending_keywords: set[str] | None = None  # of new messages since the last report
        self.own_changes: dict[int, int] = {}  # uid -> modseq of changes this session made
        self.reported_exists = len(self.uids)
        self.reported_recent = 0
        self.closed = False
        # For SELECT: the first unseen message (RFC 3501 [UNSEEN n], 0 = none) and the
        # keywords in use (FLAGS response).
        self.first_unseen = next(
            (i + 1 for i, f in enumerate(flags) if not f.flags & _SEEN), 0
        )
        self.keywords: set[str] = set()
        for f in flags:
            if f.keywords:
                self.keywords.update(f.keywords)

    # -- numbers --

    @property
    def exists(self) -> int:
        return len(self.uids)

    @property
    def id(self) -> int:
        return self.mailbox.id

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i + 1
        return None

    def uid_at(self, seq: int) -> int:
        return self.uids[seq - 1]

    def uids_in_seq_ranges(self, ranges: Iterable[tuple[int, int]]) -> list[int]:
        """UIDs of the given (low, high) sequence ranges, ascending, without duplicates (one
        range is a slice of the ascending UIDs already: not sorted again)."""
        picked: list[int] = []
        count = 0
        for lo, hi in ranges:
            picked.extend(self.uids[lo - 1 : hi])
            count += 1
        return sorted(set(picked)) if count > 1 else picked

    def uids_in_uid_ranges(self, ranges: Iterable[tuple[int, int]]) -> list[int]:
        picked: list[int] = []
        count = 0
        for lo, hi in ranges:
            i = bisect.bisect_left(self.uids, lo)
            j = bisect.bisect_right(self.uids, hi)
            picked.extend(self.uids[i:j])
            count += 1
        return sorted(set(picked)) if count > 1 else picked

    @property
    def last_uid(self) -> int:
        return self.uids[-1] if self.uids else 0

    # -- \Recent (RFC 3501 2.3.2; IMAP4rev1 only) --

    def is_recent(self, uid: int) -> bool:
        ranges = self.recent_ranges  # ascending, disjoint: the one starting at or below uid
        i = bisect.bisect_right(ranges, (uid, _NO_UID)) - 1
        return i >= 0 and uid <= ranges[i][1]

    def recent_checker(self) -> Callable[[int], bool]:
        """A fast ``is_recent`` for loops over many messages."""
        if not self.recent_ranges:
            return lambda uid: False
        if len(self.recent_ranges) == 1:
            lo, hi = self.recent_ranges[0]
            return lambda uid: lo <= uid <= hi
        return self.is_recent

    def _add_recent(self, first: int, last: int) -> None:
        """Claimed UIDs first..last (above every range so far), joined to the last range
        when they follow it: a session that APPENDs again and again keeps one range."""
        ranges = self.recent_ranges
        if ranges and first <= ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], max(last, ranges[-1][1]))
        else:
            ranges.append((first, last))

    def seqs_of(self, uids: Sequence[int]) -> list[int | None]:
        """Sequence numbers of ascending UIDs (None for those not in the view); linear when
        they are the whole view, as in FETCH 1:*."""
        if len(uids) == len(self.uids) and self.uids.tolist() == list(uids):
            return list(range(1, len(uids) + 1))
        return [self.seq_of(uid) for uid in uids]

    def recent_count(self) -> int:
        total = 0
        for lo, hi in self.recent_ranges:
            total += bisect.bisect_right(self.uids, hi) - bisect.bisect_left(self.uids, lo)
        return total

    async def claim_recent(self) -> None:
        """Takes the messages nobody has seen yet as this session's \\Recent ones."""
        if not self.track_recent:
            return
        claimed = self.service.claimed_upto
        key = (self.mailbox.id, self.mailbox.uidvalidity)
        last = self.last_uid
        if self.readonly:
            # RFC 3501 6.3.2: EXAMINE reports \\Recent as SELECT would, but leaves it in place
            # for the next read-write session (so no store write, and no claim).
            first = max(self.mailbox.first_recent_uid, claimed.get(key, 0) + 1,
                        self.recent_ranges[-1][1] + 1 if self.recent_ranges else 0)
            if first <= last:
                self._add_recent(first, last)
            return
        if last <= claimed.get(key, 0):
            return  # another session of this process took them: no write needed
        if await self.store.first_recent_uid(self.mailbox.id) > last:
            # A session of another process (or its APPEND) took them: a read, no write.
            claimed[key] = max(claimed.get(key, 0), last)
            return
        first = await self.store.claim_recent(self.mailbox.id)
        claimed[key] = max(claimed.get(key, 0), last)
        if first <= last:
            self._add_recent(first, last)

    async def append(
        self,
        data: bytes,
        flags: int = 0,
        keywords: frozenset[str] = frozenset(),
        internal_date: datetime | None = None,
    ) -> MessageMeta:
        """APPEND to this (read-write) view's own mailbox: the new message is \\Recent in
        this session (RFC 3501 6.3.11: the normal new-message actions occur), claimed in
        the transaction that stores it, so no second write claims it afterwards."""
        message, flush = await self.service.new_message(data, flags, keywords, internal_date)
        delivery = Delivery(self.mailbox.id, message)
        if not self.track_recent or self.readonly:
            return (await self.store.store_message([delivery], before=flush))[0]
        shared = self.service.shared_state(self.mailbox.id)
        before = shared.expect_change() if shared is not None else None
        meta, first = await self.store.append_claiming_recent(delivery, before=flush)
        if before is not None and shared is not None:  # the new message, without a query
            shared.known_change(before, [meta.flag_state()], meta.modseq)
        claimed = self.service.claimed_upto
        key = (self.mailbox.id, self.mailbox.uidvalidity)
        claimed[key] = max(claimed.get(key, 0), meta.uid)
        if first <= meta.uid:  # messages delivered before it and not claimed are ours too
            self._add_recent(first, meta.uid)
        return meta

    # -- syncing with the store --

    async def wait_change(self, timeout: float | None) -> bool:
        """Waits until the mailbox may have changed (IDLE); does not consume the signal."""
        if timeout is None:  # no wait_for: in Python 3.11 it costs a task per call
            await self.watch.event.wait()
            return True
        try:
            await asyncio.wait_for(self.watch.event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def change_waiter(self) -> asyncio.Future[bool]:
        """``wait_change(None)`` as a future (IDLE waits for it beside the client's input,
        without a task of its own for it: some 1.5 KB less per idle session)."""
        return self.watch.event.waiter()

    async def refresh(self, force: bool = False) -> None:
        """Pulls changes made by anyone since the last refresh into the pending queues."""
        if not force and not self.watch.event.is_set():
            return
        self.watch.event.clear()
        try:
            changes = await self.service.changes_for(self.mailbox.id, self.modseq, force)
        except BaseException:
            self.watch.event.set()  # not learnt: ask again next time
            raise
        self.modseq = max(self.modseq, changes.highestmodseq)
        last = self.last_uid
        new: list[int] = []
        for state in changes.changed:
            if state.uid > last:
                new.append(state.uid)
                if state.keywords:
                    if self.pending_keywords is None:
                        self.pending_keywords = set()
                    self.pending_keywords.update(state.keywords)
            elif self.own_changes.get(state.uid, 0) >= state.modseq:
                continue
            elif ((self.pending_expunge is None or state.uid not in self.pending_expunge)
                  and self.seq_of(state.uid) is not None):
                self.pending_flags[state.uid] = state
        self.own_changes.clear()
        self._mark_gone(uid for uid in changes.vanished if uid <= last)
        if new:
            self.uids.extend(new)
            self.uidnext = max(self.uidnext, new[-1] + 1)
            await self.claim_recent()

    async def changes_since(self, modseq: int) -> Changes:
        """What changed after ``modseq`` (QRESYNC, VANISHED (EARLIER))."""
        return await self.store.changes_since(self.mailbox.id, modseq)

    def take_updates(self, allow_expunge: bool, allow_flags: bool = True) -> ViewUpdates:
        if (not self.pending_expunge and not self.pending_flags and not self.pending_keywords
                and len(self.uids) == self.reported_exists
                and (not self.track_recent or self.recent_count() == self.reported_recent)):
            return ViewUpdates()  # nothing to tell (most commands): no pass over the queues
        out = ViewUpdates()
        if allow_expunge and self.pending_expunge:
            out.expunged = self._apply_expunges(self.pending_expunge)
            self.pending_expunge = None
        # Each EXPUNGE already lowered the client's count by one.
        self.reported_exists -= len(out.expunged)
        if self.exists != self.reported_exists:
            out.exists = self.exists
            self.reported_exists = self.exists
        if self.track_recent:
            recent = self.recent_count()
            if recent != self.reported_recent or out.exists is not None:
                out.recent = recent
                self.reported_recent = recent
        if allow_flags:  # else kept (NOTIFY without FlagChange: told at the next command)
            for uid, state in sorted(self.pending_flags.items()):
                seq = self.seq_of(uid)
                if seq is not None:
                    out.flags.append((seq, state))
                    out.keywords.update(state.keywords)
            self.pending_flags.clear()
        if self.pending_keywords:
            out.keywords.update(self.pending_keywords)
            self.pending_keywords = None
        return out

    def _apply_expunges(self, gone: set[int]) -> list[tuple[int, int]]:
        """Removes expunged UIDs; returns (seq, uid) as reported one after another, each
        number counted after the previous removals (RFC 9051 7.5.1)."""
        uids = self.uids  # ascending: each expunged UID found by bisection, not a scan
        found = []
        for uid in gone:
            i = bisect.bisect_left(uids, uid)
            if i < len(uids) and uids[i] == uid:
                found.append(i)
        found.sort()
        # A new array: the old one may be the mailbox's shared state's.
        self.uids = without_positions(uids, found)
        return [(i + 1 - removed, uids[i]) for removed, i in enumerate(found)]

    # -- reading messages --

    async def flag_states(self, uids: Sequence[int]) -> list[FlagState]:
        """Current flags of the given UIDs (ascending), from the mailbox's shared state after
        it caught up with every published change (FETCH 1:* (FLAGS) on 100,000 messages
        without a query); from the store when no shared state is loaded."""
        if not uids:
            return []
        shared = await self.service.sync(self.mailbox.id)
        if shared is None:
            return await self._stored_flag_states(uids)
        if len(uids) == len(self.uids) and len(shared.uids) >= len(uids):
            # The whole view, usually identical to the shared UIDs (or a prefix of them).
            n = len(uids)
            if shared.uids[n - 1] == uids[-1] and shared.uids[:n] == self.uids:
                return shared.states[:n]
        states = shared.states
        out = []
        for uid in uids:
            i = shared.index_of(uid)
            if i >= 0:
                out.append(states[i])
        return out

    async def _stored_flag_states(self, uids: Sequence[int]) -> list[FlagState]:
        """Flags read from the store itself (EXPUNGE decides on them)."""
        if len(uids) > BULK_FLAGS or len(uids) == len(self.uids):
            states = await self.store.list_flags(self.mailbox.id)
            if len(uids) == len(self.uids):  # the whole view: skip messages newer than it
                last = uids[-1]
                if states and states[-1].uid > last:
                    return [s for s in states if s.uid <= last]
                return states
            wanted = set(uids)
            return [s for s in states if s.uid in wanted]
        rows = await self.store.get_messages(self.mailbox.id, uids)
        return [FlagState(m.uid, m.modseq, m.flags, m.keywords) for m in rows]

    async def sort_fields(self, wanted: Collection[str]) -> list[SortFields]:
        return await self._in_slices(partial(self.store.sort_fields, self.mailbox.id, wanted))

    async def sort_columns(self, columns: Sequence[str], after_uid: int = 0
                           ) -> list[list[Any]]:
        """Column-wise, read in slices as ``_in_slices`` does."""
        found: list[list[Any]] = [[] for _ in range(len(columns) + 1)]
        while True:
            after = found[0][-1] if found[0] else after_uid
            part = await self.store.sort_columns(self.mailbox.id, columns, after, SORT_SLICE)
            for column, more in zip(found, part, strict=True):
                column += more
            if len(part[0]) < SORT_SLICE:
                return found

    @staticmethod
    async def _in_slices(read: Callable[[int, int], Awaitable[list[R]]]) -> list[R]:
        """Read in slices of SORT_SLICE rows (each a tuple, its UID first), so other
        sessions' store reads (a NOOP's, a SELECT's) get their turn between them instead of
        waiting for 100,000 rows."""
        rows: list[R] = []
        while True:
            part = await read(rows[-1][0] if rows else 0, SORT_SLICE)
            rows += part
            if len(part) < SORT_SLICE:
                return rows

    async def messages(self, uids: Sequence[int]) -> list[MessageMeta]:
        if not uids:
            return []
        # A small mailbox is kept whole (SEARCH SUBJECT reads every row, again and again).
        if len(uids) > META_CACHED_FETCH and len(self.uids) > META_CACHE // 2:
            if len(uids) == len(self.uids):
                return await self.store.get_messages(self.mailbox.id)
            return await self.store.get_messages(self.mailbox.id, uids)
        # A row changes only in its flags: cached rows get their flags from the shared
        # state, which has caught up with every published change.
        shared = await self.service.sync(self.mailbox.id)
        if shared is None:
            return await self.store.get_messages(self.mailbox.id, uids)
        cached = shared.metas
        missing = [uid for uid in uids if uid not in cached]
        fresh: dict[int, MessageMeta] = {}
        if missing:  # only those rows read
            if len(cached) + len(missing) > META_CACHE:
                cached.clear()
                missing = list(uids)
            rows = await self.store.get_messages(self.mailbox.id, missing)
            for meta in rows:
                cached[meta.uid] = fresh[meta.uid] = meta
            shared = await self.service.sync(self.mailbox.id)  # flags may have moved on
            if shared is None:
                return await self.store.get_messages(self.mailbox.id, uids)
        out = []
        # Usually the UIDs are a run of the shared state's (a FETCH of the last 25, a SEARCH
        # of all): their flag states are then a slice, found with one bisection, not one each.
        first = shared.index_of(uids[0])
        wanted = uids if isinstance(uids, list) else list(uids)
        pairs: Iterable[tuple[int, FlagState]]
        if first >= 0 and shared.uids[first : first + len(wanted)].tolist() == wanted:
            pairs = zip(wanted, shared.states[first : first + len(wanted)], strict=True)
        else:
            states = shared.states
            pairs = ((uid, states[i]) for uid in wanted if (i := shared.index_of(uid)) >= 0)
        for uid, st in pairs:
            row = cached.get(uid) or fresh.get(uid)  # (another session may have cleared it)
            if row is None:
                continue  # expunged
            if st.modseq > row.modseq:  # else the row read is as new or newer
                row = replace(row, modseq=st.modseq, flags=st.flags, keywords=st.keywords)
                cached[uid] = row  # brought up to date once, not at every FETCH
            out.append(row)
        return out

    async def body(self, blob_id: str, size: int | None = None) -> bytes:
        return await self.service.read_blob(blob_id, size)

    def body_now(self, blob_id: str, size: int) -> bytes | None:
        return self.service.read_small_blob(blob_id, size)

    # -- changing messages --

    async def store_flags(
        self,
        uids: Sequence[int],
        mode: Literal["add", "remove", "replace"],
        flags: int,
        keywords: frozenset[str],
        unchanged_since: int | None = None,
    ) -> FlagUpdate:
        self._writable()
        if (unchanged_since is None and len(uids) <= FEW_FLAGS
                and not self._changes_some(uids, mode, flags, keywords)):
            # A STORE that would change nothing (+FLAGS \Seen on a seen message: half of
            # what clients send) is answered from one read of what is committed now, with no
            # write transaction; it takes effect at that read, before any later change. (One
            # that the flags this process knows say changes a message goes straight to the
            # write, which decides on the committed flags itself.)
            now = await self.store.flags_of(self.mailbox.id, uids)
            if not any(would_change(st, mode, flags, keywords) for st in now):
                return FlagUpdate(changed=[], failed_uids=[],
                                  highestmodseq=max((st.modseq for st in now), default=0))
        shared = self.service.shared_state(self.mailbox.id)
        before = shared.expect_change() if shared is not None else None
        result = await self.store.update_flags(
            self.mailbox.id, uids, mode, flags, keywords, unchanged_since
        )
        if before is not None and shared is not None:
            shared.known_change(before, result.changed, result.highestmodseq)
        for state in result.changed:
            self.own_changes[state.uid] = state.modseq
            self.pending_flags.pop(state.uid, None)
        if mode != "remove" and result.changed:
            # $Junk / $NotJunk: what a client says the user thinks (RFC 5788's registry).
            named = {k.lower() for k in keywords}
            if "$junk" in named or "$notjunk" in named:
                await self._train([s.uid for s in result.changed], "$junk" in named)
        return result

    def _changes_some(self, uids: Sequence[int], mode: str, flags: int,
                      keywords: frozenset[str]) -> bool:
        """Whether the mailbox's shared state, as last caught up, says the STORE changes one
        of ``uids`` (a hint: False when it cannot tell)."""
        shared = self.service.shared_state(self.mailbox.id)
        if shared is None:
            return False
        states = shared.states
        for uid in uids:
            i = shared.index_of(uid)
            if i >= 0 and would_change(states[i], mode, flags, keywords):
                return True
        return False

    async def expunge(self, uids: Sequence[int] | None = None) -> list[int]:
        """Removes \\Deleted messages (all of them, or those among ``uids``); the removed
        ones become pending EXPUNGEs of this view."""
        self._writable()
        if uids is None:
            removed = await self.store.expunge(self.mailbox.id, None)
        else:
            states = await self._stored_flag_states(uids)
            deleted = [s.uid for s in states if s.flags & _DELETED]
            removed = await self._expunge_known(deleted) if deleted else []
        self._mark_gone(removed)
        return removed

    async def _expunge_known(self, uids: list[int]) -> list[int]:
        """The store's expunge of ``uids``, applied to the shared state without a catch-up
        query when it was the only change meanwhile (as an APPEND's new message is)."""
        shared = self.service.shared_state(self.mailbox.id)
        before = shared.expect_change() if shared is not None else None
        removed, modseq = await self.store.expunge_uids(self.mailbox.id, uids)
        if before is not None and shared is not None and removed:
            shared.known_change(before, [], modseq, removed)
        return removed

    async def copy(self, uids: Sequence[int], target: Mailbox, move: bool) -> CopyResult:
        if move:
            self._writable()
        # Into Junk is "this is spam", out of it (not to Trash) "this is not".
        to_junk, from_junk = is_junk(target), is_junk(self.mailbox)
        learn = to_junk != from_junk and target.special_use != "\\Trash" \
            and self.service.trainer is not None
        metas = await self.messages(uids) if learn else []
        result = await self.store.copy_messages(self.mailbox.id, uids, target.id, move=move)
        if move:
            self._mark_gone([src for src, _dst in result.pairs])
        if metas:
            moved = {src for src, _dst in result.pairs}
            await self._learn([m.blob_id for m in metas if m.uid in moved], to_junk)
        return result

    async def _train(self, uids: Sequence[int], is_spam: bool) -> None:
        if self.service.trainer is not None:
            await self._learn([m.blob_id for m in await self.messages(uids)], is_spam)

    async def _learn(self, blob_ids: list[str], is_spam: bool) -> None:
        trainer = self.service.trainer
        if trainer is not None and blob_ids:
            await trainer.train(self.mailbox.account_id, blob_ids, is_spam)

    def _mark_gone(self, uids: Iterable[int]) -> None:
        for uid in uids:
            if self.seq_of(uid) is not None:
                if self.pending_expunge is None:
                    self.pending_expunge = set()
                self.pending_expunge.add(uid)
                self.pending_flags.pop(uid, None)

    def _writable(self) -> None:
        if self.readonly:
            raise InvalidInput("mailbox is open read-only")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.watch.close()
            self.service.detach_feed(self.mailbox.id)
