"""The spam service: judges what the MX takes, for each recipient, and trains their filter.

A verdict is the rules' score (spam/rules.py, the same for every recipient) plus what the
recipient's own learning filter says (spam/bayes.py), once they have trained enough mail
(``spam.bayes_min_spam`` / ``bayes_min_ham``; until then it would guess). The verdict travels
as SpamAssassin's header fields, which mail clients and filters already understand:
X-Spam-Flag (YES / NO), X-Spam-Score, X-Spam-Level (a star per point) and X-Spam-Status.
Fields of those names that arrive with a message are removed first: a sender must not be
able to vouch for itself.

Training happens where users say what they think: moving a message into Junk counts it as
spam, moving it out of Junk (not to Trash) as good, and so do the $Junk and $NotJunk keywords
that Thunderbird and other clients set (RFC 5788's registry). The store remembers which
messages were trained, so one moved back and forth counts once, in its latest class.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from mailstead.config import SpamConfig
from mailstead.obs import log_event
from mailstead.spam import bayes, rules, tokenize
from mailstead.store.interfaces import Account, BlobStore, MetadataStore

TOTALS_SECONDS = 60.0  # how long an account's trained-message counts are reused
TOTALS_ENTRIES = 10_000
_SPAM_FIELD = re.compile(rb"(?im)^X-Spam-[A-Za-z-]*:.*(?:\r?\n[ \t].*)*\r?\n")


@dataclass(frozen=True, slots=True)
class SpamVerdict:
    score: float
    is_spam: bool
    tests: tuple[str, ...]  # names of the rules that matched
    required: float
    note: str = ""  # why an allow or block list overrode the score (services/sender_lists)

    def header_fields(self) -> bytes:
        flag = "YES" if self.is_spam else "NO"
        stars = "*" * max(0, min(int(self.score), 50))
        tests = ",".join(self.tests) or "none"
        note = f"X-Spam-List: {_printable(self.note)}\r\n" if self.note else ""
        return (f"X-Spam-Flag: {flag}\r\nX-Spam-Score: {self.score:.1f}\r\n"
                f"X-Spam-Level: {stars}\r\nX-Spam-Status: {'Yes' if self.is_spam else 'No'}, "
                f"score={self.score:.1f} required={self.required:.1f}\r\n\ttests={tests}\r\n"
                f"{note}").encode("ascii")


def _printable(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:300]


def strip_spam_fields(message: bytes) -> bytes:
    """The message without X-Spam-* header fields (only in the header, not the body)."""
    end = message.find(b"\r\n\r\n")
    if end < 0 or b"x-spam-" not in message[:end].lower():
        return message
    return _SPAM_FIELD.sub(b"", message[: end + 2]) + message[end + 2 :]


class SpamService:
    def __init__(self, cfg: SpamConfig, store: MetadataStore, blobs: BlobStore) -> None:
        self.cfg = cfg
        self.store = store
        self.blobs = blobs
        self._totals: dict[int, tuple[float, tuple[int, int]]] = {}

    def rules_verdict(self, message: bytes, auth_results: bytes,
                      trusted_forward: bool = False) -> SpamVerdict:
        hits = rules.score(message, auth_results, datetime.now(UTC), trusted_forward)
        return self._verdict([h.name for h in hits], sum(h.score for h in hits))

    def with_points(self, base: SpamVerdict, points: float, tests: Sequence[str]
                    ) -> SpamVerdict:
        """``base`` with the points and test names of other checks (plug-ins) added."""
        return self._verdict((*base.tests, *tests), base.score + points)

    def refuses(self, verdict: SpamVerdict) -> bool:
        """Whether the MX should refuse the message outright (by the rules alone)."""
        return bool(self.cfg.reject_score) and verdict.score >= self.cfg.reject_score

    async def judge(self, message: bytes, base: SpamVerdict, accounts: Sequence[Account]
                    ) -> dict[int, SpamVerdict]:
        """Each recipient account's verdict: ``base`` (the rules) plus their filter's."""
        verdicts = {a.id: base for a in accounts}
        if not self.cfg.bayes:
            return verdicts
        trained = []
        for account in accounts:
            spam_n, ham_n = await self._totals_of(account.id)
            if spam_n >= self.cfg.bayes_min_spam and ham_n >= self.cfg.bayes_min_ham:
                trained.append((account, spam_n, ham_n))
        if not trained:
            return verdicts
        hashes = tokenize.hashed(tokenize.tokens(message))
        for account, spam_n, ham_n in trained:
            counts = await self.store.spam_token_counts(account.id, hashes)
            name, points = bayes.band(bayes.spam_probability(counts, spam_n, ham_n))
            verdicts[account.id] = self._verdict((*base.tests, name), base.score + points)
        return verdicts

    def _verdict(self, names: Sequence[str], total: float) -> SpamVerdict:
        total = round(total, 1)
        return SpamVerdict(total, total >= self.cfg.junk_score, tuple(sorted(names)),
                           self.cfg.junk_score)

    async def _totals_of(self, account_id: int) -> tuple[int, int]:
        now = time.monotonic()
        cached = self._totals.get(account_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        totals = await self.store.spam_totals(account_id)
        if len(self._totals) >= TOTALS_ENTRIES:
            self._totals.clear()
        self._totals[account_id] = (now + TOTALS_SECONDS, totals)
        return totals

    async def train(self, account_id: int, blob_ids: Sequence[str], is_spam: bool) -> int:
        """Trains the account's filter with these messages; returns how many changed it.
        A message that cannot be read is skipped (training must never fail what a user did)."""
        if not self.cfg.bayes:
            return 0
        changed = 0
        for blob_id in dict.fromkeys(blob_ids):
            try:
                data = await asyncio.to_thread(self.blobs.get, blob_id)
                hashes = await asyncio.to_thread(_hashes_of, data)
                if await self.store.train_spam(account_id, blob_id, hashes, is_spam):
                    changed += 1
            except Exception as exc:
                log_event("spam.train_failed", logging.WARNING, account=account_id,
                          blob=blob_id, error=f"{type(exc).__name__}: {exc}")
        if changed:
            self._totals.pop(account_id, None)
            log_event("spam.trained", account=account_id, messages=changed,
                      kind="spam" if is_spam else "ham")
        return changed


def _hashes_of(data: bytes) -> list[int]:
    return tokenize.hashed(tokenize.tokens(data))


def spam_service(services: object) -> SpamService | None:
    """The process's SpamService from ``services.extra`` (None when spam scoring is off)."""
    extra: dict[str, object] = getattr(services, "extra")  # noqa: B009
    found = extra.get("spam")
    return found if isinstance(found, SpamService) else None
