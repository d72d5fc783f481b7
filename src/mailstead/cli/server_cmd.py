"""The server's own commands: init, serve, config and check (loaded only when one of them runs)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import click

from mailstead import __version__, bootstrap, supervisor
from mailstead import loop as event_loop
from mailstead.app import App
from mailstead.cli.common import config_for, data_option, fail, open_store, run_async
from mailstead.cli.upkeep_cmd import before_serve
from mailstead.config import CONFIG_FILE, apply_listen_override, render_toml, resolve_data_dir
from mailstead.core.errors import ConfigError, CorruptBlob, NotFound
from mailstead.obs import setup_logging


@click.command()
@click.option("--hostname", default="mail.example.test", help="this server's host name")
@click.option("--domain", "domain_name", default="example.test", help="first mail domain")
@click.option("--store-url", default=None, help="sqlite:///FILE (default) or postgresql://...")
@click.option("--pg-schema", default=None, metavar="NAME",
              help="PostgreSQL schema of the store (default public; made if missing)")
@click.option("--existing-schema", is_flag=True,
              help="allow a PostgreSQL schema that already holds other tables than mailstead's")
@click.option("--demo-user", default="demo", help="local part of the demo account")
@click.option("--no-demo", is_flag=True, help="create no domain and no account")
@click.option("--force", is_flag=True, help="rewrite the config of an existing data dir")
@data_option
@run_async
async def init(
    hostname: str,
    domain_name: str,
    store_url: str | None,
    pg_schema: str | None,
    existing_schema: bool,
    demo_user: str,
    no_demo: bool,
    force: bool,
    data: Path | None,
) -> None:
    """Create a data directory: config, self-signed TLS, store, demo domain and account."""
    data_dir = resolve_data_dir(data)
    if (data_dir / CONFIG_FILE).exists() and not force:
        fail(f"{data_dir / CONFIG_FILE} exists already (use --force to rewrite it)")
    overrides: dict[str, object] = {"hostname": hostname}
    store: dict[str, str] = {}
    if store_url:
        store["url"] = store_url
    if pg_schema:
        store["pg_schema"] = pg_schema
    if store:
        overrides["store"] = store
    try:
        cfg = bootstrap.build_config(data_dir, overrides)
    except ValueError as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    if cfg.store.url.startswith("postgresql"):
        await _check_pg_schema(cfg.store.url, cfg.store.pg_schema, existing_schema)
    password = await bootstrap.initialise(
        cfg, demo_domain=None if no_demo else domain_name, demo_user=demo_user
    )
    click.echo(f"initialised {data_dir}")
    if password is not None:
        click.echo(f"demo account: {demo_user}@{domain_name}  password: {password}")
        click.echo(f"(also saved in {data_dir / bootstrap.DEMO_PASSWORD_FILE})")


async def _check_pg_schema(url: str, schema: str, allowed: bool) -> None:
    """init writes into a schema only if it is new, empty or already mailstead's, or when
    --existing-schema says another application's tables may share it."""
    from mailstead.store.postgres import schema_state

    try:
        state = await asyncio.to_thread(schema_state, url, schema)
    except Exception as exc:  # a driver error: say which store could not be reached
        raise ConfigError(f"store.url: cannot connect to {url}: {exc}".splitlines()[0]) from None
    if state == "foreign" and not allowed:
        fail(f"PostgreSQL schema {schema!r} holds tables that are not mailstead's: choose "
             "another with --pg-schema, or pass --existing-schema to share it", 2)
    if state == "mailstead":
        click.echo(f"joining the mailstead store in PostgreSQL schema {schema!r}")


@click.command()
@click.option(
    "--listen",
    "listen",
    multiple=True,
    metavar="NAME=ADDR:PORT",
    help="override a listener's address (port 0 picks a free one); repeatable",
)
@data_option
def serve(listen: tuple[str, ...], data: Path | None) -> None:
    """Run the server in the foreground; prints one 'listening' line per listener.
    With server.workers other than 1, one worker process per core serves them all."""
    try:
        cfg = config_for(data)
        for spec in listen:
            apply_listen_override(cfg, spec)
        before_serve(cfg)
    except ConfigError as exc:
        fail(str(exc), 2)
    setup_logging(cfg.log.level)
    workers = supervisor.worker_count(cfg)
    try:
        if workers == 1:
            event_loop.run(_serve(App(cfg)))
        else:
            sys.exit(supervisor.serve(cfg, workers, _echo))
    except ConfigError as exc:
        fail(str(exc), 2)
    except OSError as exc:
        fail(f"cannot listen: {exc.strerror or exc}")


def _echo(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()


async def _serve(app: App) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        listeners = await app.start()
        for listener in listeners:
            host = listener.address if ":" not in listener.address else f"[{listener.address}]"
            port = listener.bound_port
            click.echo(f"listening {listener.name} {host}:{port} {listener.tls_mode}")
        click.echo(f"mailstead {__version__} ready (data: {app.cfg.data_dir})")
        sys.stdout.flush()
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await app.stop()


@click.command("config")
@data_option
def show_config(data: Path | None) -> None:
    """Print the effective configuration, every option with its description."""
    try:
        cfg = config_for(data)
    except ConfigError as exc:
        fail(str(exc), 2)
    click.echo(render_toml(cfg), nl=False)


@click.command()
@data_option
@run_async
async def check(data: Path | None) -> None:
    """Verify every stored message against its SHA-256; exit 1 if any is corrupt or missing."""
    good = corrupt = missing = 0
    async with open_store(data) as (_cfg, store, blobs):
        async for blob_id in store.all_blob_ids():
            try:
                await asyncio.to_thread(blobs.get, blob_id)
                good += 1
            except CorruptBlob as exc:
                corrupt += 1
                click.echo(f"corrupt: {blob_id}: {exc.reason}")
            except NotFound:
                missing += 1
                click.echo(f"missing: {blob_id}")
    click.echo(f"checked {good + corrupt + missing} messages: {good} good, "
               f"{corrupt} corrupt, {missing} missing")
    if corrupt or missing:
        sys.exit(1)
