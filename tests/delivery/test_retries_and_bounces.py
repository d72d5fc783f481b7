"""Routing outcomes, retries, delay notices, expiry, and who gets a bounce (and who never does)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest

from mailstead.services.delivery import InboundEnvelope, InboundRecipient, delivery_service
from tests.conftest import mailstead_cmd
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
DAVE = "dave@delta.test"  # mx.delta.test has no server running in these tests


@pytest.fixture
def alpha(make_node: Callable[..., Node]) -> Node:
    return make_node("127.0.0.2", "mx.alpha.test", "alpha.test", users=("alice",))


@pytest.mark.parametrize(
    ("recipient", "status", "reason"),
    [
        ("someone@null.test", "5.1.10", "null MX"),
        ("someone@nowhere.test", "5.1.2", "does not exist"),
        ("someone@nomail.test", "5.4.4", "no address"),
    ],
)
def test_undeliverable_domains_bounce_at_the_first_attempt(
    alpha: Node, recipient: str, status: str, reason: str
) -> None:
    queue_id = submit(alpha, ALICE, [recipient], make_message(ALICE, [recipient], "Nowhere"))
    [bounce] = inbox_with(alpha, ALICE)
    human, fields, _ = report_parts(bounce)
    assert fields[1]["final-recipient"] == f"rfc822; {recipient}"
    assert fields[1]["status"] == status
    assert "diagnostic-code" not in fields[1]  # no server ever answered
    assert reason in human
    entry = entry_done(alpha, queue_id)
    assert entry.attempts == 1 and entry.recipients[0].status == "failed"


def test_backup_mx_takes_the_mail_when_the_best_one_is_down(
    alpha: Node, make_node: Callable[..., Node]
) -> None:
    # multi.test: MX 10 dead.multi.test (nothing listens), MX 20 mx.beta.test.
    beta = make_node("127.0.0.3", "mx.beta.test", "beta.test", users=("bob",))
    beta.server.add_domain("multi.test")
    beta.server.add_user("mia@multi.test")
    queue_id = submit(alpha, ALICE, ["mia@multi.test"],
                      make_message(ALICE, ["mia@multi.test"], "Backup"))
    [message] = inbox_with(beta, "mia@multi.test")
    assert message["Subject"] == "Backup"
    [mia] = entry_done(alpha, queue_id).recipients
    assert mia.status == "delivered" and "mx.beta.test[127.0.0.3]" in mia.last_reply


def test_delay_notice_then_bounce_when_the_lifetime_runs_out(
    make_node: Callable[..., Node]
) -> None:
    alpha = make_node("127.0.0.2", "mx.alpha.test", "alpha.test", users=("alice",),
                      delivery={"delay_notice": 1.0, "lifetime": 4.0})
    queue_id = submit(alpha, ALICE, [DAVE], make_message(ALICE, [DAVE], "Slow boat"))

    [delayed] = inbox_with(alpha, ALICE)
    assert delayed["Subject"] == "Delayed Mail (still being retried)"
    _human, fields, returned = report_parts(delayed)
    assert fields[1]["action"] == "delayed"
    assert fields[1]["status"].startswith("4.")
    assert "will-retry-until" in fields[1]
    assert returned == "message/rfc822"

    [_, bounce] = inbox_with(alpha, ALICE, count=2)
    assert bounce["Subject"] == "Undelivered Mail Returned to Sender"
    human, fields, _ = report_parts(bounce)
    assert fields[1]["action"] == "failed" and fields[1]["status"] == "5.4.7"
    assert "gave up after" in human and "Connection refused" in human
    entry = entry_done(alpha, queue_id)
    assert entry.delay_notified and entry.recipients[0].status == "failed"
    assert len(fetch_inbox(alpha, ALICE)) == 2  # one delay notice, one bounce: no more


def test_notify_never_and_the_null_sender_get_no_notice(alpha: Node) -> None:
    nobody = "someone@null.test"
    quiet = submit(alpha, ALICE, [nobody], make_message(ALICE, [nobody], "Quiet"),
                   rcpt_options=["NOTIFY=NEVER"])

    async def bounce_of_a_bounce() -> str:
        envelope = InboundEnvelope(
            sender="", recipients=[InboundRecipient(nobody, remote=[nobody])],
            protocol="ESMTP", client_ip="127.0.0.1", helo="client.test")
        result = await delivery_service(alpha.server.services).deliver(
            envelope, make_message("MAILER-DAEMON@elsewhere.test", [nobody], "A bounce"))
        return result.queue_id

    null = alpha.server.run(bounce_of_a_bounce())
    for queue_id in (quiet, null):
        assert entry_done(alpha, queue_id).recipients[0].status == "failed"
    # Neither produced a notice: nothing new anywhere in the queue, nothing in the INBOX.
    entries = alpha.server.run(alpha.server.services.store.list_queue(include_done=True))
    assert sorted(e.id for e in entries) == sorted([quiet, null])
    assert fetch_inbox(alpha, ALICE) == []


def _cli(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(mailstead_cmd("queue", *args, "--data", str(node.data_dir)),
                          capture_output=True, text=True, timeout=60)


def test_queue_cli_list_show_retry_delete(make_node: Callable[..., Node]) -> None:
    alpha = make_node("127.0.0.2", "mx.alpha.test", "alpha.test", users=("alice",),
                      delivery={"retry_initial": 3600.0, "retry_max": 3600.0})
    first = submit(alpha, ALICE, [DAVE], make_message(ALICE, [DAVE], "One"))
    second = submit(alpha, ALICE, [DAVE, BOB], make_message(ALICE, [DAVE, BOB], "Two"))
    wait_for(lambda: all(queue_entry(alpha, q).attempts == 1 for q in (first, second)),
             "first attempts")

    listed = json.loads(_cli(alpha, "list", "--json").stdout)
    assert {row["id"]: row["pending"] for row in listed} == {first: 1, second: 2}
    table = _cli(alpha, "list").stdout
    assert first in table and "ATTEMPTS" in table

    shown = json.loads(_cli(alpha, "show", second, "--json").stdout)
    statuses = {r["address"]: r["status"] for r in shown["recipients"]}
    assert statuses == {DAVE: "pending", BOB: "pending"}  # beta is not running either
    assert "Connection refused" in next(
        r["last_reply"] for r in shown["recipients"] if r["address"] == DAVE)
    assert "recipients:" in _cli(alpha, "show", second).stdout

    # The next retry is an hour away; `retry` makes it due now.
    proc = _cli(alpha, "retry", first)
    assert proc.returncode == 0 and "1 entry due now" in proc.stdout
    wait_for(lambda: queue_entry(alpha, first).attempts == 2, "the retry")

    # Only the submitter may recall it (--as acts for an account).
    alpha.server.add_user("eve@alpha.test")
    refused = _cli(alpha, "recall", first, "--as", "eve@alpha.test")
    assert refused.returncode == 1 and f"no queued message {first} of yours" in refused.stderr
    recalled = _cli(alpha, "recall", first, "--as", ALICE)
    assert recalled.returncode == 0, recalled.stderr
    assert f"recalled (will not receive it): {DAVE}" in recalled.stdout
    assert queue_entry(alpha, first).recipients[0].status == "recalled"

    proc = _cli(alpha, "delete", second, "--json")
    assert json.loads(proc.stdout) == {"deleted": second}, proc.stderr
    assert alpha.server.run(alpha.server.services.store.get_queue_entry(second)) is None

    missing = _cli(alpha, "show", "NOSUCHID")
    assert missing.returncode == 1 and "no queue entry NOSUCHID" in missing.stderr
