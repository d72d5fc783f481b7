"""URLAUTH (RFC 4467) over real sockets, both stores: GENURLAUTH in one session, URLFETCH in
another, the access identifiers, a wrong token, an expired URL, RESETKEY, and CATENATE taking a
URLAUTH URL of another user's message."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import RunningServer
from tests.imap.helpers import ALICE, BOB, Raw, deliver, message, status_of

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
HOST = "mail.example.test"
BODY = "Part one.\r\n"


def _session(server: RunningServer, user: str = ALICE) -> Raw:
    raw = Raw(server)
    raw.login(user)
    return raw


def _uidvalidity(raw: Raw) -> int:
    lines = raw.cmd("STATUS INBOX (UIDVALIDITY)")
    m = re.search(rb"UIDVALIDITY (\d+)", lines[0])
    assert m is not None, lines
    return int(m.group(1))


def _generate(raw: Raw, rump: str) -> str:
    lines = raw.cmd(f'GENURLAUTH "{rump}" INTERNAL')
    assert status_of(lines) == b"OK", lines
    m = re.fullmatch(rb'\* GENURLAUTH "([^"]+)"', lines[0])
    assert m is not None, lines
    url = m.group(1).decode()
    assert url.startswith(rump + ":INTERNAL:") and re.fullmatch(
        r"[0-9a-f]{64}", url.rsplit(":", 1)[1]), url
    return url


def _fetched(raw: Raw, url: str) -> bytes | None:
    lines = raw.cmd(f'URLFETCH "{url}"')
    assert status_of(lines) == b"OK", lines
    head = f'* URLFETCH "{url}" '.encode()
    assert lines[0].startswith(head), lines
    rest = lines[0][len(head):]
    if rest == b"NIL":
        return None
    size, _, data = rest.partition(b"\r\n")
    assert size == b"{%d}" % len(data), lines
    return data


@BOTH
def test_genurlauth_then_urlfetch_from_another_session(mail_server: RunningServer) -> None:
    raw_message = message("Shared", body=BODY)
    uid = deliver(mail_server, raw_message)
    alice = _session(mail_server)
    [caps] = [ln for ln in alice.cmd("CAPABILITY") if ln.startswith(b"* CAPABILITY")]
    assert b" URLAUTH" in caps
    base = f"imap://{ALICE.replace('@', '%40')}@{HOST}/INBOX;UIDVALIDITY={_uidvalidity(alice)}"
    for_bob = _generate(alice, f"{base}/;UID={uid};URLAUTH=user+{BOB}")
    part_for_all = _generate(alice, f"{base}/;UID={uid}/;SECTION=TEXT;URLAUTH=authuser")
    # Several at once: one GENURLAUTH response holding each URL.
    lines = alice.cmd(f'GENURLAUTH "{base}/;UID={uid};URLAUTH=anonymous" INTERNAL '
                      f'"{base}/;UID={uid};URLAUTH=user+{ALICE}" internal')
    assert status_of(lines) == b"OK" and lines[0].count(b":INTERNAL:") == 2, lines

    bob = _session(mail_server, BOB)  # another user, another session
    assert _fetched(bob, for_bob) == raw_message
    assert _fetched(bob, part_for_all) == BODY.encode()
    assert _fetched(alice, part_for_all) == BODY.encode()
    assert _fetched(alice, for_bob) is None  # user+bob: for bob only
    # Several URLs in one URLFETCH: one response, NIL where unusable.
    lines = bob.cmd(f'URLFETCH "{part_for_all}" "{base}/;UID={uid};URLAUTH=authuser"')
    assert lines[0].startswith(f'* URLFETCH "{part_for_all}" {{{len(BODY)}}}'.encode())
    assert lines[0].endswith(b';URLAUTH=authuser" NIL'), lines

    # A token that does not match, or a URL changed after signing: NIL.
    wrong = for_bob[:-4] + ("0000" if not for_bob.endswith("0000") else "1111")
    assert _fetched(bob, wrong) is None
    other_uid = for_bob.replace(f";UID={uid};", f";UID={uid + 1};")
    assert _fetched(bob, other_uid) is None
    assert _fetched(bob, for_bob.replace(HOST, "elsewhere.example")) is None
    # submit+ is for the submission server (BURL), never an IMAP session.
    submit = _generate(alice, f"{base}/;UID={uid};URLAUTH=submit+{ALICE}")
    assert _fetched(alice, submit) is None
    # EXPIRE (RFC 4467 3): usable until then, not after.
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    past = (datetime.now(UTC) - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert _fetched(bob, _generate(alice, f"{base}/;UID={uid};EXPIRE={later};URLAUTH=authuser")
                    ) == raw_message
    assert _fetched(bob, _generate(alice, f"{base}/;UID={uid};EXPIRE={past};URLAUTH=authuser")
                    ) is None
    # Not logged in: URLFETCH is not allowed at all.
    anonymous = Raw(mail_server)
    assert status_of(anonymous.cmd(f'URLFETCH "{for_bob}"')) == b"BAD"


@BOTH
def test_resetkey_invalidates_and_genurlauth_refuses_bad_urls(mail_server: RunningServer) -> None:
    uid = deliver(mail_server, message("Keyed"))
    alice = _session(mail_server)
    base = f"imap://{ALICE}@{HOST}/INBOX"
    url = _generate(alice, f"{base}/;UID={uid};URLAUTH=authuser")
    again = _generate(alice, f"{base}/;UID={uid};URLAUTH=authuser")
    assert again == url  # the same key until RESETKEY
    bob = _session(mail_server, BOB)
    assert _fetched(bob, url) is not None
    # RFC 4467 8: SELECT and EXAMINE tell the mechanisms (this session is over TLS).
    assert b"* OK [URLMECH INTERNAL] URLAUTH mechanisms" in bob.cmd("EXAMINE INBOX")
    lines = alice.cmd("RESETKEY INBOX INTERNAL")
    assert status_of(lines) == b"OK [URLMECH INTERNAL]", lines
    assert _fetched(bob, url) is None  # RESETKEY: URLs of the old key stop working
    fresh = _generate(alice, f"{base}/;UID={uid};URLAUTH=authuser")
    assert fresh != url and _fetched(bob, fresh) is not None
    alice.cmd("CREATE Other")
    in_other = _generate(alice, f"imap://{ALICE}@{HOST}/Other/;UID=1;URLAUTH=authuser")
    assert status_of(alice.cmd("RESETKEY")) == b"OK"  # every mailbox's key
    assert _fetched(bob, fresh) is None and _fetched(bob, in_other) is None
    assert status_of(alice.cmd("RESETKEY Nowhere")) == b"NO [NONEXISTENT]"
    assert status_of(alice.cmd("RESETKEY INBOX XSAMPLE")) == b"BAD"
    # GENURLAUTH checks every URL (RFC 4467 7): BAD for any that fails.
    for bad in (
        f'"{base}/;UID={uid};URLAUTH=authuser" XSAMPLE',  # unknown mechanism
        f'"imap://{BOB}@{HOST}/INBOX/;UID=1;URLAUTH=authuser" INTERNAL',  # not her own
        f'"{base}/;UID={uid};URLAUTH=authuser:INTERNAL:{"0" * 64}" INTERNAL',  # not a rump
        f'"imap://{ALICE}@{HOST}/Nowhere/;UID=1;URLAUTH=authuser" INTERNAL',  # no mailbox
        f'"imap://{ALICE}@elsewhere.example/INBOX/;UID=1;URLAUTH=authuser" INTERNAL',
        f'"imap://{HOST}/INBOX/;UID=1;URLAUTH=authuser" INTERNAL',  # no user in the URL
        f'"{base};URLAUTH=authuser" INTERNAL',  # a whole mailbox (RFC 4467 3)
        f'"{base}/;UID={uid};URLAUTH=user+nobody@example.test" INTERNAL',
        f'"{base}/;UID={uid};URLAUTH=everyone" INTERNAL',
        f'"{base}/;UID={uid};EXPIRE=tomorrow;URLAUTH=authuser" INTERNAL',
        f'"{base};UIDVALIDITY=1/;UID={uid};URLAUTH=authuser" INTERNAL',
    ):
        lines = alice.cmd(f"GENURLAUTH {bad}")
        assert status_of(lines) == b"BAD" and not lines[0].startswith(b"* GENURLAUTH"), bad
    # Hostile URLFETCH arguments: NIL each, the session goes on.
    lines = bob.cmd('URLFETCH "imap://x@y/" "not a url" "imap://a@b/c/;UID=1;URLAUTH=anonymous'
                    ':INTERNAL:zz"')
    assert lines[0].count(b" NIL") == 3 and status_of(lines) == b"OK", lines


@BOTH
def test_catenate_takes_a_urlauth_url_of_another_user(mail_server: RunningServer) -> None:
    uid = deliver(mail_server, message("Attachment", body=BODY))
    alice = _session(mail_server)
    url = _generate(alice, f"imap://{ALICE}@{HOST}/INBOX/;UID={uid}/;SECTION=TEXT;"
                           f"URLAUTH=user+{BOB}")
    bob = _session(mail_server, BOB)
    head = "Subject: forwarded\r\n\r\n"
    lines = bob.cmd(f'APPEND INBOX CATENATE (TEXT {{{len(head)}+}}\r\n{head} URL "{url}")')
    assert status_of(lines).startswith(b"OK [APPENDUID"), lines
    bob.cmd("SELECT INBOX")
    lines = bob.cmd("FETCH 1 BODY.PEEK[]")
    assert lines[0].endswith((head + BODY).encode() + b")"), lines
    # A URL bob may not use is BADURL, as for any other URL that names nothing of his.
    wrong = url[:-4] + ("0000" if not url.endswith("0000") else "1111")
    lines = bob.cmd(f'APPEND INBOX CATENATE (URL "{wrong}")')
    assert status_of(lines).startswith(b"NO [BADURL"), lines


@BOTH
def test_resetkey_tells_sessions_with_the_mailbox_selected(mail_server: RunningServer) -> None:
    """RFC 4467 7.1 / 8.1: after RESETKEY, every session that has the mailbox selected gets an
    untagged OK [URLMECH ...]; the session that asked gets it in its tagged OK instead."""
    deliver(mail_server, message("Keyed"))
    watcher = _session(mail_server)
    watcher.cmd("SELECT INBOX")
    elsewhere = _session(mail_server)
    elsewhere.cmd("CREATE Other")
    elsewhere.cmd("SELECT Other")
    resetter = _session(mail_server)
    resetter.cmd("SELECT INBOX")
    lines = resetter.cmd("RESETKEY INBOX")
    assert lines == [lines[-1]] and status_of(lines) == b"OK [URLMECH INTERNAL]", lines
    told = b"* OK [URLMECH INTERNAL] URLAUTH access key reset"
    noop = watcher.cmd("NOOP")
    assert noop.count(told) == 1 and status_of(noop) == b"OK", noop
    assert told not in watcher.cmd("NOOP")  # told once
    assert told not in elsewhere.cmd("NOOP")  # another mailbox's keys are untouched
    # An idling session hears it at once.
    tag = watcher.tag()
    watcher.send(f"{tag} IDLE\r\n".encode())
    assert watcher.readline().startswith(b"+ ")
    resetter.cmd("RESETKEY INBOX INTERNAL")
    assert watcher.readline() == told
    watcher.send(b"DONE\r\n")
    assert status_of(watcher.until(tag)) == b"OK"
    # RESETKEY without a mailbox: every session with one of the user's mailboxes selected,
    # the one that asked included (its tagged OK names no mechanism).
    lines = resetter.cmd("RESETKEY")
    assert lines[0] == told and status_of(lines) == b"OK", lines
    assert told in watcher.cmd("NOOP") and told in elsewhere.cmd("NOOP")
    # Another user's sessions are not told.
    bob = _session(mail_server, BOB)
    bob.cmd("SELECT INBOX")
    resetter.cmd("RESETKEY INBOX")
    assert told not in bob.cmd("NOOP")
