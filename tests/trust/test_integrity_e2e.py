"""Integrity for readers, end to end: DMTP mail signed, unsigned and tampered, and DKIM mail
from another mailstead through the DNS world, each read the way its user reads it: the
IMAP keyword, the JSON API, the webmail in Chromium, ``mailstead mail list/read`` and the
terminal client (Textual pilot)."""

from __future__ import annotations

import asyncio
import imaplib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from mailstead.client.tui import MailApp
from mailstead.mailsec import dkim
from tests import dnsworld
from tests.cli.test_mail_client import client_for, run_mail, until
from tests.conftest import PASSWORD, RunningServer
from tests.delivery.conftest import Node
from tests.delivery.helpers import make_message, submit, wait_for
from tests.dmtp.test_dmtp_dmap import ALICE, BOB, dmtp_send, seed_hash
from tests.trust.conftest import publish_domain, signing_key
from tests.trust.test_trust_e2e import _send_to_mx
from tests.web.conftest import chromium  # noqa: F401
from tests.web.helpers import api_client, send_smtp

SHOTS = Path(__file__).resolve().parents[2] / "screenshots"
BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
ALPHA, BETA = "alpha-i.test", "beta-i.test"

# subject -> the state the reader is told (None: our own user's mail, nothing to tell)
EXPECTED: dict[str, str | None] = {
    "Invoice 2291 (signed)": "verified",
    "Lunch on Friday (no hash)": "unsigned",
    "Pay 9999 EUR (changed on the way)": "failed",
    "Newsletter from outside": "unsigned",
    "A note from Bob": None,
}


@pytest.fixture
def server(make_server: Callable[..., RunningServer]) -> RunningServer:
    return make_server(listeners={"dmtp": {"enabled": True}})


def fill(server: RunningServer) -> None:
    """One message of each kind in Alice's INBOX, oldest first as EXPECTED lists them."""
    carol = "carol@example.org"
    subject, data = "Invoice 2291 (signed)", "Please pay 10 EUR by Friday."
    dmtp_send(server, carol, ALICE, subject, data, seed_hash(carol, ALICE, subject, data))
    dmtp_send(server, carol, ALICE, "Lunch on Friday (no hash)", "Noon at the usual place?",
              None)
    subject = "Pay 9999 EUR (changed on the way)"
    signed_for = seed_hash(carol, ALICE, subject, "Please pay 10 EUR by Friday.")
    dmtp_send(server, carol, ALICE, subject, "Please pay 9999 EUR today.", signed_for)
    send_smtp(server.ports["smtp"], "news@remote.example", [ALICE],
              f"From: news@remote.example\r\nTo: {ALICE}\r\nSubject: Newsletter from outside"
              "\r\n\r\nThis week in gardening.\r\n".encode())
    sent = run_mail(server, "mail", "send", "--to", ALICE, "--subject", "A note from Bob",
                    user=BOB, stdin="See you.\n")
    assert sent.returncode == 0, sent.stderr


def base_url(server: RunningServer) -> str:
    return f"http://127.0.0.1:{server.ports['http']}"


def api_states(base: str, user: str) -> dict[str, Any]:
    api = api_client(base, user)
    try:
        inbox = next(f for f in api.get("/api/folders").json() if f["name"] == "INBOX")
        listed = api.get(f"/api/folders/{inbox['id']}/messages").json()["messages"]
        states = {m["subject"]: m["integrity"] for m in listed}
        for m in listed:  # the single message says the same
            one = api.get(f"/api/folders/{inbox['id']}/messages/{m['uid']}").json()
            assert one["integrity"] == m["integrity"], one
        return states
    finally:
        api.close()


def imap_keywords(server: RunningServer, user: str = ALICE) -> dict[str, set[str]]:
    imap = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30)
    imap.starttls(server.ssl_context())
    imap.login(user, PASSWORD)
    imap.select("INBOX", readonly=True)
    _, data = imap.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    found = {}
    for item in data:
        if isinstance(item, tuple):
            flags = imaplib.ParseFlags(item[0])
            subject = item[1].decode().split(":", 1)[1].strip()
            found[subject] = {f.decode() for f in flags if f.startswith(b"$Integrity")}
    imap.logout()
    return found


@BOTH
def test_dmtp_states_in_the_store_imap_and_api(server: RunningServer) -> None:
    fill(server)
    assert api_states(base_url(server), ALICE) == EXPECTED
    keywords = imap_keywords(server)
    assert keywords == {
        "Invoice 2291 (signed)": {"$IntegrityVerified"},
        "Lunch on Friday (no hash)": {"$IntegrityUnsigned"},
        "Pay 9999 EUR (changed on the way)": {"$IntegrityFailed"},
        "Newsletter from outside": {"$IntegrityUnsigned"},
        "A note from Bob": set(),
    }


def test_mail_list_and_read_show_it(server: RunningServer) -> None:
    fill(server)
    listed = run_mail(server, "mail", "list")
    assert listed.returncode == 0, listed.stderr
    marks = {}
    for line in listed.stdout.splitlines():
        subject = next(s for s in EXPECTED if line.endswith(s))
        marks[subject] = line.split(maxsplit=1)[1][:3]  # N, *, integrity
    assert marks == {
        "Invoice 2291 (signed)": "N V", "Lunch on Friday (no hash)": "N -",
        "Pay 9999 EUR (changed on the way)": "N !", "Newsletter from outside": "N -",
        "A note from Bob": "N  ",
    }, listed.stdout
    uids = {next(s for s in EXPECTED if line.endswith(s)): line.split()[0]
            for line in listed.stdout.splitlines()}
    words = {"verified": "Integrity: verified (the sender's signature matches)",
             "unsigned": "Integrity: unsigned (no signature to check)",
             "failed": "Integrity: FAILED (a signature does not match"}
    for subject, state in EXPECTED.items():
        shown = run_mail(server, "mail", "read", uids[subject])
        assert shown.returncode == 0, shown.stderr
        if state is None:
            assert "Integrity:" not in shown.stdout
        else:
            assert words[state] in shown.stdout, shown.stdout


async def test_terminal_client_marks_them(server: RunningServer) -> None:
    await asyncio.to_thread(fill, server)
    app = MailApp(client_for(server))
    async with app.run_test(size=(140, 45)) as pilot:
        await until(lambda: len(app.summaries) == 5, pilot)
        table = app.query_one("#messages")
        shown = {app.summaries[i].subject: str(table.get_row_at(i)[0])  # type: ignore[attr-defined]
                 for i in range(5)}
        assert {s: m[-1] for s, m in shown.items()} == {
            "Invoice 2291 (signed)": "V", "Lunch on Friday (no hash)": "-",
            "Pay 9999 EUR (changed on the way)": "!", "Newsletter from outside": "-",
            "A note from Bob": " ",
        }
        assert "! failed" in str(app.query_one("#status").render())  # the legend
        failed = next(i for i, s in enumerate(app.summaries) if "9999" in s.subject)
        table.move_cursor(row=failed)  # type: ignore[attr-defined]
        await pilot.press("enter")
        await until(lambda: "Integrity: FAILED" in str(app.query_one("#letter").render()),
                    pilot)


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:  # noqa: F811
    context = chromium.new_context(viewport={"width": 1320, "height": 820})
    context.set_default_timeout(15_000)
    # Loopback only: the product works offline, and the test sends nothing off the machine.
    context.route("**/*", lambda route: route.continue_()
                  if route.request.url.startswith(("http://127.", "data:", "about:"))
                  else route.abort())
    yield context.new_page()
    context.close()


@pytest.mark.slow
def test_webmail_badges_on_list_and_message(server: RunningServer, page: Page) -> None:
    fill(server)
    page.goto(base_url(server) + "/login")
    page.fill("#username", ALICE)
    page.fill("#password", PASSWORD)
    page.click("#login-button")
    expect(page.locator("h1")).to_have_text("Inbox")
    rows = page.locator("tr.message-row")
    expect(rows).to_have_count(5)
    for subject, state in EXPECTED.items():
        badge = rows.filter(has_text=subject).locator(".integrity")
        if state is None:
            expect(badge).to_have_count(0)
        else:
            expect(badge).to_have_attribute("data-integrity", state)
    failed = rows.filter(has_text="changed on the way").locator(".integrity")
    expect(failed).to_have_text("✗ Failed")
    expect(failed).to_have_attribute("title", re.compile("does not match"))
    # Unsigned (most mail) is a quiet mark in the list; its words are in the tooltip.
    quiet = rows.filter(has_text="Lunch on Friday").locator(".integrity")
    expect(quiet).to_have_text("○")
    expect(quiet).to_have_attribute("title", re.compile("no signature"))
    # The badges stand out as a reader would see them: green, grey, red.
    colours = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll(
        '.integrity')].map(e => [e.dataset.integrity, getComputedStyle(e).backgroundColor]))""")
    assert colours["failed"] == "rgb(214, 69, 69)" and colours["verified"] != colours["unsigned"]
    page.wait_for_timeout(200)  # fonts painted (a picture, not a check)
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / "integrity-badges.png"),
                    clip={"x": 0, "y": 0, "width": 1320, "height": 370})

    rows.filter(has_text="changed on the way").locator(".cell-subject a").click()
    expect(page.locator("#message-integrity .integrity")).to_have_text("✗ Signature failed")
    if os.environ.get("INTEGRITY_SHOT"):
        page.screenshot(path=os.environ["INTEGRITY_SHOT"])
    page.go_back()
    rows.filter(has_text="Invoice 2291").locator(".cell-subject a").click()
    expect(page.locator("#message-integrity .integrity")).to_have_text("✓ Signature verified")
    page.go_back()
    rows.filter(has_text="Lunch on Friday").locator(".cell-subject a").click()
    expect(page.locator("#message-integrity .integrity")).to_have_text("○ Unsigned")
    page.go_back()
    rows.filter(has_text="A note from Bob").locator(".cell-subject a").click()
    expect(page.locator("#message-subject")).to_contain_text("A note from Bob")
    expect(page.locator("#message-integrity")).to_have_count(0)


# -- DKIM from another mailstead, through the DNS world ------------------------------------


def _integrity_rows(node: Node, user: str) -> dict[str, str | None]:
    async def go() -> dict[str, str | None]:
        store = node.server.services.store
        account = await store.get_account(user)
        assert account is not None
        box = await store.get_mailbox(account.id, "INBOX")
        assert box is not None
        return {m.envelope.subject: m.integrity for m in await store.get_messages(box.id)}

    return node.server.run(go())


def test_dkim_mail_from_another_instance(make_node: Callable[..., Node],
                                         dns_world: dnsworld.DnsWorld, mx_port: int) -> None:
    alpha = make_node("127.0.0.2", f"mx.{ALPHA}", ALPHA, users=("alice",))
    beta = make_node("127.0.0.3", f"mx.{BETA}", BETA, users=("bob",),
                     listeners={"http": {"enabled": True}})
    publish_domain(dns_world, alpha, "none")
    publish_domain(dns_world, beta)
    bob = f"bob@{BETA}"
    # Signed by alpha on submission, relayed to beta's MX, verified there.
    submit(alpha, f"alice@{ALPHA}", [bob], make_message(f"alice@{ALPHA}", [bob], "signed"))
    wait_for(lambda: "signed" in _integrity_rows(beta, bob) or None, "the signed message")
    # Signed, then changed on the way (SPF still passes from alpha's address).
    original = make_message(f"alice@{ALPHA}", [bob], "altered", body="Pay 10 EUR.\r\n")
    signed = dkim.sign_message(signing_key(alpha, ALPHA), ALPHA, original) + original
    code, _ = _send_to_mx(beta, mx_port, f"alice@{ALPHA}", bob,
                          signed.replace(b"Pay 10 EUR.", b"Pay 9999 EUR."), source=alpha.ip)
    assert code == 250
    # Not signed at all, from alpha's address.
    code, _ = _send_to_mx(beta, mx_port, f"alice@{ALPHA}", bob,
                          make_message(f"alice@{ALPHA}", [bob], "plain"), source=alpha.ip)
    assert code == 250
    # Not signed, but claiming beta's own verdict: the forged field is removed, never believed.
    forged = make_message(f"alice@{ALPHA}", [bob], "forged", extra=(
        f"Authentication-Results: {beta.hostname}; dkim=pass header.d={ALPHA}; "
        f"dmarc=pass header.from={ALPHA}\r\n"))
    code, _ = _send_to_mx(beta, mx_port, f"alice@{ALPHA}", bob, forged, source=alpha.ip)
    assert code == 250
    expected = {"signed": "verified", "altered": "failed", "plain": "unsigned",
                "forged": "unsigned"}
    assert _integrity_rows(beta, bob) == expected
    base = f"http://{beta.ip}:{beta.port('http')}"
    assert api_states(base, bob) == expected
