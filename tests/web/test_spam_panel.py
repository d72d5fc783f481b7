"""The admin console's spam panel (issue 21 item 5): real SMTP deliveries to the MX (good
mail, spam, GTUBE) show up as the last verdicts (time, recipient, score, tests, action) and
as counts per action, in GET /api/admin/stats and live in the dashboard in Chromium, on SQLite
and PostgreSQL."""

from __future__ import annotations

import smtplib
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from mailstead.spam.rules import GTUBE
from tests.conftest import RunningServer
from tests.smtp.helpers import ALICE, BOB
from tests.smtp.test_spam import HAMMY, mail, send
from tests.web.conftest import ADMIN, base_url, web_overrides
from tests.web.helpers import api_client
from tests.web.test_browser import login, page, ready  # noqa: F401 (page is a fixture)

pytestmark = pytest.mark.slow

SPAM = (b"From: \"service@bank.test\" <win@prizes.test>\r\nTo: " + ALICE.encode() +
        b"\r\nSubject: YOU HAVE WON THE LOTTERY!!\r\nContent-Type: text/html\r\n\r\n"
        b"<p>Act now: wire transfer at http://192.0.2.7/claim</p>\r\n")


def _gtube(server: RunningServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as client:
        client.ehlo("client.remote.test")
        client.mail("carol@remote.test")
        client.rcpt(BOB)
        code, _text = client.data(mail("test", GTUBE.decode(), to=BOB))
    assert code == 550


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_the_spam_panel_shows_the_last_verdicts(make_server: Callable[..., RunningServer],
                                                page: Page) -> None:  # noqa: F811
    server = make_server(**web_overrides())
    server.add_user(ADMIN, is_admin=True)
    send(server, mail("Planning", HAMMY))
    send(server, SPAM, ALICE, BOB)
    _gtube(server)

    admin = api_client(base_url(server), ADMIN)
    try:
        stats = admin.get("/api/admin/stats").json()
    finally:
        admin.close()
    assert stats["spam_verdicts"] == {"inbox": 1, "junk": 2, "reject": 1}
    recent = stats["spam_recent"]
    assert [(v["recipient"], v["action"]) for v in recent] == [  # newest first
        (BOB, "reject"), (BOB, "junk"), (ALICE, "junk"), (ALICE, "inbox")]
    assert "GTUBE" in recent[0]["tests"] and recent[0]["score"] >= 1000
    assert {"FROM_NAME_SPOOF", "URL_NUMERIC_IP"} <= set(recent[1]["tests"])
    assert recent[1]["score"] >= 5 and recent[3]["score"] < 5
    assert all(v["at"].endswith("+00:00") for v in recent)

    login(page, server, ADMIN)
    page.goto(base_url(server) + "/admin")
    ready(page)
    counts = page.locator("[data-stat-table=spam_verdicts]")
    for action, n in (("inbox", 1), ("junk", 2), ("reject", 1)):
        expect(counts.locator("tr", has_text=action)).to_contain_text(str(n))
    rows = page.locator("#spam-recent tbody tr")
    expect(rows).to_have_count(4)
    expect(rows.first).to_contain_text(BOB)
    expect(rows.first).to_contain_text("GTUBE")
    expect(rows.first.locator(".tag")).to_have_text("reject")
    expect(page.locator("#spam-recent tr[data-action=junk]")).to_have_count(2)

    send(server, mail("Minutes", HAMMY, to=BOB), BOB)  # shown without a reload
    expect(rows).to_have_count(5, timeout=15_000)
    expect(rows.first).to_contain_text(BOB)
    expect(rows.first.locator(".tag")).to_have_text("inbox")
    expect(counts.locator("tr", has_text="inbox")).to_contain_text("2")
