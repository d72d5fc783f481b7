"""DNS lookups for mail: MX, addresses, TXT, behind a small ``Resolver`` Protocol.

DNS is always injected, never global: ``app``/``wiring`` builds one resolver from the config
(``[delivery] resolvers``, default the system's /etc/resolv.conf) and hands it to whoever needs
it (the queue's routing now, SPF/DKIM/DMARC later). Lookups raise ``DnsNotFound`` when the name
does not exist (NXDOMAIN: a permanent answer) and ``DnsTemporaryError`` for timeouts and server
failures (the caller retries later); a name that exists without records of the type is an empty
list, not an error.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from mailstead.config import DeliveryConfig, TrustConfig
from mailstead.core.errors import ConfigError


class DnsError(Exception):
    """A lookup that gave no usable answer."""


class DnsNotFound(DnsError):
    """NXDOMAIN: the name does not exist."""


class DnsTemporaryError(DnsError):
    """Timeout, SERVFAIL, no server answering: try again later."""


@dataclass(frozen=True, slots=True)
class MxRecord:
    preference: int
    exchange: str  # host name without the trailing dot; "" for the null MX "." (RFC 7505)


class Resolver(Protocol):
    async def mx(self, domain: str) -> list[MxRecord]:
        """MX records as published (unsorted); [] when the domain has none (NODATA)."""

    async def addresses(self, host: str) -> list[str]:
        """IPv4 addresses, then IPv6 ones; [] when the host has neither (or does not exist)."""

    async def txt(self, name: str) -> list[str]:
        """TXT records, each one's strings joined; [] when there are none."""

    async def records(self, name: str, rdtype: str) -> list[str]:
        """Records of any other type in zone-file text (SRV, CNAME...); [] when none."""


def parse_nameserver(spec: str) -> tuple[str, int]:
    """"192.0.2.1", "192.0.2.1:5353", "2001:db8::1" or "[2001:db8::1]:5353" -> (ip, port)."""
    text = spec.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]")
        port = port.removeprefix(":")
        if not sep:
            raise ConfigError(f"delivery.resolvers: {spec!r}: missing ']'")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host or (port and not port.isdigit()):
        raise ConfigError(f'delivery.resolvers: {spec!r}: expected "IP" or "IP:PORT"')
    return host, int(port) if port else 53


ANSWERS_KEPT = 4096  # answers DnsPythonResolver keeps in front of dnspython's cache


class DnsPythonResolver:
    """The real resolver: dnspython's stub resolver with a small cache (TTLs respected)."""

    def __init__(self, nameservers: list[tuple[str, int]] | None, timeout: float = 10.0,
                 resolv_conf: str = "/etc/resolv.conf") -> None:
        if nameservers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(host, port) for host, port in nameservers
            ]
        else:
            self._resolver = dns.asyncresolver.Resolver(filename=resolv_conf, configure=True)
        self._resolver.lifetime = timeout
        self._resolver.cache = dns.resolver.LRUCache(4096)
        # In front of dnspython's cache: answers by (name, type) until they expire, and the
        # lookups under way, so sessions asking the same thing at once share one query.
        # Every inbound message asks the same few names (SPF, DMARC of common senders); a
        # dict hit costs a tenth of dnspython's cached path (names parsed, a resolution set up).
        self._answers: dict[tuple[str, str], tuple[float, dns.resolver.Answer]] = {}
        self._asking: dict[tuple[str, str], asyncio.Task[dns.resolver.Answer]] = {}

    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        """The answer, or None for NODATA. NXDOMAIN -> DnsNotFound; failures -> temporary."""
        key = (name.lower(), rdtype)
        known = self._answers.get(key)
        if known is None or known[0] <= time.time():
            asking = self._asking.get(key)
            if asking is None:
                # A task of its own: a caller that gives up does not end it for the others.
                asking = asyncio.ensure_future(self._ask(name, rdtype))
                self._asking[key] = asking
                asking.add_done_callback(lambda done: self._asked(key, done))
            answer = await asyncio.shield(asking)
        else:
            answer = known[1]
        return answer if answer.rrset is not None else None

    def _asked(self, key: tuple[str, str], done: asyncio.Task[dns.resolver.Answer]) -> None:
        del self._asking[key]
        if not done.cancelled() and done.exception() is None:
            if len(self._answers) >= ANSWERS_KEPT:
                self._answers.clear()
            answer = done.result()
            self._answers[key] = (answer.expiration, answer)

    async def _ask(self, name: str, rdtype: str) -> dns.resolver.Answer:
        try:
            return await self._resolver.resolve(
                name, rdtype, search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN:
            raise DnsNotFound(f"{name}: no such domain") from None
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise DnsTemporaryError(f"{name} {rdtype}: {exc}") from None
        except dns.exception.DNSException as exc:
            raise DnsTemporaryError(f"{name} {rdtype}: {type(exc).__name__}: {exc}") from None

    async def mx(self, domain: str) -> list[MxRecord]:
        answer = await self._query(domain, "MX")
        if answer is None:
            return []
        return [
            MxRecord(int(r.preference), r.exchange.to_text(omit_final_dot=True)
                     if r.exchange != dns.name.root else "")
            for r in answer
        ]

    async def addresses(self, host: str) -> list[str]:
        results = await asyncio.gather(
            self._query(host, "A"), self._query(host, "AAAA"), return_exceptions=True
        )
        found: list[str] = []
        temporary: DnsTemporaryError | None = None
        for result in results:
            if isinstance(result, DnsTemporaryError):
                temporary = result
            elif isinstance(result, DnsNotFound) or result is None:
                continue
            elif isinstance(result, BaseException):
                raise result
            else:
                found.extend(r.to_text() for r in result)
        if not found and temporary is not None:
            raise temporary
        return found

    async def txt(self, name: str) -> list[str]:
        answer = await self._query(name, "TXT")
        if answer is None:
            return []
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]

    async def records(self, name: str, rdtype: str) -> list[str]:
        answer = await self._query(name, rdtype)
        return [] if answer is None else [r.to_text() for r in answer]


class OfflineResolver:
    """Stands in while ``[delivery] internet`` is off and no resolver is configured (or for
    inbound checks, ``[trust] dns = "off"``): every lookup fails temporarily, so no query
    leaves this machine (mail waits in the queue; checks say temperror)."""

    def __init__(self, reason: str = "outbound mail to the internet is off "
                 "([delivery] internet = false)") -> None:
        self.reason = reason

    async def mx(self, domain: str) -> list[MxRecord]:
        raise DnsTemporaryError(f"{domain} MX: {self.reason}")

    async def addresses(self, host: str) -> list[str]:
        raise DnsTemporaryError(f"{host} A: {self.reason}")

    async def txt(self, name: str) -> list[str]:
        raise DnsTemporaryError(f"{name} TXT: {self.reason}")

    async def records(self, name: str, rdtype: str) -> list[str]:
        raise DnsTemporaryError(f"{name} {rdtype}: {self.reason}")


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def make_resolver(cfg: DeliveryConfig) -> Resolver:
    """The resolver the config asks for: its ``resolvers``, else the system's. While
    ``internet`` is off only loopback resolvers are used, and none by default."""
    servers = [parse_nameserver(spec) for spec in cfg.resolvers]
    if not cfg.internet:
        for host, _port in servers:
            if not is_loopback(host):
                raise ConfigError(
                    f"delivery.resolvers: {host} is not on loopback; set delivery.internet = "
                    "true to send DNS queries off this machine"
                )
        if not servers:
            return OfflineResolver()
    return DnsPythonResolver(servers or None, cfg.dns_timeout)


CHECKS_OFF = 'inbound DNS lookups are off ([trust] dns = "off" and no [delivery] resolvers)'


def make_check_resolver(delivery: DeliveryConfig, trust: TrustConfig) -> Resolver:
    """The resolver of inbound checks (SPF, DKIM, ARC, DMARC) and of ``dns --check``: the
    configured ``delivery.resolvers`` when there are some (the same as outbound mail), else
    the system's (``trust.resolv_conf``) even while ``delivery.internet`` is off, for a
    lookup sends no mail; none when ``trust.dns`` is "off"."""
    if delivery.resolvers:
        return make_resolver(delivery)
    if trust.dns == "off":
        return OfflineResolver(CHECKS_OFF)
    return DnsPythonResolver(None, delivery.dns_timeout, trust.resolv_conf)
