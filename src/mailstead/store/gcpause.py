"""Holding the cyclic garbage collector off while a big listing builds its rows.

Listing 100,000 messages allocates 200,000 tracked objects (the driver's row tuples and the
FlagStates): enough to set off several full collections of the whole heap, which cost more
than the listing itself and find nothing, since rows are acyclic. Reference counting still
frees everything as usual; cycles other threads make meanwhile wait for the next collection,
a fraction of a second later. The collector is process-wide, so pauses from several threads
nest: it comes back on when the last one ends, and only if it was on before the first.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holders = 0  # pauses in progress
_resume = False  # whether the collector was on when the first of them began


@contextmanager
def gc_paused() -> Iterator[None]:
    global _holders, _resume
    with _lock:
        if _holders == 0:
            _resume = gc.isenabled()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _resume:
                gc.enable()
