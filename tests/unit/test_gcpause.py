"""gc_paused: the collector is off during a listing, back on after; a listing that is kept
(a SELECT's flags) goes straight to the oldest generation, still collectable."""

from __future__ import annotations

import gc
import weakref

from mailstead.store.gcpause import gc_paused


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def _in_generation(obj: object, generation: int) -> bool:
    return any(o is obj for o in gc.get_objects(generation=generation))


def test_a_kept_listing_lands_in_the_oldest_generation_and_stays_collectable() -> None:
    assert gc.isenabled()
    with gc_paused(keeps=True):
        assert not gc.isenabled()
        kept = [[n] for n in range(1000)]
        cycle = _Node()
        gone = weakref.ref(cycle)
    assert gc.isenabled()
    assert _in_generation(kept[500], 2) and not _in_generation(kept[500], 0)
    assert gc.get_count()[0] < 100  # the young generation starts again nearly empty
    del cycle
    gc.collect()
    assert gone() is None  # moved, not frozen: a full collection still frees cycles


def test_nested_pauses_resume_the_collector_once_the_last_ends() -> None:
    with gc_paused():
        with gc_paused(keeps=True):
            pass
        assert not gc.isenabled()  # the outer pause still holds
    assert gc.isenabled()
