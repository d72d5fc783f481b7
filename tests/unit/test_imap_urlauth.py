"""URLAUTH URLs (RFC 4467 9): the parts the server reads, and the INTERNAL token."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstead.proto import imap_url, imap_urlauth


def test_full_url_parts() -> None:
    url = ("imap://joe%40example.com@mail.example.com/INBOX;UIDVALIDITY=7/;UID=20/;SECTION=1.2"
           ";EXPIRE=2030-01-02T03:04:05Z;URLAUTH=submit+fred%40example.com:internal:"
           + "ab" * 32)
    ref = imap_urlauth.parse(url)
    assert ref.owner == "joe@example.com" and ref.host == "mail.example.com"
    assert (ref.message.mailbox, ref.message.uidvalidity, ref.message.uid) == ("INBOX", 7, 20)
    assert ref.message.section == "1.2"
    assert ref.expire == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert ref.access == "submit+fred@example.com"
    assert ref.mechanism == "INTERNAL" and ref.token == "ab" * 32
    assert ref.rump == url[: url.index(":internal:")]
    assert imap_urlauth.is_authorized(url) and not imap_urlauth.is_authorized(ref.rump[:40])


def test_rump_url_is_its_own_rump() -> None:
    rump = "imap://joe@example.com@mail.example.com/INBOX/;UID=1;URLAUTH=AuthUser"
    ref = imap_urlauth.parse(rump)
    assert ref.rump == rump and ref.mechanism is None and ref.token is None
    assert ref.owner == "joe@example.com" and ref.access == "authuser"


@pytest.mark.parametrize("url", [
    "imap://mail.example.com/INBOX/;UID=1;URLAUTH=anonymous",  # no user
    "imap://joe@mail.example.com/INBOX;URLAUTH=anonymous",  # a whole mailbox
    "imap://joe@mail.example.com/INBOX/;UID=1",  # no URLAUTH
    "imap://joe@mail.example.com/INBOX/;UID=1;URLAUTH=everyone",
    "imap://joe@mail.example.com/INBOX/;UID=1;URLAUTH=anonymous:INTERNAL:abc",  # short token
    "imap://joe@mail.example.com/INBOX/;UID=1;EXPIRE=2030-01-01;URLAUTH=anonymous",  # no zone
    "imap://joe@mail.example.com/INBOX/;UID=1;URLAUTH=anonymous;x",
])
def test_refused(url: str) -> None:
    with pytest.raises(imap_url.BadUrl):
        imap_urlauth.parse(url)


def test_token_depends_on_key_and_rump() -> None:
    rump = "imap://joe@h/INBOX/;UID=1;URLAUTH=anonymous"
    token = imap_urlauth.token(b"k" * 32, rump)
    assert len(token) == 64 and token == imap_urlauth.token(b"k" * 32, rump)
    assert token != imap_urlauth.token(b"j" * 32, rump)
    assert token != imap_urlauth.token(b"k" * 32, rump.replace("UID=1", "UID=2"))


@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused(text: str) -> None:
    try:
        imap_urlauth.parse(text)
    except imap_url.BadUrl:
        pass
