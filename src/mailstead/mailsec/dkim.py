"""DKIM (RFC 6376, RFC 8463): per-domain keys, signing outbound mail, verifying inbound mail.

The cryptography and canonicalisation are dkimpy's. Keys live in the data directory:
``dkim/<domain>/<selector>.rsa.pem`` and ``<selector>.ed25519.pem`` (mode 0600), with the
selectors in ``dkim/<domain>/selectors.json`` ({"active": "...", "all": [...]}): the active one
signs, older ones stay published until removed. Verification looks the keys up through the
injected Resolver first, then hands dkimpy a lookup function that answers from what was
fetched, so the event loop never waits on DNS inside dkimpy.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import dkim  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailstead.dns import DnsError, Resolver
from mailstead.proto.headers import header_lines

Algorithm = Literal["rsa", "ed25519"]
ALGORITHMS: tuple[Algorithm, ...] = ("rsa", "ed25519")
SIGNATURE_ALGORITHM = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}

# Headers signed, and signed once more than present ("oversigned", RFC 6376 8.15) so nobody can
# add a second one later without breaking the signature.
OVERSIGNED = ("from", "to", "cc", "subject", "date", "message-id", "reply-to", "in-reply-to",
              "references", "mime-version", "content-type", "content-transfer-encoding",
              "list-id", "list-unsubscribe", "list-unsubscribe-post")
SIGNED_IF_PRESENT = ("sender", "resent-from", "resent-date", "resent-to", "resent-cc",
                     "content-id", "content-description", "feedback-id")

DkimResultCode = Literal["pass", "fail", "neutral", "temperror", "permerror", "none"]


# -- keys -------------------------------------------------------------------------------------


def key_dir(dkim_root: Path, domain: str) -> Path:
    return dkim_root / domain.lower()


def new_selector(now: datetime | None = None) -> str:
    """Selectors named by date plus a short random part, so a rotation never reuses one."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d")
    return f"ms{stamp}{secrets.token_hex(2)}"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def read_selectors(dkim_root: Path, domain: str) -> dict[str, object]:
    path = key_dir(dkim_root, domain) / "selectors.json"
    if not path.exists():
        return {"active": "", "all": []}
    data: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _write_selectors(dkim_root: Path, domain: str, data: dict[str, object]) -> None:
    path = key_dir(dkim_root, domain) / "selectors.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    tmp.replace(path)


def create_keys(dkim_root: Path, domain: str, selector: str | None = None) -> str:
    """A new RSA-2048 and Ed25519 key pair under a new selector, made the active one; the
    previous selectors stay listed (still published) until removed. Returns the selector."""
    selector = selector or new_selector()
    folder = key_dir(dkim_root, domain)
    _write_private(folder / f"{selector}.rsa.pem",
                   _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    _write_private(folder / f"{selector}.ed25519.pem", _pem(ed25519.Ed25519PrivateKey.generate()))
    data = read_selectors(dkim_root, domain)
    known = [s for s in data.get("all", []) if isinstance(s, str) and s != selector]  # type: ignore[attr-defined]
    _write_selectors(dkim_root, domain, {"active": selector, "all": [*known, selector]})
    return selector


def remove_selector(dkim_root: Path, domain: str, selector: str) -> None:
    """Forgets a retired selector and deletes its keys (unpublish its records first). The
    active selector signs today's mail and cannot be removed: rotate first."""
    data = read_selectors(dkim_root, domain)
    kept = [s for s in data.get("all", []) if isinstance(s, str)]  # type: ignore[attr-defined]
    if selector not in kept:
        raise KeyError(f"{domain} has no DKIM selector {selector!r}")
    if selector == data.get("active"):
        raise ValueError(f"{selector} is the active selector of {domain}: rotate first")
    _write_selectors(dkim_root, domain,
                     {"active": data.get("active"), "all": [s for s in kept if s != selector]})
    for algorithm in ALGORITHMS:
        (key_dir(dkim_root, domain) / f"{selector}.{algorithm}.pem").unlink(missing_ok=True)


def ensure_keys(dkim_root: Path, domain: str) -> str:
    """The active selector, creating keys the first time a domain signs."""
    active = read_selectors(dkim_root, domain).get("active")
    if isinstance(active, str) and active and \
            (key_dir(dkim_root, domain) / f"{active}.rsa.pem").exists():
        return active
    return create_keys(dkim_root, domain)


def _load_private(path: Path) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path}: not an RSA or Ed25519 key")
    return key


def public_record(dkim_root: Path, domain: str, selector: str, algorithm: Algorithm) -> str:
    """The TXT record for <selector>._domainkey.<domain> (RFC 6376 3.6.1, RFC 8463 4)."""
    key = _load_private(key_dir(dkim_root, domain) / f"{selector}.{algorithm}.pem")
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


def record_name(selector: str, algorithm: Algorithm, domain: str) -> str:
    """Each algorithm gets its own DNS name: <selector>-<alg>._domainkey.<domain>."""
    return f"{dns_selector(selector, algorithm)}._domainkey.{domain}"


def dns_selector(selector: str, algorithm: Algorithm) -> str:
    return f"{selector}-{'rsa' if algorithm == 'rsa' else 'ed'}"


def published_records(dkim_root: Path, domain: str) -> list[tuple[str, str]]:
    """(name, TXT value) for every selector still kept, both algorithms."""
    data = read_selectors(dkim_root, domain)
    out = []
    for selector in data.get("all", []):  # type: ignore[attr-defined]
        for algorithm in ALGORITHMS:
            out.append((record_name(selector, algorithm, domain),
                        public_record(dkim_root, domain, selector, algorithm)))
    return out


def _dkimpy_key(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    """dkimpy wants RSA keys as PEM and Ed25519 keys as the base64 of the 32-byte seed."""
    if isinstance(key, rsa.RSAPrivateKey):
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    return base64.b64encode(seed)


# -- signing ----------------------------------------------------------------------------------


def _header_names(message: bytes) -> list[str]:
    head = header_lines(message)
    names = re.findall(rb"^([!-9;-~]+)[ \t]*:", head, re.M)
    return [n.decode("ascii").lower() for n in names]


def sign_message(dkim_root: Path, domain: str, message: bytes) -> bytes:
    """DKIM-Signature fields (RSA and Ed25519, relaxed/relaxed) to prepend to ``message``
    (RFC 8463 5: both, so verifiers without Ed25519 still find an RSA one)."""
    selector = ensure_keys(dkim_root, domain)
    present = _header_names(message)
    headers = [h for h in OVERSIGNED + SIGNED_IF_PRESENT if h in present]
    headers += [h for h in OVERSIGNED]  # once more: the oversigning
    fields = b""
    for algorithm in ALGORITHMS:
        key = _load_private(key_dir(dkim_root, domain) / f"{selector}.{algorithm}.pem")
        signer = dkim.DKIM(message)
        field = signer.sign(
            dns_selector(selector, algorithm).encode(), domain.encode(), _dkimpy_key(key),
            signature_algorithm=SIGNATURE_ALGORITHM[algorithm],
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[h.encode() for h in headers],
        )
        fields += field.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return fields


# -- verification ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DkimResult:
    result: DkimResultCode
    domain: str = ""  # d=
    selector: str = ""  # s=
    algorithm: str = ""  # a=
    problem: str = ""


_TAG = re.compile(rb"(?:^|;)\s*([a-z]+)\s*=\s*([^;]*)")


def signature_tags(value: bytes) -> dict[str, str]:
    """Tag=value pairs of a DKIM-Signature / ARC field value (RFC 6376 3.2), unfolded."""
    unfolded = re.sub(rb"\s+", b"", value.replace(b"\r\n", b""))
    tags: dict[str, str] = {}
    for part in unfolded.split(b";"):
        name, sep, val = part.partition(b"=")
        if sep:
            tags[name.decode("ascii", "replace")] = val.decode("ascii", "replace")
    return tags


def header_fields(message: bytes, name: str) -> list[bytes]:
    """Values of every header field called ``name`` (in order)."""
    head = header_lines(message) + b"\r\n"
    pattern = rb"^" + re.escape(name.encode()) + rb"[ \t]*:((?:.*\r\n)(?:[ \t].*\r\n)*)"
    return [m for m in re.findall(pattern, head, re.M | re.I)]


class KeyCache:
    """TXT answers fetched before dkimpy runs: dkimpy's lookup function reads from here."""

    def __init__(self) -> None:
        self.records: dict[str, bytes | None] = {}
        self.temporary: set[str] = set()

    async def fetch(self, resolver: Resolver, name: str) -> None:
        name = name.lower().rstrip(".")
        if name in self.records:
            return
        try:
            texts = await resolver.txt(name)
        except DnsError as exc:
            self.records[name] = None
            if type(exc).__name__ == "DnsTemporaryError":
                self.temporary.add(name)
            return
        self.records[name] = texts[0].encode() if len(texts) == 1 else None

    def lookup(self, name: bytes, timeout: int = 5) -> bytes | None:
        return self.records.get(name.decode("ascii", "replace").lower().rstrip("."))


async def prefetch_keys(resolver: Resolver, message: bytes, cache: KeyCache,
                        field_names: tuple[str, ...] = ("DKIM-Signature",)) -> None:
    names = set()
    for field_name in field_names:
        for value in header_fields(message, field_name):
            tags = signature_tags(value)
            if tags.get("s") and tags.get("d"):
                names.add(f"{tags['s']}._domainkey.{tags['d']}")
    await asyncio.gather(*(cache.fetch(resolver, n) for n in names))


def _verify_all(message: bytes, cache: KeyCache) -> list[DkimResult]:
    results = []
    for idx, value in enumerate(header_fields(message, "DKIM-Signature")):
        tags = signature_tags(value)
        base = {"domain": tags.get("d", "").lower(), "selector": tags.get("s", ""),
                "algorithm": tags.get("a", "")}
        name = f"{base['selector']}._domainkey.{base['domain']}".lower()
        try:
            ok = dkim.DKIM(message).verify(idx=idx, dnsfunc=cache.lookup)
        except dkim.DKIMException as exc:
            # A malformed signature or key is a permerror; anything else (the body hash
            # not matching) means the message changed: fail (RFC 8601 2.7.1).
            code: DkimResultCode = "fail"
            if name in cache.temporary:
                code = "temperror"
            elif "body hash mismatch" not in str(exc) or cache.records.get(name) is None:
                code = "permerror"
            results.append(DkimResult(code, problem=str(exc), **base))
            continue
        if ok:
            results.append(DkimResult("pass", **base))
        elif name in cache.temporary:
            results.append(DkimResult("temperror", problem="key lookup failed", **base))
        elif cache.records.get(name) is None:
            results.append(DkimResult("permerror", problem="no key", **base))
        else:
            results.append(DkimResult("fail", problem="signature did not verify", **base))
    return results


def may_be_signed(message: bytes) -> bool:
    """False when the header holds no DKIM-Signature field for sure (most mail on an MX
    is unsigned: no key lookups and no thread then)."""
    return b"dkim-signature" in header_lines(message).lower()


async def verify_message(resolver: Resolver, message: bytes) -> list[DkimResult]:
    """One result per DKIM-Signature field (RFC 6376 6); [] when there is none."""
    if not may_be_signed(message):
        return []
    cache = KeyCache()
    await prefetch_keys(resolver, message, cache)
    return await asyncio.to_thread(_verify_all, message, cache)
