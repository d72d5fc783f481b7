"""Storing imported messages into one account, through the mailbox service.

Duplicates are skipped: a message is known by its Message-ID, Date and size (by its SHA-256
when it has no Message-ID), within its target folder, so a rerun of an interrupted import
copies only what is missing. A message whose header cannot be parsed is stored as it is and
reported, never dropped. Messages are stored in batches: every file of a batch written and
flushed once, then all its rows committed in one transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mailstead.core.errors import Conflict, InvalidInput, NotFound
from mailstead.core.models import Account, Envelope, Mailbox, MessageMeta, NewMessage
from mailstead.mailmove.sources import SourceMessage, header_date, role_of
from mailstead.proto.mime import parse_envelope_fields
from mailstead.services.mailbox import MailboxService
from mailstead.services.mailbox_names import normalize_name

BATCH = 500  # messages per durable batch
READ_CHUNK = 200  # messages taken from a (blocking) source per thread hop

Key = tuple[str, int, int]  # (Message-ID or "#sha256", Date in seconds or -1, size)
_HEADER_START = re.compile(rb"^[!-9;-~]+[ \t]*:")


def message_key(envelope: Envelope, size: int, blob_id: str) -> Key:
    if envelope.message_id:
        when = -1 if envelope.date is None else int(envelope.date.timestamp())
        return envelope.message_id, when, size
    return "#" + blob_id, -1, size


def key_of_meta(meta: MessageMeta) -> Key:
    return message_key(meta.envelope, meta.size, meta.blob_id)


@dataclass
class ImportReport:
    stored: int = 0
    skipped: int = 0  # duplicates of messages already there (or earlier in the source)
    seen: int = 0  # messages read from the source
    unparsable: list[str] = field(default_factory=list)  # stored as they are
    failed: list[str] = field(default_factory=list)  # could not be stored, with the reason
    folders: dict[str, int] = field(default_factory=dict)  # target mailbox -> stored there
    total: int | None = None  # how many the source holds, when known

    def summary(self, dry_run: bool = False) -> str:
        verb = "would store" if dry_run else "stored"
        text = f"{verb} {self.stored}, skipped {self.skipped} duplicates"
        if self.unparsable:
            text += f", {len(self.unparsable)} unparsable (stored as they are)"
        if self.failed:
            text += f", {len(self.failed)} failed"
        return text


@dataclass(slots=True)
class _Prepared:
    source: SourceMessage
    message: NewMessage
    key: Key
    problem: str | None


def prepare(item: SourceMessage) -> _Prepared:
    """Parses the envelope (in a worker thread: no store, no loop)."""
    data = item.data
    problem = None
    try:
        envelope = parse_envelope_fields(data)
    except Exception as exc:  # stored as it is all the same
        envelope, problem = Envelope(), f"unparsable header: {exc}"
    if problem is None and not _HEADER_START.match(data):
        problem = "no header fields"
    blob_id = "" if envelope.message_id else hashlib.sha256(data).hexdigest()
    when = item.internal_date or envelope.date or header_date(data) or datetime.now(UTC)
    message = NewMessage(blob_id="", size=len(data), internal_date=when, flags=item.flags,
                         keywords=item.keywords, envelope=envelope)
    return _Prepared(item, message, message_key(envelope, len(data), blob_id), problem)


def _take(iterator: Iterator[SourceMessage], count: int) -> list[_Prepared]:
    taken = []
    for item in iterator:
        taken.append(prepare(item))
        if len(taken) >= count:
            break
    return taken


class Importer:
    """Imports into ``account``; ``progress`` is called with the report after every batch."""

    def __init__(self, mailboxes: MailboxService, account: Account, *, dry_run: bool = False,
                 batch: int = BATCH, progress: Callable[[ImportReport], None] | None = None
                 ) -> None:
        self.mailboxes = mailboxes
        self.account = account
        self.dry_run = dry_run
        self.batch_size = batch
        self.progress = progress
        self.report = ImportReport()
        self._targets: dict[tuple[str, str | None], Mailbox] = {}
        self._known: dict[int, set[Key]] = {}
        self._pending: list[tuple[Mailbox, _Prepared]] = []
        self._dry_boxes = 0
        self._inflight: asyncio.Future[None] | None = None

    # -- folders --

    async def target(self, folder: str, special_use: str | None = None) -> Mailbox:
        """Our mailbox for a source folder: the one with the folder's role (from the source's
        SPECIAL-USE, else from its name: "Sent Items" is our Sent), else the same name,
        created when missing."""
        cache_key = (folder, special_use)
        box = self._targets.get(cache_key)
        if box is not None:
            return box
        role = special_use or role_of(folder)
        if folder.upper() == "INBOX":
            role = None
        boxes = await self.mailboxes.list_mailboxes(self.account.id)
        box = next((b for b in boxes if role and b.special_use == role), None)
        if box is None:
            box = await self._by_name(folder)
        self._targets[cache_key] = box
        return box

    async def _by_name(self, folder: str) -> Mailbox:
        try:
            name = normalize_name(folder)
        except InvalidInput:  # a name we cannot hold as it is: keep what can be kept
            levels = [re.sub(r"^[.~]+", "_", level) or "_" for level in folder.split("/")]
            name = normalize_name("/".join(levels))
        box = await self.mailboxes.find(self.account.id, name)
        if box is not None:
            return box
        if self.dry_run:  # a stand-in that names the mailbox; nothing is created
            self._dry_boxes -= 1
            return Mailbox(id=self._dry_boxes, account_id=self.account.id, name=name,
                           special_use=None, uidvalidity=0, uidnext=1, highestmodseq=0,
                           first_recent_uid=1)
        try:
            return await self.mailboxes.create(self.account.id, name)
        except Conflict:  # made meanwhile
            found = await self.mailboxes.find(self.account.id, name)
            if found is None:
                raise NotFound(f"mailbox {name} vanished") from None
            return found

    async def known_keys(self, box: Mailbox) -> set[Key]:
        """The keys of the messages the mailbox holds already (read once per import)."""
        known = self._known.get(box.id)
        if known is None:
            rows = [] if box.id < 0 else await self.mailboxes.store.get_messages(box.id)
            known = self._known[box.id] = {key_of_meta(m) for m in rows}
        return known

    # -- messages --

    async def run(self, source: Iterable[SourceMessage]) -> ImportReport:
        """Imports everything ``source`` yields (read in a worker thread, so a large file does
        not hold up the event loop), then finishes."""
        iterator = iter(source)
        while chunk := await asyncio.to_thread(_take, iterator, READ_CHUNK):
            for prepared in chunk:
                await self._add(prepared)
        await self.finish()
        return self.report

    async def add(self, items: Iterable[SourceMessage]) -> None:
        for prepared in await asyncio.to_thread(lambda: [prepare(i) for i in items]):
            await self._add(prepared)

    def skipped(self, count: int) -> None:
        """Messages a source left out because they are here already (a resumed IMAP pull)."""
        self.report.seen += count
        self.report.skipped += count

    async def _add(self, prepared: _Prepared) -> None:
        self.report.seen += 1
        item = prepared.source
        box = await self.target(item.folder, item.special_use)
        known = await self.known_keys(box)
        if prepared.key in known:
            self.report.skipped += 1
            return
        known.add(prepared.key)
        if prepared.problem is not None:
            self.report.unparsable.append(f"{item.origin}: {prepared.problem}")
        if len(item.data) > self.mailboxes.max_message_size:
            self.report.failed.append(f"{item.origin}: larger than limits.max_message_size")
            return
        self._pending.append((box, prepared))
        if len(self._pending) >= self.batch_size:
            await self.flush()

    async def flush(self) -> None:
        """Starts storing the pending batch; it runs while the next one is read and parsed
        (one batch in flight: the previous one is waited for first)."""
        await self._settle()
        pending, self._pending = self._pending, []
        if pending:
            self._inflight = asyncio.ensure_future(self._store(pending))

    async def _settle(self) -> None:
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            await inflight

    async def _store(self, pending: list[tuple[Mailbox, _Prepared]]) -> None:
        if not self.dry_run:
            await self.mailboxes.append_many(
                [(box, p.message, p.source.data) for box, p in pending])
        for box, _p in pending:
            self.report.folders[box.name] = self.report.folders.get(box.name, 0) + 1
        self.report.stored += len(pending)
        if self.progress is not None:
            self.progress(self.report)

    async def finish(self) -> ImportReport:
        await self.flush()
        await self._settle()
        return self.report
