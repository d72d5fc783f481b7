"""What the IMAP session needs from the layers around it, as small Protocols.

The session (pure code) talks to the client through ``ClientIO`` and to mail through
``MailboxBackend`` / ``SelectedView``; the network layer supplies real objects
(net/imap_server.py with services/mailbox_view.py), tests may supply fakes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import datetime
from typing import Any, Literal, Protocol

from mailstead.core.models import (
    Account,
    Changes,
    CopyResult,
    FlagState,
    FlagUpdate,
    Mailbox,
    MailboxStatus,
    MessageMeta,
    SortFields,
)


class LoginRefused(Exception):
    """Bad credentials (``temporary`` False) or a lockout (True)."""

    def __init__(self, temporary: bool = False) -> None:
        super().__init__("login refused")
        self.temporary = temporary


class TooManySessions(Exception):
    """The credentials were right, but the user has as many sessions open from this address
    as allowed (answered NO [LIMIT], RFC 5530)."""


class ClientGone(Exception):
    """The client closed the connection (raised by ClientIO)."""


class ClientTimeout(Exception):
    """The client stayed silent past the autologout time (raised by ClientIO)."""


class ClientIO(Protocol):
    """The connection as the session sees it."""

    @property
    def is_tls(self) -> bool: ...

    @property
    def peer_ip(self) -> str: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    async def read_line(self) -> bytes:
        """One more line from the client (AUTHENTICATE exchanges), CRLF kept."""

    async def start_tls(self) -> None: ...

    def start_compression(self) -> None:
        """COMPRESS=DEFLATE from the next octet on, both ways (RFC 4978)."""

    async def pause(self) -> None:
        """Lets the other sessions of the process run for a moment (one turn of the event
        loop), so a long command never stalls them; a stopping server cancels here."""

    async def idle_wait(
        self, wait_change: Callable[[], Awaitable[bool]] | None
    ) -> bytes | None:
        """During IDLE: the client's next line, or None when ``wait_change`` returned first.
        Ends the connection (autologout) if the client stays silent too long."""


class Authenticator(Protocol):
    async def login(self, user: str, password: str, ip: str) -> Account:
        """Raises LoginRefused or TooManySessions."""

    def release(self) -> None:
        """The session is no longer logged in (UNAUTHENTICATE, or the connection ended)."""


class QuotaInfo(Protocol):
    @property
    def used_bytes(self) -> int: ...
    @property
    def used_messages(self) -> int: ...
    @property
    def limit_bytes(self) -> int: ...
    @property
    def limit_messages(self) -> int: ...


class Updates(Protocol):
    @property
    def expunged(self) -> list[tuple[int, int]]: ...
    @property
    def exists(self) -> int | None: ...
    @property
    def recent(self) -> int | None: ...
    @property
    def flags(self) -> list[tuple[int, FlagState]]: ...
    @property
    def keywords(self) -> set[str]: ...


class SelectedView(Protocol):
    mailbox: Mailbox
    readonly: bool
    modseq: int
    uidnext: int
    first_unseen: int
    keywords: set[str]  # the keywords this session's client was told of (FLAGS response)

    @property
    def exists(self) -> int: ...
    @property
    def last_uid(self) -> int: ...
    def seq_of(self, uid: int) -> int | None: ...
    def uid_at(self, seq: int) -> int: ...
    def uids_in_seq_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[int]: ...
    def uids_in_uid_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[int]: ...
    def is_recent(self, uid: int) -> bool: ...
    def recent_checker(self) -> Callable[[int], bool]: ...
    def seqs_of(self, uids: Sequence[int]) -> list[int | None]: ...
    def recent_count(self) -> int: ...
    async def wait_change(self, timeout: float | None) -> bool: ...
    def change_waiter(self) -> Awaitable[bool]:
        """A future done when the mailbox may have changed (IDLE), as ``wait_change(None)``
        but with no task needed to wait for it beside the client's input."""
    async def refresh(self, force: bool = False) -> None: ...
    async def changes_since(self, modseq: int) -> Changes: ...
    def take_updates(self, allow_expunge: bool, allow_flags: bool = True) -> Updates:
        """What to tell; expunges only if ``allow_expunge``, flag changes only if
        ``allow_flags`` (else they wait for a later call)."""
    async def flag_states(self, uids: Sequence[int]) -> list[FlagState]: ...
    async def messages(self, uids: Sequence[int]) -> list[MessageMeta]: ...
    async def sort_fields(self, wanted: Collection[str]) -> list[SortFields]:
        """SORT/THREAD fields (those ``wanted``, see MetadataStore.sort_fields) of every
        stored message of the mailbox, in UID order; may include messages this view has not
        announced yet."""
    async def sort_columns(self, columns: Sequence[str], after_uid: int = 0
                           ) -> list[list[Any]]:
        """SORT/THREAD keys (``columns``, see MetadataStore.sort_columns) of every stored
        message of the mailbox above ``after_uid``, in UID order, column-wise, the UIDs
        first; may include messages this view has not announced yet."""
    async def body(self, blob_id: str, size: int | None = None) -> bytes: ...
    def body_now(self, blob_id: str, size: int) -> bytes | None:
        """The bytes when they can be read without waiting (a small message file, read on
        the spot), else None: ``body`` then reads them."""
    async def store_flags(
        self,
        uids: Sequence[int],
        mode: Literal["add", "remove", "replace"],
        flags: int,
        keywords: frozenset[str],
        unchanged_since: int | None = None,
    ) -> FlagUpdate: ...
    async def expunge(self, uids: Sequence[int] | None = None) -> list[int]: ...
    async def copy(self, uids: Sequence[int], target: Mailbox, move: bool) -> CopyResult: ...
    async def append(
        self,
        data: bytes,
        flags: int = 0,
        keywords: frozenset[str] = frozenset(),
        internal_date: datetime | None = None,
    ) -> MessageMeta:
        """APPEND to this view's own mailbox (its \\Recent claimed by this session)."""
    def close(self) -> None: ...


class FeedWatch(Protocol):
    """A watch on many mailboxes of an account at once (IMAP NOTIFY, RFC 5465): mailbox ids,
    plus ``LIST_CHANGED`` for changes to the account's mailbox list or subscriptions."""

    def set_ids(self, ids: Collection[int]) -> None:
        """The mailbox ids watched from now on (the list channel stays watched)."""

    async def wait(self) -> None:
        """Returns once something watched changed since the last ``take``."""

    def take(self) -> set[int]:
        """The ids that changed since the last call, each once (``LIST_CHANGED`` included
        when the mailbox list or subscriptions changed)."""

    def close(self) -> None: ...


LIST_CHANGED = 0  # in FeedWatch.take(): the mailbox list or subscriptions changed


class MailboxBackend(Protocol):
    max_message_size: int

    async def list_mailboxes(self, account_id: int) -> list[Mailbox]: ...
    async def find(self, account_id: int, name: str) -> Mailbox | None: ...
    async def require(self, account_id: int, name: str) -> Mailbox: ...
    async def create(
        self, account_id: int, name: str, special_use: str | None = None
    ) -> Mailbox: ...
    async def delete(self, account_id: int, name: str) -> None: ...
    async def rename(self, account_id: int, old: str, new: str) -> None: ...
    async def subscribe(self, account_id: int, name: str, subscribed: bool) -> None: ...
    async def subscriptions(self, account_id: int) -> list[str]: ...
    async def status(self, mailbox: Mailbox) -> MailboxStatus: ...
    async def fresh_status(self, mailbox: Mailbox, sizes: bool) -> MailboxStatus:
        """STATUS of a mailbox row this command read from the store (from memory when that
        is provably current); ``sizes``: SIZE and DELETED-STORAGE are wanted."""
    async def quota(self, account_id: int) -> QuotaInfo: ...
    async def append(
        self,
        mailbox: Mailbox,
        data: bytes,
        flags: int = 0,
        keywords: frozenset[str] = frozenset(),
        internal_date: datetime | None = None,
    ) -> MessageMeta: ...
    async def remove(self, mailbox: Mailbox, uids: Sequence[int]) -> None: ...
    async def message_bytes(self, mailbox: Mailbox, uid: int) -> bytes | None: ...
    async def open(
        self, account_id: int, name: str, *, readonly: bool, track_recent: bool
    ) -> SelectedView: ...
    def watch_account(self, account_id: int) -> FeedWatch: ...
