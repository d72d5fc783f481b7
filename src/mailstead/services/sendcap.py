"""The daily sending cap of new accounts, shared by SMTP submission, the webmail and the API,
so a fresh sign-up cannot become a spam cannon through any of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from mailstead.config import WebConfig
from mailstead.store.interfaces import Account


class SendingCapExceeded(Exception):
    """Sending to these recipients would pass today's cap; the message says what and when."""


class SendingCap:
    def __init__(self, cfg: WebConfig) -> None:
        self.cfg = cfg
        # (account id, UTC date) -> recipients sent to that day. Per process: a node restart
        # forgets the day's count (the cap is a brake on abuse, not an accounting record).
        self._sent: dict[tuple[int, str], int] = {}

    def is_new_account(self, account: Account, now: datetime | None = None) -> bool:
        now = now or datetime.now(UTC)
        created = account.created if account.created.tzinfo else account.created.replace(
            tzinfo=UTC
        )
        return not account.is_admin and now - created < timedelta(days=self.cfg.new_account_days)

    @staticmethod
    def _today() -> str:
        return datetime.now(UTC).date().isoformat()

    def check(self, account: Account, count: int) -> None:
        """Raises SendingCapExceeded if ``count`` more recipients would pass the cap."""
        cap = self.cfg.new_account_daily_cap
        if cap == 0 or not self.is_new_account(account):
            return
        used = self._sent.get((account.id, self._today()), 0)
        if used + count > cap:
            raise SendingCapExceeded(
                f"new accounts may send to {cap} recipients a day during their first "
                f"{self.cfg.new_account_days} days; {used} used today, this message has "
                f"{count}. The limit resets at midnight UTC."
            )

    def record(self, account: Account, count: int) -> None:
        today = self._today()
        key = (account.id, today)
        self._sent[key] = self._sent.get(key, 0) + count
        for stale in [k for k in self._sent if k[1] != today]:
            del self._sent[stale]


def sending_cap(extra: dict[str, Any], cfg: WebConfig) -> SendingCap:
    """The process's daily sending cap of new accounts, kept in the services' ``extra`` (made
    on first use in tests that build services without starting them)."""
    cap = extra.get("sendcap")
    if not isinstance(cap, SendingCap):
        cap = extra["sendcap"] = SendingCap(cfg)
    return cap
