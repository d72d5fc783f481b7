"""The terminal client's conversation view (issue 17): UID THREAD REFERENCES from the server,
each reply indented below what it answers, toggled with "t" (Textual's pilot)."""

from __future__ import annotations

import asyncio
import smtplib

from mailstead.client.connection import thread_members
from mailstead.client.tui import MailApp
from tests.cli.test_mail_client import client_for, until
from tests.conftest import RunningServer
from tests.smtp.helpers import ALICE

# (Message-ID, In-Reply-To, Subject, day of December 2026), in arrival order
LETTERS = [
    ("q", "", "Lunch on Friday", 1),
    ("a1", "q", "Re: Lunch on Friday", 2),
    ("n", "", "Newsletter", 5),
    ("a2", "a1", "Re: Lunch on Friday", 3),
    ("b1", "q", "Re: Lunch on Friday", 4),
]


def _send(server: RunningServer) -> None:
    for mid, parent, subject, day in LETTERS:
        raw = (f"From: Carol <carol@remote.test>\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
               f"Date: Wed, {day:02d} Dec 2026 10:00:00 +0000\r\nMessage-ID: <{mid}@x>\r\n"
               + (f"In-Reply-To: <{parent}@x>\r\n" if parent else "") + "\r\nHi\r\n")
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as client:
            client.sendmail("carol@remote.test", [ALICE], raw.encode())


def test_thread_members_follow_rfc_5256_nesting() -> None:
    # "(3 6 (4 23)(44 7 96))" as IMAPClient parses it; a dummy root: "((1 2)(3))"
    assert thread_members((3, 6, (4, 23), (44, 7, 96))) == [
        (3, 0), (6, 1), (4, 2), (23, 3), (44, 2), (7, 3), (96, 4)]
    assert thread_members(((1, 2), (3,))) == [(1, 0), (2, 1), (3, 0)]


async def test_the_terminal_client_shows_conversations(mail_server: RunningServer) -> None:
    await asyncio.to_thread(_send, mail_server)
    app = MailApp(client_for(mail_server))
    async with app.run_test(size=(140, 45)) as pilot:
        await until(lambda: len(app.summaries) == 5, pilot)
        assert app.summaries[0].subject == "Newsletter"  # by date, newest first
        await pilot.press("t")
        await until(lambda: app.threaded and app.summaries[0].depth == 0
                    and app.summaries[0].subject == "Lunch on Friday", pilot)
        # The thread with the newest arrival first; replies below what they answer,
        # siblings by date: q -> (a1 -> a2), b1
        assert [(s.subject, s.depth) for s in app.summaries] == [
            ("Lunch on Friday", 0), ("Re: Lunch on Friday", 1), ("Re: Lunch on Friday", 2),
            ("Re: Lunch on Friday", 1), ("Newsletter", 0)]
        table = app.query_one("#messages")
        assert str(table.get_row_at(2)[2]).startswith("  └ Re: Lunch")  # type: ignore[attr-defined]
        assert "conversations" in str(app.query_one("#status").render())
        await pilot.press("t")  # back to the list by date
        await until(lambda: not app.threaded and app.summaries[0].subject == "Newsletter",
                    pilot)
