"""The two storage interfaces the rest of mailstead uses: metadata and blobs.

Nothing above ``mailstead.store`` writes SQL or touches message files directly. Two metadata
implementations exist (SQLite, the embedded default, and PostgreSQL for several nodes); both pass
the same test suite (tests/store).

Durability contract: when an awaitable below that adds or changes data returns, the change is
committed and fsync'd. A power cut right after it loses nothing. Blobs are made durable by
``BlobStore.put`` *before* the metadata that references them is committed. The one exception:
``update_flags`` and ``claim_recent`` (flags alone) return once committed, without waiting for
the disk (``SqlStore._write_flags`` says why): a crash of the process loses nothing, a crash of
the machine may lose the last of them; the next durable write makes them durable too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from datetime import datetime
from typing import Any, Literal, Protocol

from mailstead.core.models import (
    DEFAULT_MAILBOXES,
    SORT_FIELDS,
    SPECIAL_USES,
    SYSTEM_FLAG_NAMES,
    Account,
    Alias,
    Changes,
    CopyResult,
    Delivery,
    DkimKey,
    DkimKeySet,
    Domain,
    Envelope,
    FlagState,
    FlagUpdate,
    ListEntry,
    Mailbox,
    MailboxStatus,
    MessageMeta,
    NewMessage,
    QueueEntry,
    QueueRecipient,
    QueueState,
    RecipientStatus,
    SortFields,
    SpamAction,
    SpamVerdictRow,
    SystemFlag,
)

__all__ = [
    "DEFAULT_MAILBOXES",
    "SORT_FIELDS",
    "SPECIAL_USES",
    "SYSTEM_FLAG_NAMES",
    "Account",
    "Alias",
    "BlobStore",
    "Changes",
    "CopyResult",
    "Delivery",
    "DkimKey",
    "DkimKeySet",
    "Domain",
    "Envelope",
    "FlagState",
    "FlagUpdate",
    "ListEntry",
    "Mailbox",
    "MailboxStatus",
    "MessageMeta",
    "MetadataStore",
    "NewMessage",
    "QueueEntry",
    "QueueRecipient",
    "QueueState",
    "RecipientStatus",
    "SortFields",
    "SpamAction",
    "SpamVerdictRow",
    "SystemFlag",
]

# ---------------------------------------------------------------------------------------------
# Interfaces


class MetadataStore(Protocol):
    """Domains, accounts, aliases, mailboxes, message rows and the outbound queue.

    Every method is a single transaction. Write methods are durable when they return (flag
    changes: committed, see the module's durability contract).
    Errors: ``NotFound``, ``Conflict``, ``QuotaExceeded`` from ``mailstead.core.errors``.
    """

    backend: str  # "sqlite" or "postgresql"
    # True when ``changes_since`` answers without suspending the caller (run on the event
    # loop itself): callers may then await it directly, with no task to share it.
    changes_inline: bool

    def commit_marker(self) -> int | None:
        """A number, read on the event loop, that differs from an earlier one read there
        whenever anything was committed to the store in between (by any connection or
        process: SQLite's data_version); None where no such number is cheap (PostgreSQL)."""

    async def open(self) -> None:
        """Connect and apply pending migrations."""

    async def close(self) -> None: ...

    # -- domains --
    async def add_domain(self, name: str) -> Domain: ...
    async def get_domain(self, name: str) -> Domain | None: ...
    async def list_domains(self) -> list[Domain]: ...
    async def remove_domain(self, name: str) -> None:
        """Refuses (Conflict) while accounts or aliases of the domain exist."""

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
        """Creates the account and its DEFAULT_MAILBOXES in one transaction."""

    async def get_account(self, address: str) -> Account | None: ...
    async def get_account_by_id(self, account_id: int) -> Account | None: ...
    async def list_accounts(self, domain: str | None = None) -> list[Account]: ...
    async def set_password(self, address: str, password_hash: str) -> None: ...
    async def set_quota(self, address: str, quota_bytes: int, quota_messages: int) -> None: ...
    async def remove_account(self, address: str) -> list[str]:
        """Deletes the account, its mailboxes and messages; returns blob ids no longer used."""

    async def quota_usage(self, account_id: int) -> tuple[int, int]:
        """(bytes, messages) currently stored for the account."""

    # -- aliases --
    async def add_alias(self, source: str, destination: str) -> Alias: ...
    async def remove_alias(self, source: str, destination: str | None = None) -> int:
        """Removes one destination, or all of them; returns how many rows went (NotFound
        when none matched)."""

    async def list_aliases(self, domain: str | None = None) -> list[Alias]: ...
    async def alias_destinations(self, source: str) -> list[str]: ...

    # -- mailboxes --
    async def list_entries(self, scope: Literal["user", "domain"], owner: str
                           ) -> list[ListEntry]:
        """The allow/block list entries of an account or a domain (NotFound if none such)."""
    async def add_list_entry(self, scope: Literal["user", "domain"], owner: str, kind: str,
                             pattern: str, action: str, max_entries: int) -> ListEntry:
        """Conflict when the entry exists, InvalidInput past ``max_entries``."""
    async def remove_list_entry(self, scope: Literal["user", "domain"], owner: str, kind: str,
                                pattern: str) -> int: ...
    # -- the last spam verdicts (admin console) --
    async def record_spam_verdicts(self, rows: Sequence[SpamVerdictRow], keep: int) -> None:
        """Adds the verdicts and counts them per action; only the newest ``keep`` rows stay."""

    async def recent_spam_verdicts(self, limit: int) -> list[SpamVerdictRow]:
        """The newest verdicts first."""

    async def spam_verdict_counts(self) -> dict[str, int]:
        """Verdicts per action (inbox, junk, reject) since the store began."""

    async def lists_version(self) -> int:
        """A number that every change of any allow/block list increases (0: none ever)."""
    async def entries_for_accounts(self, account_ids: Sequence[int]
                                   ) -> dict[int, list[ListEntry]]:
        """Each account's entries and those of its domain."""

    async def list_mailboxes(self, account_id: int) -> list[Mailbox]: ...
    async def get_mailbox(self, account_id: int, name: str) -> Mailbox | None: ...
    async def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None: ...
    async def create_mailbox(
        self, account_id: int, name: str, special_use: str | None = None
    ) -> Mailbox: ...
    async def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        """Renames the mailbox and its children ("a/b" with "a"). Renaming INBOX is the
        caller's business (RFC 3501 moves the messages instead)."""

    async def delete_mailbox(self, account_id: int, name: str) -> list[str]:
        """Deletes a mailbox and its messages; returns blob ids no longer used."""

    async def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        """SUBSCRIBE (the mailbox must exist) / UNSUBSCRIBE (any name). A subscription is a
        name: it outlives DELETE of its mailbox (RFC 9051 6.3.7) and follows RENAME."""

    async def list_subscriptions(self, account_id: int) -> list[str]:
        """Every subscribed name, including those whose mailbox no longer exists."""

    async def mailbox_access_key(self, mailbox_id: int, new_key: str | None = None) -> str | None:
        """The mailbox's URLAUTH access key (hex, RFC 4467 2.2), None when it has none; with
        ``new_key`` that key is stored first if the mailbox has none yet."""

    async def reset_access_keys(self, account_id: int, mailbox_id: int | None) -> None:
        """RESETKEY: forgets the access key of one mailbox, or of all the account's."""

    async def lock_maildrop(self, mailbox_id: int, owner: str, lease_seconds: float) -> bool:
        """Takes or renews the POP3 lock of a mailbox for ``lease_seconds``: True when
        ``owner`` holds it now, False when another owner's lease has not run out. Every node
        sharing the store sees the same locks."""

    async def unlock_maildrop(self, mailbox_id: int, owner: str) -> None:
        """Gives the lock back, if ``owner`` still holds it."""

    # -- state every node shares --
    async def dkim_keys(self, domain: str) -> DkimKeySet | None:
        """The domain's DKIM keys and its active selector; None before it has any."""

    async def add_dkim_keys(self, domain: str, keys: list[DkimKey], active: str, *,
                            only_if_none: bool = False) -> bool:
        """Stores keys and makes ``active`` sign. ``only_if_none``: only if the domain has no
        keys yet; False (nothing written) when another node was first."""

    async def remove_dkim_selector(self, domain: str, selector: str) -> None:
        """Forgets a retired selector (KeyError if unknown; ValueError if active)."""

    async def get_secret(self, name: str) -> str | None:
        """A secret all nodes share (DMAP key, web session secret...), or None."""

    async def put_secret(self, name: str, value: str, *, replace: bool = False) -> str:
        """Stores a shared secret; without ``replace`` the value already there wins. Returns
        the value stored."""

    async def delete_secret(self, name: str) -> None:
        """Forgets a shared secret (nothing happens if there is none)."""

    # -- the learning spam filter --
    async def spam_totals(self, account_id: int) -> tuple[int, int]:
        """(spam, good) messages the account has trained."""

    async def spam_token_counts(self, account_id: int, tokens: Sequence[int]
                                ) -> dict[int, tuple[int, int]]:
        """(spam, good) counts of those ``tokens`` (hashes) the account has seen."""

    async def train_spam(self, account_id: int, message: str, tokens: Sequence[int],
                         is_spam: bool) -> bool:
        """Counts ``message`` (any stable key: its blob id) and its tokens as spam or good;
        a message trained in the other class before moves over. False when nothing changed."""
    async def mailbox_status(self, mailbox_id: int) -> MailboxStatus: ...
    async def claim_recent(self, mailbox_id: int) -> int:
        """Atomically hands the \\Recent messages to the caller: returns the old
        first_recent_uid and moves it to uidnext (RFC 3501 2.3.2)."""

    async def first_recent_uid(self, mailbox_id: int) -> int:
        """The first UID not claimed as \\Recent yet (a read: no claim); 0 for no mailbox."""

    async def append_claiming_recent(
        self, delivery: Delivery, before: Callable[[], None] | None = None
    ) -> tuple[MessageMeta, int]:
        """``store_message`` of one delivery and ``claim_recent`` of its mailbox, in one
        transaction: (the new message, the old first_recent_uid)."""

    # -- messages --
    async def store_message(
        self, deliveries: Sequence[Delivery], queue_entry: QueueEntry | None = None,
        before: Callable[[], None] | None = None,
    ) -> list[MessageMeta]:
        """Adds one blob to several mailboxes and/or the outbound queue, atomically.

        Checks each account's quota inside the transaction (QuotaExceeded, nothing written).
        Returns the new rows in the order of ``deliveries``. ``before`` (a blocking call,
        such as ``BlobStore.flush`` making the message file durable) runs first, in the
        thread that writes: the rows are committed only after it returned; when it raises,
        nothing is written and the call raises its error.
        """

    async def list_flags(self, mailbox_id: int) -> list[FlagState]:
        """Every message's uid, modseq and flags, in UID order (SELECT, FETCH FLAGS)."""

    async def flags_of(self, mailbox_id: int, uids: Sequence[int]) -> list[FlagState]:
        """The uid, modseq and flags of a few messages (those of ``uids`` that exist), in UID
        order, as committed now (a STORE that would change nothing needs no write)."""

    async def get_messages(
        self, mailbox_id: int, uids: Iterable[int] | None = None
    ) -> list[MessageMeta]:
        """Full rows in UID order; all of them when ``uids`` is None."""

    async def sort_columns(
        self, mailbox_id: int, columns: Sequence[str], after_uid: int = 0,
        limit: int | None = None,
    ) -> list[list[Any]]:
        """SORT/THREAD keys of the messages above ``after_uid`` (at most ``limit`` of them),
        in UID order, column-wise: a list of their UIDs, then one list per name in
        ``columns``: "arrival"
        (internal date), "sent" (Date: else internal date), "size" (microseconds, octets),
        "from", "to", "cc" (envelope fields), and the keys stored at delivery
        (core/base_subject.thread_keys) "subject_key", "reply", "thread_id" and
        "thread_parents", each None when only the message file knows them."""

    async def sort_fields(
        self, mailbox_id: int, wanted: Collection[str] = SORT_FIELDS, after_uid: int = 0,
        limit: int | None = None,
    ) -> list[SortFields]:
        """The SORT/THREAD fields of the messages above ``after_uid`` (at most ``limit`` of
        them), in UID order: uid, internal_date and bare always, the others when named in
        ``wanted`` (a subset of SORT_FIELDS)."""

    async def update_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        mode: Literal["add", "remove", "replace"],
        flags: int,
        keywords: frozenset[str] = frozenset(),
        unchanged_since: int | None = None,
    ) -> FlagUpdate:
        """Changes flags; each changed message gets a new MODSEQ. Messages whose modseq is
        above ``unchanged_since`` are left alone and listed in ``failed_uids``."""

    async def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        """Removes the given messages (or every \\Deleted one when ``uids`` is None); records
        them as vanished with a new MODSEQ; returns the uids removed."""

    async def expunge_uids(self, mailbox_id: int, uids: Sequence[int]) -> tuple[list[int], int]:
        """``expunge`` of the given messages; also returns the MODSEQ of the change (the
        mailbox's HIGHESTMODSEQ after it; 0 when nothing was removed)."""

    async def copy_messages(
        self, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int, *, move: bool = False
    ) -> CopyResult:
        """Copies (or moves, expunging from the source in the same transaction)."""

    async def changes_since(self, mailbox_id: int, modseq: int) -> Changes: ...

    async def blob_unused(self, blob_id: str) -> bool:
        """True when no message and no queue entry references the blob (safe to delete)."""

    async def reap_blobs(self, limit: int = 1000) -> list[str]:
        """Blob ids whose last reference went in an expunge (which returns uids, not blob
        ids): forgets up to ``limit`` of them and returns them, so the caller deletes the
        files."""

    async def all_blob_ids(self) -> AsyncIterator[str]:
        """Every blob id referenced by a message or a queue entry (for ``mailstead check``)."""
        raise NotImplementedError
        yield ""  # pragma: no cover

    # -- outbound queue --
    async def enqueue(self, entry: QueueEntry) -> None: ...
    async def get_queue_entry(self, queue_id: str) -> QueueEntry | None: ...
    async def list_queue(self, include_done: bool = False, account_id: int | None = None
                         ) -> list[QueueEntry]:
        """The entries, oldest first; ``account_id``: only those that account submitted."""
    async def claim_due(
        self, now: datetime, owner: str, lease_seconds: int, limit: int
    ) -> list[QueueEntry]:
        """Leases due entries to ``owner`` (PostgreSQL: FOR UPDATE SKIP LOCKED, so two nodes
        never take the same entry)."""

    async def update_queue_entry(self, entry: QueueEntry) -> None:
        """The lease holder records an attempt. A recipient another writer settled meanwhile
        (recalled, say) stays settled: statuses only ever move away from "pending"."""

    async def make_due(self, queue_id: str, now: datetime) -> bool:
        """A waiting entry becomes due at ``now``; False when it is not waiting (gone, done)."""

    async def recall_pending(self, queue_id: str, now: datetime, reason: str) -> QueueEntry:
        """Marks every pending recipient ``recalled`` (the entry is done when none is left),
        atomically and without touching a worker's lease; returns the entry as stored."""

    async def delete_queue_entry(self, queue_id: str) -> list[str]:
        """Removes the entry; returns blob ids no longer used ([] if it was already gone)."""


class BlobStore(Protocol):
    """Message files, one per distinct content, named by SHA-256."""

    def put(self, data: bytes) -> str:
        """Writes the bytes durably (temp file, fsync, rename, directory fsync) and returns
        the SHA-256 hex id. Idempotent: the same bytes give the same id and one file."""

    def write(self, data: bytes) -> str:
        """``put`` without waiting for durability: the file is durable once ``flush`` (called
        after this returned) returns. For writing many files with one flush."""

    def flush(self) -> None:
        """Makes every file an earlier ``write`` returned durable."""

    def get(self, blob_id: str) -> bytes:
        """Returns the bytes after checking their hash; raises CorruptBlob if they do not
        match (changed or truncated on disk) and NotFound if the file is missing."""

    def verify(self, blob_id: str) -> str | None:
        """None when the blob is good, else the reason it is not."""

    def delete(self, blob_id: str) -> None: ...

    def discard_unused(self, blob_id: str, grace_seconds: float) -> bool:
        """Deletes an unreferenced blob unless a put touched it within ``grace_seconds``;
        True if the file went. Safe against a concurrent put of the same bytes."""

    def exists(self, blob_id: str) -> bool: ...

    def iter_ids(self) -> Iterable[str]: ...
