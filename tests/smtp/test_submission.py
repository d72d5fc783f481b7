"""Submission (RFC 6409) with STARTTLS and implicit TLS: AUTH, sender ownership, the queue."""

from __future__ import annotations

import base64
import logging
import re
import smtplib
import time
from collections.abc import Callable

import pytest

from tests.conftest import DOMAIN, PASSWORD, RunningServer
from tests.smtp.helpers import ALICE, BOB, RawClient, body_of, inbox, message, queue

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)


def plain_token(user: str, password: str = PASSWORD) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def starttls_client(server: RunningServer) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30)
    client.ehlo("laptop.example.test")
    assert client.has_extn("starttls")
    client.starttls(context=server.ssl_context())
    client.ehlo("laptop.example.test")
    return client


@BOTH
def test_starttls_then_auth_plain_and_send(mail_server: RunningServer) -> None:
    raw = message("from alice", sender=ALICE)
    with starttls_client(mail_server) as client:
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        assert "requiretls" in client.esmtp_features
        assert client.login(ALICE, PASSWORD)[0] == 235  # smtplib prefers PLAIN here
        client.mail(ALICE, ["RET=HDRS", "ENVID=env+2B1", "REQUIRETLS"])
        assert client.rcpt(BOB)[0] == 250
        assert client.rcpt("friend@remote.test", ["NOTIFY=FAILURE,DELAY",
                                                  "ORCPT=rfc822;friend@remote.test"])[0] == 250
        assert client.rcpt("Other@Remote.test")[0] == 250
        code, text = client.data(raw)
    assert code == 250
    match = re.search(rb"queued as (\w+)", text)
    assert match is not None
    queue_id = match.group(1).decode()
    [for_bob] = inbox(mail_server, BOB)
    assert body_of(for_bob) == raw
    headers = for_bob.headers
    assert f"with ESMTPSA id {queue_id}" in headers
    assert f"(authenticated as {ALICE})" in headers
    assert re.search(r"\(using TLSv1\.[23] \S+\)", headers), headers
    # Remote recipients wait in the outbound queue, in the same commit, on the same blob.
    [entry] = queue(mail_server)
    assert entry.id == queue_id and entry.blob_id == for_bob.meta.blob_id
    assert entry.sender == ALICE
    alice_id = mail_server.run(mail_server.services.store.get_account(ALICE))
    assert alice_id is not None and entry.account_id == alice_id.id
    assert [(r.address, r.notify, r.orcpt) for r in entry.recipients] == [
        ("friend@remote.test", "FAILURE,DELAY", "rfc822;friend@remote.test"),
        ("Other@remote.test", "", ""),
    ]
    assert (entry.envid, entry.ret, entry.requiretls, entry.state) == ("env+1", "HDRS", True,
                                                                        "queued")


def test_auth_login_over_starttls(mail_server: RunningServer) -> None:
    with starttls_client(mail_server) as client:
        client.user, client.password = BOB, PASSWORD
        code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        assert code == 235
        assert client.sendmail(BOB, [ALICE], message("login", sender=BOB)) == {}
    assert len(inbox(mail_server, ALICE)) == 1


def test_implicit_tls_submission(mail_server: RunningServer) -> None:
    port = mail_server.ports["submissions"]
    with smtplib.SMTP_SSL("127.0.0.1", port, context=mail_server.ssl_context(),
                          timeout=30) as client:
        client.ehlo("laptop")
        assert not client.has_extn("starttls")
        client.user, client.password = ALICE, PASSWORD
        assert client.auth("LOGIN", client.auth_login)[0] == 235  # with initial response
        assert client.sendmail(ALICE, [BOB], message("implicit", sender=ALICE)) == {}
    [stored] = inbox(mail_server, BOB)
    assert "with ESMTPSA" in stored.headers


def test_auth_refused_before_tls(mail_server: RunningServer) -> None:
    with RawClient(mail_server.ports["submission"]) as c:
        _, ehlo = c.cmd("EHLO laptop")
        assert "STARTTLS" in ehlo and "AUTH" not in ehlo
        assert c.code(f"AUTH PLAIN {plain_token(ALICE)}") == "538 5.7.11"
        assert c.code("MAIL FROM:<alice@example.test>") == "530 5.7.0"
    assert mail_server.services.limiter.failures_from("127.0.0.1") == 0


def test_plaintext_auth_on_loopback_when_allowed(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(auth={"allow_plaintext_on_loopback": True})
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as client:
        client.ehlo("laptop")
        assert "auth" in client.esmtp_features
        client.login(ALICE, PASSWORD)
        assert client.sendmail(ALICE, [BOB], message("loopback", sender=ALICE)) == {}
    assert len(inbox(server, BOB)) == 1


def test_sending_as_someone_else_is_refused(mail_server: RunningServer) -> None:
    mail_server.add_alias(f"info@{DOMAIN}", ALICE)
    with starttls_client(mail_server) as client:
        client.login(ALICE, PASSWORD)
        code, text = client.mail(BOB)
        assert (code, text[:5]) == (553, b"5.7.1")
        assert client.mail("ceo@remote.test")[0] == 553
        assert client.mail(f"ALICE+list@{DOMAIN}")[0] == 250  # own address, any tag
        client.rset()
        assert client.mail(f"info@{DOMAIN}")[0] == 250  # an alias that delivers to alice
    assert queue(mail_server) == []


def test_mail_needs_auth_on_submission(mail_server: RunningServer) -> None:
    with starttls_client(mail_server) as client:
        code, text = client.mail(ALICE)
        assert (code, text[:5]) == (530, b"5.7.0")
        assert client.docmd("RCPT", f"TO:<{BOB}>")[0] == 503


def test_mx_does_not_relay_for_authenticated_looking_clients(mail_server: RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", mail_server.ports["smtp"], timeout=30) as client:
        client.ehlo("x")
        assert "auth" not in client.esmtp_features
        assert client.docmd("AUTH", f"PLAIN {plain_token(ALICE)}")[0] == 502
        client.mail(ALICE)
        assert client.rcpt("friend@remote.test")[0] == 550


def test_starttls_with_pipelined_plaintext(mail_server: RunningServer) -> None:
    """CVE-2011-0411: commands sent in plain text behind STARTTLS must never run."""
    with RawClient(mail_server.ports["submission"]) as c:
        c.cmd("EHLO laptop")
        c.send(b"STARTTLS\r\nEHLO injected\r\nAUTH PLAIN " + plain_token(ALICE).encode()
               + b"\r\nMAIL FROM:<alice@example.test>\r\n")
        assert c.reply()[0] == 220
        c.starttls(mail_server.ssl_context())
        # Had the injected commands run, their replies would come first.
        assert c.code("NOOP") == "250 2.0.0"
        assert c.code("MAIL FROM:<alice@example.test>") == "503 5.5.1"  # no EHLO yet
        c.cmd("EHLO laptop")
        assert c.code("MAIL FROM:<alice@example.test>") == "530 5.7.0"  # not logged in


def test_auth_brute_force_is_slowed_then_locked(
    make_server: Callable[..., RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailstead")
    server = make_server(auth={"failure_delay": 0.05, "max_failures": 4})
    ctx = server.ssl_context()
    with RawClient(server.ports["submissions"], implicit_tls=ctx) as c:
        c.cmd("EHLO attacker")
        codes = [c.code(f"AUTH PLAIN {plain_token(ALICE, f'guess{i}')}") for i in range(4)]
        assert codes == ["535 5.7.8"] * 4
        # Locked out now: even the right password is refused, temporarily.
        assert c.code(f"AUTH PLAIN {plain_token(ALICE)}") == "454 4.7.0"
    with RawClient(server.ports["submissions"], implicit_tls=ctx) as c:
        c.cmd("EHLO attacker")
        assert c.code(f"AUTH PLAIN {plain_token(ALICE)}") == "454 4.7.0"
    delays = [float(m.group(1)) for r in caplog.records
              if (m := re.search(r"auth\.failed .* delay=([\d.]+)", r.getMessage()))]
    assert len(delays) == 4
    assert delays == sorted(delays) and delays[-1] > delays[0]  # each failure waits longer


def test_dsn_and_size_parameters_on_bdat_submission(mail_server: RunningServer) -> None:
    raw = message("chunked submission", sender=ALICE)
    with RawClient(mail_server.ports["submissions"], implicit_tls=mail_server.ssl_context()) as c:
        c.cmd("EHLO laptop")
        assert c.code(f"AUTH PLAIN {plain_token(ALICE)}") == "235 2.7.0"
        c.send(f"MAIL FROM:<{ALICE}> SIZE={len(raw)} BODY=8BITMIME\r\n".encode()
               + b"RCPT TO:<far@remote.test> NOTIFY=NEVER\r\n"
               + f"BDAT {len(raw)} LAST\r\n".encode() + raw)
        assert [c.reply()[0] for _ in range(3)] == [250, 250, 250]
    [entry] = queue(mail_server)
    assert entry.body_8bit and entry.recipients[0].notify == "NEVER"
    stored = mail_server.services.blobs.get(entry.blob_id)
    assert stored.endswith(raw) and not stored.startswith(b"Return-Path:")


def test_session_and_transaction_lines_in_the_log(
        mail_server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    """One line when the connection opens, one per transaction (with TLS and the login), one
    when it closes, all carrying the same session id."""
    caplog.set_level(logging.INFO, logger="mailstead")
    with starttls_client(mail_server) as client:
        client.login(ALICE, PASSWORD)
        client.sendmail(ALICE, [BOB], message("logged", sender=ALICE))
    lines = [r.getMessage() for r in caplog.records]

    def one(event: str) -> str:
        found = [line for line in lines if line.startswith(event + " ")]
        assert len(found) == 1, (event, lines)
        return found[0]

    opened, done = one("conn.open"), one("smtp.transaction")
    [session] = re.findall(r"session=(\S+)", opened)
    assert "listener=submission" in opened and "client=127.0.0.1" in opened
    for expected in (f"session={session}", 'tls="TLSv1.3', f"auth={ALICE}",
                     f"sender=<{ALICE}>", f"recipients={BOB}", "code=250", "queue_id="):
        assert expected in done, done
    for _ in range(100):  # the close is logged once the server has seen it
        closes = [line for line in (r.getMessage() for r in caplog.records)
                  if line.startswith("conn.close ") and f"session={session}" in line]
        if closes:
            break
        time.sleep(0.05)
    assert closes, lines
