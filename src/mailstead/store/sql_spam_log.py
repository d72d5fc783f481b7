"""SQL operations on the last spam verdicts and their counts per action (``op(db, ...)``),
for the admin console's spam panel (services/spam_log.py records them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from mailstead.store.interfaces import SpamAction, SpamVerdictRow
from mailstead.store.sql_base import Db, from_micros, to_micros


def record_spam_verdicts(db: Db, rows: Sequence[SpamVerdictRow], keep: int) -> None:
    for row in rows:
        db.run("INSERT INTO spam_verdicts (at, recipient, score, tests, action) "
               "VALUES (?, ?, ?, ?, ?)",
               (to_micros(row.at), row.recipient, row.score, " ".join(row.tests), row.action))
        db.run("INSERT INTO spam_verdict_counts (action, n) VALUES (?, 1) "
               "ON CONFLICT (action) DO UPDATE SET n = spam_verdict_counts.n + 1",
               (row.action,))
    # Bounded: the rows older than the newest ``keep`` go (ids only grow).
    edge = db.value("SELECT id FROM spam_verdicts ORDER BY id DESC LIMIT 1 OFFSET ?",
                    (max(keep, 1) - 1,))
    if edge is not None:
        db.run("DELETE FROM spam_verdicts WHERE id < ?", (edge,))


def recent_spam_verdicts(db: Db, limit: int) -> list[SpamVerdictRow]:
    found = db.rows("SELECT at, recipient, score, tests, action FROM spam_verdicts "
                    "ORDER BY id DESC LIMIT ?", (limit,))
    return [SpamVerdictRow(at=from_micros(r[0]), recipient=str(r[1]), score=float(r[2]),
                           tests=tuple(str(r[3]).split()), action=cast(SpamAction, r[4]))
            for r in found]


def spam_verdict_counts(db: Db) -> dict[str, int]:
    return {str(a): int(n) for a, n in
            db.rows("SELECT action, n FROM spam_verdict_counts ORDER BY action")}
