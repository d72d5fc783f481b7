"""Builds the services that sit between protocols and the store, and starts background tasks.

Kept apart from app.py so each service layer adds itself here in one place:
``services.extra["delivery"]`` (SMTP/DMTP inbound delivery), later the queue workers.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailstead.app import Services


async def start(services: Services, background: list[asyncio.Task[None]]) -> None:
    """Creates the delivery and mailbox services and starts background workers."""
    from mailstead.services.delivery import DeliveryService

    services.extra["delivery"] = DeliveryService(
        services.store, services.blobs, services.cfg.hostname
    )
