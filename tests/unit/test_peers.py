"""The peer channel of the worker processes (net/peers.py): two workers' channels on one loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailstead.auth.ratelimit import AuthLimiter
from mailstead.core.models import FlagState
from mailstead.net.peers import (
    FLAGS_PER_DATAGRAM,
    PeerChannel,
    connect_peers,
    forward_changes,
    forward_flags,
    receive_changes,
)
from mailstead.store.changes import ChangeBus


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


def test_a_flag_change_reaches_the_sibling_with_its_states(tmp_path: Path) -> None:
    """ChangeBus.publish_flags in one worker: the sibling's bus hears the states (and a
    change of more messages than a datagram carries, its mailbox id alone); a UID EXPUNGE's
    vanished UIDs go along the same way."""
    async def run() -> tuple[list[tuple[int, int, list[FlagState], list[int]]], list[int]]:
        a, b = PeerChannel(tmp_path, 0, 2), PeerChannel(tmp_path, 1, 2)
        here, there = ChangeBus(), ChangeBus()
        here.forward = forward_changes(a)
        here.forward_flags = forward_flags(a)
        heard: list[tuple[int, int, list[FlagState], list[int]]] = []
        ids: list[int] = []
        there.flags_heard = lambda box, modseq, states, gone: heard.append(
            (box, modseq, list(states), list(gone)))
        connect_peers(b, AuthLimiter(), ids.extend, there.flags_from_peer)
        a.start()
        b.start()
        here.publish_flags(7, 42, [FlagState(3, 42, 1, frozenset({"$Work"}))])
        many = [FlagState(uid, 43, 2, frozenset()) for uid in range(FLAGS_PER_DATAGRAM + 1)]
        here.publish_flags(8, 43, many)
        here.publish_flags(7, 43, [], [3, 5])
        for _ in range(500):
            if len(heard) == 2 and ids:
                break
            await asyncio.sleep(0.01)
        a.close()
        b.close()
        return heard, ids

    heard, ids = asyncio.run(run())
    assert heard == [(7, 42, [FlagState(3, 42, 1, frozenset({"$Work"}))], []),
                     (7, 43, [], [3, 5])]
    assert ids == [8]
