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

The parts: ``mailbox_names`` (names and their parents), ``mailbox_state`` (the state every view
of a mailbox in this process shares), ``mailbox_view`` (one session's view), and here the
service that opens views and does everything else.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from mailstead.core.errors import Conflict, InvalidInput, NotFound
from mailstead.services.mailbox_names import (
    SEPARATOR,
    normalize_name,
    parents_of,
)
from mailstead.services.mailbox_state import SharedMailboxState
from mailstead.services.mailbox_view import MailboxView
from mailstead.store.blob_fs import SMALL_BLOB, by_size
from mailstead.store.changes import ChangeBus, MultiWatch, account_channel
from mailstead.store.interfaces import (
    BlobStore,
    Changes,
    Delivery,
    Envelope,
    FlagState,
    Mailbox,
    MailboxStatus,
    MessageMeta,
    MetadataStore,
    NewMessage,
)

BULK_WRITERS = 4  # threads writing the files of one append_many
# Message files are immutable (named by their hash): small ones read lately are kept.
BLOB_CACHE_BYTES = 16 * 1024 * 1024


# ---------------------------------------------------------------------------------------------
# The service


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
        self._feeds: dict[int, SharedMailboxState] = {}
        self._blob_cache: OrderedDict[str, bytes] = OrderedDict()
        self._blob_cache_bytes = 0
        self.trainer: SpamTrainer | None = None  # the spam filter, taught by Junk moves
        changes.flags_heard = self._flags_heard

    def _flags_heard(self, mailbox_id: int, highestmodseq: int,
                     changed: Sequence[FlagState], vanished: Sequence[int] = ()) -> None:
        """A flag change (or an APPEND, a UID EXPUNGE) another worker committed, with its
        message states and vanished UIDs (ChangeBus.publish_flags): the watchers are told as
        for any change, and the mailbox's shared state takes them without a catch-up query
        when they are the only change since it was exact."""
        shared = self._feeds.get(mailbox_id)
        before = shared.expect_change() if shared is not None else None
        self.changes.publish_here((mailbox_id,))
        if shared is not None and before is not None:
            shared.known_change(before, changed, highestmodseq, vanished)

    # -- the shared state of each selected mailbox --

    def attach_feed(self, mailbox_id: int) -> SharedMailboxState:
        shared = self._feeds.get(mailbox_id)
        if shared is None:
            shared = self._feeds[mailbox_id] = SharedMailboxState(self.changes.watch(mailbox_id))
        shared.users += 1
        return shared

    def detach_feed(self, mailbox_id: int) -> None:
        shared = self._feeds.get(mailbox_id)
        if shared is not None:
            shared.users -= 1
            if shared.users <= 0:
                shared.watch.close()
                del self._feeds[mailbox_id]

    def _round(self, shared: SharedMailboxState, force: bool) -> int:
        """The generation a caller must see: a new one if a change was published since the
        last round started (or ``force``: ask the store even without news)."""
        if force or shared.watch.event.is_set():
            shared.watch.event.clear()
            shared.generation += 1
        return shared.generation

    async def sync(self, mailbox_id: int, force: bool = False) -> SharedMailboxState | None:
        """The mailbox's shared state, caught up with every change published before this call
        (None when no state is loaded: callers ask the store)."""
        shared = self._feeds.get(mailbox_id)
        if shared is None or not shared.loaded:
            return None
        marker = None
        if force:
            # Read before the query of this round: a commit after it changes the marker, so
            # the next forced round asks again even if this one's query saw that commit.
            marker = self.store.commit_marker()
            if (marker is not None and marker == shared.marker
                    and shared.applied == shared.generation):
                # Nothing was committed anywhere since a forced round read the store: a NOOP
                # has nothing to ask it (the marker is a pragma, cheaper than the query).
                force = False
        wanted = self._round(shared, force)
        while shared.applied < wanted:
            if shared.inflight is None and self.store.changes_inline:
                # The query runs on the loop without a pause: nobody can join it or cancel it
                # half-way, so it needs no task (NOOP's forced round ~12 µs cheaper).
                await self._catch_up(mailbox_id, shared, marker)
                continue
            if shared.inflight is None:
                shared.inflight = asyncio.ensure_future(
                    self._catch_up(mailbox_id, shared, marker))
                shared.inflight.add_done_callback(_retrieve)
            # shield: a session that goes away must not cancel the query others wait for
            await asyncio.shield(shared.inflight)
        return shared

    async def _catch_up(self, mailbox_id: int, shared: SharedMailboxState,
                        marker: int | None = None) -> None:
        generation = shared.generation
        try:
            changes = await self.store.changes_since(mailbox_id, shared.modseq)
            shared.apply(changes)
            if marker is not None:
                shared.marker = marker
            shared.applied = max(shared.applied, generation)
        finally:
            shared.inflight = None

    def shared_state(self, mailbox_id: int) -> SharedMailboxState | None:
        """The mailbox's shared state as it is (not caught up), None when none is loaded."""
        shared = self._feeds.get(mailbox_id)
        return shared if shared is not None and shared.loaded else None

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
        message, flush = await self.new_message(data, flags, keywords, internal_date, envelope)
        stored = await self.store.store_message([Delivery(mailbox.id, message)], before=flush)
        return stored[0]

    async def new_message(
        self,
        data: bytes,
        flags: int = 0,
        keywords: frozenset[str] = frozenset(),
        internal_date: datetime | None = None,
        envelope: Envelope | None = None,
    ) -> tuple[NewMessage, Callable[[], None]]:
        """The message file written, and what makes it durable: the caller passes that to
        the store as ``before`` its row (``store_message``), so the writing thread flushes
        the file and then commits the row, one hand-over of the event loop for both (the
        answer still waits for both on disk). A small file is written right here: that
        costs less than handing it to a thread and back."""
        if len(data) > self.max_message_size:
            raise InvalidInput("message too big")
        blob_id = await by_size(len(data), self.blobs.write, data)
        return NewMessage(
            blob_id=blob_id,
            size=len(data),
            internal_date=internal_date or datetime.now(UTC),
            flags=flags,
            keywords=keywords,
            envelope=envelope or _envelope(data),
        ), self.blobs.flush

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
        data = self.read_small_blob(blob_id, size)
        assert data is not None
        return data

    def read_small_blob(self, blob_id: str, size: int) -> bytes | None:
        """``read_blob`` of a small file, right here (no thread, no await); None for a file
        larger than ``SMALL_BLOB``, which ``read_blob`` hands to a thread."""
        if size > SMALL_BLOB:
            return None
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
