"""Webmail operations for one account: folders, listing (paging, sorting, threads, search),
reading, flags, move, delete to Trash, junk. The pages and the JSON API both call these, so
they do the same thing; every lookup starts from the account, so one user never reaches
another user's mailbox (a foreign mailbox id is simply "not found")."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

from mailstead.core.errors import InvalidInput, NotFound
from mailstead.proto import mime
from mailstead.proto.mime_preview import preview
from mailstead.services import mail_order
from mailstead.services.mailbox import MailboxService
from mailstead.services.mailbox_view import MailboxView
from mailstead.store.interfaces import Account, Mailbox, MessageMeta, SystemFlag

# Display order of the special folders; the others follow alphabetically.
ROLE_ORDER = {None: 0, "\\Drafts": 1, "\\Sent": 2, "\\Archive": 3, "\\Junk": 4, "\\Trash": 5}
SORT_KEYS = ("date", "from", "subject", "size")
MAX_ID = 2**62  # larger numbers name nothing (and would overflow the store's integers)
SEARCH_SCAN_LIMIT = 5000  # body / attachment search reads at most this many newest messages
SUMMARY_CACHE = 20_000
SNIPPET_CHARS = 160
FLAG_NAMES = {"seen": SystemFlag.SEEN, "flagged": SystemFlag.FLAGGED,
              "answered": SystemFlag.ANSWERED, "draft": SystemFlag.DRAFT}



@dataclass(frozen=True, slots=True)
class FolderInfo:
    id: int
    name: str
    special_use: str | None
    messages: int
    unseen: int

    @property
    def label(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    @property
    def depth(self) -> int:
        return self.name.count("/")


def folders_token(folders: list[FolderInfo]) -> str:
    """What a page showed of the folders (ids and counts), for the live-update stream: a
    stream that finds them otherwise when it starts tells the page at once (mail that arrived
    between the page and the stream's start would else wait for the next change)."""
    return ".".join(f"{f.id}-{f.messages}-{f.unseen}" for f in folders)


@dataclass(slots=True)
class SearchQuery:
    text: str = ""  # quick search: sender, recipients or subject
    from_: str = ""
    to: str = ""
    subject: str = ""
    body: str = ""
    since: date | None = None
    before: date | None = None  # inclusive: messages of that day match
    has_attachment: bool = False

    @property
    def active(self) -> bool:
        return bool(self.text or self.from_ or self.to or self.subject or self.body
                    or self.since or self.before or self.has_attachment)


@dataclass(slots=True)
class ListQuery:
    page: int = 1
    sort: str = "date"
    order: Literal["asc", "desc"] = "desc"
    threads: bool = False
    search: SearchQuery = field(default_factory=SearchQuery)


@dataclass(frozen=True, slots=True)
class Summary:
    """What the list shows beyond the envelope, read from the message once per blob."""

    has_attachment: bool
    snippet: str


@dataclass(slots=True)
class Row:
    meta: MessageMeta
    summary: Summary
    thread_size: int = 1
    thread_unseen: bool = False

    @property
    def uid(self) -> int:
        return self.meta.uid

    @property
    def seen(self) -> bool:
        return bool(self.meta.flags & SystemFlag.SEEN)

    @property
    def flagged(self) -> bool:
        return bool(self.meta.flags & SystemFlag.FLAGGED)

    @property
    def answered(self) -> bool:
        return bool(self.meta.flags & SystemFlag.ANSWERED)

    @property
    def when(self) -> datetime:
        return message_date(self.meta)


@dataclass(slots=True)
class ListPage:
    rows: list[Row]
    total: int  # messages (or conversations) matching
    page: int
    pages: int
    truncated_search: bool = False  # the body/attachment search stopped at SEARCH_SCAN_LIMIT


def message_date(meta: MessageMeta) -> datetime:
    """The Date: header when it parsed, else the arrival time; always timezone-aware."""
    when = meta.envelope.date or meta.internal_date
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def summarize(data: bytes) -> Summary:
    """Whether it has attachments, and its snippet: the start of its first text part only
    (the same text as IMAP's PREVIEW), never an attachment's text."""
    root = mime.parse(data)
    snippet = preview(data, root)
    if len(snippet) > SNIPPET_CHARS:
        snippet = snippet[:SNIPPET_CHARS].rsplit(" ", 1)[0] or snippet[:SNIPPET_CHARS]
    return Summary(mime.has_attachment(root), snippet)


class SummaryCache:
    """blob id -> Summary (blobs never change, so entries never go stale)."""

    def __init__(self, size: int = SUMMARY_CACHE) -> None:
        self.size = size
        self._items: OrderedDict[str, Summary] = OrderedDict()

    def get(self, blob_id: str) -> Summary | None:
        found = self._items.get(blob_id)
        if found is not None:
            self._items.move_to_end(blob_id)
        return found

    def put(self, blob_id: str, summary: Summary) -> None:
        self._items[blob_id] = summary
        if len(self._items) > self.size:
            self._items.popitem(last=False)


def _contains(haystack: str, needle: str) -> bool:
    return needle.casefold() in haystack.casefold()


def _envelope_match(meta: MessageMeta, q: SearchQuery) -> bool:
    env = meta.envelope
    if q.text and not any(_contains(v, q.text) for v in (env.from_, env.to, env.cc, env.subject)):
        return False
    if q.from_ and not _contains(env.from_, q.from_):
        return False
    if q.to and not (_contains(env.to, q.to) or _contains(env.cc, q.to)):
        return False
    if q.subject and not _contains(env.subject, q.subject):
        return False
    when = message_date(meta)
    if q.since and when < datetime.combine(q.since, time.min, UTC):
        return False
    return not (q.before and when >= datetime.combine(q.before + timedelta(days=1), time.min, UTC))


class Mailroom:
    def __init__(self, mailboxes: MailboxService, account: Account, summaries: SummaryCache,
                 page_size: int) -> None:
        self.mailboxes = mailboxes
        self.store = mailboxes.store
        self.account = account
        self.summaries = summaries
        self.page_size = page_size

    # -- folders --

    async def folders(self) -> list[FolderInfo]:
        boxes = await self.mailboxes.list_mailboxes(self.account.id)
        infos = []
        for box in boxes:
            status = await self.mailboxes.status(box)
            infos.append(FolderInfo(box.id, box.name, box.special_use, status.messages,
                                    status.unseen))
        return sorted(infos, key=lambda f: (
            f.name != "INBOX", f.special_use is None, ROLE_ORDER.get(f.special_use, 9),
            f.name.lower()))

    async def folder(self, mailbox_id: int) -> Mailbox:
        """The account's mailbox with this id; NotFound for any other (even if it exists)."""
        box = await self.store.get_mailbox_by_id(mailbox_id) if 0 <= mailbox_id <= MAX_ID \
            else None
        if box is None or box.account_id != self.account.id:
            raise NotFound("no such folder")
        return box

    async def inbox(self) -> Mailbox:
        return await self.mailboxes.require(self.account.id, "INBOX")

    async def by_role(self, special_use: str) -> Mailbox:
        """The folder with this special use (\\Sent, \\Trash...), created if it went missing."""
        for box in await self.mailboxes.list_mailboxes(self.account.id):
            if box.special_use == special_use:
                return box
        name = special_use.lstrip("\\")
        found = await self.mailboxes.find(self.account.id, name)
        if found is not None:
            return found
        return await self.mailboxes.create(self.account.id, name, special_use)

    async def create_folder(self, name: str) -> Mailbox:
        return await self.mailboxes.create(self.account.id, name.strip())

    async def rename_folder(self, mailbox_id: int, new_name: str) -> None:
        box = await self.folder(mailbox_id)
        if box.name == "INBOX" or box.special_use:
            raise InvalidInput("INBOX and the special folders keep their names")
        await self.mailboxes.rename(self.account.id, box.name, new_name.strip())

    async def delete_folder(self, mailbox_id: int) -> None:
        box = await self.folder(mailbox_id)
        if box.special_use:
            raise InvalidInput(f"{box.name} is a special folder and cannot be deleted")
        await self.mailboxes.delete(self.account.id, box.name)

    # -- listing --

    async def summary(self, meta: MessageMeta) -> Summary:
        found = self.summaries.get(meta.blob_id)
        if found is None:
            try:
                data = await self.mailboxes.read_blob(meta.blob_id)
                found = await asyncio.to_thread(summarize, data)
            except Exception:  # a damaged file still gets a row in the list
                found = Summary(False, "")
            self.summaries.put(meta.blob_id, found)
        return found

    async def _search(self, metas: list[MessageMeta], q: SearchQuery) -> tuple[list[MessageMeta],
                                                                              bool]:
        found = [m for m in metas if _envelope_match(m, q)]
        if not q.body and not q.has_attachment:
            return found, False
        found.sort(key=lambda m: m.uid, reverse=True)  # newest first, then cap the scan
        truncated = len(found) > SEARCH_SCAN_LIMIT
        kept = []
        for meta in found[:SEARCH_SCAN_LIMIT]:
            if q.has_attachment and not (await self.summary(meta)).has_attachment:
                continue
            if q.body:
                try:
                    data = await self.mailboxes.read_blob(meta.blob_id)
                except Exception:
                    continue
                text = await asyncio.to_thread(mime.text_for_search, data)
                if not _contains(text, q.body):
                    continue
            kept.append(meta)
        return kept, truncated

    async def listing(self, box: Mailbox, query: ListQuery) -> ListPage:
        metas = await self.store.get_messages(box.id)
        truncated = False
        if query.search.active:
            metas, truncated = await self._search(metas, query.search)
        sort = query.sort if query.sort in SORT_KEYS else "date"
        # The order of IMAP SORT and the threads of THREAD=REFERENCES (RFC 5256), from the
        # mailbox service over the keys stored per message
        order = await mail_order.sorted_uids(self.store, box.id, sort, query.order == "desc")
        by_uid = {m.uid: m for m in metas}
        metas = [by_uid[uid] for uid in order if uid in by_uid]
        entries: list[tuple[MessageMeta, int, bool]]
        if query.threads:
            groups = await self._thread_groups(box)
            sizes: dict[int, int] = {}
            unseen: dict[int, bool] = {}
            for m in metas:
                g = groups[m.uid]
                sizes[g] = sizes.get(g, 0) + 1
                unseen[g] = unseen.get(g, False) or not m.flags & SystemFlag.SEEN
            shown: set[int] = set()
            entries = []
            # Each conversation appears once, where its first message in this order falls
            # (with date sorting descending: its latest message).
            for m in metas:
                g = groups[m.uid]
                if g not in shown:
                    shown.add(g)
                    entries.append((m, sizes[g], unseen[g]))
        else:
            entries = [(m, 1, not m.flags & SystemFlag.SEEN) for m in metas]
        total = len(entries)
        pages = max(1, -(-total // self.page_size))
        page = min(max(1, query.page), pages)
        chosen = entries[(page - 1) * self.page_size: page * self.page_size]
        rows = [Row(m, await self.summary(m), size, unseen_) for m, size, unseen_ in chosen]
        return ListPage(rows, total, page, pages, truncated)

    async def _thread_groups(self, box: Mailbox) -> dict[int, int]:
        """uid -> its conversation's number (THREAD=REFERENCES), the newest one first."""
        threads = await mail_order.conversations(self.store, box.id)
        return {uid: n for n, thread in enumerate(threads) for uid, _depth in thread.messages}

    async def conversation(self, box: Mailbox, meta: MessageMeta
                           ) -> list[tuple[MessageMeta, int]]:
        """The messages of ``meta``'s conversation in this folder with their depth, in
        thread order: each reply below what it answers, siblings oldest first."""
        for thread in await mail_order.conversations(self.store, box.id):
            uids = [uid for uid, _depth in thread.messages]
            if meta.uid in uids:
                by_uid = {m.uid: m for m in await self.store.get_messages(box.id, uids)}
                return [(by_uid[uid], depth) for uid, depth in thread.messages
                        if uid in by_uid]
        return [(meta, 0)]

    # -- reading --

    async def message(self, box: Mailbox, uid: int) -> MessageMeta:
        rows = await self.store.get_messages(box.id, [uid]) if 0 < uid <= MAX_ID else []
        if not rows:
            raise NotFound("no such message")
        return rows[0]

    async def content(self, meta: MessageMeta) -> bytes:
        return await self.mailboxes.read_blob(meta.blob_id)

    async def neighbours(self, box: Mailbox, uid: int) -> tuple[int | None, int | None]:
        """(newer uid, older uid) in date order, for next/previous links."""
        uids = await mail_order.sorted_uids(self.store, box.id, "date", descending=True)
        if uid not in uids:
            return None, None
        i = uids.index(uid)
        return (uids[i - 1] if i > 0 else None), (uids[i + 1] if i + 1 < len(uids) else None)

    # -- changing --

    @asynccontextmanager
    async def _view(self, box: Mailbox) -> AsyncIterator[MailboxView]:
        view = await self.mailboxes.open(self.account.id, box.name, readonly=False,
                                         track_recent=False)
        try:
            yield view
        finally:
            view.close()

    async def _existing(self, box: Mailbox, uids: Iterable[int]) -> list[int]:
        wanted = sorted({int(u) for u in uids if 0 < int(u) <= MAX_ID})
        if not wanted:
            return []
        return [m.uid for m in await self.store.get_messages(box.id, wanted)]

    async def set_flag(self, box: Mailbox, uids: Iterable[int], flag: str, on: bool) -> int:
        bit = FLAG_NAMES.get(flag)
        if bit is None:
            raise InvalidInput(f"unknown flag {flag!r} (one of {', '.join(FLAG_NAMES)})")
        present = await self._existing(box, uids)
        if not present:
            return 0
        async with self._view(box) as view:
            result = await view.store_flags(present, "add" if on else "remove", int(bit),
                                            frozenset())
        return len(result.changed)

    async def move(self, box: Mailbox, uids: Iterable[int], target: Mailbox) -> int:
        if target.account_id != self.account.id:
            raise NotFound("no such folder")
        present = await self._existing(box, uids)
        if not present or target.id == box.id:
            return 0
        async with self._view(box) as view:
            result = await view.copy(present, target, move=True)
        return len(result.pairs)

    async def delete(self, box: Mailbox, uids: Iterable[int]) -> int:
        """To Trash; from Trash (or Junk), for good."""
        present = await self._existing(box, uids)
        if not present:
            return 0
        if box.special_use in ("\\Trash", "\\Junk"):
            return await self._expunge(box, present)
        return await self.move(box, present, await self.by_role("\\Trash"))

    async def delete_for_good(self, box: Mailbox, uid: int) -> int:
        """Removes one message without going through Trash (a draft replaced or sent)."""
        return await self._expunge(box, await self._existing(box, [uid]))

    async def _expunge(self, box: Mailbox, uids: list[int]) -> int:
        if not uids:
            return 0
        async with self._view(box) as view:
            await view.store_flags(uids, "add", int(SystemFlag.DELETED), frozenset())
            removed = await view.expunge(uids)
        return len(removed)

    async def junk(self, box: Mailbox, uids: Iterable[int], is_junk: bool) -> int:
        target = await self.by_role("\\Junk") if is_junk else await self.inbox()
        return await self.move(box, uids, target)
