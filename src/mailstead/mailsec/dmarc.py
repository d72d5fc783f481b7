"""DMARC (RFC 7489): the From domain's policy, alignment of SPF and DKIM, the disposition.

The organisational domain comes from the public suffix list (``publicsuffixlist``, 3.2).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import getaddresses
from functools import lru_cache
from typing import Literal

from publicsuffixlist import PublicSuffixList

from mailstead.dns import DnsNotFound, DnsTemporaryError, Resolver
from mailstead.mailsec.dkim import DkimResult
from mailstead.proto.headers import header_lines

DmarcResultCode = Literal["pass", "fail", "none", "temperror", "permerror"]
Policy = Literal["none", "quarantine", "reject"]


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


@lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """3.2: the public suffix plus one label (the domain itself if it is a suffix); kept, as
    the same few sender domains come with message after message."""
    domain = domain.lower().rstrip(".")
    return _psl().privatesuffix(domain) or domain


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    policy: Policy
    subdomain_policy: Policy
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


@dataclass(frozen=True, slots=True)
class DmarcResult:
    result: DmarcResultCode
    from_domain: str
    policy: Policy = "none"  # the policy that applies (p= or sp=)
    disposition: Policy = "none"  # what to do with this message
    problem: str = ""


# The same few records come with every message of a sender: parsed once.
@lru_cache(maxsize=1024)
def parse_record(text: str) -> DmarcRecord | None:
    """6.3: "v=DMARC1; p=..." (v first, p required); None when it is not a DMARC record."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), value.strip())
    if not text.strip().startswith("v=DMARC1") and tags.get("v") != "DMARC1":
        return None
    policy = tags.get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        return None
    sub = tags.get("sp", policy).lower()
    if sub not in ("none", "quarantine", "reject"):
        sub = policy
    try:
        pct = max(0, min(100, int(tags.get("pct", "100"))))
    except ValueError:
        pct = 100
    return DmarcRecord(policy, sub, tags.get("adkim", "r").lower()[:1] or "r",  # type: ignore[arg-type]
                       tags.get("aspf", "r").lower()[:1] or "r", pct)


async def _fetch(resolver: Resolver, domain: str) -> DmarcRecord | None:
    try:
        texts = await resolver.txt(f"_dmarc.{domain}")
    except DnsNotFound:
        return None
    records = [r for r in (parse_record(t) for t in texts) if r is not None]
    return records[0] if len(records) == 1 else None  # 6.6.3: several is none


async def find_policy(resolver: Resolver, from_domain: str) -> tuple[DmarcRecord | None, bool]:
    """6.6.3: the From domain's record, else the organisational domain's. The flag says
    whether the record came from the organisational domain (then sp= applies)."""
    record = await _fetch(resolver, from_domain)
    if record is not None:
        return record, False
    org = organizational_domain(from_domain)
    if org != from_domain:
        return await _fetch(resolver, org), True
    return None, False


def aligned(a: str, b: str, mode: str) -> bool:
    """3.1: strict needs the same name, relaxed the same organisational domain."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    return a == b if mode == "s" else organizational_domain(a) == organizational_domain(b)


def from_domain(message: bytes) -> str | None:
    """The RFC5322.From domain; None when there is not exactly one From with one domain."""
    head = header_lines(message).decode("utf-8", "replace")
    values = []
    current: list[str] | None = None
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t") and current is not None:
            current.append(line)
            continue
        current = None
        if line.lower().startswith("from:"):
            current = [line[5:]]
            values.append(current)
    if len(values) != 1:
        return None
    value = "".join(values[0])
    if len(value) <= _MEMO_LIMIT:
        return _single_domain(value)
    return _single_domain.__wrapped__(value)


_MEMO_LIMIT = 256  # longer From fields are parsed each time, so the memo stays small


@lru_cache(maxsize=1024)  # the same senders come again and again; getaddresses is slow
def _single_domain(value: str) -> str | None:
    addresses = getaddresses([value])
    domains = {addr.rpartition("@")[2].lower() for _, addr in addresses if "@" in addr}
    return domains.pop() if len(domains) == 1 else None


async def evaluate(resolver: Resolver, message: bytes, spf_result: str, spf_domain: str,
                   dkim_results: Sequence[DkimResult]) -> DmarcResult:
    """6.6.2: pass when an aligned SPF or DKIM identifier passed."""
    domain = from_domain(message)
    if domain is None:
        return DmarcResult("permerror", "", problem="no single From domain")
    try:
        record, inherited = await find_policy(resolver, domain)
    except DnsTemporaryError as exc:
        return DmarcResult("temperror", domain, problem=str(exc))
    if record is None:
        return DmarcResult("none", domain)
    policy = record.subdomain_policy if inherited else record.policy
    spf_ok = spf_result == "pass" and aligned(spf_domain, domain, record.aspf)
    dkim_ok = any(r.result == "pass" and aligned(r.domain, domain, record.adkim)
                  for r in dkim_results)
    if spf_ok or dkim_ok:
        return DmarcResult("pass", domain, policy)
    applies = record.pct >= 100 or random.randrange(100) < record.pct  # 6.6.4
    return DmarcResult("fail", domain, policy, policy if applies else "none")
