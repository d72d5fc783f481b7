"""IMAP URLs (RFC 5092) as CATENATE takes them: what is accepted, and what is BADURL."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstead.proto.imap_url import BadUrl, MessageUrl, parse_message_url


@pytest.mark.parametrize(("url", "expected"), [
    ("/Drafts;UIDVALIDITY=385759045/;UID=20/;section=1.MIME",
     MessageUrl(None, "Drafts", 385759045, 20, "1.MIME", None)),
    ("/INBOX/;UID=7", MessageUrl(None, "INBOX", None, 7, "", None)),
    ("/Lists/caf%C3%A9/;UID=3/;SECTION=HEADER.FIELDS%20(FROM)/;PARTIAL=10.20",
     MessageUrl(None, "Lists/café", None, 3, "HEADER.FIELDS (FROM)", (10, 20))),
    ("imap://fred%40example.org;AUTH=*@mail.example.org:143/INBOX;uidvalidity=1/;uid=2",
     MessageUrl("fred@example.org", "INBOX", 1, 2, "", None)),
    ("IMAP://mail.example.org/INBOX/;UID=2/;PARTIAL=5",
     MessageUrl(None, "INBOX", None, 2, "", (5, None))),
])
def test_message_urls(url: str, expected: MessageUrl) -> None:
    assert parse_message_url(url) == expected


@pytest.mark.parametrize("url", [
    "", "INBOX/;UID=1", "/INBOX", "/;UID=1", "/INBOX/;UID=0", "/INBOX/;UID=1;URLAUTH=x:y:z",
    "/INBOX/;UID=1/extra", "http://host/INBOX/;UID=1", "/%FF/;UID=1", "/INBOX/;UID=99999999999",
])
def test_bad_urls(url: str) -> None:
    with pytest.raises(BadUrl):
        parse_message_url(url)


@given(st.text(max_size=200))
def test_any_text_is_a_url_or_badurl(text: str) -> None:
    try:
        parse_message_url(text)
    except BadUrl:
        pass
