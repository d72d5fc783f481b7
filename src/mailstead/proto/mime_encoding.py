"""Content-Transfer-Encodings (RFC 2045 section 6) where Python's own codecs fall short:
quoted-printable decoding that follows the RFC's rules for padding and soft breaks, and turning
the binary parts of a message (RFC 3516 APPEND with a literal8) into base64 ones. Pure code."""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailstead.proto.mime import Part

BASE64_LINE = 76  # RFC 2045 6.8: encoded lines are at most 76 characters


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
    edits: list[tuple[int, int, bytes]] = []
    for part in _binary_leaves(root):
        if part.is_multipart or not _is_binary(data, part):
            continue
        fields_end = part.fields[-1].end if part.fields else part.header_start
        for f in part.fields:
            if f.name.lower() == "content-transfer-encoding":
                edits.append((f.start, f.end, b""))
        blank_line = b"" if part.header_end > fields_end else b"\r\n"
        edits.append((fields_end, fields_end,
                      b"Content-Transfer-Encoding: base64\r\n" + blank_line))
        encoded = encode_base64_lines(data[part.body_start : part.body_end])
        edits.append((part.body_start, part.body_end, encoded.removesuffix(b"\r\n")))
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
