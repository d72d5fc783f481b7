"""Holding the cyclic garbage collector off while a big listing builds its rows.

Listing 100,000 messages allocates 200,000 tracked objects (the driver's row tuples and the
FlagStates): enough to set off several full collections of the whole heap, which cost more
than the listing itself and find nothing, since rows are acyclic. Reference counting still
frees everything as usual; cycles other threads make meanwhile wait for the next collection,
a fraction of a second later. The collector is process-wide, so pauses from several threads
nest: it comes back on when the last one ends, and only if it was on before the first.

A pause that ``keeps`` its rows (the mailbox's flags a SELECT installs for every session)
hands everything allocated meanwhile straight to the oldest generation when the collector
comes back on (``gc.freeze`` then ``gc.unfreeze``): otherwise the next young collections
scan the 100,000 new objects and, counted as newly long-lived, they set off a full
collection of the heap (~70 ms on 100,000 FlagStates). What is moved stays collectable: a
cycle among it goes at the next full collection, which the rest of the heap still triggers.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holders = 0  # pauses in progress
_resume = False  # whether the collector was on when the first of them began
_promote = False  # whether one of them keeps what it built


@contextmanager
def gc_paused(keeps: bool = False) -> Iterator[None]:
    global _holders, _resume, _promote
    with _lock:
        if _holders == 0:
            _resume = gc.isenabled()
            _promote = False
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            _promote = _promote or keeps
            if _holders == 0 and _resume:
                if _promote:
                    gc.freeze()  # every tracked object to the permanent generation...
                    gc.unfreeze()  # ...and back into the oldest one, unscanned
                gc.enable()
