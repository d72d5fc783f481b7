"""store/changes.py Signal: asyncio.Event's behaviour for the change watches."""

from __future__ import annotations

import asyncio

from mailstead.store.changes import Signal


def test_wait_and_waiter_are_woken_by_set() -> None:
    async def go() -> None:
        signal = Signal()
        waiting = asyncio.ensure_future(signal.wait())
        future = signal.waiter()
        await asyncio.sleep(0)
        assert not waiting.done() and not future.done()
        signal.set()
        assert await waiting is True
        assert await future is True
        assert signal.is_set()
        assert await signal.wait() is True  # set already: at once
        assert signal.waiter().done()
        signal.clear()
        assert not signal.is_set() and not signal.waiter().done()

    asyncio.run(go())


def test_cancelled_waiters_are_dropped() -> None:
    async def go() -> None:
        signal = Signal()
        for _ in range(100):  # IDLE: a waiter per wake-up, cancelled when the client spoke
            signal.waiter().cancel()
        assert len(signal._waiters or []) <= 1
        waiting = asyncio.ensure_future(signal.wait())
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        kept = signal.waiter()
        signal.set()  # a cancelled waiter is not set, the live one is
        assert await kept is True
        assert signal._waiters is None

    asyncio.run(go())
