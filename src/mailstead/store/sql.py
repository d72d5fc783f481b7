"""The SQL behind both metadata stores, written once: ``SqlStore``, the async MetadataStore.

The operations live by concern in ``sql_accounts`` (domains, accounts, aliases),
``sql_mailboxes`` (mailboxes, subscriptions, \\Recent, the POP3 lock, spam counts),
``sql_messages`` (messages, flags, expunge, copy, changes, sort fields) and ``sql_queue`` (the
outbound queue), over ``sql_base`` (the adapter, migrations, row conversions, blob references).

Every operation is a plain synchronous function ``op(db, ...)`` over a small ``Db`` adapter; the
SQLite and PostgreSQL stores differ only in how they run those functions (a group-committing
writer thread for SQLite, a connection pool in threads for PostgreSQL) and in the adapter that
turns ``?`` placeholders and driver errors into theirs. ``SqlStore`` holds the async methods of
``MetadataStore`` once: each hands an operation to ``_run_read`` / ``_run_write`` and, after a
write commits, publishes the touched mailboxes on the ChangeBus from the event loop.

Conventions: times are stored as BIGINT microseconds since the epoch (UTC); keywords as one
space-separated, sorted string; system flags as the SystemFlag bit mask. Operations that change
a mailbox lock its row first (``UPDATE mailboxes ... RETURNING`` or ``SELECT ... FOR UPDATE``) so
concurrent writers to one mailbox queue up on PostgreSQL; rows are locked in id order to avoid
deadlocks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, ParamSpec, TypeVar

from mailstead.store import sql_shared
from mailstead.store.changes import SETTINGS_CHANGED, ChangeBus
from mailstead.store.interfaces import (
    SORT_FIELDS,
    Account,
    Alias,
    Changes,
    CopyResult,
    Delivery,
    DkimKey,
    DkimKeySet,
    Domain,
    FlagState,
    FlagUpdate,
    ListEntry,
    Mailbox,
    MailboxStatus,
    MessageMeta,
    QueueEntry,
    SortFields,
    SpamVerdictRow,
)
from mailstead.store.sql_accounts import (
    add_account,
    add_alias,
    add_domain,
    alias_destinations,
    get_account,
    get_account_by_id,
    get_domain,
    list_accounts,
    list_aliases,
    list_domains,
    quota_usage,
    remove_account,
    remove_alias,
    remove_domain,
    set_password,
    set_quota,
)
from mailstead.store.sql_base import (
    Db,
    Op,
)
from mailstead.store.sql_lists import (
    add_list_entry,
    entries_for_accounts,
    list_entries,
    lists_version,
    remove_list_entry,
)
from mailstead.store.sql_mailboxes import (
    claim_recent,
    create_mailbox,
    delete_mailbox,
    first_recent_uid,
    get_mailbox,
    get_mailbox_by_id,
    list_mailboxes,
    list_subscriptions,
    lock_maildrop,
    mailbox_access_key,
    mailbox_status,
    rename_mailbox,
    reset_access_keys,
    set_subscribed,
    spam_token_counts,
    spam_totals,
    train_spam,
    unlock_maildrop,
)
from mailstead.store.sql_messages import (
    append_claiming_recent,
    blob_ids_after,
    blob_unused,
    changes_since,
    copy_messages,
    expunge,
    expunge_with_modseq,
    flags_of,
    get_messages,
    list_flags,
    reap_blobs,
    sort_columns,
    sort_fields,
    store_message,
    update_flags,
)
from mailstead.store.sql_queue import (
    claim_due,
    delete_queue_entry,
    enqueue,
    get_queue_entry,
    list_queue,
    make_due,
    recall_pending,
    update_queue_entry,
)
from mailstead.store.sql_sieve import (
    active_sieve_script,
    delete_global_sieve_script,
    delete_sieve_script,
    get_global_sieve_script,
    get_sieve_script,
    list_global_sieve_scripts,
    list_sieve_scripts,
    note_vacation_reply,
    put_global_sieve_script,
    put_sieve_script,
    rename_sieve_script,
    set_active_sieve_script,
)
from mailstead.store.sql_spam_log import (
    recent_spam_verdicts,
    record_spam_verdicts,
    spam_verdict_counts,
)

P = ParamSpec("P")
T = TypeVar("T")
# A STORE of up to this many UIDs is small enough for the event loop (_run_write's ``small``):
# a few hundred microseconds at most; a larger one (1:* on a big mailbox) goes to a thread.
SMALL_WRITE = 64

# ---------------------------------------------------------------------------------------------
# The async MetadataStore, written once over the backend's runners


@dataclass
class WriteResult:
    value: Any
    touched: set[int]


def _touch_settings(db: Db) -> None:
    db.touched.add(SETTINGS_CHANGED)


class SqlStore(ABC):
    """MetadataStore over the operations above. Subclasses provide open/close and the two
    runners; ``_run_write`` must return only after the transaction committed durably (or, for
    ``durable=False``, committed)."""

    backend: str
    changes_inline = False

    def __init__(self, changes: ChangeBus) -> None:
        self.changes = changes
        # Counts the changes to domains, accounts and aliases made through this object: a
        # cache of their lookups (recipient routes) whose entry is older drops it at once.
        # Changes made elsewhere (the CLI, another node) reach such caches by their age.
        self.accounts_version = 0

    def commit_marker(self) -> int | None:
        return None

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def _run_read(self, op: Callable[[Db], T]) -> T: ...

    @abstractmethod
    async def _run_write(
        self, op: Callable[[Db], T], before: Callable[[], None] | None = None,
        durable: bool = True, small: bool = False,
    ) -> tuple[T, set[int]]:
        """Runs ``op`` in a transaction and commits it (fsync'd); returns its result and the
        mailbox ids it touched. ``before`` runs first, in a thread (see
        ``store_message``); if it raises, so does this, with nothing written. ``durable``
        False (flag changes only, ``_write_flags``): committed and visible to every reader
        when it returns, but its commit does not wait for the disk. ``small``: the caller
        knows ``op`` does a bounded little work (a few rows), so a store may run it on the
        event loop itself; never for work that grows with the mailbox."""

    async def _read(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run_read(lambda db: op(db, *args, **kwargs))

    async def _write(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        value, touched = await self._run_write(lambda db: op(db, *args, **kwargs))
        if touched:
            self.changes.publish(touched)  # on the event loop, after the commit
        return value

    async def _write_flags(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``_write`` of a change of flags alone (STORE, a \\Recent claim), committed without
        waiting for the disk, as Dovecot's default (mail_fsync=optimized) does not fsync flag
        changes either: the fsync was most of a STORE's cost. The trade: a crash of the
        machine (power cut, kernel panic), or on PostgreSQL of the database server, may lose
        the flag changes of the last moments before it; a crash or SIGKILL of mailstead loses
        nothing (SQLite WAL with synchronous=NORMAL: the commit is written to the operating
        system; PostgreSQL's synchronous_commit=off: it is in the server's log buffers). The
        next durable commit (a delivery, an APPEND, an EXPUNGE) makes every earlier one
        durable too, both logs being written and synced in order. Message rows, EXPUNGE and
        every other write stay durable when acknowledged: files are deleted after an
        expunge commits."""
        value, touched = await self._run_write(
            lambda db: op(db, *args, **kwargs), None, durable=False)
        if touched:
            self.changes.publish(touched)
        return value

    async def _write_after(self, before: Callable[[], None] | None,
                           op: Callable[[Db], T], small: bool = False) -> T:
        """``_write`` of ``op`` with a blocking step run first in the writing thread."""
        value, touched = await self._run_write(op, before, small=small)
        if touched:
            self.changes.publish(touched)
        return value

    async def announce_settings_changed(self) -> None:
        """Tells the servers of this store (on SQLite the local ones, store/announce.py; on
        PostgreSQL every node) that settings changed here: they drop their caches of them."""
        await self._write(_touch_settings)

    async def _write_accounts(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``_write`` of a change to domains, accounts or aliases: counted in
        ``accounts_version`` (also when it fails: it may have committed before failing)."""
        try:
            return await self._write(op, *args, **kwargs)
        finally:
            self.accounts_version += 1

    # -- domains --
    async def add_domain(self, name: str) -> Domain:
        return await self._write_accounts(add_domain, name)

    async def get_domain(self, name: str) -> Domain | None:
        return await self._read(get_domain, name)

    async def list_domains(self) -> list[Domain]:
        return await self._read(list_domains)

    async def remove_domain(self, name: str) -> None:
        await self._write_accounts(remove_domain, name)

    # -- accounts --
    async def add_account(
        self,
        address: str,
        password_hash: str,
        *,
        quota_bytes: int = 0,
        quota_messages: int = 0,
        is_admin: bool = False,
    ) -> Account:
        return await self._write_accounts(
            add_account, address, password_hash, quota_bytes, quota_messages, is_admin
        )

    async def get_account(self, address: str) -> Account | None:
        return await self._read(get_account, address)

    async def get_account_by_id(self, account_id: int) -> Account | None:
        return await self._read(get_account_by_id, account_id)

    async def list_accounts(self, domain: str | None = None) -> list[Account]:
        return await self._read(list_accounts, domain)

    async def set_password(self, address: str, password_hash: str) -> None:
        await self._write_accounts(set_password, address, password_hash)

    async def set_quota(self, address: str, quota_bytes: int, quota_messages: int) -> None:
        await self._write_accounts(set_quota, address, quota_bytes, quota_messages)

    async def remove_account(self, address: str) -> list[str]:
        return await self._write_accounts(remove_account, address)

    async def quota_usage(self, account_id: int) -> tuple[int, int]:
        return await self._read(quota_usage, account_id)

    # -- aliases --
    async def add_alias(self, source: str, destination: str) -> Alias:
        return await self._write_accounts(add_alias, source, destination)

    async def remove_alias(self, source: str, destination: str | None = None) -> int:
        return await self._write_accounts(remove_alias, source, destination)

    async def list_aliases(self, domain: str | None = None) -> list[Alias]:
        return await self._read(list_aliases, domain)

    async def alias_destinations(self, source: str) -> list[str]:
        return await self._read(alias_destinations, source)

    # -- allow and block lists --
    async def list_entries(self, scope: Literal["user", "domain"], owner: str
                           ) -> list[ListEntry]:
        return await self._read(list_entries, scope, owner)

    async def add_list_entry(self, scope: Literal["user", "domain"], owner: str, kind: str,
                             pattern: str, action: str, max_entries: int) -> ListEntry:
        return await self._write(add_list_entry, scope, owner, kind, pattern, action,
                                 max_entries)

    async def remove_list_entry(self, scope: Literal["user", "domain"], owner: str, kind: str,
                                pattern: str) -> int:
        return await self._write(remove_list_entry, scope, owner, kind, pattern)

    async def record_spam_verdicts(self, rows: Sequence[SpamVerdictRow], keep: int) -> None:
        await self._write(record_spam_verdicts, list(rows), keep)

    async def recent_spam_verdicts(self, limit: int) -> list[SpamVerdictRow]:
        return await self._read(recent_spam_verdicts, limit)

    async def spam_verdict_counts(self) -> dict[str, int]:
        return await self._read(spam_verdict_counts)

    async def lists_version(self) -> int:
        return await self._read(lists_version)

    async def entries_for_accounts(self, account_ids: Sequence[int]
                                   ) -> dict[int, list[ListEntry]]:
        return await self._read(entries_for_accounts, list(account_ids))

    # -- mailboxes --
    async def list_mailboxes(self, account_id: int) -> list[Mailbox]:
        return await self._read(list_mailboxes, account_id)

    async def get_mailbox(self, account_id: int, name: str) -> Mailbox | None:
        return await self._read(get_mailbox, account_id, name)

    async def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None:
        return await self._read(get_mailbox_by_id, mailbox_id)

    async def create_mailbox(
        self, account_id: int, name: str, special_use: str | None = None
    ) -> Mailbox:
        return await self._write(create_mailbox, account_id, name, special_use)

    async def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        await self._write(rename_mailbox, account_id, old, new)

    async def delete_mailbox(self, account_id: int, name: str) -> list[str]:
        return await self._write(delete_mailbox, account_id, name)

    async def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        await self._write(set_subscribed, account_id, name, subscribed)

    async def list_subscriptions(self, account_id: int) -> list[str]:
        return await self._read(list_subscriptions, account_id)

    async def mailbox_access_key(self, mailbox_id: int, new_key: str | None = None) -> str | None:
        if new_key is None:
            return await self._read(mailbox_access_key, mailbox_id, None)
        return await self._write(mailbox_access_key, mailbox_id, new_key)

    async def reset_access_keys(self, account_id: int, mailbox_id: int | None) -> None:
        await self._write(reset_access_keys, account_id, mailbox_id)

    async def lock_maildrop(self, mailbox_id: int, owner: str, lease_seconds: float) -> bool:
        return await self._write(lock_maildrop, mailbox_id, owner, lease_seconds)

    async def unlock_maildrop(self, mailbox_id: int, owner: str) -> None:
        await self._write(unlock_maildrop, mailbox_id, owner)

    # -- state every node shares --
    async def dkim_keys(self, domain: str) -> DkimKeySet | None:
        return await self._read(sql_shared.dkim_keys, domain)

    async def add_dkim_keys(self, domain: str, keys: list[DkimKey], active: str, *,
                            only_if_none: bool = False) -> bool:
        return await self._write(sql_shared.add_dkim_keys, domain, keys, active, only_if_none)

    async def remove_dkim_selector(self, domain: str, selector: str) -> None:
        await self._write(sql_shared.remove_dkim_selector, domain, selector)

    async def get_secret(self, name: str) -> str | None:
        return await self._read(sql_shared.get_secret, name)

    async def put_secret(self, name: str, value: str, *, replace: bool = False) -> str:
        return await self._write(sql_shared.put_secret, name, value, replace)

    async def delete_secret(self, name: str) -> None:
        await self._write(sql_shared.delete_secret, name)

    async def spam_totals(self, account_id: int) -> tuple[int, int]:
        return await self._read(spam_totals, account_id)

    async def spam_token_counts(self, account_id: int, tokens: Sequence[int]
                                ) -> dict[int, tuple[int, int]]:
        return await self._read(spam_token_counts, account_id, list(tokens))

    async def train_spam(self, account_id: int, message: str, tokens: Sequence[int],
                         is_spam: bool) -> bool:
        return await self._write(train_spam, account_id, message, list(tokens), is_spam)

    # -- Sieve (sql_sieve) --
    async def list_sieve_scripts(self, account_id: int) -> list[tuple[str, bool]]:
        return await self._read(list_sieve_scripts, account_id)

    async def get_sieve_script(self, account_id: int, name: str) -> str | None:
        return await self._read(get_sieve_script, account_id, name)

    async def active_sieve_script(self, account_id: int) -> tuple[str, str] | None:
        return await self._read(active_sieve_script, account_id)

    async def put_sieve_script(self, account_id: int, name: str, script: str,
                               max_count: int = 0) -> None:
        await self._write(put_sieve_script, account_id, name, script, max_count)

    async def set_active_sieve_script(self, account_id: int, name: str) -> None:
        await self._write(set_active_sieve_script, account_id, name)

    async def delete_sieve_script(self, account_id: int, name: str) -> None:
        await self._write(delete_sieve_script, account_id, name)

    async def rename_sieve_script(self, account_id: int, old: str, new: str) -> None:
        await self._write(rename_sieve_script, account_id, old, new)

    async def get_global_sieve_script(self, name: str) -> str | None:
        return await self._read(get_global_sieve_script, name)

    async def put_global_sieve_script(self, name: str, script: str) -> None:
        await self._write(put_global_sieve_script, name, script)

    async def list_global_sieve_scripts(self) -> list[str]:
        return await self._read(list_global_sieve_scripts)

    async def delete_global_sieve_script(self, name: str) -> None:
        await self._write(delete_global_sieve_script, name)

    async def note_vacation_reply(self, account_id: int, sender: str, handle: str, now: int,
                                  until: int) -> bool:
        return await self._write(note_vacation_reply, account_id, sender, handle, now, until)

    async def mailbox_status(self, mailbox_id: int) -> MailboxStatus:
        return await self._read(mailbox_status, mailbox_id)

    async def claim_recent(self, mailbox_id: int) -> int:
        return await self._write_flags(claim_recent, mailbox_id)

    async def first_recent_uid(self, mailbox_id: int) -> int:
        return await self._read(first_recent_uid, mailbox_id)

    async def append_claiming_recent(
        self, delivery: Delivery, before: Callable[[], None] | None = None
    ) -> tuple[MessageMeta, int]:
        value, touched = await self._run_write(  # one row: small (_run_write)
            lambda db: append_claiming_recent(db, delivery), before, small=True)
        meta = value[0]
        if touched == {delivery.mailbox_id}:  # the new message's state goes along
            self.changes.publish_flags(delivery.mailbox_id, meta.modseq, [meta.flag_state()])
        elif touched:
            self.changes.publish(touched)
        return value

    # -- messages --
    async def store_message(
        self, deliveries: Sequence[Delivery], queue_entry: QueueEntry | None = None,
        before: Callable[[], None] | None = None,
    ) -> list[MessageMeta]:
        rows = list(deliveries)
        # One message in one mailbox (an APPEND) is a bounded little work: ``small``.
        return await self._write_after(before, lambda db: store_message(db, rows, queue_entry),
                                       small=len(rows) == 1 and queue_entry is None)

    async def list_flags(self, mailbox_id: int) -> list[FlagState]:
        return await self._read(list_flags, mailbox_id)

    async def flags_of(self, mailbox_id: int, uids: Sequence[int]) -> list[FlagState]:
        return await self._read(flags_of, mailbox_id, list(uids))

    async def get_messages(
        self, mailbox_id: int, uids: Iterable[int] | None = None
    ) -> list[MessageMeta]:
        return await self._read(get_messages, mailbox_id, None if uids is None else list(uids))

    async def sort_columns(
        self, mailbox_id: int, columns: Sequence[str], after_uid: int = 0,
        limit: int | None = None,
    ) -> list[list[Any]]:
        return await self._read(sort_columns, mailbox_id, tuple(columns), after_uid, limit)

    async def sort_fields(
        self, mailbox_id: int, wanted: Collection[str] = SORT_FIELDS, after_uid: int = 0,
        limit: int | None = None,
    ) -> list[SortFields]:
        return await self._read(sort_fields, mailbox_id, frozenset(wanted), after_uid, limit)

    async def update_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        mode: Literal["add", "remove", "replace"],
        flags: int,
        keywords: frozenset[str] = frozenset(),
        unchanged_since: int | None = None,
    ) -> FlagUpdate:
        wanted = list(uids)
        value, touched = await self._run_write(
            lambda db: update_flags(db, mailbox_id, wanted, mode, flags, keywords,
                                    unchanged_since),
            None, durable=False,  # flags alone: as _write_flags, whose comment says why
            small=len(wanted) <= SMALL_WRITE)
        if touched:  # the changed states go to the other workers with the news
            self.changes.publish_flags(mailbox_id, value.highestmodseq, value.changed)
        return value

    async def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        if uids is None or len(uids) > SMALL_WRITE:  # work that grows with the mailbox
            return await self._write(expunge, mailbox_id, None if uids is None else list(uids))
        return (await self.expunge_uids(mailbox_id, uids))[0]

    async def expunge_uids(self, mailbox_id: int, uids: Sequence[int]) -> tuple[list[int], int]:
        wanted = list(uids)
        value, touched = await self._run_write(
            lambda db: expunge_with_modseq(db, mailbox_id, wanted), None,
            small=len(wanted) <= SMALL_WRITE)  # UID EXPUNGE of a few UIDs: small
        removed, modseq = value
        if touched == {mailbox_id}:  # the UIDs go to the other workers with the news
            self.changes.publish_flags(mailbox_id, modseq, (), removed)
        elif touched:
            self.changes.publish(touched)
        return value

    async def copy_messages(
        self, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int, *, move: bool = False
    ) -> CopyResult:
        return await self._write(copy_messages, src_mailbox_id, list(uids), dst_mailbox_id, move)

    async def changes_since(self, mailbox_id: int, modseq: int) -> Changes:
        return await self._read(changes_since, mailbox_id, modseq)

    async def blob_unused(self, blob_id: str) -> bool:
        return await self._read(blob_unused, blob_id)

    async def all_blob_ids(self) -> AsyncIterator[str]:
        after = ""
        while True:
            page = await self._read(blob_ids_after, after, 1000)
            for blob_id in page:
                yield blob_id
            if len(page) < 1000:
                return
            after = page[-1]

    async def reap_blobs(self, limit: int = 1000) -> list[str]:
        return await self._write(reap_blobs, limit)

    # -- outbound queue --
    async def enqueue(self, entry: QueueEntry) -> None:
        await self._write(enqueue, entry)

    async def get_queue_entry(self, queue_id: str) -> QueueEntry | None:
        return await self._read(get_queue_entry, queue_id)

    async def list_queue(self, include_done: bool = False, account_id: int | None = None
                         ) -> list[QueueEntry]:
        return await self._read(list_queue, include_done, account_id)

    async def claim_due(
        self, now: datetime, owner: str, lease_seconds: int, limit: int
    ) -> list[QueueEntry]:
        return await self._write(claim_due, now, owner, lease_seconds, limit)

    async def update_queue_entry(self, entry: QueueEntry) -> None:
        await self._write(update_queue_entry, entry)

    async def make_due(self, queue_id: str, now: datetime) -> bool:
        return await self._write(make_due, queue_id, now)

    async def recall_pending(self, queue_id: str, now: datetime, reason: str) -> QueueEntry:
        return await self._write(recall_pending, queue_id, now, reason)

    async def delete_queue_entry(self, queue_id: str) -> list[str]:
        return await self._write(delete_queue_entry, queue_id)
