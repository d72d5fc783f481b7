"""ARC (RFC 8617): verifying the chain on inbound mail, sealing mail we forward.

dkimpy does the cryptography. Its sealing needs the ``authres`` package to read our
Authentication-Results; without it ``seal`` leaves the message unsealed (and says so).
Keys: the same per-domain RSA keys as DKIM (ARC allows only rsa-sha256, RFC 8617 4.1.3).
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import dkim  # type: ignore[import-untyped]

from mailstead.dns import Resolver
from mailstead.mailsec.dkim import (
    KeyCache,
    _dkimpy_key,
    _load_private,
    dns_selector,
    ensure_keys,
    key_dir,
    prefetch_keys,
)

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


async def verify(resolver: Resolver, message: bytes) -> str:
    """"none", "pass" or "fail" for the message's ARC chain (RFC 8617 5.2)."""
    head = message.split(b"\r\n\r\n", 1)[0].lower()
    if b"\narc-seal:" not in b"\n" + head:
        return "none"
    cache = KeyCache()
    await prefetch_keys(resolver, message, cache, ARC_FIELDS)
    return await asyncio.to_thread(_verify_chain, message, cache)


def seal(dkim_root: Path, domain: str, authserv_id: str, message: bytes,
         auth_results: bytes) -> bytes:
    """The ARC set (AAR, AMS, AS) for ``auth_results`` + ``message``, prepended; the message
    unchanged when sealing is not possible here."""
    if not can_seal():
        return message
    selector = ensure_keys(dkim_root, domain)
    key = _load_private(key_dir(dkim_root, domain) / f"{selector}.rsa.pem")
    whole = auth_results + message
    fields = dkim.arc_sign(whole, dns_selector(selector, "rsa").encode(), domain.encode(),
                           _dkimpy_key(key), authserv_id.encode(),
                           include_headers=[b"from", b"to", b"cc", b"subject", b"date",
                                            b"message-id", b"mime-version",
                                            b"content-type"])
    return b"".join(fields) + message
