"""The last spam verdicts (migration 0012, store/sql_spam_log.py): recorded per recipient,
listed newest first, bounded to the newest N rows while the counts per action keep counting;
the same on SQLite and PostgreSQL, and shared by two stores opened on the same data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mailstead.store.interfaces import SpamAction, SpamVerdictRow
from tests.store.helpers import StoreMaker

START = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


def _row(i: int, action: SpamAction = "inbox") -> SpamVerdictRow:
    return SpamVerdictRow(START + timedelta(seconds=i), f"user{i}@example.test", i / 2,
                          ("BAYES_50", "MISSING_DATE") if i % 2 else (), action)


async def test_recorded_listed_and_pruned(make_store: StoreMaker) -> None:
    store = make_store()
    await store.open()
    try:
        assert await store.recent_spam_verdicts(10) == []
        assert await store.spam_verdict_counts() == {}
        await store.record_spam_verdicts([_row(1), _row(2, "junk")], keep=5)
        await store.record_spam_verdicts([_row(3, "reject")], keep=5)
        recent = await store.recent_spam_verdicts(10)
        assert [r.recipient for r in recent] == [
            "user3@example.test", "user2@example.test", "user1@example.test"]
        assert recent[0] == _row(3, "reject")  # every field round-trips
        assert recent[2].tests == ("BAYES_50", "MISSING_DATE") and recent[1].tests == ()
        assert await store.spam_verdict_counts() == {"inbox": 1, "junk": 1, "reject": 1}

        for i in range(4, 13):  # past the bound: only the newest five stay
            await store.record_spam_verdicts([_row(i, "junk" if i % 3 else "inbox")], keep=5)
        kept = await store.recent_spam_verdicts(100)
        assert [r.recipient for r in kept] == [f"user{i}@example.test" for i in range(12, 7, -1)]
        assert await store.recent_spam_verdicts(2) == kept[:2]
        counts = await store.spam_verdict_counts()
        assert counts == {"inbox": 4, "junk": 7, "reject": 1} and sum(counts.values()) == 12

        other = make_store()  # another node on the same data sees them
        await other.open()
        try:
            assert await other.recent_spam_verdicts(1) == kept[:1]
            await other.record_spam_verdicts([_row(13, "reject")], keep=5)
        finally:
            await other.close()
        assert (await store.spam_verdict_counts())["reject"] == 2
        assert len(await store.recent_spam_verdicts(100)) == 5
    finally:
        await store.close()
