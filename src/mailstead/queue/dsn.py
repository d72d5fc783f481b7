"""Delivery status notifications (RFC 3464): the multipart/report a sender gets back.

Pure code: builds the bytes of a notice from what the queue knows. Four kinds are made here:
``failed`` (the message bounced), ``delayed`` (still queued after the delay-notice time),
``relayed`` (NOTIFY=SUCCESS, but the next server does not do DSN, RFC 3461 6.2.3.2) and
``delivered`` (NOTIFY=SUCCESS and we put it in the mailbox, RFC 3461 6.2.2). Who gets one and
when is the caller's decision: never for the null sender, never for a bounce.

A notice about a message with UTF-8 addresses or header fields uses the RFC 6533 types
(message/global-delivery-status, message/global, message/global-headers).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import Literal

from mailstead.proto.mime import parse_envelope_fields

Action = Literal["failed", "delayed", "relayed", "delivered"]

# Returned in full up to this size unless RET=HDRS asks for the header only (RFC 3461 4.3
# leaves the default to us); bigger messages come back as their header section.
FULL_RETURN_LIMIT = 256 * 1024


@dataclass(frozen=True, slots=True)
class RecipientReport:
    address: str
    action: Action
    status: str  # enhanced status code, e.g. "5.1.1"
    reason: str  # one line for people
    orcpt: str = ""  # "rfc822;bob@example.org" as the sender's server gave it
    diagnostic: str = ""  # the remote server's SMTP reply, when there was one
    remote_mta: str = ""  # its host name
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Notice:
    reporting_mta: str  # our host name
    sender: str  # the original envelope sender: the notice goes to this address
    queue_id: str
    arrival: datetime
    recipients: list[RecipientReport]
    original: bytes  # the message as it was being sent
    envid: str = ""
    headers_only: bool = False  # RET=HDRS, REQUIRETLS (RFC 8689 5) or a big message


_SUBJECTS = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "relayed": "Relayed Mail (no delivery notice will follow)",
    "delivered": "Successful Mail Delivery Report",
}

_INTRO = {
    "failed": "Your message could not be delivered to the recipients below. This is a "
              "permanent error: it will not be retried.",
    "delayed": "Your message has not been delivered yet to the recipients below. It stays in "
               "the queue and will be retried; you need not send it again.",
    "relayed": "Your message was passed on for the recipients below to a server that sends "
               "no delivery notices, so no confirmation of its delivery will follow.",
    "delivered": "Your message was delivered to the mailboxes of the recipients below, as you "
                 "asked to be told.",
}


def should_return_headers_only(ret: str, requiretls: bool, size: int) -> bool:
    if requiretls:
        return True  # RFC 8689 5: a bounced REQUIRETLS message comes back as RET=HDRS
    if ret.upper() == "HDRS":
        return True
    return ret.upper() != "FULL" and size > FULL_RETURN_LIMIT


def wants_notice(notify: str, action: Action) -> bool:
    """RFC 3461 4.1: NOTIFY=NEVER asks for none; without NOTIFY we send failures and delays."""
    words = {w.strip() for w in notify.upper().split(",") if w.strip()}
    if not words:
        return action in ("failed", "delayed")
    if "NEVER" in words:
        return False
    wanted = {"failed": "FAILURE", "delayed": "DELAY", "relayed": "SUCCESS",
              "delivered": "SUCCESS"}[action]
    return wanted in words


def _header_section(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[:end + 2]


def _crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def _recipient_fields(report: RecipientReport, utf8: bool) -> list[str]:
    kind = "utf-8" if utf8 and not report.address.isascii() else "rfc822"
    fields = []
    if report.orcpt:
        fields.append(f"Original-Recipient: {report.orcpt}")
    fields += [
        f"Final-Recipient: {kind}; {report.address}",
        f"Action: {report.action}",
        f"Status: {report.status}",
    ]
    if report.remote_mta:
        fields.append(f"Remote-MTA: dns; {report.remote_mta}")
    if report.diagnostic:
        fields.append(f"Diagnostic-Code: smtp; {' '.join(report.diagnostic.split())[:900]}")
    if report.last_attempt is not None:
        fields.append(f"Last-Attempt-Date: {format_datetime(report.last_attempt)}")
    if report.will_retry_until is not None:
        fields.append(f"Will-Retry-Until: {format_datetime(report.will_retry_until)}")
    return fields


def build_notice(notice: Notice, now: datetime) -> bytes:
    """The whole notice message (header and multipart/report body), CRLF line ends."""
    actions = {r.action for r in notice.recipients}
    order: tuple[Action, ...] = ("failed", "delayed", "relayed", "delivered")
    action = next(a for a in order if a in actions)
    addresses = [notice.sender, *(r.address for r in notice.recipients)]
    utf8 = (not all(a.isascii() for a in addresses)
            or not _header_section(notice.original).isascii())
    boundary = f"=_mailstead_{secrets.token_hex(12)}"
    original_id = parse_envelope_fields(notice.original).message_id if notice.original else ""

    header = [
        f"From: Mail Delivery System <MAILER-DAEMON@{notice.reporting_mta}>",
        f"To: <{notice.sender}>",
        f"Subject: {_SUBJECTS[action]}",
        f"Date: {format_datetime(now)}",
        f"Message-ID: <{notice.queue_id}.{secrets.token_hex(6)}@{notice.reporting_mta}>",
    ]
    if original_id:
        header.append(f"References: {original_id}")
    header += [
        "Auto-Submitted: auto-replied",  # RFC 3834 5: no auto-reply loops
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
    ]

    lines = [f"This is the mail system at {notice.reporting_mta}.", "", _INTRO[action], ""]
    for report in notice.recipients:
        lines.append(f"<{report.address}>: {report.reason}")
    human = "\r\n".join(lines) + "\r\n"

    per_message = [f"Reporting-MTA: dns; {notice.reporting_mta}",
                   f"X-Mailstead-Queue-ID: {notice.queue_id}"]
    if notice.envid:
        per_message.append(f"Original-Envelope-Id: {notice.envid}")
    per_message.append(f"Arrival-Date: {format_datetime(notice.arrival)}")
    status_blocks = ["\r\n".join(per_message)]
    status_blocks += ["\r\n".join(_recipient_fields(r, utf8)) for r in notice.recipients]
    status = "\r\n\r\n".join(status_blocks) + "\r\n"

    if notice.headers_only:
        returned = _header_section(notice.original)
        returned_type = "message/global-headers" if utf8 else "text/rfc822-headers"
    else:
        returned = notice.original
        returned_type = "message/global" if utf8 else "message/rfc822"
    if returned and not returned.endswith(b"\r\n"):
        returned += b"\r\n"

    def part(content_type: str, body: bytes) -> bytes:
        encoding = "7bit" if body.isascii() else "8bit"
        head = f"--{boundary}\r\nContent-Type: {content_type}\r\n"
        head += f"Content-Transfer-Encoding: {encoding}\r\n\r\n"
        return head.encode("ascii") + body

    status_type = "message/global-delivery-status" if utf8 else "message/delivery-status"
    body = b"".join([
        b"This is a MIME-encapsulated delivery status notification.\r\n\r\n",
        part('text/plain; charset="utf-8"', _crlf(human).encode("utf-8")),
        b"\r\n",
        part(status_type, status.encode("utf-8")),
        b"\r\n",
        part(returned_type, returned),
        f"\r\n--{boundary}--\r\n".encode("ascii"),
    ])
    return "\r\n".join(header).encode("utf-8") + b"\r\n\r\n" + body
