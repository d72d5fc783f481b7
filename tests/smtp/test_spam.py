"""Spam scoring on the MX and the learning filter, as users see them: X-Spam fields in the
stored message, spam filed in Junk with $Junk, GTUBE refused, and each user's filter trained
by moving mail into and out of Junk with a real IMAP client (imaplib)."""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime, make_msgid

import pytest

from mailstead.spam.rules import GTUBE
from tests.conftest import DOMAIN, PASSWORD, RunningServer
from tests.imap.helpers import connect, ok
from tests.smtp.helpers import ALICE, BOB, inbox
from tests.smtp.helpers import header_field as field

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)

SPAMMY = ("Cheap watches and replica handbags, discount pharmacy, casino bonus, crypto "
          "giveaway, exclusive offer for winners, unsubscribe never")
HAMMY = ("The quarterly planning meeting moves to Thursday; please bring the budget draft "
         "and the minutes from the infrastructure review")


def mail(subject: str, body: str, *, to: str = ALICE, extra: str = "") -> bytes:
    return (f"From: Carol <carol@remote.test>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: {format_datetime(datetime.now(UTC))}\r\nMessage-ID: {make_msgid()}\r\n"
            f"{extra}\r\n{body}\r\n").encode()


def send(server: RunningServer, raw: bytes, *rcpts: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as client:
        client.ehlo("client.remote.test")
        client.sendmail("carol@remote.test", list(rcpts) or [ALICE], raw)


@BOTH
def test_good_mail_is_scored_and_lands_in_inbox(mail_server: RunningServer) -> None:
    send(mail_server, mail("lunch", "Shall we meet at noon?"))
    [stored] = inbox(mail_server, ALICE)
    assert field(stored.headers, "X-Spam-Flag") == "NO"
    assert float(field(stored.headers, "X-Spam-Score")) < 5.0
    assert field(stored.headers, "X-Spam-Status").startswith("No, score=")
    assert "$Junk" not in stored.meta.keywords


@BOTH
def test_spam_by_the_rules_goes_to_junk_flagged(mail_server: RunningServer) -> None:
    raw = (b"From: \"service@bank.test\" <win@prizes.test>\r\nTo: " + ALICE.encode() +
           b"\r\nSubject: YOU HAVE WON THE LOTTERY!!\r\nContent-Type: text/html\r\n\r\n"
           b"<p>Act now: wire transfer at http://192.0.2.7/claim</p>\r\n")
    send(mail_server, raw)
    assert inbox(mail_server, ALICE) == []
    [junk] = inbox(mail_server, ALICE, "Junk")
    assert field(junk.headers, "X-Spam-Flag") == "YES"
    assert float(field(junk.headers, "X-Spam-Score")) >= 5.0
    status = field(junk.headers, "X-Spam-Status")
    for rule in ("FROM_NAME_SPOOF", "SUBJ_ALL_CAPS", "URL_NUMERIC_IP", "MISSING_DATE"):
        assert rule in status
    assert "$Junk" in junk.meta.keywords
    with connect(mail_server) as client:  # what a mail client sees
        ok(client.select("Junk"))
        data = ok(client.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (X-SPAM-FLAG)])"))
        assert b"$Junk" in data[0][0]  # type: ignore[index]
        assert b"X-Spam-Flag: YES" in data[0][1]  # type: ignore[index]


def test_gtube_is_refused(mail_server: RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", mail_server.ports["smtp"], timeout=30) as client:
        client.ehlo("client.remote.test")
        client.mail("carol@remote.test")
        client.rcpt(ALICE)
        code, text = client.data(mail("test", GTUBE.decode()))
    assert code == 550
    assert text.startswith(b"5.7.1") and b"spam" in text
    assert inbox(mail_server, ALICE) == [] and inbox(mail_server, ALICE, "Junk") == []


def test_forged_spam_fields_are_removed(mail_server: RunningServer) -> None:
    raw = mail("hello", "hi", extra="X-Spam-Flag: NO\r\nX-Spam-Score: -100\r\n\tfolded\r\n")
    send(mail_server, raw)
    [stored] = inbox(mail_server, ALICE)
    assert stored.headers.count("X-Spam-Flag:") == 1
    assert "-100" not in stored.headers and "folded" not in stored.headers


def test_submission_is_not_scored(mail_server: RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", mail_server.ports["submission"], timeout=30) as client:
        client.starttls(context=mail_server.ssl_context())
        client.login(BOB, PASSWORD)
        raw = mail("from bob", "hi").replace(b"Carol <carol@remote.test>", BOB.encode())
        client.sendmail(BOB, [ALICE], raw)
    [stored] = inbox(mail_server, ALICE)
    assert "X-Spam-" not in stored.headers


def test_scoring_can_be_turned_off(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(spam={"enabled": False})
    send(server, mail("lunch", "noon?"))
    [stored] = inbox(server, ALICE)
    assert "X-Spam-" not in stored.headers


def _train(server: RunningServer, user: str) -> None:
    """The user files three spammy messages in Junk (COPY, as older clients move), moves three
    good ones to Archive and marks them $NotJunk there, as Thunderbird does."""
    for i in range(3):
        send(server, mail(f"offer {i}", SPAMMY), user)
        send(server, mail(f"meeting {i}", HAMMY), user)
    with connect(server, user) as client:
        ok(client.select("INBOX"))
        spam_uids = [b"1", b"3", b"5"]
        ham_uids = [b"2", b"4", b"6"]
        ok(client.uid("COPY", b",".join(spam_uids).decode(), "Junk"))
        ok(client.uid("STORE", b",".join(spam_uids).decode(), "+FLAGS.SILENT", r"(\Deleted)"))
        ok(client.expunge())
        ok(client.uid("MOVE", b",".join(ham_uids).decode(), "Archive"))
        ok(client.select("Archive"))
        ok(client.store("1:*", "+FLAGS", "($NotJunk)"))


@BOTH
def test_the_learning_filter_is_per_user(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(spam={"bayes_min_spam": 3, "bayes_min_ham": 3})
    _train(server, ALICE)
    totals = server.run(_totals(server, ALICE))
    assert totals == (3, 3)
    # One transaction to both users: alice's filter knows such mail, bob's has learnt nothing.
    send(server, mail("another offer", SPAMMY, to=f"undisclosed@{DOMAIN}"), ALICE, BOB)
    [for_alice] = [s for s in inbox(server, ALICE, "Junk") if b"another offer" in s.data]
    assert field(for_alice.headers, "X-Spam-Flag") == "YES"
    assert "BAYES_99" in field(for_alice.headers, "X-Spam-Status")
    [for_bob] = inbox(server, BOB)
    assert field(for_bob.headers, "X-Spam-Flag") == "NO"
    assert "BAYES" not in field(for_bob.headers, "X-Spam-Status")
    assert for_alice.meta.blob_id != for_bob.meta.blob_id  # each copy with its own verdict
    # And good mail still reaches alice's INBOX, scored down by her filter.
    send(server, mail("planning", HAMMY), ALICE)
    [good] = [s for s in inbox(server, ALICE) if b"planning" in s.data]
    assert "BAYES_00" in field(good.headers, "X-Spam-Status")


@BOTH
def test_a_message_moved_back_and_forth_counts_once(
        make_server: Callable[..., RunningServer]) -> None:
    server = make_server()
    send(server, mail("offer", SPAMMY))
    with connect(server) as client:
        ok(client.select("INBOX"))
        ok(client.uid("MOVE", "1", "Junk"))
        ok(client.select("Junk"))
        ok(client.store("1", "+FLAGS", "($Junk)"))  # the client says it again: no change
        assert server.run(_totals(server, ALICE)) == (1, 0)
        ok(client.uid("MOVE", "1", "INBOX"))  # "not spam" after all
        assert server.run(_totals(server, ALICE)) == (0, 1)
        ok(client.select("INBOX"))
        ok(client.uid("MOVE", "2", "Trash"))  # deleting is no verdict
    assert server.run(_totals(server, ALICE)) == (0, 1)


async def _totals(server: RunningServer, address: str) -> tuple[int, int]:
    account = await server.services.store.get_account(address)
    assert account is not None
    return await server.services.store.spam_totals(account.id)


def test_the_score_is_in_the_transaction_log(mail_server: RunningServer,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailstead")
    send(mail_server, mail("lunch", "noon?"))
    [line] = [r.getMessage() for r in caplog.records if "smtp.transaction" in r.getMessage()]
    assert "spam=" in line and "code=250" in line
