"""Builds the services that sit between protocols and the store, and starts background tasks.

Kept apart from app.py so each service layer adds itself here in one place:
``services.extra["delivery"]`` (SMTP/DMTP inbound delivery), later the queue workers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailstead.app import Services


async def start(services: Services, background: list[asyncio.Task[None]]) -> None:
    """Creates the delivery and mailbox services and starts background workers."""
    from mailstead.services.delivery import DeliveryService

    delivery = DeliveryService(services.store, services.blobs, services.cfg.hostname)
    services.extra["delivery"] = delivery
    background.append(asyncio.create_task(_close_on_stop(delivery.close)))

    # Outbound queue workers (delivery.workers of them; 0 leaves mail queued).
    from mailstead.dns import make_resolver
    from mailstead.queue.scheduler import QueueRunner

    resolver = make_resolver(services.cfg.delivery)
    services.extra["dns"] = resolver
    queue = QueueRunner(services.cfg, services.store, services.blobs, resolver, delivery,
                        services.accounts)
    services.extra["queue"] = queue
    queue.start(background)


async def _close_on_stop(close: Callable[[], None]) -> None:
    """Runs ``close`` when App.stop cancels the background tasks."""
    try:
        await asyncio.Event().wait()
    finally:
        close()
