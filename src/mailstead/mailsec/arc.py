"""ARC (RFC 8617): verifying the chain on inbound mail, sealing mail we forward.

dkimpy does the cryptography. Its sealing needs the ``authres`` package to read our
Authentication-Results; without it ``seal`` leaves the message unsealed (and says so).
Keys: the same per-domain RSA keys as DKIM (ARC allows only rsa-sha256, RFC 8617 4.1.3).
"""

from __future__ import annotations

import asyncio
import importlib.util
import re

import dkim  # type: ignore[import-untyped]

from mailstead.core.models import DkimKey
from mailstead.dns import Resolver
from mailstead.mailsec.dkim import (
    KeyCache,
    _dkimpy_key,
    dns_selector,
    header_fields,
    prefetch_keys,
    private_key,
    signature_tags,
)
from mailstead.proto.headers import header_lines

ARC_FIELDS = ("ARC-Seal", "ARC-Message-Signature")


def can_seal() -> bool:
    return importlib.util.find_spec("authres") is not None


def _verify_chain(message: bytes, cache: KeyCache) -> str:
    try:
        status, _, _ = dkim.ARC(message).verify(dnsfunc=cache.lookup)
    except dkim.DKIMException:
        return "fail"
    if status is None:
        return "fail"
    return status.decode() if isinstance(status, bytes) else str(status)


def has_seal(message: bytes) -> bool:
    """Whether the header holds an ARC-Seal field (no chain to verify otherwise)."""
    head = header_lines(message).lower()
    return b"\narc-seal:" in b"\n" + head


async def verify(resolver: Resolver, message: bytes) -> str:
    """"none", "pass" or "fail" for the message's ARC chain (RFC 8617 5.2)."""
    if not has_seal(message):
        return "none"
    cache = KeyCache()
    await prefetch_keys(resolver, message, cache, ARC_FIELDS)
    return await asyncio.to_thread(_verify_chain, message, cache)


def newest_set(message: bytes) -> tuple[str, str]:
    """(the domain that sealed the newest ARC set, the ``dmarc=`` result its
    ARC-Authentication-Results recorded); "" for what is missing. Only meaningful once
    ``verify`` said "pass": then the seal of that domain is genuine."""
    seals = {t.get("i", ""): t.get("d", "").lower()
             for t in map(signature_tags, header_fields(message, "ARC-Seal"))}
    newest = max((i for i in seals if i.isdigit()), key=int, default="")
    if not newest:
        return "", ""
    dmarc = ""
    for value in header_fields(message, "ARC-Authentication-Results"):
        text = " ".join(value.decode("utf-8", "replace").split())
        if signature_tags(text.split(";", 1)[0].encode()).get("i") == newest:
            found = re.search(r"(?:^|;)\s*dmarc\s*=\s*([A-Za-z]+)", text)
            dmarc = found.group(1).lower() if found else ""
    return seals[newest], dmarc


def seal(key: DkimKey, domain: str, authserv_id: str, message: bytes,
         auth_results: bytes) -> bytes:
    """The ARC set (AAR, AMS, AS) for ``auth_results`` + ``message``, prepended; the message
    unchanged when sealing is not possible here."""
    if not can_seal():
        return message
    whole = auth_results + message
    fields = dkim.arc_sign(whole, dns_selector(key.selector, "rsa").encode(), domain.encode(),
                           _dkimpy_key(private_key(key, "rsa")), authserv_id.encode(),
                           include_headers=[b"from", b"to", b"cc", b"subject", b"date",
                                            b"message-id", b"mime-version",
                                            b"content-type"])
    return b"".join(fields) + message
