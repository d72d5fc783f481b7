"""Recall from the terminal client and the admin CLI (issue 21 item 3): the R key recalls the
Sent message under the cursor through the web API and shows each recipient's outcome (Textual
pilot, real IMAP/SMTP/HTTP), and ``mailstead queue recall --by ADDRESS`` names the
administrator in the report the sender gets. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import subprocess
from collections.abc import Callable

import pytest
from imapclient import IMAPClient

from mailstead.client.connection import MailClient
from mailstead.client.tui import MailApp
from tests.cli.test_mail_client import client_for, until
from tests.conftest import PASSWORD, RunningServer, mailstead_cmd
from tests.smtp.helpers import ALICE, BOB

FAR = ["ann@far-away.example", "ben@far-away.example"]


def _with_web(server: RunningServer) -> MailClient:
    client = client_for(server)
    web = f"http://127.0.0.1:{server.ports['http']}"
    return MailClient(dataclasses.replace(client.settings, web_url=web))


def _send(client: MailClient, subject: str, to: list[str]) -> None:
    client.send(client.compose(", ".join(to), subject, "see you at noon"))


def _shown(app: MailApp, selector: str) -> str:
    return str(app.query_one(selector).render())


def _report(server: RunningServer, user: str = ALICE) -> str:
    """The text of the recall report in the user's INBOX."""
    with IMAPClient("127.0.0.1", port=server.ports["imaps"], ssl=True,
                    ssl_context=server.ssl_context()) as imap:
        imap.login(user, PASSWORD)
        imap.select_folder("INBOX", readonly=True)
        uids = imap.search(["SUBJECT", "Recall report"])
        assert uids, "no recall report"
        raw = imap.fetch(uids[-1:], ["BODY.PEEK[]"])[uids[-1]][b"BODY[]"]
    message = email.message_from_bytes(raw, policy=email.policy.default)
    return str(message.get_body(("plain",)).get_content())  # type: ignore[union-attr]


def _select(app: MailApp, subject: str) -> None:
    row = [s.subject for s in app.summaries].index(subject)
    app.query_one("#messages").move_cursor(row=row)  # type: ignore[attr-defined]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
async def test_the_recall_key_in_the_sent_folder(mail_server: RunningServer) -> None:
    sender = _with_web(mail_server)
    await asyncio.to_thread(_send, sender, "Lunch plans", [BOB, *FAR])
    await asyncio.to_thread(_send, sender, "Only local", [BOB])  # nothing waits for it
    app = MailApp(sender)
    async with app.run_test(size=(140, 45)) as pilot:
        await until(lambda: app.summaries is not None, pilot)
        app.folder = "Sent"
        await app.load_messages()
        await until(lambda: len(app.summaries) == 2, pilot)

        _select(app, "Only local")
        await pilot.press("R")
        await until(lambda: "not waiting in the queue" in _shown(app, "#status"), pilot)

        _select(app, "Lunch plans")
        await pilot.press("R")
        await until(lambda: "recalled: 2 recipient(s)" in _shown(app, "#status"), pilot)
        pane = _shown(app, "#letter")
        assert 'Recalled "Lunch plans"' in pane
        for address in FAR:
            assert f"{address}: recalled, will not receive it" in pane

        await pilot.press("R")  # a second time: nothing left to recall
        await until(lambda: "not waiting in the queue" in _shown(app, "#status"), pilot)
    entries = mail_server.run(mail_server.services.store.list_queue(True))
    assert [{r.address: r.status for r in e.recipients} for e in entries] == [
        {a: "recalled" for a in FAR}]
    assert 'You recalled your message "Lunch plans"' in await asyncio.to_thread(
        _report, mail_server)


async def test_the_recall_key_without_a_web_address(mail_server: RunningServer) -> None:
    app = MailApp(client_for(mail_server))  # --host given, no --web-url
    await asyncio.to_thread(_send, app.client, "Far away", FAR)
    async with app.run_test(size=(140, 45)) as pilot:
        app.folder = "Sent"
        await app.load_messages()
        await until(lambda: len(app.summaries) == 1, pilot)
        await pilot.press("R")
        await until(lambda: "--web-url" in _shown(app, "#status"), pilot)
    entries = mail_server.run(mail_server.services.store.list_queue(False))
    assert len(entries) == 1  # still waiting


def _cli(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(mailstead_cmd("queue", "recall", *args, "--data",
                                        str(server.data_dir)),
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_queue_recall_by_names_the_administrator(
        make_server: Callable[..., RunningServer]) -> None:
    server = make_server()
    client = client_for(server)
    _send(client, "Newsletter", FAR)
    entries = server.run(server.services.store.list_queue(False))
    assert len(entries) == 1
    queue_id = entries[0].id

    bad = _cli(server, queue_id, "--by", "not an address")
    assert bad.returncode == 1 and "no @domain" in bad.stderr
    assert server.run(server.services.store.get_queue_entry(queue_id)).state == "queued"

    done = _cli(server, queue_id, "--by", "root@example.test")
    assert done.returncode == 0, done.stderr
    assert "by the administrator <root@example.test>" in done.stdout
    entry = server.run(server.services.store.get_queue_entry(queue_id))
    assert entry is not None and entry.state == "done"
    assert {r.last_reply for r in entry.recipients} == {
        "recalled by the administrator <root@example.test>"}
    report = _report(server)
    assert ('Your message "Newsletter"' in report
            and "was recalled by the administrator <root@example.test>" in report)

    # Without --by (nor --as) it is still the administrator's recall, unnamed.
    _send(client, "Second", FAR)
    second = next(e.id for e in server.run(server.services.store.list_queue(False)))
    unnamed = _cli(server, second, "--json")
    assert unnamed.returncode == 0, unnamed.stderr
    assert '"recalled_by": "the administrator"' in unnamed.stdout
    client.close()
