"""Building outgoing messages (RFC 5322 / MIME) from what the compose form or the API sent,
and pre-filling replies and forwards."""

from __future__ import annotations

import email.policy
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, make_msgid

from mailstead.core.addresses import parse_address
from mailstead.core.errors import InvalidInput
from mailstead.web.messages import ReadMessage
from mailstead.web.sanitize import clean_html, html_to_text

MAX_SUBJECT = 998  # RFC 5322 2.1.1 line length
_SAFE_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")


@dataclass(frozen=True, slots=True)
class Upload:
    filename: str
    content_type: str
    data: bytes


@dataclass(slots=True)
class Draft:
    from_addr: str
    to: str = ""  # as typed: "Alice <alice@example.test>, bob@example.test"
    cc: str = ""
    bcc: str = ""
    subject: str = ""
    text: str = ""
    html: str | None = None  # set for an HTML message (sanitised before it is used)
    attachments: list[Upload] = field(default_factory=list)
    in_reply_to: str = ""
    references: str = ""


def parse_recipients(value: str) -> list[tuple[str, str]]:
    """(display name, address) pairs from a typed list; InvalidInput names a bad one."""
    out: list[tuple[str, str]] = []
    if not value.strip():
        return out
    for name, addr in getaddresses([value.replace("\n", " ").replace(";", ",")]):
        if not addr and not name:
            continue
        if not addr:
            raise InvalidInput(f"{name!r} is not an email address")
        out.append((name, str(parse_address(addr))))
    return out


def envelope_recipients(draft: Draft) -> list[str]:
    """Every To, Cc and Bcc address once, in order."""
    seen: dict[str, str] = {}
    for value in (draft.to, draft.cc, draft.bcc):
        for _name, addr in parse_recipients(value):
            seen.setdefault(addr.lower(), addr)
    return list(seen.values())


def _address_header(pairs: list[tuple[str, str]]) -> list[HeaderAddress]:
    out = []
    for name, addr in pairs:
        local, _, domain = addr.rpartition("@")
        out.append(HeaderAddress(display_name=name, username=local, domain=domain))
    return out


def _content_type(value: str) -> tuple[str, str]:
    value = value.strip().lower()
    if not _SAFE_TYPE.match(value):
        return "application", "octet-stream"
    maintype, _, subtype = value.partition("/")
    return maintype, subtype


def build_message(draft: Draft, *, hostname: str, include_bcc: bool,
                  message_id: str | None = None) -> bytes:
    """The message as bytes with CRLF line ends. The delivered copy leaves Bcc out (RFC 5322
    3.6.3); the Sent and Drafts copies keep it so the writer still sees who got it."""
    if len(draft.subject) > MAX_SUBJECT or "\n" in draft.subject or "\r" in draft.subject:
        raise InvalidInput("the subject must be one line of at most 998 characters")
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = _address_header([("", str(parse_address(draft.from_addr)))])
    for header, value in (("To", draft.to), ("Cc", draft.cc)):
        pairs = parse_recipients(value)
        if pairs:
            msg[header] = _address_header(pairs)
    if include_bcc and parse_recipients(draft.bcc):
        msg["Bcc"] = _address_header(parse_recipients(draft.bcc))
    msg["Subject"] = draft.subject
    msg["Date"] = format_datetime(_now())
    msg["Message-ID"] = message_id or make_msgid(domain=hostname)
    if draft.in_reply_to:
        msg["In-Reply-To"] = draft.in_reply_to.strip()
    if draft.references:
        msg["References"] = " ".join(draft.references.split())
    msg["MIME-Version"] = "1.0"
    msg["User-Agent"] = "mailstead webmail"
    if draft.html is not None:
        safe_html = clean_html(draft.html, allow_remote_images=True).html
        text = draft.text or html_to_text(safe_html)
        msg.set_content(text, charset="utf-8")
        msg.add_alternative(
            f'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>{safe_html}'
            "</body></html>",
            subtype="html", charset="utf-8",
        )
    else:
        msg.set_content(draft.text, charset="utf-8")
    for upload in draft.attachments:
        maintype, subtype = _content_type(upload.content_type)
        filename = upload.filename.replace("/", "_").replace("\\", "_")[:200] or "attachment"
        msg.add_attachment(upload.data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


def _now() -> datetime:
    return datetime.now(UTC)


# -- replies and forwards --


def _prefixed(prefix: str, subject: str) -> str:
    if subject.lower().startswith(prefix.lower()):
        return subject
    return f"{prefix} {subject}".strip()


def quote(text: str) -> str:
    return "".join(f"> {line}\n" if line else ">\n" for line in text.splitlines())


def reply_draft(original: ReadMessage, own: str, *, reply_all: bool, own_addresses: set[str]
                ) -> Draft:
    to = original.reply_to or original.from_
    cc = ""
    if reply_all:
        seen = {a.lower() for _n, a in parse_recipients_lenient(to)} | own_addresses
        extra = []
        for value in (original.to, original.cc):
            for name, addr in parse_recipients_lenient(value):
                if addr.lower() not in seen:
                    seen.add(addr.lower())
                    extra.append(f"{name} <{addr}>" if name else addr)
        cc = ", ".join(extra)
    refs = " ".join(x for x in (original.references, original.message_id) if x)
    body = f"\n\nOn {original.date}, {original.from_} wrote:\n{quote(original.quote_text)}"
    return Draft(from_addr=own, to=to, cc=cc, subject=_prefixed("Re:", original.subject),
                 text=body, in_reply_to=original.message_id, references=refs)


def forward_draft(original: ReadMessage, own: str) -> Draft:
    head = (f"\n\n---------- Forwarded message ----------\nFrom: {original.from_}\n"
            f"Date: {original.date}\nSubject: {original.subject}\nTo: {original.to}\n")
    if original.cc:
        head += f"Cc: {original.cc}\n"
    return Draft(from_addr=own, subject=_prefixed("Fwd:", original.subject),
                 text=head + "\n" + original.quote_text)


def parse_recipients_lenient(value: str) -> list[tuple[str, str]]:
    """Like parse_recipients, skipping what does not parse (headers written by others)."""
    out = []
    for name, addr in getaddresses([value]):
        try:
            out.append((name, str(parse_address(addr))))
        except InvalidInput:
            continue
    return out
