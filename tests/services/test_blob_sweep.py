"""Message files whose last reference went are removed, and never one a delivery still needs."""

from __future__ import annotations

import datetime as dt

import pytest

from mailstead.store.interfaces import Delivery, NewMessage
from mailstead.wiring import sweep_unused_blobs
from tests.conftest import RunningServer


def deliver(server: RunningServer, address: str, body: bytes, folder: str = "INBOX") -> int:
    store = server.services.store
    account = server.run(store.get_account(address))
    assert account is not None
    box = server.run(store.get_mailbox(account.id, folder))
    assert box is not None
    blob_id = server.services.blobs.put(body)
    now = dt.datetime.now(dt.UTC)
    server.run(store.store_message([Delivery(box.id, NewMessage(blob_id, len(body), now))]))
    return box.id


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_expunged_files_are_swept_shared_ones_kept(mail_server: RunningServer) -> None:
    s = mail_server
    shared = b"Subject: shared\r\n\r\nsame bytes for two people\r\n"
    alone = b"Subject: alone\r\n\r\nonly alice has this\r\n"
    alice_inbox = deliver(s, "alice@example.test", shared)
    deliver(s, "bob@example.test", shared)
    deliver(s, "alice@example.test", alone)
    blobs = s.services.blobs
    shared_id, alone_id = (blobs.put(b) for b in (shared, alone))  # ids only; files exist

    s.run(s.services.store.expunge(alice_inbox, [1, 2]))
    # Fresh files are spared: a delivery of the same bytes may be about to commit.
    assert s.run(sweep_unused_blobs(s.services, grace_seconds=600)) == 0
    assert blobs.exists(alone_id)
    s.run(s.services.store.expunge(alice_inbox, None))  # nothing left to expunge: harmless

    deliver(s, "alice@example.test", alone)  # re-delivered: referenced again
    s.run(s.services.store.expunge(alice_inbox, [3]))
    assert s.run(sweep_unused_blobs(s.services, grace_seconds=0)) == 1
    assert not blobs.exists(alone_id)
    assert blobs.exists(shared_id)  # bob still has it
    assert blobs.get(shared_id) == shared
