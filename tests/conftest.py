"""Shared fixtures: real mailstead servers on 127.0.0.1 with free ports, on SQLite or PostgreSQL.

- ``mail_server``: a running App (its own event loop in a background thread) with domain
  example.test and users alice@ and bob@ (password ``PASSWORD``). All listeners on port 0.
- ``make_server(**overrides)``: the same with config overrides merged in, e.g.
  ``make_server(auth={"allow_plaintext_on_loopback": True})``; call it again with
  ``data_dir=server.data_dir`` to restart on the same data.
- ``backend``: "sqlite" (default) or "postgresql" (parametrize indirectly to run on both).
- ``serve_process``: the real CLI ``mailstead serve`` as a subprocess (for SIGKILL tests).
- ``require_binary(name)``: a real Debian client's path; skip locally, fail in CI if missing.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from mailstead import bootstrap
from mailstead import loop as event_loop
from mailstead.app import App, Services
from mailstead.auth.passwords import hash_password
from mailstead.config import Config, deep_merge
from mailstead.net.tls import make_self_signed

T = TypeVar("T")

PASSWORD = "s3cret-Passw0rd!"
DOMAIN = "example.test"
PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
LISTEN_NAMES = (
    "smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "dmtp", "dmap", "http",
    "managesieve",
)


@functools.cache
def password_hash() -> str:
    return hash_password(PASSWORD)


def require_binary(name: str) -> str:
    """Path of a real client (swaks, mutt, mbsync...). Skips loudly when it is missing on a
    developer's machine; fails in CI (MAILSTEAD_REQUIRE_CLIENTS=1), where .ci/run installs it."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install it; .ci/run does)"
        if os.environ.get("MAILSTEAD_REQUIRE_CLIENTS"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def pg_available() -> bool:
    try:
        with psycopg.connect(PG_DSN, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One self-signed certificate for the whole run (RSA key generation is slow)."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    make_self_signed("mail.example.test", cert, key)
    return cert, key


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "sqlite")


@pytest.fixture
def store_overrides(backend: str) -> Iterator[dict[str, Any]]:
    """Config overrides selecting the backend; PostgreSQL gets a fresh schema per test."""
    if backend == "sqlite":
        yield {}
        return
    if not pg_available():
        pytest.fail(f"PostgreSQL does not answer at {PG_DSN} (start it; tests need it)")
    schema = f"t_{secrets.token_hex(6)}"
    yield {"store": {"url": PG_DSN, "pg_schema": schema}}
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_config_overrides() -> dict[str, Any]:
    """Every listener on 127.0.0.1:0; DMTP/DMAP stay off unless a test enables them."""
    return {
        "hostname": "mail.example.test",
        "listeners": {name: {"address": "127.0.0.1", "port": 0} for name in LISTEN_NAMES},
        "auth": {"failure_delay": 0.01},
        "dmtp": {"hmac_secret": "test-secret"},
        # Inbound checks look nothing up unless a test gives them resolvers (its DNS world):
        # the system's resolvers are never asked.
        "trust": {"dns": "off"},
        # No outbound queue workers: mail for remote domains stays queued where tests look at
        # it, and no lookup ever reaches the system's resolver (tests/delivery turns them on).
        "delivery": {"workers": 0},
    }


def run_outside_loop(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run in a fresh thread, so it also works from inside an async test."""
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


class RunningServer:
    """An App on its own loop in a daemon thread, so sync clients can talk to it."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.data_dir = cfg.data_dir
        self.loop = event_loop.new_event_loop()  # the loop `mailstead serve` runs on
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.app = App(cfg)
        self.ports: dict[str, int] = {}

    @property
    def services(self) -> Services:
        return self.app.services

    def start(self) -> RunningServer:
        self.thread.start()
        listeners = self.run(self.app.start())
        self.ports = {listener.name: listener.bound_port for listener in listeners}
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Runs a coroutine on the server's loop (store calls, checks) and returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        try:
            self.run(self.app.stop(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's self-signed certificate."""
        ctx = ssl.create_default_context(cafile=str(self.cfg.path(self.cfg.tls.cert)))
        ctx.check_hostname = False
        return ctx

    @property
    def cert_file(self) -> Path:
        return self.cfg.path(self.cfg.tls.cert)

    def add_domain(self, name: str) -> str:
        return self.run(bootstrap.add_domain(self.services.store, name))

    def add_user(self, address: str, password: str = PASSWORD, **kwargs: Any) -> Any:
        if password == PASSWORD and not kwargs:
            # argon2 is slow on purpose; the shared test password is hashed once per run.
            return self.run(self.services.store.add_account(address, password_hash()))
        return self.run(bootstrap.add_user(self.services.store, address, password, **kwargs))

    def add_alias(self, source: str, destination: str) -> Any:
        return self.run(self.services.store.add_alias(source, destination))


@pytest.fixture
def make_server(
    tmp_path: Path, store_overrides: dict[str, Any], tls_files: tuple[Path, Path]
) -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def factory(data_dir: Path | None = None, **overrides: Any) -> RunningServer:
        fresh = data_dir is None
        directory = data_dir or tmp_path / f"data{len(started)}"
        merged = deep_merge(test_config_overrides(), store_overrides)
        cfg = bootstrap.build_config(directory, deep_merge(merged, overrides))
        if fresh:
            run_outside_loop(bootstrap.initialise(cfg, demo_domain=None, cert_from=tls_files))
        else:
            bootstrap.write_config(cfg)
        server = RunningServer(cfg).start()
        started.append(server)
        if fresh:
            server.add_domain(DOMAIN)
            server.add_user(f"alice@{DOMAIN}")
            server.add_user(f"bob@{DOMAIN}")
        return server

    yield factory
    for server in reversed(started):
        server.stop()


@pytest.fixture
def mail_server(make_server: Callable[..., RunningServer]) -> RunningServer:
    return make_server()


# -- the real CLI as a subprocess ----------------------------------------------------------

_LISTEN_RE = re.compile(r"^listening (\S+) (\S+):(\d+) (\S+)$")


@dataclass
class ServeProcess:
    proc: subprocess.Popen[str]
    ports: dict[str, int] = field(default_factory=dict)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        self.proc.terminate()
        return self.proc.wait(20)


def mailstead_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mailstead", *args]


def start_serve_process(data_dir: Path, *listen: str, timeout: float = 30,
                        env: dict[str, str] | None = None) -> ServeProcess:
    """Runs ``mailstead serve --data DIR --listen ...`` and waits for its 'ready' line.
    ``env``: variables set for it on top of this process's (PYTHONPATH for a plug-in)."""
    cmd = mailstead_cmd("serve", "--data", str(data_dir))
    for spec in listen:
        cmd += ["--listen", spec]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    sp = ServeProcess(proc)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = _LISTEN_RE.match(line.strip())
            if m:
                sp.ports[m.group(1)] = int(m.group(3))
            if line.startswith("mailstead ") and "ready" in line:
                break
        else:
            raise RuntimeError(f"mailstead serve exited with {proc.wait()} before it was ready")
    finally:
        timer.cancel()
    return sp


@pytest.fixture
def serve_process() -> Iterator[Callable[..., ServeProcess]]:
    running: list[ServeProcess] = []

    def start(data_dir: Path, *listen: str, env: dict[str, str] | None = None) -> ServeProcess:
        sp = start_serve_process(data_dir, *listen, env=env)
        running.append(sp)
        return sp

    yield start
    for sp in running:
        if sp.proc.poll() is None:
            sp.proc.kill()
            sp.proc.wait(10)
