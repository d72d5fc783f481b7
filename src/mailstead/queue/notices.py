"""Sending a notice we wrote (a DSN, a recall report) to a sender, from the null sender.

A local sender gets it in the INBOX, a remote one through the queue, both through the same
``DeliveryService`` as any received message, so a notice is stored and acknowledged like mail.
The null reverse-path (RFC 5321 4.5.5) means nobody ever bounces a notice back. The notice
is DKIM-signed as our domain (``TrustService.sign_notice``), so it passes DMARC where it lands.
"""

from __future__ import annotations

import logging

from mailstead.core.addresses import parse_address
from mailstead.core.errors import InvalidInput, QuotaExceeded
from mailstead.obs import log_event
from mailstead.services.accounts import AccountService
from mailstead.services.delivery import DeliveryService, InboundEnvelope, InboundRecipient


def _header_is_ascii(message: bytes) -> bool:
    end = message.find(b"\r\n\r\n")
    return (message if end < 0 else message[:end]).isascii()


async def send_notice(
    delivery: DeliveryService, accounts: AccountService, to: str, message: bytes, kind: str
) -> str | None:
    """Stores/queues ``message`` for ``to``; returns its queue id, or None if it cannot go."""
    try:
        address = parse_address(to)
    except InvalidInput as exc:
        log_event("queue.notice_dropped", logging.WARNING, kind=kind, to=to, reason=str(exc))
        return None
    route = await accounts.route(address)
    if route.empty:
        log_event("queue.notice_dropped", logging.WARNING, kind=kind, to=to,
                  reason="no such local user")
        return None
    envelope = InboundEnvelope(
        sender="",
        recipients=[InboundRecipient(to, route.local, route.remote)],
        protocol="LOCAL",
        helo=delivery.hostname,
        smtputf8=not to.isascii() or not _header_is_ascii(message),
        body="7BIT" if message.isascii() else "8BITMIME",
        generated=True,  # signed as ours, not sealed or SRS-rewritten as a forward
    )
    try:
        result = await delivery.deliver(envelope, message)
    except QuotaExceeded:
        log_event("queue.notice_dropped", logging.WARNING, kind=kind, to=to,
                  reason="mailbox full")
        return None
    log_event("queue.notice", kind=kind, to=to, queue_id=result.queue_id)
    return result.queue_id
