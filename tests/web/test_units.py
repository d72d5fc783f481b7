"""Pure parts of the web layer: the HTML sanitiser, reading messages, building messages,
threading. No server needed."""

from __future__ import annotations

import email
import email.policy

import pytest

from mailstead.core.errors import InvalidInput
from mailstead.web.compose import Draft, build_message, envelope_recipients, reply_draft
from mailstead.web.messages import part_content, read_message
from mailstead.web.sanitize import clean_html, html_to_text, text_to_html
from tests.web import samples

# -- sanitiser --


@pytest.mark.parametrize("dangerous", [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<a href='javascript:alert(1)'>x</a>",
    "<iframe src='https://evil.example'></iframe>",
    "<form action='https://evil.example'><input name=p></form>",
    "<svg><script>alert(1)</script></svg>",
    "<a href='data:text/html,<script>alert(1)</script>'>x</a>",
    "<div style='background:url(https://evil.example/t.gif)'>x</div>",
    "<object data='x.swf'></object>",
    "<meta http-equiv='refresh' content='0;url=https://evil.example'>",
    "<base href='https://evil.example/'>",
    "<link rel=stylesheet href='https://evil.example/x.css'>",
])
def test_sanitiser_removes_what_can_run_or_phone_home(dangerous: str) -> None:
    cleaned = clean_html(f"<p>before</p>{dangerous}<p>after</p>").html.lower()
    for marker in ("script", "onerror", "javascript:", "iframe", "<form", "<input",
                   "evil.example", "data:text", "<object", "<meta", "<base", "<link"):
        assert marker not in cleaned
    assert "before" in cleaned and "after" in cleaned


def test_remote_images_blocked_until_asked() -> None:
    source = "<p>Hi</p><img src='https://t.example/p.gif'><img src='//t.example/q.gif'>"
    blocked = clean_html(source)
    assert blocked.blocked_images == 2 and "t.example" not in blocked.html
    allowed = clean_html(source, allow_remote_images=True)
    assert allowed.blocked_images == 0 and "https://t.example/p.gif" in allowed.html


def test_cid_images_point_at_the_message_parts() -> None:
    cleaned = clean_html("<img src='cid:logo@x'><img src='cid:unknown'>",
                         cid_url=lambda cid: "/part/2" if cid == "logo@x" else None)
    assert '<img src="/part/2">' in cleaned.html
    assert cleaned.html.count("src=") == 1


def test_links_open_in_a_new_tab_without_referrer() -> None:
    cleaned = clean_html("<a href='https://example.org/'>x</a>").html
    assert 'target="_blank"' in cleaned and "noreferrer" in cleaned


def test_html_to_text_and_back() -> None:
    assert html_to_text("<p>One<br>Two &amp; three</p><div>Four</div>") == \
        "One\nTwo & three\nFour\n"
    assert text_to_html("see https://example.org/a?b=1&c=2, <b>") == (
        'see <a href="https://example.org/a?b=1&amp;c=2" target="_blank" '
        'rel="noopener noreferrer nofollow">https://example.org/a?b=1&amp;c=2</a>, &lt;b&gt;')


# -- reading --


def test_read_alternative_prefers_html_and_keeps_text() -> None:
    message = read_message(samples.newsletter("a@example.test"))
    assert message.subject == "Your weekly digest: spring edition"
    assert message.html is not None and "Spring edition" in message.html
    assert message.text is not None and message.text.startswith("Spring is here.")
    assert message.attachments == []


def test_read_attachments_with_part_paths() -> None:
    data = samples.quarterly_report("a@example.test")
    message = read_message(data)
    assert message.text is not None and "quarterly figures" in message.text
    assert [(a.path, a.filename, a.mime_type) for a in message.attachments] == [
        ("2", "report.csv", "text/csv"), ("3", "chart.png", "image/png")]
    chart = part_content(data, "3")
    assert chart is not None and chart.data == samples.PNG and chart.filename == "chart.png"
    for bad in ("", "0", "9", "1.x", "../1", "1" * 100):
        assert part_content(data, bad) is None


def test_read_a_broken_message_does_not_raise() -> None:
    message = read_message(b"Subject: =?bogus?Q?x?=\r\nContent-Type: multipart/mixed\r\n\r\njunk")
    assert message.text is not None or message.html is not None


# -- writing --


def test_build_message_leaves_bcc_out_of_the_delivered_copy() -> None:
    draft = Draft(from_addr="alice@example.test", to="Bob <bob@example.test>",
                  bcc="carol@example.test", subject="Héllo", text="Hi Bob\n")
    delivered = build_message(draft, hostname="mail.example.test", include_bcc=False)
    kept = build_message(draft, hostname="mail.example.test", include_bcc=True)
    assert b"Bcc:" not in delivered and b"Bcc: carol@example.test" in kept
    assert b"\r\n" in delivered and b"\n" not in delivered.replace(b"\r\n", b"")
    parsed = email.message_from_bytes(delivered, policy=email.policy.default)
    assert parsed["Subject"] == "Héllo" and parsed["To"] == "Bob <bob@example.test>"
    assert parsed["Message-ID"].endswith("@mail.example.test>")
    assert envelope_recipients(draft) == ["bob@example.test", "carol@example.test"]


def test_build_html_message_with_attachment() -> None:
    from mailstead.web.compose import Upload

    draft = Draft(from_addr="a@example.test", to="b@example.test", subject="s",
                  html="<p>Hi <b>you</b><script>x()</script></p>",
                  attachments=[Upload("plan.txt", "text/plain", b"day 1\n"),
                               Upload("x.bin", "bogus type!", b"\x00\x01")])
    parsed = email.message_from_bytes(
        build_message(draft, hostname="h.example", include_bcc=False), policy=email.policy.default)
    html = parsed.get_body(("html",))
    text = parsed.get_body(("plain",))
    assert html is not None and "<b>you</b>" in html.get_content()
    assert "script" not in html.get_content()
    assert text is not None and "Hi you" in text.get_content()
    files = {p.get_filename(): p.get_content_type() for p in parsed.iter_attachments()}
    assert files == {"plan.txt": "text/plain", "x.bin": "application/octet-stream"}


@pytest.mark.parametrize("field,value", [("to", "not an address"), ("subject", "a\r\nBcc: x")])
def test_build_message_refuses_bad_input(field: str, value: str) -> None:
    draft = Draft(from_addr="a@example.test", to="b@example.test")
    setattr(draft, field, value)
    with pytest.raises(InvalidInput):
        build_message(draft, hostname="h.example", include_bcc=False)


def test_reply_all_leaves_out_our_own_addresses() -> None:
    original = read_message(
        b"From: Dave <dave@x.example>\r\nTo: me@example.test, erin@x.example\r\n"
        b"Cc: Me Too <alias@example.test>, fred@x.example\r\nSubject: Plans\r\n"
        b"Message-ID: <p1@x.example>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\nhello\r\n")
    draft = reply_draft(original, "me@example.test", reply_all=True,
                        own_addresses={"me@example.test", "alias@example.test"})
    assert draft.to == "Dave <dave@x.example>"
    assert draft.cc == "erin@x.example, fred@x.example"
    assert draft.subject == "Re: Plans" and draft.in_reply_to == "<p1@x.example>"
    assert "> hello" in draft.text


