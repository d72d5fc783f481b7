"""Queue operations people ask for (CLI now, web later): retry now, delete."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from mailstead.core.errors import NotFound
from mailstead.store.interfaces import BlobStore, MetadataStore


async def delete_entry(store: MetadataStore, blobs: BlobStore, queue_id: str) -> bool:
    """Removes an entry (no notice to anyone) and the message file if nothing else uses it.
    Returns False when it was already gone."""
    existed = await store.get_queue_entry(queue_id) is not None
    for blob_id in await store.delete_queue_entry(queue_id):
        await asyncio.to_thread(blobs.delete, blob_id)
    return existed


async def retry_now(store: MetadataStore, queue_id: str) -> None:
    """Makes a waiting entry due at once (the next worker poll takes it)."""
    entry = await store.get_queue_entry(queue_id)
    if entry is None:
        raise NotFound(f"no queue entry {queue_id}")
    if entry.state != "queued":
        raise NotFound(f"queue entry {queue_id} is finished; nothing to retry")
    if not await store.make_due(queue_id, datetime.now(UTC)):
        raise NotFound(f"queue entry {queue_id} finished meanwhile; nothing to retry")
