"""``mailstead dns <domain>``: the records to publish; ``--check`` looks them up."""

from __future__ import annotations

from pathlib import Path

import click

from mailstead.cli.common import data_option, fail, open_store, run_async
from mailstead.core.addresses import normalize_domain
from mailstead.dns import CHECKS_OFF, make_check_resolver
from mailstead.mailsec import dnsrecords
from mailstead.mailsec.dkim_keys import DkimKeyring


@click.command("dns")
@click.argument("domain")
@click.option("--check", "check_", is_flag=True, help="look the records up and report problems")
@data_option
@run_async
async def dns(domain: str, check_: bool, data: Path | None) -> None:
    """Print the DNS records DOMAIN must publish, in zone-file form."""
    async with open_store(data) as (cfg, store, _blobs):
        domain = normalize_domain(domain)
        keys = await DkimKeyring(store, cfg.path(cfg.trust.dkim_dir)).published(domain)
    if not check_:
        click.echo(dnsrecords.zone_text(cfg, domain, keys), nl=False)
        return
    if cfg.trust.dns == "off" and not cfg.delivery.resolvers:
        fail(f"nothing checked: {CHECKS_OFF}")
    results = await dnsrecords.check(make_check_resolver(cfg.delivery, cfg.trust), cfg, domain,
                                     keys)
    bad = 0
    for record, problem in results:
        status = problem or "ok"
        bad += bool(problem) and not problem.startswith("not checked")
        click.echo(f"{record.rdtype:5} {record.name}: {status}")
    if bad:
        fail(f"{bad} record(s) missing or wrong")
