"""Failed-login limiter shared by SMTP, IMAP, POP3, DMAP, the web login and the JSON API.

The policy blocks the *sources* of failures, never the account itself, so nobody can lock a
user out by failing on purpose (README "Login protection" says the same for admins):

a. Address. Each failure from one IP address delays its answer (``failure_delay``, doubled per
   failure, at most ``MAX_DELAY``). ``max_failures`` failures, each within ``lockout_seconds`` of
   the one before, block the address for ``lockout_seconds``: every login from it is refused with
   the temporary code, *without checking the password* (a right password would otherwise still
   get in and turn the block into a guessing oracle) -- fail2ban's ban and Dovecot's
   auth_penalty, in one. A success does not clear the count. Guesses made in parallel count
   before their answers: once an address has failed, its distinct passwords still being
   checked count as failures too (the same password sent on many connections at once, as
   Thunderbird and mbsync do, counts once).
b. Network (/24 for IPv4, /64 for IPv6: what one customer usually holds). Failures from all its
   addresses add up; ``network_max_failures`` block the network: its addresses that have failed
   themselves are refused, and those that have not are let through one at a time per network,
   ``PROBATION_SPACING`` apart. So an attacker rotating addresses gets one guess per address and
   at most about one a second from the whole network, while a legitimate user next door waits
   at most about a second (longer only while the attack runs concurrently; past
   ``MAX_QUEUE_WAIT`` the attempt is told to try later).
c. Account. ``account_max_failures_per_minute`` failures on one account, from anywhere, put it
   "under attack" until fewer than that many are less than a minute old. Meanwhile addresses
   that have failed on that account are refused (temporary code), and the others are let
   through one at a time per account, ``PROBATION_SPACING`` apart, like (b).

An address that logged in to an account successfully in the last ``TRUSTED_SECONDS`` is only
ever held back by its own failures (a): its owner is not queued behind someone else's attack.

Memory is bounded: the records live in one map in least-recently-used order, capped at
``max_records`` (and the trusted pairs in another); expired records are dropped from its front
as new ones come, and when it is full the least recently touched record goes.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from mailstead.config import AuthConfig

ACCOUNT_WINDOW = 60.0  # seconds: the "per minute" of account_max_failures_per_minute


@dataclass(slots=True)
class _Record:
    failures: int = 0
    last_failure: float = 0.0
    blocked_until: float = 0.0
    next_slot: float = 0.0  # the probation queue of (b) and (c): when the next one may go
    recent: list[float] = field(default_factory=list)  # (c): times of the latest failures
    pending: dict[str, int] = field(default_factory=dict)  # (a): guesses being checked
    failed_guesses: list[str] = field(default_factory=list)  # (a): the latest wrong ones


@dataclass(frozen=True)
class Verdict:
    """What ``admit`` decided: refused (with a Retry-After in seconds), or go after ``wait``."""

    refused: bool
    wait: float = 0.0
    retry_after: float = 0.0
    reason: str = ""


@functools.lru_cache(maxsize=4096)
def source_of(ip: str) -> tuple[str, str]:
    """An address in one spelling (IPv4-mapped IPv6 is the IPv4 address, no zone) and its
    network: the /24 (IPv4) or /64 (IPv6). A non-address is its own network."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip, ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    text = str(addr)
    if isinstance(addr, ipaddress.IPv4Address):
        return text, text.rsplit(".", 1)[0] + ".0/24"
    return text, f"{ipaddress.IPv6Address(addr.packed[:8] + bytes(8))}/64"


def network_of(ip: str) -> str:
    return source_of(ip)[1]


def normal_ip(ip: str) -> str:
    return source_of(ip)[0]


class AuthLimiter:
    MAX_DELAY = 8.0
    PROBATION_SPACING = 1.0
    MAX_QUEUE_WAIT = 10.0
    TRUSTED_SECONDS = 30 * 86400.0

    def __init__(
        self,
        max_failures: int = 5,
        lockout_seconds: float = 300,
        failure_delay: float = 0.5,
        *,
        network_max_failures: int = 20,
        account_max_failures_per_minute: int = 10,
        max_records: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.lockout_seconds = float(lockout_seconds)
        self.failure_delay = failure_delay
        self.network_max_failures = network_max_failures
        self.account_max_failures = account_max_failures_per_minute
        self.max_records = max_records
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._trusted: OrderedDict[str, float] = OrderedDict()  # account|ip -> expiry

    @classmethod
    def from_config(cls, cfg: AuthConfig) -> AuthLimiter:
        return cls(
            cfg.max_failures, cfg.lockout_seconds, cfg.failure_delay,
            network_max_failures=cfg.network_max_failures,
            account_max_failures_per_minute=cfg.account_max_failures_per_minute,
        )

    # -- records --

    def _expired(self, rec: _Record, now: float) -> bool:
        return (
            rec.blocked_until <= now
            and rec.next_slot <= now
            and not rec.pending
            and now - rec.last_failure > max(self.lockout_seconds, ACCOUNT_WINDOW)
        )

    def _peek(self, key: str, now: float) -> _Record | None:
        rec = self._records.get(key)
        if rec is None:
            return None
        if self._expired(rec, now):
            del self._records[key]
            return None
        self._records.move_to_end(key)  # least recently used goes first when memory is full
        return rec

    def _get(self, key: str, now: float) -> _Record:
        rec = self._peek(key, now)
        if rec is None:
            self._prune(now, room=1)
            rec = self._records[key] = _Record(last_failure=now)  # lives a window at least
        return rec

    def _prune(self, now: float, room: int) -> None:
        """Amortised O(1): the map is in least-recently-used order, so expired records gather
        at its front; a few go with each new record, and the cap drops the oldest."""
        for _ in range(4):
            oldest = next(iter(self._records.items()), None)
            if oldest is None or not self._expired(oldest[1], now):
                break
            del self._records[oldest[0]]
        while self._records and len(self._records) + room > self.max_records:
            self._records.popitem(last=False)

    def _failures(self, rec: _Record | None, now: float) -> int:
        """Failures in the current streak (each within lockout_seconds of the one before)."""
        if rec is None or now - rec.last_failure > self.lockout_seconds:
            return 0
        return rec.failures

    def _under_attack(self, rec: _Record | None, now: float) -> bool:
        if rec is None or len(rec.recent) < self.account_max_failures:
            return False
        return rec.recent[-self.account_max_failures] > now - ACCOUNT_WINDOW

    def _is_trusted(self, account: str, ip: str, now: float) -> bool:
        key = f"{account}|{ip}"
        expiry = self._trusted.get(key)
        if expiry is None:
            return False
        if expiry <= now:
            del self._trusted[key]
            return False
        return True

    def _slot(self, rec: _Record, now: float) -> float | None:
        """Takes the next place in a probation queue: the wait, or None if it is too long."""
        start = max(now, rec.next_slot)
        if start - now > self.MAX_QUEUE_WAIT:
            return None
        rec.next_slot = start + self.PROBATION_SPACING
        return start - now

    # -- the three calls a login makes --

    def admit(self, ip: str, account: str, guess: str = "") -> Verdict:
        """Called before a password is checked. ``guess`` identifies the credentials (a keyed
        digest) so parallel attempts with the same password count once; when the verdict is
        not refused, the caller must end with ``record_success`` or ``record_failure`` (or
        ``release`` if it gives up) with the same arguments."""
        now = self._clock()
        ip, network = source_of(ip)
        ip_rec = self._peek(f"ip:{ip}", now)
        if ip_rec is not None and ip_rec.blocked_until > now:
            return Verdict(True, retry_after=ip_rec.blocked_until - now, reason="address")
        ip_failures = self._failures(ip_rec, now)
        if ip_rec is not None and ip_failures > 0:
            in_flight = len(ip_rec.pending) - (1 if guess in ip_rec.pending else 0)
            if ip_failures + in_flight >= self.max_failures:
                return Verdict(True, retry_after=self.PROBATION_SPACING, reason="address")
        waits = [0.0]
        if not self._is_trusted(account, ip, now):
            net = self._peek(f"net:{network}", now)
            if net is not None and net.blocked_until > now:
                if ip_failures > 0:
                    return Verdict(True, retry_after=net.blocked_until - now, reason="network")
                wait = self._slot(net, now)
                if wait is None:
                    return Verdict(True, retry_after=self.MAX_QUEUE_WAIT, reason="network")
                waits.append(wait)
            acct = self._peek(f"acct:{account}", now)
            if self._under_attack(acct, now):
                assert acct is not None
                if self._failures(self._peek(f"pair:{account}|{ip}", now), now) > 0:
                    return Verdict(True, retry_after=ACCOUNT_WINDOW, reason="account")
                wait = self._slot(acct, now)
                if wait is None:
                    return Verdict(True, retry_after=self.MAX_QUEUE_WAIT, reason="account")
                waits.append(wait)
        ip_rec = self._get(f"ip:{ip}", now)
        ip_rec.pending[guess] = ip_rec.pending.get(guess, 0) + 1
        return Verdict(False, wait=max(waits))

    def release(self, ip: str, guess: str = "") -> None:
        """The attempt admitted for ``guess`` is over (success and failure call this)."""
        rec = self._records.get(f"ip:{normal_ip(ip)}")
        if rec is None or guess not in rec.pending:
            return
        rec.pending[guess] -= 1
        if rec.pending[guess] <= 0:
            del rec.pending[guess]

    def record_failure(self, ip: str, account: str, guess: str = "") -> float:
        """Counts a failure against the address, its network, the account and the pair;
        returns how long the caller should wait before answering. The same wrong password
        again from the same address (a mail client with an outdated saved password) is not
        counted again: it tells the guesser nothing new (Dovecot's auth_penalty does the
        same)."""
        now = self._clock()
        ip, network = source_of(ip)
        self.release(ip, guess)
        ip_rec = self._get(f"ip:{ip}", now)
        if self._failures(ip_rec, now) == 0:
            ip_rec.failed_guesses.clear()
        tag = guess[:16]
        if not tag or tag not in ip_rec.failed_guesses:
            if tag:
                ip_rec.failed_guesses = [*ip_rec.failed_guesses, tag][-8:]
            self._count(f"ip:{ip}", now, self.max_failures)
            self._count(f"net:{network}", now, self.network_max_failures)
            self._count(f"pair:{account}|{ip}", now, None)
            acct = self._get(f"acct:{account}", now)
            acct.last_failure = now
            acct.recent = [*acct.recent, now][-self.account_max_failures:]
        doublings = min(max(ip_rec.failures, 1) - 1, 30)  # 2.0 ** n overflows past n = 1023
        return min(self.failure_delay * 2.0 ** doublings, self.MAX_DELAY)

    def _count(self, key: str, now: float, limit: int | None) -> _Record:
        rec = self._get(key, now)
        rec.failures = self._failures(rec, now) + 1
        rec.last_failure = now
        if limit is not None and rec.failures >= limit:
            rec.blocked_until = now + self.lockout_seconds
        return rec

    def record_success(self, ip: str, account: str, guess: str = "") -> None:
        """The address is trusted for the account from now on; its failures on that account
        are forgotten (not its failures as an address: one good password must not unlock a
        brute force from there)."""
        now = self._clock()
        ip = normal_ip(ip)
        self.release(ip, guess)
        self._records.pop(f"pair:{account}|{ip}", None)
        key = f"{account}|{ip}"
        self._trusted[key] = now + self.TRUSTED_SECONDS
        self._trusted.move_to_end(key)
        while len(self._trusted) > self.max_records:
            self._trusted.popitem(last=False)

    def failures_from(self, ip: str) -> int:
        """Failures counted against an address now (for tests, metrics and the admin)."""
        now = self._clock()
        return self._failures(self._peek(f"ip:{normal_ip(ip)}", now), now)

    def __len__(self) -> int:
        """Records held (for tests and metrics)."""
        return len(self._records) + len(self._trusted)
