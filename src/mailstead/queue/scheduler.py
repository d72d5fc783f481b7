"""The queue workers: claim due entries, deliver them, record each recipient's result, notify.

Each worker loops: ``store.claim_due`` leases a batch of due entries to it (on PostgreSQL with
``FOR UPDATE SKIP LOCKED``, so several nodes share one queue and never take the same entry; a
node that dies loses its leases when they expire). The batch's pending recipients are grouped by
domain; each domain's messages go over one connection (``transfer``). Then every entry is
finished in one write: delivered and bounced recipients recorded, the rest retried later with
exponential backoff until the lifetime runs out.

Senders hear about it through RFC 3464 notices: a bounce for permanent failures and expiry, a
delay notice once after ``delay_notice``, a "relayed" notice when NOTIFY=SUCCESS cannot be passed
on. The notice is stored before the entry is updated, so a crash in between can repeat a notice
but never lose one. The null sender never gets any (RFC 5321 6.1: never bounce a bounce).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
from datetime import UTC, datetime, timedelta

from mailstead.config import Config
from mailstead.core.errors import CorruptBlob, NotFound
from mailstead.dns import Resolver
from mailstead.obs import log_event
from mailstead.queue.dsn import (
    Action,
    Notice,
    RecipientReport,
    build_notice,
    should_return_headers_only,
    wants_notice,
)
from mailstead.queue.manage import delete_entry
from mailstead.queue.notices import send_notice
from mailstead.queue.transfer import Job, Outcome, Results, Transfer
from mailstead.services.accounts import AccountService
from mailstead.services.delivery import DeliveryService
from mailstead.store.interfaces import BlobStore, MetadataStore, QueueEntry, QueueRecipient

HOUSEKEEPING_INTERVAL = 60.0  # seconds between sweeps of finished entries


def strip_return_path(data: bytes) -> bytes:
    """Removes a leading Return-Path field (and its folded lines): a relay must not send one
    (RFC 5321 4.4); the final server adds its own."""
    if data[:12].lower() != b"return-path:":
        return data
    end = data.find(b"\r\n")
    while end >= 0 and data[end + 2:end + 3] in (b" ", b"\t"):
        end = data.find(b"\r\n", end + 2)
    return b"" if end < 0 else data[end + 2:]


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def retry_delay(attempts: int, initial: float, factor: float, longest: float,
                rng: random.Random) -> float:
    """Seconds to wait after ``attempts`` failed attempts: exponential, capped, and spread by
    up to 10% so entries that failed together do not all come back at once."""
    delay = min(initial * factor ** max(attempts - 1, 0), longest)
    return delay * rng.uniform(1.0, 1.1)


class QueueRunner:
    def __init__(
        self,
        cfg: Config,
        store: MetadataStore,
        blobs: BlobStore,
        resolver: Resolver,
        delivery: DeliveryService,
        accounts: AccountService,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.settings = cfg.delivery
        self.store = store
        self.blobs = blobs
        self.delivery = delivery
        self.accounts = accounts
        self.rng = rng or random.Random()
        self.node = f"{cfg.hostname}/{os.getpid()}/{secrets.token_hex(3)}"
        self.transfer = Transfer(cfg, resolver, self._still_pending, self.rng)

    def start(self, background: list[asyncio.Task[None]]) -> None:
        """Starts the workers (none when ``delivery.workers`` is 0) and the sweeper."""
        if self.settings.workers == 0:
            log_event("queue.disabled", reason="delivery.workers = 0")
            return
        for n in range(self.settings.workers):
            background.append(asyncio.create_task(self._worker(n), name=f"queue-worker-{n}"))
        background.append(asyncio.create_task(self._housekeeping(), name="queue-housekeeping"))
        log_event("queue.started", node=self.node, workers=self.settings.workers)

    # -- the loop --

    async def _worker(self, n: int) -> None:
        owner = f"{self.node}#{n}"
        while True:
            try:
                entries = await self.store.claim_due(
                    datetime.now(UTC), owner, self.settings.lease_seconds, self.settings.batch_size
                )
            except Exception as exc:  # the store is unreachable: try again later
                log_event("queue.claim_failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(self.settings.poll_interval)
                continue
            if not entries:
                await asyncio.sleep(self.settings.poll_interval)
                continue
            try:
                await self.run_batch(entries)
            except Exception as exc:  # the leases expire and the entries come back
                log_event("queue.batch_failed", logging.ERROR,
                          error=f"{type(exc).__name__}: {exc}")

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            try:
                await self.purge_done(datetime.now(UTC))
            except Exception as exc:
                log_event("queue.purge_failed", logging.ERROR, error=str(exc))

    async def purge_done(self, now: datetime) -> int:
        """Removes finished entries older than ``keep_done`` (and their message files)."""
        removed = 0
        keep = timedelta(seconds=self.settings.keep_done)
        for entry in await self.store.list_queue(include_done=True):
            if entry.state == "done" and now - entry.next_attempt >= keep:
                await delete_entry(self.store, self.blobs, entry.id)
                removed += 1
        return removed

    # -- one batch --

    async def run_batch(self, entries: list[QueueEntry]) -> None:
        results: Results = {}
        messages: dict[str, bytes] = {}
        by_destination: dict[str, list[Job]] = {}
        for entry in entries:
            pending = [r for r in entry.recipients if r.status == "pending"]
            if not pending:
                continue
            try:
                data = strip_return_path(await asyncio.to_thread(self.blobs.get, entry.blob_id))
            except (NotFound, CorruptBlob) as exc:
                messages[entry.id] = b""
                unreadable = Outcome("permanent", "5.3.0", f"the message file is unreadable: {exc}")
                for recipient in pending:
                    results[(entry.id, recipient.address)] = unreadable
                log_event("queue.blob_unreadable", logging.ERROR, queue_id=entry.id,
                          blob=entry.blob_id, error=str(exc))
                continue
            messages[entry.id] = data
            if self.transfer.smart_host:
                by_destination.setdefault("", []).append(Job(entry, pending, data))
                continue
            by_domain: dict[str, list[QueueRecipient]] = {}
            for recipient in pending:
                by_domain.setdefault(domain_of(recipient.address), []).append(recipient)
            for domain, recipients in by_domain.items():
                by_destination.setdefault(domain, []).append(Job(entry, recipients, data))
        # Finish well inside the lease, so no other node takes these entries while we work.
        budget = max(self.settings.lease_seconds - 60, self.settings.lease_seconds / 2)
        stopping = False
        try:
            async with asyncio.timeout(budget):
                outcomes = await asyncio.gather(
                    *(self.transfer.deliver(domain, jobs, results)
                      for domain, jobs in by_destination.items()),
                    return_exceptions=True,
                )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    log_event("queue.transfer_failed", logging.ERROR,
                              error=f"{type(outcome).__name__}: {outcome}")
        except TimeoutError:
            log_event("queue.batch_timeout", logging.WARNING, seconds=budget)
        except asyncio.CancelledError:
            # The server is stopping: record what is known and give the entries back now,
            # rather than leaving them leased (and untouched) until the lease runs out.
            stopping = True
        for entry in entries:
            try:
                await self.finish(entry, results, messages.get(entry.id, b""))
            except Exception as exc:
                log_event("queue.finish_failed", logging.ERROR, queue_id=entry.id,
                          error=f"{type(exc).__name__}: {exc}")
        if stopping:
            raise asyncio.CancelledError

    async def _still_pending(self, job: Job) -> list[QueueRecipient]:
        """The job's recipients still pending in the store (a recall may have come in)."""
        fresh = await self.store.get_queue_entry(job.entry.id)
        if fresh is None:
            return []
        status = {r.address: r.status for r in fresh.recipients}
        return [r for r in job.recipients if status.get(r.address) == "pending"]

    # -- recording an attempt --

    def _backoff(self, attempts: int) -> float:
        s = self.settings
        return retry_delay(attempts, s.retry_initial, s.retry_factor, s.retry_max, self.rng)

    async def finish(self, entry: QueueEntry, results: Results, data: bytes) -> None:
        now = datetime.now(UTC)
        fresh = await self.store.get_queue_entry(entry.id)
        if fresh is None:
            return  # deleted while we worked (mailstead queue delete)
        recalled = {r.address for r in fresh.recipients if r.status == "recalled"}
        failed: list[tuple[QueueRecipient, Outcome | None]] = []
        relayed: list[tuple[QueueRecipient, Outcome | None]] = []
        for recipient in entry.recipients:
            if recipient.status != "pending":
                continue
            outcome = results.get((entry.id, recipient.address))
            if recipient.address in recalled and (outcome is None or outcome.kind != "delivered"):
                recipient.status = "recalled"
                continue
            if outcome is None:
                continue  # not attempted this time (batch ran out of time)
            recipient.last_reply = outcome.summary()
            if outcome.kind == "delivered":
                recipient.status = "delivered"
                if recipient.address in recalled:
                    log_event("queue.recall_too_late", queue_id=entry.id,
                              recipient=recipient.address)
                if outcome.relayed:
                    relayed.append((recipient, outcome))
            elif outcome.kind == "permanent":
                recipient.status = "failed"
                failed.append((recipient, outcome))
        entry.attempts += 1
        pending = [r for r in entry.recipients if r.status == "pending"]
        age = (now - entry.created).total_seconds()
        delayed: list[tuple[QueueRecipient, Outcome | None]] = []
        if pending and age >= self.settings.lifetime:
            for recipient in pending:
                recipient.status = "failed"
                last = results.get((entry.id, recipient.address))
                expired = Outcome(
                    "permanent", "5.4.7",
                    f"gave up after {age / 86400:.1f} days in the queue; last attempt: "
                    f"{last.text if last else recipient.last_reply or 'none'}",
                    last.remote if last else "", last.tls if last else "",
                    last.smtp_reply if last else "")
                recipient.last_reply = expired.summary()
                failed.append((recipient, expired))
            pending = []
        notice_due = self.settings.delay_notice > 0 and age >= self.settings.delay_notice
        if pending and notice_due and not entry.delay_notified:
            entry.delay_notified = True
            delayed = [(r, results.get((entry.id, r.address))) for r in pending]
        await self._notify(entry, data, now, failed=failed, delayed=delayed, relayed=relayed)
        if pending:
            entry.state = "queued"
            retry_at = now + timedelta(seconds=self._backoff(entry.attempts))
            entry.next_attempt = min(retry_at, entry.created + timedelta(
                seconds=self.settings.lifetime))
        else:
            entry.state = "done"
            entry.next_attempt = now  # when it finished: the sweeper counts keep_done from here
        entry.lease_owner = ""
        entry.lease_until = None
        await self.store.update_queue_entry(entry)
        log_event("queue.entry", queue_id=entry.id, state=entry.state, attempts=entry.attempts,
                  delivered=sum(r.status == "delivered" for r in entry.recipients),
                  failed=sum(r.status == "failed" for r in entry.recipients),
                  pending=len(pending),
                  next_attempt=entry.next_attempt.isoformat() if pending else None)
        if entry.state == "done" and self.settings.keep_done == 0:
            await delete_entry(self.store, self.blobs, entry.id)

    # -- notices to the sender --

    async def _notify(
        self,
        entry: QueueEntry,
        data: bytes,
        now: datetime,
        *,
        failed: list[tuple[QueueRecipient, Outcome | None]],
        delayed: list[tuple[QueueRecipient, Outcome | None]],
        relayed: list[tuple[QueueRecipient, Outcome | None]],
    ) -> None:
        if not entry.sender:
            return  # the null sender gets no notice: never bounce a bounce (RFC 5321 6.1)
        until = entry.created + timedelta(seconds=self.settings.lifetime)
        groups: list[tuple[Action, list[tuple[QueueRecipient, Outcome | None]]]] = [
            ("failed", failed), ("delayed", delayed), ("relayed", relayed)]
        for action, members in groups:
            reports = [
                self._report(action, recipient, outcome, now, until)
                for recipient, outcome in members
                if wants_notice(recipient.notify, action)
            ]
            if not reports:
                continue
            notice = Notice(
                reporting_mta=self.cfg.hostname,
                sender=entry.sender,
                queue_id=entry.id,
                arrival=entry.created,
                recipients=reports,
                original=data,
                envid=entry.envid,
                headers_only=should_return_headers_only(entry.ret, entry.requiretls, len(data)),
            )
            message = build_notice(notice, now)
            await send_notice(self.delivery, self.accounts, entry.sender, message, action)

    @staticmethod
    def _report(
        action: Action,
        recipient: QueueRecipient,
        outcome: Outcome | None,
        now: datetime,
        until: datetime,
    ) -> RecipientReport:
        if outcome is None:
            status = {"failed": "5.0.0", "delayed": "4.0.0", "relayed": "2.0.0"}[action]
            reason = recipient.last_reply or "not attempted yet"
            return RecipientReport(recipient.address, action, status, reason,
                                   orcpt=recipient.orcpt,
                                   will_retry_until=until if action == "delayed" else None)
        status = outcome.status
        if action == "relayed":
            status = "2.0.0"
        elif action == "failed" and not status.startswith("5"):
            status = "5" + status[1:]
        elif action == "delayed" and not status.startswith("4"):
            status = "4" + status[1:]
        return RecipientReport(
            recipient.address, action, status, outcome.text,
            orcpt=recipient.orcpt,
            diagnostic=outcome.smtp_reply,
            remote_mta=outcome.remote_host,
            last_attempt=now,
            will_retry_until=until if action == "delayed" else None,
        )
