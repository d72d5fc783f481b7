"""The daily sending cap of new accounts holds on SMTP submission too, and is shared with the
webmail: a fresh sign-up cannot turn into a spam cannon through any door."""

from __future__ import annotations

import smtplib
from collections.abc import Callable

from tests.conftest import PASSWORD, RunningServer
from tests.smtp.helpers import ALICE, BOB, message


def send(server: RunningServer, recipients: list[str]) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30) as client:
        client.starttls(context=server.ssl_context())
        client.login(ALICE, PASSWORD)
        client.mail(ALICE)
        for rcpt in recipients:
            assert client.rcpt(rcpt)[0] == 250
        client.putcmd("data")
        assert client.getreply()[0] == 354
        client.send(message("hello", sender=ALICE).replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n")
        return client.getreply()


def test_cap_defers_submission_beyond_the_daily_allowance(
    make_server: Callable[..., RunningServer],
) -> None:
    server = make_server(web={"new_account_daily_cap": 2})
    assert send(server, [BOB])[0] == 250
    code, text = send(server, [BOB, "friend@remote.test"])
    assert code == 450 and b"4.7.1 new accounts may send to 2 recipients a day" in text
    assert send(server, [BOB])[0] == 250  # one more fits: 2 recipients today
    code, _ = send(server, [BOB])
    assert code == 450


def test_no_cap_when_disabled(
    make_server: Callable[..., RunningServer],
) -> None:
    server = make_server(web={"new_account_daily_cap": 0})
    for _ in range(3):
        assert send(server, [BOB, "friend@remote.test"])[0] == 250
