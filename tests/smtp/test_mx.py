"""The MX listener against a real server: delivery, pipelining, relay refusal, limits, defences."""

from __future__ import annotations

import logging
import re
import smtplib
import socket
import time
from collections.abc import Callable

import pytest

from tests.conftest import DOMAIN, RunningServer
from tests.smtp.helpers import ALICE, BOB, RawClient, body_of, inbox, message, queue

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)


def mx(server: RunningServer) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30)
    client.ehlo("client.remote.test")
    return client


@BOTH
def test_delivery_to_two_users_and_an_alias(mail_server: RunningServer) -> None:
    mail_server.add_alias(f"sales@{DOMAIN}", BOB)
    raw = message("two users and an alias")
    with mx(mail_server) as client:
        assert client.mail("carol@remote.test")[0] == 250
        for rcpt in (ALICE, BOB, f"sales@{DOMAIN}"):
            assert client.rcpt(rcpt)[0] == 250
        code, text = client.data(raw)
    assert code == 250
    queue_id = re.fullmatch(rb"2\.0\.0 Ok: queued as ([A-Z2-7]{12})", text)
    assert queue_id is not None
    [for_alice] = inbox(mail_server, ALICE)
    [for_bob] = inbox(mail_server, BOB)  # named twice (directly and by the alias), stored once
    assert for_alice.meta.blob_id == for_bob.meta.blob_id  # one file for both mailboxes
    assert body_of(for_alice) == raw
    headers = for_alice.headers
    assert headers.startswith(
        "Return-Path: <carol@remote.test>\r\nReceived: from client.remote.test")
    assert f"with ESMTP id {queue_id.group(1).decode()}" in headers
    assert "for <" not in headers  # several recipients: none is named (RFC 5321 7.2)
    assert for_alice.meta.envelope.subject == "two users and an alias"
    assert for_alice.meta.size == len(for_alice.data)
    assert queue(mail_server) == []


def test_single_recipient_is_named_in_received(mail_server: RunningServer) -> None:
    with mx(mail_server) as client:
        client.sendmail("carol@remote.test", [f"Alice+news@{DOMAIN}"], message("tagged"))
    [stored] = inbox(mail_server, ALICE)  # the +tag is stripped for routing
    assert f"for <Alice+news@{DOMAIN}>;" in stored.headers


def test_transaction_is_logged(
    mail_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailstead")
    with mx(mail_server) as client:
        client.sendmail("carol@remote.test", [ALICE], message("logged"))
    lines = [r.getMessage() for r in caplog.records if "smtp.transaction" in r.getMessage()]
    assert len(lines) == 1
    line = lines[0]
    for expected in ("queue_id=", "client=127.0.0.1", "tls=no", "sender=<carol@remote.test>",
                     f"recipients={ALICE}", "code=250", "size="):
        assert expected in line, line


def test_pipelined_transactions(mail_server: RunningServer) -> None:
    with RawClient(mail_server.ports["smtp"]) as c:
        assert "PIPELINING" in c.cmd("EHLO client.test")[1]
        c.send(b"MAIL FROM:<carol@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
               b"RCPT TO:<nobody@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        assert [c.reply()[0] for _ in range(5)] == [250, 250, 550, 250, 354]
        # The message, then a whole second transaction and QUIT, in one write.
        c.send(b"Subject: first\r\n\r\none\r\n.\r\n"
               b"RSET\r\nMAIL FROM:<dave@remote.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        assert [c.reply()[0] for _ in range(5)] == [250, 250, 250, 250, 354]
        c.send(b"Subject: second\r\n\r\ntwo\r\n.\r\nQUIT\r\n")
        assert c.reply()[0] == 250
        assert c.reply()[0] == 221
    assert [s.meta.envelope.subject for s in inbox(mail_server, ALICE)] == ["first"]
    assert [s.meta.envelope.subject for s in inbox(mail_server, BOB)] == ["first", "second"]


@pytest.mark.parametrize("path", [
    "<user@other.test>",
    "<user%other.test@example.test>",
    "<@example.test:user@other.test>",
    "<@a.example.test,@example.test:alice@example.test>",
    '<"user@other.test"@example.test>',
    '<"alice"@example.test>',
    "<user!other.test@example.test>",
])
def test_relay_attempts_are_refused(mail_server: RunningServer, path: str) -> None:
    with mx(mail_server) as client:
        client.mail("spammer@remote.test")
        code, text = client.docmd("RCPT", f"TO:{path}")
        assert code in (550, 553), text
        assert text[:4] in (b"5.7.", b"5.1."), text
        assert client.docmd("DATA")[0] in (503, 554)
    assert inbox(mail_server, ALICE) == []
    assert queue(mail_server) == []


def test_unknown_local_user(mail_server: RunningServer) -> None:
    with mx(mail_server) as client:
        client.mail("carol@remote.test")
        assert client.rcpt(f"nobody@{DOMAIN}") == (550, f"5.1.1 <nobody@{DOMAIN}>: user unknown"
                                                   .encode())


def test_alias_forwarding_elsewhere_is_queued(mail_server: RunningServer) -> None:
    mail_server.add_alias(f"fwd@{DOMAIN}", "friend@remote.test")
    with mx(mail_server) as client:
        client.sendmail("carol@remote.test", [f"fwd@{DOMAIN}"], message("forwarded"))
    [entry] = queue(mail_server)
    assert [r.address for r in entry.recipients] == ["friend@remote.test"]
    # SRS (issue 19): the forward goes out from an address of ours carrying the sender's
    assert entry.sender.startswith("SRS0=") and entry.sender.endswith(
        f"=remote.test=carol@{DOMAIN}")
    assert entry.account_id is None


def test_catch_all(mail_server: RunningServer) -> None:
    mail_server.add_alias(f"@{DOMAIN}", ALICE)
    with mx(mail_server) as client:
        client.sendmail("carol@remote.test", [f"anything@{DOMAIN}"], message("caught"))
    assert len(inbox(mail_server, ALICE)) == 1


def test_size_announced_and_enforced(make_server: object) -> None:
    server: RunningServer = make_server(limits={"max_message_size": 4096})  # type: ignore[operator]
    with mx(server) as client:
        assert client.esmtp_features["size"] == "4096"
        code, text = client.docmd("MAIL", "FROM:<carol@remote.test> SIZE=5000")
        assert (code, text[:5]) == (552, b"5.3.4")
        # Undeclared but too big: read to the end, refused, nothing stored, session goes on.
        client.mail("carol@remote.test")
        client.rcpt(ALICE)
        code, text = client.data(message("big", "x" * 70 + "\r\n") * 80)
        assert (code, text[:5]) == (552, b"5.3.4")
        assert client.noop()[0] == 250
        assert client.sendmail("carol@remote.test", [ALICE], message("small")) == {}
    assert [s.meta.envelope.subject for s in inbox(server, ALICE)] == ["small"]


def test_too_many_recipients(mail_server: RunningServer) -> None:
    with mx(mail_server) as client:
        client.mail("carol@remote.test")
        for i in range(100):
            assert client.rcpt(f"alice+{i}@{DOMAIN}")[0] == 250
        assert client.rcpt(BOB) == (452, b"4.5.3 Too many recipients")
        assert client.data(message("crowd"))[0] == 250
    assert len(inbox(mail_server, ALICE)) == 1
    assert inbox(mail_server, BOB) == []


def test_overlong_lines(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(smtp={"max_line_length": 100_000})
    with RawClient(server.ports["smtp"]) as c:
        c.cmd("EHLO client.test")
        assert c.code("NOOP " + "x" * 600) == "500 5.5.2"
        assert c.code("NOOP " + "x" * 100_000) == "500 5.5.2"  # far past any buffer
        assert c.code("NOOP") == "250 2.0.0"
        c.cmd("MAIL FROM:<carol@remote.test>")
        c.cmd("RCPT TO:<alice@example.test>")
        assert c.cmd("DATA")[0] == 354
        # Past RFC 5321's 1000 octets but within the configured bound: taken as it is.
        assert c.code(b"Subject: long\r\n\r\n" + b"y" * 1001 + b"\r\n.\r\n") == "250 2.0.0"
        c.cmd("MAIL FROM:<carol@remote.test>")
        c.cmd("RCPT TO:<alice@example.test>")
        assert c.cmd("DATA")[0] == 354
        assert c.cmd(b"Subject: longer\r\n\r\n" + b"z" * 99_999 + b"\r\n.\r\n") == (
            552, "5.3.4 Message refused: a line is longer than 100000 octets")
        assert c.code("NOOP") == "250 2.0.0"
    [stored] = inbox(server, ALICE)
    assert body_of(stored) == b"Subject: long\r\n\r\n" + b"y" * 1001 + b"\r\n"


SMUGGLING_ENDS = [b"\n.\r\n", b"\r\n.\n", b"\n.\n", b"\r.\r\n", b"\r.\r", b"\r\n.\r"]


@pytest.mark.parametrize("fake_end", SMUGGLING_ENDS)
def test_bare_lf_smuggling_is_refused(make_server: Callable[..., RunningServer],
                                      fake_end: bytes) -> None:
    server = make_server(smtp={"bare_line_feeds": "reject"})
    with RawClient(server.ports["smtp"]) as c:
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<carol@remote.test>")
        c.cmd("RCPT TO:<alice@example.test>")
        assert c.cmd("DATA")[0] == 354
        c.send(b"Subject: innocent\r\n\r\nhello" + fake_end
               + b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
               + b"Subject: smuggled\r\n\r\nevil\r\n.\r\n")
        # One reply for the whole thing, today's: nothing was smuggled.
        assert c.reply() == (550, "5.5.2 Message refused: bare <CR> or <LF> received")
        assert c.code("NOOP") == "250 2.0.0"  # and no stray replies are waiting
    assert inbox(server, ALICE) == []
    assert inbox(server, BOB) == []


@BOTH
@pytest.mark.parametrize("fake_end", SMUGGLING_ENDS)
def test_bare_lf_smuggling_normalised_into_one_message(mail_server: RunningServer,
                                                       fake_end: bytes) -> None:
    with RawClient(mail_server.ports["smtp"]) as c:
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<carol@remote.test>")
        c.cmd("RCPT TO:<alice@example.test>")
        assert c.cmd("DATA")[0] == 354
        c.send(b"Subject: innocent\r\n\r\nhello" + fake_end
               + b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
               + b"Subject: smuggled\r\n\r\nevil\r\n.\r\n")
        assert c.reply()[0] == 250  # one reply for the whole thing: one message
        assert c.code("NOOP") == "250 2.0.0"  # and no stray replies are waiting
    [stored] = inbox(mail_server, ALICE)
    assert inbox(mail_server, BOB) == []
    body = body_of(stored)
    # Everything the attacker sent is the text of the one message, with CRLF line ends only.
    assert body.startswith(b"Subject: innocent\r\n\r\nhello\r\n")
    assert body.endswith(b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<bob@example.test>\r\n"
                         b"DATA\r\nSubject: smuggled\r\n\r\nevil\r\n")
    assert body.count(b"\n") == body.count(b"\r\n") == body.count(b"\r")


def test_smtputf8_address(mail_server: RunningServer) -> None:
    mail_server.add_user(f"josé@{DOMAIN}")
    raw = "From: ñandú@remote.test\r\nSubject: olé\r\n\r\nhola\r\n".encode()
    with mx(mail_server) as client:
        assert client.has_extn("smtputf8")
        refused = client.sendmail("ñandú@remote.test", [f"josé@{DOMAIN}"], raw,
                                  mail_options=["SMTPUTF8"])
        assert refused == {}
        code, _ = client.docmd("MAIL", "FROM:<ñandú@remote.test>")
        assert code == 553  # RFC 6531: not without SMTPUTF8
    [stored] = inbox(mail_server, f"josé@{DOMAIN}")
    assert body_of(stored) == raw
    assert "with UTF8SMTP id" in stored.headers


def test_bdat_chunks_and_binarymime(mail_server: RunningServer) -> None:
    text = message("chunked")
    binary = b"Subject: binary\r\nContent-Type: application/octet-stream\r\n\r\n\x00\x01\n\r\xff"
    with RawClient(mail_server.ports["smtp"]) as c:
        assert "CHUNKING" in c.cmd("EHLO client.test")[1]
        c.send(b"MAIL FROM:<carol@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
               + f"BDAT {len(text) - 10}\r\n".encode() + text[:-10]
               + b"BDAT 10 LAST\r\n" + text[-10:])
        assert [c.reply()[0] for _ in range(4)] == [250] * 4
        c.send(b"MAIL FROM:<carol@remote.test> BODY=BINARYMIME\r\nRCPT TO:<bob@example.test>\r\n"
               + f"BDAT {len(binary)}\r\n".encode() + binary + b"BDAT 0 LAST\r\n")
        replies = [c.reply() for _ in range(4)]
        assert [r[0] for r in replies] == [250] * 4
        assert replies[3][1].startswith("2.0.0 Ok: queued as")
        # A chunk with bare LF is made CRLF unless the body is BINARYMIME.
        lf = b"Subject: lf\n\nhi\n.\r\n"
        c.send(b"MAIL FROM:<carol@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
               + f"BDAT {len(lf)} LAST\r\n".encode() + lf)
        assert [c.reply()[0] for _ in range(3)] == [250, 250, 250]
    chunked, normalised = inbox(mail_server, ALICE)
    assert body_of(chunked) == text
    assert body_of(normalised) == b"Subject: lf\r\n\r\nhi\r\n.\r\n"
    [stored] = inbox(mail_server, BOB)
    assert body_of(stored) == binary


def test_vrfy_reveals_nothing(mail_server: RunningServer) -> None:
    with mx(mail_server) as client:
        assert client.verify(ALICE)[0] == 252
        assert client.verify(f"nobody@{DOMAIN}")[0] == 252


def test_quota(make_server: object) -> None:
    server: RunningServer = make_server()  # type: ignore[operator]
    # The 900 bytes arrive as about 1,600 stored: Received, Return-Path, Authentication-Results
    # and Received-SPF count against the quota too.
    server.add_user(f"small@{DOMAIN}", quota_bytes=2500)
    target = f"small@{DOMAIN}"
    with mx(server) as client:
        assert client.sendmail("carol@remote.test", [target], message("fits", "x" * 900)) == {}
        client.docmd("MAIL", "FROM:<carol@remote.test> SIZE=3000")
        assert client.rcpt(target)[:1] == (552,)  # can never fit: permanent
        client.rset()
        client.docmd("MAIL", "FROM:<carol@remote.test> SIZE=1000")
        assert client.rcpt(target) == (452, f"4.2.2 <{target}>: mailbox full, try later".encode())
        client.rset()
        client.mail("carol@remote.test")  # no SIZE: accepted at RCPT, refused at the end
        assert client.rcpt(target)[0] == 250
        assert client.data(message("too much", "y" * 900))[0] == 452
    assert len(inbox(server, target)) == 1


def test_too_many_errors_disconnects(mail_server: RunningServer) -> None:
    with RawClient(mail_server.ports["smtp"]) as c:
        codes = [c.cmd(f"BOGUS{i}")[0] for i in range(10)]
        assert codes == [500] * 9 + [421]
        assert c.closed_by_server()


def test_http_post_is_dropped(mail_server: RunningServer) -> None:
    with RawClient(mail_server.ports["smtp"]) as c:
        assert c.cmd("POST / HTTP/1.1")[0] == 554
        assert c.closed_by_server()


def test_idle_timeout(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(limits={"smtp_idle_timeout": 1})
    with RawClient(server.ports["smtp"]) as c:
        c.cmd("EHLO client.test")
        code, text = c.reply()  # nothing sent: the server gives up on us
        assert (code, text[:5]) == (421, "4.4.2")
        assert c.closed_by_server()
    with RawClient(server.ports["smtp"]) as c:
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<carol@remote.test>")
        c.cmd("RCPT TO:<alice@example.test>")
        assert c.cmd("DATA")[0] == 354
        c.send(b"Subject: never finished\r\n\r\nhalf a mess")  # ... and then silence
        assert c.reply()[0] == 421
        assert c.closed_by_server()
    assert inbox(server, ALICE) == []


def test_idle_timeout_counts_from_each_wait(make_server: Callable[..., RunningServer]) -> None:
    """Every wait for the client gets the whole idle time: a command every 0.6 s keeps a
    session with a 1 s timeout open for longer than 1 s, and silence still ends it."""
    server = make_server(limits={"smtp_idle_timeout": 1})
    with RawClient(server.ports["smtp"]) as c:
        assert c.cmd("EHLO client.test")[0] == 250
        started = time.monotonic()
        for _ in range(4):
            time.sleep(0.6)
            assert c.cmd("NOOP")[0] == 250
        code, text = c.reply()
        assert (code, text[:5]) == (421, "4.4.2")
        assert time.monotonic() - started >= 3.4  # four pauses, then the full second
        assert c.closed_by_server()


def test_connection_cap_per_ip(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(limits={"max_connections_per_ip": 2})
    port = server.ports["smtp"]
    first, second = RawClient(port), RawClient(port)
    try:
        assert first.greeting[0] == second.greeting[0] == 220
        with RawClient(port) as third:
            assert third.greeting[0] == 421 and third.greeting[1].startswith("4.7.0")
            assert third.closed_by_server()
        assert first.code("QUIT") == "221 2.0.0"
        first.close()
        for _ in range(100):  # the server frees the slot once it has seen the close
            with RawClient(port) as again:
                if again.greeting[0] == 220:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the freed connection slot was never reused")
    finally:
        first.close()
        second.close()


def test_connection_cap_in_total_spans_addresses_and_listeners(
        make_server: Callable[..., RunningServer]) -> None:
    """limits.max_connections counts every open connection of the process, from any address
    and on any listener."""
    import imaplib

    server = make_server(limits={"max_connections": 2, "max_connections_per_ip": 100})
    port = server.ports["smtp"]
    first = RawClient(port)
    second = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0))
    try:
        assert first.greeting[0] == 220
        assert second.recv(100).startswith(b"220 ")
        with RawClient(port) as third:
            assert third.greeting[0] == 421 and third.closed_by_server()
        with pytest.raises(imaplib.IMAP4.error, match="BYE Too many connections"):
            imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=10)
    finally:
        first.close()
        second.close()


@BOTH
def test_account_removed_and_created_again(mail_server: RunningServer) -> None:
    carl = f"carl@{DOMAIN}"
    mail_server.add_user(carl)
    with mx(mail_server) as client:
        assert client.sendmail("carol@remote.test", [carl], message("before")) == {}
    mail_server.run(mail_server.services.store.remove_account(carl))
    with mx(mail_server) as client:
        client.mail("carol@remote.test")
        assert client.rcpt(carl)[0] == 550
    mail_server.add_user(carl)  # a new account: may even get the old one's ids back
    with mx(mail_server) as client:
        assert client.sendmail("carol@remote.test", [carl], message("after")) == {}
    assert [s.meta.envelope.subject for s in inbox(mail_server, carl)] == ["after"]


def test_notify_success_gets_a_delivered_notice(mail_server: RunningServer) -> None:
    """We advertise DSN: a recipient delivered here with NOTIFY=SUCCESS makes a 'delivered'
    report for the sender (RFC 3461 6.2.2); without NOTIFY, or for the null sender, none."""
    with mx(mail_server) as client:
        client.mail("carol@remote.test", ["RET=FULL", "ENVID=carol-42"])
        assert client.rcpt(ALICE, ["NOTIFY=SUCCESS,FAILURE", f"ORCPT=rfc822;{ALICE}"])[0] == 250
        assert client.rcpt(BOB)[0] == 250  # no NOTIFY: no success report for bob
        assert client.data(message("tell me"))[0] == 250
        client.mail("<>")
        assert client.rcpt(ALICE, ["NOTIFY=SUCCESS"])[0] == 250
        assert client.data(message("a bounce", sender="MAILER-DAEMON@remote.test"))[0] == 250
    [report] = [e for e in queue(mail_server) if e.sender == ""]
    assert [r.address for r in report.recipients] == ["carol@remote.test"]
    text = mail_server.services.blobs.get(report.blob_id).decode()
    assert "Subject: Successful Mail Delivery Report" in text
    assert "report-type=delivery-status" in text
    assert f"Final-Recipient: rfc822; {ALICE}" in text and "Action: delivered" in text
    assert f"Original-Recipient: rfc822;{ALICE}" in text
    assert "Original-Envelope-Id: carol-42" in text and "Status: 2.0.0" in text
    assert f"Final-Recipient: rfc822; {BOB}" not in text
    assert "Hello." not in text  # the header section only
