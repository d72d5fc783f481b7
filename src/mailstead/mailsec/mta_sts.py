"""MTA-STS (RFC 8461): the receiving domain's TLS policy, fetched, cached and applied.

A domain announces a policy with a TXT record at ``_mta-sts.<domain>`` (``v=STSv1; id=...``)
and serves it over HTTPS at ``https://mta-sts.<domain>/.well-known/mta-sts.txt``. With
``mode: enforce`` we deliver only to MX hosts the policy names, over TLS with a certificate
valid for that host; with ``mode: testing`` we deliver as usual and log what would have failed.

The policy host is resolved through our own ``Resolver`` (DNS is injected, never the system's)
and the HTTPS request goes to that address with the policy host as TLS server name, so the
same loopback guard as for SMTP applies. httpx does the HTTP; we only pick the address.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import httpx

from mailstead.dns import DnsError, DnsNotFound, Resolver
from mailstead.obs import log_event

Mode = Literal["enforce", "testing", "none"]
POLICY_PATH = "/.well-known/mta-sts.txt"
MAX_POLICY_BYTES = 65_536  # RFC 8461 3.3: a sender may refuse larger bodies
MAX_AGE_LIMIT = 31_557_600  # RFC 8461 3.2: at most one year
SERVED_MAX_AGE = 604_800  # the max_age of the policies we serve: one week

_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


class PolicyError(ValueError):
    """A TXT record or policy text that does not follow RFC 8461."""


@dataclass(frozen=True, slots=True)
class Policy:
    domain: str
    id: str  # from the TXT record the policy was fetched under
    mode: Mode
    mx: tuple[str, ...]  # host names and "*.example.org" patterns
    max_age: int
    fetched_at: float  # time.time() of the fetch

    def expired(self, now: float) -> bool:
        return now >= self.fetched_at + self.max_age

    def allows(self, host: str) -> bool:
        """RFC 8461 4.1: an exact name, or "*." matching exactly one leftmost label."""
        host = host.rstrip(".").lower()
        for pattern in self.mx:
            if pattern.startswith("*."):
                label, _, rest = host.partition(".")
                if label and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


def parse_txt(records: list[str]) -> str | None:
    """The policy id of the ``_mta-sts`` TXT records, or None when they announce no policy
    (RFC 8461 3.1: none, or more than one, record starting with ``v=STSv1``)."""
    announcing = [r for r in records if r.replace(" ", "").startswith("v=STSv1")]
    if len(announcing) != 1:
        return None
    fields: dict[str, str] = {}
    for part in announcing[0].split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    ident = fields.get("id", "")
    return ident if _ID.match(ident) else None


def parse_policy(text: str, domain: str, ident: str, fetched_at: float) -> Policy:
    """The policy body (RFC 8461 3.2): ``key: value`` lines; unknown keys are ignored."""
    values: dict[str, list[str]] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        key, sep, value = line.partition(":")
        if sep:
            values.setdefault(key.strip(), []).append(value.strip())
    if values.get("version") != ["STSv1"]:
        raise PolicyError("version is not STSv1")
    mode = (values.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"unknown mode {mode!r}")
    age = (values.get("max_age") or [""])[0]
    if not age.isdigit() or int(age) > MAX_AGE_LIMIT:
        raise PolicyError(f"max_age {age!r} is not a number of seconds up to one year")
    mx = tuple(m.rstrip(".").lower() for m in values.get("mx", []) if m)
    if mode != "none" and not mx:
        raise PolicyError("no mx lines")
    return Policy(domain, ident, mode, mx, int(age), fetched_at)  # type: ignore[arg-type]


def policy_text(mode: Mode, mx_hosts: list[str]) -> str:
    """The policy we serve for our own domains."""
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {h}" for h in mx_hosts),
             f"max_age: {SERVED_MAX_AGE}"]
    return "\r\n".join(lines) + "\r\n"


def policy_id(text: str) -> str:
    """Changes whenever the served policy does (RFC 8461 3.1), as the TXT record's id."""
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class MtaStsPolicies:
    """The policies of receiving domains, kept across restarts in ``cache_file``."""

    def __init__(
        self,
        resolver: Resolver,
        tls: ssl.SSLContext,
        *,
        port: int = 443,
        timeout: float = 30.0,
        cache_file: Path | None = None,
        may_connect: Callable[[str], bool] = lambda address: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.resolver = resolver
        self.tls = tls
        self.port = port
        self.timeout = timeout
        self.cache_file = cache_file
        self.may_connect = may_connect
        self.clock = clock
        self._cache: dict[str, Policy] = self._load()

    # -- the cache file --

    def _load(self) -> dict[str, Policy]:
        if self.cache_file is None or not self.cache_file.exists():
            return {}
        try:
            raw = json.loads(self.cache_file.read_text())
            return {d: Policy(**{**p, "mx": tuple(p["mx"])}) for d, p in raw.items()}
        except (OSError, ValueError, TypeError, KeyError):
            return {}  # a damaged cache only costs a fetch

    def _save(self) -> None:
        if self.cache_file is None:
            return
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({d: asdict(p) for d, p in self._cache.items()}))
        os.replace(tmp, self.cache_file)

    # -- looking a domain's policy up --

    async def policy_for(self, domain: str) -> Policy | None:
        """The domain's policy in force: fetched when the TXT id is new, else the cached one
        (RFC 8461 5.1: a lookup or fetch failure keeps an unexpired cached policy)."""
        domain = domain.lower()
        now = self.clock()
        cached = self._cache.get(domain)
        if cached is not None and cached.expired(now):
            del self._cache[domain]
            cached = None
        try:
            ident = parse_txt(await self.resolver.txt(f"_mta-sts.{domain}"))
        except DnsNotFound:
            ident = None
        except DnsError as exc:
            log_event("mta_sts.lookup_failed", domain=domain, error=str(exc))
            return cached
        if ident is None or (cached is not None and cached.id == ident):
            return cached
        try:
            policy = parse_policy(await self._fetch(domain), domain, ident, now)
        except (PolicyError, OSError, httpx.HTTPError, DnsError) as exc:
            log_event("mta_sts.fetch_failed", domain=domain, error=str(exc) or type(exc).__name__)
            return cached
        log_event("mta_sts.policy", domain=domain, id=ident, mode=policy.mode,
                  mx=",".join(policy.mx), max_age=policy.max_age)
        self._cache[domain] = policy
        self._save()
        return policy

    async def _fetch(self, domain: str) -> str:
        """GET the policy over HTTPS with a verified certificate for ``mta-sts.<domain>``; no
        redirects (RFC 8461 3.3), a 200 with text/plain only."""
        host = f"mta-sts.{domain}"
        addresses = await self.resolver.addresses(host)
        allowed = [a for a in addresses if self.may_connect(a)]
        if not allowed:
            raise OSError(f"no address of {host} may be reached ({', '.join(addresses)})")
        last: Exception = OSError(f"no address for {host}")
        async with httpx.AsyncClient(verify=self.tls, timeout=self.timeout,
                                     follow_redirects=False, trust_env=False) as client:
            for address in allowed:
                literal = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
                try:
                    return await self._get(client, f"https://{literal}:{self.port}{POLICY_PATH}",
                                           host)
                except (OSError, httpx.TransportError) as exc:
                    last = exc
        raise last

    @staticmethod
    async def _get(client: httpx.AsyncClient, url: str, host: str) -> str:
        headers = {"Host": host, "User-Agent": "mailstead"}
        async with client.stream("GET", url, headers=headers,
                                 extensions={"sni_hostname": host}) as response:
            if response.status_code != 200:
                raise PolicyError(f"HTTP {response.status_code} from {host}")
            media = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "text/plain":
                raise PolicyError(f"{host} served {media or 'no media type'}, not text/plain")
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_POLICY_BYTES:
                    raise PolicyError(f"the policy of {host} is larger than 64 KiB")
        return body.decode("utf-8", "replace")
