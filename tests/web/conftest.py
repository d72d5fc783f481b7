"""Fixtures for the web tests: a running server with its http listener, clients, a browser."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mailstead import bootstrap
from mailstead.config import deep_merge
from tests.conftest import (
    DOMAIN,
    PASSWORD,
    RunningServer,
    run_outside_loop,
    test_config_overrides,
)
from tests.web.helpers import WebClient

ADMIN = f"admin@{DOMAIN}"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def web_overrides(**web: Any) -> dict[str, Any]:
    settings = {"signup": "open", "users_manage_aliases": True, "page_size": 5, **web}
    return {"web": settings, "auth": {"failure_delay": 0.01}}


@pytest.fixture
def web_server(make_server: Callable[..., RunningServer]) -> RunningServer:
    """A server with sign-up open, users managing their aliases, and an admin account."""
    server = make_server(**web_overrides())
    server.add_user(ADMIN, is_admin=True)
    return server


@pytest.fixture(scope="module")
def shared_server(
    tmp_path_factory: pytest.TempPathFactory, tls_files: tuple[Any, Any]
) -> Iterator[RunningServer]:
    """One server for a whole test module (SQLite): tests make their own users with
    ``new_user`` so they do not see each other's mail."""
    directory = tmp_path_factory.mktemp("web")
    cfg = bootstrap.build_config(directory, deep_merge(test_config_overrides(), web_overrides()))
    run_outside_loop(bootstrap.initialise(cfg, demo_domain=None, cert_from=tls_files))
    server = RunningServer(cfg).start()
    try:
        server.add_domain(DOMAIN)
        for user in (ALICE, BOB):
            server.add_user(user)
        server.add_user(ADMIN, is_admin=True)
        yield server
    finally:
        server.stop()


_counter = iter(range(1, 1_000_000))


def new_user(server: RunningServer, prefix: str = "user", **kwargs: Any) -> str:
    address = f"{prefix}{next(_counter)}@{DOMAIN}"
    server.add_user(address, **kwargs)
    return address


def base_url(server: RunningServer) -> str:
    return f"http://127.0.0.1:{server.ports['http']}"


@pytest.fixture
def client_for(web_server: RunningServer) -> Iterator[Callable[..., WebClient]]:
    made: list[WebClient] = []

    def make(user: str | None = None, password: str = PASSWORD) -> WebClient:
        client = WebClient(base_url(web_server))
        made.append(client)
        if user is not None:
            response = client.login(user, password)
            assert response.status_code == 200, response.text[:500]
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's chromium driven by Playwright (no browser download: executable_path)."""
    if not os.path.exists(CHROMIUM):
        message = "chromium is not installed (apt-get install chromium; .ci/run does)"
        if os.environ.get("MAILSTEAD_REQUIRE_CLIENTS"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
