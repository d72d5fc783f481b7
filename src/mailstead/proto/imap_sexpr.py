"""Serialise Python values into IMAP response syntax (RFC 3501 / RFC 9051 section 4 and 9).

Mapping used by :func:`encode`:

- ``None``               -> ``NIL``
- ``int``                -> decimal digits (``number`` / ``number64``)
- :class:`Atom`          -> emitted verbatim (flag names, keywords such as ``BODYSTRUCTURE``)
- ``str`` / ``bytes``    -> an IMAP string: quoted when short and "safe", otherwise a literal
- ``list`` / ``tuple``   -> a parenthesised list, elements separated by one space
- :class:`Unspaced`      -> its elements back to back, no parentheses and no separators; needed
  for ``body-type-mpart = 1*body SP media-subtype`` where the child bodies are not separated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import cast

# Longest string still sent quoted. Longer values go as literals so response lines stay short.
MAX_QUOTED = 1000
_NOT_QUOTABLE = re.compile(rb"[\r\n\x00]")  # never inside a quoted string


class Atom(str):
    """A string that is written as is, never quoted (NIL, flags, keywords, section names)."""

    __slots__ = ()


class Unspaced(tuple):  # type: ignore[type-arg]
    """Elements encoded back to back with nothing between them and no surrounding parentheses."""

    __slots__ = ()


def literal(b: bytes) -> bytes:
    """A synchronising literal ``{n}CRLF<bytes>`` (RFC 3501 section 4.3)."""
    return b"{%d}\r\n" % len(b) + b


def literal8(b: bytes) -> bytes:
    """A binary literal ``~{n}CRLF<bytes>`` (RFC 3516), the only form that may carry NUL."""
    return b"~{%d}\r\n" % len(b) + b


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def quoted_or_literal(b: bytes, utf8_ok: bool = False) -> bytes:
    """Quote ``b`` when allowed, otherwise make it a literal.

    A quoted string may not contain CR, LF or NUL (RFC 3501 ``QUOTED-CHAR``). 8-bit octets are
    only allowed quoted when ``utf8_ok`` (IMAP4rev2 / UTF8=ACCEPT) and the bytes are valid UTF-8
    (RFC 9051 section 4.3).
    """
    if (len(b) <= MAX_QUOTED and _NOT_QUOTABLE.search(b) is None
            and (b.isascii() or (utf8_ok and _is_utf8(b)))):
        if b"\\" in b or b'"' in b:
            b = b.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'"' + b + b'"'
    return literal(b)


def encode(value: object, utf8_ok: bool = False) -> bytes:
    """Encode a value tree (see module docstring) as IMAP response bytes."""
    # The usual types first, by identity: this runs for every value of every message.
    kind = type(value)
    if kind is str:
        return quoted_or_literal(cast(str, value).encode("utf-8"), utf8_ok)
    if value is None:
        return b"NIL"
    if kind is list or kind is Unspaced:
        parts = [encode(v, utf8_ok) for v in cast(list[object], value)]
        return b"".join(parts) if kind is Unspaced else b"(" + b" ".join(parts) + b")"
    if kind is int:
        return b"%d" % cast(int, value)
    if isinstance(value, Atom):
        return value.encode("utf-8")
    if isinstance(value, bool):  # bool is an int subclass; refuse rather than print "True"
        raise TypeError("cannot encode a bool as IMAP")
    if isinstance(value, int):
        return str(value).encode("ascii")
    if isinstance(value, str):
        return quoted_or_literal(value.encode("utf-8"), utf8_ok)
    if isinstance(value, bytes | bytearray | memoryview):
        return quoted_or_literal(bytes(value), utf8_ok)
    if isinstance(value, Unspaced):
        return b"".join(encode(v, utf8_ok) for v in value)
    if isinstance(value, list | tuple):
        return b"(" + b" ".join(_encode_all(value, utf8_ok)) + b")"
    raise TypeError(f"cannot encode {type(value).__name__} as IMAP")


def _encode_all(values: Iterable[object], utf8_ok: bool) -> list[bytes]:
    return [encode(v, utf8_ok) for v in values]
