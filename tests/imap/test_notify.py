"""IMAP NOTIFY (RFC 5465): a client that asked is told of changes while it sends nothing.

Session A sets NOTIFY and then only reads (socket timeout of a few seconds); session B (and
the store API, as SMTP delivery does) makes the changes. Both stores: on PostgreSQL the
changes travel through the LISTEN/NOTIFY feed's account channel too."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import RunningServer
from tests.imap.helpers import Raw, deliver, message, status_of

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
WAIT = 10.0  # seconds a notification may take on a loaded machine (not a speed claim)
FULL = (
    "NOTIFY SET (SELECTED (MessageNew (UID FLAGS) MessageExpunge FlagChange)) "
    "(PERSONAL (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange))"
)
SUPPORTED = b"(MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)"


def _opened(server: RunningServer, *commands: str) -> Raw:
    raw = Raw(server)
    raw.login()
    for command in commands:
        assert status_of(raw.cmd(command)).startswith(b"OK"), command
    return raw


def _uv(line: bytes) -> bytes:
    """A STATUS line with its UIDVALIDITY value (a timestamp-like number) written as n."""
    return re.sub(rb"UIDVALIDITY \d+", b"UIDVALIDITY n", line)


def _told(raw: Raw, count: int = 1) -> list[bytes]:
    """The next ``count`` lines the server sends on its own (no command is sent), with
    UIDVALIDITY values written as n."""
    raw.sock.settimeout(WAIT)
    try:
        return [_uv(raw.readline()) for _ in range(count)]
    finally:
        raw.sock.settimeout(30)


def _told_until(raw: Raw, last: bytes) -> list[bytes]:
    raw.sock.settimeout(WAIT)
    lines: list[bytes] = []
    try:
        while not lines or lines[-1] != last:
            lines.append(raw.readline())
    finally:
        raw.sock.settimeout(30)
    return lines


def _silent(raw: Raw, seconds: float = 1.0) -> bool:
    """True when the server sends nothing for ``seconds``."""
    raw.sock.settimeout(seconds)
    try:
        return not raw._fill()
    except TimeoutError:
        return True
    finally:
        raw.sock.settimeout(30)


@BOTH
def test_notify_tells_each_change_without_a_command(mail_server: RunningServer) -> None:
    a = _opened(mail_server, "CREATE Lists", "SELECT INBOX")
    assert b"NOTIFY" in a.cmd("CAPABILITY")[0].split()
    assert status_of(a.cmd(FULL)) == b"OK"
    b = _opened(mail_server)

    # New message in the selected mailbox: EXISTS (RECENT: rev1) and its UID and FLAGS.
    assert status_of(b.cmd(b"APPEND INBOX {16+}\r\nSubject: one\r\n\r\n")).startswith(b"OK")
    assert _told(a, 3) == [b"* 1 EXISTS", b"* 1 RECENT", b"* 1 FETCH (UID 1 FLAGS (\\Recent))"]

    # A new message elsewhere: STATUS (RFC 5465 5.2).
    assert status_of(b.cmd(b"APPEND Lists {16+}\r\nSubject: two\r\n\r\n")).startswith(b"OK")
    assert _told(a) == [b'* STATUS "Lists" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY n UNSEEN 1)']

    # Flags changed by another session in the selected mailbox.
    assert status_of(b.cmd("SELECT INBOX")).startswith(b"OK")
    b.cmd("STORE 1 +FLAGS.SILENT (\\Flagged)")
    assert _told(a) == [b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))"]

    # An expunge is told at once with SELECTED (RFC 5465 5.3).
    b.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.cmd("EXPUNGE")
    lines = _told_until(a, b"* 0 RECENT")  # rev1: the \\Recent count moves too
    assert lines[-2:] == [b"* 1 EXPUNGE", b"* 0 RECENT"]

    # Flag change elsewhere: STATUS with the new UNSEEN.
    b.cmd("UNSELECT")
    assert status_of(b.cmd("SELECT Lists")).startswith(b"OK")
    b.cmd("STORE 1 +FLAGS.SILENT (\\Seen)")
    assert _told(a) == [b'* STATUS "Lists" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY n UNSEEN 0)']
    b.cmd("UNSELECT")

    # Mailbox names (RFC 5465 5.4) and subscriptions (5.5) as LIST responses.
    b.cmd("CREATE Foo")
    assert _told(a) == [b'* LIST (\\HasNoChildren) "/" "Foo"']
    b.cmd("RENAME Foo Bar")
    assert _told(a) == [b'* LIST (\\HasNoChildren) "/" "Bar" ("OLDNAME" ("Foo"))']
    b.cmd("SUBSCRIBE Bar")
    assert _told(a) == [b'* LIST (\\HasNoChildren \\Subscribed) "/" "Bar"']
    b.cmd("UNSUBSCRIBE Bar")
    assert _told(a) == [b'* LIST (\\HasNoChildren) "/" "Bar"']
    b.cmd("DELETE Bar")
    assert _told(a) == [b'* LIST (\\NonExistent) "/" "Bar"']

    # A delivery through the store (as SMTP does) reaches A too, selected or not.
    deliver(mail_server, message("smtp one"), mailbox="Lists")
    assert _told(a) == [b'* STATUS "Lists" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY n UNSEEN 1)']
    uid = deliver(mail_server, message("smtp two"))
    assert _told(a, 3) == [b"* 1 EXISTS", b"* 1 RECENT",
                           f"* 1 FETCH (UID {uid} FLAGS (\\Recent))".encode()]

    # A's own commands still work, literals included, and NOTIFY NONE stops it all.
    a.send(b"ap APPEND Lists {17}\r\n")
    assert a.readline().startswith(b"+ ")
    a.send(b"Subject: mine\r\n\r\n\r\n")
    assert status_of(a.until("ap")).startswith(b"OK")
    assert status_of(a.cmd("NOTIFY NONE")) == b"OK"
    deliver(mail_server, message("unheard"), mailbox="Lists")
    deliver(mail_server, message("unheard too"))
    b.cmd("CREATE Quiet")
    assert _silent(a)
    lines = a.cmd("NOOP")  # the selected mailbox's news come with the next command again
    assert lines[0] == b"* 2 EXISTS"
    a.close()
    b.close()



@BOTH
def test_notify_list_attributes_and_the_implicit_noop(mail_server: RunningServer) -> None:
    """RFC 5465 3.1: NOTIFY SET returns the selected mailbox's pending changes at once;
    5.4/5.5: LIST responses carry the attributes LIST would give (children, special use,
    \\Subscribed exactly when subscribed, \\NonExistent for a name that is no mailbox)."""
    a = _opened(mail_server, "CREATE Box", "SELECT INBOX")
    deliver(mail_server, message("pending"))
    lines = a.cmd("NOTIFY SET (SELECTED (MessageNew MessageExpunge)) "
                  "(PERSONAL (MessageNew MessageExpunge MailboxName SubscriptionChange))")
    assert b"* 1 EXISTS" in lines and status_of(lines) == b"OK", lines
    b = _opened(mail_server)
    b.cmd("CREATE Box/Kid")
    assert _told(a) == [b'* LIST (\\HasNoChildren) "/" "Box/Kid"']
    b.cmd("SUBSCRIBE Box")
    assert _told(a) == [b'* LIST (\\HasChildren \\Subscribed) "/" "Box"']
    b.cmd("UNSUBSCRIBE Trash")  # new accounts' default folders start subscribed
    assert _told(a) == [b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"']
    b.cmd("DELETE Box/Kid")
    assert _told(a) == [b'* LIST (\\NonExistent) "/" "Box/Kid"']
    a.close()
    b.close()

@BOTH
def test_notify_fetch_attributes_and_a_split_command(mail_server: RunningServer) -> None:
    a = _opened(mail_server, "ENABLE IMAP4rev2", "SELECT INBOX")
    cmd = ("NOTIFY SET (SELECTED (MessageNew (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)] "
           "RFC822.SIZE) MessageExpunge))")
    assert status_of(a.cmd(cmd)) == b"OK"
    # Half a command is pending when the change comes: nothing of it is lost.
    a.send(b"n1 NO")
    raw = message("pushed")
    deliver(mail_server, raw)
    told = _told(a, 2)
    assert told[0] == b"* 1 EXISTS"
    assert told[1].startswith(b"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (SUBJECT)] {")
    assert b"Subject: pushed" in told[1] and f"RFC822.SIZE {len(raw)})".encode() in told[1]
    a.send(b"OP\r\n")
    assert status_of(a.until("n1")) == b"OK"
    # Fetching for a notification did not set \Seen.
    assert a.cmd("FETCH 1 (FLAGS)")[0] == b"* 1 FETCH (FLAGS ())"


@BOTH
def test_selected_delayed_keeps_expunges_for_a_command(mail_server: RunningServer) -> None:
    deliver(mail_server, message("a"))
    deliver(mail_server, message("b"))
    a = _opened(mail_server, "SELECT INBOX")
    cmd = "NOTIFY SET (SELECTED-DELAYED (MessageNew MessageExpunge FlagChange))"
    assert status_of(a.cmd(cmd)) == b"OK"
    b = _opened(mail_server, "SELECT INBOX")
    b.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert _told(a) == [b"* 1 FETCH (UID 1 FLAGS (\\Deleted \\Recent))"]
    b.cmd("EXPUNGE")
    deliver(mail_server, message("c"))
    # The new message is told; message 1 keeps its number until a command allows EXPUNGE.
    assert _told(a, 2) == [b"* 3 EXISTS", b"* 3 RECENT"]
    lines = a.cmd("NOOP")
    assert b"* 1 EXPUNGE" in lines


@BOTH
def test_notify_set_status_and_other_filters(mail_server: RunningServer) -> None:
    a = _opened(mail_server, "CREATE Lists", "CREATE Lists/Sub", "CREATE Other")
    deliver(mail_server, message("x"), mailbox="Lists/Sub")
    lines = a.cmd("NOTIFY SET STATUS (SUBTREE Lists (MessageNew MessageExpunge)) "
                  "(INBOXES (MessageNew MessageExpunge))")
    assert status_of(lines) == b"OK"
    # RFC 5465 3.1: STATUS gives MESSAGES, UIDNEXT and UIDVALIDITY before the tagged OK.
    told = re.search(rb"UIDVALIDITY \d+", lines[1])
    assert told is not None and told.group() in a.cmd("STATUS Lists (UIDVALIDITY)")[0]
    assert [_uv(ln) for ln in lines[:-1]] == [
        b'* STATUS "INBOX" (MESSAGES 0 UIDNEXT 1 UIDVALIDITY n UNSEEN 0)',
        b'* STATUS "Lists" (MESSAGES 0 UIDNEXT 1 UIDVALIDITY n UNSEEN 0)',
        b'* STATUS "Lists/Sub" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY n UNSEEN 1)',
    ]
    deliver(mail_server, message("y"), mailbox="Other")  # not watched
    deliver(mail_server, message("z"), mailbox="Lists/Sub")
    assert _told(a) == [b'* STATUS "Lists/Sub" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY n UNSEEN 2)']
    deliver(mail_server, message("w"))
    assert _told(a) == [b'* STATUS "INBOX" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY n UNSEEN 1)']
    lines = a.cmd("NOTIFY SET (MAILBOXES (Other) (MessageNew MessageExpunge))")
    assert status_of(lines) == b"OK"
    deliver(mail_server, message("v"))  # INBOX no longer watched
    deliver(mail_server, message("u"), mailbox="Other")
    assert _told(a) == [b'* STATUS "Other" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY n UNSEEN 2)']


@BOTH
def test_notify_refuses_what_rfc_5465_forbids(mail_server: RunningServer) -> None:
    a = _opened(mail_server, "SELECT INBOX")
    bad = [
        "NOTIFY SET (SELECTED (MessageNew))",  # MessageNew without MessageExpunge (5)
        "NOTIFY SET (PERSONAL (MessageExpunge))",
        "NOTIFY SET (PERSONAL (FlagChange))",  # FlagChange needs both
        "NOTIFY SET (PERSONAL (MessageNew (UID) MessageExpunge))",  # fetch-att: SELECTED
        "NOTIFY SET (SELECTED (MailboxName))",  # only message events for SELECTED
        "NOTIFY SET (SELECTED (MessageNew (BODY[]) MessageExpunge))",  # would set \Seen
        "NOTIFY SET (SELECTED NONE) (SELECTED-DELAYED NONE)",
        "NOTIFY SET (BOGUS (MessageNew MessageExpunge))",
        "NOTIFY SET",
        "NOTIFY SOMETIMES",
        "NOTIFY SET (PERSONAL (MessageNew MessageExpunge)",
    ]
    for command in bad:
        assert status_of(a.cmd(command)) == b"BAD", command
    for command in [
        "NOTIFY SET (PERSONAL (MessageNew MessageExpunge AnnotationChange))",
        "NOTIFY SET (PERSONAL (MailboxMetadataChange))",
        "NOTIFY SET (PERSONAL (ServerMetadataChange))",
        "NOTIFY SET (PERSONAL (SomethingElse))",
    ]:
        assert status_of(a.cmd(command)) == b"NO [BADEVENT " + SUPPORTED + b"]", command
    assert status_of(a.cmd("NOTIFY SET (PERSONAL NONE) (SELECTED NONE)")) == b"OK"
    assert status_of(a.cmd("NOTIFY NONE")) == b"OK"
    # Before login it is not allowed at all.
    c = Raw(mail_server)
    assert status_of(c.cmd("NOTIFY NONE")) == b"BAD"
    # Too many names in one command: refused, and another client is still served at once.
    names = " ".join(f"m{i}" for i in range(1200))
    assert status_of(a.cmd(f"NOTIFY SET (MAILBOXES ({names}) (MessageNew MessageExpunge))"
                           )).startswith(b"BAD")
    other = Raw(mail_server)
    other.sock.settimeout(5)
    other.login()
    assert status_of(other.cmd("NOOP")) == b"OK"


def test_many_notify_sessions_and_an_ordinary_client(
    make_server: Callable[..., RunningServer],
) -> None:
    mail_server = make_server(
        limits={"imap_sessions_per_user_ip": 60, "max_connections_per_ip": 80}
    )
    watchers = []
    for _ in range(50):
        raw = _opened(mail_server, "SELECT INBOX")
        assert status_of(raw.cmd(FULL)) == b"OK"
        watchers.append(raw)
    # While the 50 wait for news, an ordinary client is served promptly.
    other = Raw(mail_server)
    other.sock.settimeout(5)
    other.login()
    started = time.monotonic()
    assert status_of(other.cmd("NOOP")) == b"OK"
    print(f"NOOP with 50 NOTIFY sessions open: {time.monotonic() - started:.3f} s")
    # One delivery reaches all 50.
    deliver(mail_server, message("for everyone"))
    for raw in watchers:
        assert _told(raw, 3)[0] == b"* 1 EXISTS"
    assert status_of(other.cmd("NOOP")) == b"OK"
    for raw in watchers:
        assert status_of(raw.cmd("LOGOUT")) == b"OK"


@BOTH
def test_notify_during_idle(mail_server: RunningServer) -> None:
    a = _opened(mail_server, "CREATE Lists", "SELECT INBOX")
    assert status_of(a.cmd("NOTIFY SET (PERSONAL (MessageNew MessageExpunge))")) == b"OK"
    a.send(b"i1 IDLE\r\n")
    assert a.readline() == b"+ idling"
    deliver(mail_server, message("elsewhere"), mailbox="Lists")
    assert _told(a) == [b'* STATUS "Lists" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY n UNSEEN 1)']
    deliver(mail_server, message("here"))  # the selected mailbox still wakes IDLE
    assert _told(a, 2) == [b"* 1 EXISTS", b"* 1 RECENT"]
    a.send(b"DONE\r\n")
    assert status_of(a.until("i1")) == b"OK"


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_notify_hears_another_node(
    make_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """Two nodes sharing PostgreSQL: changes made through one reach a NOTIFY session on the
    other over the LISTEN/NOTIFY feed, the account's mailbox-list channel included."""
    shared = {"blob_dir": str(tmp_path / "blobs")}
    first = make_server(store=shared)
    second = make_server(data_dir=tmp_path / "second", store=shared, tls={
        "cert": str(first.cert_file), "key": str(first.cfg.path(first.cfg.tls.key))})
    a = _opened(first, "CREATE Lists", "SELECT INBOX")
    assert status_of(a.cmd(FULL)) == b"OK"
    b = _opened(second)
    b.cmd("CREATE Elsewhere")
    assert _told(a) == [b'* LIST (\\HasNoChildren) "/" "Elsewhere"']
    assert status_of(b.cmd(b"APPEND Lists {16+}\r\nSubject: far\r\n\r\n")).startswith(b"OK")
    assert _told(a) == [b'* STATUS "Lists" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY n UNSEEN 1)']
    assert status_of(b.cmd(b"APPEND INBOX {16+}\r\nSubject: far\r\n\r\n")).startswith(b"OK")
    assert _told(a, 3) == [b"* 1 EXISTS", b"* 1 RECENT", b"* 1 FETCH (UID 1 FLAGS (\\Recent))"]


def test_notifications_left_unread_overflow(
    mail_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that reads none of its news: after NOTIFY_WRITE_SECONDS the server stops
    (RFC 5465 5.8: NOTIFICATIONOVERFLOW, NOTIFY off) instead of piling them up, and other
    clients are served meanwhile."""
    from mailstead.net import imap_server

    monkeypatch.setattr(imap_server, "NOTIFY_WRITE_SECONDS", 1.0)
    a = _opened(mail_server, "SELECT INBOX")
    cmd = "NOTIFY SET (SELECTED (MessageNew (BODY.PEEK[]) MessageExpunge))"
    assert status_of(a.cmd(cmd)) == b"OK"
    body = ("x" * 998 + "\r\n") * 1000  # 1 MB a message
    for i in range(16):
        deliver(mail_server, message(f"big {i}", body=body))
    other = _opened(mail_server)
    other.sock.settimeout(5)
    assert status_of(other.cmd("NOOP")) == b"OK"
    time.sleep(1.5)
    seen = _told_until(a, b"* OK [NOTIFICATIONOVERFLOW] Notifications not read; NOTIFY is off")
    assert any(line.startswith(b"* 1 FETCH") for line in seen)
    assert status_of(a.cmd("NOOP")) == b"OK"  # the session goes on, without NOTIFY
    deliver(mail_server, message("after"))
    assert _silent(a)


@BOTH
def test_unauthenticate_ends_notify(mail_server: RunningServer) -> None:
    a = _opened(mail_server, "CREATE Lists")
    assert status_of(a.cmd("NOTIFY SET (PERSONAL (MessageNew MessageExpunge))")) == b"OK"
    assert status_of(a.cmd("UNAUTHENTICATE")) == b"OK"
    deliver(mail_server, message("unheard"), mailbox="Lists")
    assert _silent(a)
    assert status_of(a.cmd("NOOP")) == b"OK"


@BOTH
def test_imaplib_client_reads_a_notification(mail_server: RunningServer) -> None:
    from tests.imap.helpers import connect

    client = connect(mail_server)
    ok = client.create("Lists")[0]
    assert ok == "OK"
    typ, _ = client.xatom("NOTIFY", "SET (INBOXES (MessageNew MessageExpunge)) "
                                    "(SUBSCRIBED (MessageNew MessageExpunge))")
    assert typ == "OK"
    deliver(mail_server, message("to imaplib"))
    client.sock.settimeout(WAIT)
    assert _uv(client.readline()) == (
        b'* STATUS "INBOX" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY n UNSEEN 1)\r\n')
    client.sock.settimeout(30)
    deliver(mail_server, message("not subscribed"), mailbox="Lists")  # nobody told ...
    assert client.subscribe("Lists")[0] == "OK"  # now SUBSCRIBED matches it
    assert "STATUS" not in client.untagged_responses  # ... while Lists was not subscribed
    deliver(mail_server, message("subscribed now"), mailbox="Lists")
    client.sock.settimeout(WAIT)
    # The news of the first delivery may still be on its way when SUBSCRIBE ends (the change
    # feed is asynchronous, more so over PostgreSQL): told then, it says where Lists stands
    # at that moment. Either way the second delivery is told, never lost.
    line = _uv(client.readline())
    if line != b'* STATUS "Lists" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY n UNSEEN 2)\r\n':
        assert line == b'* STATUS "Lists" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY n UNSEEN 1)\r\n'
        assert _uv(client.readline()) == (
            b'* STATUS "Lists" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY n UNSEEN 2)\r\n')
    client.logout()


@BOTH
def test_flag_changes_wait_without_flagchange(mail_server: RunningServer) -> None:
    deliver(mail_server, message("a"))
    a = _opened(mail_server, "SELECT INBOX")
    assert status_of(a.cmd("NOTIFY SET (SELECTED (MessageNew MessageExpunge))")) == b"OK"
    b = _opened(mail_server, "SELECT INBOX")
    b.cmd("STORE 1 +FLAGS.SILENT (\\Answered)")
    assert _silent(a)  # not asked for: told at the next command instead
    assert a.cmd("NOOP")[0] == b"* 1 FETCH (UID 1 FLAGS (\\Answered \\Recent))"
    deliver(mail_server, message("b"))
    assert _told(a, 2) == [b"* 2 EXISTS", b"* 2 RECENT"]
