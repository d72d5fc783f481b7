"""ManageSieve (RFC 5804) on its listener: Debian's sieve-connect uploads and activates a
script over STARTTLS with PLAIN, and the script then files real mail; a raw-socket session
walks every command, the literals, the limits and the errors."""

from __future__ import annotations

import base64
import smtplib
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, RunningServer, require_binary
from tests.smtp.helpers import ALICE, inbox

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)

SCRIPT = 'require "fileinto";\r\nif header :contains "subject" "report" { fileinto "Reports"; }\r\n'


class Client:
    def __init__(self, server: RunningServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.ports["managesieve"]), timeout=30)
        self.buffer = b""
        self.greeting = self.until_done()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def starttls(self, server: RunningServer) -> list[bytes]:
        assert self.command(b"STARTTLS") == [b'OK "begin TLS"']
        ctx = ssl.create_default_context(cafile=str(server.cert_file))
        ctx.check_hostname = False
        self.sock = ctx.wrap_socket(self.sock)
        return self.until_done()  # RFC 5804 2.2: the capabilities again

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(self.buffer)
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def until_done(self) -> list[bytes]:
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line.startswith((b"OK", b"NO", b"BYE")):
                return lines

    def command(self, data: bytes) -> list[bytes]:
        self.send(data + b"\r\n")
        return self.until_done()

    def login(self) -> None:
        token = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode())
        assert self.command(b'AUTHENTICATE "PLAIN" "' + token + b'"')[-1].startswith(b"OK")


@BOTH
def test_raw_session_every_command(mail_server: RunningServer) -> None:
    c = Client(mail_server)
    assert b'"IMPLEMENTATION" "mailstead"' in c.greeting
    assert any(line.startswith(b'"SIEVE"') and b"fileinto" in line for line in c.greeting)
    assert c.command(b"LISTSCRIPTS")[-1].startswith(b"NO")  # not logged in
    token = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode())
    reply = c.command(b'AUTHENTICATE "PLAIN" "' + token + b'"')
    assert reply[-1].startswith(b"NO (ENCRYPT-NEEDED)")  # no password in plain text
    c.starttls(mail_server)
    c.login()
    data = SCRIPT.encode()
    assert c.command(b'HAVESPACE "main" %d' % len(data)) == [b"OK"]
    assert c.command(b'HAVESPACE "main" 99999999')[-1].startswith(b"NO (QUOTA/MAXSIZE)")
    assert c.command(b'PUTSCRIPT "main" {%d+}\r\n' % len(data) + data) == [b"OK"]
    bad = b'require "nonsense";\r\n'
    reply = c.command(b'PUTSCRIPT "bad" {%d+}\r\n' % len(bad) + bad)
    assert reply[-1].startswith(b"NO") and b"nonsense" in reply[-1]
    assert c.command(b'CHECKSCRIPT {%d+}\r\n' % len(data) + data) == [b"OK"]
    assert c.command(b'LISTSCRIPTS') == [b'"main"', b"OK"]
    assert c.command(b'SETACTIVE "main"') == [b"OK"]
    assert c.command(b'LISTSCRIPTS') == [b'"main" ACTIVE', b"OK"]
    got = c.command(b'GETSCRIPT "main"')
    assert got[0] == b"{%d}" % len(data) and got[-1] == b"OK"
    assert c.command(b'DELETESCRIPT "main"')[-1].startswith(b"NO (ACTIVE)")
    assert c.command(b'GETSCRIPT "nope"')[-1].startswith(b"NO (NONEXISTENT)")
    assert c.command(b'RENAMESCRIPT "main" "filing"') == [b"OK"]
    assert c.command(b'LISTSCRIPTS') == [b'"filing" ACTIVE', b"OK"]
    assert c.command(b'NOOP "x"')[-1].startswith(b'OK (TAG "x")')
    assert c.command(b'SETACTIVE ""') == [b"OK"]
    assert c.command(b'DELETESCRIPT "filing"') == [b"OK"]
    assert c.command(b'BOGUS')[-1].startswith(b"NO")
    assert c.command(b"LOGOUT")[-1].startswith(b"OK")


def test_script_count_limit_and_starttls(mail_server: RunningServer) -> None:
    c = Client(mail_server)
    assert b'"STARTTLS"' in c.greeting
    again = c.starttls(mail_server)
    assert b'"STARTTLS"' not in again and b'"SASL" "PLAIN"' in again
    c.login()
    small = b"keep;\r\n"
    for n in range(20):
        assert c.command(b'PUTSCRIPT "s%d" {%d+}\r\n' % (n, len(small)) + small) == [b"OK"]
    reply = c.command(b'PUTSCRIPT "one-more" {%d+}\r\n' % len(small) + small)
    assert reply[-1].startswith(b"NO (QUOTA/MAXSCRIPTS)")


@BOTH
def test_sieve_connect_uploads_and_activates(mail_server: RunningServer, tmp_path: Path
                                             ) -> None:
    binary = require_binary("sieve-connect")
    local = tmp_path / "filing.sieve"
    local.write_text(SCRIPT)
    base = [binary, "--server", "127.0.0.1", "--port", str(mail_server.ports["managesieve"]),
            "--user", ALICE, "--passwordfd", "0", "--notlsverify", "--authmech", "PLAIN"]
    for action in (["--upload", "--localsieve", str(local), "--remotesieve", "filing"],
                   ["--activate", "--remotesieve", "filing"]):
        done = subprocess.run(base + action, input=PASSWORD + "\n", text=True,
                              capture_output=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr + done.stdout
    listed = subprocess.run([*base, "--list"], input=PASSWORD + "\n", text=True,
                            capture_output=True, timeout=60, check=False)
    assert "filing" in listed.stdout and "ACTIVE" in listed.stdout.upper(), listed.stdout
    # The uploaded script now files real mail.
    account = mail_server.run(mail_server.services.store.get_account(ALICE))
    assert account is not None
    mail_server.run(mail_server.services.store.create_mailbox(account.id, "Reports"))
    with smtplib.SMTP("127.0.0.1", mail_server.ports["smtp"], timeout=30) as smtp:
        smtp.sendmail("carol@remote.test", [ALICE],
                      b"From: carol@remote.test\r\nSubject: weekly report\r\n\r\nFigures.\r\n")
    assert len(inbox(mail_server, ALICE, "Reports")) == 1
    assert inbox(mail_server, ALICE) == []


def test_hostile_input_gets_no_and_then_bye(mail_server: RunningServer) -> None:
    c = Client(mail_server)
    assert c.command(b'PUTSCRIPT "x" {99999999+}')[-1].startswith(b"NO")  # literal too large
    assert c.command(b'"unterminated')[-1].startswith(b"NO")
    assert c.command(b"X" * 9000)[-1].startswith(b"NO")  # line too long
    replies = [c.command(b"NONSENSE")[-1] for _ in range(7)]
    assert replies[-1].startswith(b"BYE")  # too many errors: the server hangs up
