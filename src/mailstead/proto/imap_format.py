"""IMAP response formatting: status lines, flag lists, sequence sets, dates, strings.

Pure code. Strings that may need a literal go through ``imap_sexpr`` (quoted when safe).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from mailstead.core.models import SYSTEM_FLAG_NAMES, SystemFlag
from mailstead.proto import imap_sexpr

CRLF = b"\r\n"

# Bit -> name, in the order clients usually show them.
_FLAG_ORDER = (
    (int(SystemFlag.ANSWERED), b"\\Answered"),
    (int(SystemFlag.FLAGGED), b"\\Flagged"),
    (int(SystemFlag.DELETED), b"\\Deleted"),
    (int(SystemFlag.SEEN), b"\\Seen"),
    (int(SystemFlag.DRAFT), b"\\Draft"),
)
SYSTEM_FLAGS = b"\\Answered \\Flagged \\Deleted \\Seen \\Draft"
_UPPER_SYSTEM = {name.upper(): int(bit) for name, bit in SYSTEM_FLAG_NAMES.items()}
_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct",
           b"Nov", b"Dec")

# Flag lists are formatted for every line of a big FETCH: cache the common combinations.
_flags_cache: dict[tuple[int, frozenset[str], bool], bytes] = {}


@dataclass(frozen=True, slots=True)
class Reply:
    """How a command ends: tagged OK / NO / BAD with an optional response code."""

    status: str
    text: str
    code: str = ""


class CommandError(Exception):
    """Raised by a command handler to end the command with a tagged NO or BAD."""

    def __init__(self, status: str, text: str, code: str = "") -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.code = code


class FlagError(ValueError):
    """A flag a client may not set (an unknown system flag such as \\Foo)."""


def tagged(tag: str, status: str, text: str, code: str = "") -> bytes:
    code_part = f"[{code}] " if code else ""
    return f"{tag} {status} {code_part}{text}\r\n".encode("utf-8", "surrogateescape")


def untagged(text: str) -> bytes:
    return f"* {text}\r\n".encode("utf-8", "surrogateescape")


def continuation(text: str = "") -> bytes:
    return f"+ {text}\r\n".encode()


def flag_list(flags: int, keywords: frozenset[str], recent: bool = False) -> bytes:
    """``(\\Seen \\Flagged $Label1)``; \\Recent only for IMAP4rev1 sessions."""
    key = (flags, keywords, recent)
    cached = _flags_cache.get(key)
    if cached is not None:
        return cached
    names = [name for bit, name in _FLAG_ORDER if flags & bit]
    if recent:
        names.append(b"\\Recent")
    names.extend(k.encode("utf-8", "surrogateescape") for k in sorted(keywords))
    out = b"(" + b" ".join(names) + b")"
    if len(_flags_cache) < 4096:
        _flags_cache[key] = out
    return out


def parse_flags(names: Iterable[str]) -> tuple[int, frozenset[str]]:
    """Flag names from a client -> (system flag bits, keywords). \\Recent is dropped (clients
    cannot set it, RFC 3501 2.3.2); other unknown system flags raise FlagError."""
    bits = 0
    keywords: set[str] = set()
    for name in names:
        if name.startswith("\\"):
            upper = name.upper()
            if upper == "\\RECENT":
                continue
            bit = _UPPER_SYSTEM.get(upper)
            if bit is None:
                raise FlagError(f"unknown system flag {name}")
            bits |= bit
        else:
            keywords.add(name)
    return bits, frozenset(keywords)


def sequence_set(numbers: Iterable[int]) -> str:
    """Numbers -> compact set "1:3,7,9:10" (empty string for none). Their order is kept:
    only ascending runs become ranges, so a sorted result (SORT's ESEARCH ALL, RFC 5267)
    reads back in its order ("5,1:3,9,7:8")."""
    out: list[str] = []
    start = prev = -1
    for n in numbers:
        if n == prev + 1 and start >= 0:
            prev = n
            continue
        if start >= 0:
            out.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = n
    if start >= 0:
        out.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(out)


# internal_date's answers, by instant and zone (equal instants in two zones print apart):
# every FETCH of a message list asks again.
_DATES: dict[tuple[datetime, tzinfo | None], bytes] = {}
_DATES_KEPT = 20_000


def internal_date(when: datetime) -> bytes:
    """``"17-Jul-1996 02:44:25 -0700"`` (RFC 9051 date-time)."""
    key = (when, when.tzinfo)
    found = _DATES.get(key)
    if found is None:
        if len(_DATES) >= _DATES_KEPT:
            _DATES.clear()
        found = _DATES[key] = _internal_date(when)
    return found


def _internal_date(when: datetime) -> bytes:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    offset = when.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = b"+" if minutes >= 0 else b"-"
    minutes = abs(minutes)
    return b'"%02d-%s-%04d %02d:%02d:%02d %s%02d%02d"' % (
        when.day, _MONTHS[when.month - 1], when.year, when.hour, when.minute, when.second,
        sign, minutes // 60, minutes % 60,
    )


def string(text: str | bytes, utf8: bool) -> bytes:
    """An IMAP string: quoted when it can be, else a literal."""
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    return imap_sexpr.quoted_or_literal(raw, utf8)


def quoted(text: str) -> str:
    """A quoted string as text (for short known-safe values such as tags and names)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def astring(text: str, utf8: bool) -> bytes:
    return string(text, utf8)
