"""``mailstead client`` (the terminal mail client) and ``mailstead mail list|read|send`` (the same
connection, for scripts), as a mail user of any IMAP/SMTP server.

Where to connect: ``--host`` and the ports, or, without ``--host``, the local mailstead of
``--data`` (its imaps and submissions listeners, trusting its certificate), so on the server's
own machine ``mailstead client --user alice@example.org`` is enough. The password comes from
``$MAILSTEAD_PASSWORD``, ``--password-stdin`` or a prompt, never from the command line (other
users could read it in the process list).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

import click

from mailstead.cli.common import data_option, fail
from mailstead.client.connection import ClientError, MailClient, Settings, TlsMode
from mailstead.client.marks import INTEGRITY_WORDS, integrity_mark
from mailstead.config import Config, load_config, resolve_data_dir
from mailstead.core.errors import ConfigError

P = ParamSpec("P")
T = TypeVar("T")
PASSWORD_ENV = "MAILSTEAD_PASSWORD"


def connection_options(func: Callable[P, T]) -> Callable[P, T]:
    options: list[Callable[[Any], Any]] = [
        click.option("--user", required=True, help="your address (the IMAP/SMTP login)"),
        click.option("--host", default=None,
                     help="the mail server (default: the local mailstead of --data)"),
        click.option("--imap-port", type=int, default=None, help="IMAP over TLS (993)"),
        click.option("--smtp-port", type=int, default=None,
                     help="submission over implicit TLS (465)"),
        click.option("--starttls", is_flag=True,
                     help="the ports speak plain text first and STARTTLS (143 / 587)"),
        click.option("--cafile", type=click.Path(dir_okay=False, exists=True), default=None,
                     help="trust this certificate (e.g. a self-signed one)"),
        click.option("--insecure", is_flag=True,
                     help="accept any certificate (only for a server you own)"),
        click.option("--password-stdin", is_flag=True, help="read the password from stdin"),
        click.option("--web-url", default=None, metavar="URL",
                     help="mailstead's web address, for recall (default: the local "
                     "server's http listener; none with --host)"),
        data_option,
    ]
    decorated: Any = func
    for option in reversed(options):
        decorated = option(decorated)
    return cast(Callable[P, T], decorated)


def _settings(user: str, host: str | None, imap_port: int | None, smtp_port: int | None,
              starttls: bool, cafile: str | None, insecure: bool, password_stdin: bool,
              web_url: str | None, data: Path | None) -> Settings:
    password = os.environ.get(PASSWORD_ENV, "")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif not password:
        password = click.prompt(f"password for {user}", hide_input=True, err=True)
    tls: TlsMode = "starttls" if starttls else "implicit"
    if host is not None:
        return Settings(user, password, host, imap_port or (143 if starttls else 993), tls,
                        smtp_port or (587 if starttls else 465), tls, cafile, not insecure,
                        web_url=web_url)
    try:  # the local server: its own listeners and certificate
        cfg = load_config(resolve_data_dir(data))
    except ConfigError as exc:
        fail(f"{exc} (or name a server with --host)")
    imap_name, smtp_name = ("imap", "submission") if starttls else ("imaps", "submissions")
    imap, smtp = cfg.listeners.get(imap_name), cfg.listeners.get(smtp_name)
    if imap is None or smtp is None or not (imap.enabled and smtp.enabled):
        fail(f"the local server has no enabled {imap_name} and {smtp_name} listeners")
    address = "127.0.0.1" if imap.address in ("0.0.0.0", "::", "") else imap.address
    return Settings(user, password, address, imap_port or imap.port, tls,
                    smtp_port or smtp.port, tls, cafile or str(cfg.path(cfg.tls.cert)),
                    not insecure, web_url=web_url or _local_web_url(cfg))


def _local_web_url(cfg: Config) -> str | None:
    """The local server's first enabled http listener, as a URL (None without one)."""
    for listener in cfg.listeners.values():
        if listener.protocol == "http" and listener.enabled:
            host = "127.0.0.1" if listener.address in ("0.0.0.0", "::", "") \
                else listener.address
            host = f"[{host}]" if ":" in host else host
            scheme = "https" if listener.tls == "implicit" else "http"
            return f"{scheme}://{host}:{listener.port}"
    return None


def with_client(func: Callable[..., None]) -> Callable[..., None]:
    """Opens the connection from the options, hands it to ``func``, reports ClientError as
    one line and exit code 1."""

    @functools.wraps(func)
    def wrapper(user: str, host: str | None, imap_port: int | None, smtp_port: int | None,
                starttls: bool, cafile: str | None, insecure: bool, password_stdin: bool,
                web_url: str | None, data: Path | None, **kwargs: Any) -> None:
        client = MailClient(_settings(user, host, imap_port, smtp_port, starttls, cafile,
                                      insecure, password_stdin, web_url, data))
        try:
            client.connect()
            func(client, **kwargs)
        except ClientError as exc:
            fail(str(exc))
        finally:
            client.close()

    return wrapper


@click.command()
@connection_options
@with_client
def client(client: MailClient) -> None:
    """The terminal mail client: read, reply, compose, flag, delete, mark spam, move, search,
    save a message or an attachment."""
    from mailstead.client.tui import MailApp

    MailApp(client).run()


@click.group()
def mail() -> None:
    """Your mail, from scripts: list, read, send."""


@mail.command("list")
@click.option("--folder", default="INBOX", show_default=True)
@click.option("--limit", type=int, default=50, show_default=True)
@connection_options
@with_client
def list_mail(client: MailClient, folder: str, limit: int) -> None:
    """The newest messages of a folder: UID, marks (N new, * flagged, then integrity: V
    verified, - unsigned, ! failed), date, sender, subject."""
    for s in client.summaries(folder, limit):
        when = s.date.strftime("%Y-%m-%d %H:%M") if s.date else "-"
        mark = ("N" if not s.seen else " ") + ("*" if s.flagged else " ") + integrity_mark(s)
        click.echo(f"{s.uid:>6} {mark} {when:16} {s.sender[:28]:28} {s.subject}")


@mail.command("read")
@click.argument("uid", type=int)
@click.option("--folder", default="INBOX", show_default=True)
@connection_options
@with_client
def read_mail(client: MailClient, uid: int, folder: str) -> None:
    """One message: its main header fields and its text."""
    letter = client.read(folder, uid)
    for name in ("From", "To", "Cc", "Date", "Subject", "X-Spam-Status"):
        if letter.header(name):
            click.echo(f"{name}: {letter.header(name)}")
    if letter.integrity is not None:
        click.echo(f"Integrity: {INTEGRITY_WORDS[letter.integrity]}")
    if letter.attachments:
        click.echo("Attached: " + ", ".join(letter.attachments))
    click.echo("")
    click.echo(letter.text, nl=False)


@mail.command("send")
@click.option("--to", "to", required=True, help="recipients, comma-separated")
@click.option("--cc", default="")
@click.option("--subject", default="")
@click.option("--attach", "attach", multiple=True,
              type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--body-file", type=click.File("r"), default="-",
              help="the text (default: standard input)")
@connection_options
@with_client
def send_mail(client: MailClient, to: str, cc: str, subject: str, attach: tuple[Path, ...],
              body_file: Any) -> None:
    """Send a message (its text from standard input) and keep a copy in Sent."""
    message = client.compose(to, subject, body_file.read(), cc=cc, attachments=attach)
    sent_to = client.send(message)
    click.echo(f"sent to {', '.join(sent_to)}")
