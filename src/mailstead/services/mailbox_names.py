"""Mailbox names: the hierarchy separator, normalisation (INBOX, NFC, limits) and the
parents a name implies."""

from __future__ import annotations

from mailstead.core.errors import InvalidInput
from mailstead.store.interfaces import Mailbox

SEPARATOR = "/"
MAX_NAME_BYTES = 512
MAX_LEVELS = 16


def normalize_name(name: str) -> str:
    """Checks a mailbox name and returns its stored form ("INBOX" upper-cased as a first level,
    one trailing separator dropped, RFC 9051 6.3.4). Names that could escape or confuse are
    refused with InvalidInput: empty levels, leading '/', '.' and '..' levels, a leading '~'
    (a home directory to servers that map names to paths, RFC 3501 5.1.3), NUL and other
    controls, the LIST wildcards '*' and '%', invalid UTF-8."""
    if name.endswith(SEPARATOR) and len(name) > 1:
        name = name[:-1]
    if not name:
        raise InvalidInput("empty mailbox name")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput("mailbox name is not valid UTF-8") from None
    if size > MAX_NAME_BYTES:
        raise InvalidInput("mailbox name too long")
    if name.startswith(SEPARATOR):
        raise InvalidInput("mailbox name must not start with '/'")
    if name.startswith("~"):
        raise InvalidInput("mailbox name must not start with '~'")
    # RFC 9051 5.1: no C0 or C1 controls, DEL, LINE SEPARATOR or PARAGRAPH SEPARATOR.
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "*%\u2028\u2029" for c in name):
        raise InvalidInput("mailbox name contains a control character or a wildcard")
    levels = name.split(SEPARATOR)
    if len(levels) > MAX_LEVELS:
        raise InvalidInput("mailbox name has too many levels")
    for level in levels:
        if level in ("", ".", ".."):
            raise InvalidInput(f"mailbox name has an invalid level {level!r}")
    if levels[0].upper() == "INBOX":
        levels[0] = "INBOX"
    return SEPARATOR.join(levels)


def parents_of(name: str) -> list[str]:
    """"a/b/c" -> ["a", "a/b"]."""
    levels = name.split(SEPARATOR)
    return [SEPARATOR.join(levels[:i]) for i in range(1, len(levels))]


def is_junk(mailbox: Mailbox) -> bool:
    return mailbox.special_use == "\\Junk"
