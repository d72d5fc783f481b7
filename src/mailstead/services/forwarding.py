"""Forwarding to remote addresses: the SRS rewrite of the envelope sender and its reversal.

Every forward leaves through ``DeliveryService.deliver`` (aliases to remote addresses, and
Sieve ``redirect``, which hands its copy to the same call): a message arriving from elsewhere
(no authenticated sender) with remote recipients gets the sender ``forward_sender`` returns on
its queue entry, while local copies keep the original Return-Path. The message itself is not
touched here (the ARC seal is the trust service's, mailsec/inbound.py), so DKIM signatures of
the original author stay valid.

Bounces come back to the SRS address: ``AccountService.route`` asks ``reverse`` and sends them
on to the original sender; a forged or expired SRS address is refused at RCPT.

The HMAC key is a site secret in the store (``shared_secrets``), made once by whichever node
needs it first, so every node signs and checks alike.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from collections.abc import Awaitable, Callable

from mailstead.config import Config
from mailstead.mailsec import srs
from mailstead.obs import log_event
from mailstead.store.interfaces import MetadataStore

SECRET_NAME = "srs-key"


class Forwarding:
    def __init__(self, cfg: Config, store: MetadataStore,
                 is_local_domain: Callable[[str], Awaitable[bool]]) -> None:
        self.settings = cfg.forwarding
        self.configured_domain = (self.settings.srs_domain
                                  or (cfg.domains[0] if cfg.domains else "")).lower()
        self.store = store
        self.is_local_domain = is_local_domain
        self._key: bytes | None = None
        self._domain = ""
        self._lock = asyncio.Lock()

    async def key(self) -> bytes:
        if self._key is None:
            async with self._lock:
                if self._key is None:
                    candidate = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
                    stored = await self.store.put_secret(SECRET_NAME, candidate)
                    self._key = base64.b64decode(stored)
        return self._key

    async def srs_domain(self) -> str:
        """The configured SRS domain, else the first local domain (looked up once)."""
        if self.configured_domain:
            return self.configured_domain
        if not self._domain:
            domains = await self.store.list_domains()
            if domains:
                self._domain = min(domains, key=lambda d: (d.created, d.id)).name
        return self._domain

    async def forward_sender(self, sender: str, via: str = "") -> str:
        """The envelope sender for a copy of ``sender``'s message that we forward. ``via``
        is the domain of our address that forwards it (the alias's, the Sieve user's): the
        SRS address is in that domain, whose SPF names us, unless srs_domain says otherwise."""
        if not self.settings.srs or not sender:
            return sender
        domain = self.settings.srs_domain.lower()
        if not domain and via and await self.is_local_domain(via.lower()):
            domain = via.lower()
        domain = domain or await self.srs_domain()
        sender_domain = sender.rpartition("@")[2].lower()
        if not domain or sender_domain == domain or await self.is_local_domain(sender_domain):
            return sender  # our own senders pass SPF as they are
        return srs.forward(sender, domain, await self.key())

    async def reverse(self, local: str) -> str:
        """Where a bounce to the SRS address ``local@<one of our domains>`` goes; SrsError
        when it is malformed, forged or expired."""
        try:
            return srs.reverse(local, [await self.key()], self.settings.srs_max_age_days)
        except srs.SrsError as exc:
            log_event("forwarding.srs_refused", logging.INFO, address=local, reason=str(exc))
            raise
