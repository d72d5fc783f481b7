"""'delivered' notices (RFC 3461 6.2.2): we advertise DSN, so a recipient whose NOTIFY asks for
SUCCESS and whose mailbox is here makes us tell the sender once the message is stored.

Remote recipients are the queue's business (the next server reports, or we send 'relayed').
The notice carries the header section only (RFC 3461 4.3: no failure, no content back).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from mailstead.obs import log_event
from mailstead.queue.dsn import Notice, RecipientReport, build_notice, wants_notice
from mailstead.queue.notices import send_notice
from mailstead.services.accounts import AccountService
from mailstead.services.delivery import DeliveryResult, DeliveryService, InboundEnvelope


class DeliveredNotices:
    def __init__(self, delivery: DeliveryService, accounts: AccountService) -> None:
        self.delivery = delivery
        self.accounts = accounts

    async def __call__(self, envelope: InboundEnvelope, result: DeliveryResult,
                       data: bytes) -> None:
        if not envelope.sender:
            return  # a notice never answers a notice (null reverse-path, RFC 3461 6.2)
        reports = [
            RecipientReport(r.address, "delivered", "2.0.0", "delivered to the mailbox",
                            orcpt=r.orcpt)
            for r in envelope.recipients if r.local and wants_notice(r.notify, "delivered")
        ]
        if not reports:
            return
        now = datetime.now(UTC)
        notice = Notice(reporting_mta=self.delivery.hostname, sender=envelope.sender,
                        queue_id=result.queue_id, arrival=now, recipients=reports,
                        original=data, envid=envelope.envid, headers_only=True)
        try:
            await send_notice(self.delivery, self.accounts, envelope.sender,
                              build_notice(notice, now), "delivered")
        except Exception as exc:  # the message itself is stored: its 250 stands
            log_event("queue.notice_failed", logging.WARNING, kind="delivered",
                      queue_id=result.queue_id, error=f"{type(exc).__name__}: {exc}")
