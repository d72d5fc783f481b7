"""RFC 3464 notices as bytes (parsed back with the standard library), and who asks for which."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime

from mailstead.queue.dsn import (
    FULL_RETURN_LIMIT,
    Notice,
    RecipientReport,
    build_notice,
    should_return_headers_only,
    wants_notice,
)
from mailstead.queue.scheduler import strip_return_path
from tests.delivery.helpers import report_parts

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ORIGINAL = (b"From: a@alpha.test\r\nTo: b@beta.test\r\nSubject: Hi\r\n"
            b"Message-ID: <m1@alpha.test>\r\n\r\nBody text.\r\n")


def notice(*reports: RecipientReport, original: bytes = ORIGINAL, **kwargs: object) -> bytes:
    return build_notice(Notice(
        reporting_mta="mx.alpha.test", sender="a@alpha.test", queue_id="Q1",
        arrival=NOW, recipients=list(reports), original=original, **kwargs), NOW)  # type: ignore[arg-type]


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def test_failure_notice_fields() -> None:
    raw = notice(RecipientReport(
        "b@beta.test", "failed", "5.1.1", "550 5.1.1 no such user",
        orcpt="rfc822;b@beta.test", diagnostic="550 5.1.1\r\n no such user",
        remote_mta="mx.beta.test", last_attempt=NOW), envid="ENV-1")
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF line ends only
    message = parse(raw)
    assert message["To"].addresses[0].addr_spec == "a@alpha.test"
    assert message["References"] == "<m1@alpha.test>"
    assert message["Auto-Submitted"] == "auto-replied"
    human, fields, returned = report_parts(message)
    assert "mx.alpha.test" in human and "<b@beta.test>: 550 5.1.1 no such user" in human
    assert fields[0] == {"reporting-mta": "dns; mx.alpha.test", "x-mailstead-queue-id": "Q1",
                         "original-envelope-id": "ENV-1",
                         "arrival-date": "Wed, 01 May 2024 12:00:00 +0000"}
    assert fields[1] == {
        "original-recipient": "rfc822;b@beta.test",
        "final-recipient": "rfc822; b@beta.test",
        "action": "failed",
        "status": "5.1.1",
        "remote-mta": "dns; mx.beta.test",
        "diagnostic-code": "smtp; 550 5.1.1 no such user",  # one line, folded text joined
        "last-attempt-date": "Wed, 01 May 2024 12:00:00 +0000",
    }
    assert returned == "message/rfc822"
    assert message.get_payload()[2].get_payload()[0]["Subject"] == "Hi"


def test_headers_only_and_utf8_notices() -> None:
    headers_only = parse(notice(RecipientReport("b@beta.test", "delayed", "4.4.1", "later",
                                                will_retry_until=NOW), headers_only=True))
    _human, fields, returned = report_parts(headers_only)
    assert returned == "text/rfc822-headers"
    assert fields[1]["will-retry-until"] == "Wed, 01 May 2024 12:00:00 +0000"
    assert b"Body text." not in headers_only.as_bytes()
    assert headers_only["Subject"] == "Delayed Mail (still being retried)"

    utf8 = parse(notice(RecipientReport("jörg@beta.test", "failed", "5.6.7", "needs SMTPUTF8")))
    _human, fields, returned = report_parts(utf8)
    assert utf8.get_payload()[1].get_content_type() == "message/global-delivery-status"
    assert fields[1]["final-recipient"] == "utf-8; jörg@beta.test"  # RFC 6533
    assert returned == "message/global"


def test_who_asked_for_what() -> None:
    # RFC 3461 4.1: no NOTIFY means failures (and, here, delays); NEVER means none.
    assert wants_notice("", "failed") and wants_notice("", "delayed")
    assert not wants_notice("", "relayed")
    assert not wants_notice("NEVER", "failed")
    assert wants_notice("SUCCESS,DELAY", "relayed") and wants_notice("success,delay", "delayed")
    assert not wants_notice("SUCCESS,DELAY", "failed")
    assert should_return_headers_only("HDRS", False, 10)
    assert should_return_headers_only("FULL", True, 10)  # REQUIRETLS: RFC 8689 5
    assert not should_return_headers_only("FULL", False, FULL_RETURN_LIMIT * 2)
    assert should_return_headers_only("", False, FULL_RETURN_LIMIT + 1)


def test_return_path_removed_before_relaying() -> None:
    assert strip_return_path(b"Return-Path: <a@b.test>\r\nReceived: x\r\n\r\nhi") == \
        b"Received: x\r\n\r\nhi"
    assert strip_return_path(b"return-path:\r\n <a@b.test>\r\nX: y\r\n\r\n") == b"X: y\r\n\r\n"
    unchanged = b"Received: x\r\nReturn-Path: <a@b.test>\r\n\r\n"
    assert strip_return_path(unchanged) == unchanged
