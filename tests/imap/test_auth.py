"""Connection-level commands and login: CAPABILITY, NOOP, ID, LOGOUT, STARTTLS, LOGIN,
AUTHENTICATE PLAIN (with and without SASL-IR), LOGINDISABLED, failed-login limits."""

from __future__ import annotations

import base64
import imaplib
from collections.abc import Callable

import pytest

from tests.conftest import PASSWORD, RunningServer
from tests.imap.helpers import ALICE, Raw, connect, status_of


def test_greeting_lists_capabilities(mail_server: RunningServer) -> None:
    raw = Raw(mail_server)
    assert raw.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 ")
    assert b"AUTH=PLAIN" in raw.greeting and b"SASL-IR" in raw.greeting
    assert b"STARTTLS" not in raw.greeting  # already TLS


def test_plain_port_refuses_passwords_until_starttls(mail_server: RunningServer) -> None:
    raw = Raw(mail_server, port="imap", tls=False)
    assert b"LOGINDISABLED" in raw.greeting and b"STARTTLS" in raw.greeting
    assert b"AUTH=PLAIN" not in raw.greeting
    assert status_of(raw.cmd(f'LOGIN {ALICE} "{PASSWORD}"')) == b"NO [PRIVACYREQUIRED]"
    raw.starttls()
    caps = raw.cmd("CAPABILITY")[0]
    assert b"AUTH=PLAIN" in caps and b"LOGINDISABLED" not in caps and b"STARTTLS" not in caps
    raw.login()
    assert status_of(raw.cmd("SELECT INBOX")) == b"OK [READ-WRITE]"


def test_imaplib_starttls_and_login(mail_server: RunningServer) -> None:
    client = imaplib.IMAP4("127.0.0.1", mail_server.ports["imap"], timeout=30)
    client.starttls(mail_server.ssl_context())
    assert client.login(ALICE, PASSWORD)[0] == "OK"
    assert client.logout()[0] == "BYE"


def test_plaintext_on_loopback_when_configured(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(auth={"allow_plaintext_on_loopback": True})
    client = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30)
    assert "LOGINDISABLED" not in client.capabilities
    assert client.login(ALICE, PASSWORD)[0] == "OK"
    client.logout()


def test_login_failures(mail_server: RunningServer) -> None:
    raw = Raw(mail_server)
    assert status_of(raw.cmd(f'LOGIN {ALICE} "wrong"')) == b"NO [AUTHENTICATIONFAILED]"
    assert status_of(raw.cmd('LOGIN nobody@example.test "x"')) == b"NO [AUTHENTICATIONFAILED]"
    # Not logged in: mailbox commands are refused, the session goes on.
    assert status_of(raw.cmd("SELECT INBOX")) == b"BAD"
    raw.login()
    assert status_of(raw.cmd(f'LOGIN {ALICE} "{PASSWORD}"')) == b"BAD"  # already logged in


def test_lockout_answers_unavailable(mail_server: RunningServer) -> None:
    raw = Raw(mail_server)
    codes = [status_of(raw.cmd(f'LOGIN {ALICE} "wrong{i}"')) for i in range(6)]
    assert codes[0] == b"NO [AUTHENTICATIONFAILED]"
    assert codes[-1] == b"NO [UNAVAILABLE]"
    # Even the right password is refused while locked out (limiter shared with SMTP/POP3).
    assert status_of(raw.cmd(f'LOGIN {ALICE} "{PASSWORD}"')) == b"NO [UNAVAILABLE]"


def test_authenticate_plain_with_continuation(mail_server: RunningServer) -> None:
    client = connect(mail_server, login=False)
    blob = f"\0{ALICE}\0{PASSWORD}".encode()
    assert client.authenticate("PLAIN", lambda _challenge: blob)[0] == "OK"
    assert client.select("INBOX")[0] == "OK"


def test_authenticate_plain_sasl_ir(mail_server: RunningServer) -> None:
    raw = Raw(mail_server)
    good = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
    bad = base64.b64encode(f"\0{ALICE}\0nope".encode()).decode()
    assert status_of(raw.cmd(f"AUTHENTICATE PLAIN {bad}")) == b"NO [AUTHENTICATIONFAILED]"
    assert status_of(raw.cmd("AUTHENTICATE PLAIN !!notbase64")) == b"BAD"
    other = base64.b64encode(f"bob@example.test\0{ALICE}\0{PASSWORD}".encode()).decode()
    assert status_of(raw.cmd(f"AUTHENTICATE PLAIN {other}")) == b"NO [AUTHORIZATIONFAILED]"
    assert status_of(raw.cmd("AUTHENTICATE CRAM-MD5")) == b"NO [CANNOT]"
    lines = raw.cmd(f"AUTHENTICATE PLAIN {good}")
    assert b"OK [CAPABILITY IMAP4rev1" in lines[-1] and b"QRESYNC" in lines[-1]


def test_authenticate_cancelled(mail_server: RunningServer) -> None:
    raw = Raw(mail_server)
    raw.send(b"a1 AUTHENTICATE PLAIN\r\n")
    assert raw.readline() == b"+ "
    raw.send(b"*\r\n")
    assert status_of(raw.until("a1")) == b"BAD"
    raw.login()


def test_noop_id_logout(mail_server: RunningServer) -> None:
    raw = Raw(mail_server)
    assert status_of(raw.cmd("NOOP")) == b"OK"
    lines = raw.cmd('ID ("name" "pytest" "version" "1")')
    assert lines[0] == b'* ID ("name" "mailstead" "version" "0.1.0")'
    assert raw.cmd("ID NIL")[0].startswith(b"* ID (")
    lines = raw.cmd("LOGOUT")
    assert lines[0].startswith(b"* BYE") and status_of(lines) == b"OK"
    assert raw.closed()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_login_on_both_backends(mail_server: RunningServer) -> None:
    client = connect(mail_server)
    assert client.select("INBOX") == ("OK", [b"0"])
    client.logout()
