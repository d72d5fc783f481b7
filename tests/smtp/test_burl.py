"""BURL (RFC 4468) on submission, both stores: a message built from IMAP URLs (URLAUTH,
"submit+" access, RFC 4467) made by GENURLAUTH reaches the recipient; URLs the sender may not
use fail with 554 5.6.6."""

from __future__ import annotations

import re
import smtplib

import pytest

from tests.conftest import PASSWORD, RunningServer
from tests.imap.helpers import Raw, deliver, status_of
from tests.smtp.helpers import ALICE, BOB, body_of, inbox

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
HOST = "mail.example.test"
DRAFT = (f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: Draft to send\r\n"
         "Message-ID: <draft.1@example.test>\r\n\r\nThe body of the draft.\r\n").encode()


def _url(server: RunningServer, rump: str) -> str:
    """GENURLAUTH over IMAP, as the mail client would, for alice."""
    raw = Raw(server)
    raw.login(ALICE)
    lines = raw.cmd(f'GENURLAUTH "{rump}" INTERNAL')
    raw.close()
    assert status_of(lines) == b"OK", lines
    m = re.fullmatch(rb'\* GENURLAUTH "([^"]+)"', lines[0])
    assert m is not None, lines
    return m.group(1).decode()


def _submission(server: RunningServer, user: str = ALICE) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30)
    client.ehlo("laptop.example.test")
    client.starttls(context=server.ssl_context())
    client.ehlo("laptop.example.test")
    client.login(user, PASSWORD)
    return client


@BOTH
def test_burl_submits_a_message_built_from_imap_urls(mail_server: RunningServer) -> None:
    uid = deliver(mail_server, DRAFT, address=ALICE, mailbox="Drafts")
    base = f"imap://{ALICE.replace('@', '%40')}@{HOST}/Drafts/;UID={uid}"
    whole = _url(mail_server, f"{base};URLAUTH=submit+{ALICE}")
    with _submission(mail_server) as client:
        assert client.esmtp_features["burl"].split() == ["imap", f"imap://{HOST}"]
        client.mail(ALICE)
        assert client.rcpt(BOB)[0] == 250
        code, text = client.docmd("BURL", f"{whole} LAST")
        assert code == 250 and b"queued as" in text, (code, text)
    [received] = inbox(mail_server, BOB)
    assert body_of(received) == DRAFT

    # BDAT and BURL mixed (RFC 4468 3.2): new headers, then the draft's text by URL.
    text_url = _url(mail_server, f"{base}/;SECTION=TEXT;URLAUTH=submit+{ALICE}")
    head = f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: Edited\r\n\r\n".encode()
    with _submission(mail_server) as client:
        client.mail(ALICE)
        client.rcpt(BOB)
        client.send(b"BDAT %d\r\n" % len(head) + head)
        assert client.getreply()[0] == 250
        code, _text = client.docmd("BURL", text_url)  # not LAST: more may follow
        assert code == 250
        assert client.docmd("DATA")[0] == 503  # DATA does not mix with chunks (RFC 3030 2)
        code, _text = client.docmd("BURL", f"{text_url} LAST")
        assert code == 250
    edited = [m for m in inbox(mail_server, BOB) if b"Subject: Edited" in body_of(m)]
    assert [body_of(m) for m in edited] == [head + b"The body of the draft.\r\n" * 2]


@BOTH
def test_burl_refuses_urls_the_sender_may_not_use(mail_server: RunningServer) -> None:
    uid = deliver(mail_server, DRAFT, address=ALICE, mailbox="Drafts")
    base = f"imap://{ALICE}@{HOST}/Drafts/;UID={uid}"
    for_submit = _url(mail_server, f"{base};URLAUTH=submit+{ALICE}")
    for_bob_only = _url(mail_server, f"{base};URLAUTH=user+{BOB}")
    wrong = for_submit[:-4] + ("0000" if not for_submit.endswith("0000") else "1111")
    with _submission(mail_server, BOB) as client:
        assert client.docmd("BURL", f"{for_submit} LAST")[0] == 503  # no transaction yet
        for url in (for_submit, for_bob_only, wrong):  # submit+alice is alice's only
            client.mail(BOB)
            client.rcpt(ALICE)
            code, text = client.docmd("BURL", f"{url} LAST")
            assert (code, text) == (554, b"5.6.6 IMAP URL resolution failed"), url
        client.mail(BOB)
        client.rcpt(ALICE)
        assert client.docmd("BURL", "https://example.test/x LAST")[0] == 554
        assert client.docmd("BURL", "")[0] == 501
    assert inbox(mail_server, ALICE) == [] or all(
        b"Draft to send" not in body_of(m) for m in inbox(mail_server, ALICE))
    # The MX port does not offer BURL at all.
    with smtplib.SMTP("127.0.0.1", mail_server.ports["smtp"], timeout=30) as mx:
        mx.ehlo("relay.example.test")
        assert "burl" not in mx.esmtp_features
        assert mx.docmd("BURL", f"{for_submit} LAST")[0] == 500
