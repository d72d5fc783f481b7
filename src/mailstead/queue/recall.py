"""Recall: the sender takes back a message still in the queue.

Every recipient not yet delivered is marked ``recalled`` (the workers never send to it again),
and the sender is told which recipients already had the message. The report is printed by the
CLI and also put in the sender's INBOX, so a recall made by an administrator reaches the user.

A worker may hold the entry at that moment. Recall waits for the worker to let it go before
marking, and waits again if a worker took it in between, then reports what the store says at
the end: a recipient that a worker reached just before the recall shows as delivered, never as
recalled.

The report names who recalled: the sender (a recall on behalf of the submitting account), or an
administrator, by address when known ("recalled by the administrator <root@example.org>").
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime

from mailstead.core.errors import NotFound
from mailstead.obs import log_event
from mailstead.proto.mime import parse_envelope_fields
from mailstead.queue.notices import send_notice
from mailstead.services.accounts import AccountService
from mailstead.services.delivery import DeliveryService
from mailstead.store.interfaces import Account, BlobStore, MetadataStore, QueueEntry

LEASE_POLL = 0.1  # seconds between looks while a worker holds the entry


@dataclass
class RecallReport:
    queue_id: str
    sender: str
    recalled: list[str] = field(default_factory=list)  # will never get it
    delivered: list[str] = field(default_factory=list)  # had it already
    failed: list[str] = field(default_factory=list)  # had bounced already
    notice_queue_id: str | None = None  # the report put in the sender's mailbox
    recalled_by: str = "the sender"  # or "the administrator" / "the administrator <addr>"

    def as_dict(self) -> dict[str, object]:
        return {
            "queue_id": self.queue_id,
            "sender": self.sender,
            "recalled_by": self.recalled_by,
            "recalled": self.recalled,
            "delivered": self.delivered,
            "failed": self.failed,
        }


def _leased(entry: QueueEntry, now: datetime) -> bool:
    return bool(entry.lease_owner) and entry.lease_until is not None and entry.lease_until > now


async def _when_free(store: MetadataStore, queue_id: str, wait_seconds: float) -> QueueEntry:
    """The entry once no worker holds it (or after ``wait_seconds``, as it is then)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        entry = await store.get_queue_entry(queue_id)
        if entry is None:
            raise NotFound(f"no queue entry {queue_id}")
        if not _leased(entry, datetime.now(UTC)) or loop.time() >= deadline:
            return entry
        await asyncio.sleep(LEASE_POLL)


def recaller(account: Account | None, by: str | None) -> str:
    """Who recalled, as the report says it: ``by`` (an administrator's address) wins; else
    the sender when acting for the submitting ``account``; else an unnamed administrator."""
    if by:
        return f"the administrator <{by}>"
    return "the sender" if account is not None else "the administrator"


async def recall(
    store: MetadataStore,
    queue_id: str,
    *,
    account: Account | None = None,
    by: str | None = None,
    wait_seconds: float = 60.0,
) -> RecallReport:
    """Recalls ``queue_id``. With ``account``, only that account's own message (the submitter);
    without, any (an administrator). ``by``: the administrator's address, for the report."""
    entry = await store.get_queue_entry(queue_id)
    if entry is None or (account is not None and entry.account_id != account.id):
        raise NotFound(f"no queued message {queue_id}" + (" of yours" if account else ""))
    who = recaller(account, by)
    await _when_free(store, queue_id, wait_seconds)
    await store.recall_pending(queue_id, datetime.now(UTC), f"recalled by {who}")
    # A worker that claimed the entry just before our write may be sending: let it finish,
    # so the report says what really happened.
    final = await _when_free(store, queue_id, wait_seconds)
    report = RecallReport(queue_id, final.sender, recalled_by=who)
    for recipient in final.recipients:
        if recipient.status == "recalled":
            report.recalled.append(recipient.address)
        elif recipient.status == "delivered":
            report.delivered.append(recipient.address)
        elif recipient.status == "failed":
            report.failed.append(recipient.address)
    log_event("queue.recall", queue_id=queue_id, by=who, recalled=len(report.recalled),
              delivered=len(report.delivered), failed=len(report.failed))
    return report


def report_message(report: RecallReport, subject: str, hostname: str, now: datetime) -> bytes:
    """The plain-text report the sender finds in the INBOX."""

    def block(title: str, addresses: list[str]) -> list[str]:
        return [title, *(f"  {a}" for a in addresses), ""] if addresses else []

    about = f'"{subject}"' if subject else "without subject"
    if report.recalled_by == "the sender":
        opening = f"You recalled your message {about} (queue id {report.queue_id})."
    else:
        opening = (f"Your message {about} (queue id {report.queue_id}) was recalled by "
                   f"{report.recalled_by}.")
    lines = [
        opening,
        "",
        *block("Recalled: these recipients will not receive it:", report.recalled),
        *block("Already delivered before the recall (it cannot be taken back there):",
               report.delivered),
        *block("Not delivered earlier (a bounce was sent):", report.failed),
    ]
    safe_subject = " ".join(subject.split())[:200]
    header = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{report.sender}>",
        f"Subject: Recall report: {safe_subject}" if safe_subject else "Subject: Recall report",
        f"Date: {format_datetime(now)}",
        f"Message-ID: <recall.{report.queue_id}.{int(now.timestamp())}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        'Content-Type: text/plain; charset="utf-8"',
        "Content-Transfer-Encoding: 8bit",
    ]
    text = "\r\n".join(header) + "\r\n\r\n" + "\r\n".join(lines) + "\r\n"
    return text.encode("utf-8")


async def recall_and_tell(
    store: MetadataStore,
    blobs: BlobStore,
    delivery: DeliveryService,
    accounts: AccountService,
    queue_id: str,
    *,
    account: Account | None = None,
    by: str | None = None,
    wait_seconds: float = 60.0,
) -> RecallReport:
    """``recall``, then the report to the sender's mailbox (not for the null sender)."""
    report = await recall(store, queue_id, account=account, by=by, wait_seconds=wait_seconds)
    if not report.sender:
        return report
    entry = await store.get_queue_entry(queue_id)
    subject = ""
    if entry is not None:
        try:
            data = await asyncio.to_thread(blobs.get, entry.blob_id)
            subject = parse_envelope_fields(data).subject
        except Exception:  # the report matters more than its subject line
            subject = ""
    message = report_message(report, subject, delivery.hostname, datetime.now(UTC))
    report.notice_queue_id = await send_notice(delivery, accounts, report.sender, message,
                                               "recall")
    return report
