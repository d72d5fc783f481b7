"""Allow and block lists of senders, per user and per domain (set by an admin).

An entry names a sender address (``user@example.org``), a domain (``example.org``, which
covers its subdomains too) or a range of client IP addresses (``192.0.2.0/24``,
``2001:db8::/32``). What they do for mail arriving on the MX:

- a *block* entry with action ``refuse`` refuses the recipient at RCPT (550 5.7.1) when the
  envelope sender or the client address matches, and the message at end of data when only
  the From: header address matches (and every recipient refuses it; else it goes to Junk);
  with action ``junk`` the message is filed in the recipient's Junk folder;
- an *allow* entry keeps the message out of Junk whatever its spam score (still scored): an
  ``X-Spam-List`` field says which entry let it through. Address and domain entries only count
  when DMARC did not fail (a forged From must not ride on an allow entry); IP ranges always.

When several entries match, the most specific decides: a user's own entry over its domain's,
an address over a domain (a longer domain over a shorter), a domain over an IP range (a
narrower range over a wider); at a tie, block wins. So "block example.org, allow
boss@example.org" lets only the boss through.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from mailstead.config import ListsConfig, SpamConfig
from mailstead.core.addresses import normalize_domain, parse_address
from mailstead.core.errors import InvalidInput
from mailstead.proto.headers import from_fields, header_section, parse_mailbox_list
from mailstead.services.spam import SpamVerdict
from mailstead.store.interfaces import Account, ListEntry, MetadataStore

CACHE_SECONDS = 1.0  # how long one process goes without looking for changes of the lists
CACHE_ENTRIES = 10_000
MAX_PATTERN = 255

Kind = Literal["allow", "block"]
Scope = Literal["user", "domain"]


def normalize_entry(kind: str, pattern: str, action: str = "") -> tuple[Kind, str, str]:
    """(kind, pattern, action) as stored; InvalidInput with the reason when they are not
    valid. A block entry's action defaults to "refuse"."""
    kind = kind.strip().lower()
    if kind not in ("allow", "block"):
        raise InvalidInput(f"list must be 'allow' or 'block', not {kind[:20]!r}")
    text = pattern.strip()
    if not text:
        raise InvalidInput("empty entry")
    if len(text) > MAX_PATTERN:
        raise InvalidInput(f"entry longer than {MAX_PATTERN} characters")
    action = action.strip().lower()
    if kind == "allow":
        if action:
            raise InvalidInput("allow entries take no action")
    elif action not in ("", "refuse", "junk"):
        raise InvalidInput(f"action must be 'refuse' or 'junk', not {action[:20]!r}")
    checked: Kind = "allow" if kind == "allow" else "block"
    return checked, _pattern(text), action or ("refuse" if kind == "block" else "")


def _pattern(text: str) -> str:
    if "/" in text or ":" in text or text.replace(".", "").isdigit():
        try:
            return str(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            raise InvalidInput(f"not an IP address or range (CIDR): {exc}") from None
    if "@" in text.lstrip("@"):
        return parse_address(text).without_tag().key
    return normalize_domain(text.lstrip("@"))


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        found = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


@dataclass(frozen=True, slots=True)
class Decision:
    entry: ListEntry
    matched: str  # what matched, e.g. "sender x@example.org" or "client 192.0.2.7"

    @property
    def reason(self) -> str:
        owner = f"domain {self.entry.owner}" if self.entry.scope == "domain" \
            else self.entry.owner
        return f"{self.matched} is on the {self.entry.kind} list of {owner} " \
               f"({self.entry.pattern})"


def _specificity(entry: ListEntry) -> tuple[int, int, int, int]:
    pattern = entry.pattern
    if "/" in pattern:
        detail = (1, ipaddress.ip_network(pattern).prefixlen)
    elif "@" in pattern:
        detail = (3, 0)
    else:
        detail = (2, pattern.count(".") + 1)
    return (entry.scope == "user", *detail, entry.kind == "block")


Rank = tuple[int, int, int, int]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Matcher:
    """One account's entries (its own and its domain's) indexed for matching: addresses and
    domains by name (a sender's domain and each parent looked up), IP ranges parsed once."""

    __slots__ = ("addresses", "domains", "networks")

    def __init__(self, entries: Sequence[ListEntry]) -> None:
        self.addresses: dict[str, list[tuple[Rank, ListEntry]]] = {}
        self.domains: dict[str, list[tuple[Rank, ListEntry]]] = {}
        self.networks: list[tuple[Network, Rank, ListEntry]] = []
        for entry in entries:
            rank = _specificity(entry)
            if "/" in entry.pattern:
                self.networks.append((ipaddress.ip_network(entry.pattern), rank, entry))
            elif "@" in entry.pattern:
                self.addresses.setdefault(entry.pattern, []).append((rank, entry))
            else:
                self.domains.setdefault(entry.pattern, []).append((rank, entry))

    def __bool__(self) -> bool:
        return bool(self.addresses or self.domains or self.networks)

    def decide(self, senders: Sequence[tuple[str, str]], client_ip: str,
               trust_addresses: bool = True) -> Decision | None:
        """The deciding entry for mail from ``senders`` ((label, address) pairs, e.g.
        ("sender", MAIL FROM)) sent from ``client_ip``, or None when no entry matches."""
        best: tuple[Rank, Decision] | None = None

        def consider(rank: Rank, entry: ListEntry, matched: str) -> None:
            nonlocal best
            if best is None or rank > best[0]:
                best = (rank, Decision(entry, matched))

        if self.networks and client_ip:
            ip = _ip(client_ip)
            for network, rank, entry in self.networks:
                if ip is not None and ip.version == network.version and ip in network:
                    consider(rank, entry, f"client {client_ip}")
        if self.addresses or self.domains:
            for label, address in senders:
                try:
                    parsed = parse_address(address)
                except InvalidInput:
                    continue
                key = parsed.without_tag().key
                candidates = list(self.addresses.get(key, ()))
                labels = parsed.domain.split(".")
                for n in range(len(labels)):
                    candidates += self.domains.get(".".join(labels[n:]), ())
                for rank, entry in candidates:
                    if entry.kind == "block" or trust_addresses:
                        consider(rank, entry, f"{label} {key}")
        return None if best is None else best[1]


def header_from(message: bytes) -> str:
    """The single From: address of the message, or "" (none, several, unreadable)."""
    fields = from_fields(header_section(message))
    if len(fields) != 1:
        return ""
    try:
        found = parse_mailbox_list(fields[0])
    except InvalidInput:
        return ""
    return found[0] if len(found) == 1 else ""


class SenderLists:
    def __init__(self, store: MetadataStore, cfg: ListsConfig) -> None:
        self.store = store
        self.cfg = cfg
        # Each account's entries, kept while the lists' version stays the same; the version
        # is read again after CACHE_SECONDS, so a change made on another node counts by then.
        self._cache: dict[int, Matcher] = {}
        self._version = 0
        self._checked = 0.0

    # -- editing (web, API, CLI) --

    async def entries(self, scope: Scope, owner: str) -> list[ListEntry]:
        return await self.store.list_entries(scope, owner)

    async def add(self, scope: Scope, owner: str, kind: str, pattern: str,
                  action: str = "") -> ListEntry:
        kind, pattern, action = normalize_entry(kind, pattern, action)
        entry = await self.store.add_list_entry(scope, owner, kind, pattern, action,
                                                self.cfg.max_entries)
        self.forget()
        return entry

    async def remove(self, scope: Scope, owner: str, kind: str, pattern: str) -> int:
        kind, pattern, _action = normalize_entry(kind, pattern)
        removed = await self.store.remove_list_entry(scope, owner, kind, pattern)
        self.forget()
        return removed

    def forget(self) -> None:
        """Changes made through this process count at once (other processes: within
        CACHE_SECONDS)."""
        self._checked = 0.0

    # -- deciding --

    async def _of(self, accounts: Sequence[Account]) -> dict[int, Matcher]:
        now = time.monotonic()
        if self._checked <= now:  # one look a second at the version, whatever the traffic
            version = await self.store.lists_version()
            self._checked = now + CACHE_SECONDS
            if version != self._version:
                self._version = version
                self._cache.clear()
        if not self._version:
            return {}  # no list was ever set: the usual case costs nothing more
        found = {a.id: self._cache[a.id] for a in accounts if a.id in self._cache}
        missing = [a.id for a in accounts if a.id not in found]
        if missing:
            fresh = await self.store.entries_for_accounts(missing)
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            for account_id, entries in fresh.items():
                found[account_id] = self._cache[account_id] = Matcher(entries)
        return found

    async def rcpt_refusal(self, accounts: Sequence[Account], sender: str,
                           client_ip: str) -> Decision | None:
        """The block entry refusing this recipient (all its accounts block), or None."""
        if not accounts:
            return None
        lists = await self._of(accounts)
        decisions = [m.decide([("sender", sender)], client_ip) if (m := lists.get(a.id))
                     else None for a in accounts]
        first = decisions[0]
        if first is None or any(d is None or d.entry.kind != "block"
                                or d.entry.action != "refuse" for d in decisions):
            return None
        return first

    async def at_data(self, accounts: Sequence[Account], sender: str, message: bytes,
                      client_ip: str, dmarc_failed: bool) -> dict[int, Decision]:
        """The deciding entry of each account that has one, by the envelope sender, the From:
        address and the client's address."""
        lists = await self._of(accounts)
        if not any(lists.values()):
            return {}
        senders = [("sender", sender)]
        author = header_from(message)
        if author:
            senders.append(("From", author))
        found = {}
        for account in accounts:
            matcher = lists.get(account.id)
            decision = matcher.decide(senders, client_ip, not dmarc_failed) if matcher else None
            if decision is not None:
                found[account.id] = decision
        return found


def apply_decisions(decisions: dict[int, Decision], accounts: Sequence[Account],
                    verdicts: dict[int, SpamVerdict] | None, cfg: SpamConfig
                    ) -> dict[int, SpamVerdict] | None:
    """The spam verdicts with the lists' say: allowed senders are never spam, blocked ones
    (not refused) are; either way a note says which entry did it."""
    if not decisions:
        return verdicts
    out = dict(verdicts or {})
    for account in accounts:
        decision = decisions.get(account.id)
        if decision is None:
            continue
        base = out.get(account.id) or SpamVerdict(0.0, False, (), cfg.junk_score)
        is_spam = decision.entry.kind == "block"
        out[account.id] = replace(base, is_spam=is_spam, note=decision.reason)
    return out


def allows_any(decisions: dict[int, Decision]) -> bool:
    return any(d.entry.kind == "allow" for d in decisions.values())


def refusal(decisions: dict[int, Decision], accounts: Sequence[Account], has_remote: bool
            ) -> str:
    """Why the whole message is refused at end of data: every recipient is local and blocks
    it with action "refuse" (else those who block it get it in Junk); "" otherwise."""
    if has_remote or not accounts:
        return ""
    found = [decisions.get(a.id) for a in accounts]
    if all(d is not None and d.entry.kind == "block" and d.entry.action == "refuse"
           for d in found):
        first = found[0]
        assert first is not None
        return first.reason
    return ""


def sender_lists(services: object) -> SenderLists | None:
    """The process's SenderLists from ``services.extra`` (created by wiring.build)."""
    extra: dict[str, object] = getattr(services, "extra")  # noqa: B009
    found = extra.get("lists")
    return found if isinstance(found, SenderLists) else None
