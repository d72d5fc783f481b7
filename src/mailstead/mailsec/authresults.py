"""Authentication-Results (RFC 8601) and Received-SPF (RFC 7208 9.1) header fields.

We add one Authentication-Results naming our host as authserv-id, and remove any incoming one
that claims that name (5: a forger could otherwise make mail look verified).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mailstead.mailsec.dkim import DkimResult
from mailstead.mailsec.dmarc import DmarcResult
from mailstead.mailsec.spf import SpfResult
from mailstead.proto.headers import header_lines

_SAFE = re.compile(r"[^A-Za-z0-9.@+=_\-:\[\]]")


def _value(text: str) -> str:
    """A property value: kept as a token, anything else dropped (never header injection)."""
    return _SAFE.sub("", text)[:200] or "unknown"


def remove_forged(message: bytes, authserv_id: str) -> bytes:
    """Drops Authentication-Results fields whose authserv-id is ours (RFC 8601 5)."""
    if b"authentication-results" not in header_lines(message).lower():
        return message  # nothing to drop: spares splitting the header into lines
    head, sep, body = message.partition(b"\r\n\r\n")
    if not sep:
        head, body = message, b""
    lines = head.split(b"\r\n")
    kept: list[bytes] = []
    skipping = False
    ours = authserv_id.lower().encode()
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = False
        name, colon, rest = line.partition(b":")
        if colon and name.strip().lower() == b"authentication-results":
            ident = re.match(rb"\s*([^\s;]+)", rest)
            if ident is not None and ident[1].lower() == ours:
                skipping = True
                continue
        kept.append(line)
    return b"\r\n".join(kept) + (sep + body if sep else b"")


def received_spf(result: SpfResult, hostname: str, client_ip: str, mail_from: str,
                 helo: str, identity: str) -> str:
    comment = f"{hostname}: {'domain of' if identity == 'mailfrom' else 'helo'} " \
              f"{_value(result.domain)} {result.result}"
    return (f"Received-SPF: {result.result} ({comment}) client-ip={_value(client_ip)};\r\n"
            f"\tenvelope-from=\"{_value(mail_from) if mail_from else ''}\"; "
            f"helo={_value(helo)}; identity={identity}; receiver={_value(hostname)};\r\n")


def authentication_results(
    hostname: str,
    spf: SpfResult,
    spf_identity: str,
    spf_subject: str,
    dkim: Sequence[DkimResult],
    dmarc: DmarcResult,
    arc: str = "none",
) -> str:
    """One field, each method on its own folded line (RFC 8601 2.2)."""
    parts = [f"{_value(hostname)}"]
    prop = "smtp.mailfrom" if spf_identity == "mailfrom" else "smtp.helo"
    parts.append(f"spf={spf.result} {prop}={_value(spf_subject)}")
    if not dkim:
        parts.append("dkim=none")
    for result in dkim:
        parts.append(f"dkim={result.result} header.d={_value(result.domain)} "
                     f"header.s={_value(result.selector)} header.a={_value(result.algorithm)}")
    dmarc_line = f"dmarc={dmarc.result}"
    if dmarc.result == "none":
        dmarc_line += f" header.from={_value(dmarc.from_domain)}" if dmarc.from_domain else ""
    elif dmarc.from_domain:
        dmarc_line += f" (p={dmarc.policy} dis={dmarc.disposition}) " \
                      f"header.from={_value(dmarc.from_domain)}"
    parts.append(dmarc_line)
    parts.append(f"arc={arc}")
    return "Authentication-Results: " + ";\r\n\t".join(parts) + "\r\n"
