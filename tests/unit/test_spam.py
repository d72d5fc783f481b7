"""The pure parts of spam scoring: tokens, the learning filter's arithmetic, the rules and
the X-Spam header fields."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from mailstead.proto import mime
from mailstead.services.spam import SpamVerdict, strip_spam_fields
from mailstead.spam import bayes, rules, tokenize

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def test_tokens_name_where_they_were_found() -> None:
    raw = (b"From: Shop <deals@shop.test>\r\nSubject: Great Deals\r\nX-Mailer: BulkMail 9\r\n"
           b"Content-Type: text/html\r\n\r\n<p>Buy <b>now</b> at "
           b"<a href=\"http://cheap.test/x\">our store</a>&nbsp;today</p>\r\n")
    found = tokenize.tokens(raw)
    assert {"subject:great", "subject:deals", "from-domain:shop.test", "x-mailer:bulkmail",
            "url:cheap.test", "buy", "now", "store", "today"} <= found
    assert not any("<" in t or "href" in t for t in found)


def test_tokens_of_a_base64_text_part_are_its_words() -> None:
    body = base64.b64encode("Grüße aus München".encode()).decode()
    raw = ("Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
           "--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64"
           f"\r\n\r\n{body}\r\n--b\r\nContent-Type: application/pdf\r\nContent-Disposition: "
           "attachment; filename=a.pdf\r\n\r\nJVBERi0=\r\n--b--\r\n").encode()
    assert {"grüße", "aus", "münchen"} <= tokenize.tokens(raw)


@given(st.binary(max_size=2000))
def test_any_bytes_give_tokens_without_error(data: bytes) -> None:
    assert len(tokenize.tokens(data)) <= tokenize.MAX_TOKENS


def test_hashes_are_stable_signed_64_bit() -> None:
    [a] = tokenize.hashed({"viagra"})
    assert tokenize.hashed({"viagra"}) == [a]
    assert -(2**63) <= a < 2**63


def test_bayes_says_spam_good_and_unsure() -> None:
    spammy = {i: (20, 0) for i in range(15)}
    hammy = {i: (0, 20) for i in range(15)}
    assert bayes.spam_probability(spammy, 20, 20) > 0.99
    assert bayes.spam_probability(hammy, 20, 20) < 0.01
    assert bayes.spam_probability({}, 20, 20) == 0.5
    mixed = {**spammy, **{100 + i: v for i, v in hammy.items()}}
    assert 0.3 < bayes.spam_probability(mixed, 20, 20) < 0.7  # evidence both ways: unsure


def test_a_rare_token_says_little() -> None:
    assert 0.5 < bayes.token_probability(1, 0, 100, 100) < 0.9
    assert bayes.token_probability(50, 0, 100, 100) > 0.99
    assert bayes.token_probability(0, 0, 100, 100) == 0.5


def test_bands() -> None:
    assert bayes.band(0.999) == ("BAYES_99", 5.0)
    assert bayes.band(0.5)[0] == "BAYES_50"
    assert bayes.band(0.0) == ("BAYES_00", -3.0)


def names(raw: bytes, auth: bytes = b"") -> set[str]:
    return {h.name for h in rules.score(raw, auth, NOW)}


def test_rules_on_a_proper_message() -> None:
    raw = (b"From: Carol <carol@remote.test>\r\nTo: a@b.test\r\nSubject: Lunch\r\n"
           b"Date: Wed, 02 Dec 2026 11:00:00 +0000\r\nMessage-ID: <1@remote.test>\r\n\r\nhi\r\n")
    assert names(raw) == set()
    assert names(raw, b"Authentication-Results: mx; spf=pass; dmarc=pass") == {"DMARC_PASS"}


def test_rules_that_catch_spam() -> None:
    raw = (b"From: \"alerts@bank.test\" <x@evil.test>\r\nSubject: URGENT ACCOUNT NOTICE!!\r\n"
           b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\nContent-Type: text/html\r\n\r\n"
           b"<a href=http://198.51.100.1/>Act now</a>\r\n")
    assert names(raw, b"spf=fail dkim=fail dmarc=fail") == {
        "FROM_NAME_SPOOF", "SUBJ_ALL_CAPS", "SUBJ_EXCLAIM", "DATE_IN_PAST", "HTML_ONLY",
        "URL_NUMERIC_IP", "SPAM_PHRASES", "MISSING_MID", "MISSING_TO", "SPF_FAIL",
        "DKIM_INVALID", "DMARC_FAIL"}


def test_gtube_and_dates() -> None:
    assert "GTUBE" in names(b"Subject: t\r\n\r\n" + rules.GTUBE + b"\r\n")
    assert "DATE_IN_FUTURE" in names(b"Date: Fri, 01 Jan 2027 10:00:00 +0000\r\n\r\n")
    assert "INVALID_DATE" in names(b"Date: tomorrow\r\n\r\n")
    assert "DATE_IN_PAST" not in names(b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\n")


def test_spam_fields_are_stripped_from_the_header_only() -> None:
    raw = (b"X-Spam-Flag: NO\r\nSubject: s\r\nx-spam-score: -5\r\n\tmore\r\n\r\n"
           b"X-Spam-Flag: this is body text\r\n")
    assert strip_spam_fields(raw) == b"Subject: s\r\n\r\nX-Spam-Flag: this is body text\r\n"
    assert strip_spam_fields(b"Subject: s\r\n\r\nbody") == b"Subject: s\r\n\r\nbody"


def test_header_fields_read_as_spamassassin_writes_them() -> None:
    fields = SpamVerdict(7.25, True, ("BAYES_99", "GTUBE"), 5.0).header_fields()
    assert fields == (b"X-Spam-Flag: YES\r\nX-Spam-Score: 7.2\r\nX-Spam-Level: *******\r\n"
                      b"X-Spam-Status: Yes, score=7.2 required=5.0\r\n"
                      b"\ttests=BAYES_99,GTUBE\r\n")
    assert b"X-Spam-Level: \r\n" in SpamVerdict(-1.0, False, (), 5.0).header_fields()


def test_a_trusted_forward_is_not_blamed_for_failing_authentication() -> None:
    raw = b"From: a@b.test\r\nTo: c@d.test\r\nSubject: s\r\nMessage-ID: <m@b>\r\n\r\nx\r\n"
    hits = {h.name for h in rules.score(raw, b"spf=fail dkim=fail dmarc=fail", NOW,
                                        trusted_forward=True)}
    assert hits == {"MISSING_DATE", "ARC_ALLOW"}


@given(st.lists(st.sampled_from([b":", b"/", b"//", b"://", b"a", b"http", b"\r\n"]),
                max_size=60),
       st.integers(min_value=0, max_value=80), st.integers(min_value=0, max_value=200))
def test_link_search_finds_what_a_plain_search_finds(pieces: list[bytes], start: int,
                                                     end: int) -> None:
    # Visiting the colons first (and the bulk search after LINK_HOPS of them) changes
    # nothing: "://" wholly inside [start, end) or not.
    data = b"".join(pieces)
    assert rules._has_link(data, start, end) == (data.find(b"://", start, end) >= 0)


def test_numeric_link_found_after_many_colons() -> None:
    head = b"From: a@b.test\r\nTo: c@d.test\r\nSubject: hi\r\n\r\n"
    for colons in (0, rules.LINK_HOPS - 1, rules.LINK_HOPS, rules.LINK_HOPS + 5):
        body = b"at 10:30 " * colons + b"see http://192.0.2.1/x\r\n"
        hits = {h.name for h in rules.score(head + body, b"", NOW)}
        assert "URL_NUMERIC_IP" in hits, colons
        assert "URL_NUMERIC_IP" not in {h.name for h in rules.score(
            head + b"at 10:30 " * colons + b"see http://host.test/x\r\n", b"", NOW)}


def _tokens_reading_every_part(message: bytes) -> set[str]:
    """What ``tokens`` found when it decoded every text part whole (before the bound)."""
    root = mime.parse(message)
    found = tokenize.tokens(message.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
    size = 0
    for part, text in mime.text_parts(message, root):
        if part.filename:
            continue
        text = text[: tokenize.MAX_TEXT - size]
        size += len(text)
        found.update("url:" + h.lower().rstrip(".") for h in tokenize._URL_HOST.findall(text))
        if part.content_type[1] == "html":
            text = mime.html_to_text(text)
        found.update(tokenize._words(text))
        if size >= tokenize.MAX_TEXT:
            break
    return found


def test_tokens_read_normal_mail_as_before() -> None:
    qp = "Grüße, €uro: http://shop.test/x".encode()
    message = (
        b"From: a@b.test\r\nSubject: Mixed parts\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n"
        b"--zz\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        + b"".join(b"=%02X" % c for c in qp) + b"\r\n"
        b"--zz\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(b"<p>Hello <a href='http://link.test'>there</a></p>" * 50)
        .replace(b"\n", b"\r\n")
        + b"--zz\r\nContent-Type: text/plain; name=notes.txt\r\n\r\nattachedwords here\r\n"
        b"--zz--\r\n")
    found = tokenize.tokens(message)
    assert found == _tokens_reading_every_part(message)
    assert {"url:shop.test", "url:link.test", "hello"} <= found
    assert "attachedwords" not in found


def test_tokens_decode_only_the_start_of_a_huge_part() -> None:
    line = base64.b64encode(b"wordy " * 57) + b"\r\n"  # 76 octets a line, whole quanta
    head = b"Subject: big\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    bound = tokenize.MAX_TEXT * tokenize.RAW_PER_CHAR
    huge = head + line * (bound // len(line) + 5000) + base64.b64encode(b"tailword ") + b"\r\n"
    found = tokenize.tokens(huge)
    assert "wordy" in found and "tailword" not in found
    small = head + line * 10 + base64.b64encode(b"tailword ") + b"\r\n"
    assert "tailword" in tokenize.tokens(small)
