"""IMAP's views of a parsed message (mime.py): ENVELOPE and BODYSTRUCTURE (RFC 9051 7.5.2),
and the sections of BODY[...] / BINARY[...] (RFC 9051 6.4.5, RFC 3516). Pure code."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from mailstead.proto.imap_sexpr import Unspaced
from mailstead.proto.mime import (
    _SECTION_PARAM,
    Part,
    SectionSpecError,
    _is_message,
    _quote,
    decode_transfer_encoding,
    parse,
)
from mailstead.proto.mime_address import parse_addresses

__all__ = [
    "SectionSpec",
    "binary_section",
    "bodystructure",
    "envelope",
    "find_part",
    "parse_section_spec",
    "section",
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


# ---------------------------------------------------------------------------------------------
# IMAP views: ENVELOPE, BODYSTRUCTURE


def _address_field(part: Part, name: str) -> list[object] | None:
    """env-from etc.: ``"(" 1*address ")"``, the addresses written with no space between."""
    value = part.get(name)
    if not value:
        return None
    addresses = parse_addresses(value)
    if not addresses:
        return None
    return [Unspaced(list(a) for a in addresses)]


def _message_envelope(part: Part) -> list[object]:
    """RFC 3501 section 7.4.2 ENVELOPE of the message whose header is ``part``'s header."""
    from_ = _address_field(part, "From")
    sender = _address_field(part, "Sender") or from_
    reply_to = _address_field(part, "Reply-To") or from_
    date = part.get("Date")
    return [
        date or None,
        part.get("Subject"),
        from_,
        sender,
        reply_to,
        _address_field(part, "To"),
        _address_field(part, "Cc"),
        _address_field(part, "Bcc"),
        part.get("In-Reply-To") or None,
        part.get("Message-ID") or None,
    ]


def envelope(data: bytes, root: Part | None = None) -> list[object]:
    """The ENVELOPE of a message, ready for :func:`imap_sexpr.encode`. Values stay raw."""
    return _message_envelope(root if root is not None else parse(data))


def _joined_continuations(raw: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """RFC 2231 continuations (name*0, name*1*...) joined into one ``name`` or ``name*``.

    Values are not decoded: an extended value stays ``charset'lang'%XX`` under ``name*`` for
    the client to decode, but clients no longer have to reassemble sections.
    """
    out: list[tuple[str, str | None]] = []
    sections: dict[str, dict[int, tuple[str, bool]]] = {}
    slot: dict[str, int] = {}
    for name, value in raw:
        m = _SECTION_PARAM.fullmatch(name.strip())
        if m is None or m.group(2) is None:  # plain "name" or single extended "name*"
            out.append((name, value))
            continue
        base, index, star = m.groups()
        key = base.lower()
        if key not in slot:
            slot[key] = len(out)
            out.append((base, None))
        sections.setdefault(key, {}).setdefault(int(index), (value, star is not None))
    for key, parts in sections.items():
        ordered = [parts[i] for i in sorted(parts)]
        base = out[slot[key]][0]
        if not any(encoded for _value, encoded in ordered):
            out[slot[key]] = (base, "".join(value for value, _encoded in ordered))
            continue
        first, first_encoded = ordered[0]
        pieces = [first if first_encoded else "''" + quote(first, safe="")]
        pieces += [v if encoded else quote(v, safe="") for v, encoded in ordered[1:]]
        out[slot[key]] = (base + "*", "".join(pieces))
    return [(name, value) for name, value in out if value is not None]


def _params_list(params: list[tuple[str, str]]) -> list[str] | None:
    flat = [s for pair in _joined_continuations(params) for s in pair]
    return flat or None


def _extension(part: Part) -> list[object]:
    """body-fld-dsp, body-fld-lang, body-fld-loc (RFC 3501 section 7.4.2)."""
    disposition: list[object] | None = None
    if part.raw_disposition is not None:
        disposition = [part.raw_disposition, _params_list(part.disposition_params)]
    language: object = None
    lang_value = part.get("Content-Language")
    if lang_value:
        tags = [t.strip() for t in re.sub(r"\([^()]*\)", "", lang_value).split(",") if t.strip()]
        language = tags[0] if len(tags) == 1 else (tags or None)
    return [disposition, language, part.get("Content-Location") or None]


def _body(part: Part, extended: bool, rev2: bool) -> list[object]:
    if part.is_multipart:
        items: list[object] = [
            Unspaced(_body(child, extended, rev2) for child in part.children),
            part.raw_subtype,
        ]
        if extended:
            items += [_params_list(part.raw_params), *_extension(part)]
        return items

    raw_type, raw_subtype = part.raw_type, part.raw_subtype
    if _is_message(part) and part.encapsulated is None:
        # An encoded message/rfc822 cannot be parsed in place; describe it as opaque data.
        raw_type, raw_subtype = "APPLICATION", "OCTET-STREAM"
    params = list(part.raw_params)
    if part.content_type[0] == "text" and "charset" not in part.params:
        params.append(("CHARSET", "US-ASCII"))  # RFC 2045 section 5.2 default
    items = [
        raw_type,
        raw_subtype,
        _params_list(params),
        part.get("Content-ID") or None,
        part.get("Content-Description") or None,
        part.raw_transfer_encoding,
        part.size,
    ]
    # IMAP4rev1 grammar knows only message/rfc822 as body-type-msg; RFC 9051 adds
    # message/global. Anything else is described with the basic fields only.
    with_envelope = part.content_type == ("message", "rfc822") or (
        rev2 and part.content_type == ("message", "global")
    )
    if part.encapsulated is not None and with_envelope:
        inner = part.encapsulated
        items += [_message_envelope(inner), _body(inner, extended, rev2), part.lines]
    elif raw_type.lower() == "text":
        items.append(part.lines)
    if extended:
        items += [part.get("Content-MD5") or None, *_extension(part)]
    return items


def bodystructure(
    data: bytes, root: Part | None = None, extended: bool = True, imap4rev2: bool = False
) -> list[object]:
    """BODYSTRUCTURE (``extended``) or BODY of a message, ready for :func:`imap_sexpr.encode`.

    Content types, parameters and encodings are reported as written in the message; the RFC
    2045 defaults ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") ... "7BIT") fill what is missing.
    ``imap4rev2``: the session enabled IMAP4rev2, so message/global parts carry an envelope
    and body like message/rfc822 (RFC 9051 section 7.5.2); IMAP4rev1 parsers would choke.
    """
    return _body(root if root is not None else parse(data), extended, imap4rev2)


# ---------------------------------------------------------------------------------------------
# Sections: BODY[...] and BINARY[...]

_SECTION_TEXTS = ("HEADER.FIELDS.NOT", "HEADER.FIELDS", "HEADER", "TEXT", "MIME")
_PART_NUMBERS = re.compile(r"[1-9][0-9]{0,8}(?:\.[1-9][0-9]{0,8})*")  # int() takes them all
_ATOM_CHARS = re.compile(r"[^(){ \x00-\x1f\x7f%*\"\\\]]+")


@dataclass(frozen=True, slots=True)
class SectionSpec:
    """A parsed section: part path, then '' / HEADER / TEXT / MIME / HEADER.FIELDS[.NOT]."""

    part: tuple[int, ...] = ()
    text: str = ""
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        """The canonical form to echo back in the FETCH response, e.g. '1.HEADER.FIELDS (TO)'."""
        out = ".".join(str(n) for n in self.part)
        if self.text:
            out += ("." if out else "") + self.text
        if self.text.startswith("HEADER.FIELDS"):
            names = [f if _ATOM_CHARS.fullmatch(f) else _quote(f) for f in self.fields]
            out += " (" + " ".join(names) + ")"
        return out


def _parse_field_names(text: str) -> tuple[str, ...]:
    """The ``(name name "name")`` list after HEADER.FIELDS: atoms or quoted strings."""
    text = text.strip()
    if not (text.startswith("(") and text.endswith(")")):
        raise SectionSpecError("HEADER.FIELDS needs a parenthesised list of field names")
    names: list[str] = []
    inner = text[1:-1]
    i, n = 0, len(inner)
    while i < n:
        if inner[i] == " ":
            i += 1
            continue
        if inner[i] == '"':
            i += 1
            chars: list[str] = []
            while i < n and inner[i] != '"':
                if inner[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(inner[i])
                i += 1
            if i >= n:
                raise SectionSpecError("unterminated quoted field name")
            i += 1
            names.append("".join(chars))
        else:
            m = _ATOM_CHARS.match(inner, i)
            if m is None:
                raise SectionSpecError(f"bad character in field name list: {inner[i]!r}")
            names.append(m.group())
            i = m.end()
    if not names:
        raise SectionSpecError("HEADER.FIELDS needs at least one field name")
    return tuple(names)


def parse_section_spec(text: str) -> SectionSpec:
    """Parse the text between the brackets of BODY[...] (RFC 3501 / RFC 9051 ``section``).

    Raises :class:`SectionSpecError` on bad syntax (the IMAP side answers BAD).
    """
    rest = text
    numbers: tuple[int, ...] = ()
    m = _PART_NUMBERS.match(rest)
    if m is not None and (m.end() == len(rest) or rest[m.end()] == "."):
        numbers = tuple(int(n) for n in m.group().split("."))
        rest = rest[m.end() + 1 :] if m.end() < len(rest) else ""
        if not rest and m.end() < len(text):
            raise SectionSpecError("section ends with '.'")
    if not rest:
        return SectionSpec(numbers)
    upper = rest.upper()
    for name in _SECTION_TEXTS:
        if upper.startswith(name):
            after = rest[len(name) :]
            break
    else:
        raise SectionSpecError(f"unknown section text {rest!r}")
    if name == "MIME" and not numbers:
        raise SectionSpecError("MIME needs a part number")
    if name.startswith("HEADER.FIELDS"):
        if not after.startswith(" "):
            raise SectionSpecError(f"{name} needs a field list")
        return SectionSpec(numbers, name, _parse_field_names(after[1:]))
    if after:
        raise SectionSpecError(f"unexpected {after!r} after {name}")
    return SectionSpec(numbers, name)


def find_part(root: Part, numbers: tuple[int, ...]) -> Part | None:
    """The part a path like (1, 2) names (RFC 3501 section 6.4.5), or None.

    Entering a message/rfc822 part continues in its encapsulated message; a non-multipart
    message has exactly one part, numbered 1, which is the message itself.
    """
    current = root
    for i, n in enumerate(numbers):
        if i > 0 and current.encapsulated is not None:
            # Numbers after a message/rfc822 part index into the encapsulated message. The
            # root is the message already, so a root of type message/rfc822 is entered only
            # by its own part 1 ("1.1"), never by "1".
            current = current.encapsulated
        if n < 1:
            return None
        if current.is_multipart:
            if n > len(current.children):
                return None
            current = current.children[n - 1]
        elif n != 1:
            return None
    return current


def _header_fields(data: bytes, message: Part, names: tuple[str, ...], keep: bool) -> bytes:
    wanted = {n.lower() for n in names}
    out: list[bytes] = []
    for f in message.fields:
        if (f.name.lower() in wanted) == keep:
            raw = data[f.start : f.end]
            out.append(raw if raw.endswith(b"\n") else raw + b"\r\n")
    out.append(b"\r\n")  # the result ends with the blank line
    return b"".join(out)


def section(data: bytes, root: Part, spec: str | SectionSpec) -> bytes | None:
    """The octets of BODY[spec], or None when the part does not exist.

    ``spec`` is the text between the brackets (see :func:`parse_section_spec`, which may raise
    :class:`SectionSpecError`) or an already parsed :class:`SectionSpec`. HEADER, TEXT and
    HEADER.FIELDS after a part number need that part to be message/rfc822, else None.
    """
    if isinstance(spec, str):
        spec = parse_section_spec(spec)
    text = spec.text.upper()
    if text not in ("", *_SECTION_TEXTS):
        raise SectionSpecError(f"unknown section text {spec.text!r}")
    part = find_part(root, spec.part)
    if part is None:
        return None
    if text == "":
        return data if not spec.part else data[part.body_start : part.body_end]
    if text == "MIME":
        return data[part.header_start : part.header_end]
    message = root if not spec.part else part.encapsulated
    if message is None:
        return None
    if text == "HEADER":
        return data[message.header_start : message.header_end]
    if text == "TEXT":
        return data[message.body_start : message.body_end]
    return _header_fields(data, message, spec.fields, keep=text == "HEADER.FIELDS")


def binary_section(data: bytes, root: Part, part_spec: str) -> bytes | None:
    """The decoded content of BINARY[part_spec] (RFC 3516), or None if there is no such part.

    ``part_spec`` is a part path like "1.2" ("" means the whole message, returned as is).
    Raises :class:`SectionSpecError` on bad syntax, :class:`UnknownEncoding` for an unknown
    Content-Transfer-Encoding.
    """
    if part_spec == "":
        return data
    if not _PART_NUMBERS.fullmatch(part_spec):
        raise SectionSpecError(f"bad BINARY part specifier {part_spec!r}")
    part = find_part(root, tuple(int(n) for n in part_spec.split(".")))
    if part is None:
        return None
    body = data[part.body_start : part.body_end]
    if part.is_multipart:
        return body
    return decode_transfer_encoding(body, part.transfer_encoding)
