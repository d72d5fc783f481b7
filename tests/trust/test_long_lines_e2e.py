"""Long lines end to end (issue 22): mail with lines far past RFC 5322's 998 octets is taken in,
and what is relayed onward has short lines with DKIM (our users' mail) or ARC (forwards)
still verifying at the next server, because the re-encoding happens before signing/sealing.

alpha-l signs what alice submits, beta-l receives it and forwards fwd@ to gamma-l. The node
that re-encodes and queues runs on SQLite or PostgreSQL by the test's parameter.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import smtplib
from collections.abc import Callable

import pytest

from tests import dnsworld
from tests.conftest import PG_DSN
from tests.delivery.conftest import Node
from tests.delivery.helpers import inbox_with, submit
from tests.smtp.helpers import inbox
from tests.trust.conftest import publish_domain

ALPHA, BETA, GAMMA = "alpha-l.test", "beta-l.test", "gamma-l.test"
HTML = ("<html><body>" + "<p>Grüße, word</p>" * 12_000 + "</body></html>").encode()


@pytest.fixture(params=["sqlite", "postgresql"])
def nodes(request: pytest.FixtureRequest, make_node: Callable[..., Node],
          dns_world: dnsworld.DnsWorld, pg_schema: Callable[[], str]
          ) -> tuple[Node, Node, Node]:
    def store() -> dict[str, str] | None:
        return {"url": PG_DSN, "pg_schema": pg_schema()} if request.param == "postgresql" \
            else None

    alpha = make_node("127.0.0.2", f"mx.{ALPHA}", ALPHA, users=("alice",), store=store())
    beta = make_node("127.0.0.3", f"mx.{BETA}", BETA, users=("bob",), store=store())
    gamma = make_node("127.0.0.4", f"mx.{GAMMA}", GAMMA, users=("carol",),
                      trust={"arc_trusted_sealers": [BETA]})
    for node in (alpha, beta, gamma):
        publish_domain(dns_world, node)
    beta.server.add_alias(f"fwd@{BETA}", f"carol@{GAMMA}")
    return alpha, beta, gamma


def _message(sender: str, to: str, subject: str) -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@{sender.partition('@')[2]}>\r\n"
            "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/alternative; boundary="b1"\r\n\r\n'
            "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello.\r\n"
            "--b1\r\nContent-Type: text/html; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n").encode() + HTML + b"\r\n--b1--\r\n"


def _longest_line(raw: bytes) -> int:
    return max(map(len, raw.split(b"\r\n")))


def _results(raw: bytes, host: str) -> dict[str, list[str]]:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    fields = [str(v) for v in parsed.get_all("Authentication-Results", [])]
    [ours] = [f for f in fields if f.split(";", 1)[0].strip() == host]
    found: dict[str, list[str]] = {}
    for part in ours.split(";")[1:]:
        method, _, rest = part.strip().partition("=")
        found.setdefault(method, []).append(rest.split()[0])
    return found


def _html_of(raw: bytes) -> bytes:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    html = parsed.get_body(("html",))
    assert html is not None
    payload = html.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


def test_long_lines_relayed_short_with_dkim_and_arc_verifying(
        nodes: tuple[Node, Node, Node]) -> None:
    alpha, beta, gamma = nodes
    assert _longest_line(HTML) > 200_000
    # Our own user's mail: re-encoded at submission, then signed; DKIM passes at beta.
    submit(alpha, f"alice@{ALPHA}", [f"bob@{BETA}"],
           _message(f"alice@{ALPHA}", f"bob@{BETA}", "own mail"))
    inbox_with(beta, f"bob@{BETA}")
    [arrived] = inbox(beta.server, f"bob@{BETA}")
    assert _longest_line(arrived.data) <= 998
    results = _results(arrived.data, beta.hostname)
    assert results["dkim"] == ["pass", "pass"]
    assert results["dmarc"] == ["pass"]
    assert _html_of(arrived.data) == HTML  # the same text, quoted-printable now
    # Mail from elsewhere with the long line arrives at beta's MX as it is (a newsletter),
    # is forwarded by the alias: re-encoded, then ARC-sealed, and the seal verifies at gamma.
    newsletter = _message("news@remote.test", f"fwd@{BETA}", "newsletter")
    with smtplib.SMTP(beta.ip, beta.port("smtp"), timeout=30) as smtp:
        smtp.ehlo("client.remote.test")
        assert smtp.sendmail("news@remote.test", [f"fwd@{BETA}"], newsletter) == {}
    inbox_with(gamma, f"carol@{GAMMA}")
    [forwarded] = inbox(gamma.server, f"carol@{GAMMA}")
    assert _longest_line(forwarded.data) <= 998
    assert _results(forwarded.data, gamma.hostname)["arc"] == ["pass"]
    assert _html_of(forwarded.data) == HTML
