"""SORT and THREAD answered from what the process keeps between sessions (imap_sort_cache.py:
key columns read once per UID, THREAD=REFERENCES step 1 extended with new mail): with new
mail and expunges between commands, from several sessions, every answer is the one a fresh
computation gives (nothing kept), on both stores."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailstead.proto import imap_cmd_sort, imap_sort_cache
from tests.conftest import RunningServer
from tests.imap.helpers import ALICE, Raw
from tests.imap.test_sort_thread import append, append_tree, build, sort, thread

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
COMMANDS = ("THREAD REFERENCES UTF-8 ALL", "UID THREAD REFERENCES UTF-8 ALL",
            "THREAD ORDEREDSUBJECT UTF-8 ALL", "SORT (SUBJECT DATE) UTF-8 ALL",
            "SORT (REVERSE ARRIVAL) UTF-8 ALL", "UID SORT (FROM) UTF-8 ALL")


@pytest.fixture
def kept_for_small_mailboxes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The caches at work from the first message (the server runs in this process); results
    of whole commands are not reused (imap_cmd_sort.Results keeps none this small)."""
    monkeypatch.setattr(imap_sort_cache, "MIN_MESSAGES", 1)
    monkeypatch.setattr(imap_cmd_sort, "KEY_COLUMNS", imap_sort_cache.KeyColumns())
    monkeypatch.setattr(imap_cmd_sort, "LINKS", imap_sort_cache.LinkCache())
    yield


def _answers(raw: Raw) -> list[object]:
    return [thread(raw, c) if "THREAD" in c else sort(raw, c) for c in COMMANDS]


def _fresh(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The answers of a new session of a process that keeps nothing."""
    with monkeypatch.context() as m:
        m.setattr(imap_sort_cache, "MIN_MESSAGES", 10**9)
        m.setattr(imap_cmd_sort, "KEY_COLUMNS", imap_sort_cache.KeyColumns())
        m.setattr(imap_cmd_sort, "LINKS", imap_sort_cache.LinkCache())
        raw = Raw(server)
        raw.login()
        raw.cmd("SELECT INBOX")
        try:
            return _answers(raw)
        finally:
            raw.close()


def _agree(server: RunningServer, monkeypatch: pytest.MonkeyPatch, *sessions: Raw
           ) -> list[object]:
    """Each session, told of the changes (NOOP), answers as a fresh computation does."""
    for raw in sessions:
        raw.cmd("NOOP")
    expected = _fresh(server, monkeypatch)
    for raw in sessions:
        assert _answers(raw) == expected
    return expected


def _message(mid: str, refs: str, subject: str, day: int) -> bytes:
    extra = f"References: {refs}\r\n" if refs else ""
    return build(f"u{day}@example.org", ALICE, "", subject,
                 f"{day:02d} Mar 2024 09:00:00 +0000", f"<{mid}@x>", extra, day)


@BOTH
def test_new_mail_and_expunges_between_commands(mail_server: RunningServer,
                                                kept_for_small_mailboxes: None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    first, second, writer = Raw(mail_server), Raw(mail_server), Raw(mail_server)
    for raw in (first, second, writer):
        raw.login()
    append_tree(writer)  # a missing root <root@x> and replies below it; f <- g by subject
    for raw in (first, second, writer):
        raw.cmd("SELECT INBOX")
    expected = _fresh(mail_server, monkeypatch)
    assert _answers(first) == expected
    assert imap_cmd_sort.LINKS._kept  # step 1 kept for the whole mailbox
    assert _answers(second) == expected  # another session: from what the first left
    # New mail: the missing root turns up (it fills the dummy), a reply to c, a new thread.
    append(writer, _message("root", "", "Plan", 1), "02-Apr-2024 10:00:00 +0000")
    append(writer, _message("h", "<root@x> <c@x>", "Re: Plan", 8), "02-Apr-2024 10:00:01 +0000")
    append(writer, _message("i", "<gone@x>", "Fwd: Other topic", 9), "02-Apr-2024 10:00:02 +0000")
    _agree(mail_server, monkeypatch, first, second)
    # An expunge in the middle (sequence numbers shift), then more mail, from the writer.
    writer.cmd("STORE 2 +FLAGS.SILENT (\\Deleted)")
    writer.cmd("EXPUNGE")
    _agree(mail_server, monkeypatch, first)
    append(writer, _message("j", "<root@x> <a@x> <b@x>", "Re: Plan", 10),
           "02-Apr-2024 10:00:03 +0000")
    _agree(mail_server, monkeypatch, second, first)
    # Every message expunged, then one new: nothing stale is shown.
    writer.cmd("STORE 1:* +FLAGS.SILENT (\\Deleted)")
    writer.cmd("EXPUNGE")
    append(writer, _message("k", "<root@x>", "Re: Plan", 11), "02-Apr-2024 10:00:04 +0000")
    assert _agree(mail_server, monkeypatch, first)[0] == b"(1)"
