"""The retry schedule: exponential backoff between attempts, capped, a little spread."""

from __future__ import annotations

import random

from mailstead.config import DeliveryConfig
from mailstead.queue.scheduler import retry_delay


def test_default_schedule_doubles_from_five_minutes_up_to_an_hour() -> None:
    d = DeliveryConfig()
    rng = random.Random(7)
    waits = [retry_delay(n, d.retry_initial, d.retry_factor, d.retry_max, rng)
             for n in range(1, 9)]
    floors = [300, 600, 1200, 2400, 3600, 3600, 3600, 3600]
    assert all(f <= w <= f * 1.1 for w, f in zip(waits, floors, strict=True)), waits


def test_spread_keeps_entries_that_failed_together_apart() -> None:
    rng = random.Random(1)
    waits = {round(retry_delay(3, 60.0, 2.0, 3600.0, rng), 3) for _ in range(50)}
    assert len(waits) > 40 and min(waits) >= 240 and max(waits) <= 264
