"""The web API's send path with what users paste (issue 22): LF-only text and very long lines
come out as a message with CRLF line ends and lines within RFC 5322's 998 octets."""

from __future__ import annotations

from tests.conftest import RunningServer
from tests.smtp.helpers import inbox
from tests.web.conftest import base_url, new_user
from tests.web.helpers import api_client


def test_api_send_with_lf_text_and_long_lines(web_server: RunningServer) -> None:
    sender = new_user(web_server, "longsend")
    reader = new_user(web_server, "longread")
    text = "first line\nsecond line\n" + "w" * 5000 + "\n.\nlast\n"
    html = "<p>" + "é" * 100_000 + "</p>"
    client = api_client(base_url(web_server), sender)
    sent = client.post("/api/messages/send", json={
        "to": [reader, "someone@far-away.example"], "subject": "pasted", "text": text,
        "html": html})
    client.close()
    assert sent.status_code == 200, sent.text
    for copy in (inbox(web_server, reader)[0].data,
                 inbox(web_server, sender, "Sent")[0].data):
        assert b"\n" not in copy.replace(b"\r\n", b"")
        assert max(map(len, copy.split(b"\r\n"))) <= 998
    client = api_client(base_url(web_server), reader)
    folders = {f["name"]: f["id"] for f in client.get("/api/folders").json()}
    listing = client.get(f"/api/folders/{folders['INBOX']}/messages").json()
    uid = listing["messages"][0]["uid"]
    got = client.get(f"/api/folders/{folders['INBOX']}/messages/{uid}").json()
    client.close()
    assert got["text"].replace("\r\n", "\n") == text
    assert "é" * 100_000 in got["html"]
