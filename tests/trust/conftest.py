"""Trust tests reuse the delivery DNS world and nodes, with SPF/DKIM/DMARC published in it.

Our domains (alpha-t.test, beta-t.test, gamma-t.test) are added to the world's "test." zone
here, apart from the delivery tests' names, so their policies never meet those tests.
"""

from __future__ import annotations

import dns.name
import dns.rdataset

from mailstead.core.models import DkimKey
from mailstead.mailsec.dkim_keys import dkim_keyring
from tests import dnsworld
from tests.delivery.conftest import (  # noqa: F401
    Node,
    dns_world,
    make_node,
    mx_port,
    pg_schema,
    world_ca,
)

TTL = 5


def _quoted(value: str) -> str:
    """A TXT value as zone-file strings of at most 255 octets each."""
    chunks = [value[i:i + 250] for i in range(0, len(value), 250)] or [""]
    return " ".join('"' + c.replace('"', '\\"') + '"' for c in chunks)


def publish(world: dnsworld.DnsWorld, name: str, rdtype: str, *values: str) -> None:
    """Adds (replaces) records in the world's "test." zone."""
    zone = next(z for z in world.root.zones if z.origin == dns.name.from_text("test."))
    texts = [_quoted(v) if rdtype == "TXT" else v for v in values]
    rdataset = dns.rdataset.from_text("IN", rdtype, TTL, *texts)
    zone.replace_rdataset(dns.name.from_text(name), rdataset)


def dkim_records(node: Node, domain: str) -> list[tuple[str, str]]:
    """The DKIM records the node publishes for ``domain`` (made in its store if need be)."""
    return node.server.run(dkim_keyring(node.server.services).published(domain))


def signing_key(node: Node, domain: str) -> DkimKey:
    return node.server.run(dkim_keyring(node.server.services).signing_key(domain))


def publish_domain(world: dnsworld.DnsWorld, node: Node, dmarc_policy: str = "reject") -> None:
    """A node's domain in the world: MX, SPF of its address, DMARC, its DKIM keys."""
    domain = node.domain
    publish(world, domain, "MX", f"10 mx.{domain}.")
    publish(world, f"mx.{domain}", "A", node.ip)
    publish(world, domain, "TXT", f"v=spf1 ip4:{node.ip} -all")
    publish(world, f"_dmarc.{domain}", "TXT", f"v=DMARC1; p={dmarc_policy}")
    for name, value in dkim_records(node, domain):
        publish(world, name, "TXT", value)
