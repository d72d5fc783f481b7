"""A DNS blocklist check: the plug-in shipped with mailstead, written like any other.

For the client 192.0.2.99 and the zone ``zen.example`` it asks ``99.2.0.192.zen.example`` A; for
an IPv6 client, its 32 nibbles reversed (RFC 5782 2.1, 2.4). A name with an A record in
127.0.0.0/8 means listed (RFC 5782 2.3); NXDOMAIN means not listed. A reply outside 127/8 is
an error report of the list, never a listing (RFC 5782 2.3 allows 127.0.0.2 and up; services
answer 127.255.255.x for "query refused"). A lookup that fails is logged and counts as not
listed: a broken blocklist must not stop mail.

Options ([checks.dnsbl]): ``zones``, ``phase`` ("connect" or "rcpt"), ``action`` ("reject" or
"score"), ``points``, ``exempt`` (networks never looked up).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from typing import Any

from mailstead.checks import Check, CheckContext, CheckSetup, HookResult, reject, score
from mailstead.dns import DnsError, DnsNotFound, Resolver

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def query_name(client_ip: str, zone: str) -> str | None:
    """The name to look up for ``client_ip`` under ``zone``; None for a non-address."""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:192.0.2.1 is the IPv4 client it carries
    if isinstance(address, ipaddress.IPv4Address):
        labels = reversed(str(address).split("."))
    else:
        labels = reversed(address.exploded.replace(":", ""))
    return ".".join(labels) + "." + zone.strip(".")


def is_listing(answer: str) -> bool:
    """RFC 5782 2.3: listings answer in 127.0.0.0/8; 127.255.255.x are refusals of service."""
    try:
        address = ipaddress.ip_address(answer)
    except ValueError:
        return False
    return address in ipaddress.ip_network("127.0.0.0/8") and not str(address).startswith(
        "127.255.255.")


class DnsblCheck(Check):
    name = "dnsbl"

    def __init__(self, setup: CheckSetup) -> None:
        options = setup.options
        self.zones: list[str] = [str(z).strip(".") for z in options.get("zones", [])]
        self.phase = str(options.get("phase", "connect"))
        self.action = str(options.get("action", "reject"))
        self.points = float(options.get("points", 5.0))
        self.exempt: list[Network] = [ipaddress.ip_network(str(n), strict=False)
                                      for n in options.get("exempt", [])]
        self.resolver: Resolver = setup.resolver
        self.log = setup.log
        if self.phase not in ("connect", "rcpt") or self.action not in ("reject", "score"):
            raise ValueError("phase must be connect or rcpt, action reject or score")

    async def listed_at(self, client_ip: str) -> list[str]:
        """The zones that list ``client_ip``, asked side by side."""
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            return []
        if any(address in network for network in self.exempt):
            return []
        found = await asyncio.gather(*(self._one(client_ip, zone) for zone in self.zones))
        return [zone for zone, listed in zip(self.zones, found, strict=True) if listed]

    async def _one(self, client_ip: str, zone: str) -> bool:
        name = query_name(client_ip, zone)
        if name is None:
            return False
        try:
            answers = await self.resolver.records(name, "A")
        except DnsNotFound:
            return False
        except DnsError as exc:
            self.log("lookup_failed", zone=zone, client=client_ip, error=str(exc))
            return False
        return any(is_listing(a) for a in answers)

    async def _judge(self, ctx: CheckContext) -> HookResult:
        key = "dnsbl.zones"
        if key not in ctx.notes:  # once a transaction at most (once a session at connect)
            ctx.notes[key] = await self.listed_at(ctx.client_ip)
        zones: Sequence[str] = ctx.notes[key]
        if not zones:
            return None
        self.log("listed", client=ctx.client_ip, zones=",".join(zones), session=ctx.session_id)
        if self.action == "score":
            return [score(self.points, "DNSBL_" + _test_name(zone)) for zone in zones]
        return reject(554, "5.7.1", f"Service unavailable; client [{ctx.client_ip}] listed "
                      f"at {zones[0]}")

    async def connect(self, ctx: CheckContext) -> HookResult:
        if self.phase == "connect" or self.action == "score":
            return await self._judge(ctx)
        return None

    async def rcpt(self, ctx: CheckContext, address: str) -> HookResult:
        if self.phase != "rcpt" or self.action == "score":
            return None
        if address.lower().startswith("postmaster@"):
            return None  # RFC 5321 4.5.1: postmaster stays reachable for a listed client
        return await self._judge(ctx)


def _test_name(zone: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in zone.upper())[:50]


def factory(setup: CheckSetup) -> Any:
    return DnsblCheck(setup)
