"""Inbound check plug-ins as a real client meets them (smtplib over 127.0.0.1, both stores): a
refusal or a tempfail at connect, MAIL, RCPT and DATA with the plug-in's own code, header fields
and scores in the stored message, and the bounds on a plug-in that fails or hangs. Also the
delivery filters: a copy filed in another mailbox, flagged and stamped."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from mailstead.core.models import SystemFlag
from tests.conftest import RunningServer
from tests.smtp.helpers import ALICE, BOB, inbox
from tests.smtp.helpers import header_field as field

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
SAMPLES = "tests.smtp.check_samples"
PHASE_OPTIONS: dict[str, Any] = {
    "refuse_ips": ["127.0.0.7"],
    "tempfail_ips": ["127.0.0.8"],
    "connect_header": "hello from connect",
    "greylist": ["grey@remote.test"],
    "refuse_rcpts": [BOB],
    "reject_word": "FORBIDDEN-WORD",
    "reject_code": 554,
    "reject_status": "5.7.0",
    "tempfail_word": "SCAN-LATER",
    "spam_word": "SPAMMY-WORD",
    "spam_points": 6.0,
}


def mail(subject: str, body: str = "Hello.") -> bytes:
    return (f"From: carol@remote.test\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@remote.test>\r\n\r\n{body}\r\n").encode()


def phase_server(make_server: Callable[..., RunningServer], **checks: Any) -> RunningServer:
    return make_server(checks={"modules": [f"phase={SAMPLES}:phase"], "phase": PHASE_OPTIONS,
                               **checks}, spam={"bayes": False})


def client(server: RunningServer, source: str = "127.0.0.1") -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30,
                        source_address=(source, 0))
    smtp.ehlo("client.remote.test")
    return smtp


@BOTH
def test_each_phase_answers_with_the_plug_ins_code(
        make_server: Callable[..., RunningServer]) -> None:
    server = phase_server(make_server)
    port = server.ports["smtp"]

    # connect: refused (554) or told to come back (421), before any greeting.
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=("127.0.0.7", 0))
    assert refused.value.smtp_code == 554
    assert refused.value.smtp_error == b"5.7.1 client 127.0.0.7 refused by phase check"
    with pytest.raises(smtplib.SMTPConnectError) as busy:
        smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=("127.0.0.8", 0))
    assert (busy.value.smtp_code, busy.value.smtp_error) == (421, b"4.7.0 busy, come back later")

    with client(server) as smtp:
        # MAIL: a greylisted sender is deferred; another goes on.
        assert smtp.mail("grey@remote.test") == (451, b"4.7.1 greylisted, try again later")
        assert smtp.mail("carol@remote.test")[0] == 250
        # RCPT: one recipient refused with the plug-in's text, the other accepted.
        assert smtp.rcpt(BOB) == (550, f"5.7.1 <{BOB}> refused by phase check".encode())
        assert smtp.rcpt(ALICE)[0] == 250
        # DATA: the plug-in's own code and enhanced status.
        assert smtp.data(mail("bad", "FORBIDDEN-WORD")) == (554, b"5.7.0 content refused")
        smtp.mail("carol@remote.test")
        smtp.rcpt(ALICE)
        assert smtp.data(mail("later", "SCAN-LATER")) == (451, b"4.3.2 content scanner busy")
        smtp.mail("carol@remote.test")
        smtp.rcpt(ALICE)
        assert smtp.data(mail("fine"))[0] == 250
        smtp.mail("carol@remote.test")
        smtp.rcpt(ALICE)
        assert smtp.data(mail("scored", "SPAMMY-WORD"))[0] == 250

    # The accepted message carries the fields of the connect and DATA phases.
    [fine] = inbox(server, ALICE)
    assert field(fine.headers, "X-Phase-Check") == "checked for carol@remote.test at 127.0.0.1"
    assert field(fine.headers, "X-Connect-Check") == "hello from connect"
    # The plug-in's 6 points went into the spam score: over junk_score (5), so it is in Junk.
    [scored] = inbox(server, ALICE, "Junk")
    status = field(scored.headers, "X-Spam-Status")
    assert status.startswith("Yes, score=") and "PHASE_SPAMMY" in status
    assert float(field(scored.headers, "X-Spam-Score")) >= 6.0


def test_a_client_refused_at_connect_must_quit(
        make_server: Callable[..., RunningServer]) -> None:
    """RFC 5321 3.1: after a 554 greeting the server answers 503 until the client says QUIT."""
    server = phase_server(make_server)
    with socket.create_connection(("127.0.0.1", server.ports["smtp"]), timeout=30,
                                  source_address=("127.0.0.7", 0)) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"554 5.7.1 ")
        sock.sendall(b"EHLO client.remote.test\r\n")
        assert reader.readline().startswith(b"503 5.5.1 ")
        sock.sendall(b"MAIL FROM:<carol@remote.test>\r\n")
        assert reader.readline().startswith(b"503 5.5.1 ")
        sock.sendall(b"QUIT\r\n")
        assert reader.readline().startswith(b"221 ")


def test_a_failing_or_slow_plug_in_is_bounded(
        make_server: Callable[..., RunningServer]) -> None:
    server = make_server(checks={"modules": [f"broken={SAMPLES}:broken"], "timeout": 0.5,
                                 "broken": {"sleep": 30}})
    with client(server) as smtp:
        smtp.mail("carol@remote.test")
        assert smtp.rcpt(ALICE)[0] == 250  # its exception counts as accept
        started = time.monotonic()
        assert smtp.data(mail("slow check"))[0] == 250  # its sleep is cut at the timeout
        assert time.monotonic() - started < 20
    assert len(inbox(server, ALICE)) == 1

    strict = make_server(checks={"modules": [f"broken={SAMPLES}:broken"], "timeout": 0.5,
                                 "on_error": "tempfail", "broken": {"sleep": 30}})
    with client(strict) as smtp:
        smtp.mail("carol@remote.test")
        assert smtp.rcpt(ALICE) == (451, b"4.3.0 check broken failed, try again later")
    # A second client is served as usual after both.
    with client(strict) as smtp:
        assert smtp.noop()[0] == 250


def test_plug_ins_leave_submissions_alone_unless_told(
        make_server: Callable[..., RunningServer]) -> None:
    server = phase_server(make_server, submission=False)
    # Submission from a refused address: the connect check does not run there.
    from tests.conftest import PASSWORD

    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30,
                      source_address=("127.0.0.7", 0)) as smtp:
        smtp.starttls(context=server.ssl_context())
        smtp.login(ALICE, PASSWORD)
        smtp.sendmail(ALICE, [BOB], mail("from alice", "FORBIDDEN-WORD").replace(
            b"From: carol@remote.test", f"From: {ALICE}".encode()))
    assert len(inbox(server, BOB)) == 1


@BOTH
def test_delivery_filter_files_flags_and_stamps(
        make_server: Callable[..., RunningServer]) -> None:
    server = make_server(checks={"filters": [f"fbw={SAMPLES}:file_by_word"],
                                 "fbw": {"word": "invoice", "mailbox": "Receipts"}})

    async def receipts() -> None:
        store = server.services.store
        account = await store.get_account(ALICE)
        assert account is not None
        await store.create_mailbox(account.id, "Receipts")

    server.run(receipts())
    with client(server) as smtp:
        smtp.sendmail("carol@remote.test", [ALICE], mail("your invoice", "invoice 42 attached"))
        smtp.sendmail("carol@remote.test", [ALICE], mail("hello", "just saying hi"))
    [filed] = inbox(server, ALICE, "Receipts")
    assert field(filed.headers, "X-Filed-By") == f"file-by-word for {ALICE}"
    assert filed.meta.flags & SystemFlag.FLAGGED and "$Invoice" in filed.meta.keywords
    [plain] = inbox(server, ALICE)
    assert field(plain.headers, "X-Filed-By") == "none"
    assert not plain.meta.flags & SystemFlag.FLAGGED
