"""What delivery tests do as users: submit over SMTP, read over IMAP, wait for a state."""

from __future__ import annotations

import email
import email.message
import email.policy
import imaplib
import smtplib
import ssl
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from mailstead.store.interfaces import QueueEntry
from tests.conftest import PASSWORD
from tests.delivery.conftest import Node

T = TypeVar("T")

DEADLINE = 30.0  # seconds a test waits for mail to move before it fails


def wait_for(check: Callable[[], T | None], what: str, timeout: float = DEADLINE) -> T:
    """Polls ``check`` until it returns something truthy; fails with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def make_message(sender: str, to: Sequence[str], subject: str, body: str = "Hello.\r\n",
                 message_id: str | None = None, extra: str = "") -> bytes:
    mid = message_id or f"<{abs(hash((sender, subject, time.time())))}@test>"
    text = (f"From: {sender}\r\nTo: {', '.join(to)}\r\nSubject: {subject}\r\n"
            f"Message-ID: {mid}\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n{extra}\r\n{body}")
    return text.encode("utf-8")


def submit(node: Node, user: str, recipients: Sequence[str], message: bytes,
           mail_options: Sequence[str] = (), rcpt_options: Sequence[str] = ()) -> str:
    """Sends as ``user`` over the submission port (STARTTLS, AUTH); returns the queue id."""
    with smtplib.SMTP(node.ip, node.port("submission"), timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.starttls(context=client_context())
        smtp.ehlo("client.test")
        smtp.login(user, PASSWORD)
        smtp.mail(user, list(mail_options))
        for recipient in recipients:
            code, reply = smtp.rcpt(recipient, list(rcpt_options))
            assert code == 250, (recipient, code, reply)
        code, reply = smtp.data(message)
        assert code == 250, (code, reply)
    return reply.decode().rsplit(" ", 1)[-1]  # "250 2.0.0 OK queued as ID"


def fetch_inbox(node: Node, user: str, mailbox: str = "INBOX"
                ) -> list[email.message.EmailMessage]:
    """Every message in the user's INBOX (or ``mailbox``), read over IMAP (STARTTLS, LOGIN)."""
    with imaplib.IMAP4(node.ip, node.port("imap"), timeout=30) as imap:
        imap.starttls(client_context())
        imap.login(user, PASSWORD)
        imap.select(mailbox, readonly=True)
        _, data = imap.uid("SEARCH", "ALL")
        uids = data[0].split() if data and data[0] else []
        messages = []
        for uid in uids:
            _, parts = imap.uid("FETCH", uid, "(BODY.PEEK[])")
            raw = next(p[1] for p in parts if isinstance(p, tuple))
            messages.append(email.message_from_bytes(raw, policy=email.policy.default))
        imap.logout()
    return messages  # type: ignore[return-value]


def inbox_with(node: Node, user: str, count: int = 1, mailbox: str = "INBOX"
               ) -> list[email.message.EmailMessage]:
    def enough() -> list[email.message.EmailMessage] | None:
        messages = fetch_inbox(node, user, mailbox)
        return messages if len(messages) >= count else None

    return wait_for(enough, f"{count} message(s) in {user}'s {mailbox}")


def queue_entry(node: Node, queue_id: str) -> QueueEntry:
    entry = node.server.run(node.server.services.store.get_queue_entry(queue_id))
    assert entry is not None, f"no queue entry {queue_id}"
    return entry


def entry_done(node: Node, queue_id: str) -> QueueEntry:
    return wait_for(lambda: e if (e := queue_entry(node, queue_id)).state == "done" else None,
                    f"queue entry {queue_id} to finish")


def report_parts(message: email.message.EmailMessage) -> tuple[str, list[dict[str, str]], str]:
    """(human text, [per-message fields, per-recipient fields...], returned content type)."""
    assert message.get_content_type() == "multipart/report", message.get_content_type()
    assert message.get_param("report-type") == "delivery-status"
    human, status, returned = message.iter_parts()
    # The body of the status part: "Name: value" lines, one block per group.
    raw = status.as_bytes().replace(b"\r\n", b"\n").split(b"\n\n", 1)[1]
    blocks = [[(line.partition(":")[0], line.partition(":")[2])
               for line in b.split("\n") if line.strip()]
              for b in raw.decode("utf-8").split("\n\n") if b.strip()]
    fields = [{name.strip().lower(): str(value).strip() for name, value in block}
              for block in blocks]
    text = human.get_content()
    return text, fields, returned.get_content_type()
