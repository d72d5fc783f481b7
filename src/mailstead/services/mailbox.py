"""Mailbox service: folders, flags, UIDs, MODSEQ, APPEND, COPY/MOVE, EXPUNGE, and the per-session
views that keep each IMAP session's sequence numbers consistent while others change the mailbox.

Used by IMAP (and by the webmail); POP3 and SMTP delivery go to the store directly. Errors are
those of ``mailstead.core.errors`` (NotFound, Conflict, InvalidInput, QuotaExceeded,
CorruptBlob); protocols turn them into their reply codes.

How a view stays in sync: it watches its mailbox on the ChangeBus. Before a command answers,
``refresh`` asks the store what changed since the MODSEQ the view knows (only when the bus said
something did), and queues new messages, flag changes and expunges. The session then takes them
with ``take_updates``, saying whether EXPUNGE may be sent at that moment (RFC 9051 7.5.1); until
then an expunged message keeps its sequence number.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from array import array
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal, Protocol, TypeVar

from mailstead.core.errors import Conflict, InvalidInput, NotFound
from mailstead.store.changes import ChangeBus, MultiWatch, Watch, account_channel
from mailstead.store.interfaces import (
    BlobStore,
    Changes,
    CopyResult,
    Delivery,
    Envelope,
    FlagState,
    FlagUpdate,
    Mailbox,
    MailboxStatus,
    MessageMeta,
    MetadataStore,
    NewMessage,
    SortFields,
    SystemFlag,
)

SEPARATOR = "/"
MAX_NAME_BYTES = 512
MAX_LEVELS = 16
# Above this many wanted messages, read every flag row once instead of an IN (...) query.
BULK_FLAGS = 500
FEW_FLAGS = 50  # a STORE of at most this many messages first reads whether it changes any
SORT_SLICE = 10_000  # rows per store read of a SORT or THREAD
R = TypeVar("R", bound=tuple[Any, ...])
LOG_ENTRIES = 20_000  # changes each shared mailbox state remembers for its views
SMALL_BLOB = 128 * 1024  # read without a thread hop
BULK_WRITERS = 4  # threads writing the files of one append_many
# Message files are immutable (named by their hash): small ones read lately are kept.
BLOB_CACHE_BYTES = 16 * 1024 * 1024
# Message rows (less their flags) that a shared mailbox state keeps for small FETCHes.
META_CACHE = 2000
META_CACHED_FETCH = 50  # larger FETCHes read rows in bulk anyway
# Plain ints: IntFlag's "&" runs Python code, too slow in loops over 100,000 messages.
_SEEN = int(SystemFlag.SEEN)
_DELETED = int(SystemFlag.DELETED)
_NO_UID = 1 << 64  # above every UID: (uid, _NO_UID) sorts after each range starting at uid

# ---------------------------------------------------------------------------------------------
# Names


def normalize_name(name: str) -> str:
    """Checks a mailbox name and returns its stored form ("INBOX" upper-cased as a first level,
    one trailing separator dropped, RFC 9051 6.3.4). Names that could escape or confuse are
    refused with InvalidInput: empty levels, leading '/', '.' and '..' levels, a leading '~'
    (a home directory to servers that map names to paths, RFC 3501 5.1.3), NUL and other
    controls, the LIST wildcards '*' and '%', invalid UTF-8."""
    if name.endswith(SEPARATOR) and len(name) > 1:
        name = name[:-1]
    if not name:
        raise InvalidInput("empty mailbox name")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput("mailbox name is not valid UTF-8") from None
    if size > MAX_NAME_BYTES:
        raise InvalidInput("mailbox name too long")
    if name.startswith(SEPARATOR):
        raise InvalidInput("mailbox name must not start with '/'")
    if name.startswith("~"):
        raise InvalidInput("mailbox name must not start with '~'")
    # RFC 9051 5.1: no C0 or C1 controls, DEL, LINE SEPARATOR or PARAGRAPH SEPARATOR.
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "*%\u2028\u2029" for c in name):
        raise InvalidInput("mailbox name contains a control character or a wildcard")
    levels = name.split(SEPARATOR)
    if len(levels) > MAX_LEVELS:
        raise InvalidInput("mailbox name has too many levels")
    for level in levels:
        if level in ("", ".", ".."):
            raise InvalidInput(f"mailbox name has an invalid level {level!r}")
    if levels[0].upper() == "INBOX":
        levels[0] = "INBOX"
    return SEPARATOR.join(levels)


def parents_of(name: str) -> list[str]:
    """"a/b/c" -> ["a", "a/b"]."""
    levels = name.split(SEPARATOR)
    return [SEPARATOR.join(levels[:i]) for i in range(1, len(levels))]


# ---------------------------------------------------------------------------------------------
# Views


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
        self.pending_expunge: set[int] = set()
        self.pending_flags: dict[int, FlagState] = {}
        self.pending_keywords: set[str] = set()  # keywords of new messages since the last report
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
        """UIDs of the given (low, high) sequence ranges, ascending, without duplicates."""
        picked: list[int] = []
        for lo, hi in ranges:
            picked.extend(self.uids[lo - 1 : hi])
        return sorted(set(picked)) if len(picked) > 1 else picked

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
        message = await self.service.new_message(data, flags, keywords, internal_date)
        delivery = Delivery(self.mailbox.id, message)
        if not self.track_recent or self.readonly:
            return (await self.store.store_message([delivery]))[0]
        meta, first = await self.store.append_claiming_recent(delivery)
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
                    self.pending_keywords.update(state.keywords)
            elif self.own_changes.get(state.uid, 0) >= state.modseq:
                continue
            elif state.uid not in self.pending_expunge and self.seq_of(state.uid) is not None:
                self.pending_flags[state.uid] = state
        self.own_changes.clear()
        for uid in changes.vanished:
            if uid <= last and self.seq_of(uid) is not None:
                self.pending_expunge.add(uid)
                self.pending_flags.pop(uid, None)
        if new:
            self.uids.extend(new)
            self.uidnext = max(self.uidnext, new[-1] + 1)
            await self.claim_recent()

    async def changes_since(self, modseq: int) -> Changes:
        """What changed after ``modseq`` (QRESYNC, VANISHED (EARLIER))."""
        return await self.store.changes_since(self.mailbox.id, modseq)

    def take_updates(self, allow_expunge: bool, allow_flags: bool = True) -> ViewUpdates:
        out = ViewUpdates()
        if allow_expunge and self.pending_expunge:
            out.expunged = self._apply_expunges(self.pending_expunge)
            self.pending_expunge = set()
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
        out.keywords.update(self.pending_keywords)
        self.pending_keywords.clear()
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
        self.uids = _without(uids, found)  # a new array: the old may be the mailbox's state's
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
        for uid in uids:
            i = shared.index_of(uid)
            row = cached.get(uid) or fresh.get(uid)  # (another session may have cleared it)
            if i < 0 or row is None:
                continue  # expunged
            st = shared.states[i]
            if st.modseq > row.modseq:  # else the row read is as new or newer
                row = replace(row, modseq=st.modseq, flags=st.flags, keywords=st.keywords)
                cached[uid] = row  # brought up to date once, not at every FETCH
            out.append(row)
        return out

    async def body(self, blob_id: str, size: int | None = None) -> bytes:
        return await self.service.read_blob(blob_id, size)

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
        if unchanged_since is None and len(uids) <= FEW_FLAGS:
            # A STORE that would change nothing (+FLAGS \Seen on a seen message: half of
            # what clients send) is answered from one read of what is committed now, with no
            # write transaction; it takes effect at that read, before any later change.
            now = await self.store.flags_of(self.mailbox.id, uids)
            if not any(_changes(st, mode, flags, keywords) for st in now):
                return FlagUpdate(changed=[], failed_uids=[],
                                  highestmodseq=max((st.modseq for st in now), default=0))
        result = await self.store.update_flags(
            self.mailbox.id, uids, mode, flags, keywords, unchanged_since
        )
        for state in result.changed:
            self.own_changes[state.uid] = state.modseq
            self.pending_flags.pop(state.uid, None)
        if mode != "remove" and result.changed:
            # $Junk / $NotJunk: what a client says the user thinks (RFC 5788's registry).
            named = {k.lower() for k in keywords}
            if "$junk" in named or "$notjunk" in named:
                await self._train([s.uid for s in result.changed], "$junk" in named)
        return result

    async def expunge(self, uids: Sequence[int] | None = None) -> list[int]:
        """Removes \\Deleted messages (all of them, or those among ``uids``); the removed
        ones become pending EXPUNGEs of this view."""
        self._writable()
        if uids is None:
            removed = await self.store.expunge(self.mailbox.id, None)
        else:
            states = await self._stored_flag_states(uids)
            deleted = [s.uid for s in states if s.flags & _DELETED]
            removed = await self.store.expunge(self.mailbox.id, deleted) if deleted else []
        self._mark_gone(removed)
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


# ---------------------------------------------------------------------------------------------
# The service


class _Shared:
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
                self.uids, self.states = _without(self.uids, positions), _without(
                    self.states, positions)
            new = [(u, st) for u, st in zip(new_uids, new_states, strict=True) if u not in gone]
            new_uids = [u for u, _st in new]
            new_states = [st for _u, st in new]
        self.uids.extend(new_uids)
        self.states.extend(new_states)
        top = max(self.modseq, changes.highestmodseq)
        for st in sorted(changes.changed, key=_by_modseq):
            self.log_modseqs.append(st.modseq)
            self.log_states.append(st)
        for uid in changes.vanished:  # their exact MODSEQ is unknown: at most ``top``
            self.vanished_modseqs.append(top)
            self.vanished_uids.append(uid)
        self.modseq = top
        self.exact = True
        self._counts = None
        self._trim()

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


def _without(items: S, positions: list[int]) -> S:
    """A new ``items`` without the (ascending) ``positions``: the runs between them copied
    at C speed, not a Python pass over a 100,000-message mailbox per expunge."""
    out = items[:0]
    start = 0
    for i in positions:
        out += items[start:i]
        start = i + 1
    out += items[start:]
    return out


def _changes(st: FlagState, mode: str, flags: int, keywords: frozenset[str]) -> bool:
    """Whether a STORE of ``mode`` would change the message (as store.update_flags decides)."""
    if mode == "add":
        return st.flags | flags != st.flags or not keywords <= st.keywords
    if mode == "remove":
        return st.flags & ~flags != st.flags or not keywords.isdisjoint(st.keywords)
    return st.flags != flags or st.keywords != keywords


def _by_modseq(st: FlagState) -> int:
    return st.modseq


@dataclass(frozen=True, slots=True)
class Quota:
    """Usage and limits (0 = none) of an account (RFC 9208 resources STORAGE and MESSAGE)."""

    used_bytes: int
    used_messages: int
    limit_bytes: int
    limit_messages: int


class MailboxService:
    def __init__(
        self, store: MetadataStore, blobs: BlobStore, changes: ChangeBus, max_message_size: int
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.changes = changes
        self.max_message_size = max_message_size
        # (mailbox id, UIDVALIDITY) -> highest UID some session here has claimed as \Recent:
        # lets the other sessions skip the (durable) claim write for messages already taken.
        self.claimed_upto: dict[tuple[int, int], int] = {}
        self._feeds: dict[int, _Shared] = {}
        self._blob_cache: OrderedDict[str, bytes] = OrderedDict()
        self._blob_cache_bytes = 0
        self.trainer: SpamTrainer | None = None  # the spam filter, taught by Junk moves

    # -- the shared state of each selected mailbox --

    def attach_feed(self, mailbox_id: int) -> _Shared:
        shared = self._feeds.get(mailbox_id)
        if shared is None:
            shared = self._feeds[mailbox_id] = _Shared(self.changes.watch(mailbox_id))
        shared.users += 1
        return shared

    def detach_feed(self, mailbox_id: int) -> None:
        shared = self._feeds.get(mailbox_id)
        if shared is not None:
            shared.users -= 1
            if shared.users <= 0:
                shared.watch.close()
                del self._feeds[mailbox_id]

    def _round(self, shared: _Shared, force: bool) -> int:
        """The generation a caller must see: a new one if a change was published since the
        last round started (or ``force``: ask the store even without news)."""
        if force or shared.watch.event.is_set():
            shared.watch.event.clear()
            shared.generation += 1
        return shared.generation

    async def sync(self, mailbox_id: int, force: bool = False) -> _Shared | None:
        """The mailbox's shared state, caught up with every change published before this call
        (None when no state is loaded: callers ask the store)."""
        shared = self._feeds.get(mailbox_id)
        if shared is None or not shared.loaded:
            return None
        wanted = self._round(shared, force)
        while shared.applied < wanted:
            if shared.inflight is None and self.store.changes_inline:
                # The query runs on the loop without a pause: nobody can join it or cancel it
                # half-way, so it needs no task (NOOP's forced round ~12 µs cheaper).
                await self._catch_up(mailbox_id, shared)
                continue
            if shared.inflight is None:
                shared.inflight = asyncio.ensure_future(self._catch_up(mailbox_id, shared))
                shared.inflight.add_done_callback(_retrieve)
            # shield: a session that goes away must not cancel the query others wait for
            await asyncio.shield(shared.inflight)
        return shared

    async def _catch_up(self, mailbox_id: int, shared: _Shared) -> None:
        generation = shared.generation
        try:
            changes = await self.store.changes_since(mailbox_id, shared.modseq)
            shared.apply(changes)
            shared.applied = max(shared.applied, generation)
        finally:
            shared.inflight = None

    async def changes_for(self, mailbox_id: int, since: int, force: bool = False) -> Changes:
        """``store.changes_since``, answered from the shared state when it can be."""
        shared = await self.sync(mailbox_id, force)
        if shared is None or since < shared.floor:
            return await self.store.changes_since(mailbox_id, since)
        return shared.changes_after(since)

    # -- folders --

    async def list_mailboxes(self, account_id: int) -> list[Mailbox]:
        return await self.store.list_mailboxes(account_id)

    async def find(self, account_id: int, name: str) -> Mailbox | None:
        try:
            name = normalize_name(name)
        except InvalidInput:
            return None
        return await self.store.get_mailbox(account_id, name)

    async def require(self, account_id: int, name: str) -> Mailbox:
        box = await self.find(account_id, name)
        if box is None:
            raise NotFound(f"no mailbox {name}")
        return box

    async def create(
        self, account_id: int, name: str, special_use: str | None = None
    ) -> Mailbox:
        """Creates the mailbox and any missing parents (RFC 9051 6.3.4)."""
        name = normalize_name(name)
        if await self.store.get_mailbox(account_id, name) is not None:
            raise Conflict(f"mailbox {name} exists already")
        for parent in parents_of(name):
            if await self.store.get_mailbox(account_id, parent) is None:
                with contextlib.suppress(Conflict):  # created meanwhile by another session
                    await self.store.create_mailbox(account_id, parent)
        return await self.store.create_mailbox(account_id, name, special_use)

    async def delete(self, account_id: int, name: str) -> None:
        name = normalize_name(name)
        if name == "INBOX":
            raise InvalidInput("INBOX cannot be deleted")
        await self.require(account_id, name)
        prefix = name + SEPARATOR
        if any(b.name.startswith(prefix) for b in await self.store.list_mailboxes(account_id)):
            raise InvalidInput("mailbox has children, delete them first")
        unused = await self.store.delete_mailbox(account_id, name)
        await self._delete_blobs(unused)

    async def rename(self, account_id: int, old: str, new: str) -> None:
        old, new = normalize_name(old), normalize_name(new)
        source = await self.require(account_id, old)
        if old == new:
            return
        if await self.store.get_mailbox(account_id, new) is not None:
            raise Conflict(f"mailbox {new} exists already")
        if new.startswith(old + SEPARATOR):
            raise InvalidInput("a mailbox cannot be moved inside itself")
        for parent in parents_of(new):
            if parent != old and await self.store.get_mailbox(account_id, parent) is None:
                with contextlib.suppress(Conflict):
                    await self.store.create_mailbox(account_id, parent)
        if old == "INBOX":
            # RFC 9051 6.3.6: renaming INBOX moves its messages to the new mailbox; INBOX
            # stays, empty (its children are not renamed).
            target = await self.store.create_mailbox(account_id, new)
            uids = [s.uid for s in await self.store.list_flags(source.id)]
            if uids:
                await self.store.copy_messages(source.id, uids, target.id, move=True)
            return
        await self.store.rename_mailbox(account_id, old, new)

    async def subscribe(self, account_id: int, name: str, subscribed: bool) -> None:
        """Subscribing needs the mailbox; unsubscribing takes any name (it may be gone)."""
        if subscribed:
            name = (await self.require(account_id, name)).name
        await self.store.set_subscribed(account_id, name, subscribed)

    async def subscriptions(self, account_id: int) -> list[str]:
        return await self.store.list_subscriptions(account_id)

    async def status(self, mailbox: Mailbox) -> MailboxStatus:
        return await self.store.mailbox_status(mailbox.id)

    async def fresh_status(self, mailbox: Mailbox, sizes: bool) -> MailboxStatus:
        """STATUS of ``mailbox``, a row read from the store during the calling command. When
        a session here has the mailbox selected, and its shared state is the store's exact
        snapshot at the row's HIGHESTMODSEQ (every change, in any worker or node, raises it:
        same MODSEQ, same messages and flags), the counts come from memory; else (or when
        ``sizes`` are wanted, which memory does not keep) from the store."""
        shared = self._feeds.get(mailbox.id)
        if not sizes and shared is not None and shared.loaded:
            if shared.modseq < mailbox.highestmodseq or not shared.exact:
                # Behind: one catch-up query brings it (and every view here) up to date.
                await self.sync(mailbox.id, force=True)
            if shared.exact and shared.modseq == mailbox.highestmodseq:
                unseen, deleted = shared.flag_counts()
                uids = shared.uids
                first_recent = bisect.bisect_left(uids, mailbox.first_recent_uid)
                return MailboxStatus(
                    messages=len(uids), unseen=unseen, recent=len(uids) - first_recent,
                    size=0, uidnext=mailbox.uidnext, uidvalidity=mailbox.uidvalidity,
                    highestmodseq=mailbox.highestmodseq, deleted=deleted, deleted_size=0,
                )
        return await self.store.mailbox_status(mailbox.id)

    async def quota(self, account_id: int) -> Quota:
        account = await self.store.get_account_by_id(account_id)
        if account is None:
            raise NotFound("account is gone")
        used_bytes, used_messages = await self.store.quota_usage(account_id)
        return Quota(used_bytes, used_messages, account.quota_bytes, account.quota_messages)

    # -- messages --

    async def append(
        self,
        mailbox: Mailbox,
        data: bytes,
        flags: int = 0,
        keywords: frozenset[str] = frozenset(),
        internal_date: datetime | None = None,
        envelope: Envelope | None = None,
    ) -> MessageMeta:
        """Stores the bytes durably (blob first, then the row) and returns the new message."""
        message = await self.new_message(data, flags, keywords, internal_date, envelope)
        stored = await self.store.store_message([Delivery(mailbox.id, message)])
        return stored[0]

    async def new_message(
        self,
        data: bytes,
        flags: int = 0,
        keywords: frozenset[str] = frozenset(),
        internal_date: datetime | None = None,
        envelope: Envelope | None = None,
    ) -> NewMessage:
        """The message file written durably; the row still to store."""
        if len(data) > self.max_message_size:
            raise InvalidInput("message too big")
        blob_id = await asyncio.to_thread(self.blobs.put, data)
        return NewMessage(
            blob_id=blob_id,
            size=len(data),
            internal_date=internal_date or datetime.now(UTC),
            flags=flags,
            keywords=keywords,
            envelope=envelope or _envelope(data),
        )

    async def append_many(self, items: Sequence[tuple[Mailbox, NewMessage, bytes]]
                          ) -> list[MessageMeta]:
        """A batch of APPENDs (an import): every file written, one flush, then every row in
        one transaction. The ``blob_id`` of each NewMessage is filled in here."""
        for _box, _message, data in items:
            if len(data) > self.max_message_size:
                raise InvalidInput("message too big")

        def write(part: Sequence[tuple[Mailbox, NewMessage, bytes]]) -> list[str]:
            return [self.blobs.write(data) for _box, _message, data in part]

        # A few threads: file writes are system calls that wait on the disk, not on the GIL.
        step = max(1, -(-len(items) // BULK_WRITERS))
        parts = await asyncio.gather(*(asyncio.to_thread(write, items[i : i + step])
                                       for i in range(0, len(items), step)))
        await asyncio.to_thread(self.blobs.flush)  # files durable before the rows naming them
        blob_ids = [blob_id for part in parts for blob_id in part]
        return await self.store.store_message([  # (no dataclasses.replace: 10x its cost)
            Delivery(box.id, NewMessage(blob_id, m.size, m.internal_date, m.flags, m.keywords,
                                        m.envelope))
            for (box, m, _data), blob_id in zip(items, blob_ids, strict=True)
        ])

    async def remove(self, mailbox: Mailbox, uids: Sequence[int]) -> None:
        """Takes messages out again (a MULTIAPPEND whose later message failed)."""
        if uids:
            await self.store.expunge(mailbox.id, uids)

    async def message_bytes(self, mailbox: Mailbox, uid: int) -> bytes | None:
        """The bytes of one message of any mailbox (CATENATE's URLs), None if there is none."""
        rows = await self.store.get_messages(mailbox.id, [uid])
        return await self.read_blob(rows[0].blob_id, rows[0].size) if rows else None

    async def read_blob(self, blob_id: str, size: int | None = None) -> bytes:
        """The message bytes, hash-checked (CorruptBlob rather than bad bytes). A small file
        is read right here: that costs less than handing it to a thread and back."""
        if size is None or size > SMALL_BLOB:
            return await asyncio.to_thread(self.blobs.get, blob_id)
        cache = self._blob_cache
        data = cache.get(blob_id)
        if data is not None:
            cache.move_to_end(blob_id)
            return data
        data = self.blobs.get(blob_id)
        cache[blob_id] = data
        self._blob_cache_bytes += len(data)
        while self._blob_cache_bytes > BLOB_CACHE_BYTES:
            _old, dropped = cache.popitem(last=False)
            self._blob_cache_bytes -= len(dropped)
        return data

    async def open(
        self, account_id: int, name: str, *, readonly: bool, track_recent: bool
    ) -> MailboxView:
        """SELECT/EXAMINE: a view of the mailbox as it is now, watching for changes."""
        box = await self.require(account_id, name)
        # Watch before listing: a change after the list wakes the view. One made between
        # reading ``box`` and the list is in the list already; at worst it is reported again.
        watch = self.changes.watch(box.id)
        shared = self.attach_feed(box.id)
        try:
            uids = None
            if await self.sync(box.id) is not None:  # another view keeps it current
                flags, modseq, uids = shared.states, shared.modseq, shared.uids
            else:
                generation = self._round(shared, False)
                flags, modseq = await self.store.list_flags(box.id), box.highestmodseq
                if not shared.loaded:
                    shared.install(flags, modseq, generation)
            view = MailboxView(
                self, box, flags, readonly=readonly, track_recent=track_recent, watch=watch,
                modseq=modseq, uids=uids,
            )
        except BaseException:
            watch.close()
            self.detach_feed(box.id)
            raise
        if box.first_recent_uid <= view.last_uid:  # else no write: nothing new to claim
            await view.claim_recent()
        view.reported_recent = view.recent_count()
        return view

    def watch_account(self, account_id: int) -> AccountWatch:
        """IMAP NOTIFY: a watch on chosen mailboxes of an account and on its mailbox list."""
        return AccountWatch(self.changes.watch_many([account_channel(account_id)]), account_id)

    async def _delete_blobs(self, blob_ids: Iterable[str]) -> None:
        for blob_id in blob_ids:
            with contextlib.suppress(Exception):  # a leftover file is only wasted space
                await asyncio.to_thread(self.blobs.delete, blob_id)


class AccountWatch:
    """FeedWatch over the ChangeBus: one MultiWatch on the mailbox ids and the account's
    channel (which ``take`` reports as LIST_CHANGED, 0)."""

    def __init__(self, watch: MultiWatch, account_id: int) -> None:
        self.watch = watch
        self.channel = account_channel(account_id)

    def set_ids(self, ids: Collection[int]) -> None:
        self.watch.set_ids([*ids, self.channel])

    async def wait(self) -> None:
        await self.watch.wait()

    def take(self) -> set[int]:
        dirty = self.watch.take()
        if self.channel in dirty:
            dirty.discard(self.channel)
            dirty.add(0)
        return dirty

    def close(self) -> None:
        self.watch.close()


class SpamTrainer(Protocol):
    async def train(self, account_id: int, blob_ids: Sequence[str], is_spam: bool) -> int: ...


def is_junk(mailbox: Mailbox) -> bool:
    return mailbox.special_use == "\\Junk"


def _retrieve(task: asyncio.Task[None]) -> None:
    """Takes a failed catch-up's error, so asyncio does not warn when every waiter has gone
    (each waiter got it already; the next caller asks again)."""
    if not task.cancelled():
        task.exception()


def _envelope(data: bytes) -> Envelope:
    from mailstead.proto import mime

    try:
        return mime.parse_envelope_fields(data)
    except Exception:  # a message too broken to parse is still stored as given
        return Envelope()
