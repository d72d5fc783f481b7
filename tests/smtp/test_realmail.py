"""Mail as the real world sends it (issue 22): LF-only messages and very long lines are taken
over SMTP and IMAP APPEND and served back with CRLF, while DATA still ends only at
<CRLF>.<CRLF>."""

from __future__ import annotations

import poplib
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, RunningServer, require_binary
from tests.imap.helpers import Raw, connect, ok
from tests.smtp.helpers import ALICE, BOB, RawClient, body_of, inbox

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)

LF_MESSAGE = (b"From: script@remote.test\nTo: alice@example.test\nSubject: cron output\n\n"
              b"line one\n.hidden dot\n..two dots\nlast line\n")
CRLF_MESSAGE = LF_MESSAGE.replace(b"\n", b"\r\n")


def send_raw(server: RunningServer, data: bytes, rcpt: str = ALICE) -> tuple[int, str]:
    with RawClient(server.ports["smtp"]) as c:
        c.cmd("EHLO client.test")
        assert c.cmd("MAIL FROM:<script@remote.test>")[0] == 250
        assert c.cmd(f"RCPT TO:<{rcpt}>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        answer = c.cmd(data)
        assert c.code("QUIT") == "221 2.0.0"
    return answer


def imap_fetch(server: RunningServer, what: str) -> list[bytes]:
    client = connect(server)
    ok(client.select("INBOX"))
    typ, data = client.fetch("1:*", what)
    assert typ == "OK"
    client.logout()
    return [part[1] for part in data if isinstance(part, tuple)]


def greeting_within(port: int, seconds: float = 2.0) -> bool:
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as sock:
        return sock.recv(100).startswith(b"220") and time.monotonic() - start < seconds


@BOTH
def test_lf_only_message_over_smtp_read_back_with_crlf(mail_server: RunningServer) -> None:
    # A script writes LF-only lines and only the end of data right: one message, stored as CRLF.
    assert send_raw(mail_server, LF_MESSAGE[:-1] + b"\r\n.\r\n")[0] == 250
    [stored] = inbox(mail_server, ALICE)
    # No dot is removed after a bare LF: it is no transparency dot (RFC 5321 4.5.2).
    assert body_of(stored) == CRLF_MESSAGE
    [fetched] = imap_fetch(mail_server, "(BODY.PEEK[TEXT])")
    assert fetched == b"line one\r\n.hidden dot\r\n..two dots\r\nlast line\r\n"
    [size_line] = imap_fetch(mail_server, "(RFC822)")
    assert b"\n" not in size_line.replace(b"\r\n", b"")
    pop = poplib.POP3_SSL("127.0.0.1", mail_server.ports["pop3s"],
                          context=mail_server.ssl_context(), timeout=30)
    pop.user(ALICE)
    pop.pass_(PASSWORD)
    _resp, lines, _octets = pop.retr(1)
    pop.quit()
    assert lines[-4:] == [b"line one", b".hidden dot", b"..two dots", b"last line"]


def test_lf_only_message_from_swaks(mail_server: RunningServer, tmp_path: Path) -> None:
    # swaks --no-data-fixup sends the file as it is; it ends the data with a CRLF of its own.
    data = tmp_path / "lf.eml"
    data.write_bytes(LF_MESSAGE[:-1] + b"\r\n.")
    proc = subprocess.run(
        [require_binary("swaks"), "--server", "127.0.0.1", "--port",
         str(mail_server.ports["smtp"]), "--helo", "swaks.test", "--timeout", "30",
         "--from", "script@remote.test", "--to", ALICE, "--data", str(data),
         "--no-data-fixup"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout
    assert "<** " not in proc.stdout
    [stored] = inbox(mail_server, ALICE)
    assert body_of(stored) == CRLF_MESSAGE


@BOTH
def test_200000_octet_line_accepted_and_served_as_received(mail_server: RunningServer) -> None:
    html = b"<html><body>" + b"<p>word</p>" * 18_180 + b"</body></html>"
    assert len(html) > 200_000
    message = (b"From: news@remote.test\r\nTo: alice@example.test\r\nSubject: newsletter\r\n"
               b"Content-Type: text/html; charset=utf-8\r\n\r\n" + html + b"\r\n")
    assert send_raw(mail_server, message + b".\r\n")[0] == 250
    [stored] = inbox(mail_server, ALICE)
    assert body_of(stored) == message
    [text] = imap_fetch(mail_server, "(BODY.PEEK[TEXT])")
    assert text == html + b"\r\n"


def test_line_past_the_bound_refused_and_others_served(mail_server: RunningServer) -> None:
    # 1 MiB of one line and more: a clear permanent refusal, nothing kept, and while the
    # hostile client sends, an ordinary one still gets its greeting promptly.
    greeted: list[bool] = []
    with RawClient(mail_server.ports["smtp"]) as c:
        c.cmd("EHLO client.test")
        c.cmd("MAIL FROM:<big@remote.test>")
        c.cmd(f"RCPT TO:<{ALICE}>")
        assert c.cmd("DATA")[0] == 354
        c.send(b"Subject: huge\r\n\r\n")
        sender = threading.Thread(target=lambda: [c.send(b"x" * 65_536) for _ in range(40)])
        sender.start()
        while True:  # at least once: a fast server may have read it all by now
            greeted.append(greeting_within(mail_server.ports["smtp"]))
            if not sender.is_alive():
                break
        sender.join()
        assert c.cmd(b"\r\n.\r\n") == (
            552, "5.3.4 Message refused: a line is longer than 1048576 octets")
        assert c.code("NOOP") == "250 2.0.0"
    assert greeted and all(greeted)
    assert inbox(mail_server, ALICE) == []


@BOTH
def test_reject_setting_keeps_todays_codes(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(smtp={"bare_line_feeds": "reject"})
    assert send_raw(server, LF_MESSAGE[:-1] + b"\r\n.\r\n") == (
        550, "5.5.2 Message refused: bare <CR> or <LF> received")
    assert inbox(server, ALICE) == []
    assert inbox(server, BOB) == []


@BOTH
def test_imap_append_lf_only_and_long_lines(mail_server: RunningServer) -> None:
    long_line = b"y" * 5000
    lf_text = LF_MESSAGE + long_line + b"\n"
    # imaplib would turn the LFs into CRLF itself: send the literal as a script would.
    raw = Raw(mail_server)
    raw.login()
    raw.send(b"a1 APPEND INBOX {" + str(len(lf_text)).encode() + b"+}\r\n" + lf_text + b"\r\n")
    assert raw.until("a1")[-1].startswith(b"a1 OK")
    # A literal8 (RFC 3516): the same line ends, and BINARY[] gives the part's octets back.
    raw.send(b"a2 APPEND INBOX ~{" + str(len(lf_text)).encode() + b"+}\r\n" + lf_text + b"\r\n")
    assert raw.until("a2")[-1].startswith(b"a2 OK")
    lines = raw.cmd("EXAMINE INBOX")
    assert any(b"2 EXISTS" in line for line in lines)
    raw.cmd("LOGOUT")
    expected = CRLF_MESSAGE + long_line + b"\r\n"
    first, second = imap_fetch(mail_server, "(BODY.PEEK[])")
    assert first == second == expected
    sizes = imap_fetch(mail_server, "(BINARY.PEEK[1])")
    assert sizes == [expected.split(b"\r\n\r\n", 1)[1]] * 2
    client = connect(mail_server)
    ok(client.select("INBOX"))
    typ, data = client.fetch("1", "(RFC822.SIZE)")
    assert typ == "OK"
    size = re.search(rb"RFC822\.SIZE (\d+)", data[0])  # type: ignore[arg-type]
    assert size is not None and int(size.group(1)) == len(expected)
    client.logout()


def test_imap_append_through_imaplib_is_unchanged(mail_server: RunningServer) -> None:
    client = connect(mail_server)
    ok(client.append("INBOX", None, None, CRLF_MESSAGE))
    client.logout()
    assert imap_fetch(mail_server, "(BODY.PEEK[])") == [CRLF_MESSAGE]
