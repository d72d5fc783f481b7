"""What the IMAP parser makes of a command: ``Command`` and the dataclass of each command's
arguments (sequence sets, FETCH items, search keys...). Pure data; imap_parse.py builds them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from mailstead.proto.imap_notify import NotifyArgs
from mailstead.proto.imap_urlauth import GenUrlAuthArgs, ResetKeyArgs, UrlFetchArgs

# ---------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """A sequence-set; 0 stands for "*" (the largest number in use). ``saved`` is "$", the
    result of the last SEARCH RETURN (SAVE) (SEARCHRES, RFC 5182, part of IMAP4rev2)."""

    ranges: tuple[tuple[int, int], ...]
    saved: bool = False

    def bounds(self, largest: int) -> list[tuple[int, int]]:
        """Ranges with "*" replaced by ``largest`` and each (low, high) ordered."""
        out = []
        for a, b in self.ranges:
            a = a or largest
            b = b or largest
            out.append((a, b) if a <= b else (b, a))
        return out

    def contains(self, n: int, largest: int) -> bool:
        return any(lo <= n <= hi for lo, hi in self.bounds(largest))

    def uses_star(self) -> bool:
        return any(a == 0 or b == 0 for a, b in self.ranges)


@dataclass(frozen=True, slots=True)
class Section:
    """A BODY[...] / BINARY[...] section: part path, then the text specifier."""

    part: tuple[int, ...] = ()
    text: str = ""  # "", HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: tuple[str, ...] = ()  # upper-cased header names for HEADER.FIELDS[.NOT]

    @property
    def spec(self) -> str:
        """Canonical text between the brackets, as echoed in the response."""
        parts = [".".join(str(p) for p in self.part)] if self.part else []
        if self.text:
            parts.append(self.text)
        spec = ".".join(parts)
        if self.fields:
            spec += " (" + " ".join(self.fields) + ")"
        return spec


@dataclass(frozen=True, slots=True)
class FetchItem:
    """One FETCH attribute. ``name`` is FLAGS, UID, INTERNALDATE, RFC822.SIZE, ENVELOPE, BODY,
    BODYSTRUCTURE, MODSEQ, RFC822, RFC822.HEADER, RFC822.TEXT, BODY[] (``section`` set),
    BINARY, BINARY.SIZE."""

    name: str
    section: Section | None = None
    peek: bool = False
    partial: tuple[int, int] | None = None  # (origin, length)


# -- search keys --


@dataclass(frozen=True, slots=True)
class SkAll:
    pass


@dataclass(frozen=True, slots=True)
class SkAnd:
    keys: tuple[SearchKey, ...]


@dataclass(frozen=True, slots=True)
class SkOr:
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class SkNot:
    key: SearchKey


@dataclass(frozen=True, slots=True)
class SkFlag:
    """A system flag (``flag``: \\Seen...) or a keyword; set or not set."""

    flag: str
    present: bool


@dataclass(frozen=True, slots=True)
class SkRecent:
    present: bool


@dataclass(frozen=True, slots=True)
class SkSet:
    numbers: SequenceSet
    uid: bool


@dataclass(frozen=True, slots=True)
class SkSize:
    larger: bool
    size: int


@dataclass(frozen=True, slots=True)
class SkDate:
    sent: bool  # Date: header instead of the internal date
    op: str  # "BEFORE", "ON", "SINCE"
    day: date


@dataclass(frozen=True, slots=True)
class SkText:
    """``where``: a header name (upper-cased), "BODY" or "TEXT"."""

    where: str
    value: str


@dataclass(frozen=True, slots=True)
class SkModseq:
    modseq: int


@dataclass(frozen=True, slots=True)
class SkAge:
    """OLDER / YOUNGER (RFC 5032): internal date compared with now."""

    older: bool
    seconds: int


SearchKey = (
    SkAll | SkAnd | SkOr | SkNot | SkFlag | SkRecent | SkSet | SkSize | SkDate | SkText
    | SkModseq | SkAge
)

# ---------------------------------------------------------------------------------------------
# Command arguments


@dataclass(frozen=True, slots=True)
class NoArgs:
    pass


@dataclass(frozen=True, slots=True)
class LoginArgs:
    user: str
    password: str


@dataclass(frozen=True, slots=True)
class AuthenticateArgs:
    mechanism: str
    initial: str | None  # SASL-IR initial response (base64, "" for "=")


@dataclass(frozen=True, slots=True)
class EnableArgs:
    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CompressArgs:
    mechanism: str  # RFC 4978: DEFLATE is the only one


@dataclass(frozen=True, slots=True)
class QresyncParams:
    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True, slots=True)
class SelectArgs:
    mailbox: str
    condstore: bool = False
    qresync: QresyncParams | None = None


@dataclass(frozen=True, slots=True)
class MailboxArgs:
    mailbox: str


@dataclass(frozen=True, slots=True)
class CreateArgs:
    mailbox: str
    special_use: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RenameArgs:
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class ListArgs:
    reference: str
    patterns: tuple[str, ...]
    select_options: frozenset[str] = frozenset()
    return_options: frozenset[str] = frozenset()
    status_items: tuple[str, ...] = ()
    extended: bool = False  # any LIST-EXTENDED syntax was used
    lsub: bool = False


@dataclass(frozen=True, slots=True)
class StatusArgs:
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AppendMessage:
    flags: tuple[str, ...]
    date: datetime | None
    data: bytes
    binary: bool
    # CATENATE (RFC 4469): the message is these parts joined; ``data`` is then empty.
    parts: tuple[CatenatePart, ...] | None = None


@dataclass(frozen=True, slots=True)
class CatenatePart:
    """One ``TEXT literal`` (``url`` None) or ``URL "imap-url"`` of a CATENATE (RFC 4469 5)."""

    text: bytes = b""
    binary: bool = False
    url: str | None = None


@dataclass(frozen=True, slots=True)
class AppendArgs:
    mailbox: str
    messages: tuple[AppendMessage, ...]


@dataclass(frozen=True, slots=True)
class SearchArgs:
    key: SearchKey
    charset: str = "US-ASCII"
    return_options: tuple[str, ...] | None = None  # None: plain SEARCH syntax (no RETURN)
    partial: tuple[int, int] | None = None  # PARTIAL range (RFC 5267 4.4, RFC 9394)


@dataclass(frozen=True, slots=True)
class SortArgs:
    """SORT (RFC 5256 3), with ESORT's RETURN options (RFC 5267 3)."""

    criteria: tuple[tuple[str, bool], ...]  # (sort key, reversed)
    charset: str
    key: SearchKey
    return_options: tuple[str, ...] | None = None
    partial: tuple[int, int] | None = None  # PARTIAL range (RFC 5267 4.4, RFC 9394)


@dataclass(frozen=True, slots=True)
class ThreadArgs:
    """THREAD (RFC 5256 3)."""

    algorithm: str
    charset: str
    key: SearchKey


@dataclass(frozen=True, slots=True)
class FetchArgs:
    numbers: SequenceSet
    items: tuple[FetchItem, ...]
    changedsince: int | None = None
    vanished: bool = False


@dataclass(frozen=True, slots=True)
class StoreArgs:
    numbers: SequenceSet
    mode: str  # "add", "remove", "replace"
    silent: bool
    flags: tuple[str, ...]
    unchangedsince: int | None = None


@dataclass(frozen=True, slots=True)
class CopyArgs:
    numbers: SequenceSet
    mailbox: str


@dataclass(frozen=True, slots=True)
class UidExpungeArgs:
    numbers: SequenceSet


@dataclass(frozen=True, slots=True)
class IdArgs:
    params: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True, slots=True)
class QuotaRootArgs:
    root: str


@dataclass(frozen=True, slots=True)
class CancelUpdateArgs:
    """CANCELUPDATE tag... (RFC 5267 4.5)."""

    tags: tuple[str, ...]


CommandArgs = (
    NoArgs | LoginArgs | AuthenticateArgs | EnableArgs | SelectArgs | MailboxArgs | CreateArgs
    | RenameArgs | ListArgs | StatusArgs | AppendArgs | SearchArgs | FetchArgs | StoreArgs
    | CopyArgs | UidExpungeArgs | IdArgs | QuotaRootArgs | CompressArgs | SortArgs
    | ThreadArgs | CancelUpdateArgs | NotifyArgs | GenUrlAuthArgs | UrlFetchArgs | ResetKeyArgs
)


@dataclass(frozen=True, slots=True)
class Command:
    tag: str
    name: str  # upper case; UID commands are "UID FETCH", "UID SEARCH"...
    args: CommandArgs = field(default_factory=NoArgs)

    @property
    def uid(self) -> bool:
        return self.name.startswith("UID ")
