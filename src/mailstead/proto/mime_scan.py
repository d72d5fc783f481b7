"""The top-level header scanned for named fields only, and a one-part message's tree built
from them: what Sieve reads of every message it is delivered (sieve/interp.py), at a fraction
of the cost of ``mime.parse``, with exactly its answers (tests/unit/test_mime.py compares
them). A header ``parse`` must read itself (a stray line, a bare CR, no empty line, too many
fields) is left to it."""

from __future__ import annotations

import re
from functools import lru_cache

from mailstead.proto.mime import (
    MAX_FIELDS,
    HeaderField,
    Part,
    _apply_content_headers,
    _body_text,
    _count_lines,
    _is_message,
    _unfold,
)

# A top-level header as ``_parse_header`` reads it in the common case: from the first octet,
# only field lines and their continuations, then an empty line. Anything else (a stray line,
# a bare CR, no empty line) is left to ``parse``.
_PLAIN_HEADER = re.compile(rb"(?:[!-9;-~]+[ \t]*:[^\n]*+\n(?:[ \t][^\n]*+\n)*+)*+\r?\n")
_ANY_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:([^\n]*+\n(?:[ \t][^\n]*+\n)*+)", re.MULTILINE)


def field_finder(names: frozenset[str] | None) -> re.Pattern[bytes]:
    """What ``scan_header`` looks for: the fields called one of ``names`` (any case), or every
    field for None. A name that cannot be a field name (RFC 5322 2.2) finds nothing."""
    if names is None:
        return _ANY_FIELD
    usable = sorted(n.encode("ascii") for n in names
                    if n and n.isascii() and all("!" <= c <= "~" and c != ":" for c in n))
    if not usable:
        return re.compile(rb"(?!)")  # nothing
    alternatives = b"|".join(re.escape(n) for n in usable)
    return re.compile(rb"^(" + alternatives + rb")[ \t]*:([^\n]*+\n(?:[ \t][^\n]*+\n)*+)",
                      re.MULTILINE | re.IGNORECASE)


def scan_header(data: bytes, finder: re.Pattern[bytes]) -> tuple[list[HeaderField], int] | None:
    """The top-level header fields that ``finder`` (from ``field_finder``) names, in their
    order, and where the header ends; exactly what ``parse`` finds for them (same names,
    values and offsets), without building the others. None for a header that ``parse`` must
    read itself (see _PLAIN_HEADER, or more fields than MAX_FIELDS)."""
    m = _PLAIN_HEADER.match(data)
    if m is None:
        return None
    end = m.end()
    if end > MAX_FIELDS and data.count(b"\n", 0, end) > MAX_FIELDS:
        return None  # (a header of fewer octets cannot have more lines)
    fields = [HeaderField(f.group(1).decode("ascii"), _unfold(f.group(2)), f.start(), f.end())
              for f in finder.finditer(data, 0, end)]
    return fields, end


def single_part(data: bytes, header_end: int, fields: list[HeaderField]) -> Part | None:
    """The part tree ``parse`` would build for a message whose top-level header ends at
    ``header_end`` and whose first Content-Type, Content-Transfer-Encoding and
    Content-Disposition fields (where present) are among ``fields``, when that tree is one
    leaf (not multipart, not an encapsulated message); else None. ``fields`` are kept as the
    part's fields."""
    model = leaf_model(fields)
    if model is None:
        return None
    return Part(0, header_end, header_end, len(data), list(fields),
                raw_type=model.raw_type, raw_subtype=model.raw_subtype,
                raw_params=list(model.raw_params), params=dict(model.params),
                type_defaulted=model.type_defaulted,
                raw_transfer_encoding=model.raw_transfer_encoding,
                raw_disposition=model.raw_disposition,
                disposition_params=list(model.disposition_params), filename=model.filename,
                lines=_count_lines(data, header_end, len(data)))


def leaf_model(fields: list[HeaderField]) -> Part | None:
    """What a message's content fields (the first of each name among ``fields``) make of its
    one part: a Part with no offsets, shared (not to be changed); None when they make it a
    multipart or a message (see single_part)."""
    first: dict[str, str] = {}
    for f in fields:
        name = f.name.lower()
        if name in CONTENT_FIELDS and name not in first:
            first[name] = f.value
    content = (first.get("content-type"), first.get("content-transfer-encoding"),
               first.get("content-disposition"))
    size = len(content[0] or "") + len(content[1] or "") + len(content[2] or "")
    return _leaf_model(*content) if size <= _MODEL_SIZE else _leaf_model.__wrapped__(*content)


def leaf_text(data: bytes, header_end: int, model: Part) -> str:
    """``part_text`` of the part ``single_part`` would build with ``model`` (its body runs
    from ``header_end`` to the end of ``data``), without building it."""
    return _body_text(data[header_end:], model.transfer_encoding, model.charset)


# The fields that make a part what it is (RFC 2045 5, 6; RFC 2183): what ``leaf_model`` reads,
# and what a Sieve body test needs scanned (RFC 5173 5).
CONTENT_FIELDS = ("content-type", "content-transfer-encoding", "content-disposition")
_MODEL_SIZE = 2048  # characters of the three fields past which a model is not kept


@lru_cache(maxsize=256)
def _leaf_model(content_type: str | None, transfer_encoding: str | None,
                disposition: str | None) -> Part | None:
    """What _apply_content_headers makes of these fields (it reads no other), as a part
    ``single_part`` copies; None for a multipart or a message. Kept: most messages carry
    one of a few Content-Type values."""
    named = (("Content-Type", content_type), ("Content-Transfer-Encoding", transfer_encoding),
             ("Content-Disposition", disposition))
    part = Part(0, 0, 0, 0, [HeaderField(n, v, 0, 0) for n, v in named if v is not None])
    _apply_content_headers(part, ("text", "plain"))
    if part.is_multipart or _is_message(part):
        return None
    return part
