"""``mailstead sieve``: a user's Sieve scripts (the same store ManageSieve and the web use)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mailstead.cli.common import data_option, json_option, open_store, print_rows, run_async
from mailstead.core.errors import NotFound
from mailstead.sieve.service import MAX_SCRIPTS, check_name, check_script, sieve_store
from mailstead.store.interfaces import Account, MetadataStore


async def _account(store: MetadataStore, user: str) -> Account:
    account = await store.get_account(user.strip().lower())
    if account is None:
        raise NotFound(f"no such user: {user}")
    return account


def _read(source: str) -> str:
    try:
        if source == "-":
            return sys.stdin.read()
        return Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read {source}: {exc}") from None


@click.group()
def sieve() -> None:
    """Users' Sieve scripts (mail rules, RFC 5228)."""


@sieve.command("list")
@click.argument("user")
@data_option
@json_option
@run_async
async def sieve_list(user: str, data: Path | None, as_json: bool) -> None:
    """List USER's scripts; the active one is marked."""
    async with open_store(data) as (_cfg, store, _blobs):
        account = await _account(store, user)
        scripts = await sieve_store(store).list_sieve_scripts(account.id)
    print_rows([{"name": n, "active": "yes" if a else ""} for n, a in scripts], as_json,
               ["name", "active"])


@sieve.command("put")
@click.argument("user")
@click.argument("name")
@click.argument("source", default="-")
@click.option("--activate", is_flag=True, help="make it the active script")
@data_option
@run_async
async def sieve_put(user: str, name: str, source: str, activate: bool,
                    data: Path | None) -> None:
    """Store script NAME for USER from SOURCE (a file, or - for standard input)."""
    text = _read(source)
    check_name(name)
    check_script(text)
    async with open_store(data) as (_cfg, store, _blobs):
        account = await _account(store, user)
        await sieve_store(store).put_sieve_script(account.id, name, text,
                                     MAX_SCRIPTS)
        if activate:
            await sieve_store(store).set_active_sieve_script(account.id, name)
    click.echo(f"stored {name} for {account.address}" + (" (active)" if activate else ""))


@sieve.command("get")
@click.argument("user")
@click.argument("name")
@data_option
@run_async
async def sieve_get(user: str, name: str, data: Path | None) -> None:
    """Print USER's script NAME."""
    async with open_store(data) as (_cfg, store, _blobs):
        account = await _account(store, user)
        text = await sieve_store(store).get_sieve_script(account.id, name)
    if text is None:
        raise NotFound(f"{account.address} has no script {name!r}")
    click.echo(text, nl=False)


@sieve.command("activate")
@click.argument("user")
@click.argument("name", default="")
@data_option
@run_async
async def sieve_activate(user: str, name: str, data: Path | None) -> None:
    """Make NAME USER's active script (no NAME: no script runs)."""
    async with open_store(data) as (_cfg, store, _blobs):
        account = await _account(store, user)
        await sieve_store(store).set_active_sieve_script(account.id, name)
    click.echo(f"active script of {account.address}: {name or '(none)'}")


@sieve.command("check")
@click.argument("user")
@click.argument("name", default="")
@click.option("--file", "source", default=None, help="check this file (- for stdin) instead")
@data_option
@run_async
async def sieve_check(user: str, name: str, source: str | None, data: Path | None) -> None:
    """Check USER's script NAME (default: the active one), or a file, for errors."""
    if source is not None:
        text, label = _read(source), source
    else:
        async with open_store(data) as (_cfg, store, _blobs):
            account = await _account(store, user)
            if name:
                found = await sieve_store(store).get_sieve_script(account.id, name)
            else:
                active = await sieve_store(store).active_sieve_script(account.id)
                name, found = active if active is not None else ("", None)
        if found is None:
            raise NotFound(f"{account.address} has no script {name or '(active)'}")
        text, label = found, name
    check_script(text)
    click.echo(f"{label}: syntax OK")


@sieve.command("global")
@click.argument("name")
@click.argument("source", default="-")
@data_option
@run_async
async def sieve_global(name: str, source: str, data: Path | None) -> None:
    """Store global script NAME (for ``include :global``, RFC 6609) from SOURCE."""
    text = _read(source)
    check_name(name)
    check_script(text)
    async with open_store(data) as (_cfg, store, _blobs):
        await sieve_store(store).put_global_sieve_script(name, text)
    click.echo(f"stored global script {name}")
