"""MX routing (RFC 5321 5.1, RFC 7505) and the dnspython resolver, against the DNS world."""

from __future__ import annotations

import asyncio
import random

import dns.zone
import pytest

from mailstead.core.errors import ConfigError
from mailstead.dns import (
    DnsNotFound,
    DnsPythonResolver,
    DnsTemporaryError,
    MxRecord,
    parse_nameserver,
)
from mailstead.queue.routing import RoutingFailure, mx_hosts, order_mx
from tests import dnsworld


def test_mx_sorted_by_preference_and_shuffled_among_equals() -> None:
    records = [MxRecord(20, "c.test"), MxRecord(10, "a.test"), MxRecord(10, "b.test"),
               MxRecord(30, "d.test")]
    orders = {tuple(order_mx(records, random.Random(seed))) for seed in range(40)}
    # Both orders of the two preference-10 hosts occur; the rest never moves.
    assert orders == {("a.test", "b.test", "c.test", "d.test"),
                      ("b.test", "a.test", "c.test", "d.test")}


def test_null_mx_and_loops() -> None:
    rng = random.Random(1)
    with pytest.raises(RoutingFailure) as null:
        order_mx([MxRecord(0, "")], rng)
    assert null.value.permanent and null.value.status == "5.1.10"
    # A "." among real MX records is ignored (RFC 7505 says it must stand alone).
    assert order_mx([MxRecord(0, ""), MxRecord(5, "mx.test")], rng) == ["mx.test"]
    # We are an MX ourselves: only better ones are tried (RFC 5321 5.1) ...
    records = [MxRecord(10, "best.test"), MxRecord(20, "us.test"), MxRecord(30, "worse.test")]
    assert order_mx(records, rng, ["US.test."]) == ["best.test"]
    # ... and being the best one means the mail would loop.
    with pytest.raises(RoutingFailure) as loop:
        order_mx(records[1:], rng, ["us.test"])
    assert loop.value.permanent and loop.value.status == "5.4.6"


async def test_lookups_through_the_recursive_resolver(dns_world: dnsworld.DnsWorld) -> None:
    resolver = DnsPythonResolver([(dns_world.resolver, 53)], timeout=5)
    rng = random.Random(7)
    assert await mx_hosts(resolver, "multi.test", rng) == ["dead.multi.test", "mx.beta.test"]
    # No MX: the implicit MX is the domain itself (its zone is served by the child server).
    assert await mx_hosts(resolver, "mail.sub.gamma.test", rng) == ["mail.sub.gamma.test"]
    assert await resolver.addresses("mail.sub.gamma.test") == ["127.0.0.4"]
    assert await resolver.addresses("nomail.test") == []
    assert await resolver.addresses("no-such-host.test") == []
    assert await resolver.txt("nomail.test") == ["no mail here"]
    with pytest.raises(RoutingFailure) as nx:
        await mx_hosts(resolver, "nowhere.test", rng)
    assert nx.value.permanent and nx.value.status == "5.1.2"
    with pytest.raises(RoutingFailure) as null:
        await mx_hosts(resolver, "null.test", rng)
    assert null.value.status == "5.1.10"


async def test_an_unanswering_resolver_is_a_temporary_failure() -> None:
    silent = DnsPythonResolver([("127.0.0.1", 9)], timeout=0.5)  # nothing listens there
    with pytest.raises(DnsTemporaryError):
        await silent.mx("alpha.test")
    with pytest.raises(RoutingFailure) as failure:
        await mx_hosts(silent, "alpha.test", random.Random(1))
    assert not failure.value.permanent and failure.value.status == "4.4.3"


def test_resolver_addresses_from_config() -> None:
    assert parse_nameserver("192.0.2.1") == ("192.0.2.1", 53)
    assert parse_nameserver("192.0.2.1:5353") == ("192.0.2.1", 5353)
    assert parse_nameserver("2001:db8::1") == ("2001:db8::1", 53)
    assert parse_nameserver("[2001:db8::1]:5353") == ("2001:db8::1", 5353)
    for bad in ("", "192.0.2.1:x", "[2001:db8::1"):
        with pytest.raises(ConfigError):
            parse_nameserver(bad)


async def test_answers_kept_and_shared_by_askers_at_once() -> None:
    # An authoritative server of our own on a free loopback port, asked directly: it counts
    # the queries that reach it.
    zone = dns.zone.from_text(
        "$TTL 300\nremote.test. SOA ns.test. h.test. 1 3600 600 86400 300\n"
        'remote.test. NS ns.test.\nremote.test. TXT "v=spf1 -all"\n',
        origin="remote.test.", relativize=False)
    authority = dnsworld.Authority([zone])
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: dnsworld._Udp(authority),
                                                       local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        resolver = DnsPythonResolver([("127.0.0.1", port)], timeout=5)
        answers = await asyncio.gather(*(resolver.txt("remote.test") for _ in range(10)))
        assert answers == [["v=spf1 -all"]] * 10
        assert await resolver.txt("REMOTE.test") == ["v=spf1 -all"]  # kept, any case
        assert await resolver.txt("remote.test") == ["v=spf1 -all"]
        assert authority.asked == [("remote.test.", "TXT")]  # one query for all of them
        # A name that does not exist: every asker hears so, and nothing wrong is kept.
        failures = await asyncio.gather(*(resolver.txt("nx.remote.test") for _ in range(3)),
                                        return_exceptions=True)
        assert all(isinstance(f, DnsNotFound) for f in failures)
    finally:
        transport.close()
