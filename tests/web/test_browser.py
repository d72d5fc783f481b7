"""Real-browser tests: Debian's chromium driven by Playwright against a running server.

They walk through what a user does (sign up, log in, read, open an attachment, write an HTML
message with an attachment, search, move, delete, keyboard shortcuts, live new mail) and what
an administrator does (recall a queued message), and save screenshots of the main pages in
screenshots/ for the README.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from mailstead.store.interfaces import QueueEntry, QueueRecipient
from tests.conftest import PASSWORD, RunningServer
from tests.web import samples
from tests.web.conftest import ADMIN, BOB, base_url, new_user
from tests.web.helpers import send_smtp

SHOTS = Path(__file__).resolve().parents[2] / "screenshots"
pytestmark = pytest.mark.slow


LOOPBACK = re.compile(r"^(https?|wss?)://(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?/")
OUTSIDE: dict[int, list[str]] = {}  # page id -> URLs the page asked for beyond loopback


def outside_requests(page: Page) -> list[str]:
    return OUTSIDE[id(page)]


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    """Every request beyond loopback is refused and recorded: the product must work offline
    (no CDN), and the tests send nothing off this machine."""
    context = chromium.new_context(viewport={"width": 1320, "height": 820},
                                   accept_downloads=True)
    context.set_default_timeout(15_000)
    asked: list[str] = []

    def guard(route: Any) -> None:
        url = route.request.url
        if LOOPBACK.match(url) or url.startswith(("data:", "blob:", "about:")):
            route.continue_()
        else:
            asked.append(url)
            route.abort()

    context.route("**/*", guard)
    page = context.new_page()
    OUTSIDE[id(page)] = asked
    yield page
    context.close()
    del OUTSIDE[id(page)]
    # Only the remote image the reader asked for may have been wanted (and was refused).
    assert all(u.startswith("http://tracker.northwind.example/") for u in asked), asked


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.wait_for_load_state("load")
    page.wait_for_timeout(200)  # let CSS background icons paint (a picture, not a check)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def login(page: Page, server: RunningServer, user: str, password: str = PASSWORD) -> None:
    page.goto(base_url(server) + "/login")
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("#login-button")
    expect(page.locator("h1")).to_have_text("Inbox")
    ready(page)


def ready(page: Page) -> None:
    """Waits until the page's script has run (shortcuts and live updates are bound)."""
    page.wait_for_selector("body[data-js=ready]", state="attached")


def fill_inbox(server: RunningServer, user: str) -> None:
    for make in samples.ALL:
        send_smtp(server.ports["smtp"], "sender@remote.example", [user], make(user))


def row(page: Page, subject: str) -> Any:
    return page.locator("tr.message-row", has_text=subject)


def test_sign_up_then_log_in(shared_server: RunningServer, page: Page) -> None:
    base = base_url(shared_server)
    page.goto(base + "/login")
    shot(page, "01-login")
    page.click("#signup-link")
    page.fill("#signup-username", "Bad Name!")
    page.fill("#signup-password", "correct horse battery")
    page.fill("#signup-confirm", "correct horse battery")
    page.click("#signup-button")
    # Refused, with the reason and the rules on the page.
    expect(page.locator("#signup-error")).to_contain_text("does not follow the rules")
    expect(page.locator("#username-rules")).to_contain_text("lower-case letters")
    shot(page, "02-signup-refused")
    page.fill("#signup-username", "newcomer")
    page.fill("#signup-password", "correct horse battery")
    page.fill("#signup-confirm", "correct horse battery")
    page.click("#signup-button")
    expect(page.locator("#notice")).to_contain_text("newcomer@example.test")
    expect(page.locator("h1")).to_have_text("Inbox")
    # Log out, then back in with the new account.
    page.click("text=Log out")
    login(page, shared_server, "newcomer@example.test", "correct horse battery")
    expect(page.locator(".who")).to_have_text("newcomer@example.test")


def test_read_smtp_message_and_open_attachment(shared_server: RunningServer, page: Page
                                               ) -> None:
    user = new_user(shared_server, "reader")
    fill_inbox(shared_server, user)
    login(page, shared_server, user)
    expect(page.locator("tr.message-row")).to_have_count(5)
    expect(page.locator(".count[data-unseen]").first).to_have_text("5")
    page.click("tr.message-row >> nth=0")  # make the first row the cursor's neighbour
    page.go_back()
    shot(page, "03-inbox")

    # An HTML message: sanitised, remote image blocked until asked.
    row(page, "weekly digest").locator(".cell-subject a").click()
    expect(page.locator("#message-subject")).to_contain_text("Your weekly digest")
    expect(page.locator("#images-banner")).to_contain_text("1 remote image blocked")
    body = page.frame_locator("#message-body")
    expect(body.locator("h2")).to_have_text("Spring edition")
    expect(body.locator("img")).not_to_have_attribute("src", re.compile("tracker"))
    assert page.title() != "pwned"
    shot(page, "04-message-html")
    assert outside_requests(page) == []  # not one request beyond this server so far
    page.click("#show-images")
    expect(page.frame_locator("#message-body").locator("img")).to_have_attribute(
        "src", re.compile("tracker.northwind.example"))

    # A message with attachments: listed, opened in a tab, downloaded.
    page.goto(base_url(shared_server) + "/mail")
    row(page, "Quarterly report").locator(".cell-subject a").click()
    expect(page.locator(".attachment")).to_have_count(2)
    shot(page, "05-message-attachments")
    with page.context.expect_page() as opened:
        page.click(".attachment-open >> text=chart.png")  # an image opens in a tab
    tab = opened.value
    tab.wait_for_load_state()
    assert "/part/" in tab.url
    assert tab.evaluate("document.contentType") == "image/png"
    tab.close()
    with page.expect_download() as download_info:  # anything else is downloaded
        page.locator(".attachment", has_text="report.csv").locator(
            ".attachment-download").click()
    download = download_info.value
    assert download.suggested_filename == "report.csv"
    assert Path(download.path()).read_bytes().replace(b"\r\n", b"\n") == samples.REPORT_CSV

    # Raw source is viewable.
    with page.context.expect_page() as opened:
        page.click("#raw-link")
    raw = opened.value
    raw.wait_for_load_state()
    expect(raw.locator("body")).to_contain_text("Message-ID: <report-1@mail.example.org>")
    raw.close()


def _imap_fetch_html(server: RunningServer, user: str, subject: str) -> email.message.Message:
    with imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"],
                           ssl_context=server.ssl_context()) as imap:
        imap.login(user, PASSWORD)
        imap.select("INBOX")
        typ, data = imap.search(None, "SUBJECT", f'"{subject}"')
        assert typ == "OK" and data[0], f"{subject!r} is not in {user}'s INBOX"
        number = data[0].split()[-1]
        typ, fetched = imap.fetch(number, "(RFC822)")
        assert typ == "OK"
        raw = fetched[0][1]
        assert isinstance(raw, bytes)
        return email.message_from_bytes(raw, policy=email.policy.default)


def test_compose_html_with_attachment_seen_over_imap(shared_server: RunningServer, page: Page
                                                     ) -> None:
    writer = new_user(shared_server, "writer")
    reader = new_user(shared_server, "friend")
    login(page, shared_server, writer)
    page.click("#compose-button")
    page.fill("#to", f"Friend <{reader}>")
    page.fill("#subject", "Plans for the trip")
    page.check("#format-html")
    page.click("#editor")
    page.keyboard.type("Hello ")
    page.click("[data-cmd=bold]")
    page.keyboard.type("friend")
    page.click("[data-cmd=bold]")
    page.keyboard.type(", the plan is attached.")
    page.set_input_files("#attachment", files=[{
        "name": "plan.txt", "mimeType": "text/plain", "buffer": b"Day 1: hike\nDay 2: lake\n"}])
    shot(page, "06-compose-html")
    page.click("#send")
    expect(page.locator("#notice")).to_contain_text("Message sent")

    message = _imap_fetch_html(shared_server, reader, "Plans for the trip")
    html = message.get_body(("html",))
    assert html is not None and re.search(r"<b>friend</b>", html.get_content())
    text = message.get_body(("plain",))
    assert text is not None and "Hello friend, the plan is attached." in text.get_content()
    files = {part.get_filename(): part.get_content() for part in message.iter_attachments()}
    assert files == {"plan.txt": "Day 1: hike\nDay 2: lake\n"}
    assert message["From"] == writer

    # The writer has the copy in Sent.
    page.click(".folder a:has-text('Sent')")
    expect(row(page, "Plans for the trip")).to_have_count(1)


def test_reply_keeps_the_thread(shared_server: RunningServer, page: Page) -> None:
    user = new_user(shared_server, "replier")
    send_smtp(shared_server.ports["smtp"], "dave@friends.example", [user], samples.lunch(user))
    login(page, shared_server, user)
    row(page, "Lunch on Friday?").locator(".cell-subject a").click()
    page.click("#reply")
    expect(page.locator("#to")).to_have_value(re.compile("dave@friends.example"))
    expect(page.locator("#subject")).to_have_value("Re: Lunch on Friday?")
    expect(page.locator("#body-text")).to_have_value(re.compile("> Shall we try"))
    page.click("#save-draft")
    expect(page.locator("#notice")).to_have_text("Draft saved.")
    page.click(".folder a:has-text('Drafts')")
    expect(row(page, "Re: Lunch on Friday?")).to_have_count(1)


def test_search_move_and_delete(shared_server: RunningServer, page: Page) -> None:
    user = new_user(shared_server, "organiser")
    fill_inbox(shared_server, user)
    login(page, shared_server, user)
    # Quick search by sender or subject.
    page.fill("#search-input", "invoice")
    page.keyboard.press("Enter")
    expect(page.locator("tr.message-row")).to_have_count(1)
    expect(row(page, "Invoice #2024-117")).to_have_count(1)
    # Advanced search: a word of the body, and "has attachment".
    page.goto(base_url(shared_server) + "/mail")
    page.click(".advanced summary")
    page.fill("input[name=body]", "figures")  # only in the body of the report
    shot(page, "07-search")
    page.click(".advanced-grid button")
    expect(page.locator("tr.message-row")).to_have_count(1)
    expect(row(page, "Quarterly report")).to_have_count(1)
    page.goto(base_url(shared_server) + "/mail?from=friends.example&subject=lunch")
    expect(page.locator("tr.message-row")).to_have_count(2)
    page.goto(base_url(shared_server) + "/mail?attach=1")
    expect(page.locator("tr.message-row")).to_have_count(1)
    expect(row(page, "Quarterly report")).to_have_count(1)

    # Conversations: the lunch thread shows as one row of two.
    page.goto(base_url(shared_server) + "/mail?threads=1")
    expect(row(page, "Lunch on Friday?")).to_have_count(1)
    expect(row(page, "Lunch on Friday?").locator(".thread-count")).to_have_text("2")

    # Move to a new folder.
    page.goto(base_url(shared_server) + "/mail")
    page.click(".new-folder summary")
    page.fill(".new-folder input[name=name]", "Projects")
    page.click(".new-folder button")
    expect(page.locator("h1")).to_have_text("Projects")
    page.click(".folder a:has-text('Inbox')")
    row(page, "Quarterly report").locator("input[name=uid]").check()
    page.select_option("#move-target", label="Projects")
    page.click("#move-button")
    expect(page.locator("#notice")).to_contain_text("1 message moved")
    expect(row(page, "Quarterly report")).to_have_count(0)
    page.click(".folder a:has-text('Projects')")
    expect(row(page, "Quarterly report")).to_have_count(1)

    # Delete goes to Trash; from Trash it is gone for good.
    row(page, "Quarterly report").locator(".cell-subject a").click()
    page.click("#message-actions [data-action=delete]")
    expect(page.locator("#notice")).to_contain_text("1 message deleted")
    expect(page.locator(".empty")).to_contain_text("This folder is empty")
    page.click(".folder a:has-text('Trash')")
    expect(row(page, "Quarterly report")).to_have_count(1)
    row(page, "Quarterly report").locator("input[name=uid]").check()
    page.click("#list-form [data-action=delete]")
    expect(page.locator(".empty")).to_be_visible()


def test_keyboard_shortcuts_and_junk(shared_server: RunningServer, page: Page) -> None:
    user = new_user(shared_server, "keys")
    fill_inbox(shared_server, user)
    login(page, shared_server, user)
    page.keyboard.press("?")
    expect(page.locator("#shortcut-help")).to_be_visible()
    shot(page, "08-shortcuts")
    page.keyboard.press("Escape")
    expect(page.locator("#shortcut-help")).to_be_hidden()
    page.keyboard.press("j")
    expect(page.locator("tr.message-row.cursor")).to_have_count(1)
    page.keyboard.press("o")
    expect(page.locator("#message-subject")).to_be_visible()
    ready(page)
    subject = page.locator("#message-subject").inner_text()
    page.keyboard.press("s")  # flag
    expect(page.locator("#message-subject .star.on")).to_be_visible()
    ready(page)
    page.keyboard.press("!")  # junk
    expect(page.locator("#notice")).to_contain_text("moved to Junk")
    page.click(".folder a:has-text('Junk')")
    expect(page.locator("tr.message-row")).to_have_count(1)
    ready(page)
    expect(page.locator("tr.message-row .subject")).to_have_text(subject.replace(" ★", ""))
    page.keyboard.press("c")
    expect(page.locator("#compose-form")).to_be_visible()


def test_new_mail_appears_without_reload(shared_server: RunningServer, page: Page) -> None:
    user = new_user(shared_server, "live")
    login(page, shared_server, user)
    expect(page.locator(".empty")).to_be_visible()
    page.evaluate("window.__marker = 'same page'")
    send_smtp(shared_server.ports["smtp"], "dave@friends.example", [user],
              samples.simple(user, "Fresh news", "Delivered while you watched."))
    expect(row(page, "Fresh news")).to_have_count(1)
    expect(page.locator("[data-inbox] .count")).to_have_text("1")
    assert page.evaluate("window.__marker") == "same page"  # no reload happened


def test_settings_page(shared_server: RunningServer, page: Page) -> None:
    user = new_user(shared_server, "settler", quota_bytes=50 * 1024 * 1024)
    send_smtp(shared_server.ports["smtp"], "carol@finance.example", [user],
              samples.quarterly_report(user))
    login(page, shared_server, user)
    page.click("text=Settings")
    expect(page.locator("#client-settings")).to_contain_text("IMAP")
    expect(page.locator("#client-settings")).to_contain_text(str(shared_server.ports["imaps"]))
    page.fill("input[name=local]", "nickname")
    page.click("text=Add alias")
    expect(page.locator("#notice")).to_contain_text("nickname@example.test")
    shot(page, "09-settings")


def _spam_verdicts(server: RunningServer) -> None:
    """Good mail, spam and GTUBE through the MX, for the overview's spam panel."""
    import smtplib

    from mailstead.spam.rules import GTUBE

    head = f"From: Carol <carol@remote.example>\r\nTo: {BOB}\r\nSubject: "
    send_smtp(server.ports["smtp"], "carol@remote.example", [BOB],
              (head + "Minutes\r\nDate: Sun, 06 Dec 2026 10:00:00 +0000\r\n\r\n"
               "The minutes of the planning meeting are attached below.\r\n").encode())
    send_smtp(server.ports["smtp"], "win@prizes.example", [BOB], (
        f"From: \"service@bank.test\" <win@prizes.example>\r\nTo: {BOB}\r\n"
        "Subject: YOU HAVE WON THE LOTTERY!!\r\nContent-Type: text/html\r\n\r\n"
        "<p>Act now: wire transfer at http://192.0.2.7/claim</p>\r\n").encode())
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as smtp:
        smtp.ehlo("mx.remote.example")
        smtp.mail("carol@remote.example")
        smtp.rcpt(BOB)
        code, _text = smtp.data((head + "test\r\n\r\n").encode() + GTUBE + b"\r\n")
    assert code == 550


def test_admin_console_and_recall(shared_server: RunningServer, page: Page) -> None:
    sender = new_user(shared_server, "outbound")
    now = datetime.now(UTC)
    entry = QueueEntry(
        id="WEBRECALL0001", sender=sender,
        recipients=[QueueRecipient("friend@far-away.example"),
                    QueueRecipient("other@far-away.example")],
        blob_id=shared_server.services.blobs.put(b"Subject: hi\r\n\r\nhello\r\n"), size=24,
        created=now, next_attempt=now + timedelta(hours=1), account_id=None,
    )
    shared_server.run(shared_server.services.store.enqueue(entry))
    _spam_verdicts(shared_server)
    login(page, shared_server, ADMIN)
    page.click(".top-nav >> text=Admin")
    expect(page.locator("[data-stat=queue_size]")).to_have_text(re.compile(r"[1-9]"))
    expect(page.locator("#spam-recent tr[data-action=reject]")).not_to_have_count(0)
    shot(page, "10-admin-overview")
    page.click(".admin-nav a:has-text('Domains')")
    expect(page.locator("#dns-records")).to_contain_text("v=spf1")
    expect(page.locator("#dns-records")).to_contain_text("_dmarc.example.test")
    shot(page, "11-admin-domains")
    page.click(".admin-nav a:has-text('Users')")
    expect(page.locator("#users")).to_contain_text(BOB)
    shot(page, "12-admin-users")
    page.click(".admin-nav a:has-text('Queue')")
    queued = page.locator("tr[data-queue-id=WEBRECALL0001]")
    expect(queued).to_contain_text("friend@far-away.example")
    shot(page, "13-admin-queue")
    page.once("dialog", lambda dialog: dialog.accept())
    queued.locator("button[value=recall]").click()
    expect(page.locator("#notice")).to_contain_text("WEBRECALL0001 recalled: 2 recipient(s)")
    expect(page.locator("tr[data-queue-id=WEBRECALL0001]")).to_have_count(0)
    stored = shared_server.run(shared_server.services.store.get_queue_entry("WEBRECALL0001"))
    assert stored is not None and stored.state == "done"
    assert {r.status for r in stored.recipients} == {"recalled"}
    # The sender finds the recall report in the INBOX.
    page.click("text=Log out")
    login(page, shared_server, sender)
    expect(row(page, "Recall report")).to_have_count(1)
