"""IMAP URLs (RFC 5092) naming a message or a part of one, as CATENATE (RFC 4469) takes them.
Pure code: parsing, and finding what a URL names through the caller's mailbox lookups.

Accepted: ``imap://[user[;AUTH=...]@]host[:port]/mailbox[;UIDVALIDITY=n]/;UID=n
[/;SECTION=s][/;PARTIAL=o[.l]]`` and the same without the ``imap://...`` part (an absolute
path, RFC 5092 7). URLAUTH-authorised URLs (RFC 4467) are read by imap_urlauth.py, which
takes their message part from here.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote

from mailstead.core.errors import InvalidInput
from mailstead.proto import mime, mime_imap, mutf7

_SERVER = re.compile(r"imap://(?:(?P<user>[^@/]*)@)?[^/]*", re.IGNORECASE)
_MESSAGE = re.compile(
    r"(?:;UIDVALIDITY=(?P<uidvalidity>[1-9][0-9]{0,9}))?"
    r"/;UID=(?P<uid>[1-9][0-9]{0,9})"
    r"(?:/;SECTION=(?P<section>[^/;]*))?"
    r"(?:/;PARTIAL=(?P<origin>[0-9]{1,10})(?:\.(?P<length>[1-9][0-9]{0,9}))?)?",
    re.IGNORECASE,
)
_MESSAGE_START = re.compile(r";UIDVALIDITY=|/;UID=", re.IGNORECASE)


class BadUrl(ValueError):
    """Not an IMAP URL of a message this server can serve."""


@dataclass(frozen=True, slots=True)
class MessageUrl:
    user: str | None  # the user named in an absolute URL (percent-decoded), if any
    mailbox: str  # percent-decoded (RFC 5092 3: UTF-8)
    uidvalidity: int | None
    uid: int
    section: str  # the text of BODY[...], "" for the whole message
    partial: tuple[int, int | None] | None  # (origin, length)


def parse_message_url(url: str) -> MessageUrl:
    """Raises BadUrl for anything else than the message URLs described above."""
    rest = url
    user = None
    server = _SERVER.match(rest)
    if server is not None:
        if server.group("user") is not None:
            user = unquote(server.group("user").split(";", 1)[0])
        rest = rest[server.end() :]
    if not rest.startswith("/"):
        raise BadUrl("not an absolute IMAP URL")
    start = _MESSAGE_START.search(rest, 1)
    if start is None:
        raise BadUrl("no message UID")
    m = _MESSAGE.fullmatch(rest, start.start())
    if m is None:
        raise BadUrl("unsupported URL parts (URLAUTH, or trailing text)")
    try:
        mailbox = unquote(rest[1 : start.start()], errors="strict")
    except UnicodeDecodeError:
        raise BadUrl("mailbox name is not UTF-8") from None
    if not mailbox:
        raise BadUrl("no mailbox")
    origin, length = m.group("origin"), m.group("length")
    return MessageUrl(
        user=user,
        mailbox=mailbox,
        uidvalidity=int(m.group("uidvalidity")) if m.group("uidvalidity") else None,
        uid=int(m.group("uid")),
        section=unquote(m.group("section") or ""),
        partial=None if origin is None else (int(origin), int(length) if length else None),
    )


Box = TypeVar("Box")


async def find_mailbox(find: Callable[[str], Awaitable[Box | None]], name: str) -> Box | None:
    """The mailbox a URL names: RFC 5092 3 says UTF-8, but some clients put the modified
    UTF-7 form; ``find`` looks a name up (None when there is no such mailbox)."""
    names = [name]
    with contextlib.suppress(mutf7.MUTF7Error):
        names.append(mutf7.decode(name))
    for candidate in names:
        with contextlib.suppress(InvalidInput):  # not a valid name: not this one
            box = await find(candidate)
            if box is not None:
                return box
    return None


def named_part(data: bytes, ref: MessageUrl) -> bytes | None:
    """What the URL names of the message ``data``: what ``FETCH BODY.PEEK[section]<partial>``
    would give, None when the section does not exist."""
    if ref.section:
        try:
            content = mime_imap.section(data, mime.parse(data), ref.section)
        except mime.SectionSpecError:
            return None
        if content is None:
            return None
        data = content
    if ref.partial is not None:
        origin, length = ref.partial
        data = data[origin:] if length is None else data[origin : origin + length]
    return data
