"""A user's outbox: the messages they sent that still wait in the queue for some recipient.

The webmail's Sent view and the terminal client find a Sent copy's queue entry by its
Message-ID (the copy in Sent and the queued message carry the same one), to show it as
waiting and offer a Recall. Only entries the account submitted itself are listed, and only
while some recipient is still pending: those are the ones a recall can still stop.
"""

from __future__ import annotations

import asyncio
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


def _head(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n", 0, HEAD_BYTES)
    return data[: end + 4] if end >= 0 else data[:HEAD_BYTES]


def _item(entry: QueueEntry, data: bytes | None) -> OutboxItem:
    fields = parse_envelope_fields(_head(data)) if data is not None else None

    def having(status: str) -> list[str]:
        return [r.address for r in entry.recipients if r.status == status]

    return OutboxItem(
        queue_id=entry.id,
        message_id=fields.message_id.strip() if fields else "",
        subject=fields.subject if fields else "",
        created=entry.created,
        pending=having("pending"),
        delivered=having("delivered"),
        failed=having("failed"),
    )


async def outbox(store: MetadataStore, blobs: BlobStore, account: Account) -> list[OutboxItem]:
    """The account's queued messages with a recipient still pending, oldest first."""
    entries = [e for e in await store.list_queue(False, account_id=account.id)
               if any(r.status == "pending" for r in e.recipients)]

    def read(entry: QueueEntry) -> bytes | None:
        try:
            return blobs.get(entry.blob_id)
        except Exception:  # a damaged file: still listed (recallable), without its header
            return None

    contents = await asyncio.to_thread(lambda: [read(e) for e in entries])
    return [_item(e, data) for e, data in zip(entries, contents, strict=True)]


def by_message_id(items: list[OutboxItem]) -> dict[str, OutboxItem]:
    """Items keyed by Message-ID (those without one cannot be matched to a Sent copy)."""
    return {item.message_id: item for item in items if item.message_id}
