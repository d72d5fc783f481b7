"""Three mailstead servers find each other through DNS and pass mail between them.

alpha.test (127.0.0.2, SQLite), beta.test (127.0.0.3, PostgreSQL) and mail.sub.gamma.test
(127.0.0.4, SQLite; its zone is delegated to a second name server and it has no MX, so the
implicit MX is used). Users submit, read over IMAP, and get bounces as people would.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest

from tests import dnsworld
from tests.conftest import PG_DSN, mailstead_cmd
from tests.delivery.conftest import Node
from tests.delivery.helpers import (
    entry_done,
    fetch_inbox,
    inbox_with,
    make_message,
    queue_entry,
    report_parts,
    submit,
    wait_for,
)

ALICE = "alice@alpha.test"
BOB = "bob@beta.test"
CAROL = "carol@mail.sub.gamma.test"


@pytest.fixture
def trio(make_node: Callable[..., Node], pg_schema: Callable[[], str]) -> tuple[Node, Node, Node]:
    alpha = make_node("127.0.0.2", "mx.alpha.test", "alpha.test", users=("alice",))
    beta = make_node("127.0.0.3", "mx.beta.test", "beta.test", users=("bob",),
                     store={"url": PG_DSN, "pg_schema": pg_schema()})
    gamma = make_node("127.0.0.4", "mail.sub.gamma.test", "mail.sub.gamma.test",
                      users=("carol",))
    return alpha, beta, gamma


def test_one_message_reaches_two_domains_over_dns(
    trio: tuple[Node, Node, Node], dns_world: dnsworld.DnsWorld
) -> None:
    alpha, beta, gamma = trio
    message = make_message(ALICE, [BOB, CAROL], "Hello both", "One message, two servers.\r\n")
    queue_id = submit(alpha, ALICE, [BOB, CAROL], message)

    [at_beta] = inbox_with(beta, BOB)
    [at_gamma] = inbox_with(gamma, CAROL)
    for received, node in ((at_beta, beta), (at_gamma, gamma)):
        assert received["Subject"] == "Hello both"
        assert "One message, two servers." in received.get_body().get_content()
        assert received["Return-Path"] == f"<{ALICE}>"
        # The hops, newest first: the receiving server (from alpha, over TLS), then alpha
        # (from the submitting client, authenticated).
        hops = [" ".join(hop.split()) for hop in received.get_all("Received")]
        assert len(hops) == 2
        assert hops[0].startswith("from mx.alpha.test ([127.0.0.2])")
        assert f"by {node.hostname} (mailstead) with ESMTPS" in hops[0]
        assert "(using TLSv1.3" in hops[0]
        assert "(authenticated as alice@alpha.test) by mx.alpha.test (mailstead) with ESMTPSA" \
            in hops[1]

    entry = entry_done(alpha, queue_id)
    assert {r.address: r.status for r in entry.recipients} == {BOB: "delivered",
                                                                CAROL: "delivered"}
    # Whether TLS was used is on record for each recipient.
    for recipient in entry.recipients:
        assert "TLSv1.3" in recipient.last_reply and recipient.last_reply.startswith("250 ")
    # gamma's address came from the child zone's own server, through the delegation.
    assert ("mail.sub.gamma.test.", "A") in dns_world.child.asked


def test_message_waits_while_the_server_is_down_then_arrives(
    trio: tuple[Node, Node, Node], restart_node: Callable[[Node], Node]
) -> None:
    alpha, beta, _gamma = trio
    beta.server.stop()
    queue_id = submit(alpha, ALICE, [BOB], make_message(ALICE, [BOB], "Patience"))

    def retried() -> bool:
        entry = queue_entry(alpha, queue_id)
        return entry.attempts >= 2 and entry.state == "queued"

    wait_for(retried, "two failed attempts")
    [bob] = queue_entry(alpha, queue_id).recipients
    assert bob.status == "pending"
    assert "mx.beta.test[127.0.0.3]" in bob.last_reply and "refused" in bob.last_reply.lower()

    restart_node(beta)
    [message] = inbox_with(beta, BOB)
    assert message["Subject"] == "Patience"
    assert entry_done(alpha, queue_id).recipients[0].status == "delivered"


def test_unknown_user_bounces_to_the_sender_inbox(trio: tuple[Node, Node, Node]) -> None:
    alpha, beta, gamma = trio
    nobody = "nobody@mail.sub.gamma.test"
    queue_id = submit(alpha, ALICE, [BOB, nobody],
                      make_message(ALICE, [BOB, nobody], "Who is there"))

    inbox_with(beta, BOB)
    [bounce] = inbox_with(alpha, ALICE)
    assert bounce["Subject"] == "Undelivered Mail Returned to Sender"
    assert bounce["From"].addresses[0].username == "MAILER-DAEMON"
    assert bounce["Auto-Submitted"] == "auto-replied"
    assert bounce["Return-Path"] == "<>"
    human, fields, returned_type = report_parts(bounce)
    assert nobody in human and BOB not in human
    assert fields[0]["reporting-mta"] == "dns; mx.alpha.test"
    assert fields[0]["x-mailstead-queue-id"] == queue_id
    [recipient] = fields[1:]
    assert recipient["final-recipient"] == f"rfc822; {nobody}"
    assert recipient["action"] == "failed"
    assert recipient["status"] == "5.1.1"
    assert recipient["remote-mta"] == "dns; mail.sub.gamma.test"
    assert recipient["diagnostic-code"].startswith("smtp; 550 5.1.1")
    assert returned_type == "message/rfc822"
    returned = bounce.get_payload()[2].get_payload()[0]
    assert returned["Subject"] == "Who is there"
    assert fetch_inbox(gamma, CAROL) == []
    entry = entry_done(alpha, queue_id)
    assert {r.address: r.status for r in entry.recipients} == {BOB: "delivered",
                                                                nobody: "failed"}


def test_recalled_message_never_arrives_and_sender_learns_who_had_it(
    trio: tuple[Node, Node, Node], make_node: Callable[..., Node]
) -> None:
    alpha, beta, _gamma = trio
    dave = "dave@delta.test"  # delta's server is not running yet
    queue_id = submit(alpha, ALICE, [BOB, dave], make_message(ALICE, [BOB, dave], "Oops"))
    inbox_with(beta, BOB)
    wait_for(lambda: queue_entry(alpha, queue_id).attempts >= 1, "a first attempt")

    proc = subprocess.run(
        mailstead_cmd("queue", "recall", queue_id, "--json", "--data", str(alpha.data_dir)),
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["recalled"] == [dave]
    assert report["delivered"] == [BOB]

    # The sender is told in the INBOX too.
    [notice] = inbox_with(alpha, ALICE)
    assert notice["Subject"] == "Recall report: Oops"
    text = notice.get_content()
    assert dave in text.split("Already delivered")[0]
    assert BOB in text.split("Already delivered")[1]

    # delta comes up; a message sent after the recall arrives, the recalled one never does.
    delta = make_node("127.0.0.5", "mx.delta.test", "delta.test", users=("dave",))
    submit(alpha, ALICE, [dave], make_message(ALICE, [dave], "After the recall"))
    [only] = inbox_with(delta, dave)
    assert only["Subject"] == "After the recall"
    entry = queue_entry(alpha, queue_id)
    assert entry.state == "done"
    assert {r.address: r.status for r in entry.recipients} == {BOB: "delivered",
                                                                dave: "recalled"}
    assert [m["Subject"] for m in fetch_inbox(delta, dave)] == ["After the recall"]


def test_bounce_travels_back_to_a_remote_sender(trio: tuple[Node, Node, Node]) -> None:
    alpha, beta, _gamma = trio
    # beta forwards fwd@beta.test to a user gamma does not have: beta's bounce goes back to
    # alice at alpha through beta's own queue, from the null sender.
    beta.server.add_alias("fwd@beta.test", "nobody@mail.sub.gamma.test")
    submit(alpha, ALICE, ["fwd@beta.test"], make_message(ALICE, ["fwd@beta.test"], "Forward me"))

    [bounce] = inbox_with(alpha, ALICE)
    assert bounce["Return-Path"] == "<>"
    hops = [" ".join(hop.split()) for hop in bounce.get_all("Received")]
    assert hops[0].startswith("from mx.beta.test ([127.0.0.3])")
    assert "by mx.alpha.test (mailstead) with ESMTPS" in hops[0]
    _human, fields, _ = report_parts(bounce)
    assert fields[0]["reporting-mta"] == "dns; mx.beta.test"
    assert fields[1]["final-recipient"] == "rfc822; nobody@mail.sub.gamma.test"
    assert fields[1]["status"] == "5.1.1"
    # The bounce itself left beta's queue with the null sender, and was delivered.
    entries = beta.server.run(beta.server.services.store.list_queue(include_done=True))
    [notice_entry] = [e for e in entries if e.sender == ""]
    assert entry_done(beta, notice_entry.id).recipients[0].status == "delivered"


def test_dsn_parameters_travel_and_the_last_server_reports_delivery(
        trio: tuple[Node, Node, Node]) -> None:
    """NOTIFY, ORCPT and ENVID given at submission to alpha are passed on to beta, which
    delivers and sends alpha's user a 'delivered' report naming them (RFC 3461)."""
    alpha, beta, _ = trio
    submit(alpha, ALICE, [BOB], make_message(ALICE, [BOB], "Tell me it arrived"),
           mail_options=["ENVID=order-1234", "RET=HDRS"],
           rcpt_options=["NOTIFY=SUCCESS,FAILURE", f"ORCPT=rfc822;{BOB}"])
    inbox_with(beta, BOB)
    [report] = inbox_with(alpha, ALICE)
    assert report["Subject"] == "Successful Mail Delivery Report"
    assert report["Return-Path"] == "<>"
    human, fields, returned_type = report_parts(report)
    assert BOB in human
    assert fields[0]["reporting-mta"] == "dns; mx.beta.test"  # the server that delivered
    assert fields[0]["original-envelope-id"] == "order-1234"
    [recipient] = fields[1:]
    assert recipient["action"] == "delivered" and recipient["status"] == "2.0.0"
    assert recipient["original-recipient"] == f"rfc822;{BOB}"
    assert returned_type == "text/rfc822-headers"
