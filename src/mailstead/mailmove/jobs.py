"""Imports the webmail runs in the background, one at a time per account: an uploaded mbox
file, or an IMAP pull. The settings page shows the progress of the latest one."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from mailstead.core.errors import Conflict
from mailstead.core.models import Account
from mailstead.mailmove.imap_pull import ImapAccount, Puller, check_security
from mailstead.mailmove.importer import Importer, ImportReport
from mailstead.mailmove.sources import count_mbox, read_mbox
from mailstead.obs import log_event
from mailstead.services.mailbox import MailboxService


@dataclass
class ImportJob:
    kind: str  # "mbox" or "imap"
    source: str  # the file name, or user@host
    report: ImportReport = field(default_factory=ImportReport)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    error: str = ""
    task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.finished is None

    @property
    def rate(self) -> float:
        elapsed = (self.finished or time.monotonic()) - self.started
        return (self.report.stored + self.report.skipped) / max(elapsed, 1e-6)


class ImportJobs:
    def __init__(self, mailboxes: MailboxService) -> None:
        self.mailboxes = mailboxes
        self.jobs: dict[int, ImportJob] = {}

    def latest(self, account: Account) -> ImportJob | None:
        return self.jobs.get(account.id)

    def _begin(self, account: Account, kind: str, source: str) -> ImportJob:
        current = self.jobs.get(account.id)
        if current is not None and current.running:
            raise Conflict("an import is running already; wait until it has finished")
        job = self.jobs[account.id] = ImportJob(kind, source)
        return job

    def start_mbox(self, account: Account, path: Path, name: str, folder: str) -> ImportJob:
        """Imports the uploaded file at ``path`` (deleted when done) into ``folder``."""
        job = self._begin(account, "mbox", name)
        importer = Importer(self.mailboxes, account)
        importer.report = job.report

        async def work() -> None:
            try:
                job.report.total = await asyncio.to_thread(count_mbox, path)
                await importer.run(read_mbox(path, folder, label=name))
            finally:
                with contextlib.suppress(OSError):
                    path.unlink()

        job.task = asyncio.create_task(self._run(account, job, work()))
        return job

    def start_imap(self, account: Account, remote: ImapAccount) -> ImportJob:
        check_security(remote)  # at once: the page says what is wrong
        job = self._begin(account, "imap", f"{remote.user}@{remote.host}")
        importer = Importer(self.mailboxes, account)
        importer.report = job.report
        job.task = asyncio.create_task(self._run(account, job, Puller(remote, importer).run()))
        return job

    async def _run(self, account: Account, job: ImportJob, work: object) -> None:
        assert asyncio.iscoroutine(work)
        try:
            await work
        except asyncio.CancelledError:
            job.error = "stopped (the server is shutting down)"
            raise
        except Exception as exc:  # shown on the page; what was stored stays stored
            job.error = str(exc) or type(exc).__name__
        finally:
            job.finished = time.monotonic()
            log_event("import.done", user=account.address, kind=job.kind,
                      stored=job.report.stored, skipped=job.report.skipped,
                      error=job.error or None)

    async def close(self) -> None:
        tasks = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
