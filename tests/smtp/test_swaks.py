"""Debian's swaks against the real server: MX, pipelining, submission with STARTTLS/implicit TLS.

swaks exit codes (its manual): 0 ok, 23 MAIL refused, 24 no RCPT accepted, 28 AUTH failed.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import DOMAIN, PASSWORD, RunningServer, require_binary
from tests.smtp.helpers import ALICE, BOB, inbox, queue

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)


def swaks(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [require_binary("swaks"), "--server", "127.0.0.1", "--port", str(port),
           "--helo", "swaks.test", "--timeout", "30", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@BOTH
def test_swaks_mx_delivery_with_pipelining(mail_server: RunningServer) -> None:
    mail_server.add_alias(f"team@{DOMAIN}", ALICE)
    mail_server.add_alias(f"team@{DOMAIN}", BOB)
    proc = swaks(mail_server.ports["smtp"], "--pipeline", "--from", "carol@remote.test",
                 "--to", f"{ALICE},team@{DOMAIN}", "--header", "Subject: via swaks",
                 "--body", "Hello from swaks")
    assert proc.returncode == 0, proc.stdout
    assert "<** " not in proc.stdout  # no error replies
    for user in (ALICE, BOB):
        [stored] = inbox(mail_server, user)
        assert stored.meta.envelope.subject == "via swaks"
        assert b"Hello from swaks" in stored.data


def test_swaks_relay_refused(mail_server: RunningServer) -> None:
    proc = swaks(mail_server.ports["smtp"], "--from", "spammer@remote.test",
                 "--to", "victim@other.test")
    assert proc.returncode == 24, proc.stdout
    assert "550 5.7.1" in proc.stdout


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_starttls_auth(mail_server: RunningServer, mechanism: str) -> None:
    proc = swaks(mail_server.ports["submission"], "--tls", "--auth", mechanism,
                 "--auth-user", ALICE, "--auth-password", PASSWORD, "--from", ALICE,
                 "--to", f"{BOB},friend@remote.test", "--header", f"Subject: {mechanism}")
    assert proc.returncode == 0, proc.stdout
    assert "235 2.7.0" in proc.stdout
    [stored] = inbox(mail_server, BOB)
    assert "with ESMTPSA" in stored.headers
    [entry] = queue(mail_server)
    assert [r.address for r in entry.recipients] == ["friend@remote.test"]


def test_swaks_implicit_tls(mail_server: RunningServer) -> None:
    proc = swaks(mail_server.ports["submissions"], "--tls-on-connect", "--auth", "PLAIN",
                 "--auth-user", BOB, "--auth-password", PASSWORD, "--from", BOB, "--to", ALICE)
    assert proc.returncode == 0, proc.stdout
    assert len(inbox(mail_server, ALICE)) == 1


def test_swaks_auth_refused_without_tls(mail_server: RunningServer) -> None:
    proc = swaks(mail_server.ports["submission"], "--auth", "PLAIN", "--auth-user", ALICE,
                 "--auth-password", PASSWORD, "--from", ALICE, "--to", BOB)
    assert proc.returncode == 28, proc.stdout  # AUTH is not offered before STARTTLS
    assert inbox(mail_server, BOB) == []


def test_swaks_sending_as_someone_else(mail_server: RunningServer) -> None:
    proc = swaks(mail_server.ports["submission"], "--tls", "--auth", "LOGIN",
                 "--auth-user", ALICE, "--auth-password", PASSWORD, "--from", BOB, "--to", BOB)
    assert proc.returncode == 23, proc.stdout
    assert "553 5.7.1" in proc.stdout
    assert inbox(mail_server, BOB) == []


def test_swaks_wrong_password(mail_server: RunningServer) -> None:
    proc = swaks(mail_server.ports["submission"], "--tls", "--auth", "PLAIN",
                 "--auth-user", ALICE, "--auth-password", "wrong-password", "--from", ALICE,
                 "--to", BOB)
    assert proc.returncode == 28, proc.stdout
    assert "535 5.7.8" in proc.stdout
