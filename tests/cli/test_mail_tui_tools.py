"""The terminal client's tools from issue 21, driven key by key with Textual's pilot against a
running server: saving a message or an attachment to a file, searching the folder on the
server, moving a message to another folder, HTML-only messages shown as text, and the marks
column with the server's spam verdicts."""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest
from imapclient import IMAPClient

from mailstead.client.connection import SpamVerdict, Summary, search_criteria
from mailstead.client.html_text import html_to_text
from mailstead.client.marks import marks
from mailstead.client.saving import free_path, safe_filename, write_file
from mailstead.client.screens import FolderPickerScreen, SaveScreen, SearchScreen
from mailstead.client.tui import MailApp
from mailstead.spam.rules import GTUBE
from tests.cli.test_mail_client import client_for, mx_send, until
from tests.conftest import PASSWORD, RunningServer
from tests.smtp.helpers import ALICE

HTML = """<html><head><title>Offer</title><style>p { color: red }</style>
<script>document.write("tracking")</script></head><body>
<h1>Spring sale</h1><p>Dear Alice,<br>see <a href="https://shop.example/sale">our offers</a>
or write to <a href="mailto:help@shop.example">help@shop.example</a>.</p>
<ul><li>Tea &amp; cakes</li><li>Coffee</li></ul>
<table><tr><td>Tea</td><td>3 EUR</td></tr></table>
<a href="javascript:alert(1)">click</a></body></html>"""


def _deliver(server: RunningServer, message: EmailMessage) -> None:
    message["From"] = "Carol <carol@remote.test>"
    message["To"] = ALICE
    message["Date"] = "Wed, 02 Dec 2026 10:00:00 +0000"
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as client:
        client.send_message(message, "carol@remote.test", [ALICE])


def _with_attachment(server: RunningServer) -> None:
    message = EmailMessage()
    message["Subject"] = "Quarterly report"
    message.set_content("Numbers attached.")
    message.add_attachment(b"a,b\r\n1,2\r\n", maintype="text", subtype="csv",
                           filename="../../report.csv")  # a hostile name: stays in its folder
    _deliver(server, message)


def _html_only(server: RunningServer) -> None:
    message = EmailMessage()
    message["Subject"] = "Spring sale"
    message.set_content(HTML, subtype="html")
    _deliver(server, message)


def _imap(server: RunningServer) -> IMAPClient:
    imap = IMAPClient("127.0.0.1", port=server.ports["imaps"], ssl_context=server.ssl_context())
    imap.login(ALICE, PASSWORD)
    return imap


def _subjects(server: RunningServer, folder: str) -> list[str]:
    with _imap(server) as imap:
        imap.select_folder(folder, readonly=True)
        uids = imap.search("ALL")
        fetched = imap.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]) if uids else {}
        return sorted(data[b"BODY[HEADER.FIELDS (SUBJECT)]"].decode().strip()[9:]
                      for data in fetched.values())


def _shown(app: MailApp, selector: str) -> str:
    return str(app.query_one(selector).render())


async def test_save_the_message_and_an_attachment_never_overwriting(
        mail_server: RunningServer, tmp_path: Path) -> None:
    await asyncio.to_thread(_with_attachment, mail_server)
    tmp_path = tmp_path / "downloads"  # (the server's data sits in tmp_path too)
    tmp_path.mkdir()
    (tmp_path / "report.csv").write_bytes(b"older file")  # already there: kept
    app = MailApp(client_for(mail_server), save_folder=tmp_path)
    async with app.run_test(size=(140, 45)) as pilot:
        await until(lambda: len(app.summaries) == 1, pilot)
        await pilot.press("s")  # save: the whole message is offered first
        await until(lambda: isinstance(app.screen, SaveScreen), pilot)
        path_input = app.screen.query_one("#path")
        assert path_input.value == str(tmp_path / "Quarterly report.eml")  # type: ignore[attr-defined]
        await pilot.press("enter", "enter")  # pick it, save it
        await until(lambda: "saved to" in _shown(app, "#status"), pilot)
        saved = (tmp_path / "Quarterly report.eml").read_bytes()
        assert b"Subject: Quarterly report" in saved and b"Numbers attached." in saved

        await pilot.press("s")  # now the attachment, under a free name beside the old file
        await until(lambda: isinstance(app.screen, SaveScreen), pilot)
        await pilot.press("down")
        path_input = app.screen.query_one("#path")
        assert path_input.value == str(tmp_path / "report (1).csv")  # type: ignore[attr-defined]
        await pilot.press("enter", "enter")
        await until(lambda: "report (1).csv" in _shown(app, "#status"), pilot)
        assert (tmp_path / "report (1).csv").read_bytes() == b"a,b\r\n1,2\r\n"
        assert (tmp_path / "report.csv").read_bytes() == b"older file"

        await pilot.press("s")  # typing an existing name: asked first, replaced on a 2nd Enter
        await until(lambda: isinstance(app.screen, SaveScreen), pilot)
        await pilot.press("down", "enter")
        app.screen.query_one("#path").value = str(tmp_path / "report.csv")  # type: ignore[attr-defined]
        await pilot.press("enter")
        await until(lambda: "exists" in _shown(app.screen, "#save-note"), pilot)  # type: ignore[arg-type]
        assert (tmp_path / "report.csv").read_bytes() == b"older file"
        await pilot.press("enter")
        await until(lambda: not isinstance(app.screen, SaveScreen), pilot)
        assert (tmp_path / "report.csv").read_bytes() == b"a,b\r\n1,2\r\n"

        await pilot.press("s", "escape")  # cancelled: nothing written
        await until(lambda: "not saved" in _shown(app, "#status"), pilot)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "Quarterly report.eml", "report (1).csv", "report.csv"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
async def test_search_on_the_server_and_move_to_a_folder(mail_server: RunningServer) -> None:
    for subject, body in (("Invoice 1043", "Please pay."), ("Lunch", "Noon at the café?"),
                          ("Reminder", "The invoice is due.")):
        await asyncio.to_thread(mx_send, mail_server, subject, body)
    app = MailApp(client_for(mail_server))
    async with app.run_test(size=(140, 45)) as pilot:
        await until(lambda: len(app.summaries) == 3, pilot)
        await pilot.press("slash")
        await until(lambda: isinstance(app.screen, SearchScreen), pilot)
        await pilot.press(*"invoice", "enter")  # subject or body, any case
        await until(lambda: app.search_query == "invoice" and len(app.summaries) == 2, pilot)
        assert sorted(s.subject for s in app.summaries) == ["Invoice 1043", "Reminder"]
        assert 'found for "invoice"' in _shown(app, "#status")

        await pilot.press("slash")
        await until(lambda: isinstance(app.screen, SearchScreen), pilot)
        app.screen.query_one("#query").value = "subject:invoice café"  # type: ignore[attr-defined]
        await pilot.press("enter")  # both must match: no message has both
        await until(lambda: app.search_query == "subject:invoice café"
                    and not app.summaries, pilot)
        await pilot.press("slash")
        await until(lambda: isinstance(app.screen, SearchScreen), pilot)
        app.screen.query_one("#query").value = "café"  # type: ignore[attr-defined]
        await pilot.press("enter")  # non-ASCII: SEARCH CHARSET UTF-8
        await until(lambda: [s.subject for s in app.summaries] == ["Lunch"], pilot)

        await pilot.press("escape")  # back to the whole folder
        await until(lambda: app.search_query is None and len(app.summaries) == 3, pilot)

        row = [s.subject for s in app.summaries].index("Lunch")
        app.query_one("#messages").move_cursor(row=row)  # type: ignore[attr-defined]
        await pilot.press("m")
        await until(lambda: isinstance(app.screen, FolderPickerScreen), pilot)
        picker = app.screen
        assert "INBOX" not in picker.folders  # type: ignore[attr-defined]
        target = picker.folders.index("Archive")  # type: ignore[attr-defined]
        await pilot.press(*["down"] * target, "enter")
        await until(lambda: len(app.summaries) == 2, pilot)
        assert "moved to Archive" in _shown(app, "#status")
    assert _subjects(mail_server, "Archive") == ["Lunch"]
    assert _subjects(mail_server, "INBOX") == ["Invoice 1043", "Reminder"]


async def test_html_only_message_reads_as_text(mail_server: RunningServer) -> None:
    await asyncio.to_thread(_html_only, mail_server)
    app = MailApp(client_for(mail_server))
    async with app.run_test(size=(140, 45)) as pilot:
        await until(lambda: len(app.summaries) == 1, pilot)
        await pilot.press("enter")
        await until(lambda: app.letter is not None, pilot)
        shown = _shown(app, "#letter")
    body = shown.split("\n\n", 1)[1]
    assert body.startswith("Spring sale\n")
    assert "Dear Alice,\nsee our offers <https://shop.example/sale>" in body
    assert "write to help@shop.example." in body  # the address is the text already
    assert "* Tea & cakes" in body and "* Coffee" in body
    assert "Tea  3 EUR" in body
    for hidden in ("tracking", "color", "<p>", "javascript", "Offer"):
        assert hidden not in body
    assert "click" in body


async def test_marks_show_the_spam_verdict(
        make_server: Callable[..., RunningServer]) -> None:
    mail_server = make_server(spam={"reject_score": 5000.0})  # GTUBE filed, not refused
    await asyncio.to_thread(mx_send, mail_server, "Hello", "Just saying hello.")
    await asyncio.to_thread(mx_send, mail_server, "Win big", GTUBE.decode())  # to Junk
    app = MailApp(client_for(mail_server))
    async with app.run_test(size=(140, 45)) as pilot:
        await until(lambda: len(app.summaries) == 1, pilot)
        table = app.query_one("#messages")
        assert str(table.get_row_at(0)[0]) == " N -"  # type: ignore[attr-defined]
        assert app.summaries[0].spam is not None and not app.summaries[0].spam.is_spam
        assert "S spam" in _shown(app, "#status")  # the legend
        app.folder = "Junk"
        await app.load_messages()
        await until(lambda: len(app.summaries) == 1, pilot)
        assert str(table.get_row_at(0)[0]) == " NS-"  # type: ignore[attr-defined]
        spam = app.summaries[0].spam
        assert spam is not None and spam.is_spam and spam.score is not None \
            and spam.score >= 1000


def test_marks_come_from_flags_keywords_and_scores() -> None:
    def summary(flags: set[str], spam: SpamVerdict | None) -> Summary:
        return Summary(1, "Carol", "Hi", None, frozenset(flags), 10, spam=spam)

    doubtful = SpamVerdict(False, 3.1, 5.0)
    assert marks(summary({"\\Seen"}, None)) == "    "
    assert marks(summary({"\\Flagged"}, SpamVerdict(False, 0.0, 5.0))) == "*N  "
    assert marks(summary({"\\Seen"}, doubtful)) == "  ~ "
    assert marks(summary({"\\Seen", "$Junk"}, doubtful)) == "  S "  # the user said so
    assert marks(summary({"\\Seen", "$NotJunk"}, SpamVerdict(True, 9, 5))) == "    "
    assert marks(summary({"\\Seen", "$IntegrityVerified"}, None)) == "   V"
    assert marks(summary({"$IntegrityUnsigned"}, None)) == " N -"
    assert marks(summary({"\\Seen", "$IntegrityFailed", "$Junk"}, None)) == "  S!"
    head = email.message_from_bytes(b"X-Spam-Flag: NO\r\nX-Spam-Status: No, score=-0.5 "
                                    b"required=5.0\r\n\ttests=none\r\n\r\n",
                                    policy=email.policy.default)
    assert SpamVerdict.from_header(head) == SpamVerdict(False, -0.5, 5.0)
    assert SpamVerdict.from_header(EmailMessage()) is None


def test_search_words_become_imap_search_keys() -> None:
    assert search_criteria('invoice from:carol is:unread "big deal" subject:(x)') == [
        "TEXT", "invoice", "FROM", "carol", "UNSEEN", "TEXT", "big deal", "SUBJECT", "x"]
    assert search_criteria("a{5} to:") == ["TEXT", "a 5}", "TEXT", "to:"]
    with pytest.raises(Exception, match="nothing to search"):
        search_criteria("  ")


def test_file_names_and_writing(tmp_path: Path) -> None:
    assert safe_filename("../../etc/passwd", "x") == "passwd"
    assert safe_filename("C:\\Windows\\evil.exe", "x") == "evil.exe"
    assert safe_filename("..", "attachment-1") == "attachment-1"
    assert safe_filename("a\x00b\nc.txt", "x") == "a b c.txt"
    (tmp_path / "a.txt").write_text("1")
    (tmp_path / "a (1).txt").write_text("2")
    assert free_path(tmp_path, "a.txt") == tmp_path / "a (2).txt"
    with pytest.raises(FileExistsError):
        write_file(tmp_path / "a.txt", b"new")
    write_file(tmp_path / "a.txt", b"new", overwrite=True)
    assert (tmp_path / "a.txt").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a (1).txt", "a.txt"]


def test_html_to_text_survives_hostile_input() -> None:
    assert html_to_text("") == ""
    assert html_to_text("<script>x</script>") == ""
    assert html_to_text('<?xml version="1.0" encoding="utf-8"?><p>hi</p>') == "hi\n"
    assert isinstance(html_to_text("<div>" * 100_000 + "deep"), str)  # no crash, no hang
