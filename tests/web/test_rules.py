"""Mail rules in the web: the JSON API (scripts, check, vacation and simple rules) and the
settings page driven in Chromium (vacation form, rule editor, raw editor with its syntax
check), then real mail over SMTP through what was saved."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import PASSWORD, RunningServer
from tests.smtp.helpers import inbox, queue
from tests.web.conftest import ADMIN, base_url, new_user
from tests.web.helpers import api_client, send_smtp
from tests.web.test_browser import login, page

__all__ = ["page"]  # the fixture, shared with test_browser


def mail(to: str, subject: str, extra: str = "") -> bytes:
    return (f"From: Carol <carol@remote.example>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@remote.example>\r\n{extra}\r\n"
            f"Hello.\r\n").encode()


def test_api_scripts_and_rules(shared_server: RunningServer) -> None:
    user = new_user(shared_server, "rules")
    api = api_client(base_url(shared_server), user, PASSWORD)
    try:
        assert api.get("/api/sieve").json() == []
        bad = api.post("/api/sieve-check", json={"script": 'require "nope";'}).json()
        assert bad["ok"] is False and "unsupported extension" in bad["error"]
        assert api.put("/api/sieve/bad", json={"script": "if"}).status_code == 400
        good = 'require "fileinto"; fileinto "Elsewhere";'
        assert api.put("/api/sieve/main", json={"script": good, "active": True}).status_code \
            == 200
        assert api.get("/api/sieve").json() == [{"name": "main", "active": True, "script": ""}]
        assert api.get("/api/sieve/main").json()["script"] == good
        assert api.get("/api/sieve/none").status_code == 404
        assert api.delete("/api/sieve/main").status_code == 409  # the active one
        rules = api.get("/api/rules").json()
        assert rules["hand_edited"] is True
        saved = api.put("/api/rules", json={
            "rules": [{"field": "subject", "contains": "invoice", "action": "move",
                       "target": "Bills"}],
            "vacation": {"enabled": True, "subject": "Away", "text": "Back soon."}})
        assert saved.status_code == 200, saved.text
        rules = api.get("/api/rules").json()
        assert rules["hand_edited"] is False and rules["rules"][0]["target"] == "Bills"
        assert api.put("/api/rules", json={"rules": [{"contains": "x", "action": "forward",
                                                      "target": "nobody"}]}).status_code == 400
    finally:
        api.close()
    send_smtp(shared_server.ports["smtp"], "carol@remote.example", [user],
              mail(user, "your invoice"))
    assert len(inbox(shared_server, user, "Bills")) == 1
    assert any(e.recipients[0].address == "carol@remote.example" and e.sender == ""
               for e in queue(shared_server))


def test_vacation_form_and_rule_editor_in_chromium(shared_server: RunningServer,
                                                   page: Page) -> None:
    user = new_user(shared_server, "away")
    login(page, shared_server, user)
    page.goto(base_url(shared_server) + "/settings")
    page.click("#rules-link")
    expect(page.locator("h1")).to_have_text("Mail rules")
    form = page.locator("#vacation-form")
    form.locator("input[name=enabled]").check()
    form.locator("input[name=start]").fill("2000-01-01")
    form.locator("input[name=end]").fill("2999-12-31")
    form.locator("input[name=subject]").fill("Out of office")
    form.locator("textarea[name=text]").fill("I am travelling until January.")
    form.locator("button").click()
    expect(page.locator("#notice")).to_contain_text("Vacation reply saved")
    expect(page.locator("#vacation-form input[name=subject]")).to_have_value("Out of office")
    rules = page.locator("#rules-form")
    rules.locator("input[name=contains]").first.fill("[team]")
    rules.locator("select[name=field]").first.select_option("subject")
    rules.locator("input[name=target]").first.fill("Team")
    rules.locator("button").click()
    expect(page.locator("#notice")).to_contain_text("Rules saved")
    script = page.locator("#raw-form textarea")
    expect(script).to_contain_text('fileinto :create "Team"')
    expect(script).to_contain_text("vacation :days 7")
    # The raw editor's check shows the fault and keeps the text.
    script.fill('require "fileinto";\nfileinto;\n')
    page.click("#raw-form button[value=check]")
    expect(page.locator("#check-result")).to_contain_text("line 2")
    # Mail through what the forms saved: filed by the rule, answered once, not for a list.
    port = shared_server.ports["smtp"]
    send_smtp(port, "carol@remote.example", [user], mail(user, "[team] standup"))
    send_smtp(port, "carol@remote.example", [user], mail(user, "lunch"))
    send_smtp(port, "dan@remote.example", [user],
              mail(user, "digest", "List-Id: <news.remote.example>\r\n"))
    assert len(inbox(shared_server, user, "Team")) == 1
    assert len(inbox(shared_server, user)) == 2
    replies = [e for e in queue(shared_server) if e.sender == ""
               and e.recipients[0].address in ("carol@remote.example", "dan@remote.example")]
    texts = [shared_server.services.blobs.get(e.blob_id) for e in replies]
    mine = [t for t in texts if b"I am travelling until January." in t]
    assert len(mine) == 1 and b"To: <carol@remote.example>" in mine[0]


def test_rules_page_needs_login(shared_server: RunningServer) -> None:
    response = httpx.get(base_url(shared_server) + "/settings/rules", follow_redirects=False)
    assert response.status_code == 303


BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
GLOBAL = 'require ["fileinto", "mailbox"];\nif header :contains "subject" "[ads]" ' \
         '{ fileinto :create "Ads"; stop; }\n'


@BOTH
def test_admin_api_sets_the_global_script_users_include(web_server: RunningServer) -> None:
    user = new_user(web_server, "incl")
    admin = api_client(base_url(web_server), ADMIN, PASSWORD)
    plain = api_client(base_url(web_server), user, PASSWORD)
    try:
        assert plain.get("/api/admin/sieve-global").status_code == 403
        assert plain.put("/api/admin/sieve-global/ads", json={"script": GLOBAL}
                         ).status_code == 403
        bad = admin.put("/api/admin/sieve-global/ads", json={"script": "fileinto;"})
        assert bad.status_code == 400 and "line 1" in bad.text, bad.text
        assert admin.get("/api/admin/sieve-global/ads").status_code == 404
        assert admin.put("/api/admin/sieve-global/ads", json={"script": GLOBAL}
                         ).status_code == 200
        assert admin.get("/api/admin/sieve-global").json() == [{"name": "ads", "script": ""}]
        assert admin.get("/api/admin/sieve-global/ads").json()["script"] == GLOBAL
        mine = 'require "include";\ninclude :global "ads";\n'
        assert plain.put("/api/sieve/main", json={"script": mine, "active": True}
                         ).status_code == 200
        send_smtp(web_server.ports["smtp"], "carol@remote.example", [user],
                  mail(user, "[ads] cheap things"))
        assert len(inbox(web_server, user, "Ads")) == 1
        assert admin.delete("/api/admin/sieve-global/ads").status_code == 200
        assert admin.delete("/api/admin/sieve-global/ads").status_code == 404
    finally:
        admin.close()
        plain.close()


@BOTH
def test_admin_sieve_page_in_chromium(web_server: RunningServer, page: Page) -> None:
    login(page, web_server, ADMIN)
    page.goto(base_url(web_server) + "/admin")
    page.click("a[href='/admin/sieve']")
    expect(page.locator("h1")).to_have_text("Global Sieve scripts")
    form = page.locator("#global-form")
    form.locator("input[name=name]").fill("ads")
    form.locator("textarea").fill('require "fileinto";\nfileinto;\n')
    form.locator("button[value=check]").click()
    expect(page.locator("#check-result")).to_contain_text("line 2")
    expect(page.locator("#global-form input[name=name]")).to_have_value("ads")
    page.locator("#global-form textarea").fill(GLOBAL)
    page.locator("#global-form button[value=check]").click()
    expect(page.locator("#check-result")).to_have_text("Syntax OK.")
    page.locator("#global-form button[value=save]").click()
    expect(page.locator("#notice")).to_contain_text("Global script ads saved")
    expect(page.locator("#global-scripts")).to_contain_text("ads")
    stored = web_server.run(web_server.services.store.get_global_sieve_script("ads"))  # type: ignore[attr-defined]
    assert stored == GLOBAL.replace("\n", "\r\n")
    page.locator("#global-scripts button").click()
    expect(page.locator("#notice")).to_contain_text("deleted")
    expect(page.locator("#global-scripts")).to_contain_text("No global scripts")
