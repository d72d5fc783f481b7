"""The DNSBL check (checks/dnsbl.py) against the test DNS world: the blocklist zone is published
in the world's "test." zone, and the node asks it through its own resolver (unbound walking
from our root), as it would ask a real list. A listed client is refused, an unlisted one served;
with phase = "rcpt" the refusal comes at RCPT; with action = "score" its mail is only scored."""

from __future__ import annotations

import smtplib
from collections.abc import Callable

import pytest

from tests import dnsworld
from tests.delivery.conftest import Node
from tests.delivery.helpers import make_message
from tests.smtp.helpers import header_field as field
from tests.smtp.helpers import inbox
from tests.trust.conftest import publish

ZONE = "bl.dnsbl.test"
LISTED, CLEAN = "127.0.0.66", "127.0.0.67"
DOMAIN = "dnsbl-e2e.test"
USER = f"rita@{DOMAIN}"


@pytest.fixture
def listing(dns_world: dnsworld.DnsWorld) -> None:
    """127.0.0.66 listed (RFC 5782 2.1: the reversed octets under the zone), with a TXT reason."""
    publish(dns_world, f"66.0.0.127.{ZONE}", "A", "127.0.0.2")
    publish(dns_world, f"66.0.0.127.{ZONE}", "TXT", "listed for testing")
    # An answer outside 127/8 is an error report of the list, never a listing.
    publish(dns_world, f"68.0.0.127.{ZONE}", "A", "192.0.2.1")


def node_with(make_node: Callable[..., Node], ip: str, **dnsbl: object) -> Node:
    return make_node(ip, f"mx.{DOMAIN}", DOMAIN, users=("rita",),
                     checks={"dnsbl": {"zones": [ZONE], "exempt": [], **dnsbl}},
                     spam={"bayes": False})


def connect(node: Node, mx_port: int, source: str) -> smtplib.SMTP:
    smtp = smtplib.SMTP(node.ip, mx_port, timeout=30, source_address=(source, 0))
    smtp.ehlo(f"client.{source}")
    return smtp


@pytest.mark.usefixtures("listing")
def test_listed_client_refused_unlisted_served(make_node: Callable[..., Node],
                                               mx_port: int) -> None:
    node = node_with(make_node, "127.0.0.2")
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP(node.ip, mx_port, timeout=30, source_address=(LISTED, 0))
    assert refused.value.smtp_code == 554
    assert refused.value.smtp_error == (
        f"5.7.1 Service unavailable; client [{LISTED}] listed at {ZONE}".encode())

    for source in (CLEAN, "127.0.0.68"):  # not listed; an error answer of the list
        with connect(node, mx_port, source) as smtp:
            assert smtp.sendmail("carol@remote.test", [USER],
                                 make_message("carol@remote.test", [USER], f"from {source}")) == {}
    assert len(inbox(node.server, USER)) == 2


@pytest.mark.usefixtures("listing")
def test_refused_at_rcpt_or_only_scored(make_node: Callable[..., Node], mx_port: int) -> None:
    node = node_with(make_node, "127.0.0.2", phase="rcpt")
    with connect(node, mx_port, LISTED) as smtp:
        assert smtp.mail("carol@remote.test")[0] == 250
        code, text = smtp.rcpt(USER)
    assert code == 554 and text.endswith(f"listed at {ZONE}".encode())

    scoring = node_with(make_node, "127.0.0.3", action="score", points=6.0)
    with connect(scoring, mx_port, LISTED) as smtp:
        assert smtp.sendmail("carol@remote.test", [USER],
                             make_message("carol@remote.test", [USER], "scored")) == {}
    [junk] = inbox(scoring.server, USER, "Junk")  # 6 points: over junk_score
    assert "DNSBL_BL_DNSBL_TEST" in field(junk.headers, "X-Spam-Status")
