"""DKIM (RFC 6376, RFC 8463): per-domain keys, signing outbound mail, verifying inbound mail.

The cryptography and canonicalisation are dkimpy's. Keys live in the store, shared by every
node (``DkimKeyring`` in dkim_keys.py): the active selector signs, older ones stay published
until removed. Verification looks the keys up through the
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

from mailstead.core.models import DkimKey, DkimKeySet
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


def new_selector(now: datetime | None = None) -> str:
    """Selectors named by date plus a short random part, so a rotation never reuses one."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d")
    return f"ms{stamp}{secrets.token_hex(2)}"


def _pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def generate_keys(selector: str | None = None) -> DkimKey:
    """A new RSA-2048 and Ed25519 key pair under a new selector."""
    return DkimKey(selector or new_selector(),
                   _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                   _pem(ed25519.Ed25519PrivateKey.generate()))


def private_key(key: DkimKey, algorithm: Algorithm
                ) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    pem = key.rsa_pem if algorithm == "rsa" else key.ed25519_pem
    loaded = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError(f"selector {key.selector}: not an RSA or Ed25519 key")
    return loaded


def public_record(key: DkimKey, algorithm: Algorithm) -> str:
    """The TXT record for <selector>._domainkey.<domain> (RFC 6376 3.6.1, RFC 8463 4)."""
    private = private_key(key, algorithm)
    if isinstance(private, rsa.RSAPrivateKey):
        der = private.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    raw = private.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


def record_name(selector: str, algorithm: Algorithm, domain: str) -> str:
    """Each algorithm gets its own DNS name: <selector>-<alg>._domainkey.<domain>."""
    return f"{dns_selector(selector, algorithm)}._domainkey.{domain}"


def dns_selector(selector: str, algorithm: Algorithm) -> str:
    return f"{selector}-{'rsa' if algorithm == 'rsa' else 'ed'}"


def published_records(keyset: DkimKeySet) -> list[tuple[str, str]]:
    """(name, TXT value) for every selector still kept, both algorithms."""
    return [(record_name(key.selector, algorithm, keyset.domain), public_record(key, algorithm))
            for key in keyset.keys for algorithm in ALGORITHMS]


def read_key_files(dkim_root: Path, domain: str) -> tuple[str, list[DkimKey]] | None:
    """(active selector, keys) from the files of earlier versions (``dkim/<domain>/
    selectors.json`` and ``<selector>.<alg>.pem``), to move them into the store; None when
    there are none."""
    folder = dkim_root / domain.lower()
    try:
        data = json.loads((folder / "selectors.json").read_text(encoding="utf-8"))
        keys = [DkimKey(selector, (folder / f"{selector}.rsa.pem").read_text("ascii"),
                        (folder / f"{selector}.ed25519.pem").read_text("ascii"))
                for selector in data.get("all", []) if isinstance(selector, str)]
    except (OSError, ValueError, AttributeError):
        return None
    active = data.get("active")
    if not keys or not isinstance(active, str) or active not in {k.selector for k in keys}:
        return None
    return active, keys


def write_key_files(dkim_root: Path, domain: str, active: str, keys: list[DkimKey]) -> None:
    """Writes keys in the files' layout (mode 0600): for tools and tests that prepare a data
    directory before a node first starts; the node moves them into its store."""
    folder = dkim_root / domain.lower()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for key in keys:
        for algorithm, pem in (("rsa", key.rsa_pem), ("ed25519", key.ed25519_pem)):
            fd = os.open(folder / f"{key.selector}.{algorithm}.pem",
                         os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(pem)
    (folder / "selectors.json").write_text(
        json.dumps({"active": active, "all": [k.selector for k in keys]}), encoding="utf-8")


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


def sign_message(key: DkimKey, domain: str, message: bytes) -> bytes:
    """DKIM-Signature fields (RSA and Ed25519, relaxed/relaxed) to prepend to ``message``
    (RFC 8463 5: both, so verifiers without Ed25519 still find an RSA one)."""
    present = _header_names(message)
    headers = [h for h in OVERSIGNED + SIGNED_IF_PRESENT if h in present]
    headers += [h for h in OVERSIGNED]  # once more: the oversigning
    fields = b""
    for algorithm in ALGORITHMS:
        signer = dkim.DKIM(message)
        field = signer.sign(
            dns_selector(key.selector, algorithm).encode(), domain.encode(),
            _dkimpy_key(private_key(key, algorithm)),
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
