"""Config loading: defaults, overrides, and one clear line (exit 2) for each kind of mistake."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from mailstead.config import Config, ConfigError, apply_listen_override, load_config, render_toml
from tests.conftest import mailstead_cmd


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "mailstead.toml").write_text(text)
    return tmp_path


def test_defaults_when_file_is_empty(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg.listeners["smtp"].port == 2525
    assert cfg.listeners["submissions"].tls == "implicit"
    assert cfg.store.url.startswith("sqlite:///")
    assert cfg.sqlite_path == tmp_path / "mailstead.db"
    assert cfg.limits.max_recipients == 100


def test_partial_listener_keeps_other_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[listeners.imap]\nprotocol = "imap"\nport = 1143\n'))
    assert cfg.listeners["imap"].port == 1143
    assert cfg.listeners["imap"].address == "127.0.0.1"
    assert cfg.listeners["pop3"].port == 2110


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[limits]\nmax_message_size = 'big'\n", "option limits.max_message_size"),
        ("[limits]\nmax_recipients = 0\n", "option limits.max_recipients"),
        ("[store]\nurl = 'mysql://x'\n", "option store.url"),
        ("[auth]\nnonsense = 1\n", "option auth.nonsense"),
        ("[listeners.imap]\nprotocol='imap'\nport=70000\n", "option listeners.imap.port"),
        ("hostname = \n", "not valid TOML"),
    ],
)
def test_errors_name_the_option(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mailstead init"):
        load_config(tmp_path)


def test_rendered_config_is_valid_commented_toml(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[limits]\nmax_recipients = 50\n"))
    text = render_toml(cfg)
    assert "# recipients per SMTP message (default: 100)" in text
    parsed = tomllib.loads(text)
    again = Config.model_validate(parsed)
    assert again.limits.max_recipients == 50
    assert again.listeners == cfg.listeners
    # Each listener's defaults are its own: smtp's TLS is starttls, so nothing is noted there;
    # a changed port names the listener's default port.
    moved = load_config(write(tmp_path, "[listeners.smtp]\nport = 25\n"))
    smtp = render_toml(moved).split("[listeners.smtp]")[1].split("\n[")[0]
    assert "(default: 2525)" in smtp and "(default: \"none\")" not in smtp


def test_listen_override(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    apply_listen_override(cfg, "dmtp=127.0.0.2:0")
    assert (cfg.listeners["dmtp"].address, cfg.listeners["dmtp"].port) == ("127.0.0.2", 0)
    assert cfg.listeners["dmtp"].enabled
    for bad in ("nosuch=127.0.0.1:1", "imap", "imap=127.0.0.1", "imap=:25"):
        with pytest.raises(ConfigError):
            apply_listen_override(cfg, bad)


def test_cli_reports_config_error_with_exit_2(tmp_path: Path) -> None:
    write(tmp_path, "[limits]\nmax_errors = -1\n")
    for args in (["config"], ["serve"], ["user", "list"]):
        proc = subprocess.run(
            mailstead_cmd(*args, "--data", str(tmp_path)), capture_output=True, text=True
        )
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "limits.max_errors" in lines[0], proc.stderr


def test_every_lazy_command_loads_under_its_own_name() -> None:
    """`mailstead NAME` imports NAME's module on demand: each name in the map must load the
    command of that name (a wrong entry would only show when a user types it)."""
    import click

    from mailstead.cli.main import COMMANDS, cli

    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name, name
