"""What a reader is told about a message's integrity: verified, unsigned or failed.

Decided once, at delivery, and stored with the message (the ``integrity`` column); the webmail,
the JSON API and the IMAP keywords (core/models.INTEGRITY_KEYWORDS) all show that one decision.

- DMTP mail (the course protocol) carries an HMAC of its fields: no hash is *unsigned*, a hash
  that matches is *verified*, one that does not is *failed* (tampered, or a wrong secret).
- Mail from outside is judged by DKIM, read from the Authentication-Results field that *we*
  wrote at ingest (RFC 8601 5: only a field whose authserv-id is ours is believed; the SMTP
  server removes incoming fields that claim our name): a passing signature of the From domain
  (relaxed alignment, as DMARC) is *verified*, a signature that does not verify is *failed*,
  no signature (or only a third party's) is *unsigned*. A signature whose key could not be
  looked up (temperror) leaves it unknown.

Pure functions: no I/O, so each case is a unit test.
"""

from __future__ import annotations

import re

from mailstead.core.models import Integrity
from mailstead.mailsec.dmarc import aligned
from mailstead.proto import dmtp

# The X-DMTP-Integrity field of a DMTP message, one value per state.
DMTP_HEADER_VALUES: dict[Integrity, str] = {"verified": "pass", "unsigned": "none",
                                            "failed": "fail"}

# DKIM results (RFC 8601 2.7.1) that say the signature is broken, not merely unverifiable:
# "fail" (it does not verify) and "permerror" (it cannot ever verify: a bad tag, no key).
_BROKEN = frozenset({"fail", "permerror"})
_COMMENT = re.compile(r"\([^()]*\)")
_PROPERTY = re.compile(r"([A-Za-z0-9_.\-]+)\s*=\s*(\S+)")


def dmtp_integrity(secret: str, message: dmtp.DmtpMessage) -> Integrity | None:
    """The state of a DMTP message; None when no secret is configured, so a hash that is
    there cannot be checked."""
    if not (message.hash or "").strip():
        return "unsigned"
    if not secret:
        return None
    return "verified" if dmtp.hash_verifies(secret, message) else "failed"


def _fields(head: bytes, name: bytes) -> list[str]:
    """The unfolded values of every ``name`` field of a header block (CRLF or LF lines)."""
    values: list[list[bytes]] = []
    current: list[bytes] | None = None
    wanted = name.lower() + b":"
    for line in head.replace(b"\r\n", b"\n").split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)
            continue
        current = None
        if line.lower().startswith(wanted):
            current = [line[len(wanted):]]
            values.append(current)
    return [b" ".join(v).decode("utf-8", "replace") for v in values]


def _our_results(auth_results: bytes, authserv_id: str) -> list[dict[str, str]] | None:
    """The resinfo parts (method, result, properties) of the Authentication-Results field
    naming ``authserv_id``; None when there is no such field."""
    ours = authserv_id.strip().lower()
    for value in _fields(auth_results, b"Authentication-Results"):
        parts = _COMMENT.sub(" ", value).split(";")
        ident = parts[0].split()
        # RFC 8601 2.2: authserv-id [ CFWS authres-version ]
        if not ident or ident[0].lower() != ours:
            continue
        found = []
        for part in parts[1:]:
            props = dict((k.lower(), v) for k, v in _PROPERTY.findall(part))
            method = part.split("=", 1)[0].strip().lower()
            if method and method in props:
                props["method"], props["result"] = method, props.pop(method).lower()
                found.append(props)
        return found
    return None


def dkim_integrity(auth_results: bytes, authserv_id: str,
                   from_domain: str | None = None) -> Integrity | None:
    """The state of mail from outside, from our Authentication-Results field in
    ``auth_results`` (the header fields we prepended, or the message's header). The From
    domain is ``from_domain``, else the header.from our DMARC result named. None when we
    did not judge the message (no field of ours: verification off or it timed out) or could
    not look a signing key up."""
    results = _our_results(auth_results, authserv_id)
    if results is None:
        return None
    if from_domain is None:
        from_domain = next((r.get("header.from", "") for r in results
                            if r["method"] == "dmarc"), "")
    dkim = [r for r in results if r["method"] == "dkim"]
    if from_domain and any(r["result"] == "pass" and r.get("header.d")
                           and aligned(r["header.d"], from_domain, "r") for r in dkim):
        return "verified"
    if any(r["result"] in _BROKEN for r in dkim):
        return "failed"
    if any(r["result"] == "temperror" for r in dkim):
        return None  # signed, but the key could not be looked up: not known either way
    return "unsigned"
