"""The peer channel of the worker processes (net/peers.py): two workers' channels on one loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailstead.net.peers import PeerChannel, forward_changes, receive_changes


def test_changes_reach_the_sibling_in_order_even_past_its_queue(tmp_path: Path) -> None:
    async def run() -> list[int]:
        a, b = PeerChannel(tmp_path, 0, 2), PeerChannel(tmp_path, 1, 2)
        heard: list[int] = []
        b.handlers[ord("c")] = receive_changes(heard.extend)
        a.start()
        forward = forward_changes(a)
        for n in range(2000):  # more than a Unix socket queues: the rest wait in a backlog
            forward({n})
        b.start()  # b reads only now, as a busy worker would
        for _ in range(500):
            if len(heard) == 2000:
                break
            await asyncio.sleep(0.01)
        a.close()
        b.close()
        return heard

    assert asyncio.run(run()) == list(range(2000))


def test_a_sibling_that_is_not_running_is_skipped(tmp_path: Path) -> None:
    async def run() -> None:
        a = PeerChannel(tmp_path, 0, 3)
        a.start()
        forward_changes(a)({1, 2, 3})  # w1 and w2 were never started: nothing raised
        a.close()

    asyncio.run(run())
