"""Recall where users are (issue 21 item 3): the Sent view marks a message still waiting in the
queue and offers Recall, the outcome per recipient is shown after, GET /api/outbox lists the
waiting messages by Message-ID, and a recall by an administrator is reported as theirs.
Chromium and real HTTP against a running server, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import RunningServer
from tests.web.conftest import ADMIN, base_url, new_user, web_overrides
from tests.web.helpers import api_client
from tests.web.test_browser import login, page, ready, row  # noqa: F401 (page is a fixture)

pytestmark = pytest.mark.slow
FAR = ["ann@far-away.example", "ben@far-away.example"]


def _folder(client: httpx.Client, name: str) -> int:
    return next(int(f["id"]) for f in client.get("/api/folders").json() if f["name"] == name)


def _send(client: httpx.Client, subject: str, to: list[str]) -> dict[str, object]:
    sent = client.post("/api/messages/send", json={"to": to, "subject": subject,
                                                   "text": "see you at noon"})
    assert sent.status_code == 200, sent.text
    return dict(sent.json())


def _report_text(client: httpx.Client) -> str:
    inbox = _folder(client, "INBOX")
    found = client.get(f"/api/folders/{inbox}/messages",
                       params={"subject": "Recall report"}).json()["messages"]
    assert found, "no recall report in the INBOX"
    return str(client.get(f"/api/folders/{inbox}/messages/{found[0]['uid']}").json()["text"])


def _mark_delivered(server: RunningServer, queue_id: str, address: str) -> None:
    """As if a queue worker had reached ``address`` already."""
    store = server.services.store
    entry = server.run(store.get_queue_entry(queue_id))
    assert entry is not None
    for recipient in entry.recipients:
        if recipient.address == address:
            recipient.status, recipient.last_reply = "delivered", "250 ok"
    server.run(store.update_queue_entry(entry))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_recall_from_the_sent_view(make_server: Callable[..., RunningServer],
                                   page: Page) -> None:  # noqa: F811
    server = make_server(**web_overrides())
    user = new_user(server, "sender")
    friend = new_user(server, "friend")
    client = api_client(base_url(server), user)
    try:
        waiting = _send(client, "Lunch plans", [friend, *FAR])
        _send(client, "Only local", [friend])  # delivered at once: nothing waits
        queue_id = str(waiting["queue_id"])
        _mark_delivered(server, queue_id, FAR[0])

        outbox = client.get("/api/outbox")
        assert outbox.status_code == 200, outbox.text
        items = outbox.json()["messages"]
        assert [(i["queue_id"], i["pending"], i["delivered"]) for i in items] == [
            (queue_id, [FAR[1]], [FAR[0]])]
        sent_box = _folder(client, "Sent")
        copy = client.get(f"/api/folders/{sent_box}/messages/{waiting['sent_uid']}/raw")
        assert f"Message-ID: {items[0]['message_id']}".encode() in copy.content
        assert api_client(base_url(server), friend).get("/api/outbox").json() == {
            "messages": []}  # only one's own messages
        assert httpx.get(base_url(server) + "/api/outbox").status_code == 401

        login(page, server, user)
        page.click(f"[data-folder='{sent_box}']")
        ready(page)
        lunch = row(page, "Lunch plans")
        expect(lunch.locator(".tag.status-waiting")).to_have_text("Waiting")
        expect(row(page, "Only local").locator(".recall-button")).to_have_count(0)
        page.once("dialog", lambda dialog: dialog.accept())
        lunch.locator(".recall-button").click()
        notice = page.locator("#notice")
        expect(notice).to_contain_text(f"will not be delivered to {FAR[1]}")
        expect(notice).to_contain_text(f"already delivered to {FAR[0]}")
        expect(page.locator("h1")).to_have_text("Sent")
        expect(row(page, "Lunch plans").locator(".status-waiting")).to_have_count(0)

        entry = server.run(server.services.store.get_queue_entry(queue_id))
        assert entry is not None and entry.state == "done"
        assert {r.address: r.status for r in entry.recipients} == {
            FAR[0]: "delivered", FAR[1]: "recalled"}
        assert client.get("/api/outbox").json() == {"messages": []}
        report = _report_text(client)
        assert "You recalled your message \"Lunch plans\"" in report
        assert FAR[1] in report

        # The open message offers Recall too.
        dinner = _send(client, "Dinner", FAR)
        page.goto(f"{base_url(server)}/mail/{sent_box}/{dinner['sent_uid']}")
        ready(page)
        expect(page.locator("#message-actions .status-waiting")).to_have_text("Waiting")
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("#message-actions .recall-button").click()
        expect(page.locator("#notice")).to_contain_text(
            f'"Dinner" recalled; will not be delivered to {FAR[0]}, {FAR[1]}')
        expect(page.locator("#message-actions .recall-button")).to_have_count(0)
        entry = server.run(server.services.store.get_queue_entry(str(dinner["queue_id"])))
        assert entry is not None and entry.state == "done"
    finally:
        client.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_an_admin_recall_names_the_admin(make_server: Callable[..., RunningServer],
                                         page: Page) -> None:  # noqa: F811
    server = make_server(**web_overrides())
    server.add_user(ADMIN, is_admin=True)
    user = new_user(server, "victim")
    client = api_client(base_url(server), user)
    admin = api_client(base_url(server), ADMIN)
    try:
        by_api = str(_send(client, "Newsletter", FAR)["queue_id"])
        recalled = admin.post(f"/api/admin/queue/{by_api}/recall")
        assert recalled.status_code == 200, recalled.text
        assert recalled.json()["recalled_by"] == f"the administrator <{ADMIN}>"
        assert recalled.json()["recalled"] == FAR
        entry = server.run(server.services.store.get_queue_entry(by_api))
        assert entry is not None
        assert {r.last_reply for r in entry.recipients} == {
            f"recalled by the administrator <{ADMIN}>"}
        report = _report_text(client)
        assert f"was recalled by the administrator <{ADMIN}>" in report
        assert "You recalled" not in report

        # The admin console's Recall button says who, too.
        by_page = str(_send(client, "Second newsletter", FAR)["queue_id"])
        login(page, server, ADMIN)
        page.goto(base_url(server) + "/admin/queue")
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator(f"tr[data-queue-id='{by_page}'] button[value=recall]").click()
        expect(page.locator("#notice")).to_contain_text(f"{by_page} recalled")
        entry = server.run(server.services.store.get_queue_entry(by_page))
        assert entry is not None and entry.state == "done"
        assert {r.last_reply for r in entry.recipients} == {
            f"recalled by the administrator <{ADMIN}>"}
        # A user's own recall through the API stays "the sender".
        own = str(_send(client, "Third", FAR)["queue_id"])
        mine = client.post(f"/api/messages/{own}/recall")
        assert mine.json()["recalled_by"] == "the sender"
        assert re.search(r"recalled", mine.text)
    finally:
        client.close()
        admin.close()
