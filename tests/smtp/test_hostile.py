"""Bad input on the SMTP listeners (issue 16): recipient floods, bare-LF command lines, oversized
BDAT chunks, looping mail and forged From: fields. Each test checks what the client is told, that
nothing wrong is stored, and that another client is still greeted promptly."""

from __future__ import annotations

import base64
import smtplib
import socket
import subprocess

import pytest

from tests.conftest import DOMAIN, PASSWORD, RunningServer, require_binary
from tests.smtp.helpers import ALICE, BOB, RawClient, inbox, message, queue

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
CAROL = f"carol@{DOMAIN}"


def greeted_promptly(server: RunningServer, listener: str = "smtp") -> None:
    """A second, ordinary client gets its 220 greeting within 2 s."""
    with socket.create_connection(("127.0.0.1", server.ports[listener]), timeout=2) as sock:
        sock.settimeout(2)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(1024)
            assert chunk, data
            data += chunk
        assert data.startswith(b"220 "), data
        sock.sendall(b"QUIT\r\n")


def next_code(c: RawClient) -> str:
    """"250 2.1.0" style: the next reply's code and enhanced status."""
    code, text = c.reply()
    return f"{code} {text.split(' ')[0]}"


def error_text(exc: smtplib.SMTPResponseException) -> str:
    error = exc.smtp_error
    return error.decode() if isinstance(error, bytes) else error


def submission_client(server: RunningServer, user: str = ALICE) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30)
    client.starttls(context=server.ssl_context())
    client.login(user, PASSWORD)
    return client


def received_fields(n: int) -> bytes:
    return b"".join(b"Received: from hop%d.remote.test by mx.remote.test; "
                    b"Mon, 1 Jan 2024 00:00:00 +0000\r\n" % i for i in range(n))


# -- 1. a recipient flood is answered 452 4.5.3, not counted as errors ----------------------


@BOTH
def test_pipelined_thousand_recipients(mail_server: RunningServer) -> None:
    mail_server.add_user(CAROL)
    first = [f"alice+{i}@{DOMAIN}" for i in range(50)] + [f"bob+{i}@{DOMAIN}" for i in range(50)]
    rest = [f"carol+{i}@{DOMAIN}" for i in range(900)]
    with RawClient(mail_server.ports["smtp"]) as c:
        assert "PIPELINING" in c.cmd("EHLO client.remote.test")[1]
        # RFC 2920: the whole envelope and DATA in one go.
        c.send(b"MAIL FROM:<dave@remote.test>\r\n"
               + b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in first + rest)
               + b"DATA\r\n")
        assert next_code(c) == "250 2.1.0"
        replies = [c.reply() for _ in range(1000)]
        assert [code for code, _ in replies[:100]] == [250] * 100
        assert set(replies[100:]) == {(452, "4.5.3 Too many recipients")}
        assert c.reply()[0] == 354
        greeted_promptly(mail_server)  # while this session is in its DATA
        assert c.code(message("crowd") + b".\r\n") == "250 2.0.0"
        assert c.code("NOOP") == "250 2.0.0"  # 900 refusals, yet not "too many errors"
    assert len(inbox(mail_server, ALICE)) == 1
    assert len(inbox(mail_server, BOB)) == 1
    assert inbox(mail_server, CAROL) == []
    greeted_promptly(mail_server)


@BOTH
def test_smtplib_thousand_recipients_on_submission(make_server: object) -> None:
    # No sending cap for new accounts here: it would defer the 100 recipients.
    mail_server: RunningServer = make_server(  # type: ignore[operator]
        web={"new_account_daily_cap": 0})
    recipients = [f"friend{i}@remote.test" for i in range(1000)]
    with submission_client(mail_server) as client:
        refused = client.sendmail(ALICE, recipients, message("newsletter", sender=ALICE))
        assert client.noop()[0] == 250
    assert len(refused) == 900
    assert set(refused) == set(recipients[100:])
    assert set(refused.values()) == {(452, b"4.5.3 Too many recipients")}
    [entry] = queue(mail_server)
    assert [r.address for r in entry.recipients] == recipients[:100]
    greeted_promptly(mail_server, "submission")


def test_swaks_pipelined_thousand_recipients(mail_server: RunningServer) -> None:
    recipients = [f"alice+{i}@{DOMAIN}" for i in range(100)] + [BOB] * 900
    proc = subprocess.run(
        [require_binary("swaks"), "--server", "127.0.0.1", "--port",
         str(mail_server.ports["smtp"]), "--helo", "swaks.test", "--timeout", "30",
         "--pipeline", "--from", "dave@remote.test", "--to", ",".join(recipients),
         "--header", "Subject: swaks crowd",
         "--header", f"To: {ALICE}",  # not the 1,000 names on one line
         "--body", "Hello all"],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert proc.stdout.count("452 4.5.3 Too many recipients") == 900
    assert "250 2.0.0 Ok: queued as" in proc.stdout
    [stored] = inbox(mail_server, ALICE)
    assert stored.meta.envelope.subject == "swaks crowd"
    assert inbox(mail_server, BOB) == []
    greeted_promptly(mail_server)


# -- 2. command lines end with CRLF, never a bare LF ----------------------------------------


def test_command_line_with_bare_lf_is_refused(mail_server: RunningServer) -> None:
    with RawClient(mail_server.ports["smtp"]) as c:
        assert c.code(b"EHLO client.remote.test\n") == "500 5.5.2"
        assert c.code("MAIL FROM:<carol@remote.test>") == "503 5.5.1"  # no EHLO was taken
        c.cmd("EHLO client.remote.test")
        # Pipelined: the bare-LF line in the middle is refused, the others are served.
        c.send(b"MAIL FROM:<carol@remote.test>\r\nRCPT TO:<bob@example.test>\n"
               b"RCPT TO:<alice@example.test>\r\nDATA\n")
        replies = [c.reply() for _ in range(4)]
        assert replies[1] == (500, "5.5.2 Line must end with CRLF")
        assert [code for code, _ in replies] == [250, 500, 250, 500]
        greeted_promptly(mail_server)
        assert c.cmd("DATA")[0] == 354
        assert c.code(message("crlf only") + b".\r\n") == "250 2.0.0"
    [stored] = inbox(mail_server, ALICE)
    assert stored.meta.envelope.subject == "crlf only"
    assert inbox(mail_server, BOB) == []


def test_bare_lf_data_command_does_not_start_a_message(mail_server: RunningServer) -> None:
    # The message sent after a refused "DATA\n" is read as commands, each refused, and nothing
    # is stored.
    with RawClient(mail_server.ports["smtp"]) as c:
        c.cmd("EHLO client.remote.test")
        c.cmd("MAIL FROM:<carol@remote.test>")
        c.cmd("RCPT TO:<alice@example.test>")
        assert c.code(b"DATA\n") == "500 5.5.2"
        c.send(b"Subject: never\r\n\r\nbody\r\n.\r\n")
        assert [c.reply()[0] for _ in range(4)] == [500] * 4
        assert c.code("NOOP") == "250 2.0.0"
    assert inbox(mail_server, ALICE) == []
    greeted_promptly(mail_server)


# -- 3. BDAT over the size limit: 552 at once, nothing buffered ------------------------------


def test_bdat_chunk_over_the_limit_is_answered_at_once(make_server: object) -> None:
    server: RunningServer = make_server(limits={"max_message_size": 4096})  # type: ignore[operator]
    with RawClient(server.ports["smtp"]) as c:
        c.cmd("EHLO client.remote.test")
        c.cmd("MAIL FROM:<carol@remote.test>")
        c.cmd("RCPT TO:<alice@example.test>")
        # A terabyte announced, not one octet sent: the reply comes anyway, then the hang-up.
        code, text = c.cmd(f"BDAT {10**12} LAST")
        assert (code, text[:5]) == (552, "5.3.4")
        assert c.closed_by_server()
    greeted_promptly(server)
    assert inbox(server, ALICE) == []


@BOTH
def test_bdat_cumulative_over_the_limit(make_server: object) -> None:
    server: RunningServer = make_server(limits={"max_message_size": 4096})  # type: ignore[operator]
    head = b"Subject: chunks\r\n\r\n" + b"a" * 2979 + b"\r\n"
    assert len(head) == 3000
    tail = (b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
            + b"x" * 2000 + b"\r\n").ljust(3000, b"y")
    with RawClient(server.ports["smtp"]) as c:
        c.cmd("EHLO client.remote.test")
        c.cmd("MAIL FROM:<carol@remote.test>")
        c.cmd("RCPT TO:<alice@example.test>")
        assert c.code(b"BDAT 3000\r\n" + head) == "250 2.0.0"
        # 6000 in all: refused before the second chunk's octets are sent.
        assert c.code("BDAT 3000 LAST") == "552 5.3.4"
        greeted_promptly(server)  # while the server waits for the octets to drop
        c.send(tail)  # dropped, never read as commands
        assert c.code("NOOP") == "250 2.0.0"
        # The session goes on with a message that fits.
        c.cmd("MAIL FROM:<carol@remote.test>")
        c.cmd("RCPT TO:<alice@example.test>")
        small = message("fits")
        assert c.code(f"BDAT {len(small)} LAST\r\n".encode() + small) == "250 2.0.0"
    assert [s.meta.envelope.subject for s in inbox(server, ALICE)] == ["fits"]
    assert inbox(server, BOB) == []
    greeted_promptly(server)


def test_bdat_pipelined_after_a_refused_chunk_is_dropped(make_server: object) -> None:
    server: RunningServer = make_server(limits={"max_message_size": 4096})  # type: ignore[operator]
    with RawClient(server.ports["smtp"]) as c:
        c.cmd("EHLO client.remote.test")
        c.send(b"MAIL FROM:<carol@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
               b"BDAT 4000\r\n" + b"a" * 4000 + b"BDAT 1000\r\n" + b"b" * 1000
               + b"BDAT 10 LAST\r\n" + b"c" * 10 + b"QUIT\r\n")
        codes = [next_code(c) for _ in range(6)]
        assert codes == ["250 2.1.0", "250 2.1.5", "250 2.0.0", "552 5.3.4", "503 5.5.1",
                         "221 2.0.0"]
    assert inbox(server, ALICE) == []
    greeted_promptly(server)


def test_large_bdat_message_checked_like_data_and_others_served(mail_server: RunningServer
                                                                 ) -> None:
    """A BDAT message over 1 MiB is joined and checked (bare LF, line length) off the event
    loop, as after DATA: bare LFs made CRLF in the stored message, a line over the bound
    refused, and a second client greeted meanwhile."""
    lines = b"".join(b"line %07d of a big message\n" % i for i in range(100_000))  # ~3 MiB
    raw = message("big lf").replace(b"\r\n", b"\n") + lines
    half = len(raw) // 2
    too_long = message("long line") + b"x" * (1024 * 1024 + 10) + b"\r\n"
    with RawClient(mail_server.ports["smtp"]) as c:
        c.cmd("EHLO client.remote.test")
        c.cmd("MAIL FROM:<carol@remote.test>")
        c.cmd("RCPT TO:<alice@example.test>")
        assert c.code(f"BDAT {half}\r\n".encode() + raw[:half]) == "250 2.0.0"
        rest = raw[half:]
        assert c.code(f"BDAT {len(rest)} LAST\r\n".encode() + rest) == "250 2.0.0"
        greeted_promptly(mail_server)
        c.cmd("MAIL FROM:<carol@remote.test>")
        c.cmd("RCPT TO:<alice@example.test>")
        assert c.code(f"BDAT {len(too_long)} LAST\r\n".encode() + too_long) == "552 5.3.4"
    [stored] = inbox(mail_server, ALICE)
    body = stored.data[stored.data.index(b"\r\n\r\n") + 4:]
    assert body == b"Hello.\r\n" + lines.replace(b"\n", b"\r\n")
    greeted_promptly(mail_server)


# -- 4. more than 100 Received fields: a routing loop ----------------------------------------


@BOTH
@pytest.mark.parametrize("how", ["data", "bdat"])
def test_routing_loop_on_mx(mail_server: RunningServer, how: str) -> None:
    looping = received_fields(101) + message("looping")
    fine = received_fields(100) + message("far travelled")
    with RawClient(mail_server.ports["smtp"]) as c:
        c.cmd("EHLO client.remote.test")
        for raw, expected in ((looping, "554 5.4.6"), (fine, "250 2.0.0")):
            c.cmd("MAIL FROM:<carol@remote.test>")
            c.cmd("RCPT TO:<alice@example.test>")
            if how == "data":
                assert c.cmd("DATA")[0] == 354
                code, text = c.cmd(raw + b".\r\n")
            else:
                code, text = c.cmd(f"BDAT {len(raw)} LAST\r\n".encode() + raw)
            assert f"{code} {text[:5]}" == expected
            if code == 554:
                assert "Routing loop detected" in text
    assert [s.meta.envelope.subject for s in inbox(mail_server, ALICE)] == ["far travelled"]
    greeted_promptly(mail_server)


@BOTH
def test_routing_loop_on_submission(mail_server: RunningServer) -> None:
    looping = received_fields(101) + message("looping", sender=ALICE)
    with submission_client(mail_server) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(ALICE, [BOB], looping)
        assert refused.value.smtp_code == 554
        assert error_text(refused.value).startswith("5.4.6 Routing loop detected")
        assert client.sendmail(ALICE, [BOB], message("fine", sender=ALICE)) == {}
    assert [s.meta.envelope.subject for s in inbox(mail_server, BOB)] == ["fine"]
    greeted_promptly(mail_server, "submission")


def test_received_fields_in_the_body_are_not_counted(mail_server: RunningServer) -> None:
    raw = message("quoted trace", body=(received_fields(150).decode()))
    with RawClient(mail_server.ports["smtp"]) as c:
        c.cmd("EHLO client.remote.test")
        c.cmd("MAIL FROM:<carol@remote.test>")
        c.cmd("RCPT TO:<alice@example.test>")
        assert c.code(f"BDAT {len(raw)} LAST\r\n".encode() + raw) == "250 2.0.0"
    assert len(inbox(mail_server, ALICE)) == 1


# -- 5. submission: the From: field must name the user's own addresses ------------------------


def with_from(from_field: str, subject: str = "from check") -> bytes:
    return (from_field + f"To: {BOB}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@example.test>\r\n\r\nHello.\r\n").encode()


@BOTH
@pytest.mark.parametrize("from_field", [
    f"From: {ALICE}\r\n",
    f"From: Alice Liddell <{ALICE}>\r\n",
    f'From: "Liddell, Alice" <alice+lists@{DOMAIN}>\r\n',
    f"From: Alice <{ALICE}>, Team <team@{DOMAIN}>\r\nSender: {ALICE}\r\n",
])
def test_submission_from_owned_is_sent(mail_server: RunningServer, from_field: str) -> None:
    mail_server.add_alias(f"team@{DOMAIN}", ALICE)
    with submission_client(mail_server) as client:
        assert client.sendmail(ALICE, [BOB], with_from(from_field)) == {}
    assert len(inbox(mail_server, BOB)) == 1


@BOTH
@pytest.mark.parametrize("from_field,text", [
    (f"From: {BOB}\r\n", f"From: header address <{BOB}> not owned by {ALICE}"),
    (f"From: Alice <{ALICE}>, <ceo@remote.test>\r\n",
     f"From: header address <ceo@remote.test> not owned by {ALICE}"),
    (f'From: "{ALICE}" <ceo@remote.test>\r\n',
     f"From: header address <ceo@remote.test> not owned by {ALICE}"),
    ("", "Message has no From: header field"),
    (f"From: {ALICE}\r\nFrom: {BOB}\r\n", "Message has more than one From: header field"),
    ("From: undisclosed-recipients:;\r\n", "Cannot read the From: header field"),
    (f"From: {ALICE} <{BOB}>\r\n", "Cannot read the From: header field"),
    (f"From: Alice <{ALICE}\r\n", "Cannot read the From: header field"),
])
def test_submission_from_not_owned_is_refused(mail_server: RunningServer, from_field: str,
                                              text: str) -> None:
    with submission_client(mail_server) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(ALICE, [BOB, "friend@remote.test"], with_from(from_field))
        assert refused.value.smtp_code == 550
        assert error_text(refused.value).startswith(f"5.7.1 {text}")
        # The session goes on.
        assert client.sendmail(ALICE, [BOB], with_from(f"From: {ALICE}\r\n")) == {}
    assert len(inbox(mail_server, BOB)) == 1
    assert queue(mail_server) == []
    greeted_promptly(mail_server, "submission")


def test_submission_from_checked_for_bdat_too(mail_server: RunningServer) -> None:
    forged = with_from(f"From: {BOB}\r\n")
    with RawClient(mail_server.ports["submissions"],
                   implicit_tls=mail_server.ssl_context()) as c:
        c.cmd("EHLO laptop")
        token = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
        assert c.code(f"AUTH PLAIN {token}") == "235 2.7.0"
        c.cmd(f"MAIL FROM:<{ALICE}>")
        c.cmd(f"RCPT TO:<{BOB}>")
        code, text = c.cmd(f"BDAT {len(forged)} LAST\r\n".encode() + forged)
        assert (code, text) == (550, f"5.7.1 From: header address <{BOB}> not owned by {ALICE}")
    assert inbox(mail_server, BOB) == []
    greeted_promptly(mail_server, "submission")
