"""SORT and THREAD over the keys stored at delivery (migration 0010): messages stored before
it (keys unknown, or References never recorded) answer the same, and a result kept for a
repeated command (imap_cmd_sort.Results) is never reused once the messages differ."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailstead.proto import imap_cmd_sort
from mailstead.store.sql_base import Db, backfill_thread_keys
from tests.conftest import RunningServer
from tests.imap.helpers import ALICE, Raw
from tests.imap.test_sort_thread import append, append_tree, build, sort, thread

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
# TREE (test_sort_thread): the root is missing, a -> (b -> d, e), c; f <- g by subject
REFERENCES = b"(6 7)((1 (2 4)(5))(3))"
ORDERED = b"(6 7)(1 (2)(3)(4)(5))"


def _as_before_migration(db: Db) -> None:
    """Rows stored before 0010 (no keys), two of them also before 0005 (no References)."""
    db.run("UPDATE messages SET sort_subject = NULL, sort_reply = NULL, thread_id = NULL, "
           "thread_parents = NULL")
    db.run("UPDATE messages SET env_references = NULL WHERE uid IN (2, 4)")


def _answers(raw: Raw) -> tuple[object, ...]:
    return (thread(raw, "THREAD REFERENCES UTF-8 ALL"),
            thread(raw, "THREAD ORDEREDSUBJECT UTF-8 ALL"),
            sort(raw, "SORT (SUBJECT DATE) UTF-8 ALL"), sort(raw, "SORT (REVERSE SIZE) UTF-8 ALL"))


@BOTH
def test_messages_stored_before_the_keys(mail_server: RunningServer) -> None:
    raw = Raw(mail_server)
    raw.login()
    append_tree(raw)
    raw.cmd("SELECT INBOX")
    fresh = _answers(raw)
    assert fresh[:2] == (REFERENCES, ORDERED)
    assert fresh[2:] == ([6, 7, 1, 2, 3, 4, 5], [5, 4, 7, 3, 2, 1, 6])
    store = mail_server.services.store
    mail_server.run(store._write(_as_before_migration))  # type: ignore[attr-defined]
    assert _answers(raw) == fresh  # the message files answer
    mail_server.run(store._write(backfill_thread_keys))  # type: ignore[attr-defined]
    assert _answers(raw) == fresh


@pytest.fixture
def results_for_small_selections() -> Iterator[None]:
    """Keeps results of any size (the server runs in this process), afresh."""
    kept = imap_cmd_sort.RESULTS
    imap_cmd_sort.RESULTS = imap_cmd_sort.Results()
    imap_cmd_sort.RESULTS.MIN_MESSAGES = 1
    yield
    imap_cmd_sort.RESULTS = kept


@BOTH
def test_kept_results_follow_the_mailbox(mail_server: RunningServer,
                                         results_for_small_selections: None) -> None:
    raw = Raw(mail_server)
    raw.login()
    append_tree(raw)
    raw.cmd("SELECT INBOX")
    assert thread(raw, "THREAD REFERENCES UTF-8 ALL") == REFERENCES
    assert thread(raw, "THREAD REFERENCES UTF-8 ALL") == REFERENCES  # kept
    assert thread(raw, "UID THREAD REFERENCES UTF-8 ALL") == REFERENCES  # UIDs 1-7 here
    assert sort(raw, "SORT (DATE) UTF-8 ALL") == [6, 1, 2, 3, 4, 5, 7]
    assert sort(raw, "SORT (REVERSE DATE) UTF-8 ALL") == [7, 5, 4, 3, 2, 1, 6]
    # A new reply to f: the kept answer is not reused
    append(raw, build("q@example.org", ALICE, "", "Re: Other topic",
                      "08 Mar 2024 10:00:00 +0000", "<h@x>", "References: <f@x>\r\n", 5),
           "01-Apr-2024 10:00:00 +0000")
    raw.cmd("NOOP")
    assert thread(raw, "THREAD REFERENCES UTF-8 ALL") == b"(6 (7)(8))((1 (2 4)(5))(3))"
    assert sort(raw, "SORT (DATE) UTF-8 ALL") == [6, 1, 2, 3, 4, 5, 7, 8]
    # An expunge shifts the sequence numbers: UID THREAD and THREAD differ from now on
    raw.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
    raw.cmd("EXPUNGE")
    assert thread(raw, "UID THREAD REFERENCES UTF-8 ALL") == b"(6 (7)(8))((2 4)(3)(5))"
    assert thread(raw, "THREAD REFERENCES UTF-8 ALL") == b"(5 (6)(7))((1 3)(2)(4))"
    assert sort(raw, "UID SORT (DATE) UTF-8 ALL") == [6, 2, 3, 4, 5, 7, 8]
    assert sort(raw, "SORT (DATE) UTF-8 ALL") == [5, 1, 2, 3, 4, 6, 7]
