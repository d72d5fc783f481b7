"""The event loop mailstead runs on: uvloop (libuv underneath, DESIGN.md) where it is
installed, else asyncio's own. ``MAILSTEAD_EVENT_LOOP=asyncio`` picks asyncio's anyway, to
tell a loop problem from ours."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    if os.environ.get("MAILSTEAD_EVENT_LOOP", "auto") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the loop above."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)
