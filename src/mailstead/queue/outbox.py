"""A user's outbox: the messages they sent that still wait in the queue for some recipient.

The webmail's Sent view and the terminal client find a Sent copy's queue entry by its
Message-ID (the copy in Sent and the queued message carry the same one), to show it as
waiting and offer a Recall. Only entries the account submitted itself are listed, and only
while some recipient is still pending: those are the ones a recall can still stop.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from datetime import datetime

from mailstead.proto.mime import parse_envelope_fields
from mailstead.store.interfaces import Account, BlobStore, MetadataStore, QueueEntry

HEAD_BYTES = 64 * 1024  # the header is all we read of each queued message


@dataclass(frozen=True, slots=True)
class OutboxItem:
    queue_id: str
    message_id: str  # as in the header, with its angle brackets; "" when it has none
    subject: str
    created: datetime
    pending: list[str] = field(default_factory=list)  # not reached yet: a recall stops these
    delivered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


# blob id -> (Message-ID, subject): blobs never change (content-addressed), so an entry never
# goes stale, and the Sent view, which asks on every render, reads each message once.
_HEADERS: dict[str, tuple[str, str]] = {}
_HEADERS_LOCK = threading.Lock()  # filled from worker threads
CACHED = 4096


def _headers(blobs: BlobStore, blob_id: str) -> tuple[str, str]:
    with _HEADERS_LOCK:
        known = _HEADERS.get(blob_id)
    if known is not None:
        return known
    try:
        data = blobs.get(blob_id)
    except Exception:  # a damaged file: still listed (recallable), without its header
        return "", ""
    end = data.find(b"\r\n\r\n", 0, HEAD_BYTES)
    fields = parse_envelope_fields(data[: end + 4] if end >= 0 else data[:HEAD_BYTES])
    found = (fields.message_id.strip(), fields.subject)
    with _HEADERS_LOCK:
        if len(_HEADERS) >= CACHED:
            _HEADERS.pop(next(iter(_HEADERS)))
        _HEADERS[blob_id] = found
    return found


async def outbox(store: MetadataStore, blobs: BlobStore, account: Account) -> list[OutboxItem]:
    """The account's queued messages with a recipient still pending, oldest first."""
    entries = [e for e in await store.list_queue(False, account_id=account.id)
               if any(r.status == "pending" for r in e.recipients)]
    heads = await asyncio.to_thread(lambda: [_headers(blobs, e.blob_id) for e in entries])
    items = []
    for entry, (message_id, subject) in zip(entries, heads, strict=True):

        def having(status: str, entry: QueueEntry = entry) -> list[str]:
            return [r.address for r in entry.recipients if r.status == status]

        items.append(OutboxItem(entry.id, message_id, subject, entry.created,
                                having("pending"), having("delivered"), having("failed")))
    return items


def by_message_id(items: list[OutboxItem]) -> dict[str, OutboxItem]:
    """Items keyed by Message-ID (those without one cannot be matched to a Sent copy)."""
    return {item.message_id: item for item in items if item.message_id}
