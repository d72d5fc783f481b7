"""Helpers for the IMAP tests: connecting real clients and putting mail in place."""

from __future__ import annotations

import imaplib
from datetime import UTC, datetime

from mailstead.store.interfaces import Delivery, NewMessage
from tests.conftest import DOMAIN, PASSWORD, RunningServer

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"


def message(subject: str, body: str = "Hello.\r\n", sender: str = "carol@example.org",
            to: str = ALICE, extra: str = "") -> bytes:
    return (
        f"From: Carol <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@example.org>\r\n{extra}\r\n{body}"
    ).encode()


def connect(server: RunningServer, user: str = ALICE, password: str = PASSWORD,
            login: bool = True) -> imaplib.IMAP4_SSL:
    """An imaplib client over implicit TLS, logged in unless told otherwise."""
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", server.ports["imaps"], ssl_context=server.ssl_context(), timeout=30
    )
    if login:
        client.login(user, password)
    return client


def deliver(server: RunningServer, raw: bytes, address: str = ALICE,
            mailbox: str = "INBOX", flags: int = 0) -> int:
    """Stores a message the way SMTP delivery does (store API); returns its UID."""

    async def go() -> int:
        store = server.services.store
        account = await store.get_account(address)
        assert account is not None
        box = await store.get_mailbox(account.id, mailbox)
        assert box is not None
        blob_id = server.services.blobs.put(raw)
        new = NewMessage(blob_id=blob_id, size=len(raw), internal_date=datetime.now(UTC),
                         flags=flags)
        [meta] = await store.store_message([Delivery(box.id, new)])
        return meta.uid

    return server.run(go())


def ok(response: tuple[str, list[object]]) -> list[object]:
    typ, data = response
    assert typ == "OK", (typ, data)
    return data
