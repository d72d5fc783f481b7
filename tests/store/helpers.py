"""Helpers shared by the store tests: accounts, messages and queue entries made briefly."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime

from mailstead.store.interfaces import (
    Account,
    Delivery,
    Mailbox,
    MessageMeta,
    MetadataStore,
    NewMessage,
    QueueEntry,
    QueueRecipient,
)
from mailstead.store.sql import SqlStore

StoreMaker = Callable[..., SqlStore]

WHEN = datetime(2024, 5, 17, 9, 30, 15, tzinfo=UTC)


def blob(n: int) -> str:
    return hashlib.sha256(f"message {n}".encode()).hexdigest()


def new_message(n: int = 1, size: int = 100, flags: int = 0, **kw: object) -> NewMessage:
    return NewMessage(blob_id=blob(n), size=size, internal_date=WHEN, flags=flags, **kw)  # type: ignore[arg-type]


async def make_account(
    store: MetadataStore,
    address: str = "alice@example.test",
    quota_bytes: int = 0,
    quota_messages: int = 0,
) -> Account:
    domain = address.rpartition("@")[2]
    if await store.get_domain(domain) is None:
        await store.add_domain(domain)
    return await store.add_account(
        address, "hash", quota_bytes=quota_bytes, quota_messages=quota_messages
    )


async def inbox(store: MetadataStore, account: Account, name: str = "INBOX") -> Mailbox:
    box = await store.get_mailbox(account.id, name)
    assert box is not None
    return box


async def deliver(store: MetadataStore, box: Mailbox, n: int = 1, **kw: object) -> MessageMeta:
    [meta] = await store.store_message([Delivery(box.id, new_message(n, **kw))])  # type: ignore[arg-type]
    return meta


def queue_entry(qid: str = "Q1", n: int = 9, **kw: object) -> QueueEntry:
    fields: dict[str, object] = {
        "id": qid,
        "sender": "alice@example.test",
        "recipients": [QueueRecipient("bob@remote.example", notify="FAILURE", orcpt="rfc822;bob")],
        "blob_id": blob(n),
        "size": 120,
        "created": WHEN,
        "next_attempt": WHEN,
    }
    return QueueEntry(**(fields | kw))  # type: ignore[arg-type]
