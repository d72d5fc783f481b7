"""The IMAP lexer: framing (literal markers, the tag and name of a first line), ParseError, and
the reader of atoms, strings, literals, numbers and sequence sets that the command parsers in
imap_parse.py use (RFC 9051 section 9). Pure code."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from mailstead.proto.imap_args import SequenceSet

# ---------------------------------------------------------------------------------------------
# Errors and framing


_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")


class ParseError(Exception):
    """The command is malformed. ``tag`` is "*" when even the tag could not be read."""

    def __init__(self, message: str, tag: str = "*", code: str = "") -> None:
        # Messages quote client text, which a literal may fill with CR LF: control characters
        # are escaped, so the BAD response stays one line (no response of the client's making).
        super().__init__(_CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", message))
        self.tag = tag
        self.code = code  # optional response code, e.g. "BADCHARSET (US-ASCII UTF-8)"


@dataclass(frozen=True, slots=True)
class LiteralMarker:
    """A literal announced at the end of a line: ``{n}``, ``{n+}`` (LITERAL+/-) or ``~{n}``."""

    size: int
    synchronizing: bool
    binary: bool


_LITERAL_AT_END = re.compile(rb"(~?)\{([0-9]{1,10})(\+?)\}\r?\n\Z")

NONSYNC_LITERAL_MAX = 4096  # LITERAL- (RFC 7888 section 5), part of IMAP4rev2


def literal_marker(line: bytes) -> LiteralMarker | None:
    """The literal a line (with its CRLF) announces, if any; the framing layer then reads
    ``size`` bytes and the next line."""
    m = _LITERAL_AT_END.search(line)
    if m is None:
        return None
    return LiteralMarker(int(m.group(2)), synchronizing=not m.group(3), binary=bool(m.group(1)))


_TAG_CMD = re.compile(rb"([^\x00-\x20\x7f(){%*\"\\+]+) +([A-Za-z]+)(?: +([A-Za-z]+))?")


def peek_tag_command(line: bytes) -> tuple[str, str]:
    """Tag and upper-case command name of a first line (("*", "") when unreadable); lets the
    framing layer pick limits before the whole command is in (APPEND vs the rest)."""
    m = _TAG_CMD.match(line)
    if m is None:
        return "*", ""
    name = m.group(2).decode().upper()
    if name == "UID" and m.group(3):
        name = "UID " + m.group(3).decode().upper()
    return m.group(1).decode("latin-1"), name


# ---------------------------------------------------------------------------------------------
# Lexer

_ATOM_SPECIALS = frozenset(b'(){ %*"\\]') | frozenset(range(0x20)) | {0x7F}
_ASTRING_SPECIALS = _ATOM_SPECIALS - {ord("]")}
_LIST_SPECIALS = _ATOM_SPECIALS - {ord("]"), ord("%"), ord("*")}
_TAG_SPECIALS = _ASTRING_SPECIALS | {ord("+")}
_NOT_SEQ_CHARS = frozenset(range(256)) - frozenset(b"0123456789:*,")
_NUMBER = re.compile(rb"[0-9]+")
_MAX_NUMBER = 2**63 - 1  # mod-sequence-value may reach 2^63-1 (RFC 7162)
_MAX_DEPTH = 50  # search key nesting
# Bounded work per command (issue 16): what one command may ask for. A sane client stays far
# below these; a hostile one gets BAD at once instead of making every later step (evaluation
# per message, responses per item) pay for each item.
MAX_ITEMS = 1000  # search keys, flags, fetch attributes, header names, patterns... in total
MAX_FETCH_ITEMS = 100  # attributes in one FETCH
MAX_RANGES = 20_000  # ranges in all the sequence sets of one command
_INLINE_LITERAL = re.compile(rb"\{([0-9]{1,10})\+?\}\r\n")
_SECTION_TEXT = re.compile(rb"HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME", re.I)


class _Reader:
    """Cursor over one command's bytes."""

    def __init__(self, data: bytes, tag: str = "*") -> None:
        self.data = data
        self.pos = 0
        self.tag = tag
        self.items = 0  # list items and search keys read so far (MAX_ITEMS)
        self.ranges = 0  # sequence ranges read so far (MAX_RANGES)

    def count(self, n: int = 1) -> None:
        """Counts list items / search keys against MAX_ITEMS."""
        self.items += n
        if self.items > MAX_ITEMS:
            raise self.error(f"too many items in one command (at most {MAX_ITEMS})", "LIMIT")

    def error(self, message: str, code: str = "") -> ParseError:
        return ParseError(message, self.tag, code)

    # -- primitives --

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def peek(self) -> int:
        return self.data[self.pos] if self.pos < len(self.data) else -1

    def peek_is(self, text: bytes) -> bool:
        return self.data[self.pos : self.pos + len(text)].upper() == text

    def expect(self, text: bytes) -> None:
        if not self.peek_is(text):
            shown = text.decode("latin-1")
            raise self.error(f"expected {shown!r} at position {self.pos}")
        self.pos += len(text)

    def sp(self) -> None:
        if self.peek() != 0x20:
            raise self.error(f"expected a space at position {self.pos}")
        self.pos += 1

    def maybe_sp(self) -> bool:
        if self.peek() == 0x20:
            self.pos += 1
            return True
        return False

    def end(self) -> None:
        if not self.at_end():
            raise self.error(f"unexpected text at position {self.pos}")

    def _run(self, specials: frozenset[int]) -> bytes:
        start = self.pos
        data = self.data
        n = len(data)
        while self.pos < n and data[self.pos] not in specials:
            self.pos += 1
        return data[start : self.pos]

    def atom(self) -> str:
        raw = self._run(_ATOM_SPECIALS)
        if not raw:
            raise self.error(f"expected an atom at position {self.pos}")
        return raw.decode("utf-8", "surrogateescape")

    def flag(self) -> str:
        """flag / flag-extension: an atom, optionally after a backslash (\\Seen, \\*)."""
        if self.peek() == ord("\\"):
            self.pos += 1
            if self.peek() == ord("*"):
                self.pos += 1
                return "\\*"
            return "\\" + self.atom()
        return self.atom()

    def number(self, nonzero: bool = False) -> int:
        m = _NUMBER.match(self.data, self.pos)
        if m is None:
            raise self.error(f"expected a number at position {self.pos}")
        self.pos = m.end()
        digits = m.group().lstrip(b"0")
        if len(digits) > 19:  # past _MAX_NUMBER; and int() refuses over 4300 digits
            raise self.error(f"number out of range: {digits[:20].decode()}...")
        value = int(digits or b"0")
        if value > _MAX_NUMBER or (nonzero and value == 0):
            raise self.error(f"number out of range: {value}")
        return value

    def literal(self, allow_binary: bool = False) -> tuple[bytes, bool]:
        """A literal ({n}, {n+}, ~{n}) whose bytes follow CRLF; returns (bytes, binary)."""
        binary = False
        if self.peek() == ord("~"):
            if not allow_binary:
                raise self.error("literal8 is only allowed in APPEND")
            binary = True
            self.pos += 1
        m = _INLINE_LITERAL.match(self.data, self.pos)
        if m is None:
            raise self.error(f"bad literal at position {self.pos}")
        size = int(m.group(1))
        start = m.end()
        if start + size > len(self.data):
            raise self.error("literal is shorter than announced")
        self.pos = start + size
        value = self.data[start : self.pos]
        if not binary and b"\x00" in value:
            raise self.error("NUL in a literal (RFC 9051 4.3)")
        return value, binary

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        data = self.data
        while True:
            if self.pos >= len(data):
                raise self.error("unterminated quoted string")
            c = data[self.pos]
            self.pos += 1
            if c == 0x22:
                return bytes(out)
            if c == 0x5C:
                if self.pos >= len(data) or data[self.pos] not in (0x22, 0x5C):
                    raise self.error("bad escape in quoted string")
                c = data[self.pos]
                self.pos += 1
            elif c in (0x0D, 0x0A, 0x00):
                raise self.error("CR, LF or NUL in a quoted string")
            out.append(c)

    def string_bytes(self) -> bytes:
        c = self.peek()
        if c == 0x22:
            return self.quoted()
        if c == ord("{"):
            return self.literal()[0]
        raise self.error(f"expected a string at position {self.pos}")

    def astring_bytes(self) -> bytes:
        c = self.peek()
        if c in (0x22, ord("{")):
            return self.string_bytes()
        raw = self._run(_ASTRING_SPECIALS)
        if not raw:
            raise self.error(f"expected an astring at position {self.pos}")
        return raw

    def astring(self) -> str:
        return self.astring_bytes().decode("utf-8", "surrogateescape")

    def nstring(self) -> str | None:
        if self.peek_is(b"NIL") and not self._atom_continues(3):
            self.pos += 3
            return None
        return self.string_bytes().decode("utf-8", "surrogateescape")

    def _atom_continues(self, offset: int) -> bool:
        i = self.pos + offset
        return i < len(self.data) and self.data[i] not in _ATOM_SPECIALS

    def mailbox(self) -> str:
        """A mailbox name as sent (still mUTF-7 for rev1 clients); INBOX is case-insensitive
        (RFC 9051 5.1)."""
        name = self.astring()
        return "INBOX" if name.upper() == "INBOX" else name

    def list_mailbox(self) -> str:
        c = self.peek()
        if c in (0x22, ord("{")):
            raw = self.string_bytes()
        else:
            raw = self._run(_LIST_SPECIALS)
            if not raw:
                raise self.error(f"expected a mailbox pattern at position {self.pos}")
        return raw.decode("utf-8", "surrogateescape")

    def sequence_set(self) -> SequenceSet:
        if self.peek() == ord("$"):
            self.pos += 1
            return SequenceSet((), saved=True)
        raw = self._run(_NOT_SEQ_CHARS)
        if not raw:
            raise self.error(f"expected a sequence set at position {self.pos}")
        ranges = []
        pieces = raw.split(b",")
        self.ranges += len(pieces)
        if self.ranges > MAX_RANGES:
            raise self.error(f"too many ranges in one command (at most {MAX_RANGES})", "LIMIT")
        for item in pieces:
            ends = item.split(b":")
            if len(ends) > 2:
                raise self.error(f"bad sequence range {item.decode('latin-1')!r}")
            values = []
            for end in ends:
                if end == b"*":
                    values.append(0)
                elif end.isdigit() and len(end.lstrip(b"0")) <= 10 and 0 < int(end) < 2**32:
                    values.append(int(end))
                else:
                    raise self.error(f"bad sequence number {end.decode('latin-1')!r}")
            ranges.append((values[0], values[-1]))
        return SequenceSet(tuple(ranges))

    def paren_list(self, item: str) -> list[str]:
        """"(" [x *(SP x)] ")" of atoms or flags."""
        self.expect(b"(")
        out: list[str] = []
        if self.peek() == ord(")"):
            self.pos += 1
            return out
        while True:
            self.count()
            out.append(self.flag() if item == "flag" else self.atom())
            if self.peek() == ord(")"):
                self.pos += 1
                return out
            self.sp()

    def date_time(self) -> datetime:
        """date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone."""
        raw = self.quoted().decode("ascii", "replace")
        m = _DATE_TIME.fullmatch(raw)
        if m is None or m.group(2).capitalize() not in _MONTHS:
            raise self.error(f"bad date-time {raw!r}")
        zone = m.group(7)
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5]))
        try:
            return datetime(
                int(m.group(3)), _MONTHS.index(m.group(2).capitalize()) + 1,
                int(m.group(1).strip()), int(m.group(4)), int(m.group(5)), int(m.group(6)),
                tzinfo=timezone(-offset if zone[0] == "-" else offset),
            )
        except ValueError:
            raise self.error(f"bad date-time {raw!r}") from None

    def date(self) -> date:
        """date = date-text / DQUOTE date-text DQUOTE; date-text = d[d]-Mon-yyyy."""
        raw = self.quoted() if self.peek() == 0x22 else self._run(_ATOM_SPECIALS)
        m = re.fullmatch(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})", raw)
        month = m.group(2).decode().capitalize() if m else ""
        if m is None or month not in _MONTHS:
            raise self.error(f"bad date {raw.decode('latin-1')!r}")
        try:
            return date(int(m.group(3)), _MONTHS.index(month) + 1, int(m.group(1)))
        except ValueError:
            raise self.error(f"bad date {raw.decode('latin-1')!r}") from None


_DATE_TIME = re.compile(
    r"([ 0-9]?[0-9])-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-][0-9]{4})"
)
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
