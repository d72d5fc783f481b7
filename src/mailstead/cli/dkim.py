"""``mailstead dkim rotate <domain>``: a new selector; the old one stays until removed."""

from __future__ import annotations

from pathlib import Path

import click

from mailstead.cli.common import config_for, data_option
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
