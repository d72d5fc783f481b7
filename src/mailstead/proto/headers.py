"""What the SMTP server reads in a message's header section before it takes the message: how many
``Received:`` trace fields it carries (loop detection, RFC 5321 6.3) and the mailboxes of its
``From:`` field, read by a strict RFC 5322 parser (submission checks them against the sender).

Pure code. Only the header section is looked at: it ends at the first empty line (RFC 5322 2.1).
"""

from __future__ import annotations

import re
from itertools import islice

from mailstead.core.errors import InvalidInput

_RECEIVED_RE = re.compile(rb"^received[ \t]*:", re.IGNORECASE | re.MULTILINE)
# A field's first line and its folded continuation lines (RFC 5322 2.2.3).
_FROM_RE = re.compile(rb"^from[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)", re.IGNORECASE | re.MULTILINE)


def header_section(message: bytes) -> bytes:
    """The header fields, up to (not including) the empty line; the whole message without one."""
    if message.startswith(b"\r\n"):
        return b""
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[: end + 2]


def header_lines(message: bytes) -> bytes:
    """The header fields up to the empty line, without its CRLF (the whole message without
    one): ``message.split(b"\\r\\n\\r\\n", 1)[0]`` without copying the body, which is
    most of a large message and which the checks that read only the header never look at."""
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[:end]


def count_received(header: bytes, stop_after: int) -> int:
    """``Received:`` fields in ``header``, counted up to ``stop_after + 1`` (enough to tell a
    message over the limit without counting all of a hostile one's)."""
    return sum(1 for _ in islice(_RECEIVED_RE.finditer(header), stop_after + 1))


def from_fields(header: bytes) -> list[str]:
    """Every ``From:`` field's value, unfolded; invalid UTF-8 becomes U+FFFD (it cannot then
    match an address anyone owns)."""
    values = []
    for match in _FROM_RE.finditer(header):
        value = match.group(1).replace(b"\r\n", b"").rstrip(b"\r")
        values.append(value.decode("utf-8", "replace"))
    return values


# -- a strict mailbox-list parser (RFC 5322 3.4, UTF-8 per RFC 6532 3.2) -------------------------

_WSP = " \t"
# atext (RFC 5322 3.2.3) plus any non-ASCII character (RFC 6532 3.2).
_ATEXT_ASCII = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                         "!#$%&'*+-/=?^_`{|}~")


def _is_atext(ch: str) -> bool:
    return ch in _ATEXT_ASCII or ord(ch) >= 0x80


def _is_vchar_or_utf8(ch: str) -> bool:
    """VCHAR (RFC 5234) or non-ASCII: what qtext, ctext and quoted-pair draw on."""
    return 0x21 <= ord(ch) <= 0x7E or ord(ch) >= 0x80


class _MailboxListParser:
    """Recursive descent over one unfolded field value. Obsolete syntax (RFC 5322 4) is refused,
    except the full stop in a display name (``John Q. Public <jqp@example.org>``, obs-phrase),
    which is common and cannot hide an address."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _fail(self, what: str) -> InvalidInput:
        return InvalidInput(f"{what} at character {self.pos + 1}")

    def cfws(self) -> None:
        """Skips white space and (nested) comments."""
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch in _WSP:
                self.pos += 1
            elif ch == "(":
                self._comment()
            else:
                return

    def _comment(self) -> None:
        depth = 0
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            self.pos += 1
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    return
            elif ch == "\\":
                self._quoted_pair()
            elif ch not in _WSP and not _is_vchar_or_utf8(ch):
                self.pos -= 1
                raise self._fail("control character in a comment")
        raise self._fail("unterminated comment")

    def _quoted_pair(self) -> str:
        ch = self._peek()
        if not ch or not (ch in _WSP or _is_vchar_or_utf8(ch)):
            raise self._fail("bad quoted-pair")
        self.pos += 1
        return ch

    def _atext_run(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and _is_atext(self.text[self.pos]):
            self.pos += 1
        return self.text[start:self.pos]

    def _quoted_string(self) -> str:
        """The quoted-string as written, quotes included (the caller only looks at it)."""
        start = self.pos
        self.pos += 1  # the opening DQUOTE
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            self.pos += 1
            if ch == '"':
                return self.text[start:self.pos]
            if ch == "\\":
                self._quoted_pair()
            elif ch not in _WSP and not _is_vchar_or_utf8(ch):
                self.pos -= 1
                raise self._fail("control character in a quoted string")
        raise self._fail("unterminated quoted string")

    def _dot_atom_text(self, what: str) -> str:
        parts = [self._atext_run()]
        while self._peek() == ".":
            self.pos += 1
            parts.append(self._atext_run())
        if not all(parts):
            raise self._fail(f"bad {what}")
        return ".".join(parts)

    def addr_spec(self) -> str:
        """local-part "@" domain, with the CFWS either side already skipped by the caller."""
        quoted = self._peek() == '"'
        local = self._quoted_string() if quoted else self._dot_atom_text("local part")
        self.cfws()
        if self._peek() != "@":
            raise self._fail("'@' expected")
        self.pos += 1
        self.cfws()
        if self._peek() == "[":
            raise self._fail("domain literals are not accepted")
        domain = self._dot_atom_text("domain")
        return f"{local}@{domain}"

    def mailbox(self) -> str:
        """name-addr / addr-spec: the address only."""
        self.cfws()
        start = self.pos
        try:
            address = self.addr_spec()
            self.cfws()
            if self._peek() in ("", ","):
                return address
        except InvalidInput:
            pass
        self.pos = start  # not a bare addr-spec: [display-name] angle-addr
        words = 0
        while self._peek() not in ("<", ""):
            ch = self._peek()
            if ch == '"':
                self._quoted_string()
            elif ch == "." and words:  # obs-phrase
                self.pos += 1
            elif not self._atext_run():
                raise self._fail(f"unexpected {ch!r}")
            words += 1
            self.cfws()
        if self._peek() != "<":
            raise self._fail("'<' expected")
        self.pos += 1
        self.cfws()
        address = self.addr_spec()
        self.cfws()
        if self._peek() != ">":
            raise self._fail("'>' expected")
        self.pos += 1
        self.cfws()
        return address

    def mailbox_list(self) -> list[str]:
        addresses = [self.mailbox()]
        while self._peek() == ",":
            self.pos += 1
            addresses.append(self.mailbox())
        if self.pos != len(self.text):
            raise self._fail(f"unexpected {self._peek()!r}")
        return addresses


def parse_mailbox_list(value: str) -> list[str]:
    """The addr-specs (``local@domain`` as written) of an RFC 5322 mailbox-list such as a From:
    field's value, unfolded. Strict: groups, empty members, domain literals, unbalanced quotes
    or comments and control characters raise InvalidInput, so the addresses found are exactly
    the ones a mail reader would show."""
    if any(ch in "\r\n\x00" for ch in value):
        raise InvalidInput("control character in the field")
    return _MailboxListParser(value).mailbox_list()
