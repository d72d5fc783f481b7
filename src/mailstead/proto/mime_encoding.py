"""Content-Transfer-Encodings (RFC 2045 section 6) where Python's own codecs fall short:
quoted-printable decoding that follows the RFC's rules for padding and soft breaks, and turning
the binary parts of a message (RFC 3516 APPEND with a literal8) into base64 ones. Pure code."""

from __future__ import annotations

import base64
import binascii
import re
from typing import TYPE_CHECKING

from mailstead.proto.lines import normalize_line_ends

if TYPE_CHECKING:
    from mailstead.proto.mime import Part

BASE64_LINE = 76  # RFC 2045 6.8: encoded lines are at most 76 characters
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")


def decode_base64(body: bytes) -> bytes:
    """A base64 body decoded leniently (RFC 2045 6.8: characters outside the alphabet are
    ignored); a lone trailing sextet, which carries no whole octet, is dropped."""
    clean = _NOT_BASE64.sub(b"", body)
    if len(clean) % 4 == 1:
        clean = clean[:-1]
    return binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))


def decode_quoted_printable(body: bytes) -> bytes:
    """Decodes a quoted-printable body. RFC 2045 6.7 rule 3: blanks at the end of an encoded
    line are transport padding and are deleted when decoding; so an "=" followed only by
    blanks ends the line as a soft line break (rule 5). binascii does neither, so the blanks go
    first, a line at a time (bytes methods, no regular expression that could backtrack over a
    long run of blanks)."""
    lines = body.split(b"\n")
    for i, line in enumerate(lines):
        if line.endswith(b"\r"):
            stripped = line[:-1].rstrip(b" \t")
            if len(stripped) != len(line) - 1:
                lines[i] = stripped + b"\r"
        elif line[-1:] in (b" ", b"\t"):
            lines[i] = line.rstrip(b" \t")
    return binascii.a2b_qp(b"\n".join(lines))


def encode_base64_lines(content: bytes) -> bytes:
    """``content`` in base64, in CRLF-ended lines of 76 characters."""
    encoded = base64.b64encode(content)
    return b"".join(encoded[i : i + BASE64_LINE] + b"\r\n"
                    for i in range(0, len(encoded), BASE64_LINE))


def _is_binary(data: bytes, part: Part) -> bool:
    return part.transfer_encoding == "binary" or data.find(b"\x00", part.body_start,
                                                           part.body_end) >= 0


def _binary_leaves(part: Part) -> list[Part]:
    if part.children:
        return [leaf for child in part.children for leaf in _binary_leaves(child)]
    if part.encapsulated is not None:
        return _binary_leaves(part.encapsulated)
    return [part]


def base64_binary_parts(data: bytes, root: Part) -> bytes:
    """The message with every leaf part that holds binary content (a NUL, or declared
    ``binary``) sent as base64 instead, its Content-Transfer-Encoding field replaced.

    RFC 3516 4.3 lets a client APPEND binary content in a literal8; such a part cannot travel
    in an ordinary literal (RFC 9051 4.3: no NUL), so, as Dovecot does, the server stores it
    base64-encoded: BODY[] then shows a valid MIME message, and BINARY[] still gives back the
    exact octets (decoded). Parts without binary content are left byte for byte."""
    edits: list[Edit] = []
    for part in _binary_leaves(root):
        if part.is_multipart or not _is_binary(data, part):
            continue
        encoded = encode_base64_lines(data[part.body_start : part.body_end])
        edits += _reencoded(part, encoded.removesuffix(b"\r\n"), b"base64")
    return _apply(data, edits)


Edit = tuple[int, int, bytes]  # replace data[start:end] with these octets


def _reencoded(part: Part, body: bytes, cte: bytes, added: bytes = b"") -> list[Edit]:
    """The edits that give ``part`` a new body in encoding ``cte``: its Content-Transfer-
    Encoding fields go, the new one (and ``added`` fields) is put at the end of its header."""
    fields_end = part.fields[-1].end if part.fields else part.header_start
    edits = [(f.start, f.end, b"") for f in part.fields
             if f.name.lower() == "content-transfer-encoding"]
    blank_line = b"" if part.header_end > fields_end else b"\r\n"
    edits.append((fields_end, fields_end,
                  b"Content-Transfer-Encoding: " + cte + b"\r\n" + added + blank_line))
    edits.append((part.body_start, part.body_end, body))
    return edits


def _apply(data: bytes, edits: list[Edit]) -> bytes:
    """``data`` with the (non-overlapping) edits made."""
    if not edits:
        return data
    out: list[bytes] = []
    pos = 0
    for start, end, replacement in sorted(edits, key=lambda e: (e[0], e[1])):
        out.append(data[pos:start])
        out.append(replacement)
        pos = end
    out.append(data[pos:])
    return b"".join(out)


# -- lines for servers that keep RFC 5322's limit ------------------------------------------------

LINE_LIMIT = 998  # RFC 5322 2.1.1: a line MUST be at most 998 characters, CRLF excluded
_CRLF = b"\r\n"


def _longest(data: bytes, start: int, end: int) -> int:
    """Length of the longest line in ``data[start:end]``, line ends excluded."""
    if end - start <= LINE_LIMIT:
        return end - start
    return max(map(len, data[start:end].split(_CRLF)))


def has_long_lines(data: bytes) -> bool:
    """True when a line of ``data`` (CRLF line ends) is longer than RFC 5322 allows."""
    return _longest(data, 0, len(data)) > LINE_LIMIT


def _alterable(part: Part) -> list[Part]:
    """``part`` and the parts below it whose bytes may change: not the inside of a
    multipart/signed, whose signature covers its first part octet for octet (RFC 1847 2.1)."""
    if part.content_type == ("multipart", "signed"):
        return [part]
    found = [part]
    for child in part.children:
        found += _alterable(child)
    if part.encapsulated is not None:
        found += _alterable(part.encapsulated)
    return found


def _fold(line: bytes) -> bytes:
    """A header line longer than the limit, folded before white space where there is some
    (RFC 5322 2.2.3: folding is a CRLF inserted before WSP); a run without WSP stays long."""
    out: list[bytes] = []
    while len(line) > LINE_LIMIT:
        cut = max(line.rfind(b" ", 1, LINE_LIMIT), line.rfind(b"\t", 1, LINE_LIMIT))
        if cut <= 0 or not line[:cut].strip(b" \t"):
            break
        out.append(line[:cut])
        line = line[cut:]
    out.append(line)
    return _CRLF.join(out)


def _encoded_body(data: bytes, part: Part) -> tuple[bytes, bytes]:
    """The part's body in an encoding with short lines, and that encoding's name."""
    body = data[part.body_start : part.body_end]
    cte = part.transfer_encoding
    if cte == "base64":
        return encode_base64_lines(decode_base64(body)).removesuffix(_CRLF), b"base64"
    if cte == "quoted-printable":
        body = decode_quoted_printable(body)
    textual = part.content_type[0] in ("text", "message") and b"\x00" not in body
    if not textual or cte == "binary":
        return encode_base64_lines(body).removesuffix(_CRLF), b"base64"
    # RFC 2045 6.7: CRLF stays a hard line break, other lines get soft breaks at 76.
    # (binascii ends its soft breaks with LF alone when the body holds no CRLF.)
    encoded = binascii.b2a_qp(body, quotetabs=False, istext=True, header=False)
    return normalize_line_ends(encoded), b"quoted-printable"


def shorten_long_lines(data: bytes, root: Part) -> bytes:
    """``data`` with no line over 998 octets where MIME allows it, for a server that keeps RFC
    5322's limit (RFC 5321 4.5.3.1.6 lets a relay refuse longer lines). Parts holding a longer
    line are re-encoded, as the RFC 2045 6.7 and 6.8 encodings exist for: text in
    quoted-printable, anything else (or anything with a NUL) in base64, a base64 part re-wrapped;
    a header line is folded at white space. The content each part decodes to is unchanged, and
    parts without a long line are left byte for byte. Long lines outside any part (a multipart
    preamble), header lines without white space and anything inside a multipart/signed stay as
    they are."""
    edits: list[Edit] = []
    parts = _alterable(root)
    for part in parts:
        for f in part.fields:
            if f.end - f.start > LINE_LIMIT and _longest(data, f.start, f.end) > LINE_LIMIT:
                raw = data[f.start : f.end].removesuffix(_CRLF)
                folded = _CRLF.join(_fold(line) for line in raw.split(_CRLF))
                edits.append((f.start, f.start + len(raw), folded))
    for part in parts:
        if (part.is_multipart or part.encapsulated is not None
                or _longest(data, part.body_start, part.body_end) <= LINE_LIMIT):
            continue
        encoded, cte = _encoded_body(data, part)
        added = b""
        if part is root and root.get("MIME-Version") is None:
            added = b"MIME-Version: 1.0\r\n"  # RFC 2045 4: the encoding field needs it
        replaced = {f.start for f in part.fields if f.name.lower() == "content-transfer-encoding"}
        edits = [e for e in edits if e[0] not in replaced]  # a folded CTE field goes anyway
        edits += _reencoded(part, encoded, cte, added)
    return _apply(data, edits)
