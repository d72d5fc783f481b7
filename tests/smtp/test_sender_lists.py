"""Allow and block lists of senders (issue 19, item 5) over real SMTP, on both stores: lists
edited through the JSON API (a user's own, an admin's for a whole domain), the webmail
settings form, the admin console and the CLI; blocked senders refused at RCPT with 550 5.7.1
(by address, domain or client IP range) or filed in Junk; an allowed spammy sender in the
INBOX with X-Spam-List saying why; hostile entries refused with 4xx and a message."""

from __future__ import annotations

import smtplib
import subprocess
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import DOMAIN, RunningServer, mailstead_cmd
from tests.smtp.helpers import ALICE, BOB, inbox
from tests.smtp.helpers import header_field as _field
from tests.web.helpers import WebClient, api_client

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
ADMIN = f"admin@{DOMAIN}"
LOTTERY = (b"From: \"service@bank.test\" <win@prizes.test>\r\nTo: " + ALICE.encode() +
           b"\r\nSubject: YOU HAVE WON THE LOTTERY!!\r\nContent-Type: text/html\r\n\r\n"
           b"<p>Act now: wire transfer at http://192.0.2.7/claim</p>\r\n")


@pytest.fixture
def server(make_server: Callable[..., RunningServer]) -> RunningServer:
    made = make_server(lists={"max_entries": 5})
    made.add_user(ADMIN, is_admin=True)
    return made


def _api(server: RunningServer, user: str) -> httpx.Client:
    return api_client(f"http://127.0.0.1:{server.ports['http']}", user)


def _rcpt(server: RunningServer, sender: str, *rcpts: str) -> list[tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as client:
        client.ehlo("client.remote.test")
        client.mail(sender)
        replies = [client.rcpt(r) for r in rcpts]
        client.rset()
    return replies


def _send(server: RunningServer, sender: str, raw: bytes, rcpt: str = ALICE) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as client:
        client.ehlo("client.remote.test")
        assert client.sendmail(sender, [rcpt], raw) == {}


@BOTH
def test_block_and_allow_lists_over_smtp(server: RunningServer) -> None:
    alice = _api(server, ALICE)
    # A blocked address is refused at RCPT for alice only.
    made = alice.post("/api/lists", json={"list": "block", "entry": "Pest@Remote.Test"})
    assert made.status_code == 201, made.text
    assert made.json()["entry"] == "pest@remote.test"
    assert made.json()["action"] == "refuse"
    [(code, text), (code_bob, _)] = _rcpt(server, "pest+tag@remote.test", ALICE, BOB)
    assert (code, text[:6]) == (550, b"5.7.1 "), text
    assert b"block list" in text
    assert code_bob == 250
    assert _rcpt(server, "friend@remote.test", ALICE)[0][0] == 250

    # A spammy sender goes to Junk, until alice allows its domain: then INBOX, still scored.
    _send(server, "win@prizes.test", LOTTERY)
    assert len(inbox(server, ALICE, "Junk")) == 1
    assert alice.post("/api/lists", json={"list": "allow", "entry": "prizes.test"}
                      ).status_code == 201
    _send(server, "win@mail.prizes.test", LOTTERY)
    [kept] = inbox(server, ALICE)
    assert float(_field(kept.headers, "X-Spam-Score")) >= 5.0
    assert _field(kept.headers, "X-Spam-Flag") == "NO"
    assert "allow list of alice@" in _field(kept.headers, "X-Spam-List")
    assert "$Junk" not in kept.meta.keywords

    # A block entry may file in Junk instead of refusing; the From: address counts too.
    assert alice.post("/api/lists", json={"list": "block", "entry": "news.test",
                                          "action": "junk"}).status_code == 201
    _send(server, "bounce@lists.elsewhere.test",
          b"From: news@news.test\r\nSubject: weekly\r\n\r\nHello.\r\n")
    junk = inbox(server, ALICE, "Junk")
    assert len(junk) == 2
    assert "block list" in _field(junk[-1].headers, "X-Spam-List")

    # Removing an entry takes effect (the per-process cache is dropped on change).
    removed = alice.delete("/api/lists", params={"list": "block", "entry": "pest@remote.test"})
    assert removed.status_code == 200, removed.text
    assert _rcpt(server, "pest@remote.test", ALICE)[0][0] == 250
    listed = alice.get("/api/lists").json()
    assert {(e["list"], e["entry"]) for e in listed} == {("allow", "prizes.test"),
                                                        ("block", "news.test")}


@BOTH
def test_ip_range_block_and_domain_lists_by_admin(server: RunningServer) -> None:
    admin = _api(server, ADMIN)
    # The admin blocks a whole sending domain for every user of the domain.
    made = admin.post(f"/api/admin/domains/{DOMAIN}/lists",
                      json={"list": "block", "entry": "spam-house.test"})
    assert made.status_code == 201, made.text
    replies = _rcpt(server, "x@mx.spam-house.test", ALICE, BOB)
    assert [c for c, _t in replies] == [550, 550]
    assert b"domain " + DOMAIN.encode() in replies[0][1]
    # A user's own allow entry is more specific than the domain's block.
    bob = _api(server, BOB)
    assert bob.post("/api/lists", json={"list": "allow", "entry": "x@mx.spam-house.test"}
                    ).status_code == 201
    replies = _rcpt(server, "x@mx.spam-house.test", ALICE, BOB)
    assert [c for c, _t in replies] == [550, 250]
    seen = {(e["scope"], e["entry"]) for e in bob.get("/api/lists").json()}
    assert seen == {("user", "x@mx.spam-house.test"), ("domain", "spam-house.test")}
    # An IP range: the client (127.0.0.1) is refused whatever the sender.
    assert bob.post("/api/lists", json={"list": "block", "entry": "127.0.0.0/8"}
                    ).status_code == 201
    assert _rcpt(server, "anyone@remote.test", BOB)[0][0] == 550
    assert _rcpt(server, "anyone@remote.test", ALICE)[0][0] == 250
    # Users cannot touch the domain's lists.
    assert bob.post(f"/api/admin/domains/{DOMAIN}/lists",
                    json={"list": "allow", "entry": "x.test"}).status_code == 403


def test_hostile_entries_get_4xx_with_a_message(server: RunningServer) -> None:
    alice = _api(server, ALICE)
    for body, words in (
        ({"list": "block", "entry": "10.0.0.0/33"}, "CIDR"),
        ({"list": "block", "entry": "300.1.2.3"}, "IP"),
        ({"list": "block", "entry": "not a domain!"}, "domain"),
        ({"list": "allow", "entry": "x.test", "action": "junk"}, "no action"),
        ({"list": "maybe", "entry": "x.test"}, "list"),
        ({"list": "block", "entry": "x" * 10_000}, "255"),
    ):
        response = alice.post("/api/lists", json=body)
        assert 400 <= response.status_code < 500, (body, response.text)
        assert words.lower() in response.json()["error"].lower(), response.text
    # A full list (lists.max_entries = 5 here) refuses more, and duplicates conflict.
    for n in range(5):
        assert alice.post("/api/lists", json={"list": "block", "entry": f"s{n}.test"}
                          ).status_code == 201
    again = alice.post("/api/lists", json={"list": "block", "entry": "s0.test"})
    assert again.status_code == 409
    full = alice.post("/api/lists", json={"list": "block", "entry": "s9.test"})
    assert full.status_code == 400 and "max_entries" in full.json()["error"]
    gone = alice.delete("/api/lists", params={"list": "block", "entry": "nothing.test"})
    assert gone.status_code == 404


def test_webmail_settings_and_admin_console(server: RunningServer) -> None:
    web = WebClient(f"http://127.0.0.1:{server.ports['http']}")
    try:
        assert web.login(ALICE).status_code == 200
        page = web.post("/settings/lists", data={
            "csrf": web.csrf(), "action": "add", "list": "block", "entry": "pest.test"})
        assert page.status_code == 200 and "pest.test" in page.text
        assert 'id="own-lists"' in page.text
        assert _rcpt(server, "a@pest.test", ALICE)[0][0] == 550
        bad = web.post("/settings/lists", data={
            "csrf": web.csrf(), "action": "add", "list": "block", "entry": "1.2.3.4/99"})
        assert "CIDR" in bad.text
        page = web.post("/settings/lists", data={
            "csrf": web.csrf(), "action": "remove", "list": "block", "entry": "pest.test"})
        assert "removed" in page.text
        assert _rcpt(server, "a@pest.test", ALICE)[0][0] == 250
    finally:
        web.close()
    admin = WebClient(f"http://127.0.0.1:{server.ports['http']}")
    try:
        assert admin.login(ADMIN).status_code == 200
        page = admin.post("/admin/lists", data={
            "csrf": admin.csrf("/admin/lists"), "domain": DOMAIN, "action": "add",
            "list": "block", "entry": "203.0.113.0/24", "block_action": "junk"})
        assert page.status_code == 200 and "203.0.113.0/24" in page.text
        assert 'id="domain-lists"' in page.text
    finally:
        admin.close()
    settings = WebClient(f"http://127.0.0.1:{server.ports['http']}")
    try:
        settings.login(BOB)
        assert "203.0.113.0/24" in settings.get("/settings").text  # the domain's, read-only
    finally:
        settings.close()


def test_cli(server: RunningServer) -> None:
    data = str(server.data_dir)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(mailstead_cmd("lists", *args, "--data", data),
                              capture_output=True, text=True, timeout=60)

    added = run("add", BOB, "block", "198.51.100.7", "--junk")
    assert added.returncode == 0, added.stderr
    assert "198.51.100.7/32" in added.stdout
    assert run("add", DOMAIN, "allow", "partner.test").returncode == 0
    listed = run("list", BOB)
    assert "198.51.100.7/32" in listed.stdout and "junk" in listed.stdout
    assert "partner.test" in run("list", DOMAIN).stdout
    bad = run("add", BOB, "block", "10.0.0.0/40")
    assert bad.returncode != 0
    assert bad.stderr.count("\n") == 1 and "CIDR" in bad.stderr
    assert run("remove", BOB, "block", "198.51.100.7").returncode == 0
    missing = run("remove", BOB, "block", "198.51.100.7")
    assert missing.returncode != 0 and "not on the block list" in missing.stderr
