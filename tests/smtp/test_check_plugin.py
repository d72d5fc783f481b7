"""A check plug-in shipped as its own package (tests/plugins/example_check: a pyproject.toml
with a ``mailstead.checks`` entry point), installed with pip as a user would install it, and
loaded by a running ``mailstead serve`` that was told nothing but its options: the plug-in
refuses a message with its own code, and the server goes on serving the next client."""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ServeProcess
from tests.smtp.helpers import ALICE, stored_messages
from tests.smtp.helpers import header_field as field
from tests.smtp.test_crash import prepare

PLUGIN = Path(__file__).parent.parent / "plugins" / "example_check"


def install_plugin(target: Path) -> None:
    """``pip install --target``: the package, its metadata and entry point, in a directory put
    on the server's PYTHONPATH (the test venv itself stays as it is)."""
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index",
                    "--disable-pip-version-check", "--target", str(target), str(PLUGIN)],
                   check=True, timeout=300, env={**os.environ, "PIP_NO_CACHE_DIR": "1"})
    assert (target / "mailstead_example_check" / "__init__.py").exists()


def letter(subject: str) -> bytes:
    return (f"From: carol@remote.test\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@remote.test>\r\n\r\nHi.\r\n").encode()


def test_installed_plug_in_refuses_a_message(
        tmp_path: Path, tls_files: tuple[Path, Path],
        serve_process: Callable[..., ServeProcess]) -> None:
    site = tmp_path / "site"
    install_plugin(site)
    # Only its options are configured: it is found by its entry point.
    cfg = prepare(tmp_path / "data", {"server": {"workers": 1},
                                      "checks": {"no_lottery": {"word": "jackpot",
                                                                "code": 554}}}, tls_files)
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    server = serve_process(cfg.data_dir, "smtp=127.0.0.1:0", env={"PYTHONPATH": path})
    port = server.ports["smtp"]

    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.remote.test")
        smtp.mail("carol@remote.test")
        smtp.rcpt(ALICE)
        code, text = smtp.data(letter("You won the JACKPOT"))
    assert (code, text) == (554, b"5.7.0 no jackpot mail here (example plug-in)")

    # Another client, another message: served, and stamped by the plug-in.
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("other.remote.test")
        refused = smtp.sendmail("carol@remote.test", [ALICE], letter("Lunch on Friday"))
    assert refused == {}
    assert server.terminate() == 0

    [message] = stored_messages(cfg, ALICE)
    headers = message.split(b"\r\n\r\n", 1)[0].decode()
    assert field(headers, "Subject") == "Lunch on Friday"
    assert field(headers, "X-Example-Check") == "passed"


def test_a_named_plug_in_that_is_missing_stops_serve(
        tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    """Told to run a plug-in that is not installed, serve says which in one line and stops
    (rather than take mail unchecked)."""
    cfg = prepare(tmp_path / "data", {"server": {"workers": 1},
                                      "checks": {"enabled": ["no_lottery"]}}, tls_files)
    done = subprocess.run([sys.executable, "-m", "mailstead", "serve", "--data",
                           str(cfg.data_dir), "--listen", "smtp=127.0.0.1:0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "checks.enabled: no check named 'no_lottery' is installed" in done.stderr
