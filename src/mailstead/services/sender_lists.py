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

CACHE_SECONDS = 1.0  # how long one process reuses an account's entries
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


def decide(entries: Sequence[ListEntry], senders: Sequence[tuple[str, str]], client_ip: str,
           trust_addresses: bool = True) -> Decision | None:
    """The deciding entry for mail from ``senders`` ((label, address) pairs, e.g. ("sender",
    MAIL FROM)) sent from ``client_ip``, or None when no entry matches."""
    ip = _ip(client_ip) if client_ip else None
    keys = []
    for label, address in senders:
        try:
            parsed = parse_address(address)
        except InvalidInput:
            continue
        keys.append((label, parsed.without_tag().key, parsed.domain))
    best: tuple[tuple[int, int, int, int], Decision] | None = None
    for entry in entries:
        matched = ""
        if "/" in entry.pattern:
            if ip is not None:
                network = ipaddress.ip_network(entry.pattern)
                if ip.version == network.version and ip in network:
                    matched = f"client {client_ip}"
        elif entry.kind == "block" or trust_addresses:
            for label, key, domain in keys:
                if key == entry.pattern or domain == entry.pattern \
                        or domain.endswith("." + entry.pattern):
                    matched = f"{label} {key}"
                    break
        if matched:
            rank = _specificity(entry)
            if best is None or rank > best[0]:
                best = (rank, Decision(entry, matched))
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
        self._cache: dict[int, tuple[float, list[ListEntry]]] = {}
        self._any = (0.0, False)  # (until when, whether any entry exists)

    # -- editing (web, API, CLI) --

    async def entries(self, scope: Scope, owner: str) -> list[ListEntry]:
        return await self.store.list_entries(scope, owner)

    async def add(self, scope: Scope, owner: str, kind: str, pattern: str,
                  action: str = "") -> ListEntry:
        kind, pattern, action = normalize_entry(kind, pattern, action)
        entry = await self.store.add_list_entry(scope, owner, kind, pattern, action,
                                                self.cfg.max_entries)
        self._forget()
        return entry

    async def remove(self, scope: Scope, owner: str, kind: str, pattern: str) -> int:
        kind, pattern, _action = normalize_entry(kind, pattern)
        removed = await self.store.remove_list_entry(scope, owner, kind, pattern)
        self._forget()
        return removed

    def _forget(self) -> None:
        """Changes made through this process count at once (other processes: within
        CACHE_SECONDS)."""
        self._cache.clear()
        self._any = (0.0, False)

    # -- deciding --

    async def _of(self, accounts: Sequence[Account]) -> dict[int, list[ListEntry]]:
        now = time.monotonic()
        if self._any[0] <= now:  # most sites have no lists: one look a second, not one a RCPT
            self._any = (now + CACHE_SECONDS, await self.store.any_list_entries())
        if not self._any[1]:
            return {}
        found: dict[int, list[ListEntry]] = {}
        missing = []
        for account in accounts:
            cached = self._cache.get(account.id)
            if cached is not None and cached[0] > now:
                found[account.id] = cached[1]
            else:
                missing.append(account.id)
        if missing:
            fresh = await self.store.entries_for_accounts(missing)
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            for account_id, entries in fresh.items():
                self._cache[account_id] = (now + CACHE_SECONDS, entries)
                found[account_id] = entries
        return found

    async def rcpt_refusal(self, accounts: Sequence[Account], sender: str,
                           client_ip: str) -> Decision | None:
        """The block entry refusing this recipient (all its accounts block), or None."""
        if not accounts:
            return None
        lists = await self._of(accounts)
        decisions = [decide(lists.get(a.id, ()), [("sender", sender)], client_ip)
                     for a in accounts]
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
            decision = decide(lists.get(account.id, ()), senders, client_ip, not dmarc_failed)
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
