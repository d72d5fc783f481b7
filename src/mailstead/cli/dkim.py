"""``mailstead dkim list|rotate|remove``: a domain's selectors; a new one; a retired one gone."""

from __future__ import annotations

from pathlib import Path

import click

from mailstead.cli.common import config_for, data_option, fail, json_option, print_rows
from mailstead.core.addresses import normalize_domain
from mailstead.mailsec import dkim as keys


@click.group("dkim")
def dkim() -> None:
    """DKIM keys of our domains."""


@dkim.command("rotate")
@click.argument("domain")
@data_option
def rotate(domain: str, data: Path | None) -> None:
    """New RSA-2048 and Ed25519 keys for DOMAIN under a new selector (signing uses it at
    once: publish its records first, see 'mailstead dns')."""
    cfg = config_for(data)
    domain = normalize_domain(domain)
    root = cfg.path(cfg.trust.dkim_dir)
    selector = keys.create_keys(root, domain)
    click.echo(f"new selector {selector} for {domain}; publish:")
    for name, value in keys.published_records(root, domain):
        if name.startswith(selector):
            click.echo(f'{name}.\tIN\tTXT\t"{value[:250]}" "{value[250:]}"')


@dkim.command("list")
@click.argument("domain")
@data_option
@json_option
def list_selectors(domain: str, data: Path | None, as_json: bool) -> None:
    """The selectors kept for DOMAIN (all still published), the active one marked."""
    cfg = config_for(data)
    domain = normalize_domain(domain)
    found = keys.read_selectors(cfg.path(cfg.trust.dkim_dir), domain)
    active = found.get("active")
    selectors = [s for s in found.get("all", []) if isinstance(s, str)]  # type: ignore[attr-defined]
    if not selectors and not as_json:
        fail(f"{domain} has no DKIM keys yet (mailstead domain add makes them)")
    rows = [{"selector": s, "active": s == active} for s in selectors]
    print_rows(rows, as_json, ["selector", "active"])


@dkim.command("remove")
@click.argument("domain")
@click.argument("selector")
@data_option
def remove(domain: str, selector: str, data: Path | None) -> None:
    """Delete a retired SELECTOR of DOMAIN (after its DNS records are gone)."""
    cfg = config_for(data)
    domain = normalize_domain(domain)
    try:
        keys.remove_selector(cfg.path(cfg.trust.dkim_dir), domain, selector)
    except (KeyError, ValueError) as exc:
        fail(str(exc.args[0]))
    click.echo(f"removed selector {selector} of {domain}; unpublish its records")
