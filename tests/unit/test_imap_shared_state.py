"""The shared per-mailbox flag state behind IMAP views (services/mailbox_state.py
``SharedMailboxState``): what it answers for "changes since m" must match what the store
would say."""

from __future__ import annotations

from array import array

import pytest

from mailstead.services import mailbox_state, mailbox_view
from mailstead.services.mailbox_state import SharedMailboxState
from mailstead.store.changes import ChangeBus
from mailstead.store.interfaces import Changes, FlagState


def _state(*states: FlagState) -> SharedMailboxState:
    shared = SharedMailboxState(ChangeBus().watch(1))
    shared.install(list(states), modseq=10, generation=0)
    return shared


def test_changes_after_keeps_the_newest_state_and_drops_expunged() -> None:
    shared = _state(FlagState(1, 5, 0, frozenset()), FlagState(2, 6, 0, frozenset()))
    shared.apply(Changes([FlagState(1, 11, 8, frozenset())], [], 11))
    shared.apply(Changes([FlagState(1, 12, 0, frozenset()), FlagState(3, 12, 0, frozenset())],
                         [], 12))
    shared.apply(Changes([], [2], 13))
    assert list(shared.uids) == [1, 3]
    assert [st.modseq for st in shared.states] == [12, 12]
    after = shared.changes_after(10)
    assert [(st.uid, st.modseq) for st in after.changed] == [(1, 12), (3, 12)]
    assert after.vanished == [2]
    assert after.highestmodseq == 13
    assert shared.changes_after(12).changed == []  # modseq 12 is known already
    assert shared.changes_after(12).vanished == [2]


def test_new_message_expunged_in_the_same_round_never_appears() -> None:
    shared = _state(FlagState(1, 5, 0, frozenset()))
    shared.apply(Changes([FlagState(2, 11, 0, frozenset())], [2], 12))
    assert list(shared.uids) == [1]
    assert shared.changes_after(10).changed == []


def test_trimmed_log_raises_the_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mailbox_state, "LOG_ENTRIES", 4)
    shared = _state(FlagState(1, 5, 0, frozenset()))
    for m in range(11, 17):
        shared.apply(Changes([FlagState(1, m, m % 2, frozenset())], [], m))
    assert shared.floor > 10  # a view synced to 10 must ask the store instead
    assert [st.modseq for st in shared.changes_after(shared.floor).changed] == [16]


def test_recent_ranges_join_and_answer_by_bisection() -> None:
    """A view's \\Recent UIDs: claims that follow each other make one range (a session
    APPENDing again and again), others stay apart; every UID answered as a scan would."""
    view = mailbox_view.MailboxView.__new__(mailbox_view.MailboxView)
    view.recent_ranges = []
    view.uids = array("Q", range(1, 31))
    for first, last in [(3, 5), (6, 6), (9, 12), (13, 13), (20, 20), (22, 25)]:
        view._add_recent(first, last)
    assert view.recent_ranges == [(3, 6), (9, 13), (20, 20), (22, 25)]
    expected = {3, 4, 5, 6, 9, 10, 11, 12, 13, 20, 22, 23, 24, 25}
    check = view.recent_checker()
    assert {u for u in range(0, 31) if view.is_recent(u)} == expected
    assert {u for u in range(0, 31) if check(u)} == expected
    assert view.recent_count() == len(expected)
