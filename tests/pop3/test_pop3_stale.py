"""A POP3 maildrop is a snapshot taken at login (RFC 1939 8), but a message expunged since
(over IMAP here) is gone: RETR and TOP answer -ERR, never the old bytes. Damaged message files
answer -ERR too, whether changed or cut short, and are logged. Both stores."""

from __future__ import annotations

import imaplib
import logging
import poplib
import socket

import pytest

from tests.conftest import PASSWORD, RunningServer
from tests.pop3.helpers import blob_path, deliver, inbox, message

ALICE = "alice@example.test"


def pop3_client(server: RunningServer) -> poplib.POP3_SSL:
    client = poplib.POP3_SSL(
        "127.0.0.1", server.ports["pop3s"], context=server.ssl_context(), timeout=30
    )
    client.user(ALICE)
    client.pass_(PASSWORD)
    return client


def served_promptly(server: RunningServer) -> None:
    """Another POP3 client gets its greeting and a CAPA answer within a couple of seconds."""
    sock = socket.create_connection(("127.0.0.1", server.ports["pop3"]), timeout=2)
    try:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(b"CAPA\r\n")
        assert reader.readline().startswith(b"+OK")
    finally:
        sock.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_message_expunged_over_imap_is_not_served(mail_server: RunningServer) -> None:
    raws = [message(f"note {i}", body=f"body {i}\r\n") for i in range(3)]
    for raw in raws:
        deliver(mail_server, ALICE, raw)
    pop = pop3_client(mail_server)
    assert pop.stat()[0] == 3
    # Message 2 goes away over IMAP while the POP3 session holds its snapshot.
    imap = imaplib.IMAP4_SSL("127.0.0.1", mail_server.ports["imaps"],
                             ssl_context=mail_server.ssl_context(), timeout=30)
    imap.login(ALICE, PASSWORD)
    imap.select("INBOX")
    assert imap.store("2", "+FLAGS", "(\\Deleted)")[0] == "OK"
    assert imap.expunge()[0] == "OK"
    imap.logout()
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR no such message'$"):
        pop.retr(2)
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR no such message'$"):
        pop.top(2, 0)
    # The others are still served, whole.
    for number in (1, 3):
        _, lines, _ = pop.retr(number)
        assert b"\r\n".join(lines) + b"\r\n" == raws[number - 1]
    _, lines, _ = pop.top(3, 0)
    assert b"Subject: note 2" in lines
    # Deleting the vanished message and quitting is harmless; the others are marked seen.
    pop.dele(2)
    pop.quit()
    assert inbox(mail_server, ALICE) == {1: True, 3: True}
    served_promptly(mail_server)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("damage", ["same length", "truncated"])
def test_damaged_file_gets_err_and_a_log_line(
    mail_server: RunningServer, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailstead")
    bad = message("will rot", body="Hello there.\r\n" * 10)
    good = message("fine")
    deliver(mail_server, ALICE, bad)
    deliver(mail_server, ALICE, good)
    path = blob_path(mail_server, bad)
    path.chmod(0o644)
    path.write_bytes(bad.replace(b"Hello", b"Jello") if damage == "same length"
                     else bad[:-10])
    pop = pop3_client(mail_server)
    with pytest.raises(poplib.error_proto, match=r"-ERR \[SYS/PERM\] message 1 is damaged"):
        pop.retr(1)
    with pytest.raises(poplib.error_proto, match=r"-ERR \[SYS/PERM\] message 1 is damaged"):
        pop.top(1, 2)
    _, lines, _ = pop.retr(2)
    assert b"\r\n".join(lines) + b"\r\n" == good
    pop.quit()
    logged = [r.getMessage() for r in caplog.records if "pop3.corrupt" in r.getMessage()]
    assert len(logged) == 2
    assert "SHA-256 mismatch" in logged[0]
    assert path.read_bytes() != bad  # nothing "repaired" it behind the user's back
    served_promptly(mail_server)
