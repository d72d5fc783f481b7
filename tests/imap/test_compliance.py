"""Replies a strict IMAP compliance run checks (issue 17): each case over a real socket, on
SQLite and PostgreSQL where the store decides the answer."""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Callable

import pytest

from tests.conftest import RunningServer
from tests.imap.helpers import BOB, Raw, connect, deliver, message, ok, status_of

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)


@BOTH
def test_examine_reports_recent_like_select_and_leaves_it(mail_server: RunningServer) -> None:
    """RFC 3501 6.3.2: EXAMINE answers as SELECT does, only read-only: the same RECENT count
    (today's STATUS says 2, so must EXAMINE), and \\Recent stays for the next SELECT."""
    deliver(mail_server, message("one"))
    deliver(mail_server, message("two"))
    watcher = Raw(mail_server)
    watcher.login()
    assert watcher.cmd("STATUS INBOX (RECENT)")[0] == b'* STATUS "INBOX" (RECENT 2)'
    lines = watcher.cmd("EXAMINE INBOX")
    assert b"* 2 RECENT" in lines and b"[READ-ONLY]" in lines[-1]
    fetched = watcher.cmd("FETCH 1:* (FLAGS)")
    assert fetched[:2] == [b"* 1 FETCH (FLAGS (\\Recent))", b"* 2 FETCH (FLAGS (\\Recent))"]
    # A third message arrives while EXAMINEd: announced as recent too, still not taken.
    deliver(mail_server, message("three"))
    lines = watcher.cmd("NOOP")
    assert lines[:2] == [b"* 3 EXISTS", b"* 3 RECENT"]
    assert watcher.cmd("STATUS INBOX (RECENT)")[0] == b'* STATUS "INBOX" (RECENT 3)'

    first = connect(mail_server)
    second = connect(mail_server)
    try:
        ok(first.select("INBOX"))
        assert first.response("RECENT") == ("RECENT", [b"3"])  # EXAMINE took none of them
        ok(second.select("INBOX"))
        assert second.response("RECENT") == ("RECENT", [b"0"])  # the first SELECT did
        lines = watcher.cmd("EXAMINE INBOX")
        assert b"* 0 RECENT" in lines and lines[-1].split()[1] == b"OK"
    finally:
        first.logout()
        second.logout()
        watcher.close()


@BOTH
def test_append_to_the_selected_mailbox_is_recent_in_that_session_only(
        mail_server: RunningServer) -> None:
    """RFC 3501 6.3.11 with 2.3.2: a message APPENDed to the mailbox the session has selected
    is \\Recent there (as is mail delivered before it that nobody took yet), and in no other
    session; a message APPENDed from elsewhere is \\Recent in the first session told of it."""
    a, b, c = Raw(mail_server), Raw(mail_server), Raw(mail_server)
    try:
        for conn in (a, b, c):
            conn.login()
        assert b"* 0 RECENT" in a.cmd("SELECT INBOX")
        assert b"* 0 RECENT" in b.cmd("SELECT INBOX")
        deliver(mail_server, message("delivered before the append"))
        data = message("appended by a")
        a.send(b"ap APPEND INBOX {%d+}\r\n%s\r\n" % (len(data), data))
        lines = a.until("ap") + a.cmd("NOOP")  # told with the APPEND's answer or after
        assert b"* 2 EXISTS" in lines and b"* 2 RECENT" in lines, lines
        assert b"[APPENDUID " in lines[lines.index(b"* 2 RECENT") + 1]
        assert a.cmd("FETCH 1:2 (FLAGS)")[:2] == [b"* 1 FETCH (FLAGS (\\Recent))",
                                                 b"* 2 FETCH (FLAGS (\\Recent))"]
        lines = b.cmd("NOOP")
        assert b"* 2 EXISTS" in lines and b"* 0 RECENT" in lines, lines
        assert b.cmd("FETCH 1:2 (FLAGS)")[:2] == [b"* 1 FETCH (FLAGS ())",
                                                 b"* 2 FETCH (FLAGS ())"]
        assert c.cmd("STATUS INBOX (RECENT)")[0] == b'* STATUS "INBOX" (RECENT 0)'
        # From a session with another mailbox selected: the first session to hear of it.
        assert status_of(c.cmd("SELECT Drafts")) == b"OK [READ-WRITE]"
        assert _append(c, message("appended by c")) == 3
        lines = b.cmd("NOOP")
        assert b"* 3 EXISTS" in lines and b"* 1 RECENT" in lines, lines
        assert b.cmd("FETCH 3 (FLAGS)")[0] == b"* 3 FETCH (FLAGS (\\Recent))"
        lines = a.cmd("NOOP")
        assert b"* 3 EXISTS" in lines and b"* 2 RECENT" in lines, lines
    finally:
        for conn in (a, b, c):
            conn.close()


def _flags_before_fetch(lines: list[bytes], known: set[str]) -> set[str]:
    """Checks, the way a strict client does, that every keyword a FETCH shows was named by a
    FLAGS response before it; returns the FLAGS known after ``lines``."""
    for line in lines:
        if line.startswith(b"* FLAGS ("):
            known = set(line[len(b"* FLAGS ("):line.index(b")")].decode().split())
        elif b" FETCH (" in line and b"FLAGS (" in line:
            start = line.index(b"FLAGS (") + len(b"FLAGS (")
            shown = line[start:line.index(b")", start)].decode().split()
            unknown = {f for f in shown if not f.startswith("\\")} - known
            assert not unknown, f"keyword {unknown} used without being in FLAGS: {lines}"
    return known


@BOTH
def test_new_keywords_are_announced_by_flags_before_any_fetch(
    mail_server: RunningServer,
) -> None:
    """RFC 3501 7.2.6, RFC 9051 7.3.5: a keyword new to the mailbox, brought by STORE, APPEND,
    COPY or MOVE from any session, reaches every session with the mailbox selected as an
    untagged FLAGS (and PERMANENTFLAGS) before a FETCH shows it."""
    deliver(mail_server, message("one"))
    deliver(mail_server, message("two"), mailbox="Archive")
    watcher, actor = Raw(mail_server), Raw(mail_server)
    watcher.login()
    actor.login()
    try:
        lines = watcher.cmd("SELECT INBOX")
        known = _flags_before_fetch(lines, set())
        assert "$Important" not in known

        # Another session's STORE.
        actor.cmd("SELECT INBOX")
        actor.cmd("STORE 1 +FLAGS ($Important)")
        lines = watcher.cmd("NOOP")
        flags_at = next(i for i, x in enumerate(lines) if x.startswith(b"* FLAGS ("))
        assert lines[flags_at + 1].startswith(b"* OK [PERMANENTFLAGS (")
        assert b"$Important" in lines[flags_at + 1]
        fetch_at = next(i for i, x in enumerate(lines) if b" FETCH " in x)
        assert flags_at < fetch_at
        known = _flags_before_fetch(lines, known)
        assert "$Important" in known

        # APPEND with a keyword, then a COPY and a MOVE bringing others.
        data = b"Subject: three\r\n\r\nthree\r\n"
        actor.send(b"a1 APPEND INBOX ($Label1) {%d+}\r\n" % len(data) + data + b"\r\n")
        assert actor.until("a1")[-1].startswith(b"a1 OK")
        actor.cmd("SELECT Archive")
        actor.cmd("STORE 1 +FLAGS (Junk-ish)")
        actor.cmd("COPY 1 INBOX")
        actor.cmd("STORE 1 +FLAGS (MovedTag)")
        actor.cmd("MOVE 1 INBOX")
        lines = watcher.cmd("FETCH 1:* (FLAGS)")
        known = _flags_before_fetch(lines, known)
        assert {"$Label1", "Junk-ish", "MovedTag"} <= known
        lines = watcher.cmd("NOOP")
        known = _flags_before_fetch(lines, known)

        # The session's own STORE, even .SILENT, adds to FLAGS; a removal does not.
        lines = watcher.cmd("STORE 1 +FLAGS.SILENT (OwnWord)")
        assert any(x.startswith(b"* FLAGS (") and b"OwnWord" in x for x in lines)
        known = _flags_before_fetch(lines, known)
        lines = watcher.cmd("STORE 1 -FLAGS (NeverSeen)")
        assert not any(x.startswith(b"* FLAGS (") for x in lines)
        _flags_before_fetch(watcher.cmd("FETCH 1:* (UID FLAGS)"), known)
        # A fresh SELECT names them all at once.
        lines = watcher.cmd("SELECT INBOX")
        assert {"$Important", "$Label1", "Junk-ish", "MovedTag", "OwnWord"} <= (
            _flags_before_fetch(lines, set()))
    finally:
        watcher.close()
        actor.close()


@BOTH
def test_subscriptions_are_the_users_own_and_list_extended_reports_them(
    mail_server: RunningServer,
) -> None:
    """RFC 3501 6.3.3/6.3.9 and RFC 5258: CREATE subscribes nothing (not the new mailbox, not
    the parents it makes); LSUB shows a subscribed child's unsubscribed parent as \\Noselect;
    LIST (SUBSCRIBED RECURSIVEMATCH) gives CHILDINFO without claiming \\Subscribed; a lone
    RECURSIVEMATCH (or with REMOTE only) is BAD."""
    raw = Raw(mail_server)
    raw.login()
    try:
        assert raw.cmd("CREATE Family/Kids/School")[-1].split()[1] == b"OK"
        lsub = raw.cmd('LSUB "" "*"')
        assert not any(b"Family" in line for line in lsub)
        listed = raw.cmd('LIST "" "Family*" RETURN (SUBSCRIBED)')
        assert len(listed) == 4 and not any(b"\\Subscribed" in x for x in listed), listed
        # New accounts' folders start subscribed.
        assert {b'"INBOX"', b'"Sent"', b'"Drafts"', b'"Trash"', b'"Junk"', b'"Archive"'} <= {
            line.rsplit(b" ", 1)[1] for line in lsub[:-1]}

        raw.cmd("SUBSCRIBE Family/Kids/School")
        assert raw.cmd('LSUB "" "Family/%"')[:-1] == [b'* LSUB (\\Noselect) "/" "Family/Kids"']
        assert raw.cmd('LSUB "" "Family/*"')[:-1] == [b'* LSUB () "/" "Family/Kids/School"']
        lines = raw.cmd('LIST (SUBSCRIBED RECURSIVEMATCH) "" "Family"')
        assert lines[:-1] == [b'* LIST (\\HasChildren) "/" "Family" ("CHILDINFO" ("SUBSCRIBED"))']
        raw.cmd("SUBSCRIBE Family")
        lines = raw.cmd('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
        assert (b'* LIST (\\HasChildren \\Subscribed) "/" "Family" ("CHILDINFO" ("SUBSCRIBED"))'
                in lines)
        assert b'* LIST (\\HasNoChildren \\Subscribed) "/" "INBOX"' in lines
        lines = raw.cmd('LIST (SUBSCRIBED) "" "%"')
        assert not any(b"CHILDINFO" in x for x in lines)  # only asked for by RECURSIVEMATCH

        for options in ("(RECURSIVEMATCH)", "(REMOTE RECURSIVEMATCH)"):
            assert raw.cmd(f'LIST {options} "" "*"')[-1].split()[1] == b"BAD"
        assert raw.cmd('LIST (REMOTE SUBSCRIBED RECURSIVEMATCH) "" "%"')[-1].split()[1] == b"OK"
    finally:
        raw.close()


def _append(raw: Raw, data: bytes, binary: bool = False) -> int:
    """APPENDs ``data`` (a literal8 when ``binary``) to INBOX; returns its UID."""
    marker = b"~{%d+}" if binary else b"{%d+}"
    tag = raw.tag()
    raw.send(tag.encode() + b" APPEND INBOX " + marker % len(data) + b"\r\n" + data + b"\r\n")
    lines = raw.until(tag)
    assert lines[-1].split()[1] == b"OK", lines
    return int(lines[-1].split(b"APPENDUID ")[1].split()[1].rstrip(b"]"))


@BOTH
def test_binary_of_a_quoted_printable_part_is_its_decoded_content(
    mail_server: RunningServer,
) -> None:
    """RFC 3516 with RFC 2045 6.7: blanks ending an encoded line are padding, and "=" followed
    by blanks is a soft line break; BINARY.SIZE counts the decoded octets."""
    encoded = (b"Padding goes away   \r\n"
               b"a soft break =  \r\n"
               b"joins lines=3D, tab\t\r\n"
               b"last line\r\n")
    # The line break before the boundary belongs to the boundary (RFC 2046 5.1.1).
    decoded = b"Padding goes away\r\na soft break joins lines=, tab\r\nlast line"
    data = (b"From: a@example.org\r\nSubject: qp\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
            b"--b\r\nContent-Type: text/plain; charset=us-ascii\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + encoded +
            b"--b--\r\n")
    raw = Raw(mail_server)
    raw.login()
    try:
        uid = _append(raw, data)
        raw.cmd("SELECT INBOX")
        lines = raw.cmd(f"UID FETCH {uid} (BINARY.SIZE[1] BINARY.PEEK[1])")
        assert b"BINARY.SIZE[1] %d" % len(decoded) in lines[0]
        assert lines[0].endswith(b"BINARY[1] {%d}\r\n" % len(decoded) + decoded + b")")
    finally:
        raw.close()


@BOTH
def test_binary_appended_parts_never_reach_an_ordinary_literal(
    mail_server: RunningServer,
) -> None:
    """RFC 3516 4.3: a part APPENDed in a literal8 holding NUL is served as base64 to BODY[]
    (an ordinary literal carries no NUL, RFC 9051 4.3), and byte for byte by BINARY[]."""
    payload = bytes(range(256)) * 3
    data = (b"From: a@example.org\r\nSubject: binary\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n"
            b"--zz\r\nContent-Type: text/plain\r\n\r\nsee the attachment\r\n"
            b"--zz\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: binary\r\n\r\n" + payload + b"\r\n--zz--\r\n")
    single = b"Subject: whole\r\nContent-Type: application/octet-stream\r\n\r\n\x00\x01\x02end"
    raw = Raw(mail_server)
    raw.login()
    try:
        uid = _append(raw, data, binary=True)
        whole_uid = _append(raw, single, binary=True)
        raw.cmd("SELECT INBOX")
        body = b"".join(raw.cmd(f"UID FETCH {uid} (BODY.PEEK[] BODYSTRUCTURE)")[:-1])
        assert b"\x00" not in body and b'"BASE64"' in body.upper()
        assert b"see the attachment" in body  # the text part is untouched
        lines = raw.cmd(f"UID FETCH {uid} (BODY.PEEK[2] BINARY.PEEK[2] BINARY.SIZE[2])")
        fetched = b"".join(lines[:-1])
        assert b"BINARY.SIZE[2] %d" % len(payload) in fetched
        assert b"BINARY[2] ~{%d}\r\n" % len(payload) + payload in fetched
        text = fetched.split(b"BODY[2] {")[1]
        size, rest = text.split(b"}\r\n", 1)
        assert b"\x00" not in rest[: int(size)]
        lines = raw.cmd(f"UID FETCH {whole_uid} (BODY.PEEK[TEXT] BINARY.PEEK[1])")
        fetched = b"".join(lines[:-1])
        assert b"BINARY[1] ~{6}\r\n\x00\x01\x02end" in fetched
        assert b"BODY[TEXT] {" in fetched and b"AAECZW5k" in fetched
    finally:
        raw.close()


def _uidvalidity(raw: Raw, mailbox: str) -> int:
    line = raw.cmd(f"STATUS {mailbox} (UIDVALIDITY)")[0]
    return int(line.rsplit(b" ", 1)[1].rstrip(b")"))


@BOTH
def test_catenate_builds_a_message_from_text_and_urls(mail_server: RunningServer) -> None:
    """RFC 4469 (the section 3 example): a draft's header and first part, new text, and a
    whole other message, joined into one new message; with MULTIAPPEND, PARTIAL, and the
    BADURL / TOOBIG refusals."""
    boundary = b"--------------030308070208000400050907"
    draft = (b"From: alice@example.test\r\nSubject: Fwd: report\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: multipart/mixed; boundary=\"" + boundary[2:] + b"\"\r\n\r\n"
             + boundary + b"\r\nContent-Type: text/plain\r\n\r\nSee below.\r\n"
             + boundary + b"--\r\n")
    forwarded = b"From: carol@example.org\r\nSubject: report\r\n\r\nThe report.\r\n"
    raw = Raw(mail_server)
    raw.login()
    try:
        draft_uid = _append(raw, draft)
        fwd_uid = _append(raw, forwarded)
        v = _uidvalidity(raw, "INBOX")
        base = f"/INBOX;UIDVALIDITY={v}/;UID={draft_uid}"
        sep = b"\r\n" + boundary + b"\r\n"
        tag = raw.tag()
        raw.send(f'{tag} APPEND Drafts (\\Seen \\Draft $MDNSent) CATENATE '
                 f'(URL "{base}/;section=HEADER" TEXT {{{len(sep)}}}\r\n'.encode())
        assert raw.readline().startswith(b"+ ")  # a synchronising literal mid-CATENATE
        raw.send(sep + f' URL "{base}/;section=1.MIME" URL "{base}/;section=1" '
                 f'TEXT {{{len(sep)}+}}\r\n'.encode() + sep
                 + f' URL "/INBOX;UIDVALIDITY={v}/;UID={fwd_uid}" TEXT '.encode())
        end = b"\r\n" + boundary + b"--\r\n"
        raw.send(b"{%d+}\r\n" % len(end) + end + b")\r\n")
        lines = raw.until(tag)
        assert lines[-1].split()[1] == b"OK", lines
        raw.cmd("SELECT Drafts")
        body = b"".join(raw.cmd("FETCH 1 (FLAGS BODY.PEEK[])")[:-1])
        header = draft.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        expected = (header + sep + b"Content-Type: text/plain\r\n\r\n" + b"See below."
                    + sep + forwarded + end)
        assert b"BODY[] {%d}\r\n" % len(expected) + expected in body
        assert b"\\Seen" in body and b"$MDNSent" in body

        # MULTIAPPEND with a CATENATE beside a plain literal; an absolute URL and PARTIAL.
        tag = raw.tag()
        plain = b"Subject: plain\r\n\r\nplain\r\n"
        url = (f"imap://alice%40example.test@localhost/INBOX;UIDVALIDITY={v}/;UID={fwd_uid}"
               f"/;PARTIAL=0.35")
        raw.send(f'{tag} APPEND Drafts CATENATE (URL "{url}" TEXT {{8+}}\r\n'.encode()
                 + b"\r\n\r\nhi\r\n" + b") {%d+}\r\n" % len(plain) + plain + b"\r\n")
        lines = raw.until(tag)
        assert lines[-1].split()[1] == b"OK" and b"APPENDUID" in lines[-1], lines
        raw.cmd("SELECT Drafts")
        fetched = b"".join(raw.cmd("FETCH 2:3 (BODY.PEEK[])")[:-1])
        assert forwarded[:35] + b"\r\n\r\nhi\r\n" in fetched and plain in fetched

        # What names nothing of ours is BADURL; nothing is stored.
        for bad in (f"/INBOX;UIDVALIDITY={v + 1}/;UID={fwd_uid}",
                    f"/INBOX;UIDVALIDITY={v}/;UID=999",
                    f"/Nope;UIDVALIDITY={v}/;UID={fwd_uid}",
                    f"/INBOX/;UID={fwd_uid}/;SECTION=7",
                    f"imap://bob%40example.test@localhost/INBOX/;UID={fwd_uid}",
                    f"/INBOX/;UID={fwd_uid};URLAUTH=anonymous:internal:0123",
                    "http://example.org/x"):
            lines = raw.cmd(f'APPEND Drafts CATENATE (URL "{bad}")')
            assert lines[-1].split()[1:3] == [b"NO", b"[BADURL"], (bad, lines)
        assert raw.cmd("STATUS Drafts (MESSAGES)")[0].endswith(b"(MESSAGES 3)")
        assert b"CATENATE" in b"".join(raw.cmd("CAPABILITY"))
    finally:
        raw.close()


@BOTH
def test_catenate_past_the_size_limit_is_toobig(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(limits={"max_message_size": 4096})
    raw = Raw(server)
    raw.login()
    try:
        uid = _append(raw, b"Subject: part\r\n\r\n" + b"x" * 2000 + b"\r\n")
        text = b"y" * 2500
        lines = raw.cmd(b'APPEND INBOX CATENATE (URL "/INBOX/;UID=%d" TEXT {%d+}\r\n'
                        % (uid, len(text)) + text + b")")
        assert lines[-1].split()[1:3] == [b"NO", b"[TOOBIG]"], lines[-1]
        assert raw.cmd("STATUS INBOX (MESSAGES)")[0].endswith(b"(MESSAGES 1)")
        assert raw.cmd("NOOP")[-1].split()[1] == b"OK"
    finally:
        raw.close()


@BOTH
def test_sent_date_searches_use_the_day_in_the_senders_zone(mail_server: RunningServer) -> None:
    """RFC 3501 6.4.4: SENTBEFORE/SENTON/SENTSINCE compare the Date: header's day, ignoring
    time and zone: 01:30 +0200 on 25 March was 24 March in UTC but is sent on the 25th."""
    dates = {
        "east": "Sun, 25 Mar 2007 01:30:00 +0200",  # 24 Mar 23:30 UTC
        "west": "Sat, 24 Mar 2007 23:30:00 -0500",  # 25 Mar 04:30 UTC
        "noon": "Sun, 25 Mar 2007 12:00:00 +0000",
        "far": "Mon, 01 Jan 2024 10:00:00 +0000",
    }
    raw = Raw(mail_server)
    raw.login()
    try:
        for name, when in dates.items():
            _append(raw, f"Date: {when}\r\nSubject: {name}\r\n\r\n{name}\r\n".encode())
        deliver(mail_server, b"Date: Sun, 25 Mar 2007 00:10:00 +0100\r\nSubject: raw\r\n\r\nx\r\n")
        raw.cmd("SELECT INBOX")

        def search(criteria: str) -> list[int]:
            line = raw.cmd(f"SEARCH {criteria}")[0]
            return [int(n) for n in line.split()[2:]]

        assert search("SENTBEFORE 25-Mar-2007") == [2]
        assert search("SENTON 25-Mar-2007") == [1, 3, 5]
        assert search("SENTON 24-Mar-2007") == [2]
        assert search("SENTSINCE 25-Mar-2007") == [1, 3, 4, 5]
        assert search("SENTSINCE 26-Mar-2007") == [4]
        assert search("NOT SENTON 25-Mar-2007") == [2, 4]
    finally:
        raw.close()


@BOTH
def test_esearch_modseq_is_that_of_the_messages_returned(mail_server: RunningServer) -> None:
    """RFC 7162 3.1.5 with RFC 4731 3.2: ESEARCH RETURN (MIN) / (MAX) carries the MODSEQ of the
    message it returns; with ALL or COUNT the highest of all matches."""
    for i in range(3):
        deliver(mail_server, message(f"m{i}"))
    raw = Raw(mail_server)
    raw.login()
    try:
        raw.cmd("SELECT INBOX (CONDSTORE)")
        raw.cmd("STORE 3 +FLAGS (\\Flagged)")
        raw.cmd("STORE 1 +FLAGS (\\Flagged)")
        modseq = {}
        for line in raw.cmd("FETCH 1:3 (MODSEQ)")[:-1]:
            modseq[int(line.split()[1])] = int(line.split(b"MODSEQ (")[1].rstrip(b"))"))
        assert modseq[1] > modseq[3] > modseq[2]

        def esearch(returns: str) -> bytes:
            return raw.cmd(f"SEARCH RETURN ({returns}) MODSEQ 1")[0]

        assert esearch("MIN").endswith(b"MIN 1 MODSEQ %d" % modseq[1])
        assert esearch("MAX").endswith(b"MAX 3 MODSEQ %d" % modseq[3])
        assert esearch("MIN MAX").endswith(b"MODSEQ %d" % max(modseq[1], modseq[3]))
        lines = raw.cmd("SEARCH RETURN (MAX) FLAGGED MODSEQ 1")[0]
        assert lines.endswith(b"MAX 3 MODSEQ %d" % modseq[3])
        assert esearch("COUNT").endswith(b"COUNT 3 MODSEQ %d" % max(modseq.values()))
        assert esearch("ALL").endswith(b"MODSEQ %d" % max(modseq.values()))
    finally:
        raw.close()


class Deflated:
    """The client side of COMPRESS=DEFLATE (RFC 4978) over a Raw connection."""

    def __init__(self, raw: Raw) -> None:
        self.raw = raw
        self.out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inflater = zlib.decompressobj(-15)
        self.text = b""

    def send(self, data: bytes) -> None:
        self.raw.sock.sendall(self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH))

    def _fill(self) -> None:
        chunk = self.raw.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed; partial: {self.text!r}")
        self.text += self.inflater.decompress(chunk)

    def readline(self) -> bytes:
        """One response line, with a literal it announces read inline (as Raw does)."""
        while b"\r\n" not in self.text:
            self._fill()
        line, _, self.text = self.text.partition(b"\r\n")
        if line.endswith(b"}") and b"{" in line:
            size = int(line[line.rindex(b"{") + 1 : -1])
            while len(self.text) < size:
                self._fill()
            literal, self.text = self.text[:size], self.text[size:]
            return line + b"\r\n" + literal + self.readline()
        return line

    def cmd(self, tag: str, command: bytes) -> list[bytes]:
        self.send(tag.encode() + b" " + command + b"\r\n")
        lines = [self.readline()]
        while not lines[-1].startswith(tag.encode() + b" "):
            lines.append(self.readline())
        return lines


@BOTH
def test_compress_deflate_carries_the_whole_session(mail_server: RunningServer) -> None:
    """RFC 4978: after the tagged OK both directions are raw DEFLATE, every response burst
    flushed; literals, FETCH and IDLE work through it; a second COMPRESS is NO
    [COMPRESSIONACTIVE]; before login the command is not valid."""
    deliver(mail_server, message("squeezed", body="compressible " * 200 + "\r\n"))
    early = Raw(mail_server)
    assert early.cmd("COMPRESS DEFLATE")[-1].split()[1] == b"BAD"
    early.close()
    raw = Raw(mail_server)
    raw.login()
    assert b"COMPRESS=DEFLATE" in b"".join(raw.cmd("CAPABILITY"))
    assert raw.cmd("COMPRESS DEFLATE")[-1].split()[1] == b"OK"
    z = Deflated(raw)
    try:
        lines = z.cmd("c1", b"SELECT INBOX")
        assert b"* 1 EXISTS" in lines and lines[-1].startswith(b"c1 OK")
        lines = z.cmd("c2", b"FETCH 1 (BODY.PEEK[TEXT])")
        assert b"compressible compressible" in lines[0]
        z.send(b"c3 APPEND INBOX {22}\r\n")
        assert z.readline().startswith(b"+ ")
        z.send(b"Subject: via deflate\r\n\r\n")
        lines = [z.readline()]
        while not lines[-1].startswith(b"c3 "):
            lines.append(z.readline())
        assert lines[-1].startswith(b"c3 OK")
        assert z.cmd("c4", b"COMPRESS DEFLATE")[-1].startswith(b"c4 NO [COMPRESSIONACTIVE]")
        z.send(b"c5 IDLE\r\n")
        assert z.readline().startswith(b"+ ")
        deliver(mail_server, message("during idle"))
        assert b"EXISTS" in z.readline()  # flushed to us while the session waits
        z.send(b"DONE\r\n")
        while not z.readline().startswith(b"c5 OK"):
            pass
        assert z.cmd("c6", b"LOGOUT")[0].startswith(b"* BYE")
    finally:
        raw.close()


def test_compress_garbage_gets_bye_and_others_are_served(mail_server: RunningServer) -> None:
    """A client whose compressed stream does not inflate gets BYE (compressed), nothing more,
    and the server goes on serving others promptly."""
    raw = Raw(mail_server)
    raw.login()
    assert raw.cmd("COMPRESS DEFLATE")[-1].split()[1] == b"OK"
    z = Deflated(raw)
    raw.sock.sendall(b"\xff\xfe garbage that is no deflate stream \x00" * 50)
    assert z.readline().startswith(b"* BYE")
    assert raw.closed()
    other = Raw(mail_server)
    try:
        started = time.monotonic()
        other.login()
        assert other.cmd("NOOP")[-1].split()[1] == b"OK"
        assert time.monotonic() - started < 2
    finally:
        other.close()


@BOTH
def test_unauthenticate_returns_to_a_fresh_login_state(
        make_server: Callable[..., RunningServer]) -> None:
    """RFC 8437: UNAUTHENTICATE closes the mailbox without expunging, forgets the user and
    what was ENABLEd, keeps TLS; another user may then log in on the same connection, and the
    first user's session slot is free again."""
    server = make_server(limits={"imap_sessions_per_user_ip": 1})
    deliver(server, message("keep me"))
    raw = Raw(server)
    try:
        raw.login()
        assert b"UNAUTHENTICATE" in b"".join(raw.cmd("CAPABILITY"))
        raw.cmd("ENABLE CONDSTORE")
        raw.cmd("SELECT INBOX")
        raw.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
        assert raw.cmd("UNAUTHENTICATE")[-1].split()[1] == b"OK"
        assert raw.cmd("SELECT INBOX")[-1].split()[1] == b"BAD"
        assert b"AUTH=PLAIN" in b"".join(raw.cmd("CAPABILITY"))
        other = Raw(server)  # alice's one slot is free again
        other.login()
        other.close()
        raw.login(BOB)
        assert raw.cmd("UNAUTHENTICATE")[-1].split()[1] == b"OK"
        raw.login()
        lines = raw.cmd("SELECT INBOX")
        assert b"* 1 EXISTS" in lines  # not expunged
        assert b"MODSEQ" not in raw.cmd("FETCH 1 (FLAGS)")[0]  # CONDSTORE forgotten
    finally:
        raw.close()


@BOTH
def test_preview_gives_the_first_words(mail_server: RunningServer) -> None:
    """RFC 8970: FETCH PREVIEW (and PREVIEW (LAZY)) gives a short plain-text preview: quoted
    lines and the signature left out, white space collapsed, at most 256 characters."""
    body = ("Hi Alice,\r\n\r\n> what you wrote before\r\nThe   meeting moves to   Friday.\r\n"
            + "More words here. " * 40 + "\r\n-- \r\nBob's signature\r\n")
    deliver(mail_server, message("plain", body=body))
    html = (b"Subject: html\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            b"<html><style>p {}</style><p>Caf\xc3\xa9 <b>tonight</b>?</p></html>\r\n")
    deliver(mail_server, html)
    deliver(mail_server, b"Subject: empty\r\nContent-Type: image/png\r\n\r\nxx\r\n")
    raw = Raw(mail_server)
    raw.login()
    try:
        assert b"PREVIEW" in b"".join(raw.cmd("CAPABILITY"))
        raw.cmd("SELECT INBOX")
        lines = raw.cmd("FETCH 1:3 (PREVIEW (LAZY))")
        first = lines[0].split(b"PREVIEW ", 1)[1]
        text = first.split(b"\r\n", 1)[1] if first.startswith(b"{") else first[1:]
        assert text.startswith(b"Hi Alice, The meeting moves to Friday. More words")
        assert b"what you wrote" not in text and b"signature" not in text
        assert len(text.rstrip(b")").strip(b'"')) <= 256
        assert lines[1].endswith("{15}\r\nCafé tonight ?)".encode())  # 8-bit: a literal
        assert lines[2].endswith(b'PREVIEW "")')
        assert b"\\Seen" not in b"".join(raw.cmd("FETCH 1 (FLAGS)"))  # a preview is a peek
    finally:
        raw.close()


@BOTH
def test_status_size_is_the_sum_of_the_message_sizes(mail_server: RunningServer) -> None:
    """STATUS=SIZE (RFC 8438): SIZE is the mailbox's size in octets, what summing each
    message's RFC822.SIZE would give; it follows APPEND and EXPUNGE, and LIST-STATUS gives it
    too."""
    raw = Raw(mail_server)
    raw.login()
    [caps] = [ln for ln in raw.cmd("CAPABILITY") if ln.startswith(b"* CAPABILITY")]
    assert b" STATUS=SIZE" in caps
    assert b'* STATUS "INBOX" (SIZE 0 MESSAGES 0)' in raw.cmd("STATUS INBOX (SIZE MESSAGES)")
    for i in range(3):
        deliver(mail_server, message(f"Sized {i}", body="x" * (100 * i) + "\r\n"))
    raw.cmd("SELECT INBOX")
    sizes = [int(m.group(1)) for ln in raw.cmd("FETCH 1:* (RFC822.SIZE)")
             if (m := re.search(rb"RFC822\.SIZE (\d+)", ln))]
    assert len(sizes) == 3
    raw.cmd("UNSELECT")
    assert f'* STATUS "INBOX" (SIZE {sum(sizes)})'.encode() in raw.cmd("STATUS INBOX (SIZE)")
    raw.cmd("SELECT INBOX")
    raw.cmd("STORE 2 +FLAGS.SILENT (\\Deleted)")
    raw.cmd("EXPUNGE")
    raw.cmd("UNSELECT")
    left = sizes[0] + sizes[2]
    assert f'* STATUS "INBOX" (SIZE {left})'.encode() in raw.cmd("STATUS INBOX (SIZE)")
    lines = raw.cmd('LIST "" INBOX RETURN (STATUS (SIZE))')
    assert f'* STATUS "INBOX" (SIZE {left})'.encode() in lines, lines
    assert status_of(raw.cmd("STATUS INBOX (SIZE BOGUS)")) == b"BAD"


def _status(raw: Raw, items: str) -> dict[str, int]:
    lines = raw.cmd(f"STATUS INBOX ({items})")
    assert status_of(lines) == b"OK", lines
    line = next(x for x in lines if x.startswith(b"* STATUS "))
    words = line[line.index(b"(") + 1:line.rindex(b")")].split()
    return {words[i].decode(): int(words[i + 1]) for i in range(0, len(words), 2)}


@BOTH
def test_status_of_a_selected_mailbox_is_current_right_after_another_sessions_change(
        mail_server: RunningServer) -> None:
    """RFC 9051 6.3.11: STATUS gives the mailbox as it is now. A session with INBOX selected
    (its counts may come from the shared state in memory) asks STATUS right after another
    session's APPEND, STORE and EXPUNGE, with no NOOP between: each change is in the answer,
    and the answer equals what a session without INBOX selected (the store) is told."""
    items = "MESSAGES UNSEEN UIDNEXT UIDVALIDITY RECENT DELETED HIGHESTMODSEQ"
    deliver(mail_server, message("one"))
    deliver(mail_server, message("two"))
    a, b, c = Raw(mail_server), Raw(mail_server), Raw(mail_server)
    try:
        for conn in (a, b, c):
            conn.login()
        assert status_of(a.cmd("SELECT INBOX")) == b"OK [READ-WRITE]"
        assert status_of(b.cmd("SELECT INBOX")) == b"OK [READ-WRITE]"
        first = _status(a, items)
        assert (first["MESSAGES"], first["UNSEEN"], first["DELETED"]) == (2, 2, 0)
        for step in range(6):
            uid = _append(b, message(f"appended {step}"))
            after_append = _status(a, items)
            assert after_append["MESSAGES"] == first["MESSAGES"] + 1
            assert after_append["UIDNEXT"] == uid + 1
            assert after_append == _status(c, items)
            assert status_of(b.cmd(f"UID STORE {uid} +FLAGS (\\Seen \\Deleted)")) == b"OK"
            after_store = _status(a, items)
            assert after_store["UNSEEN"] == after_append["UNSEEN"] - 1
            assert after_store["DELETED"] == 1
            assert after_store["HIGHESTMODSEQ"] > after_append["HIGHESTMODSEQ"]
            assert after_store == _status(c, items)
            assert status_of(b.cmd(f"UID EXPUNGE {uid}")) == b"OK"
            after_expunge = _status(a, items)
            assert after_expunge["MESSAGES"] == after_append["MESSAGES"] - 1
            assert after_expunge["DELETED"] == 0
            assert after_expunge == _status(c, items)
        sized = _status(a, "MESSAGES SIZE")
        assert sized["MESSAGES"] == 2 and sized["SIZE"] > 0
    finally:
        for conn in (a, b, c):
            conn.close()


@BOTH
def test_a_store_that_changes_nothing_answers_the_current_flags_and_keeps_the_modseq(
        mail_server: RunningServer) -> None:
    """RFC 9051 6.4.6 and RFC 7162 3.1.3: STORE +FLAGS of a flag the message has (set by
    another session just before) answers the message's flags and leaves its MODSEQ; the same
    STORE right after the other session removed the flag sets it again."""
    deliver(mail_server, message("one"))
    a, b = Raw(mail_server), Raw(mail_server)
    try:
        for conn in (a, b):
            conn.login()
            assert status_of(conn.cmd("SELECT INBOX (CONDSTORE)")) == b"OK [READ-WRITE]"
        for _ in range(3):
            assert status_of(b.cmd("STORE 1 +FLAGS.SILENT (\\Seen)")) == b"OK"
            modseq = _status(b, "HIGHESTMODSEQ")["HIGHESTMODSEQ"]
            lines = a.cmd("STORE 1 +FLAGS (\\Seen)")
            told = [x for x in lines if x.startswith(b"* 1 FETCH")]
            assert b"\\Seen" in told[-1] and told[-1].endswith(b"MODSEQ (%d))" % modseq), lines
            assert _status(a, "HIGHESTMODSEQ")["HIGHESTMODSEQ"] == modseq
            assert status_of(b.cmd("STORE 1 -FLAGS.SILENT (\\Seen)")) == b"OK"
            lines = a.cmd("STORE 1 +FLAGS (\\Seen)")
            told = [x for x in lines if x.startswith(b"* 1 FETCH")]
            new = b"MODSEQ (%d))" % (modseq + 2)
            assert b"\\Seen" in told[-1] and told[-1].endswith(new), lines
            assert status_of(b.cmd("STORE 1 -FLAGS.SILENT (\\Seen)")) == b"OK"
    finally:
        for conn in (a, b):
            conn.close()
