"""Forwarding that survives (issue 19, item 4), three instances over the test DNS world.

orig-s.test (DMARC p=reject, DKIM keys published) sends to aliases at a-s.test that forward to
b-s.test. The forward leaves a-s.test with an SRS0 envelope sender of a-s.test (so SPF passes
at b-s.test) and an ARC seal; the author's DKIM signature stays intact, so DMARC passes at the
far side. Bounces come back through SRS to the sender at orig-s.test, both ways they can:

- b-s.test refuses the recipient at RCPT: a-s.test's own queue writes the DSN to the SRS
  address and reverses it to the sender;
- b-s.test accepts (an alias of its own forwarding on, with SRS1) and its queue fails later:
  its DSN goes to b-s.test's SRS1 address, reversed to a-s.test's SRS0 address, which
  a-s.test's MX accepts, reverses and relays to orig-s.test.

A forged SRS address is refused at a-s.test's RCPT. The forwarder (a-s.test) and the far side
run on SQLite or PostgreSQL by the test's parameter.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable

import pytest

from tests import dnsworld
from tests.conftest import PG_DSN
from tests.delivery.conftest import Node
from tests.delivery.helpers import inbox_with, make_message, report_parts, submit
from tests.smtp.helpers import inbox
from tests.trust.conftest import publish, publish_domain

ORIG, FWD, FAR, NOMAIL = "orig-s.test", "a-s.test", "b-s.test", "nomail-s.test"
SENDER = f"sender@{ORIG}"


@pytest.fixture(params=["sqlite", "postgresql"])
def nodes(request: pytest.FixtureRequest, make_node: Callable[..., Node],
          dns_world: dnsworld.DnsWorld, pg_schema: Callable[[], str]
          ) -> tuple[Node, Node, Node]:
    def store() -> dict[str, str] | None:
        return {"url": PG_DSN, "pg_schema": pg_schema()} if request.param == "postgresql" \
            else None

    orig = make_node("127.0.0.5", f"mx.{ORIG}", ORIG, users=("sender",))
    # (The test config's 'domains' names example.test, which would be the SRS domain.)
    fwd = make_node("127.0.0.6", f"mx.{FWD}", FWD, store=store(),
                    forwarding={"srs_domain": FWD})
    far = make_node("127.0.0.7", f"mx.{FAR}", FAR, users=("bob",), store=store(),
                    trust={"arc_trusted_sealers": [FWD]}, forwarding={"srs_domain": FAR})
    publish_domain(dns_world, orig, "reject")
    # The forwarder's and the far side's own notices (From: MAILER-DAEMON@mx.<domain>) are
    # not DKIM-signed: their domains ask for no DMARC enforcement here.
    publish_domain(dns_world, fwd, "none")
    publish_domain(dns_world, far, "none")
    publish(dns_world, NOMAIL, "MX", "0 .")  # RFC 7505: takes no mail
    fwd.server.add_alias(f"alice@{FWD}", f"bob@{FAR}")
    fwd.server.add_alias(f"lost@{FWD}", f"nobody@{FAR}")
    fwd.server.add_alias(f"far@{FWD}", f"relay@{FAR}")
    far.server.add_alias(f"relay@{FAR}", f"someone@{NOMAIL}")
    return orig, fwd, far


def _results(raw: bytes, host: str) -> dict[str, list[str]]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").replace("\r\n\t", " ")
    fields = [line.partition(":")[2] for line in head.split("\r\n")
              if line.lower().startswith("authentication-results:")]
    [ours] = [f for f in fields if f.split(";", 1)[0].strip() == host]
    found: dict[str, list[str]] = {}
    for part in ours.split(";")[1:]:
        method, _, rest = part.strip().partition("=")
        found.setdefault(method, []).append(rest.split()[0])
    return found


def _return_path(raw: bytes) -> str:
    first = raw.split(b"\r\n", 1)[0].decode()
    assert first.startswith("Return-Path: <"), first
    return first[len("Return-Path: <"):-1]


def test_forward_with_srs_and_arc_passes_dmarc_and_bounces_return(
        nodes: tuple[Node, Node, Node]) -> None:
    orig, fwd, far = nodes
    original = make_message(SENDER, [f"alice@{FWD}"], "forwarded with SRS",
                            message_id="<srs-1@orig-s.test>")
    submit(orig, SENDER, [f"alice@{FWD}"], original)
    inbox_with(far, f"bob@{FAR}")
    [arrived] = inbox(far.server, f"bob@{FAR}")
    # The far side saw an SRS0 sender of the forwarder's domain, passing SPF...
    return_path = _return_path(arrived.data)
    assert return_path.startswith("SRS0=") and return_path.endswith(f"={ORIG}=sender@{FWD}")
    results = _results(arrived.data, far.hostname)
    assert results["spf"] == ["pass"]
    # ... the author's DKIM signature intact (DMARC passes by it), and the forwarder's seal.
    assert "pass" in results["dkim"]
    assert results["dmarc"] == ["pass"]
    assert results["arc"] == ["pass"]
    body = original.split(b"\r\n\r\n", 1)[1]
    assert arrived.data.endswith(body)

    # Refused by the far side at RCPT: the forwarder's DSN reaches the sender through SRS.
    submit(orig, SENDER, [f"lost@{FWD}"],
           make_message(SENDER, [f"lost@{FWD}"], "to nobody", message_id="<srs-2@orig-s.test>"))
    [dsn] = inbox_with(orig, SENDER)
    _text, fields, _returned = report_parts(dsn)
    assert fields[1]["final-recipient"].replace(" ", "") == f"rfc822;nobody@{FAR}"
    assert fields[1]["action"] == "failed"

    # Accepted by the far side, failed later: its DSN goes to its own SRS1 address, back to
    # the forwarder's SRS0 address over SMTP, and from there to the sender.
    submit(orig, SENDER, [f"far@{FWD}"],
           make_message(SENDER, [f"far@{FWD}"], "to no mail", message_id="<srs-3@orig-s.test>"))
    messages = inbox_with(orig, SENDER, count=2)
    _text, fields, _returned = report_parts(messages[1])
    assert fields[1]["final-recipient"].replace(" ", "") == f"rfc822;someone@{NOMAIL}"
    assert fields[1]["action"] == "failed"
    assert str(messages[1]["From"]).endswith(f"@mx.{FAR}>")

    # A forged SRS address (or one of another key) is no relay to the sender.
    with smtplib.SMTP(fwd.ip, fwd.port("smtp"), timeout=30) as smtp:
        smtp.ehlo("client.elsewhere.test")
        smtp.mail("")
        code, text = smtp.rcpt(f"SRS0=AAAAAA=AB={ORIG}=sender@{FWD}")
        assert (code, text[:6]) == (550, b"5.7.1 "), (code, text)
        assert b"forged" in text
        code, text = smtp.rcpt(f"SRS0=broken@{FWD}")
        assert code == 550, (code, text)
