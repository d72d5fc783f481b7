"""MIME part tree with exact byte offsets, its parameters, encoded words and transfer encodings.
The IMAP views built on it (ENVELOPE, BODYSTRUCTURE, BODY[...] sections) are in mime_imap.py,
address lists in mime_address.py.

Pure code: bytes in, values out. :func:`parse` never raises, whatever the input; every part
records offsets into the original message so ``BODY[1.2]`` returns the original octets rather
than a re-serialisation (RFC 3501 / RFC 9051 section 6.4.5).

Offsets of a :class:`Part` (all into the message bytes passed to :func:`parse`):

- ``header_start .. header_end``: the header, *including* the blank line that ends it (when there
  is one). This is what ``BODY[HEADER]`` / ``BODY[1.MIME]`` return.
- ``body_start .. body_end``: the body; ``body_start == header_end`` always. For a part of a
  multipart the CRLF before the next boundary belongs to the boundary (RFC 2046 section 5.1.1),
  so it is not in the body.

Section specs (``mime_imap.section``) accept the text between the brackets of ``BODY[...]``,
e.g. ``'1.2.HEADER.FIELDS (FROM TO)'``, or a ``SectionSpec`` from ``parse_section_spec``.
"""

from __future__ import annotations

import binascii
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import unquote_to_bytes

from mailstead.core.models import Envelope
from mailstead.proto.mime_address import _skip_comment, parse_addresses
from mailstead.proto.mime_encoding import decode_base64, decode_quoted_printable

__all__ = [
    "HeaderField",
    "Part",
    "SectionSpecError",
    "UnknownEncoding",
    "decode_text",
    "decoded_header",
    "has_attachment",
    "header_value",
    "html_to_text",
    "parse",
    "parse_envelope_fields",
    "text_for_search",
    "text_parts",
]

# Limits that keep hostile messages from exhausting the stack or memory. Deeper or further
# parts are kept as opaque leaves, so their bytes are still reachable through their parent.
MAX_DEPTH = 40
MAX_PARTS = 10_000
# Header fields kept per header: past this many the rest of the header is skipped at C speed
# (its bytes stay in BODY[HEADER]); 100,000 one-line fields would otherwise cost seconds of
# CPU on the event loop for every reader of the message (issue 16).
MAX_FIELDS = 10_000
MAX_TOTAL_FIELDS = 20_000  # the same over all the headers of one message (its parts')

IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})
KNOWN_ENCODINGS = IDENTITY_ENCODINGS | {"base64", "quoted-printable"}


class UnknownEncoding(Exception):
    """BINARY asked for a part whose Content-Transfer-Encoding we cannot undo (RFC 3516
    ``[UNKNOWN-CTE]``)."""

    def __init__(self, encoding: str) -> None:
        super().__init__(f"unknown Content-Transfer-Encoding {encoding!r}")
        self.encoding = encoding


class SectionSpecError(ValueError):
    """The section text of BODY[...] / BINARY[...] is not valid RFC 3501 / RFC 9051 syntax."""


# ---------------------------------------------------------------------------------------------
# Part tree


@dataclass(eq=False, slots=True)
class HeaderField:
    name: str  # as written
    value: str  # unfolded (line breaks removed), stripped; 8-bit decoded as UTF-8 or Latin-1
    start: int  # offset of the field name
    end: int  # offset after the field's last line ending


@dataclass(eq=False)
class Part:
    header_start: int
    header_end: int
    body_start: int
    body_end: int
    fields: list[HeaderField] = field(default_factory=list)
    # Content-Type as written (case kept, for BODYSTRUCTURE) and lower-cased (for logic).
    raw_type: str = "TEXT"
    raw_subtype: str = "PLAIN"
    raw_params: list[tuple[str, str]] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)  # lower-case names, RFC 2231 decoded
    type_defaulted: bool = True  # no (valid) Content-Type header
    raw_transfer_encoding: str = "7BIT"
    raw_disposition: str | None = None
    disposition_params: list[tuple[str, str]] = field(default_factory=list)
    filename: str | None = None
    lines: int = 0
    children: list[Part] = field(default_factory=list)
    encapsulated: Part | None = None

    @property
    def content_type(self) -> tuple[str, str]:
        return self.raw_type.lower(), self.raw_subtype.lower()

    @property
    def mime_type(self) -> str:
        return "{}/{}".format(*self.content_type)

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(f.name, f.value) for f in self.fields]

    @property
    def size(self) -> int:
        return self.body_end - self.body_start

    @property
    def is_multipart(self) -> bool:
        return self.content_type[0] == "multipart"

    @property
    def transfer_encoding(self) -> str:
        return self.raw_transfer_encoding.lower()

    @property
    def charset(self) -> str | None:
        if "charset" in self.params:
            return self.params["charset"]
        return "us-ascii" if self.content_type[0] == "text" else None

    @property
    def disposition(self) -> str | None:
        return self.raw_disposition.lower() if self.raw_disposition else None

    def get(self, name: str) -> str | None:
        """The first header field called ``name`` (case-insensitive), unfolded, or None."""
        lname = name.lower()
        for f in self.fields:
            if f.name.lower() == lname:
                return f.value
        return None

    def walk(self) -> Iterator[Part]:
        """This part and every part below it, depth first, entering encapsulated messages."""
        yield self
        for child in self.children:
            yield from child.walk()
        if self.encapsulated is not None:
            yield from self.encapsulated.walk()


def parse(data: bytes) -> Part:
    """Parse a whole message into its part tree. Never raises."""
    budget = [MAX_PARTS, MAX_TOTAL_FIELDS]
    return _parse_entity(data, 0, len(data), ("text", "plain"), 0, budget)


# A header field starts with a name of printable ASCII other than ':' (RFC 5322 section 2.2),
# optionally followed by white space (obsolete syntax, RFC 5322 section 4.5).
_FIELD_START = re.compile(rb"[!-9;-~]+[ \t]*:")


def _text(b: bytes) -> str:
    """Header bytes to text: UTF-8 when valid (RFC 6532), else Latin-1 so nothing is lost."""
    try:
        s = b.decode("utf-8")
    except UnicodeDecodeError:
        s = b.decode("latin-1")
    return s.replace("\x00", "")


def _unfold(b: bytes) -> str:
    return _text(b.replace(b"\r", b"").replace(b"\n", b"")).strip()


def _parse_header(
    data: bytes, start: int, end: int, limit: int = MAX_FIELDS
) -> tuple[list[HeaderField], int]:
    """Header fields in data[start:end] and the offset where the header ends.

    The header is a run of field and continuation lines; a blank line ends it (and belongs to
    it), as does the first line that is not a field (which then starts the body).
    """
    fields: list[HeaderField] = []
    pos = start
    name = ""
    field_start = value_start = -1

    def finish(at: int) -> None:
        if field_start >= 0:
            fields.append(HeaderField(name, _unfold(data[value_start:at]), field_start, at))

    while pos < end:
        if len(fields) >= limit:
            header_end = _skip_fields(data, pos, end)
            # Once the whole message's budget is spent, only what shapes the part tree.
            keys = _KEY_FIELDS if limit == MAX_FIELDS else _MIME_FIELDS
            fields += _late_fields(data, field_start if field_start >= 0 else pos, header_end,
                                   keys)
            return fields, header_end
        nl = data.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        first = data[pos : pos + 1]
        if first in (b"\n", b"\r") and data[pos:line_end].rstrip(b"\r\n") == b"":
            finish(pos)
            return fields, line_end
        if first in (b" ", b"\t") and field_start >= 0:
            pos = line_end  # continuation of the current field
            continue
        m = _FIELD_START.match(data, pos, line_end)
        if m is None:
            finish(pos)
            return fields, pos
        finish(pos)
        field_start = pos
        value_start = m.end()
        name = data[pos : m.end() - 1].rstrip(b" \t").decode("ascii")
        pos = line_end
    finish(end)
    return fields, end


# Fields still looked for past MAX_FIELDS (each name found with bytes.find, so at C speed):
# what the envelope, SEARCH on the usual headers and the MIME structure read.
_KEY_FIELDS = (
    b"subject", b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc", b"date", b"message-id",
    b"in-reply-to", b"references", b"mime-version", b"content-type",
    b"content-transfer-encoding", b"content-disposition",
)
_COLON = re.compile(rb"[ \t]*:")
_FIELD_VALUE = re.compile(rb"[^\n]*+(?:\n[ \t][^\n]*+)*+")
MAX_LATE_FIELDS = 100
MAX_LATE_MISSES = 1000
LATE_WINDOW = 64 * 1024


_MIME_FIELDS = (b"content-type", b"content-transfer-encoding", b"content-disposition")


def _late_fields(
    data: bytes, start: int, end: int, keys: tuple[bytes, ...] = _KEY_FIELDS
) -> list[HeaderField]:
    """The key fields among those past MAX_FIELDS, in their order. Only the header's last
    LATE_WINDOW bytes are read: relays add their trace fields on top, so a message's own
    From, Subject... come last; the cost stays bounded whatever the header holds."""
    if end - start > LATE_WINDOW:
        cut = data.find(b"\n", end - LATE_WINDOW, end)
        start = end if cut < 0 else cut + 1
    # From the line end before it, so every field starts after a "\n" (one is made up at 0).
    lower = b"\n" + data[:end].lower() if start == 0 else data[start - 1 : end].lower()
    start -= 1
    found: list[HeaderField] = []
    misses = 0
    for key in keys:
        needle = b"\n" + key
        at = lower.find(needle)
        while at >= 0 and len(found) < MAX_LATE_FIELDS and misses < MAX_LATE_MISSES:
            name_start = start + at + 1
            colon = _COLON.match(data, name_start + len(key), end)
            if colon is None:
                misses += 1
            else:
                value = _FIELD_VALUE.match(data, colon.end(), end)
                value_end = value.end() if value is not None else colon.end()
                name = data[name_start : name_start + len(key)].decode("ascii")
                found.append(HeaderField(name, _unfold(data[colon.end() : value_end]),
                                         name_start, min(value_end + 1, end)))
            at = lower.find(needle, at + 1)
    found.sort(key=lambda f: f.start)
    return found


def _skip_fields(data: bytes, pos: int, end: int) -> int:
    """Where a header with more than MAX_FIELDS fields ends: after its first blank line (so
    at C speed; a stray line that is no field does not end such a header early)."""
    for blank in (b"\n", b"\r\n"):
        if data.startswith(blank, pos, end):
            return pos + len(blank)
    nl = data.find(b"\n", pos, end)
    if data[pos : pos + 1] not in (b" ", b"\t") and not _FIELD_START.match(
            data, pos, end if nl < 0 else nl + 1):
        return pos  # not a field: the header ends here (a part without one, say)
    ends = [at for at in (data.find(b"\n\n", pos, end), data.find(b"\n\r\n", pos, end))
            if at >= 0]
    if not ends:
        return end
    at = min(ends)
    return data.find(b"\n", at + 1, end) + 1


def _count_lines(data: bytes, start: int, end: int) -> int:
    if start >= end:
        return 0
    n = data.count(b"\n", start, end)
    return n if data[end - 1 : end] == b"\n" else n + 1


def _parse_entity(
    data: bytes,
    start: int,
    end: int,
    default_type: tuple[str, str],
    depth: int,
    budget: list[int],
) -> Part:
    budget[0] -= 1
    fields, header_end = _parse_header(data, start, end, min(MAX_FIELDS, max(budget[1], 0)))
    budget[1] -= len(fields)
    part = Part(start, header_end, header_end, end, fields)
    _apply_content_headers(part, default_type)

    if part.is_multipart:
        boundary = part.params.get("boundary", "")
        if boundary and depth < MAX_DEPTH and budget[0] > 0:
            _split_multipart(data, part, boundary, depth, budget)
        else:
            # Unusable multipart: show it as the plain text it effectively is.
            part.raw_type, part.raw_subtype, part.raw_params, part.params = "TEXT", "PLAIN", [], {}
    if not part.is_multipart:
        part.lines = _count_lines(data, part.body_start, part.body_end)
    if (
        _is_message(part)
        and part.transfer_encoding in IDENTITY_ENCODINGS
        and depth < MAX_DEPTH
        and budget[0] > 0
    ):
        part.encapsulated = _parse_entity(
            data, part.body_start, part.body_end, ("text", "plain"), depth + 1, budget
        )
    return part


def _is_message(part: Part) -> bool:
    # RFC 9051 treats message/global (RFC 6532) like message/rfc822.
    return part.content_type in (("message", "rfc822"), ("message", "global"))


def _split_multipart(data: bytes, part: Part, boundary: str, depth: int, budget: list[int]) -> None:
    """Find the body parts between boundary delimiter lines (RFC 2046 section 5.1.1)."""
    marker = b"--" + boundary.encode("utf-8", "replace")
    child_default = ("message", "rfc822") if part.content_type[1] == "digest" else ("text", "plain")
    content_start: int | None = None  # start of the body part being collected
    for start, end, close in _delimiters(data, marker, part.body_start, part.body_end):
        if content_start is not None:
            if budget[0] <= 0:
                break  # too many parts: the rest stays inside the last one
            child_end = _before_line_end(data, start, content_start)
            part.children.append(
                _parse_entity(data, content_start, child_end, child_default, depth + 1, budget)
            )
        content_start = None if close else end
        if content_start is None:
            break  # close delimiter: the rest is the epilogue
    if content_start is not None:  # no close delimiter: the last part runs to the end
        part.children.append(
            _parse_entity(data, content_start, part.body_end, child_default, depth + 1, budget)
        )
    if not part.children:
        # No delimiter at all. IMAP needs at least one body part (RFC 3501 body-type-mpart),
        # so expose the whole body as a single header-less text part.
        whole = Part(part.body_start, part.body_start, part.body_start, part.body_end)
        whole.raw_params = [("CHARSET", "US-ASCII")]
        whole.params = {"charset": "US-ASCII"}
        whole.lines = _count_lines(data, whole.body_start, whole.body_end)
        part.children.append(whole)


def _delimiters(data: bytes, marker: bytes, start: int, end: int
                ) -> Iterator[tuple[int, int, bool]]:
    """(start, end, is the close delimiter) of each delimiter line in data[start:end]: the
    marker ("--" boundary) at the start of a line, "--" for the close delimiter, blanks, then
    the line end or the end of the part (RFC 2046 5.1.1). Found with bytes.find: a regex per
    boundary would be compiled for every message, as each has its own boundary."""
    size = len(marker)
    pos = start
    while True:
        i = data.find(marker, pos, end)
        if i < 0:
            return
        pos = i + 1
        if i > 0 and data[i - 1] != 0x0A:  # not at the start of a line
            continue
        j = i + size
        close = data.startswith(b"--", j, end)
        if close:
            j += 2
        while j < end and data[j] in (0x20, 0x09):
            j += 1
        if j < end:
            if data[j] == 0x0A:
                j += 1
            elif data[j] == 0x0D and j + 1 < end and data[j + 1] == 0x0A:
                j += 2
            else:
                continue
        yield i, j, close
        pos = j


def _before_line_end(data: bytes, pos: int, floor: int) -> int:
    """Step back over the line ending that precedes a delimiter (it belongs to the delimiter)."""
    if pos > floor and data[pos - 1 : pos] == b"\n":
        pos -= 1
        if pos > floor and data[pos - 1 : pos] == b"\r":
            pos -= 1
    return pos


# ---------------------------------------------------------------------------------------------
# Content-Type, Content-Disposition and their parameters (RFC 2045, RFC 2183, RFC 2231)

_TSPECIALS = set('()<>@,;:\\"/[]?=')


def _is_token(s: str) -> bool:
    return bool(s) and all(" " < c < "\x7f" and c not in _TSPECIALS for c in s)



def _parse_mime_value(value: str) -> tuple[str, list[tuple[str, str]]]:
    """Split ``head; name=value; name="quoted value"`` leniently.

    Comments are dropped, quoted strings unquoted; an unquoted value runs to the next ';' so
    the common ``name=my file.pdf`` still works. Parameters without '=' are ignored.
    """
    n = len(value)
    i = 0
    head: list[str] = []
    while i < n and value[i] != ";":
        if value[i] == "(":
            i = _skip_comment(value, i)
            continue
        head.append(value[i])
        i += 1
    params: list[tuple[str, str]] = []
    while i < n:
        i += 1  # the ';'
        name: list[str] = []
        while i < n and value[i] not in "=;":
            if value[i] == "(":
                i = _skip_comment(value, i)
                continue
            name.append(value[i])
            i += 1
        if i >= n or value[i] == ";":
            continue
        i += 1  # the '='
        while i < n and value[i] in " \t":
            i += 1
        if i < n and value[i] == '"':
            i += 1
            chars: list[str] = []
            while i < n and value[i] != '"':
                if value[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(value[i])
                i += 1
            text = "".join(chars)
            while i < n and value[i] != ";":
                i += 1
        else:
            stop = value.find(";", i)
            stop = n if stop < 0 else stop
            text = _strip_trailing_comment(value[i:stop].strip())
            i = stop
        key = "".join(name).strip()
        if key:
            params.append((key, text))
    return "".join(head).strip(), params


def _strip_trailing_comment(text: str) -> str:
    """'value (comment)' -> 'value'; done with rfind, as a regex here could go quadratic."""
    if text.endswith(")"):
        opening = text.rfind("(")
        if opening > 0:
            return text[:opening].rstrip()
    return text


# Section numbers of at most 9 ASCII digits (int() refuses over 4300; \d takes any script's).
_SECTION_PARAM = re.compile(r"([^*]+)\*(?:([0-9]{1,9})(\*)?)?")


def _decode_charset(b: bytes, charset: str) -> str:
    """Decode with a declared charset; unknown or unusable charsets fall back to UTF-8."""
    name = charset.strip().strip('"').lower()
    if name and name not in ("us-ascii", "ascii"):  # 8-bit "us-ascii" text is common
        try:
            return b.decode(name, "replace")
        except Exception:  # unknown charset, or a codec that is not text->text
            pass
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b.decode("windows-1252", "replace")


def _combine_params(raw: list[tuple[str, str]]) -> dict[str, str]:
    """Lower-case names, RFC 2231 continuations and charset'lang'%XX values decoded."""
    plain: dict[str, str] = {}
    sections: dict[str, dict[int, tuple[str, bool]]] = {}
    for name, value in raw:
        lname = name.strip().lower()
        m = _SECTION_PARAM.fullmatch(lname)
        if m is None:
            plain.setdefault(lname, value)
            continue
        base, index, star = m.groups()
        if index is None:  # "name*": one encoded section
            sections.setdefault(base, {}).setdefault(0, (value, True))
        else:
            sections.setdefault(base, {}).setdefault(int(index), (value, star is not None))
    for base, parts in sections.items():
        charset = ""
        chunks: list[bytes] = []
        ordered = sorted(parts)  # once: sorting in the loop made many sections quadratic
        for index in ordered:
            value, encoded = parts[index]
            if encoded:
                if index == ordered[0]:
                    pieces = value.split("'", 2)
                    if len(pieces) == 3:
                        charset, _lang, value = pieces
                chunks.append(unquote_to_bytes(value))
            else:
                chunks.append(value.encode("utf-8"))
        plain[base] = _decode_charset(b"".join(chunks), charset or "utf-8")
    return plain


def _apply_content_headers(part: Part, default_type: tuple[str, str]) -> None:
    ctype = part.get("Content-Type")
    parsed = False
    if ctype is not None:
        head, params = _parse_mime_value(ctype)
        head = "".join(head.split())
        maintype, slash, subtype = head.partition("/")
        if slash and _is_token(maintype) and _is_token(subtype):
            part.raw_type, part.raw_subtype, part.raw_params = maintype, subtype, params
            part.type_defaulted = False
            parsed = True
    if not parsed:  # RFC 2045 section 5.2 default (message/rfc822 in a digest, RFC 2046 5.1.5)
        if default_type == ("message", "rfc822"):
            part.raw_type, part.raw_subtype, part.raw_params = "MESSAGE", "RFC822", []
        else:
            part.raw_type, part.raw_subtype = "TEXT", "PLAIN"
            part.raw_params = [("CHARSET", "US-ASCII")]
    part.params = _combine_params(part.raw_params)

    cte = part.get("Content-Transfer-Encoding")
    if cte:
        token = re.sub(r"\([^()]*\)", "", cte).strip()
        if token:
            part.raw_transfer_encoding = token.split()[0]

    disposition = part.get("Content-Disposition")
    filename: str | None = None
    if disposition is not None:
        head, params = _parse_mime_value(disposition)
        if _is_token(head):
            part.raw_disposition = head
            part.disposition_params = params
            filename = _combine_params(params).get("filename")
    if filename is None:
        filename = part.params.get("name")
    part.filename = decoded_header(filename) if filename else None


# ---------------------------------------------------------------------------------------------
# RFC 2047 encoded words

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"\s+")


def _word_bytes(encoding: str, text: str) -> bytes | None:
    if encoding in "bB":
        clean = re.sub(r"[^A-Za-z0-9+/]", "", text)
        clean = clean[: len(clean) - len(clean) % 4 if len(clean) % 4 == 1 else len(clean)]
        try:
            return binascii.a2b_base64(clean + "=" * (-len(clean) % 4))
        except binascii.Error:
            return None
    try:
        return binascii.a2b_qp(text.encode("ascii", "replace"), header=True)
    except binascii.Error:
        return None


def decoded_header(value: str) -> str:
    """Decode RFC 2047 encoded words into Unicode; leaves everything else as it is.

    White space between two adjacent encoded words is dropped (RFC 2047 section 6.2), and
    adjacent words in the same charset are decoded together so a character split across
    two words survives.
    """
    value = value.replace("\r", "").replace("\n", "")
    out: list[str] = []
    pending: list[bytes] = []
    pending_charset = ""
    pos = 0
    after_word = False  # the previous thing consumed was an encoded word

    def flush() -> None:
        if pending:
            out.append(_decode_charset(b"".join(pending), pending_charset))
            pending.clear()

    for m in _ENCODED_WORD.finditer(value):
        gap = value[pos : m.start()]
        charset = m.group(1).split("*", 1)[0]  # RFC 2231 section 5: charset*language
        raw = _word_bytes(m.group(2), m.group(3))
        if raw is None:
            continue
        if gap and not (after_word and _BETWEEN_WORDS.fullmatch(gap)):
            flush()
            out.append(gap)
        elif pending and charset.lower() != pending_charset.lower():
            flush()
        pending_charset = charset
        pending.append(raw)
        pos = m.end()
        after_word = True
    flush()
    out.append(value[pos:])
    return "".join(out).replace("\x00", "")  # NUL cannot be stored in a PostgreSQL text column


# ---------------------------------------------------------------------------------------------
# Transfer encodings (RFC 2045 section 6)

def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'



def decode_transfer_encoding(body: bytes, encoding: str) -> bytes:
    """Undo a Content-Transfer-Encoding (RFC 2045 section 6). Raises UnknownEncoding."""
    encoding = encoding.lower()
    if encoding in IDENTITY_ENCODINGS or not encoding:
        return body
    if encoding == "base64":
        return decode_base64(body)
    if encoding == "quoted-printable":
        return decode_quoted_printable(body)
    raise UnknownEncoding(encoding)


# ---------------------------------------------------------------------------------------------
# Helpers for delivery, SEARCH and flags


def header_value(data: bytes, root: Part, name: str) -> str | None:
    """The first ``name`` field of the message header, unfolded and raw, or None."""
    return root.get(name)


# "[^<>]" keeps both patterns linear: a stray '<' never makes the engine rescan to the end.
_TAG = re.compile(r"<[^<>]*>")
_SCRIPT_OR_STYLE = re.compile(r"<(script|style)\b", re.IGNORECASE)


def html_to_text(text: str) -> str:
    """Rough HTML to text for SEARCH: drop script/style content and tags, unescape entities."""
    kept: list[str] = []
    pos = 0
    while (m := _SCRIPT_OR_STYLE.search(text, pos)) is not None:
        kept.append(text[pos : m.start()])
        close = re.compile(r"</" + m.group(1) + r"[^<>]*>", re.IGNORECASE).search(text, m.end())
        if close is None:  # unclosed: the rest is script too
            pos = len(text)
            break
        pos = close.end()
    kept.append(text[pos:])
    return html.unescape(_TAG.sub(" ", " ".join(kept)))


def text_parts(data: bytes, root: Part | None = None) -> list[tuple[Part, str]]:
    """Every text/* part with its decoded text (transfer encoding and charset undone; HTML
    left as HTML), for SEARCH and the spam filter's tokens."""
    if root is None:
        root = parse(data)
    return [(part, part_text(data, part)) for part in root.walk()
            if not part.is_multipart and part.content_type[0] == "text"]


def part_text(data: bytes, part: Part) -> str:
    """One part's body as text: transfer encoding and charset undone (HTML left as HTML)."""
    return _body_text(data[part.body_start : part.body_end], part.transfer_encoding,
                      part.charset)


def decode_text(body: bytes, transfer_encoding: str, charset: str | None) -> str:
    """A text body as text: transfer encoding and charset undone (the spam filter's tokens
    decode the start of a long part with it)."""
    return _body_text(body, transfer_encoding, charset)


def _body_text(body: bytes, transfer_encoding: str, charset: str | None) -> str:
    try:
        body = decode_transfer_encoding(body, transfer_encoding)
    except (UnknownEncoding, binascii.Error):
        pass
    return _decode_charset(body, charset or "utf-8")


def text_for_search(data: bytes, root: Part | None = None) -> str:
    """The decoded text of every text/* part, for SEARCH BODY / TEXT (RFC 3501 6.4.4)."""
    chunks = [html_to_text(text) if part.content_type[1] == "html" else text
              for part, text in text_parts(data, root)]
    return "\n".join(chunks).replace("\x00", "")


def _display_addresses(value: str | None) -> str:
    """An address list in readable form: 'Alice <alice@example.test>, bob@example.test'."""
    if not value:
        return ""
    out: list[str] = []
    for name, _adl, mailbox, host in parse_addresses(value):
        if mailbox is None:
            continue
        if host is None:  # group start: the group's name
            out.append(decoded_header(mailbox) + ":")
            continue
        addr = f"{mailbox}@{host}" if host else mailbox
        if name:
            display = decoded_header(name)
            if any(c in display for c in ',;:<>@"'):  # keep the list splittable
                display = _quote(display)
            out.append(f"{display} <{addr}>")
        else:
            out.append(addr)
    return ", ".join(out).replace(":, ", ": ")


def parse_header_only(data: bytes) -> Part:
    """The top-level header of a message as a Part without its body parsed: enough for
    ENVELOPE and header lookups, at a third of the cost of ``parse`` for a multipart message.
    The fields are those ``parse`` finds (the same limit on their number)."""
    fields, header_end = _parse_header(data, 0, len(data), MAX_FIELDS)
    return Part(0, header_end, header_end, len(data), fields)


def parse_envelope_fields(data: bytes) -> Envelope:
    """The store's envelope columns, parsed once at delivery / APPEND time."""
    fields, _header_end = _parse_header(data, 0, len(data))  # the body is not needed here
    first: dict[str, str] = {}  # the first field of each name, as Part.get finds it
    for f in fields:
        first.setdefault(f.name.lower(), f.value)
    date: datetime | None = None
    raw_date = first.get("date")
    if raw_date:
        try:
            date = parsedate_to_datetime(raw_date)
        except (TypeError, ValueError, IndexError, OverflowError):
            date = None
        if date is not None and date.tzinfo is None:  # "-0000": UTC, zone unknown (RFC 5322)
            date = date.replace(tzinfo=UTC)
    return Envelope(
        subject=decoded_header(first.get("subject", "")),
        from_=_display_addresses(first.get("from")),
        to=_display_addresses(first.get("to")),
        cc=_display_addresses(first.get("cc")),
        date=date,
        message_id=first.get("message-id", ""),
        in_reply_to=first.get("in-reply-to", ""),
        references=first.get("references", "").replace("\r", "").replace("\n", ""),
    )


def has_attachment(root: Part) -> bool:
    """True when some part is an attachment: disposition "attachment" or a named non-text part."""
    for part in root.walk():
        if part.is_multipart:
            continue
        if part.disposition == "attachment":
            return True
        if part.filename and part.content_type[0] not in ("text", "multipart"):
            return True
    return False

