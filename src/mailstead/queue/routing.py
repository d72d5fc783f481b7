"""Where mail for a domain goes: its MX hosts in the order to try them (RFC 5321 5.1).

- MX records sorted by preference, in random order among equal preferences (RFC 5321 5.1:
  the client MUST randomize among equal preferences to spread the load).
- No MX records: the domain itself is the one host (the implicit MX), if it has an address.
- A null MX (RFC 7505: a single MX "." of preference 0) means the domain takes no mail: the
  message bounces at once with 5.1.10.
- If this server is one of the MX hosts, only those with a lower preference value are tried
  (RFC 5321 5.1, so two servers never pass a message back and forth).

A smart host bypasses all of this (see ``transfer``).
"""

from __future__ import annotations

import random
from collections.abc import Collection

from mailstead.dns import DnsNotFound, DnsTemporaryError, MxRecord, Resolver


class RoutingFailure(Exception):
    """No host to try. ``permanent`` failures bounce; the others are retried later."""

    def __init__(self, status: str, text: str, *, permanent: bool) -> None:
        super().__init__(text)
        self.status = status  # enhanced status code (RFC 3463)
        self.text = text
        self.permanent = permanent


def order_mx(
    records: list[MxRecord], rng: random.Random, own_names: Collection[str] = ()
) -> list[str]:
    """Host names to try, best first. Raises RoutingFailure for a null MX or a loop."""
    usable = [r for r in records if r.exchange]
    if not usable:
        # RFC 7505 3: a null MX says the domain accepts no mail.
        raise RoutingFailure("5.1.10", "the domain publishes a null MX: it accepts no mail",
                             permanent=True)
    own = {name.lower().rstrip(".") for name in own_names}
    mine = [r.preference for r in usable if r.exchange.lower() in own]
    if mine:
        usable = [r for r in usable if r.preference < min(mine)]
        if not usable:
            raise RoutingFailure("5.4.6", "mail for this domain loops back to this server",
                                 permanent=True)
    by_preference: dict[int, list[str]] = {}
    for record in usable:
        by_preference.setdefault(record.preference, []).append(record.exchange.lower())
    hosts: list[str] = []
    for preference in sorted(by_preference):
        group = by_preference[preference]
        rng.shuffle(group)
        hosts.extend(group)
    return hosts


async def mx_hosts(
    resolver: Resolver, domain: str, rng: random.Random, own_names: Collection[str] = ()
) -> list[str]:
    """The hosts to try for ``domain`` (the domain itself when it has no MX)."""
    try:
        records = await resolver.mx(domain)
    except DnsNotFound:
        raise RoutingFailure("5.1.2", f"the domain {domain} does not exist (DNS NXDOMAIN)",
                             permanent=True) from None
    except DnsTemporaryError as exc:
        raise RoutingFailure("4.4.3", f"DNS lookup failed: {exc}", permanent=False) from None
    if not records:
        return [domain]  # the implicit MX (RFC 5321 5.1)
    return order_mx(records, rng, own_names)
