"""Message snippets in the webmail's list and the JSON API (issue 21 item 5): built from the
message's first text part only (the plain alternative, else the first HTML as text), never
from text after it, an attachment, or a forwarded message. Real SMTP delivery, then the list
over HTTP, on SQLite and PostgreSQL; and IMAP's PREVIEW, which uses the same text."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from mailstead.proto.mime_preview import preview
from tests.conftest import RunningServer
from tests.web.conftest import base_url, web_overrides
from tests.web.helpers import WebClient, api_client, send_smtp

USER = "alice@example.test"
HEAD = ("From: sender@remote.example\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
        "MIME-Version: 1.0\r\n")


def _msg(subject: str, content_type: str, body: str) -> bytes:
    return (HEAD.format(subject=subject) + f"Content-Type: {content_type}\r\n\r\n"
            + body).encode()


CASES = {
    # the HTML body first, then a plain footer a list server added: the HTML's text
    "html then footer": _msg("html then footer", "multipart/mixed; boundary=b", (
        "--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        "<p>The <b>agenda</b> for Monday</p>\r\n"
        "--b\r\nContent-Type: text/plain\r\n\r\nYou are subscribed to the team list.\r\n"
        "--b--\r\n")),
    # alternatives in any order: the plain one
    "html first alternative": _msg("html first alternative",
                                   "multipart/alternative; boundary=a", (
        "--a\r\nContent-Type: text/html\r\n\r\n<p>Rich words</p>\r\n"
        "--a\r\nContent-Type: text/plain\r\n\r\nPlain words\r\n--a--\r\n")),
    # HTML only, forwarding a message whose text must not show
    "forwarded": _msg("forwarded", "multipart/mixed; boundary=f", (
        "--f\r\nContent-Type: text/html\r\n\r\n<div>See below&nbsp;&amp; reply</div>\r\n"
        "--f\r\nContent-Type: message/rfc822\r\n\r\n"
        "Subject: inner\r\nContent-Type: text/plain\r\n\r\nInner private text\r\n"
        "--f--\r\n")),
    # related (HTML with its image) inside alternative, plus a text file named only in
    # Content-Type (no Content-Disposition)
    "related": _msg("related", "multipart/mixed; boundary=m", (
        "--m\r\nContent-Type: multipart/alternative; boundary=a\r\n\r\n"
        "--a\r\nContent-Type: multipart/related; boundary=r\r\n\r\n"
        "--r\r\nContent-Type: text/html\r\n\r\n<p>Logo above</p>\r\n"
        "--r\r\nContent-Type: image/png\r\nContent-ID: <logo>\r\n\r\niVBORw0KGgo=\r\n--r--\r\n"
        "--a--\r\n"
        "--m\r\nContent-Type: text/plain; name=\"notes.txt\"\r\n\r\nsecret notes\r\n"
        "--m--\r\n")),
    # nothing but an attachment: no snippet
    "only attached": _msg("only attached", "multipart/mixed; boundary=o", (
        "--o\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; "
        "filename=a.txt\r\n\r\nattached words\r\n--o--\r\n")),
}
EXPECTED = {
    "html then footer": "The agenda for Monday",
    "html first alternative": "Plain words",
    "forwarded": "See below & reply",
    "related": "Logo above",
    "only attached": "",
}


def test_preview_of_each_shape() -> None:
    for name, raw in CASES.items():
        assert preview(raw) == EXPECTED[name], name


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_snippets_in_the_list(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(**web_overrides(page_size=50))
    for raw in CASES.values():
        send_smtp(server.ports["smtp"], "sender@remote.example", [USER], raw)
    client = api_client(base_url(server), USER)
    try:
        inbox = next(f["id"] for f in client.get("/api/folders").json() if f["name"] == "INBOX")
        listed = client.get(f"/api/folders/{inbox}/messages").json()["messages"]
    finally:
        client.close()
    assert {m["subject"]: m["snippet"] for m in listed} == EXPECTED

    web = WebClient(base_url(server))
    try:
        assert web.login(USER).status_code == 200
        page = web.get(f"/mail/{inbox}").text
    finally:
        web.close()
    shown = dict(re.findall(r'<span class="subject">([^<]*)</span> <span class="snippet">'
                            r'([^<]*)</span>', page))
    assert shown["html then footer"] == "The agenda for Monday"
    assert shown["forwarded"] == "See below &amp; reply"
    assert "secret" not in page and "Inner private" not in page
