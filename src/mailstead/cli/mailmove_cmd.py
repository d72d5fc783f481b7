"""``mailstead import`` (mbox, maildir, imap) and ``mailstead export``: moving mail in and out of
one account, with a progress bar."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from mailstead.cli.common import data_option, open_store, run_async
from mailstead.config import Config
from mailstead.core.errors import NotFound
from mailstead.core.models import Account
from mailstead.mailmove import export as exporting
from mailstead.mailmove.imap_pull import ImapAccount, Puller, check_security
from mailstead.mailmove.importer import Importer, ImportReport
from mailstead.mailmove.sources import (
    SourceMessage,
    count_maildir,
    count_mbox,
    read_maildir,
    read_mbox,
)
from mailstead.services.mailbox import MailboxService
from mailstead.store.changes import ChangeBus
from mailstead.store.interfaces import MetadataStore

REPORT_LINES = 20  # problems listed one per line; the rest are counted


@asynccontextmanager
async def open_mailboxes(data: Path | None, address: str
                         ) -> AsyncIterator[tuple[Config, MailboxService, Account]]:
    async with open_store(data) as (cfg, store, blobs):
        account = await _account(store, address)
        yield cfg, MailboxService(store, blobs, ChangeBus(), cfg.limits.max_message_size), account


async def _account(store: MetadataStore, address: str) -> Account:
    account = await store.get_account(address.strip().lower())
    if account is None:
        raise NotFound(f"no account {address}")
    return account


class ProgressBar:
    """A rich progress bar on stderr: messages done of the total, stored/skipped, rate."""

    def __init__(self, label: str, total: int | None) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"), console=Console(stderr=True), transient=False,
        )
        self.task: TaskID = self.progress.add_task(label, total=total, note="")
        self.started = time.monotonic()

    def __call__(self, report: ImportReport) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        done = report.stored + report.skipped
        note = (f"{report.stored} stored, {report.skipped} skipped, "
                f"{done / elapsed:,.0f} msg/s")
        self.progress.update(self.task, completed=report.seen, total=report.total, note=note)

    def __enter__(self) -> ProgressBar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def print_report(report: ImportReport, dry_run: bool, elapsed: float) -> None:
    for folder, count in sorted(report.folders.items()):
        click.echo(f"  {folder}: {count}")
    for problem in (report.unparsable + report.failed)[:REPORT_LINES]:
        click.echo(f"  problem: {problem}")
    more = len(report.unparsable) + len(report.failed) - REPORT_LINES
    if more > 0:
        click.echo(f"  ... and {more} more problems")
    rate = (report.stored + report.skipped) / max(elapsed, 1e-6)
    click.echo(f"{report.summary(dry_run)} in {elapsed:.1f}s ({rate:,.0f} messages/s)")


async def _import(data: Path | None, address: str, dry_run: bool, label: str,
                  total: int | None, source: Iterable[SourceMessage]) -> ImportReport:
    started = time.monotonic()
    async with open_mailboxes(data, address) as (_cfg, mailboxes, account):
        with ProgressBar(label, total) as bar:
            importer = Importer(mailboxes, account, dry_run=dry_run, progress=bar)
            importer.report.total = total
            report = await importer.run(source)
    print_report(report, dry_run, time.monotonic() - started)
    return report


def _exit_for(report: ImportReport) -> None:
    if report.failed:
        sys.exit(1)


dry_run_option = click.option("--dry-run", is_flag=True,
                              help="read everything, store nothing: say what would be stored")


@click.group("import")
def import_cmd() -> None:
    """Bring mail into one account: from mbox files, a Maildir tree or an IMAP server."""


@import_cmd.command("mbox")
@click.argument("address")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--folder", default="INBOX", show_default=True,
              help="mailbox to import files into (a directory's NAME.mbox files go to NAME)")
@click.option("--variant", type=click.Choice(["mboxrd", "mboxo"]), default="mboxrd",
              show_default=True, help="how '>From ' lines are unescaped")
@dry_run_option
@data_option
@run_async
async def import_mbox(address: str, files: tuple[Path, ...], folder: str, variant: str,
                      dry_run: bool, data: Path | None) -> None:
    """Import mbox FILES (flags from Status/X-Status/X-Keywords) into ADDRESS. A directory
    (as `export --format mbox` writes) gives each NAME.mbox below it the folder NAME."""
    plan = [(f, folder) for f in files if not f.is_dir()]
    for directory in (f for f in files if f.is_dir()):
        plan += [(m, m.relative_to(directory).as_posix().removesuffix(".mbox"))
                 for m in sorted(directory.rglob("*.mbox")) if m.is_file()]
    total = sum(count_mbox(f) for f, _folder in plan)

    def messages() -> Iterable[SourceMessage]:
        for f, target in plan:
            yield from read_mbox(f, target, variant)

    _exit_for(await _import(data, address, dry_run, "mbox", total, messages()))


@import_cmd.command("maildir")
@click.argument("address")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@dry_run_option
@data_option
@run_async
async def import_maildir(address: str, root: Path, dry_run: bool, data: Path | None) -> None:
    """Import a Maildir tree (Maildir++ .Folder.Sub or plain directories) into ADDRESS."""
    report = await _import(data, address, dry_run, "maildir", count_maildir(root),
                           read_maildir(root))
    _exit_for(report)


@import_cmd.command("imap")
@click.argument("address")
@click.option("--host", required=True, help="the IMAP server to copy from")
@click.option("--port", type=int, default=None, help="default: 993 for ssl, else 143")
@click.option("--security", type=click.Choice(["ssl", "starttls", "none"]), default=None,
              help="default: ssl on port 993, else starttls")
@click.option("--login", "login", required=True, help="user name on that server")
@click.option("--password-stdin", is_flag=True, help="read the password from stdin")
@click.option("--cafile", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CA certificates to trust for that server")
@click.option("--insecure", is_flag=True,
              help="allow plain text to a non-loopback host and skip certificate checks")
@dry_run_option
@data_option
@run_async
async def import_imap(address: str, host: str, port: int | None, security: str | None,
                      login: str, password_stdin: bool, cafile: str | None, insecure: bool,
                      dry_run: bool, data: Path | None) -> None:
    """Copy every folder of an IMAP account into ADDRESS; a rerun copies only what is
    missing."""
    password = (sys.stdin.readline().rstrip("\r\n") if password_stdin else
                click.prompt("Password on the IMAP server", hide_input=True))
    remote = ImapAccount(host, login, password, port=port,
                         security=security,  # type: ignore[arg-type]
                         insecure=insecure, cafile=cafile)
    check_security(remote)  # before any output
    started = time.monotonic()
    async with open_mailboxes(data, address) as (_cfg, mailboxes, account):
        with ProgressBar("imap", None) as bar:
            importer = Importer(mailboxes, account, dry_run=dry_run, progress=bar)
            await Puller(remote, importer).run()
    print_report(importer.report, dry_run, time.monotonic() - started)
    _exit_for(importer.report)


@click.command("export")
@click.argument("address")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["maildir", "mbox", "tar.gz"]),
              default="maildir", show_default=True,
              help="maildir: a Maildir++ tree; mbox: one mboxrd file per folder in DEST; "
                   "tar.gz: the Maildir tree as one archive file")
@data_option
@run_async
async def export_cmd(address: str, dest: Path, fmt: str, data: Path | None) -> None:
    """Write every folder of ADDRESS to DEST, flags kept."""
    async with open_mailboxes(data, address) as (_cfg, mailboxes, account):
        count = await exporting.export_account(mailboxes, account, dest, fmt)
    click.echo(f"exported {count} messages to {dest}")
