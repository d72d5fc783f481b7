"""The JSON API over real HTTP: each endpoint's success and its errors."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator

import httpx
import pytest

from mailstead.web.api import ENDPOINTS
from tests.conftest import PASSWORD, RunningServer
from tests.web import samples
from tests.web.conftest import ADMIN, BOB, DOMAIN, base_url, new_user
from tests.web.helpers import api_client, send_smtp

Api = Callable[..., httpx.Client]


@pytest.fixture
def api(shared_server: RunningServer) -> Iterator[Api]:
    made: list[httpx.Client] = []

    def make(user: str | None = None, password: str = PASSWORD) -> httpx.Client:
        if user is None:
            client = httpx.Client(base_url=base_url(shared_server), timeout=30)
        else:
            client = api_client(base_url(shared_server), user, password)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def _folder(client: httpx.Client, name: str) -> int:
    for folder in client.get("/api/folders").json():
        if folder["name"] == name:
            return int(folder["id"])
    raise AssertionError(f"no folder {name}")


def _deliver_samples(server: RunningServer, user: str) -> None:
    for make in samples.ALL:
        send_smtp(server.ports["smtp"], "sender@remote.example", [user], make(user))


def _uid(client: httpx.Client, folder: int, subject: str) -> int:
    found = client.get(f"/api/folders/{folder}/messages", params={"subject": subject}).json()
    assert found["messages"], f"no message {subject!r}"
    return int(found["messages"][0]["uid"])


# -- tokens and authentication --


def test_token_with_basic_auth(shared_server: RunningServer, api: Api) -> None:
    user = new_user(shared_server, "tok")
    anonymous = api()
    response = anonymous.post("/api/token", auth=(user, PASSWORD))
    assert response.status_code == 200
    token = response.json()["token"]
    me = anonymous.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["address"] == user
    assert anonymous.post("/api/token", auth=(user, "wrong-password")).status_code == 401
    assert anonymous.post("/api/token").status_code == 401
    bad = anonymous.post("/api/token", headers={"Authorization": "Basic !!notbase64"})
    assert bad.status_code == 401 and "error" in bad.json()


def test_requests_without_a_valid_token_are_refused(api: Api) -> None:
    anonymous = api()
    assert anonymous.get("/api/me").status_code == 401
    forged = anonymous.get("/api/me", headers={"Authorization": "Bearer mst_forged.token"})
    assert forged.status_code == 401
    assert forged.json() == {"error": "the token is not valid (or the password changed)"}
    wrong_scheme = anonymous.get("/api/folders", headers={"Authorization": "Token abc"})
    assert wrong_scheme.status_code == 401


def test_me_and_client_settings(shared_server: RunningServer, api: Api) -> None:
    user = new_user(shared_server, "me", quota_bytes=1_000_000)
    client = api(user)
    me = client.get("/api/me").json()
    assert me["address"] == user and me["is_admin"] is False
    assert me["quota"]["limit_bytes"] == 1_000_000
    assert me["senders"] == [user]
    settings = client.get("/api/client-settings").json()
    kinds = {(s["kind"], s["port"], s["security"]) for s in settings}
    assert ("IMAP", shared_server.ports["imaps"], "SSL/TLS") in kinds
    assert ("SMTP", shared_server.ports["submission"], "STARTTLS") in kinds


def test_password_change_revokes_old_tokens(shared_server: RunningServer, api: Api) -> None:
    user = new_user(shared_server, "pw")
    client = api(user)
    wrong = client.post("/api/password", json={"current": "nope-nope", "new": "n3w-Passw0rd!"})
    assert wrong.status_code == 400 and "current password is wrong" in wrong.json()["error"]
    weak = client.post("/api/password", json={"current": PASSWORD, "new": "short"})
    assert weak.status_code == 400 and "shorter than" in weak.json()["error"]
    extra = client.post("/api/password", json={"current": PASSWORD, "new": "x" * 9, "x": 1})
    assert extra.status_code == 400
    changed = client.post("/api/password", json={"current": PASSWORD, "new": "n3w-Passw0rd!"})
    assert changed.status_code == 200
    assert client.get("/api/me").status_code == 401  # the old token died with the password
    fresh = changed.json()["token"]
    assert client.get("/api/me", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200


def test_signup_over_the_api(shared_server: RunningServer, api: Api) -> None:
    anonymous = api()
    created = anonymous.post("/api/signup", json={"username": "apiuser", "domain": DOMAIN,
                                                  "password": "good-Passw0rd"})
    assert created.status_code == 201 and created.json()["address"] == f"apiuser@{DOMAIN}"
    taken = anonymous.post("/api/signup", json={"username": "apiuser", "domain": DOMAIN,
                                                "password": "good-Passw0rd"})
    assert taken.status_code == 409
    bad = anonymous.post("/api/signup", json={"username": "postmaster", "domain": DOMAIN,
                                              "password": "good-Passw0rd"})
    assert bad.status_code == 400 and "reserved" in bad.json()["error"]
    unknown_domain = anonymous.post("/api/signup", json={"username": "x1", "domain": "else.org",
                                                         "password": "good-Passw0rd"})
    assert unknown_domain.status_code == 400
    assert anonymous.post("/api/signup", content=b"{not json").status_code == 400


# -- own aliases --


def test_own_aliases(shared_server: RunningServer, api: Api) -> None:
    user = new_user(shared_server, "al")
    client = api(user)
    assert client.get("/api/aliases").json() == []
    added = client.post("/api/aliases", json={"local": "nick-" + user.split("@")[0]})
    assert added.status_code == 201
    source = added.json()["source"]
    assert client.post("/api/aliases", json={"local": source.split("@")[0]}).status_code == 409
    assert client.post("/api/aliases", json={"local": "Bad Name"}).status_code == 400
    assert client.get("/api/aliases").json() == [{"source": source, "destination": user}]
    assert source in client.get("/api/me").json()["senders"]
    assert client.delete(f"/api/aliases/{source}").status_code == 200
    assert client.delete(f"/api/aliases/{source}").status_code == 404


# -- folders and messages --


def test_folders(shared_server: RunningServer, api: Api) -> None:
    user = new_user(shared_server, "fold")
    client = api(user)
    names = [f["name"] for f in client.get("/api/folders").json()]
    assert names[:1] == ["INBOX"] and {"Sent", "Drafts", "Trash", "Junk"} <= set(names)
    created = client.post("/api/folders", json={"name": "Projects/2024"})
    assert created.status_code == 201 and created.json()["name"] == "Projects/2024"
    assert client.post("/api/folders", json={"name": "Projects/2024"}).status_code == 409
    assert client.post("/api/folders", json={"name": "bad/../name"}).status_code == 400
    assert client.post("/api/folders", json={}).status_code == 400
    folder_id = created.json()["id"]
    renamed = client.patch(f"/api/folders/{folder_id}", json={"name": "Projects/2025"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Projects/2025"
    sent = _folder(client, "Sent")
    assert client.patch(f"/api/folders/{sent}", json={"name": "Other"}).status_code == 400
    assert client.delete(f"/api/folders/{sent}").status_code == 400
    assert client.delete(f"/api/folders/{folder_id}").status_code == 200
    assert client.delete(f"/api/folders/{folder_id}").status_code == 404
    assert client.delete(f"/api/folders/{2**70}").status_code == 404


def test_list_paging_sorting_threads_and_search(shared_server: RunningServer, api: Api) -> None:
    user = new_user(shared_server, "list")
    _deliver_samples(shared_server, user)
    for n in range(3):
        send_smtp(shared_server.ports["smtp"], "bulk@remote.example", [user],
                  samples.simple(user, f"Bulk {n}", f"bulk body {n}"))
    client = api(user)
    inbox = _folder(client, "INBOX")
    first = client.get(f"/api/folders/{inbox}/messages").json()
    assert first["total"] == 8 and first["pages"] == 2 and len(first["messages"]) == 5
    second = client.get(f"/api/folders/{inbox}/messages", params={"page": 2}).json()
    assert len(second["messages"]) == 3
    assert not {m["uid"] for m in first["messages"]} & {m["uid"] for m in second["messages"]}
    by_subject = client.get(f"/api/folders/{inbox}/messages",
                            params={"sort": "subject", "order": "asc"}).json()
    subjects = [m["subject"] for m in by_subject["messages"]]
    assert subjects[:3] == ["Bulk 0", "Bulk 1", "Bulk 2"]
    threads = client.get(f"/api/folders/{inbox}/messages", params={"threads": "true"}).json()
    assert threads["total"] == 7  # the lunch question and its answer are one conversation

    def search(**params: str) -> list[str]:
        found = client.get(f"/api/folders/{inbox}/messages", params=params)
        assert found.status_code == 200, found.text
        return sorted(m["subject"] for m in found.json()["messages"])

    assert search(**{"from": "carol@finance"}) == ["Quarterly report"]
    assert search(to=user, subject="lunch") == ["Lunch on Friday?", "Re: Lunch on Friday?"]
    assert search(body="noon works") == ["Re: Lunch on Friday?"]
    assert search(has_attachment="true") == ["Quarterly report"]
    assert search(q="northwind") == ["Your weekly digest: spring edition"]
    assert search(before="2000-01-01") == []
    assert len(search(since="2000-01-01")) == 5  # page 1 of 8
    for params in ({"page": "0"}, {"page": "x"}, {"sort": "color"}, {"order": "up"},
                   {"since": "yesterday"}, {"threads": "maybe"}):
        assert client.get(f"/api/folders/{inbox}/messages", params=params).status_code == 400


def test_read_flag_move_junk_delete(shared_server: RunningServer, api: Api) -> None:
    user = new_user(shared_server, "msg")
    _deliver_samples(shared_server, user)
    client = api(user)
    inbox = _folder(client, "INBOX")
    uid = _uid(client, inbox, "weekly digest")
    message = client.get(f"/api/folders/{inbox}/messages/{uid}").json()
    assert message["seen"] is True  # reading marks it read
    assert "<script" not in message["html"] and "tracker.northwind" not in message["html"]
    assert message["blocked_images"] == 1
    with_images = client.get(f"/api/folders/{inbox}/messages/{uid}", params={"images": "1"})
    assert "tracker.northwind.example" in with_images.json()["html"]
    assert client.get(f"/api/folders/{inbox}/messages/99999").status_code == 404
    assert client.get(f"/api/folders/{inbox}/messages/{2**64}").status_code == 404

    flagged = client.patch(f"/api/folders/{inbox}/messages/{uid}",
                           json={"flagged": True, "seen": False})
    assert flagged.status_code == 200
    assert flagged.json()["flagged"] is True and flagged.json()["seen"] is False
    assert client.patch(f"/api/folders/{inbox}/messages/{uid}",
                        json={"color": "red"}).status_code == 400

    archive = _folder(client, "Archive")
    moved = client.post(f"/api/folders/{inbox}/messages/{uid}/move", json={"folder_id": archive})
    assert moved.status_code == 200 and moved.json()["count"] == 1
    assert client.get(f"/api/folders/{inbox}/messages/{uid}").status_code == 404
    new_uid = _uid(client, archive, "weekly digest")
    assert client.post(f"/api/folders/{archive}/messages/{new_uid}/move",
                       json={"folder_id": 10**9}).status_code == 404
    assert client.post(f"/api/folders/{archive}/messages/{new_uid}/move",
                       json={"folder_id": "x"}).status_code == 400

    junked = client.post(f"/api/folders/{archive}/messages/{new_uid}/junk", json={"junk": True})
    assert junked.status_code == 200
    assert _spam_totals(shared_server, user) == (1, 0)  # the user's filter learnt: spam
    junk = _folder(client, "Junk")
    junk_uid = _uid(client, junk, "weekly digest")
    assert client.post(f"/api/folders/{junk}/messages/{junk_uid}/junk",
                       json={"junk": False}).status_code == 200
    assert _spam_totals(shared_server, user) == (0, 1)  # and now: not spam after all
    back_uid = _uid(client, inbox, "weekly digest")

    assert client.delete(f"/api/folders/{inbox}/messages/{back_uid}").status_code == 200
    trash = _folder(client, "Trash")
    trash_uid = _uid(client, trash, "weekly digest")
    assert client.delete(f"/api/folders/{trash}/messages/{trash_uid}").json()["count"] == 1
    assert client.get(f"/api/folders/{trash}/messages").json()["total"] == 0


def _spam_totals(server: RunningServer, address: str) -> tuple[int, int]:
    async def totals() -> tuple[int, int]:
        account = await server.services.store.get_account(address)
        assert account is not None
        return await server.services.store.spam_totals(account.id)

    return server.run(totals())


def test_raw_and_attachments(shared_server: RunningServer, api: Api) -> None:
    user = new_user(shared_server, "parts")
    send_smtp(shared_server.ports["smtp"], "carol@finance.example", [user],
              samples.quarterly_report(user))
    client = api(user)
    inbox = _folder(client, "INBOX")
    uid = _uid(client, inbox, "Quarterly report")
    raw = client.get(f"/api/folders/{inbox}/messages/{uid}/raw")
    assert raw.status_code == 200 and raw.headers["content-type"] == "message/rfc822"
    assert b"Message-ID: <report-1@mail.example.org>" in raw.content
    detail = client.get(f"/api/folders/{inbox}/messages/{uid}").json()
    parts = {a["filename"]: a for a in detail["attachments"]}
    assert set(parts) == {"report.csv", "chart.png"}
    chart = client.get(f"/api/folders/{inbox}/messages/{uid}/parts/{parts['chart.png']['path']}")
    assert chart.status_code == 200 and chart.content == samples.PNG
    assert "attachment" in chart.headers["content-disposition"]
    assert client.get(f"/api/folders/{inbox}/messages/{uid}/parts/9").status_code == 404
    assert client.get(f"/api/folders/{inbox}/messages/{uid}/parts/a.b").status_code == 404


def test_send_local_and_remote_then_recall(shared_server: RunningServer, api: Api) -> None:
    user = new_user(shared_server, "send")
    friend = new_user(shared_server, "friend")
    client = api(user)
    attachment = {"filename": "notes.txt", "content_type": "text/plain",
                  "data": base64.b64encode(b"remember the milk").decode()}
    sent = client.post("/api/messages/send", json={
        "to": [friend, "someone@far-away.example"], "bcc": [BOB], "subject": "Hello from the API",
        "text": "plain part", "html": "<p>Hi <b>there</b><script>x()</script></p>",
        "attachments": [attachment],
    })
    assert sent.status_code == 200, sent.text
    result = sent.json()
    assert sorted(result["delivered"]) == sorted([friend, BOB])
    assert result["queued"] == ["someone@far-away.example"]

    reader = api(friend)
    inbox = _folder(reader, "INBOX")
    uid = _uid(reader, inbox, "Hello from the API")
    got = reader.get(f"/api/folders/{inbox}/messages/{uid}").json()
    assert "<b>there</b>" in got["html"] and "script" not in got["html"]
    assert got["text"].strip() == "plain part"
    assert [a["filename"] for a in got["attachments"]] == ["notes.txt"]
    raw = reader.get(f"/api/folders/{inbox}/messages/{uid}/raw").content
    assert b"Bcc:" not in raw  # the Bcc recipient is not disclosed to the others

    sent_box = _folder(client, "Sent")
    copy = client.get(f"/api/folders/{sent_box}/messages/{result['sent_uid']}/raw").content
    assert b"Bcc: " + BOB.encode() in copy  # the sender keeps the Bcc in the Sent copy

    other = api(friend)
    assert other.post(f"/api/messages/{result['queue_id']}/recall").status_code == 404
    recalled = client.post(f"/api/messages/{result['queue_id']}/recall")
    assert recalled.status_code == 200
    assert recalled.json()["recalled"] == ["someone@far-away.example"]
    again = client.post(f"/api/messages/{result['queue_id']}/recall")
    assert again.status_code == 400


def test_send_errors(shared_server: RunningServer, api: Api) -> None:
    user = new_user(shared_server, "err")
    client = api(user)

    def send(**body: object) -> httpx.Response:
        return client.post("/api/messages/send", json={"subject": "x", "text": "y", **body})

    assert send().status_code == 400  # no recipient
    nobody = send(to=[f"nobody@{DOMAIN}"])
    assert nobody.status_code == 400 and "no such mailbox" in nobody.json()["error"]
    assert send(to=["not an address"]).status_code == 400
    assert send(to=[BOB], **{"from": ADMIN}).status_code == 400  # not one of our addresses
    bad_data = send(to=[BOB], attachments=[{"filename": "a", "data": "***"}])
    assert bad_data.status_code == 400 and "base64" in bad_data.json()["error"]
    assert send(to=[BOB], subject="two\nlines").status_code == 400


def test_drafts(shared_server: RunningServer, api: Api) -> None:
    user = new_user(shared_server, "draft")
    client = api(user)
    saved = client.post("/api/drafts", json={"to": [BOB], "subject": "Unfinished",
                                             "text": "to be continued"})
    assert saved.status_code == 201
    draft = client.get(f"/api/folders/{saved.json()['folder_id']}/messages/"
                       f"{saved.json()['uid']}").json()
    assert draft["draft"] is True and draft["subject"] == "Unfinished"
    assert client.post("/api/drafts", json={"subject": 5}).status_code == 400


def test_users_never_reach_each_others_mail(shared_server: RunningServer, api: Api) -> None:
    owner = new_user(shared_server, "owner")
    intruder = new_user(shared_server, "intruder")
    send_smtp(shared_server.ports["smtp"], "carol@finance.example", [owner],
              samples.quarterly_report(owner))
    mine = api(owner)
    theirs = api(intruder)
    inbox = _folder(mine, "INBOX")
    uid = _uid(mine, inbox, "Quarterly report")
    for method, url in [
        ("GET", f"/api/folders/{inbox}/messages"),
        ("GET", f"/api/folders/{inbox}/messages/{uid}"),
        ("GET", f"/api/folders/{inbox}/messages/{uid}/raw"),
        ("GET", f"/api/folders/{inbox}/messages/{uid}/parts/2"),
        ("DELETE", f"/api/folders/{inbox}/messages/{uid}"),
        ("DELETE", f"/api/folders/{inbox}"),
    ]:
        response = theirs.request(method, url)
        assert response.status_code == 404, (method, url, response.status_code)
        assert b"Quarterly" not in response.content
    own_inbox = _folder(theirs, "INBOX")
    moved = theirs.post(f"/api/folders/{own_inbox}/messages/1/move", json={"folder_id": inbox})
    assert moved.status_code == 404
    assert mine.get(f"/api/folders/{inbox}/messages").json()["total"] == 1


# -- administration --


def test_admin_endpoints_need_an_admin(shared_server: RunningServer, api: Api) -> None:
    user = api(new_user(shared_server, "plain"))
    for method, url in [("GET", "/api/admin/stats"), ("GET", "/api/admin/users"),
                        ("POST", "/api/admin/domains"), ("GET", "/api/admin/queue")]:
        assert user.request(method, url).status_code == 403
    assert api().get("/api/admin/stats").status_code == 401


def test_admin_domains_users_aliases(shared_server: RunningServer, api: Api) -> None:
    admin = api(ADMIN)
    added = admin.post("/api/admin/domains", json={"name": "Second.Example"})
    assert added.status_code == 201 and added.json()["name"] == "second.example"
    assert admin.post("/api/admin/domains", json={"name": "second.example"}).status_code == 409
    assert admin.post("/api/admin/domains", json={"name": "no_dots"}).status_code == 400
    assert "second.example" in [d["name"] for d in admin.get("/api/admin/domains").json()]
    dns = admin.get("/api/admin/domains/second.example/dns").json()
    assert {"MX", "TXT", "CNAME"} <= {r["type"] for r in dns}
    assert admin.get("/api/admin/domains/nowhere.example/dns").status_code == 404

    user = admin.post("/api/admin/users", json={"address": "zed@second.example",
                                                "password": "zed-Passw0rd", "quota_bytes": 1000})
    assert user.status_code == 201 and user.json()["quota"]["limit_bytes"] == 1000
    assert admin.post("/api/admin/users", json={"address": "zed@second.example",
                                                "password": "zed-Passw0rd"}).status_code == 409
    assert admin.post("/api/admin/users", json={"address": "zed@unknown.example",
                                                "password": "zed-Passw0rd"}).status_code == 400
    assert admin.post("/api/admin/users", json={"address": "amy@second.example",
                                                "password": "x"}).status_code == 400
    listed = admin.get("/api/admin/users", params={"domain": "second.example"}).json()
    assert [u["address"] for u in listed] == ["zed@second.example"]
    patched = admin.patch("/api/admin/users/zed@second.example",
                          json={"quota_messages": 10, "password": "new-Passw0rd"})
    assert patched.status_code == 200 and patched.json()["quota"]["limit_messages"] == 10
    assert api("zed@second.example", "new-Passw0rd").get("/api/me").status_code == 200
    assert admin.patch("/api/admin/users/ghost@second.example",
                       json={"quota_bytes": 1}).status_code == 404
    assert admin.patch("/api/admin/users/zed@second.example",
                       json={"quota_bytes": -1}).status_code == 400

    alias = admin.post("/api/admin/aliases", json={"source": "sales@second.example",
                                                   "destination": "zed@second.example"})
    assert alias.status_code == 201
    assert admin.post("/api/admin/aliases", json={"source": "zed@second.example",
                                                  "destination": BOB}).status_code == 409
    assert {"source": "sales@second.example", "destination": "zed@second.example"} in \
        admin.get("/api/admin/aliases").json()
    # The domain still has users and aliases: it cannot go yet.
    assert admin.delete("/api/admin/domains/second.example").status_code == 409
    assert admin.delete("/api/admin/aliases",
                        params={"source": "sales@second.example"}).status_code == 200
    assert admin.delete("/api/admin/aliases",
                        params={"source": "sales@second.example"}).status_code == 404
    assert admin.delete("/api/admin/aliases").status_code == 400
    assert admin.delete("/api/admin/users/zed@second.example").status_code == 200
    assert admin.delete("/api/admin/users/zed@second.example").status_code == 404
    assert admin.delete(f"/api/admin/users/{ADMIN}").status_code == 400  # not yourself
    assert admin.delete("/api/admin/domains/second.example").status_code == 200
    assert admin.delete("/api/admin/domains/second.example").status_code == 404


def test_admin_queue_and_stats(shared_server: RunningServer, api: Api) -> None:
    user = new_user(shared_server, "q")
    sender = api(user)
    queue_id = sender.post("/api/messages/send", json={
        "to": ["far@far-away.example"], "subject": "Queued", "text": "..."}).json()["queue_id"]
    admin = api(ADMIN)
    listed = admin.get("/api/admin/queue").json()
    assert queue_id in [e["id"] for e in listed]
    entry = admin.get(f"/api/admin/queue/{queue_id}").json()
    assert entry["recipients"][0]["status"] == "pending"
    assert admin.get("/api/admin/queue/NOSUCHID").status_code == 404
    assert admin.post(f"/api/admin/queue/{queue_id}/retry").json()["state"] == "queued"
    assert admin.post("/api/admin/queue/NOSUCHID/retry").status_code == 404
    recalled = admin.post(f"/api/admin/queue/{queue_id}/recall")
    assert recalled.status_code == 200 and recalled.json()["recalled"] == [
        "far@far-away.example"]
    assert admin.post(f"/api/admin/queue/{queue_id}/recall").status_code == 400
    assert admin.post(f"/api/admin/queue/{queue_id}/retry").status_code == 400
    done = admin.get("/api/admin/queue", params={"include_done": "true"}).json()
    assert queue_id in [e["id"] for e in done]
    stats = admin.get("/api/admin/stats").json()
    assert stats["accounts"] >= 3 and stats["messages_sent_web"] >= 1
    assert "events" in stats


def test_openapi_document_lists_every_endpoint(api: Api) -> None:
    document = api().get("/api/openapi.json").json()
    assert document["openapi"].startswith("3.")
    operations = {(method.upper(), path) for path, item in document["paths"].items()
                  for method in item}
    assert ("POST", "/api/messages/send") in operations
    assert ("GET", "/api/folders/{folder_id}/messages/{uid}") in operations
    assert ("POST", "/api/admin/queue/{queue_id}/recall") in operations
    assert len(operations) == len(ENDPOINTS)


def test_snippet_is_the_first_text_part_only(shared_server: RunningServer, api: Api) -> None:
    """The list's snippet is the start of the message's own text: the plain alternative (not
    the HTML again after it), never an attached text file."""
    user = new_user(shared_server)
    client = api(user)
    message = (
        "From: sender@remote.example\r\nTo: {user}\r\nSubject: snippet check\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=outer\r\n\r\n"
        "--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n"
        "--inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "Plain words first.\r\n> quoted line\r\n-- \r\nsignature\r\n"
        "--inner\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        "<p>HTML words again</p>\r\n--inner--\r\n"
        "--outer\r\nContent-Type: text/plain; name=notes.txt\r\n"
        "Content-Disposition: attachment; filename=notes.txt\r\n\r\n"
        "attached secret notes\r\n--outer--\r\n").replace("{user}", user).encode()
    send_smtp(shared_server.ports["smtp"], "sender@remote.example", [user], message)
    listed = client.get(f"/api/folders/{_folder(client, 'INBOX')}/messages",
                        params={"subject": "snippet check"}).json()["messages"]
    assert listed[0]["snippet"] == "Plain words first."
    assert listed[0]["has_attachment"] is True
