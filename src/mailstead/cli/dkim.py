"""``mailstead dkim list|rotate|remove``: a domain's selectors; a new one; a retired one gone.
The keys are in the store, so every node sharing it signs with the same selector."""

from __future__ import annotations

from pathlib import Path

import click

from mailstead.cli.common import data_option, fail, json_option, open_store, print_rows, run_async
from mailstead.core.addresses import normalize_domain
from mailstead.mailsec.dkim_keys import DkimKeyring


@click.group("dkim")
def dkim() -> None:
    """DKIM keys of our domains."""


@dkim.command("rotate")
@click.argument("domain")
@data_option
@run_async
async def rotate(domain: str, data: Path | None) -> None:
    """New RSA-2048 and Ed25519 keys for DOMAIN under a new selector (signing uses it at
    once, on every node within 30 seconds: publish its records first, see 'mailstead dns')."""
    domain = normalize_domain(domain)
    async with open_store(data) as (cfg, store, _blobs):
        keyring = DkimKeyring(store, cfg.path(cfg.trust.dkim_dir))
        selector = await keyring.rotate(domain)
        records = await keyring.published(domain)
    click.echo(f"new selector {selector} for {domain}; publish:")
    for name, value in records:
        if name.startswith(selector):
            click.echo(f'{name}.\tIN\tTXT\t"{value[:250]}" "{value[250:]}"')


@dkim.command("list")
@click.argument("domain")
@data_option
@json_option
@run_async
async def list_selectors(domain: str, data: Path | None, as_json: bool) -> None:
    """The selectors kept for DOMAIN (all still published), the active one marked."""
    domain = normalize_domain(domain)
    async with open_store(data) as (cfg, store, _blobs):
        found = await DkimKeyring(store, cfg.path(cfg.trust.dkim_dir)).existing(domain)
    if found is None and not as_json:
        fail(f"{domain} has no DKIM keys yet (mailstead domain add makes them)")
    rows = [{"selector": k.selector, "active": k.selector == found.active}
            for k in found.keys] if found else []
    print_rows(rows, as_json, ["selector", "active"])


@dkim.command("remove")
@click.argument("domain")
@click.argument("selector")
@data_option
@run_async
async def remove(domain: str, selector: str, data: Path | None) -> None:
    """Delete a retired SELECTOR of DOMAIN (after its DNS records are gone)."""
    domain = normalize_domain(domain)
    async with open_store(data) as (_cfg, store, _blobs):
        try:
            await store.remove_dkim_selector(domain, selector)
        except (KeyError, ValueError) as exc:
            fail(str(exc.args[0]))
    click.echo(f"removed selector {selector} of {domain}; unpublish its records")
