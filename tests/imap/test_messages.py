"""Message commands: APPEND (flags, date, 8-bit, UTF-8, MULTIAPPEND, APPENDUID, TRYCREATE,
TOOBIG), FETCH items, STORE, COPY/MOVE (COPYUID), EXPUNGE, UID EXPUNGE, CLOSE, UNSELECT."""

from __future__ import annotations

import imaplib
import re

import pytest

from tests.conftest import RunningServer
from tests.imap.helpers import Raw, connect, deliver, message, ok, status_of

MULTIPART = (
    b"From: Carol <carol@example.org>\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: =?utf-8?q?Caf=C3=A9?= report\r\n"
    b"Date: Tue, 02 Jan 2024 11:00:00 +0100\r\n"
    b"Message-ID: <mp@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XX"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--XX\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Caf=C3=A9 au lait\r\n"
    b"--XX\r\n"
    b"Content-Type: application/octet-stream; name=blob.bin\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=blob.bin\r\n"
    b"\r\n"
    b"AAEC/w==\r\n"
    b"--XX--\r\n"
)


def test_append_flags_date_and_appenduid(mail_server: RunningServer) -> None:
    client = connect(mail_server)
    typ, data = client.append(
        "INBOX", r"(\Seen $Important)", '"05-Jan-2024 12:30:00 +0200"', message("appended")
    )
    assert typ == "OK"
    m = re.search(rb"\[APPENDUID (\d+) (\d+)\]", data[0])
    assert m is not None and m.group(2) == b"1"
    ok(client.select("INBOX"))
    [head] = ok(client.fetch("1", "(FLAGS INTERNALDATE UID)"))
    assert isinstance(head, bytes)
    assert b"FLAGS (\\Seen \\Recent $Important)" in head
    # The same instant; the store keeps it in UTC.
    assert b'INTERNALDATE "05-Jan-2024 10:30:00 +0000"' in head
    # Into a missing mailbox: TRYCREATE, nothing stored.
    typ, data = client.append("Nope", None, None, message("x"))
    assert typ == "NO" and data[0].startswith(b"[TRYCREATE]")


def test_append_8bit_and_utf8_messages_come_back_byte_exact(mail_server: RunningServer) -> None:
    latin = (
        b"From: a@example.org\r\nSubject: 8bit\r\nContent-Type: text/plain; charset=latin-1\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\nGr\xfc\xdfe aus K\xf6ln\r\n"
    )
    utf8 = (
        "From: Zoë <zoe@example.org>\r\nSubject: Ünïcödé ✓\r\nContent-Type: text/plain; "
        "charset=utf-8\r\n\r\n日本語のテキスト\r\n"
    ).encode()
    client = connect(mail_server)
    ok(client.append("INBOX", None, None, latin))
    ok(client.append("INBOX", None, None, utf8))
    ok(client.select("INBOX"))
    [(_, body1), _] = ok(client.fetch("1", "(BODY.PEEK[])"))
    [(_, body2), _] = ok(client.fetch("2", "(BODY.PEEK[])"))
    assert body1 == latin and body2 == utf8
    [(head, _), _] = ok(client.fetch("2", "(RFC822.SIZE BODY.PEEK[TEXT])"))
    assert b"RFC822.SIZE %d" % len(utf8) in head
    typ, data = client.search("UTF-8", "BODY", "テキスト".encode())
    assert typ == "OK" and data == [b"2"]


def test_multiappend_and_limits(mail_server: RunningServer) -> None:
    raw = Raw(mail_server)
    raw.login()
    lines = raw.cmd(b"APPEND Archive (\\Flagged) {5+}\r\nfirst {6+}\r\nsecond")
    assert re.match(rb"t\d+ OK \[APPENDUID \d+ 1:2\]", lines[-1]), lines
    assert raw.cmd("STATUS Archive (MESSAGES)")[0] == b'* STATUS "Archive" (MESSAGES 2)'
    # Synchronising literal over APPENDLIMIT: refused before the client sends it.
    raw.send(b"big APPEND INBOX {99999999}\r\n")
    assert raw.readline() == b"big NO [TOOBIG] Message too big"
    assert status_of(raw.cmd("NOOP")) == b"OK"
    assert status_of(raw.cmd(b"APPEND INBOX (\\Bogus) {1+}\r\nx")) == b"BAD"
    assert raw.cmd("STATUS INBOX (MESSAGES)")[0] == b'* STATUS "INBOX" (MESSAGES 0)'


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_fetch_items(mail_server: RunningServer) -> None:
    deliver(mail_server, MULTIPART)
    client = connect(mail_server)
    ok(client.select("INBOX"))
    [head] = ok(client.fetch("1", "(ENVELOPE)"))
    assert isinstance(head, bytes)
    assert head.startswith(
        b'1 (ENVELOPE ("Tue, 02 Jan 2024 11:00:00 +0100" "=?utf-8?q?Caf=C3=A9?= report" '
        b'(("Carol" NIL "carol" "example.org"))'
    )
    data = ok(client.fetch("1", "(BODYSTRUCTURE)"))
    structure = data[0].upper()
    assert b'("TEXT" "PLAIN" ("CHARSET" "UTF-8") NIL NIL "QUOTED-PRINTABLE" 17 1' in structure
    assert b'"MIXED" ("BOUNDARY" "XX")' in structure
    data = ok(client.fetch("1", "(BODY)"))
    assert data[0].startswith(b"1 (BODY ((")
    [(head, part1), _] = ok(client.fetch("1", "(BODY.PEEK[1])"))
    assert part1 == b"Caf=C3=A9 au lait"
    [(head, binary), _] = ok(client.fetch("1", "(BINARY.PEEK[1])"))
    assert binary == "Café au lait".encode()
    [(head, attachment), _] = ok(client.fetch("1", "(BINARY.PEEK[2])"))
    assert attachment == b"\x00\x01\x02\xff" and b"~{4}" in head
    data = ok(client.fetch("1", "(BINARY.SIZE[2])"))
    assert b"BINARY.SIZE[2] 4" in data[0]
    [(head, mime_header), _] = ok(client.fetch("1", "(BODY.PEEK[2.MIME])"))
    assert mime_header.startswith(b"Content-Type: application/octet-stream")
    [(head, fields), _] = ok(client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (Subject To)])"))
    assert fields == b"To: alice@example.test\r\nSubject: =?utf-8?q?Caf=C3=A9?= report\r\n\r\n"
    assert head.endswith(b"BODY[HEADER.FIELDS (SUBJECT TO)] {%d}" % len(fields))
    [(head, rest), _] = ok(client.fetch("1", "(BODY.PEEK[HEADER.FIELDS.NOT (Subject To)])"))
    assert b"Subject" not in rest and b"From: Carol" in rest
    [(head, partial), _] = ok(client.fetch("1", "(BODY.PEEK[]<6.5>)"))
    assert head.endswith(b"BODY[]<6> {5}") and partial == b"Carol"
    [(head, text), _] = ok(client.fetch("1", "(BODY.PEEK[TEXT])"))
    assert text.startswith(b"preamble\r\n--XX")
    data = ok(client.fetch("1", "(BODY.PEEK[7])"))
    assert b"BODY[7] NIL" in data[0]
    [head] = ok(client.fetch("1", "FAST"))
    assert isinstance(head, bytes)
    assert b"FLAGS (\\Recent)" in head and b"RFC822.SIZE %d" % len(MULTIPART) in head
    # A non-peek body fetch sets \Seen and says so.
    [(head, _), tail] = ok(client.fetch("1", "(BODY[1])"))
    assert isinstance(tail, bytes)
    assert tail == b" FLAGS (\\Seen \\Recent))"
    [(head, whole), _] = ok(client.fetch("1", "(RFC822)"))
    assert whole == MULTIPART
    data = ok(client.uid("FETCH", "1", "(FLAGS)"))
    assert data == [b"1 (UID 1 FLAGS (\\Seen \\Recent))"]
    raw = Raw(mail_server)
    raw.login()
    raw.cmd("SELECT INBOX")
    assert status_of(raw.cmd("FETCH 5 (FLAGS)")) == b"BAD"
    assert status_of(raw.cmd("FETCH 1 (BOGUS)")) == b"BAD"
    assert len(raw.cmd("UID FETCH 99 (FLAGS)")) == 1  # no such UID: nothing, and OK


def test_examine_is_read_only(mail_server: RunningServer) -> None:
    deliver(mail_server, message("look only"))
    raw = Raw(mail_server)
    raw.login()
    lines = raw.cmd("EXAMINE INBOX")
    assert status_of(lines) == b"OK [READ-ONLY]"
    assert b"* OK [PERMANENTFLAGS ()] Read-only mailbox" in lines
    lines = raw.cmd("FETCH 1 (BODY[])")
    assert b"\\Seen" not in lines[0]
    assert status_of(raw.cmd("STORE 1 +FLAGS (\\Deleted)")) == b"NO [READ-ONLY]"
    assert status_of(raw.cmd("EXPUNGE")) == b"NO [READ-ONLY]"
    assert status_of(raw.cmd("MOVE 1 Trash")) == b"NO [READ-ONLY]"
    assert status_of(raw.cmd("COPY 1 Trash")).startswith(b"OK [COPYUID")
    lines = raw.cmd("SELECT INBOX")
    assert b"* 1 FETCH" not in b"".join(lines)


def test_store_flags(mail_server: RunningServer) -> None:
    for i in range(3):
        deliver(mail_server, message(f"m{i}"))
    client = connect(mail_server)
    ok(client.select("INBOX"))
    data = ok(client.store("1:2", "+FLAGS", r"(\Flagged $Work)"))
    assert data == [
        b"1 (FLAGS (\\Flagged \\Recent $Work))", b"2 (FLAGS (\\Flagged \\Recent $Work))"
    ]
    data = ok(client.store("1", "-FLAGS", r"($Work)"))
    assert data == [b"1 (FLAGS (\\Flagged \\Recent))"]
    data = ok(client.store("3", "FLAGS", r"(\Answered \Draft)"))
    assert data == [b"3 (FLAGS (\\Answered \\Draft \\Recent))"]
    assert ok(client.store("3", "+FLAGS.SILENT", r"(\Seen)")) == [None]
    data = ok(client.uid("STORE", "2", "+FLAGS", r"(\Seen)"))
    assert data == [b"2 (UID 2 FLAGS (\\Flagged \\Seen \\Recent $Work))"]
    try:
        client.store("1", "+FLAGS", r"(\Bogus)")
        raise AssertionError("STORE of an unknown system flag was accepted")
    except imaplib.IMAP4.error as exc:
        assert "BAD" in str(exc)
    data = ok(client.fetch("1:3", "(FLAGS)"))
    assert data == [
        b"1 (FLAGS (\\Flagged \\Recent))",
        b"2 (FLAGS (\\Flagged \\Seen \\Recent $Work))",
        b"3 (FLAGS (\\Answered \\Seen \\Draft \\Recent))",
    ]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_copy_move_expunge(mail_server: RunningServer) -> None:
    for i in range(5):
        deliver(mail_server, message(f"m{i}"))
    raw = Raw(mail_server)
    raw.login()
    raw.cmd("SELECT INBOX")
    lines = raw.cmd("COPY 1:2 Archive")
    assert re.match(rb"t\d+ OK \[COPYUID \d+ 1:2 1:2\] Copy completed", lines[-1]), lines
    assert status_of(raw.cmd("COPY 1 Missing")) == b"NO [TRYCREATE]"
    lines = raw.cmd("MOVE 2:3 Trash")
    assert re.match(rb"\* OK \[COPYUID \d+ 2:3 1:2\] Moved", lines[0]), lines
    assert lines[1:3] == [b"* 2 EXPUNGE", b"* 2 EXPUNGE"]
    lines = raw.cmd("UID MOVE 5 Trash")
    assert re.match(rb"\* OK \[COPYUID \d+ 5 3\]", lines[0]) and lines[1] == b"* 3 EXPUNGE"
    # Now INBOX holds UIDs 1 and 4 (sequence 1, 2).
    raw.cmd("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    lines = raw.cmd("UID EXPUNGE 4")
    assert lines[0] == b"* 2 EXPUNGE" and status_of(lines) == b"OK"
    lines = raw.cmd("EXPUNGE")
    assert lines[0] == b"* 1 EXPUNGE"
    assert raw.cmd("STATUS Trash (MESSAGES)")[0] == b'* STATUS "Trash" (MESSAGES 3)'
    # CLOSE expunges silently; UNSELECT does not.
    raw.cmd("SELECT Trash")
    raw.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert raw.cmd("UNSELECT")[0].startswith(b"t")
    raw.cmd("SELECT Trash")
    lines = raw.cmd("CLOSE")
    assert len(lines) == 1 and status_of(lines) == b"OK"
    assert raw.cmd("STATUS Trash (MESSAGES)")[0] == b'* STATUS "Trash" (MESSAGES 2)'
    assert status_of(raw.cmd("FETCH 1 (FLAGS)")) == b"BAD"  # nothing selected


def test_imaplib_expunge_and_recent(mail_server: RunningServer) -> None:
    deliver(mail_server, message("a"))
    first = connect(mail_server)
    assert ok(first.select("INBOX")) == [b"1"]
    assert first.response("RECENT") == ("RECENT", [b"1"])
    second = connect(mail_server)
    ok(second.select("INBOX"))
    assert second.response("RECENT") == ("RECENT", [b"0"])  # claimed by the first session
    try:
        first.store("1", "+FLAGS", r"(\Deleted)")
        typ, data = first.expunge()
        assert typ == "OK" and data == [b"1"]
    finally:
        first.logout()
        second.logout()


def test_empty_mailbox_star_ranges(mail_server: RunningServer) -> None:
    raw = Raw(mail_server)
    raw.login()
    raw.cmd("SELECT Drafts")
    lines = raw.cmd("FETCH 1:* (FLAGS)")
    assert len(lines) == 1 and status_of(lines) == b"OK"
    assert status_of(raw.cmd("UID FETCH 1:* (FLAGS)")) == b"OK"
    assert raw.cmd("SEARCH ALL")[0] == b"* SEARCH"
    assert status_of(raw.cmd("FETCH 1 (FLAGS)")) == b"BAD"


def test_unknown_and_wrong_state_commands(mail_server: RunningServer) -> None:
    raw = Raw(mail_server)
    assert status_of(raw.cmd("FROBNICATE")) == b"BAD"
    assert status_of(raw.cmd("FETCH 1 FLAGS")) == b"BAD"
    raw.login()
    assert status_of(raw.cmd("FETCH 1 FLAGS")) == b"BAD"
    assert status_of(raw.cmd("CLOSE")) == b"BAD"
    client = connect(mail_server)
    try:
        client.select("INBOX")
        client.fetch("1", "(FLAGS)")
    except imaplib.IMAP4.error as exc:
        assert "Invalid message sequence number" in str(exc)


def test_binary_append_special_use_create_and_rfc822_items(mail_server: RunningServer) -> None:
    raw = Raw(mail_server)
    raw.login()
    assert status_of(raw.cmd("CREATE Outbox (USE (\\Sent))")) == b"OK"
    assert b'* LIST (\\HasNoChildren \\Sent) "/" "Outbox"' in raw.cmd('LIST "" Outbox')
    assert status_of(raw.cmd("CREATE Odd (USE (\\Bogus))")) == b"NO [USEATTR]"
    # BINARY (RFC 3516): a literal8 may carry NUL octets; they come back byte for byte from
    # BINARY[1], while the message is kept with that content base64-encoded (RFC 3516 4.3).
    content = b"\x00\x01\xff\r\n"
    data = b"Subject: bin\r\nContent-Type: application/octet-stream\r\n\r\n" + content
    raw.send(b"b1 APPEND INBOX ~{%d}\r\n" % len(data))
    assert raw.readline() == b"+ Ready for literal data"
    raw.send(data + b"\r\n")
    assert status_of(raw.until("b1")).startswith(b"OK [APPENDUID")
    raw.cmd("SELECT INBOX")
    lines = raw.cmd("FETCH 1 (BINARY.PEEK[1] RFC822.HEADER)")
    assert lines[0].startswith(b"* 1 FETCH (BINARY[1] ~{%d}\r\n" % len(content) + content)
    assert b"RFC822.HEADER {" in lines[0] and b"Content-Transfer-Encoding: base64" in lines[0]
    lines = raw.cmd("FETCH 1 (RFC822.TEXT)")
    assert b"RFC822.TEXT {8}\r\nAAH/DQo=" in lines[0] and b"\\Seen" in lines[0]  # sets \Seen
    assert status_of(raw.cmd("CHECK")) == b"OK"
