"""Administrator operations: domains and the DNS records to publish, users and quotas,
aliases, the outbound queue (retry, recall) and live statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailstead import bootstrap
from mailstead.auth.passwords import check_password_rules, hash_password
from mailstead.core.addresses import normalize_domain, parse_address
from mailstead.core.errors import Conflict, InvalidInput, NotFound
from mailstead.mailsec import dnsrecords
from mailstead.mailsec.dkim_keys import dkim_keyring
from mailstead.obs import log_event
from mailstead.queue.manage import retry_now
from mailstead.queue.recall import RecallReport, recall_and_tell
from mailstead.store.interfaces import Account, QueueEntry
from mailstead.web.state import WebState

RECALL_WAIT = 20.0  # seconds to wait for a worker holding the entry before marking it


async def dns_records(state: WebState, domain: str) -> list[dnsrecords.Record]:
    """What to publish so the world can deliver to ``domain`` and trust its mail: the same
    records as ``mailstead dns``, with the ports of the listeners running now."""
    keys = await dkim_keyring(state.services).published(domain)
    return dnsrecords.expected_records(state.cfg, domain, keys,
                                       list(state.listener_ports().values()))


# -- domains, users, aliases --


async def add_domain(state: WebState, name: str) -> str:
    domain = normalize_domain(name)
    if await state.store.get_domain(domain) is not None:
        raise Conflict(f"domain {domain} exists already")
    await state.store.add_domain(domain)
    log_event("web.admin", action="domain_add", domain=domain)
    return domain


async def remove_domain(state: WebState, name: str) -> None:
    domain = normalize_domain(name)
    if await state.store.get_domain(domain) is None:
        raise NotFound(f"no domain {domain}")
    await state.store.remove_domain(domain)
    log_event("web.admin", action="domain_remove", domain=domain)


@dataclass(frozen=True, slots=True)
class UserRow:
    account: Account
    used_bytes: int
    used_messages: int


async def users(state: WebState, domain: str | None = None) -> list[UserRow]:
    rows = []
    for account in await state.store.list_accounts(domain):
        used_bytes, used_messages = await state.store.quota_usage(account.id)
        rows.append(UserRow(account, used_bytes, used_messages))
    return rows


async def add_user(state: WebState, address: str, password: str, *, quota_bytes: int = 0,
                   quota_messages: int = 0) -> Account:
    if quota_bytes < 0 or quota_messages < 0:
        raise InvalidInput("quotas cannot be negative")
    key = parse_address(address).key
    if await state.store.get_account(key) is not None:
        raise Conflict(f"{key} exists already")
    account = await bootstrap.add_user(
        state.store, address, password, min_password_length=state.cfg.auth.min_password_length,
        quota_bytes=quota_bytes, quota_messages=quota_messages,
    )
    log_event("web.admin", action="user_add", user=account.address)
    return account


async def require_user(state: WebState, address: str) -> Account:
    try:
        key = parse_address(address).key
    except InvalidInput:
        raise NotFound(f"no user {address}") from None
    account = await state.store.get_account(key)
    if account is None:
        raise NotFound(f"no user {key}")
    return account


async def remove_user(state: WebState, address: str, acting: Account) -> None:
    account = await require_user(state, address)
    if account.id == acting.id:
        raise InvalidInput("you cannot remove your own account while logged in with it")
    unused = await state.store.remove_account(account.address)
    for blob_id in unused:
        try:
            state.services.blobs.delete(blob_id)
        except Exception:  # a leftover file is only wasted space
            pass
    log_event("web.admin", action="user_remove", user=account.address)


async def update_user(state: WebState, address: str, *, quota_bytes: int | None = None,
                      quota_messages: int | None = None, password: str | None = None) -> Account:
    account = await require_user(state, address)
    if quota_bytes is not None or quota_messages is not None:
        new_bytes = account.quota_bytes if quota_bytes is None else quota_bytes
        new_messages = account.quota_messages if quota_messages is None else quota_messages
        if new_bytes < 0 or new_messages < 0:
            raise InvalidInput("quotas cannot be negative")
        await state.store.set_quota(account.address, new_bytes, new_messages)
    if password is not None:
        check_password_rules(password, state.cfg.auth.min_password_length)
        await state.store.set_password(account.address, hash_password(password))
    log_event("web.admin", action="user_update", user=account.address)
    return await require_user(state, account.address)


def alias_source(text: str) -> str:
    text = text.strip()
    if text.startswith("@"):
        return "@" + normalize_domain(text[1:])
    return parse_address(text).key


async def add_alias(state: WebState, source: str, destination: str) -> tuple[str, str]:
    src = alias_source(source)
    dst = str(parse_address(destination))
    domain = src.rpartition("@")[2]
    if await state.store.get_domain(domain) is None:
        raise InvalidInput(f"unknown domain {domain} (add it first)")
    if not src.startswith("@") and await state.store.get_account(src) is not None:
        raise Conflict(f"{src} is an account; an alias cannot shadow it")
    if dst.lower() in [d.lower() for d in await state.store.alias_destinations(src)]:
        raise Conflict(f"{src} already delivers to {dst}")
    await state.store.add_alias(src, dst)
    log_event("web.admin", action="alias_add", source=src, destination=dst)
    return src, dst


async def remove_alias(state: WebState, source: str, destination: str | None) -> int:
    src = alias_source(source)
    dst = str(parse_address(destination)) if destination else None
    try:
        removed = await state.store.remove_alias(src, dst)
    except NotFound:
        removed = 0
    if removed == 0:
        raise NotFound(f"no alias {src}" + (f" -> {dst}" if dst else ""))
    log_event("web.admin", action="alias_remove", source=src)
    return removed


# -- queue --


async def queue_entries(state: WebState, include_done: bool = False) -> list[QueueEntry]:
    entries = await state.store.list_queue(include_done)
    return sorted(entries, key=lambda e: e.created, reverse=True)


async def require_entry(state: WebState, queue_id: str) -> QueueEntry:
    entry = await state.store.get_queue_entry(queue_id) if len(queue_id) <= 64 else None
    if entry is None:
        raise NotFound(f"no queued message {queue_id}")
    return entry


async def retry(state: WebState, queue_id: str) -> QueueEntry:
    """Makes the entry due now (the queue workers pick it up on their next round)."""
    entry = await require_entry(state, queue_id)
    if entry.state == "done":
        raise InvalidInput(f"{queue_id} is finished; nothing to retry")
    await retry_now(state.store, queue_id)
    log_event("web.admin", action="queue_retry", queue_id=queue_id)
    return await require_entry(state, queue_id)


async def recall(state: WebState, queue_id: str, account: Account | None = None,
                 by: str | None = None) -> RecallReport:
    """Stops delivery to the recipients not reached yet and tells the sender (issue 6's
    recall). ``account``: only that account's own messages (others are "not found");
    ``by``: the administrator recalling (named in the report)."""
    entry = await require_entry(state, queue_id)
    if account is not None and entry.account_id != account.id:
        raise NotFound(f"no queued message {queue_id}")
    if entry.state == "done":
        raise InvalidInput(f"{queue_id} is finished; it can no longer be recalled")
    services = state.services
    report = await recall_and_tell(
        state.store, services.blobs, state.delivery, services.accounts, queue_id,
        account=account, by=by, wait_seconds=RECALL_WAIT,
    )
    log_event("web.recall", queue_id=queue_id, by=report.recalled_by)
    return report


# -- statistics --


async def statistics(state: WebState) -> dict[str, Any]:
    """Counters since this process started, and what is happening now (services/metrics.py,
    which /metrics and StatsD read too)."""
    return await state.services.statistics()
