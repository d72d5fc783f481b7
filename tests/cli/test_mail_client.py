"""The mail user's commands against a real server: ``mailstead mail send|list|read`` as a
subprocess, and the terminal client driven key by key with Textual's pilot."""

from __future__ import annotations

import asyncio
import os
import smtplib
import subprocess
from collections.abc import Callable
from pathlib import Path

from mailstead.client.connection import MailClient, Settings
from mailstead.client.tui import ComposeScreen, MailApp
from tests.conftest import DOMAIN, PASSWORD, RunningServer, mailstead_cmd
from tests.smtp.helpers import ALICE, BOB, inbox

SCREENSHOTS = Path(__file__).resolve().parents[2] / "screenshots"


def run_mail(server: RunningServer, *args: str, user: str = ALICE, stdin: str = "",
             password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        mailstead_cmd(*args, "--user", user, "--host", "127.0.0.1",
                      "--imap-port", str(server.ports["imaps"]),
                      "--smtp-port", str(server.ports["submissions"]),
                      "--cafile", str(server.cert_file)),
        input=stdin, capture_output=True, text=True, timeout=60,
        env={**os.environ, "MAILSTEAD_PASSWORD": password})


def mx_send(server: RunningServer, subject: str, body: str = "Hello Alice.",
            date: str = "Wed, 02 Dec 2026 10:00:00 +0000") -> None:
    raw = (f"From: Carol <carol@remote.test>\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
           f"Date: {date}\r\nMessage-ID: <{subject.replace(' ', '.')}"
           f"@remote.test>\r\n\r\n{body}\r\n").encode()
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as client:
        client.sendmail("carol@remote.test", [ALICE], raw)


def test_send_list_and_read_from_the_command_line(mail_server: RunningServer,
                                                  tmp_path: Path) -> None:
    report = tmp_path / "report.csv"
    report.write_text("a,b\n1,2\n")
    sent = run_mail(mail_server, "mail", "send", "--to", ALICE, "--subject", "Quarterly report",
                    "--attach", str(report), user=BOB, stdin="Numbers attached.\n")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip() == f"sent to {ALICE}"
    [copy] = inbox(mail_server, BOB, "Sent")  # the sender keeps a copy
    assert b"Quarterly report" in copy.data
    listed = run_mail(mail_server, "mail", "list")
    assert listed.returncode == 0, listed.stderr
    [line] = listed.stdout.splitlines()
    assert "Quarterly report" in line and line.split()[0] == "1" and " N " in line
    shown = run_mail(mail_server, "mail", "read", "1")
    assert shown.returncode == 0, shown.stderr
    assert f"From: {BOB}" in shown.stdout
    assert "Subject: Quarterly report" in shown.stdout
    assert "Attached: report.csv" in shown.stdout
    assert shown.stdout.endswith("Numbers attached.\n")


def test_mail_list_is_newest_sent_first_through_server_side_sort(
        mail_server: RunningServer) -> None:
    """The list comes in the server's SORT (REVERSE DATE) order: a message that arrived
    last but was written first is listed last."""
    for subject, day in (("Written second", "03"), ("Written third", "04"),
                         ("Written first", "01")):
        raw = (f"From: carol@remote.test\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
               f"Date: Wed, {day} Dec 2026 10:00:00 +0000\r\n\r\nhi\r\n").encode()
        with smtplib.SMTP("127.0.0.1", mail_server.ports["smtp"], timeout=30) as client:
            client.sendmail("carol@remote.test", [ALICE], raw)
    listed = run_mail(mail_server, "mail", "list")
    assert listed.returncode == 0, listed.stderr
    subjects = [line.split("  ")[-1] for line in listed.stdout.splitlines()]
    assert [next(s for s in ("third", "second", "first") if s in line)
            for line in subjects] == ["third", "second", "first"], listed.stdout


def test_wrong_password_is_one_line_and_exit_1(mail_server: RunningServer) -> None:
    result = run_mail(mail_server, "mail", "list", password="wrong")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("mailstead: IMAP login to 127.0.0.1:") and "failed" in line


def test_unknown_recipient_domain_is_refused_clearly(mail_server: RunningServer) -> None:
    result = run_mail(mail_server, "mail", "send", "--to", f"nobody@{DOMAIN}",
                      "--subject", "x", stdin="x\n")
    assert result.returncode == 1
    assert result.stderr.startswith("mailstead: the server refused the recipients")


def client_for(server: RunningServer, user: str = ALICE) -> MailClient:
    return MailClient(Settings(user, PASSWORD, "127.0.0.1", server.ports["imaps"], "implicit",
                               server.ports["submissions"], "implicit", str(server.cert_file)))


async def until(condition: Callable[[], bool], pilot: object, seconds: float = 20) -> None:
    for _ in range(int(seconds * 20)):
        if condition():
            return
        await pilot.pause(0.05)  # type: ignore[attr-defined]
    raise AssertionError("the screen never got there")


async def test_the_terminal_client_reads_replies_and_marks_spam(
        mail_server: RunningServer) -> None:
    await asyncio.to_thread(mx_send, mail_server, "Lunch on Friday", "Shall we meet at noon?")
    await asyncio.to_thread(mx_send, mail_server, "Cheap watches", "Buy now.",
                            "Thu, 03 Dec 2026 10:00:00 +0000")
    app = MailApp(client_for(mail_server))
    async with app.run_test(size=(140, 45)) as pilot:
        await until(lambda: len(app.summaries) == 2, pilot)
        assert app.summaries[0].subject == "Cheap watches"  # newest first
        await pilot.press("down", "enter")  # read "Lunch on Friday"
        await until(lambda: app.letter is not None, pilot)
        shown = str(app.query_one("#letter").render())
        assert "Subject: Lunch on Friday" in shown and "Shall we meet at noon?" in shown
        assert "Spam:    No, score=" in shown  # the server's verdict, shown to the user
        SCREENSHOTS.mkdir(exist_ok=True)
        app.save_screenshot("terminal-client.svg", str(SCREENSHOTS))

        await pilot.press("r")  # reply: recipient, subject and quote filled in
        await until(lambda: isinstance(app.screen, ComposeScreen), pilot)
        assert app.screen.query_one("#to").value == "Carol <carol@remote.test>"  # type: ignore[attr-defined]
        assert app.screen.query_one("#subject").value == "Re: Lunch on Friday"  # type: ignore[attr-defined]
        app.screen.query_one("#to").value = BOB  # type: ignore[attr-defined]
        await pilot.press("ctrl+s")
        await until(lambda: app.query_one("#status").render().plain.startswith("sent"),  # type: ignore[attr-defined]
                    pilot)

        await pilot.press("up", "j")  # "Cheap watches" is spam
        await until(lambda: len(app.summaries) == 1, pilot)

    [reply] = inbox(mail_server, BOB)
    assert b"Subject: Re: Lunch on Friday" in reply.data
    assert b"In-Reply-To: <Lunch.on.Friday@remote.test>" in reply.data
    assert b"> Shall we meet at noon?" in reply.data
    [junk] = inbox(mail_server, ALICE, "Junk")
    assert b"Cheap watches" in junk.data and "$Junk" in junk.meta.keywords
    totals = mail_server.run(_totals(mail_server))
    assert totals == (1, 0)  # the server's filter learnt from it


async def _totals(server: RunningServer) -> tuple[int, int]:
    account = await server.services.store.get_account(ALICE)
    assert account is not None
    return await server.services.store.spam_totals(account.id)
