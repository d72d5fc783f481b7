"""``mailstead monitor``: receive the nodes' usage statistics and show them."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import click

from mailstead import loop as event_loop
from mailstead.cli.common import data_option, fail
from mailstead.config import host_and_port, load_config, resolve_data_dir
from mailstead.core.errors import ConfigError


@click.command()
@click.option("--listen", default=None, metavar="ADDR:PORT",
              help="UDP address to receive on (default: [monitor] listen, 127.0.0.1:8125)")
@click.option("--http", "http", default=None, metavar="ADDR:PORT",
              help="address of /stats.json and /metrics ('' for none; default: [monitor] http)")
@click.option("--live/--no-live", default=None,
              help="redraw a table in the terminal (default: when stdout is a terminal)")
@data_option
def monitor(listen: str | None, http: str | None, live: bool | None, data: Path | None) -> None:
    """Receive the usage statistics every node sends ([metrics] monitor) and show counts per
    server, per address and per protocol over the last minute, hour and since start."""
    try:
        cfg = load_config(resolve_data_dir(data), must_exist=data is not None).monitor
        listen = cfg.listen if listen is None else listen
        http = cfg.http if http is None else http
        host_and_port(listen, bind=True)
        if http:
            host_and_port(http, bind=True)
    except (ConfigError, ValueError) as exc:
        fail(str(exc), 2)
    if live is None:
        live = sys.stdout.isatty()
    try:
        event_loop.run(_run(listen, http, live))
    except OSError as exc:
        fail(f"cannot listen: {exc.strerror or exc}")


async def _run(listen: str, http: str, live: bool) -> None:
    from mailstead.monitor.server import start_monitor

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    running = await start_monitor(listen, http)
    try:
        host, port = running.udp_address
        line = f"monitor listening udp {host}:{port}"
        if running.http_address:
            line += f" http {running.http_address[0]}:{running.http_address[1]}"
        click.echo(line)
        sys.stdout.flush()
        if live:
            await _show_live(running.tally, stop)
        else:
            await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await running.stop()


async def _show_live(tally: object, stop: asyncio.Event) -> None:
    import time

    from rich.live import Live

    from mailstead.monitor.tally import Tally
    from mailstead.monitor.view import render

    assert isinstance(tally, Tally)
    with Live(render(tally.snapshot(time.time())), auto_refresh=False) as view:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            view.update(render(tally.snapshot(time.time())), refresh=True)
