"""Vacation replies (RFC 5230, RFC 6131 vacation-seconds, RFC 3834 auto-replies): whether to
answer a message, and the answer. Pure; the once-per-period log is in the store.
"""

from __future__ import annotations

import email.utils
import re
import secrets
from collections.abc import Sequence
from datetime import datetime

from mailstead.proto import mime
from mailstead.sieve.interp import Vacation

_LIST_FIELDS = ("list-id", "list-help", "list-unsubscribe", "list-subscribe", "list-post",
                "list-owner", "list-archive")
# RFC 5230 4.6 / RFC 3834 2: senders that are programs, not people.
_ROBOT_LOCAL = re.compile(r"^(owner-.*|.*-request|mailer-daemon|listserv|majordomo|"
                          r"postmaster|noreply|no-reply|.*-bounces?)$", re.I)
MAX_REASON = 64 * 1024


def should_reply(sender: str, root: mime.Part, own: Sequence[str]) -> str:
    """"" when an auto-reply may go to ``sender``; else why not (for the log line).
    ``own``: the user's addresses (the recipient, its account, :addresses)."""
    if not sender:
        return "null sender"  # RFC 5230 4.5: never answer the null reverse-path
    local = sender.rpartition("@")[0]
    if _ROBOT_LOCAL.match(local):
        return "sender is a program"
    owned = {a.lower() for a in own if a}
    if sender.lower() in owned:
        return "sender is the user"
    auto = (root.get("Auto-Submitted") or "no").strip().lower()
    if not auto.startswith("no"):
        return "auto-submitted"  # RFC 3834 5.1 / RFC 5230 4.5
    precedence = (root.get("Precedence") or "").strip().lower()
    if precedence in ("bulk", "list", "junk"):
        return "bulk mail"
    if any(root.get(name) is not None for name in _LIST_FIELDS):
        return "mailing list"  # RFC 5230 4.5: SHOULD NOT reply to lists
    # RFC 5230 4.5: only mail with one of the user's addresses in To, Cc or Bcc (and the
    # like) is answered, so a Bcc-to-a-list copy gets no reply.
    named: set[str] = set()
    for field in root.fields:
        if field.name.lower() in ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc"):
            named.update(a.lower() for _n, a in email.utils.getaddresses([field.value]))
    if not named & owned:
        return "not addressed to the user"
    return ""


def _header_text(value: str) -> str:
    """A header value safe to write: one line; RFC 2047-encoded when not ASCII."""
    value = " ".join(value.split())[:900]
    if value.isascii():
        return value
    from email.header import Header

    return Header(value, "utf-8").encode()


def build_reply(vacation: Vacation, *, sender: str, to: str, root: mime.Part, now: datetime,
                hostname: str) -> bytes:
    """The auto-reply (RFC 3834 3): to the envelope sender, from the user, In-Reply-To and
    References the original, Auto-Submitted: auto-replied. Sent with the null MAIL FROM."""
    subject = vacation.subject
    if subject is None:  # RFC 5230 4.4: "Auto:" and the original subject
        original = mime.decoded_header(root.get("Subject") or "")
        subject = f"Auto: {original}" if original else "Auto: your message"
    message_id = root.get("Message-ID") or ""
    references = (root.get("References") or "").split()
    if message_id:
        references.append(message_id)
    lines = [
        f"From: {_header_text(vacation.sender or to)}",
        f"To: <{sender}>",
        f"Subject: {_header_text(subject)}",
        f"Date: {email.utils.format_datetime(now)}",
        f"Message-ID: <{secrets.token_hex(12)}@{hostname}>",
        "Auto-Submitted: auto-replied (vacation)",  # RFC 3834 5
        "Precedence: bulk",
        "MIME-Version: 1.0",
    ]
    if message_id:
        lines.append(f"In-Reply-To: {message_id}")
        lines.append(f"References: {' '.join(references[-10:])}")
    reason = vacation.reason[:MAX_REASON]
    if vacation.mime:
        # RFC 5230 4.7 :mime: the reason is a MIME entity (its own header and body).
        body = reason.replace("\r\n", "\n").replace("\n", "\r\n")
        if "\r\n\r\n" not in body:
            body = "\r\n" + body
        return ("\r\n".join(lines) + "\r\n" + body).encode("utf-8")
    lines += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
    text = reason.replace("\r\n", "\n").replace("\n", "\r\n")
    if not text.endswith("\r\n"):
        text += "\r\n"
    return ("\r\n".join(lines) + "\r\n\r\n" + text).encode("utf-8")
