"""Accounts service: login (with rate limits and a short credential cache), recipient routing
(accounts, aliases, catch-all, plus-tags) and address ownership for submission."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mailstead.auth.passwords import dummy_hash, verify_password
from mailstead.auth.ratelimit import AuthLimiter
from mailstead.config import AuthConfig
from mailstead.core.addresses import Address, parse_address
from mailstead.core.errors import InvalidInput
from mailstead.mailsec import srs
from mailstead.obs import log_event
from mailstead.store.interfaces import Account, MetadataStore

if TYPE_CHECKING:
    from mailstead.services.forwarding import Forwarding

# How long a domain found local is taken as local without asking the store again. Only "yes"
# is kept: a domain added is seen at once, one removed through this process's store at once
# too (``accounts_version``), one removed by the CLI or another node within this time.
LOCAL_DOMAIN_SECONDS = 1.0
LOCAL_DOMAINS_KEPT = 1024


class AuthFailed(Exception):
    """Login refused. ``temporary`` is True when the limiter holds the source back (SMTP 454
    4.7.0, IMAP [UNAVAILABLE], POP3 [SYS/TEMP], HTTP 429 with ``retry_after`` seconds), False
    for bad credentials (SMTP 535 5.7.8, IMAP [AUTHENTICATIONFAILED], POP3 [AUTH], HTTP 401)."""

    def __init__(self, message: str, temporary: bool = False, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.temporary = temporary
        self.retry_after = retry_after


@dataclass
class Route:
    """Where mail for one RCPT goes: local accounts and/or remote addresses (alias targets)."""

    local: list[Account] = field(default_factory=list)
    remote: list[str] = field(default_factory=list)
    refusal: str = ""  # why an address of ours is refused (a forged SRS address), if it is

    @property
    def empty(self) -> bool:
        return not self.local and not self.remote


MAX_ALIAS_DEPTH = 8


class AccountService:
    def __init__(self, store: MetadataStore, cfg: AuthConfig, limiter: AuthLimiter,
                 cache_key: bytes | None = None) -> None:
        self.store = store
        self.cfg = cfg
        self.limiter = limiter
        # (password hash, keyed digest of the password) -> expiry. Keyed with a per-process
        # secret so the cache never holds anything that helps an attacker offline (the worker
        # processes of one serve share theirs: their limiters compare the same guesses).
        self._cache: dict[tuple[str, bytes], float] = {}
        self._cache_key = cache_key or secrets.token_bytes(32)
        self._verifying: dict[tuple[str, bytes], asyncio.Future[bool]] = {}
        # SRS reversal of bounces to forwarded mail (services/forwarding.py; wiring sets it).
        self.forwarding: Forwarding | None = None
        # domain -> (until when it is known local, the store's accounts_version then)
        self._local_domains: dict[str, tuple[float, int]] = {}

    # -- login --

    async def authenticate(self, username: str, password: str, remote_ip: str) -> Account:
        """Returns the account, or raises AuthFailed after the rate limiter's delay (the
        policy is in mailstead.auth.ratelimit: sources are blocked, accounts never are)."""
        try:
            address = parse_address(username).key
        except InvalidInput:
            address = username.lower()
        guess = hmac.new(self._cache_key, f"{address}\0{password}".encode("utf-8", "replace"),
                         hashlib.sha256).hexdigest()
        verdict = self.limiter.admit(remote_ip, address, guess)
        if verdict.refused:
            log_event("auth.locked", client=remote_ip, user=address, reason=verdict.reason,
                      retry_after=f"{verdict.retry_after:.0f}")
            raise AuthFailed("too many failed logins, try again later", temporary=True,
                             retry_after=verdict.retry_after)
        done = False
        try:
            if verdict.wait > 0:
                await asyncio.sleep(verdict.wait)
            account = await self.store.get_account(address)
            if account is not None and await self._password_ok(account.password_hash, password):
                self.limiter.record_success(remote_ip, address, guess)
                done = True
                return account
            if account is None:
                await asyncio.to_thread(verify_password, dummy_hash(), password)
            delay = self.limiter.record_failure(remote_ip, address, guess)
            done = True
        finally:
            if not done:  # cancelled (the client left) or the store failed
                self.limiter.release(remote_ip, guess)
        log_event("auth.failed", client=remote_ip, user=address, delay=f"{delay:.1f}")
        await asyncio.sleep(delay)
        raise AuthFailed("invalid credentials")

    async def _password_ok(self, password_hash: str, password: str) -> bool:
        digest = hmac.new(self._cache_key, password.encode("utf-8"), hashlib.sha256).digest()
        key = (password_hash, digest)
        now = time.monotonic()
        expiry = self._cache.get(key)
        if expiry is not None and expiry > now:
            return True
        # Clients that open several connections at once (mbsync, Thunderbird) log in with the
        # same credentials together: they share one hash computation.
        pending = self._verifying.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        pending = asyncio.ensure_future(
            asyncio.to_thread(verify_password, password_hash, password))
        self._verifying[key] = pending
        pending.add_done_callback(lambda _: self._verifying.pop(key, None))
        ok = await asyncio.shield(pending)  # a cancelled waiter leaves the hash to the others
        if ok and self.cfg.cache_seconds > 0:
            if len(self._cache) > 50_000:
                self._cache = {k: v for k, v in self._cache.items() if v > now}
            self._cache[key] = now + self.cfg.cache_seconds
        return ok

    # -- routing --

    async def is_local_domain(self, domain: str) -> bool:
        name = domain.lower()
        now = time.monotonic()
        version = getattr(self.store, "accounts_version", None)
        known = self._local_domains.get(name)
        if known is not None and known[0] > now and known[1] == version:
            return True  # every recipient of every session asks: no store read each time
        if await self.store.get_domain(name) is None:
            return False
        if isinstance(version, int):
            if len(self._local_domains) >= LOCAL_DOMAINS_KEPT:
                self._local_domains.clear()
            self._local_domains[name] = (now + LOCAL_DOMAIN_SECONDS, version)
        return True

    async def route(self, address: Address) -> Route:
        """Expands aliases (recursively, with a depth cap), then the catch-all. Plus-tags are
        stripped for lookup only. An empty Route means "no such user"."""
        route = Route()
        seen: set[str] = set()
        if self.forwarding is not None and srs.is_srs(address.local) \
                and await self.is_local_domain(address.domain):
            try:
                address = parse_address(await self.forwarding.reverse(address.local))
            except (srs.SrsError, InvalidInput) as exc:
                route.refusal = f"<{address}>: {exc}"
                return route
        await self._expand(address, route, seen, 0)
        return route

    async def _expand(self, address: Address, route: Route, seen: set[str], depth: int) -> None:
        key = address.without_tag().key
        if key in seen or depth > MAX_ALIAS_DEPTH:
            return
        seen.add(key)
        if not await self.is_local_domain(address.domain):
            route.remote.append(str(address))
            return
        account = await self.store.get_account(key)
        if account is not None:
            if all(a.id != account.id for a in route.local):
                route.local.append(account)
            return
        targets = await self.store.alias_destinations(key)
        if not targets:
            targets = await self.store.alias_destinations(f"@{address.domain}")
        for target in targets:
            try:
                parsed = parse_address(target)
            except InvalidInput:
                continue
            await self._expand(parsed, route, seen, depth + 1)

    async def owns_address(self, account: Account, address: Address) -> bool:
        """May ``account`` use ``address`` as its sender? Its own address (with any +tag) or an
        alias that delivers to it."""
        key = address.without_tag().key
        if key == account.address:
            return True
        destinations = await self.store.alias_destinations(key)
        return account.address in {d.lower() for d in destinations}
