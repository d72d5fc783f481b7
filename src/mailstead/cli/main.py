"""The ``mailstead`` command. Each command's module is imported only when that command runs (or
when help lists them all), so ``mailstead user add`` does not load the server, the web app and
every protocol first: a CLI call starts in about half the time."""

from __future__ import annotations

import importlib

import click

from mailstead import __version__

# command name -> "module:attribute" under mailstead.cli
COMMANDS: dict[str, str] = {
    "init": "server_cmd:init",
    "serve": "server_cmd:serve",
    "config": "server_cmd:show_config",
    "check": "server_cmd:check",
    "domain": "admin:domain",
    "user": "admin:user",
    "alias": "admin:alias",
    "lists": "lists:lists",
    "queue": "queue:queue",
    "dkim": "dkim:dkim",
    "dns": "dns_cmd:dns",
    "client": "mail_cmd:client",
    "mail": "mail_cmd:mail",
    "monitor": "monitor_cmd:monitor",
    "import": "mailmove_cmd:import_cmd",
    "export": "mailmove_cmd:export_cmd",
    "backup": "upkeep_cmd:backup",
    "restore": "upkeep_cmd:restore",
    "migrate": "upkeep_cmd:migrate",
    "sieve": "sieve_cmd:sieve",
}


class LazyGroup(click.Group):
    """A group whose commands are named in COMMANDS and imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        module = importlib.import_module(f"mailstead.cli.{module_name}")
        command = getattr(module, attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="mailstead")
def cli() -> None:
    """mailstead: a complete, self-hostable mail server."""


def main() -> None:
    cli(prog_name="mailstead")
