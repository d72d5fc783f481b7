"""The webmail's sorted and threaded views (issue 17): the order of IMAP SORT and the
conversations of THREAD=REFERENCES (RFC 5256) from the mailbox service, over real HTTP
(the JSON API) and in Chromium (the message list and the conversation of a message)."""

from __future__ import annotations

import httpx
from playwright.sync_api import Page, expect

from tests.conftest import RunningServer
from tests.web.conftest import base_url, new_user
from tests.web.helpers import api_client, send_smtp
from tests.web.test_browser import login, page, row  # noqa: F401 (page is a fixture)

# (Message-ID, References, From, Subject, day of March 2024, body octets)
DISCUSSION = [
    ("a", "<root@x>", "Carol <carol@friends.example>", "Re: Plan", 2, 300),
    ("b", "<root@x> <a@x>", "Bob <bob@friends.example>", "Re: Plan", 3, 50),
    ("c", "<root@x>", "Alice <alice@friends.example>", "Re: Plan", 4, 900),
    ("d", "<root@x> <a@x> <b@x>", "Dave <dave@friends.example>", "Re: Plan", 5, 10),
    ("f", "", "Erin <erin@friends.example>", "Other topic", 1, 500),
    ("g", "", "Frank <frank@friends.example>", "Re: Other topic", 7, 700),
    ("h", "", "Zoe <zoe@friends.example>", "Zebra facts", 6, 100),
]


def _deliver(server: RunningServer, user: str) -> None:
    for mid, refs, sender, subject, day, size in DISCUSSION:
        head = (f"From: {sender}\r\nTo: {user}\r\nSubject: {subject}\r\n"
                f"Date: {day:02d} Mar 2024 10:00:00 +0000\r\nMessage-ID: <{mid}@x>\r\n")
        if refs:
            head += f"References: {refs}\r\n"
        send_smtp(server.ports["smtp"], "list@friends.example", [user],
                  (head + "\r\n" + "x" * size + "\r\n").encode())


def _inbox(client: httpx.Client) -> int:
    return next(int(f["id"]) for f in client.get("/api/folders").json() if f["name"] == "INBOX")


def test_sorts_and_conversations_over_http(shared_server: RunningServer) -> None:
    user = new_user(shared_server, "threadview")
    _deliver(shared_server, user)
    client = api_client(base_url(shared_server), user)
    try:
        inbox = _inbox(client)

        def listing(**params: str) -> list[tuple[str, int]]:
            """(sender's name, conversation size) of each entry, every page in turn."""
            entries: list[tuple[str, int]] = []
            page, pages = 1, 1
            while page <= pages:
                found = client.get(f"/api/folders/{inbox}/messages",
                                   params={**params, "page": str(page)})
                assert found.status_code == 200, found.text
                entries += [(m["from"].split()[0], m["thread_size"])
                            for m in found.json()["messages"]]
                page, pages = page + 1, found.json()["pages"]
            return entries

        by_date = ["Frank", "Zoe", "Dave", "Alice", "Bob", "Carol", "Erin"]
        assert [n for n, _ in listing()] == by_date  # newest first by default
        assert [n for n, _ in listing(order="asc")] == by_date[::-1]
        assert [n for n, _ in listing(sort="from", order="asc")] == [
            "Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Zoe"]  # by addr-mailbox
        assert [n for n, _ in listing(sort="size", order="desc")] == [
            "Alice", "Frank", "Erin", "Carol", "Zoe", "Bob", "Dave"]
        # base subjects "other topic", "plan", "zebra facts"; ties in arrival order
        assert [n for n, _ in listing(sort="subject", order="asc")] == [
            "Erin", "Frank", "Carol", "Bob", "Alice", "Dave", "Zoe"]
        # Conversations, the newest first: "Other topic" (Frank's reply joins by subject),
        # "Zebra facts", then the plan whose first message is missing
        assert listing(threads="true") == [("Frank", 2), ("Zoe", 1), ("Dave", 4)]
    finally:
        client.close()


def test_conversation_view_in_the_browser(shared_server: RunningServer,
                                          page: Page) -> None:  # noqa: F811
    user = new_user(shared_server, "threadpage")
    _deliver(shared_server, user)
    login(page, shared_server, user)
    page.click("label:has-text('Conversations')")
    expect(page.locator("tr.message-row")).to_have_count(3)
    first = page.locator("tr.message-row").first
    expect(first).to_contain_text("Re: Other topic")
    expect(first.locator(".thread-count")).to_have_text("2")
    expect(row(page, "Re: Plan").locator(".thread-count")).to_have_text("4")
    # A message of the plan: its conversation in thread order, replies indented below
    # what they answer (a -> b -> d; c beside a under the missing root)
    row(page, "Re: Plan").locator(".cell-from a").click()
    items = page.locator(".conversation li")
    expect(items).to_have_count(4)
    assert [items.nth(i).get_attribute("data-depth") for i in range(4)] == ["0", "1", "2", "0"]
    expect(items.nth(0)).to_contain_text("Carol")
    expect(items.nth(1)).to_contain_text("Bob")
    expect(items.nth(2)).to_contain_text("Dave")
    expect(items.nth(3)).to_contain_text("Alice")
