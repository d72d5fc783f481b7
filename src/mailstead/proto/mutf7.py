"""Modified UTF-7 mailbox names (RFC 3501 section 5.1.3), used by IMAP4rev1 clients.

Printable US-ASCII except '&' stands for itself; '&' is written "&-"; any other run of
characters is UTF-16BE in base64 with ',' instead of '/', no padding, between '&' and '-'.
Pure code.
"""

from __future__ import annotations

import base64
import binascii


class MUTF7Error(ValueError):
    """The name is not valid modified UTF-7."""


def _is_direct(ch: str) -> bool:
    return 0x20 <= ord(ch) <= 0x7E


def encode(name: str) -> str:
    """UTF-8 name -> modified UTF-7 (only ASCII characters in the result)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            b64 = base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")
            out.append("&" + b64 + "-")
            pending.clear()

    for ch in name:
        if _is_direct(ch):
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def decode(name: str) -> str:
    """Modified UTF-7 -> UTF-8 text. Strict: raises MUTF7Error on anything a conforming
    client would not produce (raw 8-bit, bad base64, encoded printable ASCII)."""
    out: list[str] = []
    i = 0
    n = len(name)
    while i < n:
        ch = name[i]
        if not _is_direct(ch):
            raise MUTF7Error(f"character {ch!r} must be encoded")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise MUTF7Error("unterminated '&' sequence")
        chunk = name[i + 1 : end]
        if chunk and name.startswith("-&", end) and name[end + 2 : end + 3] not in ("-", ""):
            # RFC 3501 5.1.3: null shifts ("-&" while in BASE64) are not permitted; one run
            # of characters is one sequence, or two spellings would name one mailbox.
            raise MUTF7Error("two adjacent base64 sequences")
        i = end + 1
        if not chunk:
            out.append("&")
            continue
        out.append(_decode_chunk(chunk))
    return "".join(out)


def _decode_chunk(chunk: str) -> str:
    b64 = chunk.replace(",", "/")
    if "/" in chunk or any(c not in _B64_CHARS for c in b64):
        raise MUTF7Error(f"bad base64 in {chunk!r}")
    try:
        raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise MUTF7Error(f"bad base64 in {chunk!r}") from None
    if len(raw) % 2:
        raise MUTF7Error(f"odd UTF-16 length in {chunk!r}")
    if base64.b64encode(raw).decode("ascii").rstrip("=") != b64:
        # Unused low bits set in the last character: another spelling of the same name.
        raise MUTF7Error(f"non-canonical base64 in {chunk!r}")
    try:
        text = raw.decode("utf-16-be")
    except UnicodeDecodeError:
        raise MUTF7Error(f"bad UTF-16 in {chunk!r}") from None
    if any(_is_direct(c) for c in text):
        raise MUTF7Error("printable ASCII must not be base64-encoded")
    return text


_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
