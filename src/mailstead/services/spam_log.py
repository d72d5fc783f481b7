"""The spam log: the last verdicts the MX gave, for the admin console's spam panel.

One row per local recipient of each judged message, written when the message is filed
(``delivered_rows``: "inbox" or "junk") or refused at DATA for its score (``refused``: "reject").
The store keeps the newest ``KEEP`` rows (older ones are pruned as new ones come) and counts
every verdict per action. Writing the log never fails a delivery: the rows of a filed
message are committed by the delivery service in the message's own transaction, but as an
operation of their own that fails alone (SQLite), or after the message (other stores); an
error only costs the log line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mailstead.core.models import SPAM_LOG_KEEP
from mailstead.obs import log_event
from mailstead.services.spam import SpamVerdict
from mailstead.store.interfaces import MetadataStore, SpamAction, SpamVerdictRow

if TYPE_CHECKING:  # delivery imports this module: it writes the rows of a filed message
    from mailstead.services.delivery import InboundRecipient

KEEP = SPAM_LOG_KEEP  # rows kept in the store
RECENT = 20  # rows the admin console shows


def _first_address(recipients: Sequence[InboundRecipient]) -> dict[int, str]:
    """Account id -> the address the message named for it first (an alias, maybe)."""
    found: dict[int, str] = {}
    for recipient in recipients:
        for account in recipient.local:
            found.setdefault(account.id, recipient.address)
    return found


async def write(store: MetadataStore, rows: Sequence[SpamVerdictRow]) -> None:
    if not rows:
        return
    try:
        await store.record_spam_verdicts(rows, KEEP)
    except Exception as exc:  # the mail matters more than its log line
        log_event("spam.log_failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}")


def delivered_rows(recipients: Sequence[InboundRecipient], verdicts: Mapping[int, SpamVerdict],
                   junk: bool = False) -> list[SpamVerdictRow]:
    """The verdicts of a filed message: "junk" where it went to Junk (spam, or every copy
    by ``junk``: a DMARC quarantine), else "inbox". The delivery service stores them with
    the message (``DeliveryService.deliver``'s ``verdict_log``)."""
    now = datetime.now(UTC)
    rows = []
    for account_id, address in _first_address(recipients).items():
        verdict = verdicts.get(account_id)
        if verdict is None:
            continue
        action: SpamAction = "junk" if junk or verdict.is_spam else "inbox"
        rows.append(SpamVerdictRow(now, address, round(verdict.score, 2), verdict.tests,
                                   action))
    return rows


async def refused(store: MetadataStore, recipients: Sequence[InboundRecipient],
                  verdict: SpamVerdict) -> None:
    """A message refused for its score: one "reject" row per recipient."""
    now = datetime.now(UTC)
    await write(store, [SpamVerdictRow(now, r.address, round(verdict.score, 2), verdict.tests,
                                        "reject") for r in recipients])


async def panel(store: MetadataStore) -> tuple[dict[str, int], list[dict[str, object]]]:
    """(verdicts per action, the last ``RECENT`` verdicts as plain values) for the console."""
    counts = await store.spam_verdict_counts()
    recent = await store.recent_spam_verdicts(RECENT)
    return ({action: counts.get(action, 0) for action in ("inbox", "junk", "reject")},
            [{"at": r.at.isoformat(timespec="seconds"), "recipient": r.recipient,
              "score": r.score, "tests": list(r.tests), "action": r.action} for r in recent])
