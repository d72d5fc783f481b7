"""Part of the composition root (with app.py): builds the services that sit between protocols
and the store, and starts their background tasks. Each service adds itself here in one place
(``services.extra["delivery"]``, the queue workers...); services never import this module.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mailstead.obs import log_event
from mailstead.services.sendcap import SendingCap

if TYPE_CHECKING:
    from mailstead.app import Services


# What ``build`` and ``start`` import when they run, in one list for ``preload``.
BUILT_MODULES = (
    "mailstead.checks.builtin",
    "mailstead.checks.chain",
    "mailstead.dns",
    "mailstead.mailmove.jobs",
    "mailstead.mailsec.dkim_keys",
    "mailstead.mailsec.inbound",
    "mailstead.queue.delivered",
    "mailstead.queue.scheduler",
    "mailstead.services.delivery",
    "mailstead.services.forwarding",
    "mailstead.services.mailbox",
    "mailstead.services.metrics",
    "mailstead.services.sender_lists",
    "mailstead.services.spam",
    "mailstead.sieve.service",
)


def preload() -> None:
    """Imports the modules ``build`` and ``start`` need (they import them on first use, so a
    command that never serves does without). supervisor.py calls this before it forks the
    workers: imported once there, their pages are shared by every worker (copy-on-write)
    instead of each worker importing its own copy after the fork (some 10 MB each)."""
    for name in BUILT_MODULES:
        importlib.import_module(name)


def build(services: Services) -> None:
    """Creates the delivery, queue, trust, mailbox and spam services (no background work yet:
    the listeners are bound between ``build`` and ``start``)."""
    from mailstead.dns import CHECKS_OFF, make_check_resolver, make_resolver
    from mailstead.mailsec.dkim_keys import DkimKeyring
    from mailstead.mailsec.inbound import TrustService
    from mailstead.queue.delivered import DeliveredNotices
    from mailstead.queue.scheduler import QueueRunner
    from mailstead.services.delivery import DeliveryService
    from mailstead.services.forwarding import Forwarding
    from mailstead.services.mailbox import MailboxService
    from mailstead.services.sender_lists import SenderLists
    from mailstead.services.spam import SpamService

    shared = services.extra.get("shared_message_files")  # supervisor.py's, if any
    delivery = DeliveryService(services.store, services.blobs, services.cfg.hostname,
                               shared if isinstance(shared, Path) else None)
    services.extra["delivery"] = delivery
    services.extra["sendcap"] = SendingCap(services.cfg.web)
    resolver = make_resolver(services.cfg.delivery)
    services.extra["dns"] = resolver
    cfg = services.cfg
    if cfg.trust.verify_inbound and cfg.trust.dns == "off" and not cfg.delivery.resolvers:
        log_event("trust.checks_unenforced", logging.WARNING, reason=CHECKS_OFF,
                  effect="SPF, DKIM and DMARC of inbound mail give temperror, nothing refused")
    keyring = DkimKeyring(services.store, cfg.path(cfg.trust.dkim_dir))
    services.extra["dkim"] = keyring
    trust = TrustService(cfg, make_check_resolver(cfg.delivery, cfg.trust),
                         services.accounts.is_local_domain, keyring)
    services.extra["trust"] = trust
    delivery.trust = trust
    forwarding = Forwarding(services.cfg, services.store, services.accounts.is_local_domain)
    services.extra["forwarding"] = forwarding
    delivery.forwarding = forwarding
    services.accounts.forwarding = forwarding
    lists = services.extra["lists"] = SenderLists(services.store, services.cfg.lists)
    services.changes.settings_hooks.append(lists.forget)  # the CLI changed some (announce.py)
    services.extra["queue"] = QueueRunner(services.cfg, services.store, services.blobs, resolver,
                                          delivery, services.accounts)
    delivery.after_local_delivery = DeliveredNotices(delivery, services.accounts)
    if hasattr(services.store, "active_sieve_script"):  # the SQL stores (sieve/service.py)
        from mailstead.sieve.service import SieveService, sieve_store

        sieve = SieveService(sieve_store(services.store), delivery, services.accounts)
        services.extra["sieve"] = sieve
        services.changes.settings_hooks.append(sieve.forget)
        services.changes.account_hooks.append(sieve.forget_mailboxes)
        delivery.rules = sieve

    # One MailboxService for IMAP and the webmail, built here so it knows the spam filter.
    mailboxes = MailboxService(services.store, services.blobs, services.changes,
                               services.cfg.limits.max_message_size)
    services.extra["mailbox"] = mailboxes
    from mailstead.mailmove.jobs import ImportJobs

    services.extra["imports"] = ImportJobs(mailboxes)  # the webmail's background imports
    spam = None
    if services.cfg.spam.enabled:
        spam = SpamService(services.cfg.spam, services.store, services.blobs)
        services.extra["spam"] = spam
        mailboxes.trainer = spam
    build_checks(services, trust, spam)


def build_checks(services: Services, trust: object, spam: object) -> None:
    """The inbound check chain (built-in checks around the configured plug-ins) and the
    delivery filters (checks/chain.py). A plug-in that cannot be loaded stops the start with
    a ConfigError naming it."""
    from mailstead.checks.builtin import builtin_checks
    from mailstead.checks.chain import load_checks, load_filters
    from mailstead.dns import make_check_resolver
    from mailstead.mailsec.inbound import TrustService
    from mailstead.services.delivery import delivery_service
    from mailstead.services.sender_lists import sender_lists
    from mailstead.services.spam import SpamService

    cfg = services.cfg
    resolver = make_check_resolver(cfg.delivery, cfg.trust)
    before, after = builtin_checks(trust if isinstance(trust, TrustService) else None,
                                   sender_lists(services),
                                   spam if isinstance(spam, SpamService) else None)
    services.extra["checks"] = load_checks(cfg.checks, cfg.hostname, resolver,
                                           before=before, after=after)
    filters = load_filters(cfg.checks, cfg.hostname, resolver)
    if filters:
        delivery_service(services).filters = filters


def start(services: Services, background: list[asyncio.Task[None]],
          singletons: bool = True) -> None:
    """Starts the background work of the services ``build`` made: the outbound queue workers
    (``delivery.workers`` of them; 0 leaves mail queued), the blob sweeper, StatsD and
    monitor reports. Of several worker processes only one runs these (``singletons``): the
    queue's leases would keep them apart, but one process polling the queue is enough."""
    from mailstead.queue.scheduler import QueueRunner
    from mailstead.services.delivery import delivery_service

    background.append(asyncio.create_task(_close_on_stop(delivery_service(services).close)))
    background.append(asyncio.create_task(_close_on_stop(services.extra["imports"].close)))
    checks = services.extra.get("checks")
    if checks is not None:
        background.append(asyncio.create_task(_close_on_stop(checks.close)))
    # Every worker process: its own certificate reloads (one of them orders, by a lease in
    # the store), and its own figures and message events to the monitor (tagged worker:N).
    if services.cfg.acme.enabled:
        from mailstead.services.certificates import CertificateService

        context = services.extra.get("tls_context")
        certificates = CertificateService(
            services.cfg, services.store,
            context if isinstance(context, ssl.SSLContext) else None)
        services.extra["certificates"] = certificates
        background.append(asyncio.create_task(certificates.run()))
    if services.cfg.metrics.monitor:
        from mailstead.services.metrics import report_to_monitor

        background.append(asyncio.create_task(
            report_to_monitor(services.cfg.metrics, services.statistics,
                              services.extra.get("worker_index"))))

    if not singletons:
        return
    queue = services.extra["queue"]
    assert isinstance(queue, QueueRunner)
    queue.start(background)
    background.append(asyncio.create_task(_sweep_unused_blobs(services)))
    if services.cfg.metrics.statsd:
        from mailstead.services.metrics import report_to_statsd

        background.append(asyncio.create_task(
            report_to_statsd(services.cfg.metrics, services.statistics)))

BLOB_SWEEP_INTERVAL = 60.0
BLOB_GRACE_SECONDS = 600.0


async def _sweep_unused_blobs(services: Services) -> None:
    """Removes message files whose last reference went (expunge, account removal...)."""
    while True:
        await asyncio.sleep(BLOB_SWEEP_INTERVAL)
        try:
            await sweep_unused_blobs(services, BLOB_GRACE_SECONDS)
        except Exception as exc:  # a failed sweep is retried next time; it never loses mail
            log_event("blobs.sweep_failed", error=str(exc))


async def sweep_unused_blobs(services: Services, grace_seconds: float) -> int:
    removed = 0
    while True:
        unused = await services.store.reap_blobs(1000)
        for blob_id in unused:
            if await asyncio.to_thread(services.blobs.discard_unused, blob_id, grace_seconds):
                removed += 1
        if len(unused) < 1000:
            break
    if removed:
        log_event("blobs.swept", removed=removed)
    return removed




async def _close_on_stop(close: Callable[[], Awaitable[None]]) -> None:
    """Runs ``close`` when App.stop cancels the background tasks."""
    try:
        await asyncio.Event().wait()
    finally:
        await close()
