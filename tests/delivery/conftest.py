"""Fixtures for outbound delivery: the DNS world and mailstead nodes on 127.0.0.x.

- ``dns_world``: tests/dnsworld.py (root and child zones on loopback, unbound recursing).
- ``world_ca``: a test CA; each node gets a certificate for its host name from it, and the
  nodes trust it (``delivery.tls_ca_file``), so REQUIRETLS can verify certificates.
- ``mx_port``: one TCP port free on every 127.0.0.x address used; every node's SMTP listener
  uses it and every node delivers to it (``delivery.mx_port``), like port 25 in real life.
- ``make_node(ip, hostname, domain, ...)``: a mailstead instance via ``make_server`` whose
  listeners are on ``ip``, using the DNS world's resolver, with short retry times.
- ``pg_schema()``: a fresh PostgreSQL schema (dropped at the end) for a node's own store.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trustme

from mailstead.config import deep_merge
from tests import dnsworld
from tests.conftest import PASSWORD, PG_DSN, RunningServer, pg_available

NODE_LISTENERS = ("smtp", "submission", "imap")
ALL_LISTENERS = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s",
                 "dmtp", "dmap", "http", "managesieve")


@pytest.fixture(scope="session")
def dns_world() -> Iterator[dnsworld.DnsWorld]:
    import os

    reason = dnsworld.can_run()
    if reason is not None:
        if os.environ.get("MAILSTEAD_REQUIRE_CLIENTS"):
            pytest.fail(reason)
        pytest.skip(reason)
    unbound = dnsworld.find_unbound()
    assert unbound is not None
    world = dnsworld.DnsWorld().start(unbound)
    yield world
    world.stop()


@pytest.fixture(scope="session")
def world_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, path


def _free_everywhere(port: int, addresses: list[str]) -> bool:
    for address in addresses:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((address, port))
            except OSError:
                return False
    return True


def port_free_on_all_nodes() -> int:
    """A TCP port free on every node address 127.0.0.2-9, so all nodes can use the same."""
    addresses = [f"127.0.0.{n}" for n in range(2, 10)]
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
            port = int(s.getsockname()[1])
        if _free_everywhere(port, addresses):
            return port
    raise RuntimeError("no TCP port free on 127.0.0.2-9")


@pytest.fixture(scope="session")
def mx_port() -> int:
    return port_free_on_all_nodes()


@pytest.fixture
def pg_schema(make_server: Callable[..., RunningServer]) -> Iterator[Callable[[], str]]:
    """Depends on make_server so the servers stop before their schemas are dropped."""
    made: list[str] = []

    def make() -> str:
        if not pg_available():
            pytest.fail(f"PostgreSQL does not answer at {PG_DSN}")
        name = f"d_{secrets.token_hex(6)}"
        made.append(name)
        return name

    yield make
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        for name in made:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@dataclass
class Node:
    server: RunningServer
    ip: str
    hostname: str
    domain: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    def port(self, listener: str) -> int:
        return self.server.ports[listener]


def node_overrides(
    *,
    ip: str,
    hostname: str,
    world: dnsworld.DnsWorld,
    ca: tuple[trustme.CA, Path],
    port: int,
    cert_dir: Path,
    cert_names: tuple[str, ...] = (),
) -> dict[str, Any]:
    cert = ca[0].issue_cert(hostname, *cert_names)
    cert_file, key_file = cert_dir / f"{hostname}.pem", cert_dir / f"{hostname}.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    listeners: dict[str, Any] = {
        name: {"address": ip, "port": 0, "enabled": name in NODE_LISTENERS}
        for name in ALL_LISTENERS
    }
    listeners["smtp"]["port"] = port
    return {
        "hostname": hostname,
        "listeners": listeners,
        "tls": {"cert": str(cert_file), "key": str(key_file)},
        "auth": {"allow_plaintext_on_loopback": True},
        "delivery": {
            "workers": 2,
            "poll_interval": 0.1,
            "retry_initial": 0.5,
            "retry_factor": 1.0,
            "retry_max": 1.0,
            "resolvers": [world.resolver],
            "mx_port": port,
            "bind_address": ip,
            "connect_timeout": 5.0,
            "tls_ca_file": str(ca[1]),
        },
    }


@pytest.fixture
def make_node(
    make_server: Callable[..., RunningServer],
    dns_world: dnsworld.DnsWorld,
    world_ca: tuple[trustme.CA, Path],
    mx_port: int,
    tmp_path: Path,
) -> Callable[..., Node]:
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir(exist_ok=True)

    def make(
        ip: str,
        hostname: str,
        domain: str,
        *,
        users: tuple[str, ...] = (),
        store: dict[str, Any] | None = None,
        join: bool = False,
        cert_names: tuple[str, ...] = (),
        **extra: Any,
    ) -> Node:
        """``join``: another node on a store that already holds the domain and users (no
        set-up, a new data directory). ``cert_names``: more names its certificate is for."""
        overrides = node_overrides(ip=ip, hostname=hostname, world=dns_world, ca=world_ca,
                                   port=mx_port, cert_dir=cert_dir, cert_names=cert_names)
        if store is not None:
            overrides["store"] = store
        overrides = deep_merge(overrides, extra)
        if join:
            server = make_server(data_dir=tmp_path / f"join-{hostname}", **overrides)
            return Node(server, ip, hostname, domain, overrides)
        server = make_server(**overrides)
        server.add_domain(domain)
        for user in users:
            server.add_user(f"{user}@{domain}", PASSWORD)
        return Node(server, ip, hostname, domain, overrides)

    return make


@pytest.fixture
def restart_node(make_server: Callable[..., RunningServer]) -> Callable[[Node], Node]:
    """Starts a stopped node again on the same data (and the same config)."""

    def restart(node: Node) -> Node:
        node.server = make_server(data_dir=node.data_dir, **node.overrides)
        return node

    return restart
