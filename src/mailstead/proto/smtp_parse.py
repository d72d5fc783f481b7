"""Parsing the arguments of SMTP commands (moved out of proto/smtp.py): paths, ESMTP
parameters, xtext (RFC 3461 4). A malformed argument raises ``_Refusal`` with its reply.
"""

from __future__ import annotations

import re

from mailstead.core.addresses import Address, parse_address
from mailstead.core.errors import InvalidInput
from mailstead.proto.smtp_types import Action, Reply, reply

_XTEXT_RE = re.compile(r"^(?:[!-*,-<>-~]|\+[0-9A-F]{2})*$")  # RFC 3461 4: xchar / hexchar
_NOTIFY_VALUES = {"SUCCESS", "FAILURE", "DELAY"}


class _Refusal(Exception):
    """Raised inside a command handler to answer with ``reply``."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.lines[0])
        self.reply = reply


def _discard_chunk(refusal: Reply, size: int) -> Reply:
    """``refusal``, to be written before the chunk's ``size`` octets are read and dropped. (Should
    it turn into "too many errors", the driver hangs up instead.)"""
    return Reply(refusal.code, refusal.lines, Action.DISCARD_CHUNK, size)


def _printable(text: str) -> str:
    """Drops control characters, so a HELO name cannot inject header lines."""
    if text.isprintable():  # the usual name: no character to drop, no copy
        return text
    return "".join(ch for ch in text if ch.isprintable())


def _after_keyword(arg: str, keyword: str) -> str | None:
    """``FROM:<a> X`` -> ``<a> X`` (case-insensitive keyword; spaces after ':' tolerated)."""
    arg = arg.lstrip(" ")
    if arg[: len(keyword)].upper() != keyword:
        return None
    return arg[len(keyword):].lstrip(" ")


def _split_path(rest: str, status: str) -> tuple[str, list[tuple[str, str | None]]]:
    """``<path> K=V K2`` -> ("path", [("K", "V"), ("K2", None)]); keys upper-cased."""
    if not rest.startswith("<"):
        raise _Refusal(reply(501, status, "Address must be in angle brackets: <user@domain>"))
    end = rest.find(">")
    if end < 0:
        raise _Refusal(reply(501, status, "Missing '>' after address"))
    path = rest[1:end]
    params: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    tail = rest[end + 1:]
    if tail and not tail.startswith(" "):
        raise _Refusal(reply(501, "5.5.4", "Space expected after address"))
    for word in tail.split():
        key, sep, value = word.partition("=")
        key = key.upper()
        if not key or key in seen or (sep and not value):
            raise _Refusal(reply(501, "5.5.4", f"Invalid parameter {word}"))
        seen.add(key)
        params.append((key, value if sep else None))
    return path, params


def _mailbox(path: str, status: str, role: str) -> Address:
    """Parses a path's mailbox, refusing what mail relays are abused with."""
    if path.startswith("@"):
        # RFC 5321 3.6.1 lets a server decline source routes; we always do.
        raise _Refusal(reply(553, status, f"Source routes are not accepted in the {role}"))
    if path.startswith('"'):
        raise _Refusal(reply(553, status, f"Quoted local parts are not accepted in the {role}"))
    try:
        return parse_address(path)
    except InvalidInput as exc:
        raise _Refusal(reply(553, status, f"Bad {role} address: {exc}")) from None


def _xtext(value: str | None, max_length: int) -> str:
    """Validates and decodes RFC 3461 4 xtext (``+2B`` is '+')."""
    if value is None or len(value) > max_length or not _XTEXT_RE.match(value):
        raise _Refusal(reply(501, "5.5.4", "Invalid xtext parameter value"))
    return re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), value)


def _ascii_digits(text: str) -> bool:
    """Digits int() takes: str.isdigit() alone also accepts "²" and the like."""
    return text.isascii() and text.isdigit()


def _rcpt_params(params: list[tuple[str, str | None]]) -> tuple[str, str]:
    notify = orcpt = ""
    for key, value in params:
        if key == "NOTIFY":  # RFC 3461 4.1: NEVER alone, or a list of the others
            items = (value or "").upper().split(",")
            if items != ["NEVER"] and not (items and set(items) <= _NOTIFY_VALUES
                                           and len(set(items)) == len(items)):
                raise _Refusal(reply(501, "5.5.4", "Invalid NOTIFY value"))
            notify = ",".join(items)
        elif key == "ORCPT":  # RFC 3461 4.2: addr-type ";" xtext
            decoded = _xtext(value, 500)
            addr_type, sep, original = decoded.partition(";")
            if not sep or not addr_type or not original:
                raise _Refusal(reply(501, "5.5.4", "Invalid ORCPT value"))
            orcpt = decoded
        else:
            raise _Refusal(reply(555, "5.5.4", f"Unsupported parameter {key}"))
    return notify, orcpt
