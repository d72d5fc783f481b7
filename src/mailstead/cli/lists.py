"""``mailstead lists``: the allow and block lists of senders of a user (OWNER an address) or of
a domain (OWNER a domain name; they apply to all its users)."""

from __future__ import annotations

from pathlib import Path

import click

from mailstead.cli.common import data_option, json_option, open_store, print_rows, run_async
from mailstead.core.addresses import normalize_domain, parse_address
from mailstead.core.errors import NotFound
from mailstead.services.sender_lists import Scope, SenderLists

KINDS = click.Choice(["allow", "block"], case_sensitive=False)


def _owner(text: str) -> tuple[Scope, str]:
    if "@" in text:
        return "user", parse_address(text).key
    return "domain", normalize_domain(text)


@click.group()
def lists() -> None:
    """Allow and block lists of senders (addresses, domains, IP ranges) per user or domain."""


@lists.command("list")
@click.argument("owner")
@data_option
@json_option
@run_async
async def lists_list(owner: str, data: Path | None, as_json: bool) -> None:
    """Show the entries of OWNER (user@domain, or a domain)."""
    scope, name = _owner(owner)
    async with open_store(data) as (cfg, store, _blobs):
        entries = await SenderLists(store, cfg.lists).entries(scope, name)
    rows = [{"list": e.kind, "entry": e.pattern, "action": e.action,
             "created": e.created.strftime("%Y-%m-%d %H:%M")} for e in entries]
    print_rows(rows, as_json, ["list", "entry", "action", "created"])


@lists.command("add")
@click.argument("owner")
@click.argument("kind", metavar="allow|block", type=KINDS)
@click.argument("entry")
@click.option("--junk", is_flag=True, help="block entries: file in Junk instead of refusing")
@data_option
@run_async
async def lists_add(owner: str, kind: str, entry: str, junk: bool, data: Path | None) -> None:
    """Add ENTRY (sender address, domain, or IP range like 192.0.2.0/24) to OWNER's list."""
    scope, name = _owner(owner)
    async with open_store(data) as (cfg, store, _blobs):
        added = await SenderLists(store, cfg.lists).add(scope, name, kind, entry,
                                                        "junk" if junk else "")
    action = f" ({added.action})" if added.action else ""
    click.echo(f"added {added.pattern} to the {added.kind} list of {name}{action}")


@lists.command("remove")
@click.argument("owner")
@click.argument("kind", metavar="allow|block", type=KINDS)
@click.argument("entry")
@data_option
@run_async
async def lists_remove(owner: str, kind: str, entry: str, data: Path | None) -> None:
    """Remove ENTRY from OWNER's allow or block list."""
    scope, name = _owner(owner)
    async with open_store(data) as (cfg, store, _blobs):
        if not await SenderLists(store, cfg.lists).remove(scope, name, kind, entry):
            raise NotFound(f"{entry} is not on the {kind.lower()} list of {name}")
    click.echo(f"removed {entry} from the {kind.lower()} list of {name}")
