"""What every CLI command shares: the --data option, error reporting, store access, output."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar

import click

from mailstead.config import Config, load_config, resolve_data_dir
from mailstead.core.errors import ConfigError, MailsteadError
from mailstead.store.announce import announce
from mailstead.store.changes import ChangeBus
from mailstead.store.factory import make_blob_store, make_metadata_store
from mailstead.store.interfaces import BlobStore, MetadataStore

P = ParamSpec("P")
T = TypeVar("T")

EXIT_ERROR = 1
EXIT_CONFIG = 2


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """One line saying what is wrong, then exit non-zero."""
    click.echo(f"mailstead: {message}", err=True)
    sys.exit(code)


def data_option(func: Callable[P, T]) -> Callable[P, T]:
    """Adds --data DIR (default $MAILSTEAD_DATA, else ./var) to a command."""
    return click.option(
        "--data",
        "data",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="data directory (default: $MAILSTEAD_DATA or ./var)",
    )(func)


def json_option(func: Callable[P, T]) -> Callable[P, T]:
    return click.option("--json", "as_json", is_flag=True, help="print JSON")(func)


def run_async(func: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """Runs an async command body; turns mailstead errors into one line and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return asyncio.run(func(*args, **kwargs))
        except ConfigError as exc:
            fail(str(exc), EXIT_CONFIG)
        except MailsteadError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        raise AssertionError("unreachable")

    return wrapper


def config_for(data: Path | None) -> Config:
    return load_config(resolve_data_dir(data))


@asynccontextmanager
async def open_store(data: Path | None) -> AsyncIterator[tuple[Config, MetadataStore, BlobStore]]:
    cfg = config_for(data)
    bus = ChangeBus()
    store = make_metadata_store(cfg, bus)
    if cfg.sqlite_path is not None:
        # A running server of this data hears our commits at once (store/announce.py).
        bus.forward = lambda ids: announce(cfg.data_dir, ids)
    try:
        await store.open()
    except MailsteadError:
        raise
    except Exception as exc:  # a driver error: say which store could not be opened
        raise ConfigError(f"store.url: cannot open {cfg.store.url}: {exc}") from None
    try:
        yield cfg, store, make_blob_store(cfg)
        # What the command changed counts at once in the running servers, not when their
        # caches expire (sieve activate, list and account edits).
        tell = getattr(store, "announce_settings_changed", None)
        if tell is not None:
            with contextlib.suppress(Exception):
                await tell()
    finally:
        await store.close()


def print_rows(rows: list[dict[str, Any]], as_json: bool, columns: list[str]) -> None:
    """A table for people, or JSON for scripts."""
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        click.echo("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns).rstrip())


def read_password(password_stdin: bool, prompt: str = "Password") -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    value: str = click.prompt(prompt, hide_input=True, confirmation_prompt=True)
    return value
