"""SIGKILL while clients are sending: every acknowledged message survives whole, and nothing is
left half-stored (a row pointing at a missing or damaged file, or one mailbox without the other).
"""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailstead import bootstrap
from mailstead.config import Config, deep_merge
from mailstead.store.factory import make_blob_store, make_metadata_store
from mailstead.store.interfaces import MessageMeta
from tests.conftest import (
    DOMAIN,
    PASSWORD,
    ServeProcess,
    run_outside_loop,
)
from tests.conftest import test_config_overrides as server_overrides
from tests.smtp.helpers import ALICE, BOB

CLIENTS = 8


def prepare(data_dir: Path, overrides: dict[str, Any], tls_files: tuple[Path, Path]) -> Config:
    # Only the SMTP listener runs: this test is about it alone.
    only_smtp = {"listeners": {name: {"enabled": name == "smtp"} for name in Config().listeners}}
    cfg = bootstrap.build_config(
        data_dir, deep_merge(deep_merge(server_overrides(), only_smtp), overrides))

    async def setup() -> None:
        await bootstrap.initialise(cfg, demo_domain=None, cert_from=tls_files)
        store = make_metadata_store(cfg)
        await store.open()
        try:
            await bootstrap.add_domain(store, DOMAIN)
            await bootstrap.add_user(store, ALICE, PASSWORD)
            await bootstrap.add_user(store, BOB, PASSWORD)
        finally:
            await store.close()

    run_outside_loop(setup())
    return cfg


def raw_message(client: int, number: int) -> bytes:
    # Sizes vary up to ~300 KB so the kill often lands while a message is on the wire.
    filler = f"line of filler text for the crash test {number:06d}\r\n" * (number % 7 * 1000)
    return (f"From: sender{client}@remote.test\r\nSubject: c{client}-m{number}\r\n"
            f"Message-ID: <c{client}.m{number}@remote.test>\r\n\r\n{filler}end\r\n").encode()


def sender(port: int, client: int, acked: dict[str, bytes], stop: threading.Event) -> None:
    """Sends until the server dies; records each message the server said 250 to."""
    number = 0
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.ehlo("client.test")
            while not stop.is_set():
                raw = raw_message(client, number)
                assert smtp.mail("carol@remote.test")[0] == 250
                assert smtp.rcpt(ALICE)[0] == 250
                assert smtp.rcpt(BOB)[0] == 250
                code, _ = smtp.data(raw)
                if code == 250:
                    acked[f"c{client}-m{number}"] = raw
                number += 1
    except (smtplib.SMTPException, OSError):
        pass  # the server was killed


def stored_messages(cfg: Config) -> dict[str, list[tuple[MessageMeta, bytes | str]]]:
    """Per mailbox owner: each row with its blob (bytes, hash checked) or why it is bad."""

    async def read() -> dict[str, list[tuple[MessageMeta, bytes | str]]]:
        store = make_metadata_store(cfg)
        blobs = make_blob_store(cfg)
        await store.open()
        try:
            found: dict[str, list[tuple[MessageMeta, bytes | str]]] = {}
            for user in (ALICE, BOB):
                account = await store.get_account(user)
                assert account is not None
                box = await store.get_mailbox(account.id, "INBOX")
                assert box is not None
                rows = await store.get_messages(box.id)
                found[user] = [(m, blobs.verify(m.blob_id) or blobs.get(m.blob_id))
                               for m in rows]
            return found
        finally:
            await store.close()

    return run_outside_loop(read())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_sigkill_loses_no_acknowledged_message(
    tmp_path: Path,
    store_overrides: dict[str, Any],
    tls_files: tuple[Path, Path],
    serve_process: Callable[..., ServeProcess],
) -> None:
    cfg = prepare(tmp_path / "data", store_overrides, tls_files)
    server = serve_process(cfg.data_dir, "smtp=127.0.0.1:0")
    acked: dict[str, bytes] = {}
    stop = threading.Event()
    threads = [
        threading.Thread(target=sender, args=(server.ports["smtp"], i, acked, stop), daemon=True)
        for i in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(acked) < 60 and time.monotonic() < deadline:
        time.sleep(0.02)
    server.kill()  # SIGKILL, mid-flight
    stop.set()
    for thread in threads:
        thread.join(30)
    assert len(acked) >= 60, "the server acknowledged too few messages to test anything"

    # The restarted server works, and sees everything that was acknowledged.
    restarted = serve_process(cfg.data_dir, "smtp=127.0.0.1:0")
    with smtplib.SMTP("127.0.0.1", restarted.ports["smtp"], timeout=30) as smtp:
        assert smtp.sendmail("carol@remote.test", [ALICE, BOB], raw_message(99, 0)) == {}
    acked["c99-m0"] = raw_message(99, 0)
    restarted.terminate()

    stored = stored_messages(cfg)
    by_subject: dict[str, dict[str, bytes]] = {ALICE: {}, BOB: {}}
    for user, rows in stored.items():
        for meta, blob in rows:
            # No half-stored message: every row's file is there and matches its hash ...
            assert isinstance(blob, bytes), f"{user} uid {meta.uid}: blob {blob}"
            assert meta.size == len(blob)
            subject = meta.envelope.subject
            # ... and holds one whole message as a client sent it.
            client, number = (int(x) for x in subject[1:].split("-m"))
            assert blob.endswith(raw_message(client, number))
            by_subject[user][subject] = blob
    # Both recipients or neither: one transaction stores the message for both mailboxes.
    assert by_subject[ALICE].keys() == by_subject[BOB].keys()
    for subject, raw in acked.items():
        assert subject in by_subject[ALICE], f"acknowledged {subject} was lost"
        assert by_subject[ALICE][subject].endswith(raw)
