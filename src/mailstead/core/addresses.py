"""Mail addresses: parsing, normalising (IDNA domains, case), plus-tags.

Pure code: no I/O. The rules follow RFC 5321 section 4.1.2 (Mailbox syntax) and RFC 6531 (UTF-8
local parts), narrowed to what a mail server should accept from the wire: no source routes, no
``%`` hacks, no quoted local parts that hide a second address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from mailstead.core.errors import InvalidInput

# Local part: dot-atom of RFC 5321 "atext", extended to any non-ASCII code point (RFC 6531).
_ATEXT = r"[A-Za-z0-9!#$&'*+/=?^_`{|}~\-\u0080-\U0010FFFF]"
_LOCAL_RE = re.compile(rf"^{_ATEXT}+(\.{_ATEXT}+)*$")
_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")

MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 255  # RFC 5321 4.5.3.1.2
MAX_PATH = 256  # RFC 5321 4.5.3.1.3


@lru_cache(maxsize=4096)
def normalize_domain(domain: str) -> str:
    """Lower-case a domain and turn Unicode labels into their IDNA (xn--) form. Memoised: the
    idna codec is slow, and the same few domains come with every command."""
    domain = domain.strip().rstrip(".")
    if not domain:
        raise InvalidInput("empty domain")
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise InvalidInput(f"invalid domain {domain!r}: {exc}") from None
    if len(ascii_domain) > MAX_DOMAIN:
        raise InvalidInput(f"domain {domain!r} is too long")
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_LABEL_RE.match(label) for label in labels):
        raise InvalidInput(f"invalid domain {domain!r}")
    return ascii_domain


@dataclass(frozen=True, slots=True)
class Address:
    """A normalised mail address: local part as given (case kept), domain lower-case IDNA."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def key(self) -> str:
        """The form used to look accounts up: local part folded to lower case."""
        return f"{self.local.lower()}@{self.domain}"

    def without_tag(self, separator: str = "+") -> Address:
        """``user+tag@d`` -> ``user@d`` (plus-addressing); unchanged when there is no tag."""
        base, sep, _tag = self.local.partition(separator)
        if sep and base:
            return Address(base, self.domain)
        return self

    @property
    def is_ascii(self) -> bool:
        return self.local.isascii()


def parse_address(text: str) -> Address:
    """Parse ``local@domain`` (no angle brackets). Raises InvalidInput with the reason."""
    text = text.strip()
    if "@" not in text:
        raise InvalidInput(f"address {text!r} has no @domain")
    local, _, domain = text.rpartition("@")
    if not local:
        raise InvalidInput(f"address {text!r} has an empty local part")
    if local.startswith('"'):
        raise InvalidInput(f"quoted local parts are not accepted: {text!r}")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART and not (
            local[:5].upper() in ("SRS0=", "SRS1=") and len(text) <= MAX_PATH):
        # SRS addresses (bounces to forwarded mail) carry a whole address in their local
        # part; RFC 5321 4.5.3.1 asks servers to take objects past the limits where they can.
        raise InvalidInput(f"local part of {text!r} is longer than {MAX_LOCAL_PART} octets")
    if not _LOCAL_RE.match(local):
        raise InvalidInput(f"invalid local part in {text!r}")
    if "%" in local or "!" in local:
        # user%other@us and bang paths are classic relay tricks (RFC 5321 3.6.1 lets us refuse).
        raise InvalidInput(f"routing characters are not accepted in {text!r}")
    return Address(local, normalize_domain(domain))


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()
