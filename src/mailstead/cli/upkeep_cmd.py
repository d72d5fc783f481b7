"""``mailstead backup``, ``restore`` and ``migrate``, and the store copy ``serve`` takes before
it upgrades the schema."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from mailstead.cli.common import config_for, data_option, open_store, run_async
from mailstead.config import Config, resolve_data_dir
from mailstead.mailmove.backup import backup_before_upgrade, make_backup, restore_backup
from mailstead.store.snapshot import pending_migrations


def before_serve(cfg: Config) -> None:
    """Refuses a schema newer than this binary (SchemaError, a ConfigError: exit 2) and copies
    a SQLite store before migrations change it."""
    if cfg.sqlite_path is None:
        return  # PostgreSQL: apply_migrations refuses a newer schema when the store opens
    current, pending = pending_migrations(cfg)
    if pending:
        copy = backup_before_upgrade(cfg, current, cfg.store.migration_backups)
        if copy is not None:
            click.echo(f"schema upgrade {current} -> {pending[-1][:4].lstrip('0')}: "
                       f"store copied to {copy}")


@click.command()
@click.option("--dry-run", is_flag=True, help="list the migrations that would run; change nothing")
@data_option
@run_async
async def migrate(dry_run: bool, data: Path | None) -> None:
    """Upgrade the store's schema (serve does this itself at start)."""
    cfg = config_for(data)
    current, pending = await asyncio.to_thread(pending_migrations, cfg)
    if not pending:
        click.echo(f"the store is up to date (schema version {current})")
        return
    if dry_run:
        click.echo(f"the store is at schema version {current}; these migrations would run:")
        for name in pending:
            click.echo(f"  {name}")
        return
    before_serve(cfg)
    async with open_store(data):  # opening applies them, each run in one transaction
        pass
    click.echo(f"applied {len(pending)} migrations: {', '.join(pending)}")


@click.command()
@click.argument("dest", type=click.Path(path_type=Path))
@data_option
@run_async
async def backup(dest: Path, data: Path | None) -> None:
    """Copy the data directory to DEST while the server runs: the store (SQLite backup API),
    message files, config and keys, with SHA-256 sums of every file."""
    cfg = config_for(data)
    summary = await asyncio.to_thread(make_backup, cfg, dest)
    click.echo(f"backed up {summary.messages} message files, {summary.files} files in all "
               f"({summary.bytes:,} bytes) to {dest}")
    if summary.backend != "sqlite":
        click.echo("the PostgreSQL database is not in it: dump it with pg_dump (see README)")


@click.command()
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@data_option
@run_async
async def restore(src: Path, data: Path | None) -> None:
    """Check a backup against its SHA-256 sums, then restore it into a new data directory."""
    target = resolve_data_dir(data)
    manifest = await asyncio.to_thread(restore_backup, src, target)
    click.echo(f"restored the backup of {manifest.get('created')} into {target}")
