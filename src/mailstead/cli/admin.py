"""Admin commands: domains, users, aliases."""

from __future__ import annotations

import re
from pathlib import Path

import click

from mailstead import bootstrap
from mailstead.auth.passwords import check_password_rules, hash_password
from mailstead.cli.common import (
    data_option,
    json_option,
    open_store,
    print_rows,
    read_password,
    run_async,
)
from mailstead.core.addresses import normalize_domain, parse_address
from mailstead.core.errors import Conflict, InvalidInput, NotFound

_SIZE_RE = re.compile(r"^(\d+)\s*([KMGT]?)(i?B)?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """'0', '5000', '100M', '2GiB' -> bytes."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise click.BadParameter(f"{text!r} is not a size (examples: 0, 500M, 2G)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def _human(n: int) -> str:
    if n == 0:
        return "unlimited"
    for unit in ("GiB", "MiB", "KiB"):
        factor = _UNITS[unit[0]]
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} B"


# -- domains -------------------------------------------------------------------------------


@click.group()
def domain() -> None:
    """Mail domains served here."""


@domain.command("add")
@click.argument("name")
@data_option
@run_async
async def domain_add(name: str, data: Path | None) -> None:
    """Add a mail domain."""
    async with open_store(data) as (cfg, store, _blobs):
        added = await bootstrap.add_domain(store, name, cfg)
    click.echo(f"added domain {added}")


@domain.command("list")
@data_option
@json_option
@run_async
async def domain_list(data: Path | None, as_json: bool) -> None:
    """List domains."""
    async with open_store(data) as (_cfg, store, _blobs):
        domains = await store.list_domains()
        rows = []
        for d in domains:
            accounts = await store.list_accounts(d.name)
            rows.append({"name": d.name, "accounts": len(accounts), "created": d.created})
    print_rows(rows, as_json, ["name", "accounts", "created"])


@domain.command("remove")
@click.argument("name")
@data_option
@run_async
async def domain_remove(name: str, data: Path | None) -> None:
    """Remove a domain (it must have no accounts or aliases left)."""
    async with open_store(data) as (_cfg, store, _blobs):
        await store.remove_domain(normalize_domain(name))
    click.echo(f"removed domain {normalize_domain(name)}")


# -- users ---------------------------------------------------------------------------------


@click.group()
def user() -> None:
    """Mail accounts."""


@user.command("add")
@click.argument("address")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
@click.option("--quota", "quota", default="0", help="byte quota, e.g. 500M (0 = unlimited)")
@click.option("--quota-messages", default=0, type=click.IntRange(min=0), help="message quota")
@click.option("--admin", is_flag=True, help="may use the admin console and API")
@data_option
@run_async
async def user_add(
    address: str,
    password_stdin: bool,
    quota: str,
    quota_messages: int,
    admin: bool,
    data: Path | None,
) -> None:
    """Add an account (it gets INBOX, Sent, Drafts, Trash, Junk and Archive)."""
    quota_bytes = parse_size(quota)
    async with open_store(data) as (cfg, store, _blobs):
        parse_address(address)  # fail on a bad address before asking for a password
        password = read_password(password_stdin)
        account = await bootstrap.add_user(
            store,
            address,
            password,
            min_password_length=cfg.auth.min_password_length,
            quota_bytes=quota_bytes,
            quota_messages=quota_messages,
            is_admin=admin,
        )
    click.echo(f"added user {account.address}")


@user.command("list")
@click.option("--domain", "domain_name", default=None, help="only this domain")
@data_option
@json_option
@run_async
async def user_list(domain_name: str | None, data: Path | None, as_json: bool) -> None:
    """List accounts with their quota use."""
    async with open_store(data) as (_cfg, store, _blobs):
        accounts = await store.list_accounts(normalize_domain(domain_name) if domain_name else None)
        rows = []
        for a in accounts:
            used_bytes, used_messages = await store.quota_usage(a.id)
            rows.append(
                {
                    "address": a.address,
                    "admin": a.is_admin,
                    "used_bytes": used_bytes,
                    "messages": used_messages,
                    "quota_bytes": a.quota_bytes,
                    "quota_messages": a.quota_messages,
                    "quota": _human(a.quota_bytes),
                }
            )
    print_rows(rows, as_json, ["address", "messages", "used_bytes", "quota", "admin"])


@user.command("passwd")
@click.argument("address")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
@data_option
@run_async
async def user_passwd(address: str, password_stdin: bool, data: Path | None) -> None:
    """Change an account's password."""
    async with open_store(data) as (cfg, store, _blobs):
        key = parse_address(address).key
        if await store.get_account(key) is None:
            raise NotFound(f"no such user {key}")
        password = read_password(password_stdin)
        check_password_rules(password, cfg.auth.min_password_length)
        await store.set_password(key, hash_password(password))
    click.echo(f"password changed for {key}")


@user.command("remove")
@click.argument("address")
@data_option
@run_async
async def user_remove(address: str, data: Path | None) -> None:
    """Remove an account and all its mail."""
    async with open_store(data) as (_cfg, store, blobs):
        key = parse_address(address).key
        unused = await store.remove_account(key)
        for blob_id in unused:
            blobs.discard_unused(blob_id, 0)
    click.echo(f"removed user {key}")


@user.command("quota")
@click.argument("address")
@click.option("--bytes", "quota", default=None, help="byte quota, e.g. 500M (0 = unlimited)")
@click.option("--messages", default=None, type=click.IntRange(min=0), help="message quota")
@data_option
@run_async
async def user_quota(
    address: str, quota: str | None, messages: int | None, data: Path | None
) -> None:
    """Show or set an account's quota."""
    async with open_store(data) as (_cfg, store, _blobs):
        key = parse_address(address).key
        account = await store.get_account(key)
        if account is None:
            raise NotFound(f"no such user {key}")
        if quota is not None or messages is not None:
            new_bytes = parse_size(quota) if quota is not None else account.quota_bytes
            new_messages = messages if messages is not None else account.quota_messages
            await store.set_quota(key, new_bytes, new_messages)
            account = await store.get_account(key)
            assert account is not None
        used_bytes, used_messages = await store.quota_usage(account.id)
    click.echo(
        f"{key}: {used_bytes} bytes in {used_messages} messages; quota "
        f"{_human(account.quota_bytes)}, "
        f"{account.quota_messages or 'unlimited'} messages"
    )


# -- aliases -------------------------------------------------------------------------------


def _alias_source(text: str) -> str:
    """'sales@example.test', or '@example.test' for the domain's catch-all."""
    if text.startswith("@"):
        return "@" + normalize_domain(text[1:])
    return parse_address(text).key


@click.group()
def alias() -> None:
    """Aliases (one address delivering to others) and catch-alls (@domain)."""


@alias.command("add")
@click.argument("source")
@click.argument("destinations", nargs=-1, required=True)
@data_option
@run_async
async def alias_add(source: str, destinations: tuple[str, ...], data: Path | None) -> None:
    """Add an alias SOURCE -> DESTINATION... (SOURCE '@domain' is the catch-all)."""
    async with open_store(data) as (_cfg, store, _blobs):
        src = _alias_source(source)
        domain_name = src.rpartition("@")[2]
        if await store.get_domain(domain_name) is None:
            raise InvalidInput(f"unknown domain {domain_name} (add it with 'mailstead domain add')")
        if not src.startswith("@") and await store.get_account(src) is not None:
            raise Conflict(f"{src} is an account; an alias cannot shadow it")
        targets = [str(parse_address(d)) for d in destinations]
        for target in targets:
            await store.add_alias(src, target)
    click.echo(f"added alias {src} -> {', '.join(targets)}")


@alias.command("list")
@click.option("--domain", "domain_name", default=None, help="only this domain")
@data_option
@json_option
@run_async
async def alias_list(domain_name: str | None, data: Path | None, as_json: bool) -> None:
    """List aliases."""
    async with open_store(data) as (_cfg, store, _blobs):
        aliases = await store.list_aliases(normalize_domain(domain_name) if domain_name else None)
    rows = [{"source": a.source, "destination": a.destination} for a in aliases]
    print_rows(rows, as_json, ["source", "destination"])


@alias.command("remove")
@click.argument("source")
@click.argument("destination", required=False)
@data_option
@run_async
async def alias_remove(source: str, destination: str | None, data: Path | None) -> None:
    """Remove an alias (one destination, or all of them)."""
    async with open_store(data) as (_cfg, store, _blobs):
        src = _alias_source(source)
        target = str(parse_address(destination)) if destination else None
        removed = await store.remove_alias(src, target)
        if removed == 0:
            raise NotFound(f"no alias {src}" + (f" -> {target}" if target else ""))
    click.echo(f"removed {removed} alias row(s) for {src}")
