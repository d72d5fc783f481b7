"""CLI writes while the server runs (store/announce.py): a real `mailstead import` subprocess
against a running server's data dir reaches an IMAP client in IDLE at once (EXISTS), and a
`mailstead sieve put --activate` counts for the very next message over SMTP, though the server
had just cached that the user has no script. On SQLite the CLI announces its commits over the
servers' datagram sockets; on PostgreSQL LISTEN/NOTIFY carries them."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

import pytest

from tests.conftest import DOMAIN, RunningServer
from tests.mailmove.helpers import imap, ok
from tests.smtp.helpers import inbox

ALICE = f"alice@{DOMAIN}"
BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
MBOX = (b"From someone@example.org Sat Dec  5 10:00:00 2026\n"
        b"Message-ID: <announced@example.org>\nSubject: imported\n\nhello\n")


def _send(server: RunningServer, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as smtp:
        smtp.sendmail("carol@remote.test", [ALICE],
                      f"From: carol@remote.test\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
                      f"Message-ID: <{subject}@remote.test>\r\n\r\nHi.\r\n".encode())


@BOTH
def test_import_wakes_imap_idle(mail_server: RunningServer, tmp_path: Path) -> None:
    mbox = tmp_path / "old.mbox"
    mbox.write_bytes(MBOX)
    client = imap(mail_server, ALICE)
    try:
        client.select_folder("INBOX")
        client.idle()
        assert client.idle_check(timeout=0.2) == []
        ok(mail_server.data_dir, "import", "mbox", ALICE, str(mbox))
        started = time.monotonic()
        responses = client.idle_check(timeout=10)
        assert (1, b"EXISTS") in responses, responses
        assert time.monotonic() - started < 5  # told, not found by a poll
        client.idle_done()
    finally:
        client.logout()


@BOTH
def test_cli_sieve_activate_counts_for_the_next_message(mail_server: RunningServer,
                                                        tmp_path: Path) -> None:
    _send(mail_server, "before")  # the server now knows (and caches) Alice has no script
    script = 'require ["fileinto", "mailbox"];\nfileinto :create "Filed";\n'
    ok(mail_server.data_dir, "sieve", "put", ALICE, "main", "--activate", stdin=script)
    _send(mail_server, "after")
    assert [m.meta.uid for m in inbox(mail_server, ALICE, "Filed")] == [1]
    assert len(inbox(mail_server, ALICE)) == 1
