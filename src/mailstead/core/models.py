"""The plain records mail is made of: accounts, mailboxes, messages and their flags, envelopes,
outbound queue entries. Every layer speaks them (protocols, services, stores); they hold data and
no behaviour, so the protocol layer needs nothing but ``core`` to use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import IntFlag
from operator import attrgetter
from typing import Any, Literal, NamedTuple, TypeVar

_R = TypeVar("_R")


def _pickled_by_fields(cls: type[_R]) -> type[_R]:
    """Pickles the record as its class and field values, rebuilt through ``__init__``: the
    records a delivery sends to the message-file helper and back (services/message_files.py)
    pickle several times faster than through the slotted dataclass's default
    ``__getstate__``/``__setstate__``, which list the fields anew for every object."""
    values = attrgetter(*(f.name for f in fields(cls)))  # type: ignore[arg-type]

    def __reduce__(self: Any) -> tuple[type[_R], tuple[Any, ...]]:
        return cls, values(self)

    cls.__reduce__ = __reduce__  # type: ignore[assignment,method-assign]
    return cls


Integrity = Literal["verified", "unsigned", "failed"]
INTEGRITY_STATES: tuple[Integrity, ...] = ("verified", "unsigned", "failed")
# The IMAP keyword each state sets at delivery, so IMAP clients (ours too) can show it.
INTEGRITY_KEYWORDS: dict[Integrity, str] = {
    "verified": "$IntegrityVerified", "unsigned": "$IntegrityUnsigned",
    "failed": "$IntegrityFailed",
}


def integrity_of_keywords(keywords: frozenset[str] | set[str]) -> Integrity | None:
    """The state named by a message's keywords ("failed" first, should several be set)."""
    order: tuple[Integrity, ...] = ("failed", "verified", "unsigned")
    return next((state for state in order if INTEGRITY_KEYWORDS[state] in keywords), None)


class SystemFlag(IntFlag):
    """IMAP system flags, stored as a bit mask so "unseen" counts use an index-free integer test."""

    SEEN = 1
    ANSWERED = 2
    FLAGGED = 4
    DELETED = 8
    DRAFT = 16


SYSTEM_FLAG_NAMES: dict[str, SystemFlag] = {
    "\\Seen": SystemFlag.SEEN,
    "\\Answered": SystemFlag.ANSWERED,
    "\\Flagged": SystemFlag.FLAGGED,
    "\\Deleted": SystemFlag.DELETED,
    "\\Draft": SystemFlag.DRAFT,
}

SPECIAL_USES = ("\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive", "\\All", "\\Flagged")

# Mailboxes every new account gets (RFC 6154 roles).
DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)


@dataclass(frozen=True, slots=True)
class Domain:
    id: int
    name: str
    created: datetime


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    address: str  # normalised: local part lower-cased, domain IDNA lower-case
    domain: str
    password_hash: str
    quota_bytes: int  # 0 = unlimited
    quota_messages: int  # 0 = unlimited
    is_admin: bool
    created: datetime


@dataclass(frozen=True, slots=True)
class Alias:
    source: str  # "user@domain", or "@domain" for the domain's catch-all
    destination: str


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One allow or block list entry of an account (``scope`` "user", ``owner`` its address)
    or of a domain (``scope`` "domain", ``owner`` the domain name)."""

    id: int
    scope: Literal["user", "domain"]
    owner: str
    kind: Literal["allow", "block"]
    pattern: str  # "user@example.org", "example.org" (and its subdomains) or "192.0.2.0/24"
    action: Literal["", "refuse", "junk"]  # what a block entry does; "" for allow entries
    created: datetime


SpamAction = Literal["inbox", "junk", "reject"]
SPAM_LOG_KEEP = 1000  # spam log rows kept in the store (services/spam_log.py)


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class SpamVerdictRow:
    """One spam verdict as the admin console lists it: for one recipient of one message."""

    at: datetime
    recipient: str
    score: float
    tests: tuple[str, ...]  # the rules that matched
    action: SpamAction  # filed in the inbox, in Junk, or refused at DATA


@dataclass(frozen=True, slots=True)
class Mailbox:
    id: int
    account_id: int
    name: str  # full hierarchical name, '/' separated, UTF-8; "INBOX" is always upper case
    special_use: str | None
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    first_recent_uid: int  # messages with uid >= this are \Recent for the next session to claim


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class Envelope:
    """Header fields parsed once at delivery, for fast listing and search without reading blobs."""

    subject: str = ""
    from_: str = ""
    to: str = ""
    cc: str = ""
    date: datetime | None = None  # the Date: header, None when missing or unparsable
    message_id: str = ""
    in_reply_to: str = ""
    # The References field (unfolded), for THREAD=REFERENCES; None when unknown (rows stored
    # before it was kept, or without an envelope): the message file then answers.
    references: str | None = None


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class NewMessage:
    """What is needed to add a message to a mailbox. UID and MODSEQ are assigned by the store."""

    blob_id: str  # SHA-256 hex of the message bytes, as returned by BlobStore.put
    size: int
    internal_date: datetime
    flags: int = 0  # SystemFlag bits
    keywords: frozenset[str] = frozenset()
    envelope: Envelope = field(default_factory=Envelope)
    integrity: Integrity | None = None  # decided at delivery (mailsec/integrity.py)


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class MessageMeta:
    id: int
    mailbox_id: int
    uid: int
    modseq: int
    flags: int  # SystemFlag bits
    keywords: frozenset[str]
    internal_date: datetime
    size: int
    blob_id: str
    envelope: Envelope
    # What the reader is told: "verified", "unsigned" or "failed"; None when unknown or not
    # applicable (our users' own mail, APPEND, messages stored before it was recorded).
    integrity: Integrity | None = None

    def flag_state(self) -> FlagState:
        """Its state as a flag change carries it (a new message told to the other sessions)."""
        return FlagState(self.uid, self.modseq, int(self.flags), self.keywords)


class SortFields(NamedTuple):
    """What SORT and THREAD read of one message (RFC 5256), as stored: dates in microseconds
    since the epoch, no datetime objects, so a store builds 100,000 of these quickly (a tuple
    subclass made in C, like FlagState). ``date`` is the Date: header, None when missing;
    ``references`` None when not recorded (older rows). A store may leave out the fields
    not asked for (empty strings, None, 0); ``bare`` is true for a row stored without its
    envelope columns, whose fields only the message file has."""

    uid: int
    internal_date: int
    size: int
    subject: str
    from_: str
    to: str
    cc: str
    date: int | None
    message_id: str
    in_reply_to: str
    references: str | None
    bare: bool


SORT_FIELDS = frozenset(
    {"size", "subject", "from_", "to", "cc", "date", "message_id", "in_reply_to", "references"}
)


class FlagState(NamedTuple):
    """The cheap per-message row used to SELECT and to FETCH FLAGS on huge mailboxes.

    A NamedTuple, not a dataclass: a store builds 100,000 of these for one SELECT, and a tuple
    subclass can be made in C (``tuple.__new__``) without running Python code per row."""

    uid: int
    modseq: int
    flags: int
    keywords: frozenset[str]


@dataclass(frozen=True, slots=True)
class MailboxStatus:
    messages: int
    unseen: int
    recent: int
    size: int
    uidnext: int
    uidvalidity: int
    highestmodseq: int
    deleted: int
    deleted_size: int = 0  # octets of the messages marked \Deleted (RFC 9208 DELETED-STORAGE)


@dataclass(frozen=True, slots=True)
class FlagUpdate:
    """Result of a STORE: what changed, and the UIDs refused by UNCHANGEDSINCE (RFC 7162)."""

    changed: list[FlagState]
    failed_uids: list[int]
    highestmodseq: int


@dataclass(frozen=True, slots=True)
class CopyResult:
    """UID mapping of a COPY/MOVE, for COPYUID (RFC 4315)."""

    uidvalidity: int
    pairs: list[tuple[int, int]]  # (source uid, destination uid)


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed in a mailbox since a MODSEQ (CONDSTORE/QRESYNC)."""

    changed: list[FlagState]
    vanished: list[int]  # expunged uids with modseq > the one asked for
    highestmodseq: int


RecipientStatus = Literal["pending", "delivered", "failed", "recalled"]


@_pickled_by_fields
@dataclass(slots=True)
class QueueRecipient:
    address: str
    status: RecipientStatus = "pending"
    last_reply: str = ""  # last SMTP reply or error text for this recipient
    notify: str = ""  # DSN NOTIFY (RFC 3461), e.g. "FAILURE,DELAY"
    orcpt: str = ""  # DSN ORCPT, e.g. "rfc822;bob@example.org"


QueueState = Literal["queued", "done"]


@_pickled_by_fields
@dataclass(slots=True)
class QueueEntry:
    """A message waiting to leave for remote recipients. Recipients carry their own results."""

    id: str  # the queue id shown in the SMTP 250 reply and in logs
    sender: str  # envelope sender; "" is the null sender (bounces)
    recipients: list[QueueRecipient]
    blob_id: str
    size: int
    created: datetime
    next_attempt: datetime
    attempts: int = 0
    state: QueueState = "queued"
    account_id: int | None = None  # the authenticated submitter, who may recall it
    envid: str = ""  # DSN ENVID
    ret: str = ""  # DSN RET: "FULL" or "HDRS"
    requiretls: bool = False  # RFC 8689
    smtputf8: bool = False
    body_8bit: bool = False
    delay_notified: bool = False
    lease_owner: str = ""
    lease_until: datetime | None = None


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class Delivery:
    """One mailbox to add the message to, as part of ``MetadataStore.store_message``."""

    mailbox_id: int
    message: NewMessage


@dataclass(frozen=True, slots=True)
class DkimKey:
    """One DKIM selector's key pair (PKCS#8 PEM): RSA-2048 and Ed25519 sign side by side."""

    selector: str
    rsa_pem: str
    ed25519_pem: str
    created: datetime | None = None


@dataclass(frozen=True, slots=True)
class DkimKeySet:
    """A domain's DKIM keys as the store keeps them for every node: ``active`` signs, the
    others stay published until removed (rotation overlap)."""

    domain: str
    active: str
    keys: tuple[DkimKey, ...]

    def key(self, selector: str) -> DkimKey:
        return next(k for k in self.keys if k.selector == selector)
