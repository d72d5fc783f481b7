"""The HTML side over real HTTP: sessions, CSRF, the shared login limiter, isolation between
users, sign-up modes and limits, the sending cap, autoconfig, drafts and forwards, HTTPS."""

from __future__ import annotations

import imaplib
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from email.message import EmailMessage

import httpx
import pytest

from mailstead import bootstrap
from mailstead.config import deep_merge
from tests.conftest import (
    DOMAIN,
    PASSWORD,
    RunningServer,
    run_outside_loop,
    start_serve_process,
)
from tests.conftest import test_config_overrides as base_overrides
from tests.web import samples
from tests.web.conftest import ADMIN, ALICE, BOB, base_url, new_user, web_overrides
from tests.web.helpers import WebClient, csrf_of, send_smtp

MakeServer = Callable[..., RunningServer]


def _ids(html: str, pattern: str) -> list[str]:
    return re.findall(pattern, html)


def _inbox_id(client: WebClient) -> int:
    response = client.get("/mail", follow=False)
    assert response.status_code == 303
    return int(response.headers["location"].rsplit("/", 1)[1])


def _first_uid(client: WebClient, box: int) -> int:
    uids = _ids(client.get(f"/mail/{box}").text, rf'href="/mail/{box}/(\d+)"')
    assert uids, "no message in the folder"
    return int(uids[0])


# -- sessions and CSRF --


def test_session_cookie_is_secure_httponly_samesite(shared_server: RunningServer) -> None:
    client = WebClient(base_url(shared_server))
    response = client.login(ALICE)
    assert response.status_code == 200
    session = [h for h in client.set_cookie_headers if h.startswith("mailstead_session=")]
    assert session, client.set_cookie_headers
    flags = session[0].lower()
    assert "secure" in flags and "httponly" in flags and "samesite=strict" in flags
    page = client.get("/mail")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"
    client.close()


def test_every_form_needs_its_csrf_token(shared_server: RunningServer) -> None:
    client = WebClient(base_url(shared_server))
    client.login(BOB)
    box = _inbox_id(client)
    token = client.csrf()
    altered = token[:-1] + ("1" if token.endswith("0") else "0")  # never the token itself
    for data in ({}, {"csrf": "forged"}, {"csrf": altered}):
        response = client.post(f"/mail/{box}/action", data={**data, "action": "read", "uid": "1"},
                               follow=False)
        assert response.status_code == 403
    cross_site = client.post("/folders", data={"csrf": token, "action": "create", "name": "X"},
                             headers={"Origin": "https://evil.example"}, follow=False)
    assert cross_site.status_code == 403
    ok = client.post("/folders", data={"csrf": token, "action": "create",
                                       "name": f"Kept{token[:6]}"}, follow=False)
    assert ok.status_code == 303
    # The login form too: without the pre-session token the password is not even checked.
    fresh = WebClient(base_url(shared_server))
    refused = fresh.post("/login", data={"username": BOB, "password": PASSWORD}, follow=False)
    assert refused.status_code == 403 and "expired" in refused.text
    fresh.close()
    client.close()


def test_logout_ends_the_session(shared_server: RunningServer) -> None:
    client = WebClient(base_url(shared_server))
    client.login(ALICE)
    cookies = dict(client.cookies)
    client.post("/logout", data={"csrf": client.csrf()})
    stolen = WebClient(base_url(shared_server))
    stolen.cookies.update(cookies)  # the old cookie, replayed after logout
    response = stolen.get("/mail", follow=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/login")
    stolen.close()
    client.close()


def test_password_change_signs_out_other_sessions(shared_server: RunningServer) -> None:
    user = new_user(shared_server, "pages-pw")
    first, second = WebClient(base_url(shared_server)), WebClient(base_url(shared_server))
    first.login(user)
    second.login(user)
    wrong = first.post("/settings/password", data={
        "csrf": first.csrf(), "current": "wrong", "new": "An0ther-pass", "confirm": "An0ther-pass"},
        headers={"Referer": base_url(shared_server) + "/settings"})
    assert "The current password is wrong" in wrong.text
    changed = first.post("/settings/password", data={
        "csrf": first.csrf(), "current": PASSWORD, "new": "An0ther-pass",
        "confirm": "An0ther-pass"})
    assert "Password changed" in changed.text
    assert first.get("/settings").status_code == 200  # this browser got a fresh session
    assert second.get("/settings", follow=False).status_code == 303  # the other one is out
    first.close()
    second.close()


def test_open_redirects_are_refused(shared_server: RunningServer) -> None:
    client = WebClient(base_url(shared_server))
    token = csrf_of(client.get("/login").text)
    response = client.post("/login", data={"username": ALICE, "password": PASSWORD,
                                           "csrf": token, "next": "//evil.example/x"},
                           follow=False)
    assert response.status_code == 303 and response.headers["location"] == "/mail"
    client.close()


def test_login_failures_use_the_shared_limiter(make_server: MakeServer) -> None:
    server = make_server(**deep_merge(web_overrides(), {"auth": {"max_failures": 3}}))
    client = WebClient(base_url(server))
    for n in range(3):  # distinct guesses: a repeated wrong one counts once
        token = csrf_of(client.get("/login").text)
        wrong = client.post("/login", data={"username": ALICE, "password": f"nope{n}",
                                            "csrf": token})
        assert wrong.status_code in (401, 429)
    token = csrf_of(client.get("/login").text)
    locked = client.post("/login", data={"username": ALICE, "password": PASSWORD, "csrf": token})
    assert locked.status_code == 429 and "Too many failed logins" in locked.text
    # The same limiter guards IMAP: this address is blocked there too.
    with imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"],
                           ssl_context=server.ssl_context()) as imap, \
            pytest.raises(imaplib.IMAP4.error, match=r"UNAVAILABLE|later"):
        imap.login(ALICE, PASSWORD)
    client.close()


# -- isolation between users --


def test_no_page_of_one_user_shows_another_users_mail(shared_server: RunningServer) -> None:
    owner = new_user(shared_server, "iso-owner")
    send_smtp(shared_server.ports["smtp"], "carol@finance.example", [owner],
              samples.quarterly_report(owner))
    mine = WebClient(base_url(shared_server))
    mine.login(owner)
    box = _inbox_id(mine)
    uid = _first_uid(mine, box)
    assert "Quarterly report" in mine.get(f"/mail/{box}/{uid}").text
    intruder = WebClient(base_url(shared_server))
    intruder.login(new_user(shared_server, "iso-intruder"))
    for url in (f"/mail/{box}", f"/mail/{box}/{uid}", f"/mail/{box}/{uid}/body",
                f"/mail/{box}/{uid}/raw", f"/mail/{box}/{uid}/raw?download=1",
                f"/mail/{box}/{uid}/part/2", f"/mail/{box}?q=Quarterly",
                f"/compose?reply={box}:{uid}&mode=forward", f"/compose?draft={box}:{uid}"):
        response = intruder.get(url)
        assert response.status_code == 404, url
        assert "Quarterly" not in response.text and "finance" not in response.text, url
    token = intruder.csrf()
    for data in ({"action": "delete", "uid": str(uid)},
                 {"action": "move", "uid": str(uid), "target": str(box)}):
        response = intruder.post(f"/mail/{box}/action", data={"csrf": token, **data})
        assert response.status_code == 404
    for url in (f"/mail/{2**70}", f"/mail/{box}/{2**70}", f"/mail/{_inbox_id(intruder)}/1"):
        assert intruder.get(url).status_code == 404, url
    own_box = _inbox_id(intruder)
    moved = intruder.post(f"/mail/{own_box}/action", data={
        "csrf": token, "action": "move", "uid": str(uid), "target": str(box)})
    assert moved.status_code == 404
    carried = intruder.post("/compose", data={
        "csrf": token, "to": BOB, "subject": "steal", "text": "x", "action": "send",
        "carry": f"{box}:{uid}:2"})
    assert carried.status_code == 404
    assert "Quarterly report" in mine.get(f"/mail/{box}").text  # nothing happened to it
    mine.close()
    intruder.close()


# -- reading safety --


def test_html_attachments_are_downloaded_never_rendered(shared_server: RunningServer) -> None:
    user = new_user(shared_server, "htmlatt")
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "x@remote.example", user, "Page attached"
    msg.set_content("see attachment")
    msg.add_attachment(b"<script>alert(document.cookie)</script>", maintype="text",
                       subtype="html", filename="page.html")
    send_smtp(shared_server.ports["smtp"], "x@remote.example", [user],
              msg.as_bytes(policy=__import__("email.policy").policy.SMTP))
    client = WebClient(base_url(shared_server))
    client.login(user)
    box = _inbox_id(client)
    uid = _first_uid(client, box)
    part = client.get(f"/mail/{box}/{uid}/part/2?inline=1")
    assert part.status_code == 200
    assert part.headers["content-type"] == "application/octet-stream"
    assert part.headers["content-disposition"].startswith("attachment;")
    assert "sandbox" in part.headers["content-security-policy"]
    body = client.get(f"/mail/{box}/{uid}/raw")
    assert body.headers["content-type"].startswith("text/plain")
    client.close()


def test_message_body_document_forbids_scripts_and_remote_loads(shared_server: RunningServer
                                                                ) -> None:
    user = new_user(shared_server, "csp")
    send_smtp(shared_server.ports["smtp"], "n@northwind.example", [user],
              samples.newsletter(user))
    client = WebClient(base_url(shared_server))
    client.login(user)
    box = _inbox_id(client)
    uid = _first_uid(client, box)
    body = client.get(f"/mail/{box}/{uid}/body")
    csp = body.headers["content-security-policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp
    assert "img-src 'self' data:;" in csp
    assert "<script" not in body.text and "tracker.northwind" not in body.text
    shown = client.get(f"/mail/{box}/{uid}/body?images=1")
    assert "https:" in shown.headers["content-security-policy"]
    assert "tracker.northwind.example" in shown.text
    client.close()


# -- compose: drafts and forwards --


def test_draft_then_send_and_forward_with_attachments(shared_server: RunningServer) -> None:
    writer = new_user(shared_server, "drafter")
    reader = new_user(shared_server, "fwd-reader")
    send_smtp(shared_server.ports["smtp"], "carol@finance.example", [writer],
              samples.quarterly_report(writer))
    client = WebClient(base_url(shared_server))
    client.login(writer)
    token = client.csrf()
    saved = client.post("/compose", data={"csrf": token, "to": reader, "subject": "Draft one",
                                          "text": "first words", "action": "save"},
                        files={"attachment": ("a.txt", b"attached", "text/plain")})
    assert "Draft saved." in saved.text and 'value="Draft one"' in saved.text
    draft_ref = re.search(r'name="draft_ref" value="(\d+:\d+)"', saved.text)
    carry = re.findall(r'name="carry" value="([^"]+)"', saved.text)
    assert draft_ref and len(carry) == 1
    sent = client.post("/compose", data={"csrf": token, "to": reader, "subject": "Draft one",
                                         "text": "final words", "action": "send",
                                         "draft_ref": draft_ref.group(1), "carry": carry})
    assert "Message sent." in sent.text
    drafts_box = int(draft_ref.group(1).split(":")[0])
    assert "Draft one" not in client.get(f"/mail/{drafts_box}").text  # the draft went away

    inbox = _inbox_id(client)
    report_uid = _ids(client.get(f"/mail/{inbox}?subject=Quarterly").text,
                      rf'href="/mail/{inbox}/(\d+)"')[0]
    forward = client.get(f"/compose?reply={inbox}:{report_uid}&mode=forward").text
    assert 'value="Fwd: Quarterly report"' in forward
    carried = re.findall(r'name="carry" value="([^"]+)"', forward)
    assert len(carried) == 2
    client.post("/compose", data={"csrf": token, "to": reader, "subject": "Fwd: Quarterly report",
                                  "text": "fyi", "action": "send", "carry": carried})

    other = WebClient(base_url(shared_server))
    other.login(reader)
    reader_inbox = _inbox_id(other)
    listing = other.get(f"/mail/{reader_inbox}").text
    assert "Draft one" in listing and "Fwd: Quarterly report" in listing
    fwd_uid = _ids(other.get(f"/mail/{reader_inbox}?subject=Fwd").text,
                   rf'href="/mail/{reader_inbox}/(\d+)"')[0]
    page = other.get(f"/mail/{reader_inbox}/{fwd_uid}").text
    assert "report.csv" in page and "chart.png" in page
    client.close()
    other.close()


def test_compose_errors_are_explained(shared_server: RunningServer) -> None:
    client = WebClient(base_url(shared_server))
    client.login(new_user(shared_server, "oops"))
    token = client.csrf()
    response = client.post("/compose", data={"csrf": token, "to": f"ghost@{DOMAIN}",
                                             "subject": "x", "text": "y", "action": "send"})
    assert response.status_code == 400
    assert "ghost@example.test: there is no such mailbox here" in response.text.lower()
    assert 'value="x"' in response.text  # what was typed is kept
    client.close()


# -- sign-up --


def test_signup_closed_by_default(make_server: MakeServer) -> None:
    server = make_server()
    client = WebClient(base_url(server))
    page = client.get("/signup")
    assert page.status_code == 404 and "Sign-up is closed" in page.text
    assert "Create one" not in client.get("/login").text
    token = csrf_of(client.get("/login").text)
    refused = client.post("/signup", data={"csrf": token, "username": "x",
                                           "domain": DOMAIN, "password": "abcdefgh1",
                                           "confirm": "abcdefgh1"})
    assert refused.status_code == 403 and "sign-up is closed" in refused.text.lower()
    client.close()


def test_signup_by_invitation_and_per_ip_limit(make_server: MakeServer) -> None:
    server = make_server(**web_overrides(signup="invite", invite_codes=["WELCOME-1", "W-2"],
                                         signup_per_ip_per_day=2))
    client = WebClient(base_url(server))

    def signup(username: str, invite: str) -> httpx.Response:
        token = csrf_of(client.get("/signup").text)
        return client.post("/signup", data={"csrf": token, "username": username,
                                            "domain": DOMAIN, "password": "abcdefgh1",
                                            "confirm": "abcdefgh1", "invite": invite})

    assert "Invitation code" in client.get("/signup").text
    no_code = signup("first", "")
    assert no_code.status_code == 403 and "invitation code" in no_code.text
    assert signup("first", "WELCOME-1").status_code == 200
    client.cookies.pop("mailstead_session", None)
    reused = signup("second", "WELCOME-1")
    assert reused.status_code == 403 and "has not been used" in reused.text
    assert signup("second", "W-2").status_code == 200
    client.cookies.pop("mailstead_session", None)
    limited = signup("third", "W-2")
    assert limited.status_code == 429
    assert "too many sign-ups from your address" in limited.text.lower()
    client.close()


def test_signup_rules_are_explained(shared_server: RunningServer) -> None:
    client = WebClient(base_url(shared_server))
    token = csrf_of(client.get("/signup").text)
    weak = client.post("/signup", data={"csrf": token, "username": "weakling",
                                        "domain": DOMAIN, "password": "short",
                                        "confirm": "short"})
    assert weak.status_code == 400
    assert "The password is shorter than 8 characters" in weak.text
    assert "at least 8 characters" in weak.text  # the rules are on the page
    taken = client.post("/signup", data={"csrf": token, "username": "alice", "domain": DOMAIN,
                                         "password": "abcdefgh1", "confirm": "abcdefgh1"})
    assert taken.status_code == 400 and "taken" in taken.text
    client.close()


def test_new_accounts_have_a_daily_sending_cap(make_server: MakeServer) -> None:
    server = make_server(**web_overrides(new_account_daily_cap=2))
    server.add_user(ADMIN, is_admin=True)
    client = WebClient(base_url(server))
    client.login(ALICE)
    token = client.csrf()
    first = client.post("/compose", data={"csrf": token, "to": BOB, "subject": "1",
                                          "text": ".", "action": "send"})
    assert "Message sent." in first.text
    refused = client.post("/compose", data={"csrf": token, "to": f"{BOB}, {ADMIN}",
                                            "subject": "2", "text": ".", "action": "send"})
    assert refused.status_code == 400
    assert "new accounts may send to 2 recipients a day" in refused.text.lower()
    admin = WebClient(base_url(server))
    admin.login(ADMIN)  # administrators are not capped
    for n in range(3):
        sent = admin.post("/compose", data={"csrf": admin.csrf(), "to": BOB, "subject": str(n),
                                            "text": ".", "action": "send"})
        assert "Message sent." in sent.text
    client.close()
    admin.close()


# -- autoconfig --


@pytest.mark.parametrize("path", ["/.well-known/autoconfig/mail/config-v1.1.xml",
                                  "/mail/config-v1.1.xml"])
def test_thunderbird_autoconfig(shared_server: RunningServer, path: str) -> None:
    response = httpx.get(base_url(shared_server) + path,
                         params={"emailaddress": ALICE}, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(response.text)
    provider = root.find("emailProvider")
    assert provider is not None and provider.findtext("domain") == DOMAIN
    servers = {(s.get("type"), int(s.findtext("port") or 0), s.findtext("socketType"))
               for s in root.iter() if s.tag in ("incomingServer", "outgoingServer")}
    ports = shared_server.ports
    assert ("imap", ports["imaps"], "SSL") in servers
    assert ("imap", ports["imap"], "STARTTLS") in servers
    assert ("smtp", ports["submissions"], "SSL") in servers
    assert ("pop3", ports["pop3s"], "SSL") in servers
    unknown = httpx.get(base_url(shared_server) + path,
                        params={"emailaddress": "x@unknown.example"}, timeout=30)
    assert unknown.status_code == 404


def test_autoconfig_host_form_finds_the_domain_from_the_name(make_server: MakeServer) -> None:
    """Thunderbird asks http://autoconfig.<domain>/mail/config-v1.1.xml, often without the
    address: the domain comes from the Host name."""
    server = make_server(**web_overrides())
    server.add_domain("second.example")
    for domain in (DOMAIN, "second.example"):
        response = httpx.get(base_url(server) + "/mail/config-v1.1.xml",
                             headers={"Host": f"autoconfig.{domain}"}, timeout=30)
        assert response.status_code == 200
        provider = ET.fromstring(response.text).find("emailProvider")
        assert provider is not None and provider.get("id") == domain


# -- transport --


def test_https_listener_with_the_same_certificate(make_server: MakeServer) -> None:
    server = make_server(**deep_merge(web_overrides(), {"listeners": {"http": {
        "tls": "implicit"}}}))
    with httpx.Client(base_url=f"https://127.0.0.1:{server.ports['http']}",
                      verify=server.ssl_context(), timeout=30) as client:
        response = client.get("/login")
        assert response.status_code == 200 and "Log in" in response.text
        assert "max-age" in response.headers["strict-transport-security"]


def test_request_bodies_are_limited(make_server: MakeServer) -> None:
    server = make_server(**deep_merge(web_overrides(), {"limits": {"max_message_size": 2048}}))
    client = WebClient(base_url(server))
    client.login(ALICE)
    token = client.csrf()
    big = client.post("/compose", data={"csrf": token, "to": BOB, "subject": "big",
                                        "action": "send"},
                      files={"attachment": ("big.bin", b"x" * 3_000_000,
                                            "application/octet-stream")})
    assert big.status_code == 413
    client.close()


def test_serve_prints_the_http_listener(tmp_path: object, tls_files: tuple[object, object]
                                        ) -> None:
    from pathlib import Path

    data = Path(str(tmp_path)) / "served"
    cfg = bootstrap.build_config(data, deep_merge(base_overrides(), web_overrides()))
    run_outside_loop(bootstrap.initialise(cfg, demo_domain="example.test",
                                          cert_from=tls_files))  # type: ignore[arg-type]
    process = start_serve_process(data)
    try:
        assert "http" in process.ports
        response = httpx.get(f"http://127.0.0.1:{process.ports['http']}/login", timeout=30)
        assert response.status_code == 200 and "mailstead" in response.text
    finally:
        assert process.terminate() == 0


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_webmail_round_trip_on_postgresql(make_server: MakeServer) -> None:
    server = make_server(**web_overrides())
    writer, reader = WebClient(base_url(server)), WebClient(base_url(server))
    writer.login(ALICE)
    reader.login(BOB)
    sent = writer.post("/compose", data={"csrf": writer.csrf(), "to": BOB,
                                         "subject": "On PostgreSQL", "text": "hello",
                                         "action": "send"},
                       files={"attachment": ("n.txt", b"notes", "text/plain")})
    assert "Message sent." in sent.text
    inbox = _inbox_id(reader)
    uid = _first_uid(reader, inbox)
    page = reader.get(f"/mail/{inbox}/{uid}").text
    assert "On PostgreSQL" in page and "n.txt" in page
    assert "On PostgreSQL" in reader.get(f"/mail/{inbox}?body=hello&attach=1").text
    deleted = reader.post(f"/mail/{inbox}/action", data={
        "csrf": reader.csrf(), "action": "delete", "uid": str(uid)})
    assert "1 message deleted." in deleted.text
    assert "This folder is empty" in reader.get(f"/mail/{inbox}").text
    writer.close()
    reader.close()


def test_stopping_the_server_ends_live_update_streams(make_server: MakeServer) -> None:
    import threading

    server = make_server(**web_overrides())
    client = WebClient(base_url(server))
    client.login(ALICE)
    lines: list[str] = []
    opened = threading.Event()

    def listen() -> None:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in client.cookies.items())}
        with httpx.stream("GET", base_url(server) + "/events", headers=headers,
                          timeout=60) as response:
            for line in response.iter_lines():
                lines.append(line)
                opened.set()

    reader = threading.Thread(target=listen)
    reader.start()
    assert opened.wait(30)
    server.stop()  # must not hang on the open stream
    reader.join(30)
    assert not reader.is_alive() and lines[0] == "retry: 3000"
    client.close()


def test_live_updates_tell_of_mail_that_arrived_before_the_stream_opened(
        shared_server: RunningServer) -> None:
    """A page's stream of live updates (server-sent events) starts with the folders' counts
    when they differ from what the page showed: mail delivered between the page and the
    stream's start is not left waiting for the next change. One that finds them the same
    sends nothing until a change."""
    user = new_user(shared_server, "early")
    client = WebClient(base_url(shared_server))
    client.login(user)
    inbox = _inbox_id(client)
    [live] = re.findall(r'data-live="([^"]+)"', client.get(f"/mail/{inbox}").text)
    assert live.startswith("/events?shown=")
    headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in client.cookies.items())}

    def first_event(url: str, wait: float) -> list[str]:
        lines: list[str] = []
        try:
            with httpx.stream("GET", base_url(shared_server) + url.replace("&amp;", "&"),
                              headers=headers, timeout=wait) as response:
                for line in response.iter_lines():
                    lines.append(line)
                    if line.startswith("data:"):
                        break
        except httpx.ReadTimeout:
            pass  # nothing more within ``wait``
        return lines

    assert not any(line.startswith("event:") for line in first_event(live, 1.0))
    send_smtp(shared_server.ports["smtp"], "dave@friends.example", [user],
              samples.simple(user, "Early news", "Here before the stream."))
    lines = first_event(live, 10)
    assert "event: change" in lines
    assert f'"{inbox}": 1' in next(line for line in lines if line.startswith("data:"))
    client.close()
