"""CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 section 4) over real sockets, both stores:
PARTIAL windows of SEARCH and SORT results, results kept up to date (UPDATE) as another
session delivers, flags and expunges, CANCELUPDATE, and the cap on contexts a session."""

from __future__ import annotations

import re
import time

import pytest

from mailstead.store.interfaces import SystemFlag
from tests.conftest import RunningServer
from tests.imap.helpers import Raw, deliver, message, status_of

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)


def esearch(lines: list[bytes], tag: str) -> list[bytes]:
    return [ln for ln in lines if ln.startswith(f'* ESEARCH (TAG "{tag}")'.encode())]


def selected(server: RunningServer) -> Raw:
    client = Raw(server)
    client.login()
    lines = client.cmd("SELECT INBOX")
    assert status_of(lines).startswith(b"OK"), lines
    return client


@pytest.fixture
def ten(mail_server: RunningServer) -> list[int]:
    """INBOX holds ten messages, UIDs returned; the even ones (2nd, 4th...) are seen."""
    return [deliver(mail_server, message(f"Message {i:02d}"),
                    flags=SystemFlag.SEEN if i % 2 == 0 else 0) for i in range(1, 11)]


def test_capabilities(mail_server: RunningServer) -> None:
    client = Raw(mail_server)
    client.login()
    [caps] = [ln for ln in client.cmd("CAPABILITY") if ln.startswith(b"* CAPABILITY")]
    assert b" CONTEXT=SEARCH" in caps and b" CONTEXT=SORT" in caps and b" ESORT" in caps


# -- PARTIAL (RFC 5267 4.4, with RFC 9394's ranges from the end) ------------------------------


@BOTH
def test_partial_search(mail_server: RunningServer, ten: list[int]) -> None:
    client = selected(mail_server)
    u = ten
    lines = client.cmd("UID SEARCH RETURN (PARTIAL 1:3) ALL", tag="p1")
    assert esearch(lines, "p1") == [f'* ESEARCH (TAG "p1") UID PARTIAL (1:3 {u[0]}:{u[2]})'
                                    .encode()]
    # The unseen ones are messages 1, 3, 5, 7, 9: positions 2-3 of that result.
    lines = client.cmd("UID SEARCH RETURN (COUNT PARTIAL 2:3) UNSEEN", tag="p2")
    assert esearch(lines, "p2") == [
        f'* ESEARCH (TAG "p2") UID COUNT 5 PARTIAL (2:3 {u[2]},{u[4]})'.encode()]
    # Counted from the end (RFC 9394): the last two; a range given high to low is the same.
    lines = client.cmd("SEARCH RETURN (PARTIAL -1:-2) UNSEEN", tag="p3")
    assert esearch(lines, "p3") == [b'* ESEARCH (TAG "p3") PARTIAL (-1:-2 7,9)']
    lines = client.cmd("SEARCH RETURN (PARTIAL 3:1) ALL", tag="p4")
    assert esearch(lines, "p4") == [b'* ESEARCH (TAG "p4") PARTIAL (1:3 1:3)']
    # Past the end of the result: NIL.
    lines = client.cmd("SEARCH RETURN (PARTIAL 11:20) ALL", tag="p5")
    assert esearch(lines, "p5") == [b'* ESEARCH (TAG "p5") PARTIAL (11:20 NIL)']
    lines = client.cmd("SEARCH RETURN (PARTIAL -20:-30) ALL", tag="p6")
    assert esearch(lines, "p6") == [b'* ESEARCH (TAG "p6") PARTIAL (-20:-30 NIL)']
    # SAVE keeps what PARTIAL returned (RFC 9394 3.1).
    client.cmd("SEARCH RETURN (SAVE PARTIAL 1:2) UNSEEN")
    lines = client.cmd("SEARCH RETURN (ALL) $", tag="p7")
    assert esearch(lines, "p7") == [b'* ESEARCH (TAG "p7") ALL 1,3']
    for bad in ("PARTIAL 0:5", "PARTIAL 1:-5", "PARTIAL x", "PARTIAL", "ALL PARTIAL 1:2"):
        lines = client.cmd(f"SEARCH RETURN ({bad}) ALL")
        assert status_of(lines) == b"BAD", (bad, lines)
    assert status_of(client.cmd("NOOP")) == b"OK"


@BOTH
def test_partial_sort(mail_server: RunningServer, ten: list[int]) -> None:
    client = selected(mail_server)
    u = ten
    # Newest first: the window keeps the sort order.
    lines = client.cmd("UID SORT RETURN (PARTIAL 1:3) (REVERSE ARRIVAL) US-ASCII ALL", tag="s1")
    assert esearch(lines, "s1") == [
        f'* ESEARCH (TAG "s1") UID PARTIAL (1:3 {u[9]},{u[8]},{u[7]})'.encode()]
    lines = client.cmd("SORT RETURN (MIN PARTIAL -1:-2) (REVERSE SUBJECT) US-ASCII UNSEEN",
                       tag="s2")
    assert esearch(lines, "s2") == [b'* ESEARCH (TAG "s2") MIN 9 PARTIAL (-1:-2 3,1)']
    lines = client.cmd("SORT RETURN (PARTIAL 50:60) (SUBJECT) US-ASCII ALL", tag="s3")
    assert esearch(lines, "s3") == [b'* ESEARCH (TAG "s3") PARTIAL (50:60 NIL)']


# -- UPDATE (RFC 5267 4.3) --------------------------------------------------------------------


@BOTH
def test_search_update(mail_server: RunningServer, ten: list[int]) -> None:
    u = ten
    watcher = selected(mail_server)
    other = selected(mail_server)
    lines = watcher.cmd("UID SEARCH RETURN (ALL UPDATE) UNSEEN", tag="w1")
    assert esearch(lines, "w1") == [
        f'* ESEARCH (TAG "w1") UID ALL {u[0]},{u[2]},{u[4]},{u[6]},{u[8]}'.encode()]
    assert status_of(lines) == b"OK"
    # A matching message arrives; one that does not match changes nothing.
    new = deliver(mail_server, message("New one"))
    deliver(mail_server, message("Seen one"), flags=SystemFlag.SEEN)
    lines = watcher.cmd("NOOP")
    assert esearch(lines, "w1") == [f'* ESEARCH (TAG "w1") UID ADDTO (0 {new})'.encode()]
    # Another session reads message 3: it leaves the result; flagging it changes nothing.
    other.cmd(f"UID STORE {u[2]} +FLAGS (\\Seen \\Flagged)")
    lines = watcher.cmd("NOOP")
    assert esearch(lines, "w1") == [f'* ESEARCH (TAG "w1") UID REMOVEFROM (0 {u[2]})'.encode()]
    other.cmd(f"UID STORE {u[0]} +FLAGS (\\Flagged)")
    assert esearch(watcher.cmd("NOOP"), "w1") == []
    # ... and unseen again: it comes back.
    other.cmd(f"UID STORE {u[2]} -FLAGS (\\Seen)")
    lines = watcher.cmd("NOOP")
    assert esearch(lines, "w1") == [f'* ESEARCH (TAG "w1") UID ADDTO (0 {u[2]})'.encode()]
    # Expunged by the other session: REMOVEFROM comes before the EXPUNGE.
    other.cmd(f"UID STORE {u[4]},{u[5]} +FLAGS.SILENT (\\Deleted)")
    other.cmd("EXPUNGE")
    lines = watcher.cmd("NOOP")
    assert esearch(lines, "w1") == [f'* ESEARCH (TAG "w1") UID REMOVEFROM (0 {u[4]})'.encode()]
    assert lines.index(esearch(lines, "w1")[0]) < lines.index(b"* 5 EXPUNGE")
    # The watcher's own STORE counts too.
    lines = watcher.cmd(f"UID STORE {new} +FLAGS.SILENT (\\Seen)")
    assert esearch(lines, "w1") == [f'* ESEARCH (TAG "w1") UID REMOVEFROM (0 {new})'.encode()]
    # The result as kept equals a fresh search.
    lines = watcher.cmd("UID SEARCH RETURN (ALL) UNSEEN", tag="w2")
    assert esearch(lines, "w2") == [
        f'* ESEARCH (TAG "w2") UID ALL {u[0]},{u[2]},{u[6]},{u[8]}'.encode()]


@BOTH
def test_search_update_during_idle(mail_server: RunningServer, ten: list[int]) -> None:
    watcher = selected(mail_server)
    lines = watcher.cmd("UID SEARCH RETURN (UPDATE) SUBJECT urgent", tag="i1")
    assert esearch(lines, "i1") == [b'* ESEARCH (TAG "i1") UID']
    watcher.send(b"i2 IDLE\r\n")
    assert watcher.readline().startswith(b"+ ")
    new = deliver(mail_server, message("Something urgent"))
    seen = []
    while True:
        line = watcher.readline()
        seen.append(line)
        if line.startswith(b"* ESEARCH"):
            break
    assert line == f'* ESEARCH (TAG "i1") UID ADDTO (0 {new})'.encode(), seen
    assert b"* 11 EXISTS" in seen  # the message is announced before it is added
    watcher.send(b"DONE\r\n")
    assert status_of(watcher.until("i2")) == b"OK"


@BOTH
def test_search_update_sequence_numbers(mail_server: RunningServer, ten: list[int]) -> None:
    """A context by sequence numbers: updates wait for a moment EXPUNGE may be sent, and
    name messages by the numbers the client knows."""
    watcher = selected(mail_server)
    other = selected(mail_server)
    lines = watcher.cmd("SEARCH RETURN (UPDATE COUNT) UNSEEN", tag="q1")
    assert esearch(lines, "q1") == [b'* ESEARCH (TAG "q1") COUNT 5']
    other.cmd("STORE 1,2 +FLAGS.SILENT (\\Deleted)")
    other.cmd("EXPUNGE")
    other.cmd("STORE 7 +FLAGS.SILENT (\\Seen)")  # message 9 before the expunge
    # FETCH may not shift sequence numbers: nothing yet.
    lines = watcher.cmd("FETCH 1 (UID)")
    assert esearch(lines, "q1") == [] and not any(b" EXPUNGE" in ln for ln in lines), lines
    lines = watcher.cmd("NOOP")
    assert lines[:3] == [b'* ESEARCH (TAG "q1") REMOVEFROM (0 1)', b"* 1 EXPUNGE",
                         b"* 1 EXPUNGE"], lines
    assert esearch(lines, "q1")[-1] == b'* ESEARCH (TAG "q1") REMOVEFROM (0 7)'


@BOTH
def test_sort_update_positions(mail_server: RunningServer) -> None:
    uids = {s: deliver(mail_server, message(s)) for s in ("bravo", "delta", "foxtrot")}
    watcher = selected(mail_server)
    other = selected(mail_server)
    lines = watcher.cmd("UID SORT RETURN (ALL UPDATE) (SUBJECT) UTF-8 UNSEEN", tag="o1")
    b, f = uids["bravo"], uids["foxtrot"]
    assert esearch(lines, "o1") == [f'* ESEARCH (TAG "o1") UID ALL {b}:{f}'.encode()]
    charlie = deliver(mail_server, message("charlie"))
    lines = watcher.cmd("NOOP")
    assert esearch(lines, "o1") == [f'* ESEARCH (TAG "o1") UID ADDTO (2 {charlie})'.encode()]
    alpha = deliver(mail_server, message("alpha"))
    echo = deliver(mail_server, message("echo"))
    lines = watcher.cmd("NOOP")  # a b c d e f: alpha first, echo fifth
    assert esearch(lines, "o1") == [
        f'* ESEARCH (TAG "o1") UID ADDTO (1 {alpha} 5 {echo})'.encode()]
    other.cmd("NOOP")  # the other session learns of the new messages
    other.cmd(f"UID STORE {b},{echo} +FLAGS (\\Seen)")
    lines = watcher.cmd("NOOP")  # removed from the last position down
    assert esearch(lines, "o1") == [
        f'* ESEARCH (TAG "o1") UID REMOVEFROM (5 {echo} 2 {b})'.encode()]
    other.cmd(f"UID STORE {f} +FLAGS.SILENT (\\Deleted)")
    other.cmd(f"UID EXPUNGE {f}")
    other.cmd(f"UID STORE {b} -FLAGS (\\Seen)")
    lines = watcher.cmd("NOOP")
    assert esearch(lines, "o1") == [f'* ESEARCH (TAG "o1") UID REMOVEFROM (4 {f})'.encode(),
                                    f'* ESEARCH (TAG "o1") UID ADDTO (2 {b})'.encode()]
    # A reverse sort places new messages from the other end.
    lines = watcher.cmd("UID SORT RETURN (UPDATE) (REVERSE SUBJECT) UTF-8 UNSEEN", tag="o2")
    golf = deliver(mail_server, message("golf"))
    lines = watcher.cmd("NOOP")
    assert esearch(lines, "o2") == [f'* ESEARCH (TAG "o2") UID ADDTO (1 {golf})'.encode()]
    assert esearch(lines, "o1") == [f'* ESEARCH (TAG "o1") UID ADDTO (5 {golf})'.encode()]


@BOTH
def test_cancelupdate(mail_server: RunningServer, ten: list[int]) -> None:
    watcher = selected(mail_server)
    watcher.cmd("UID SEARCH RETURN (UPDATE) UNSEEN", tag="c1")
    watcher.cmd("UID SORT RETURN (UPDATE) (ARRIVAL) US-ASCII UNSEEN", tag="c2")
    lines = watcher.cmd('CANCELUPDATE "c1"')
    assert status_of(lines) == b"OK"
    new = deliver(mail_server, message("After cancel"))
    lines = watcher.cmd("NOOP")
    assert esearch(lines, "c1") == []
    assert esearch(lines, "c2") == [f'* ESEARCH (TAG "c2") UID ADDTO (6 {new})'.encode()]
    assert status_of(watcher.cmd('CANCELUPDATE "c2"')) == b"OK"
    deliver(mail_server, message("After both"))
    assert not any(ln.startswith(b"* ESEARCH") for ln in watcher.cmd("NOOP"))
    assert status_of(watcher.cmd('CANCELUPDATE "c1"')) == b"BAD"  # gone already
    assert status_of(watcher.cmd("CANCELUPDATE")) == b"BAD"
    # Contexts end with the mailbox they were made in.
    watcher.cmd("UID SEARCH RETURN (UPDATE) UNSEEN", tag="c3")
    watcher.cmd("SELECT INBOX")
    deliver(mail_server, message("After reselect"))
    assert not any(ln.startswith(b"* ESEARCH") for ln in watcher.cmd("NOOP"))


@BOTH
def test_context_cap(mail_server: RunningServer, ten: list[int]) -> None:
    """Ten contexts a session; the eleventh search is answered, without updates
    (NOUPDATE), and an ordinary client is served promptly throughout."""
    watcher = selected(mail_server)
    for i in range(10):
        lines = watcher.cmd(f"UID SEARCH RETURN (COUNT UPDATE) UNSEEN SUBJECT {i}", tag=f"k{i}")
        assert status_of(lines) == b"OK" and not any(b"NOUPDATE" in ln for ln in lines)
    lines = watcher.cmd("UID SEARCH RETURN (COUNT UPDATE) UNSEEN", tag="k10")
    assert b'* NO [NOUPDATE "k10"]' in b"\n".join(lines)
    assert esearch(lines, "k10") == [b'* ESEARCH (TAG "k10") UID COUNT 5']
    assert status_of(lines) == b"OK"
    # RFC 5267 4.3: UPDATE with a tag a context already has SHALL be BAD (SEARCH and SORT);
    # the kept context goes on as it was.
    lines = watcher.cmd("UID SEARCH RETURN (UPDATE) UNSEEN", tag="k3")
    assert status_of(lines) == b"BAD" and esearch(lines, "k3") == [], lines
    lines = watcher.cmd("UID SORT RETURN (UPDATE) (ARRIVAL) UTF-8 ALL", tag="k4")
    assert status_of(lines) == b"BAD" and esearch(lines, "k4") == [], lines
    new = deliver(mail_server, message("Subject 7"))
    lines = watcher.cmd("NOOP")
    got = [ln for ln in lines if ln.startswith(b"* ESEARCH")]
    assert got == [f'* ESEARCH (TAG "k7") UID ADDTO (0 {new})'.encode()]
    ordinary = Raw(mail_server)
    started = time.monotonic()
    ordinary.login()
    assert status_of(ordinary.cmd("NOOP")) == b"OK"
    assert time.monotonic() - started < 10  # generous: a loaded machine


@BOTH
def test_update_with_text_key(mail_server: RunningServer) -> None:
    """A body key reads the file of each changed message only."""
    deliver(mail_server, message("plain", body="nothing here\r\n"))
    watcher = selected(mail_server)
    watcher.cmd("UID SEARCH RETURN (UPDATE) UNSEEN BODY needle", tag="b1")
    hit = deliver(mail_server, message("one", body="a needle in it\r\n"))
    deliver(mail_server, message("two", body="hay only\r\n"))
    lines = watcher.cmd("NOOP")
    assert esearch(lines, "b1") == [f'* ESEARCH (TAG "b1") UID ADDTO (0 {hit})'.encode()]


def test_hostile_updates_stay_bounded(mail_server: RunningServer) -> None:
    """Many contexts with text keys and a burst of deliveries: the round of updates is
    bounded (contexts past the bound are dropped with NOUPDATE), and a second client is
    served promptly meanwhile."""
    from mailstead.proto import imap_context

    watcher = selected(mail_server)
    for i in range(10):
        watcher.cmd(f"UID SEARCH RETURN (UPDATE) OR BODY zz{i} TEXT yy{i}", tag=f"h{i}")
    for i in range(imap_context.MAX_TEXT_READS + 5):
        deliver(mail_server, message(f"bulk {i}", body=f"zz3 {i}\r\n"))
    watcher.send(b"n1 NOOP\r\n")
    ordinary = Raw(mail_server)
    ordinary.login()
    ordinary.sock.settimeout(20)
    assert status_of(ordinary.cmd("NOOP")) == b"OK"
    lines = watcher.until("n1")
    assert status_of(lines) == b"OK"
    noupdate = [ln for ln in lines if b"NOUPDATE" in ln]
    assert len(noupdate) == 10, lines[-3:]
    assert all(re.match(rb'\* NO \[NOUPDATE "h\d"\]', ln) for ln in noupdate)
    assert status_of(watcher.cmd('CANCELUPDATE "h0"')) == b"BAD"  # dropped already
