"""Failed-login limiter shared by SMTP, IMAP, POP3 and the web: per IP and per account.

Each failure doubles a delay (starting at ``failure_delay``); ``max_failures`` failures within the
lockout window lock the key out for ``lockout_seconds``. A success clears the account's count
(not the IP's: one good password must not unlock a brute force from that address).
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class _Record:
    failures: int = 0
    last_failure: float = 0.0
    locked_until: float = 0.0


class AuthLimiter:
    MAX_DELAY = 8.0

    def __init__(
        self,
        max_failures: int,
        lockout_seconds: float,
        failure_delay: float,
    ) -> None:
        self.max_failures = max_failures
        self.lockout_seconds = lockout_seconds
        self.failure_delay = failure_delay
        self._records: dict[str, _Record] = {}

    @staticmethod
    def _now() -> float:
        return time.monotonic()

    def _get(self, key: str) -> _Record:
        now = self._now()
        rec = self._records.get(key)
        if rec is None or (
            rec.locked_until < now and now - rec.last_failure > self.lockout_seconds
        ):
            rec = _Record()
            self._records[key] = rec
        return rec

    def is_locked(self, *keys: str) -> bool:
        now = self._now()
        return any(self._get(k).locked_until > now for k in keys)

    def record_failure(self, *keys: str) -> float:
        """Counts a failure for each key; returns the delay the caller should wait."""
        now = self._now()
        delay = 0.0
        for key in keys:
            rec = self._get(key)
            rec.failures += 1
            rec.last_failure = now
            if rec.failures >= self.max_failures:
                rec.locked_until = now + self.lockout_seconds
            delay = max(delay, self.failure_delay * 2 ** (rec.failures - 1))
        self._prune(now)
        return min(delay, self.MAX_DELAY)

    def record_success(self, account_key: str) -> None:
        self._records.pop(account_key, None)

    def _prune(self, now: float) -> None:
        if len(self._records) < 10_000:
            return
        stale = [
            k
            for k, r in self._records.items()
            if r.locked_until < now and now - r.last_failure > self.lockout_seconds
        ]
        for k in stale:
            del self._records[k]
