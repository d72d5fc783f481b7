"""The Sender Rewriting Scheme (SRS) for forwarded mail: pure functions, no I/O.

A forward keeps the original envelope sender otherwise, so the next server's SPF check of that
sender's domain fails (we are not its mail server). SRS rewrites the sender into an address at
our domain that carries the original one, a timestamp and a keyed hash, in the shape of the
common scheme (Shevek's "Sender Rewriting Scheme" paper, libsrs2, postsrsd):

    SRS0=HHHHHH=TT=orig.example=sender@our.example          (first forwarder)
    SRS1=HHHHHH=hop1.example==HHHHHH=TT=orig.example=sender@our.example   (re-forwarding)

TT is the day number (days since the epoch, modulo 1024) in two base32 characters. The hash is
an HMAC-SHA256 of the fields after it, truncated to six base32 characters (30 bits). Base32 is
case-insensitive, so a relay that folds the case of an address does not break it (libsrs2 uses
base64 and retries the comparison ignoring case, which leaves about as many bits). The fields
are hashed in lower case for the same reason.

A bounce to an SRS0 address is sent back to ``sender@orig.example`` if the hash matches and
the timestamp is at most ``max_age`` days old; an SRS1 address goes back to the SRS0 address
at ``hop1.example`` (whose forwarder checks its own hash). Anything else is refused: otherwise
the address would make us an open relay.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Sequence

_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
HASH_LENGTH = 6
STAMP_CYCLE = 1024  # two base32 characters
SEPARATOR = "="


class SrsError(Exception):
    """An SRS address that may not be reversed: malformed, forged (bad hash) or expired."""


def is_srs(local: str) -> bool:
    head = local[:5].upper()
    return head in ("SRS0=", "SRS1=")


def today() -> int:
    return int(time.time() // 86400)


def _stamp(day: int) -> str:
    day %= STAMP_CYCLE
    return _BASE32[day >> 5] + _BASE32[day & 31]


def _stamp_age(stamp: str, day: int) -> int:
    """Days since ``stamp`` was made (modulo the cycle); SrsError when it is not a stamp."""
    stamp = stamp.upper()
    if len(stamp) != 2 or any(c not in _BASE32 for c in stamp):
        raise SrsError("malformed SRS timestamp")
    made = _BASE32.index(stamp[0]) << 5 | _BASE32.index(stamp[1])
    return (day - made) % STAMP_CYCLE


def _hash(key: bytes, *fields: str) -> str:
    digest = hmac.new(key, "\0".join(fields).lower().encode("utf-8"), hashlib.sha256).digest()
    return base64.b32encode(digest).decode("ascii")[:HASH_LENGTH]


def _check_hash(keys: Sequence[bytes], given: str, *fields: str) -> None:
    given = given.upper()
    if not any(hmac.compare_digest(_hash(key, *fields), given) for key in keys):
        raise SrsError("SRS address with a bad hash (forged)")


def forward(sender: str, srs_domain: str, key: bytes, day: int | None = None) -> str:
    """The envelope sender for ``sender``'s mail forwarded by us. The null sender stays null."""
    if not sender:
        return ""
    local, _, domain = sender.rpartition("@")
    if not local or not domain:
        return sender
    head = local[:5].upper()
    if head == "SRS0=":
        # Re-forwarding an SRS0 address of another forwarder: SRS1 keeps that forwarder's
        # domain and its whole SRS0 part ("=HHH=TT=d=l", hence the "==").
        rest = local[4:]
        return f"SRS1={_hash(key, domain, rest)}={domain}={rest}@{srs_domain}"
    if head == "SRS1=":
        # Already SRS1: the first forwarder stays named, only the hash is ours.
        parts = local[5:].split(SEPARATOR, 2)
        if len(parts) == 3 and parts[2].startswith(SEPARATOR):
            first, rest = parts[1], parts[2]
            return f"SRS1={_hash(key, first, rest)}={first}={rest}@{srs_domain}"
    stamp = _stamp(today() if day is None else day)
    return f"SRS0={_hash(key, stamp, domain, local)}={stamp}={domain}={local}@{srs_domain}"


def reverse(local: str, keys: Sequence[bytes], max_age: int, day: int | None = None) -> str:
    """The address a bounce to ``local@<srs domain>`` goes back to. SrsError when the address
    is malformed, its hash does not match one of ``keys`` or it is older than ``max_age``
    days."""
    head = local[:5].upper()
    if head == "SRS0=":
        parts = local[5:].split(SEPARATOR, 3)
        if len(parts) != 4 or not all(parts):
            raise SrsError("malformed SRS0 address")
        given, stamp, domain, original = parts
        _check_hash(keys, given, stamp, domain, original)
        if _stamp_age(stamp, today() if day is None else day) > max_age:
            raise SrsError("SRS address expired")
        return f"{original}@{domain}"
    if head == "SRS1=":
        parts = local[5:].split(SEPARATOR, 2)
        if len(parts) != 3 or not parts[0] or not parts[1] or len(parts[2]) < 2 \
                or not parts[2].startswith(SEPARATOR):
            raise SrsError("malformed SRS1 address")
        given, first, rest = parts
        _check_hash(keys, given, first, rest)
        return f"SRS0{rest}@{first}"
    raise SrsError("not an SRS address")
