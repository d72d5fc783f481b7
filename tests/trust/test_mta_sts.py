"""MTA-STS (RFC 8461) end to end over the DNS world.

Beta serves its policy over HTTPS from its own web listener (as ``mta-sts.<domain>``, with a
certificate from the world's CA), publishes the ``_mta-sts`` TXT record that ``mailstead dns``
prints, and alpha fetches the policy before delivering. A domain whose MX record points at a
host its policy does not name is the attack MTA-STS exists for: under ``enforce`` the mail
waits in alpha's queue, under ``testing`` it goes.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from mailstead import obs
from mailstead.mailsec import dnsrecords
from tests import dnsworld
from tests.delivery.conftest import Node, port_free_on_all_nodes
from tests.delivery.helpers import (
    inbox_with,
    make_message,
    queue_entry,
    submit,
    wait_for,
)
from tests.trust.conftest import publish

ALPHA, GOOD = "alpha-s.test", "beta-s.test"
ALICE, BOB = f"alice@{ALPHA}", f"bob@{GOOD}"
# A domain of beta's whose MX record names a host beta's policy does not list. One per test,
# so no answer the resolver still caches from another test leaks in.
SPOOFED = {"enforce": "other-e.test", "testing": "other-t.test"}


@pytest.fixture(scope="module")
def https_port() -> int:
    """Alpha fetches policies from it, beta serves them on it."""
    return port_free_on_all_nodes()


def _nodes(make_node: Callable[..., Node], world: dnsworld.DnsWorld, https_port: int,
           mode: str) -> tuple[Node, Node]:
    sts = {"trust": {"mta_sts_port": https_port}}
    alpha = make_node("127.0.0.2", f"mx.{ALPHA}", ALPHA, users=("alice",), **sts)
    beta = make_node(
        "127.0.0.3", f"mx.{GOOD}", GOOD, users=("bob",),
        cert_names=(f"mta-sts.{GOOD}", f"mta-sts.{SPOOFED[mode]}"),
        listeners={"http": {"enabled": True, "port": https_port, "tls": "implicit"}},
        trust={"mta_sts_mode": mode},
    )
    spoofed = SPOOFED[mode]
    beta.server.add_domain(spoofed)
    beta.server.add_user(f"dora@{spoofed}")
    publish(world, ALPHA, "MX", f"10 mx.{ALPHA}.")
    publish(world, f"mx.{ALPHA}", "A", alpha.ip)
    publish(world, GOOD, "MX", f"10 mx.{GOOD}.")
    publish(world, f"mx.{GOOD}", "A", beta.ip)
    # The spoofed domain's MX names a host beta's policy does not list (same address).
    publish(world, spoofed, "MX", f"10 relay.{spoofed}.")
    publish(world, f"relay.{spoofed}", "A", beta.ip)
    beta_cfg = beta.server.services.cfg
    for domain in (GOOD, spoofed):
        publish(world, f"mta-sts.{domain}", "A", beta.ip)
        [txt] = [r for r in dnsrecords.expected_records(beta_cfg, domain, [])
                 if r.name == f"_mta-sts.{domain}"]
        publish(world, txt.name, "TXT", txt.value)
    return alpha, beta


def _policy_cache(node: Node) -> dict[str, Any]:
    path = node.data_dir / "mta-sts" / "policies.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_beta_serves_its_policy_over_https(
        make_node: Callable[..., Node], dns_world: dnsworld.DnsWorld, https_port: int,
        world_ca: Any) -> None:
    _, beta = _nodes(make_node, dns_world, https_port, "enforce")
    ctx = ssl.create_default_context(cafile=str(world_ca[1]))
    ctx.check_hostname = False  # we connect by address; the Host header names the domain
    request = urllib.request.Request(f"https://{beta.ip}:{https_port}/.well-known/mta-sts.txt",
                                     headers={"Host": f"mta-sts.{GOOD}"})
    with urllib.request.urlopen(request, context=ctx, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        lines = response.read().decode().splitlines()
    assert lines == ["version: STSv1", "mode: enforce", f"mx: mx.{GOOD}", "max_age: 604800"]
    unknown = urllib.request.Request(f"https://{beta.ip}:{https_port}/.well-known/mta-sts.txt",
                                     headers={"Host": "mta-sts.nowhere.test"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(unknown, context=ctx, timeout=10)
    assert refused.value.code == 404


def test_enforced_policy_delivers_to_named_mx_and_holds_a_spoofed_one(
        make_node: Callable[..., Node], dns_world: dnsworld.DnsWorld, https_port: int) -> None:
    alpha, beta = _nodes(make_node, dns_world, https_port, "enforce")
    submit(alpha, ALICE, [BOB], make_message(ALICE, [BOB], "under a policy"))
    [arrived] = inbox_with(beta, BOB)
    assert "ESMTPS" in str(arrived["Received"])  # over TLS (its certificate was checked)
    policy = _policy_cache(alpha)[GOOD]
    assert (policy["mode"], policy["mx"]) == ("enforce", [f"mx.{GOOD}"])

    spoofed = SPOOFED["enforce"]
    dora = f"dora@{spoofed}"
    held = submit(alpha, ALICE, [dora], make_message(ALICE, [dora], "spoofed MX"))
    reply = wait_for(lambda: queue_entry(alpha, held).recipients[0].last_reply, "an attempt")
    entry = queue_entry(alpha, held)
    assert entry.state == "queued" and entry.recipients[0].status == "pending"
    assert f"MTA-STS policy of {spoofed} names none of its MX hosts" in reply
    # The domain fixes its MX record: the waiting message goes on a later retry.
    publish(dns_world, spoofed, "MX", f"10 mx.{GOOD}.")
    [delivered] = inbox_with(beta, dora)
    assert delivered["Subject"] == "spoofed MX"


def test_testing_policy_only_logs_what_enforce_would_refuse(
        make_node: Callable[..., Node], dns_world: dnsworld.DnsWorld, https_port: int) -> None:
    alpha, beta = _nodes(make_node, dns_world, https_port, "testing")
    spoofed = SPOOFED["testing"]
    dora = f"dora@{spoofed}"
    before = obs.EVENT_COUNTS["queue.mta_sts_mismatch"]
    submit(alpha, ALICE, [dora], make_message(ALICE, [dora], "testing mode"))
    [delivered] = inbox_with(beta, dora)
    assert delivered["Subject"] == "testing mode"
    assert _policy_cache(alpha)[spoofed]["mode"] == "testing"
    assert obs.EVENT_COUNTS["queue.mta_sts_mismatch"] > before
