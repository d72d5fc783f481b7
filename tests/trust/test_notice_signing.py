"""Notices we write are signed as ours (issue 19 items 1-2, issue 20 item 5): a vacation reply
and a Sieve refusal notice sent from vac-n.test to a second instance over the test DNS world
arrive there with DKIM and DMARC passing (both domains publish p=reject), with no ARC seal and
the null envelope sender (never an SRS address, as if the notice were a forward).
Both stores for the instance that writes the notices."""

from __future__ import annotations

import email.message
from collections.abc import Callable

import pytest

from mailstead.sieve.service import SieveService
from tests import dnsworld
from tests.conftest import PG_DSN
from tests.delivery.conftest import Node
from tests.delivery.helpers import inbox_with, make_message, submit
from tests.smtp.helpers import inbox
from tests.trust.conftest import publish_domain

ORIG, VAC = "orig-n.test", "vac-n.test"
SENDER, ALICE, BOB = f"sender@{ORIG}", f"alice@{VAC}", f"bob@{VAC}"


@pytest.fixture(params=["sqlite", "postgresql"])
def nodes(request: pytest.FixtureRequest, make_node: Callable[..., Node],
          dns_world: dnsworld.DnsWorld, pg_schema: Callable[[], str]) -> tuple[Node, Node]:
    store = {"url": PG_DSN, "pg_schema": pg_schema()} if request.param == "postgresql" \
        else None
    orig = make_node("127.0.0.5", f"mx.{ORIG}", ORIG, users=("sender",))
    vac = make_node("127.0.0.6", f"mx.{VAC}", VAC, users=("alice", "bob"), store=store,
                    forwarding={"srs_domain": VAC})
    publish_domain(dns_world, orig, "reject")
    publish_domain(dns_world, vac, "reject")
    return orig, vac


def _activate(node: Node, address: str, text: str) -> None:
    service = node.server.services.extra["sieve"]
    assert isinstance(service, SieveService)

    async def go() -> None:
        account = await node.server.services.store.get_account(address)
        assert account is not None
        await service.put(account, "main", text)
        await service.activate(account, "main")

    node.server.run(go())


def _results(message: email.message.EmailMessage, host: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for value in message.get_all("Authentication-Results") or []:
        text = " ".join(str(value).split())
        if text.split(";", 1)[0].strip() != host:
            continue
        for part in text.split(";")[1:]:
            method, _, rest = part.strip().partition("=")
            found.setdefault(method, []).append(rest.split()[0])
    return found


def test_vacation_reply_and_refusal_notice_pass_dmarc_at_the_far_side(
        nodes: tuple[Node, Node]) -> None:
    orig, vac = nodes
    _activate(vac, ALICE, 'require "vacation";\n'
                          'vacation :days 1 :subject "Away" "Back on Monday.";\n')
    _activate(vac, BOB, 'require "reject";\nreject "Not from you, thanks.";\n')
    submit(orig, SENDER, [ALICE, BOB],
           make_message(SENDER, [ALICE, BOB], "Lunch?", message_id="<notice-1@orig-n.test>"))

    messages = inbox_with(orig, SENDER, count=2)
    by_subject = {str(m["Subject"]): m for m in messages}
    reply = by_subject["Away"]
    [refusal] = [m for s, m in by_subject.items() if s.startswith("Message refused")]
    assert reply["Auto-Submitted"] == "auto-replied (vacation)"
    assert refusal["Message-ID"] and refusal["Message-ID"].endswith(f"@mx.{VAC}>")
    for notice in (reply, refusal):
        results = _results(notice, orig.hostname)
        assert "pass" in results["dkim"], results
        assert results["dmarc"] == ["pass"], results
        assert notice["ARC-Seal"] is None
        assert str(notice["DKIM-Signature"]).replace(" ", "").count(f"d={VAC};") == 1
    # The null reverse-path (RFC 3834 3.3), not an SRS address of vac-n.test.
    raw = [m for m in inbox(orig.server, SENDER)]
    assert all(m.headers.startswith("Return-Path: <>") for m in raw), \
        [m.headers.split("\r\n", 1)[0] for m in raw]
