"""Putting mail into a running server's INBOX and reading it back, through the store API."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from mailstead.store.interfaces import Delivery, NewMessage, SystemFlag
from tests.conftest import DOMAIN, RunningServer


def message(subject: str, body: str = "Hello.\r\n", sender: str = "carol@example.org") -> bytes:
    return (
        f"From: {sender}\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@example.org>\r\n\r\n{body}"
    ).encode()


def deliver(server: RunningServer, address: str, raw: bytes) -> int:
    """Stores ``raw`` in the account's INBOX; returns its UID."""

    async def go() -> int:
        store = server.services.store
        account = await store.get_account(address)
        assert account is not None
        box = await store.get_mailbox(account.id, "INBOX")
        assert box is not None
        blob_id = server.services.blobs.put(raw)
        new = NewMessage(blob_id=blob_id, size=len(raw), internal_date=datetime.now(UTC))
        [meta] = await store.store_message([Delivery(box.id, new)])
        return meta.uid

    return server.run(go())


def inbox(server: RunningServer, address: str) -> dict[int, bool]:
    """UID -> seen, for every message the store holds in the INBOX (what IMAP would list)."""

    async def go() -> dict[int, bool]:
        store = server.services.store
        account = await store.get_account(address)
        assert account is not None
        box = await store.get_mailbox(account.id, "INBOX")
        assert box is not None
        return {f.uid: bool(f.flags & SystemFlag.SEEN) for f in await store.list_flags(box.id)}

    return server.run(go())


def blob_path(server: RunningServer, raw: bytes) -> Path:
    import hashlib

    blob_id = hashlib.sha256(raw).hexdigest()
    root = server.cfg.path(server.cfg.store.blob_dir)
    return root / blob_id[:2] / f"{blob_id}.eml"


def wait_until_unlocked(server: RunningServer, address: str = f"alice@{DOMAIN}",
                        limit: float = 30) -> None:
    """Waits for the server to notice a dropped POP3 connection and give the maildrop lock
    of ``address`` back (the store's lock, as another node would find it)."""
    store = server.services.store
    account = server.run(store.get_account(address))
    assert account is not None
    box = server.run(store.get_mailbox(account.id, "INBOX"))
    assert box is not None
    deadline = time.monotonic() + limit
    while not server.run(store.lock_maildrop(box.id, "test probe", 0)):
        if time.monotonic() > deadline:
            raise AssertionError("the POP3 lock was never released")
        time.sleep(0.02)
    server.run(store.unlock_maildrop(box.id, "test probe"))
