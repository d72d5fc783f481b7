"""``mailstead queue``: look at the outbound queue, retry, recall, delete.

The commands work on the store directly, so they also work while ``mailstead serve`` runs (its
workers see the changes at their next look at the queue).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from mailstead.auth.ratelimit import AuthLimiter
from mailstead.cli.common import data_option, json_option, open_store, print_rows, run_async
from mailstead.core.addresses import parse_address
from mailstead.core.errors import NotFound
from mailstead.queue.manage import delete_entry, retry_now
from mailstead.queue.recall import recall_and_tell
from mailstead.services.accounts import AccountService
from mailstead.services.delivery import DeliveryService
from mailstead.store.interfaces import MetadataStore, QueueEntry


def _age(created: datetime, now: datetime) -> str:
    seconds = int((now - created).total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172_800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _summary(entry: QueueEntry, now: datetime) -> dict[str, Any]:
    counts = {s: sum(r.status == s for r in entry.recipients)
              for s in ("pending", "delivered", "failed", "recalled")}
    return {
        "id": entry.id,
        "sender": entry.sender or "<>",
        "recipients": len(entry.recipients),
        **counts,
        "size": entry.size,
        "attempts": entry.attempts,
        "state": entry.state,
        "age": _age(entry.created, now),
        "next_attempt": entry.next_attempt.isoformat(timespec="seconds")
        if entry.state == "queued" else "",
    }


def _details(entry: QueueEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "sender": entry.sender,
        "state": entry.state,
        "size": entry.size,
        "created": entry.created.isoformat(timespec="seconds"),
        "next_attempt": entry.next_attempt.isoformat(timespec="seconds"),
        "attempts": entry.attempts,
        "account_id": entry.account_id,
        "envid": entry.envid,
        "ret": entry.ret,
        "requiretls": entry.requiretls,
        "smtputf8": entry.smtputf8,
        "body_8bit": entry.body_8bit,
        "delay_notified": entry.delay_notified,
        "lease_owner": entry.lease_owner,
        "lease_until": entry.lease_until.isoformat(timespec="seconds")
        if entry.lease_until else None,
        "recipients": [
            {"address": r.address, "status": r.status, "last_reply": r.last_reply,
             "notify": r.notify, "orcpt": r.orcpt}
            for r in entry.recipients
        ],
    }


async def _entry(store: MetadataStore, queue_id: str) -> QueueEntry:
    entry = await store.get_queue_entry(queue_id)
    if entry is None:
        raise NotFound(f"no queue entry {queue_id}")
    return entry


@click.group()
def queue() -> None:
    """The outbound queue: list, show, retry, recall, delete."""


@queue.command("list")
@click.option("--all", "include_done", is_flag=True, help="also list finished entries")
@data_option
@json_option
@run_async
async def queue_list(include_done: bool, data: Path | None, as_json: bool) -> None:
    """List queued messages (and finished ones with --all)."""
    now = datetime.now(UTC)
    async with open_store(data) as (_cfg, store, _blobs):
        entries = await store.list_queue(include_done=include_done)
    rows = [_summary(e, now) for e in entries]
    print_rows(rows, as_json, ["id", "sender", "recipients", "pending", "attempts", "state",
                               "age", "next_attempt"])


@queue.command("show")
@click.argument("queue_id")
@data_option
@json_option
@run_async
async def queue_show(queue_id: str, data: Path | None, as_json: bool) -> None:
    """Show one entry: envelope, and each recipient's status and last reply."""
    async with open_store(data) as (_cfg, store, _blobs):
        details = _details(await _entry(store, queue_id))
    if as_json:
        click.echo(json.dumps(details, indent=2))
        return
    for key, value in details.items():
        if key != "recipients":
            click.echo(f"{key + ':':15} {value if value not in (None, '') else '-'}")
    click.echo("recipients:")
    for r in details["recipients"]:
        click.echo(f"  {r['address']}  {r['status']}  {r['last_reply']}".rstrip())


@queue.command("retry")
@click.argument("queue_ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="every waiting entry")
@data_option
@json_option
@run_async
async def queue_retry(
    queue_ids: tuple[str, ...], every: bool, data: Path | None, as_json: bool
) -> None:
    """Try waiting entries again now instead of at their next retry time."""
    if not queue_ids and not every:
        raise click.UsageError("name queue ids, or --all")
    async with open_store(data) as (_cfg, store, _blobs):
        ids = [e.id for e in await store.list_queue()] if every else list(queue_ids)
        for queue_id in ids:
            await retry_now(store, queue_id)
    if as_json:
        click.echo(json.dumps({"due_now": ids}))
        return
    click.echo(f"{len(ids)} entr{'y' if len(ids) == 1 else 'ies'} due now")


@queue.command("recall")
@click.argument("queue_id")
@click.option("--as", "as_user", default=None, metavar="ADDRESS",
              help="recall on behalf of this account: only its own messages")
@click.option("--by", "by", default=None, metavar="ADDRESS",
              help="the administrator recalling, named in the report to the sender")
@click.option("--wait", "wait_seconds", default=60.0, show_default=True,
              help="seconds to wait for a worker that is sending it right now")
@data_option
@json_option
@run_async
async def queue_recall(queue_id: str, as_user: str | None, by: str | None,
                       wait_seconds: float, data: Path | None, as_json: bool) -> None:
    """Recall a queued message: recipients not reached yet will never get it; the sender is
    told (here and in the INBOX) which recipients already had it, and who recalled it (the
    sender with --as, else the administrator, named with --by)."""
    admin = str(parse_address(by)) if by else None  # checked before anything is recalled
    async with open_store(data) as (cfg, store, blobs):
        account = None
        if as_user is not None:
            account = await store.get_account(as_user.lower())
            if account is None:
                raise NotFound(f"no account {as_user}")
        delivery = DeliveryService(store, blobs, cfg.hostname)
        limiter = AuthLimiter.from_config(cfg.auth)
        try:
            report = await recall_and_tell(
                store, blobs, delivery, AccountService(store, cfg.auth, limiter), queue_id,
                account=account, by=admin, wait_seconds=wait_seconds)
        finally:
            await delivery.close()
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    click.echo(f"recalled {queue_id} (by {report.recalled_by})")
    for title, addresses in (("recalled (will not receive it)", report.recalled),
                             ("already delivered", report.delivered),
                             ("failed earlier", report.failed)):
        if addresses:
            click.echo(f"{title}: {', '.join(addresses)}")


@queue.command("delete")
@click.argument("queue_id")
@data_option
@json_option
@run_async
async def queue_delete(queue_id: str, data: Path | None, as_json: bool) -> None:
    """Delete an entry without telling anyone (its undelivered recipients never get it)."""
    async with open_store(data) as (_cfg, store, blobs):
        if not await delete_entry(store, blobs, queue_id):
            raise NotFound(f"no queue entry {queue_id}")
    click.echo(json.dumps({"deleted": queue_id}) if as_json else f"deleted {queue_id}")
