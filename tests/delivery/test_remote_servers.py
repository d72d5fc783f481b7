"""Delivery to servers that are not mailstead (aiosmtpd): fewer extensions, a smart host.

mx.plain.test (127.0.0.6) speaks ESMTP without PIPELINING, STARTTLS, SMTPUTF8, DSN or
REQUIRETLS; smart.test (127.0.0.8) is a relay demanding STARTTLS and AUTH.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from mailstead.services.delivery import new_queue_id
from mailstead.store.interfaces import QueueEntry, QueueRecipient
from tests.delivery.conftest import Node
from tests.delivery.helpers import (
    entry_done,
    fetch_inbox,
    inbox_with,
    make_message,
    queue_entry,
    report_parts,
    submit,
    wait_for,
)

ALICE = "alice@alpha.test"
BOB = "bob@beta.test"
XAVIER = "xavier@plain.test"


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    peer: Any
    tls: bool
    login: bytes | None


@dataclass
class Collector:
    """An aiosmtpd handler that keeps what it receives."""

    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) \
            else None
        with self.lock:
            self.messages.append(Received(
                envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
                session.peer, session.ssl is not None, login))
        return "250 OK accepted"


def _start(handler: Collector, address: str, port: int, **kwargs: Any) -> Controller:
    controller = Controller(handler, hostname=address, port=port, **kwargs)
    controller.start()
    return controller


@pytest.fixture
def plain(mx_port: int) -> Iterator[Collector]:
    handler = Collector()
    controller = _start(handler, "127.0.0.6", mx_port, server_hostname="mx.plain.test",
                        data_size_limit=20_000, enable_SMTPUTF8=False)
    yield handler
    controller.stop()


@pytest.fixture
def alpha(make_node: Callable[..., Node]) -> Node:
    return make_node("127.0.0.2", "mx.alpha.test", "alpha.test", users=("alice",))


@pytest.fixture
def beta(make_node: Callable[..., Node]) -> Node:
    return make_node("127.0.0.3", "mx.beta.test", "beta.test", users=("bob",))


def test_pipelining_not_needed_and_success_notice_when_dsn_cannot_pass(
    alpha: Node, plain: Collector
) -> None:
    queue_id = submit(alpha, ALICE, [XAVIER], make_message(ALICE, [XAVIER], "To plain"),
                      rcpt_options=["NOTIFY=SUCCESS,FAILURE"])
    wait_for(lambda: plain.messages, "the message at mx.plain.test")
    [got] = plain.messages
    assert (got.sender, got.recipients, got.tls) == (ALICE, [XAVIER], False)
    assert b"Subject: To plain" in got.data
    assert not got.data.startswith(b"Return-Path:")  # a relay does not send one (RFC 5321 4.4)
    assert got.data.startswith(b"Received: from client.test")
    [entry_recipient] = entry_done(alpha, queue_id).recipients
    assert entry_recipient.status == "delivered"
    assert entry_recipient.last_reply.endswith("(via mx.plain.test[127.0.0.6], no TLS)")

    # NOTIFY=SUCCESS could not be passed on (no DSN there): the sender hears "relayed".
    [notice] = inbox_with(alpha, ALICE)
    assert notice["Subject"] == "Relayed Mail (no delivery notice will follow)"
    _human, fields, returned_type = report_parts(notice)
    assert fields[1]["action"] == "relayed" and fields[1]["status"] == "2.0.0"
    assert returned_type == "message/rfc822"


def test_one_connection_carries_several_messages(
    make_node: Callable[..., Node], plain: Collector
) -> None:
    alpha = make_node("127.0.0.2", "mx.alpha.test", "alpha.test", users=("alice",),
                      delivery={"workers": 1, "connections_per_destination": 1})
    services = alpha.server.services
    due = datetime.now(UTC) + timedelta(seconds=1)

    async def enqueue(n: int) -> None:
        data = make_message(ALICE, [XAVIER], f"reuse {n}")
        blob_id = services.blobs.put(data)
        await services.store.enqueue(QueueEntry(
            id=new_queue_id(), sender=ALICE, recipients=[QueueRecipient(XAVIER)],
            blob_id=blob_id, size=len(data), created=datetime.now(UTC), next_attempt=due))

    for n in range(5):
        alpha.server.run(enqueue(n))
    wait_for(lambda: len(plain.messages) == 5, "five messages at mx.plain.test")
    assert len({m.peer for m in plain.messages}) == 1  # one TCP connection
    assert sorted(m.data.split(b"Subject: ")[1].split(b"\r\n")[0] for m in plain.messages) == [
        f"reuse {n}".encode() for n in range(5)]


def test_requiretls_goes_only_over_verified_tls(
    alpha: Node, beta: Node, plain: Collector
) -> None:
    message = make_message(ALICE, [BOB, XAVIER], "Secret", "For TLS eyes only.\r\n")
    queue_id = submit(alpha, ALICE, [BOB, XAVIER], message, mail_options=["REQUIRETLS"])

    [at_beta] = inbox_with(beta, BOB)  # verified certificate for mx.beta.test, REQUIRETLS
    assert "with ESMTPS" in at_beta["Received"]
    [bounce] = inbox_with(alpha, ALICE)
    human, fields, returned_type = report_parts(bounce)
    assert fields[1]["final-recipient"] == f"rfc822; {XAVIER}"
    assert fields[1]["status"] == "5.7.30"
    assert "REQUIRETLS" in human
    assert returned_type == "text/rfc822-headers"  # RFC 8689 5: headers only
    assert b"For TLS eyes only" not in bounce.as_bytes()
    assert plain.messages == []
    entry = entry_done(alpha, queue_id)
    assert {r.address: r.status for r in entry.recipients} == {BOB: "delivered",
                                                                XAVIER: "failed"}


def test_smtputf8_message_bounces_at_a_server_without_it(
    alpha: Node, beta: Node, plain: Collector
) -> None:
    message = make_message(ALICE, [BOB, XAVIER], "Grüße aus Alpha", "Schöne Grüße.\r\n")
    submit(alpha, ALICE, [BOB, XAVIER], message, mail_options=["SMTPUTF8", "BODY=8BITMIME"])

    [at_beta] = inbox_with(beta, BOB)
    assert at_beta["Subject"] == "Grüße aus Alpha"
    [bounce] = inbox_with(alpha, ALICE)
    human, fields, returned_type = report_parts(bounce)
    assert fields[1]["status"] == "5.6.7"
    assert "needs SMTPUTF8" in human and "mx.plain.test does not support it" in human
    assert returned_type == "message/global"  # RFC 6533 for a UTF-8 message
    assert plain.messages == []


def test_too_big_for_the_server_bounces_without_sending(
    alpha: Node, plain: Collector
) -> None:
    big = make_message(ALICE, [XAVIER], "Big", "x" * 70 + "\r\n" * 1 + ("y" * 76 + "\r\n") * 400)
    submit(alpha, ALICE, [XAVIER], big)
    [bounce] = inbox_with(alpha, ALICE)
    human, fields, _ = report_parts(bounce)
    assert fields[1]["status"] == "5.3.4"
    assert "larger than mx.plain.test accepts (20000 bytes)" in human
    assert plain.messages == []


@pytest.fixture
def smart_host(
    mx_port: int, world_ca: tuple[trustme.CA, Path]
) -> Iterator[Collector]:
    handler = Collector()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    world_ca[0].issue_cert("smart.test").configure_cert(server_ctx)

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == b"relay-pass"
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    controller = _start(handler, "127.0.0.8", mx_port + 1, server_hostname="smart.test",
                        tls_context=server_ctx, require_starttls=True,
                        authenticator=authenticate, auth_required=True)
    yield handler
    controller.stop()


@pytest.mark.parametrize("password", ["relay-pass", "wrong"])
def test_smart_host_with_starttls_and_auth(
    make_node: Callable[..., Node], smart_host: Collector, mx_port: int, password: str
) -> None:
    alpha = make_node("127.0.0.2", "mx.alpha.test", "alpha.test", users=("alice",),
                      delivery={"smart_host": {"host": "smart.test", "port": mx_port + 1,
                                               "username": "relay", "password": password}})
    far = "zoe@nowhere.invalid"  # the smart host routes it; we look nothing up
    queue_id = submit(alpha, ALICE, [far, BOB], make_message(ALICE, [far, BOB], "Via relay"))
    if password == "wrong":
        wait_for(lambda: queue_entry(alpha, queue_id).attempts >= 2, "two attempts")
        entry = queue_entry(alpha, queue_id)
        assert entry.state == "queued"  # a refused login is the admin's to fix: retried
        assert all("535" in r.last_reply for r in entry.recipients)
        assert smart_host.messages == [] and fetch_inbox(alpha, ALICE) == []
        return
    wait_for(lambda: smart_host.messages, "the message at the smart host")
    [got] = smart_host.messages
    assert got.tls and got.login == b"relay"
    assert sorted(got.recipients) == sorted([far, BOB])  # one transaction for both
    assert entry_done(alpha, queue_id).recipients[0].status == "delivered"


@dataclass
class SlowFirst(Collector):
    """Holds the first DATA until ``gate`` opens, then refuses it (451); takes the rest."""

    entered: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if not self.entered.is_set():
            self.entered.set()
            while not self.gate.is_set():
                await asyncio.sleep(0.02)
            return "451 4.3.0 too slow"
        return await super().handle_DATA(server, session, envelope)


def test_stopping_mid_delivery_gives_the_entry_back_at_once(
    make_node: Callable[..., Node], restart_node: Callable[[Node], Node], mx_port: int
) -> None:
    slow = SlowFirst()
    controller = _start(slow, "127.0.0.6", mx_port, server_hostname="mx.plain.test",
                        enable_SMTPUTF8=False)
    try:
        alpha = make_node("127.0.0.2", "mx.alpha.test", "alpha.test", users=("alice",))
        queue_id = submit(alpha, ALICE, [XAVIER], make_message(ALICE, [XAVIER], "Interrupted"))
        wait_for(slow.entered.is_set, "the first DATA to reach mx.plain.test")
        alpha.server.stop()  # the worker is waiting for the reply to the final dot
        slow.gate.set()

        # The entry is not left leased for lease_seconds (900): after a restart it goes at once.
        restart_node(alpha)
        wait_for(lambda: slow.messages, "the retried message")
        entry = entry_done(alpha, queue_id)
        assert entry.recipients[0].status == "delivered"
        assert [m.data.count(b"Subject: Interrupted") for m in slow.messages] == [1]
    finally:
        controller.stop()
