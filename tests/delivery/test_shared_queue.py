"""Two nodes share one PostgreSQL store (one schema: one queue) and one blob directory.

500 queued messages leave through both nodes' workers. Entries are claimed with FOR UPDATE SKIP
LOCKED and leases, so the receiving server gets every message exactly once.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from mailstead.services.delivery import InboundEnvelope, InboundRecipient, delivery_service
from tests.conftest import PG_DSN
from tests.delivery.conftest import Node
from tests.delivery.helpers import make_message, wait_for

ALICE = "alice@alpha.test"
BOB = "bob@beta.test"
BATCH = 500


def _inbox_count(node: Node, address: str) -> int:
    store = node.server.services.store

    async def count() -> int:
        account = await store.get_account(address)
        assert account is not None
        inbox = await store.get_mailbox(account.id, "INBOX")
        assert inbox is not None
        return (await store.mailbox_status(inbox.id)).messages

    return node.server.run(count())


def test_two_nodes_deliver_500_queued_messages_once_each(
    make_node: Callable[..., Node], pg_schema: Callable[[], str], tmp_path: Path
) -> None:
    shared = {"url": PG_DSN, "pg_schema": pg_schema(), "blob_dir": str(tmp_path / "blobs")}
    fast = {"delivery": {"workers": 3, "batch_size": 10, "poll_interval": 0.05}}
    first = make_node("127.0.0.2", "mx.alpha.test", "alpha.test", users=("alice",),
                      store=shared, **fast)
    make_node("127.0.0.7", "mx2.alpha.test", "alpha.test", store=shared, join=True,
              **fast)
    beta = make_node("127.0.0.3", "mx.beta.test", "beta.test", users=("bob",))

    async def enqueue() -> None:
        delivery = delivery_service(first.server.services)

        async def one(n: int) -> None:
            envelope = InboundEnvelope(
                sender=ALICE, recipients=[InboundRecipient(BOB, remote=[BOB])],
                protocol="ESMTPSA", client_ip="127.0.0.1", helo="client.test")
            await delivery.deliver(envelope, make_message(
                ALICE, [BOB], f"bulk {n}", message_id=f"<bulk-{n}@alpha.test>"))

        for start in range(0, BATCH, 50):
            await asyncio.gather(*(one(n) for n in range(start, start + 50)))

    first.server.run(enqueue(), timeout=120)
    wait_for(lambda: _inbox_count(beta, BOB) >= BATCH, f"{BATCH} messages at beta",
             timeout=120)

    store = beta.server.services.store

    async def delivered() -> list[bytes]:
        account = await store.get_account(BOB)
        assert account is not None
        inbox = await store.get_mailbox(account.id, "INBOX")
        assert inbox is not None
        rows = await store.get_messages(inbox.id)
        return [beta.server.services.blobs.get(row.blob_id) for row in rows]

    messages = beta.server.run(delivered())
    ids = Counter(re.search(rb"Message-ID: (<[^>]+>)", m).group(1) for m in messages)  # type: ignore[union-attr]
    assert len(messages) == BATCH
    assert set(ids) == {f"<bulk-{n}@alpha.test>".encode() for n in range(BATCH)}
    assert max(ids.values()) == 1
    # Both nodes took part: the newest Received field names the node that sent it.
    senders = Counter(re.search(rb"Received: from (\S+) \(\[([\d.]+)\]\)", m).group(2)  # type: ignore[union-attr]
                      for m in messages)
    assert set(senders) == {b"127.0.0.2", b"127.0.0.7"}, senders

    # Each entry is marked done just after its message is accepted: wait for the last ones.
    queue = first.server.services.store
    wait_for(lambda: not first.server.run(queue.list_queue()), "every entry to be done")
    entries = first.server.run(queue.list_queue(include_done=True))
    assert len(entries) == BATCH
    assert all(e.state == "done" and e.recipients[0].status == "delivered" for e in entries)
