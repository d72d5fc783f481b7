"""IMAP command parser (RFC 9051 section 9 and RFC 3501 section 9 grammars, with the extension
grammars of UIDPLUS, MOVE, CONDSTORE/QRESYNC, LIST-EXTENDED, LIST-STATUS, ESEARCH, ID, QUOTA,
BINARY, LITERAL+/-, SASL-IR, MULTIAPPEND).

Pure code. Input is one whole command as it came off the wire, literals included inline
(``{5}\\r\\nhello``), without the final CRLF; output is a ``Command`` whose ``args`` is one of the
dataclasses of imap_args.py. Anything malformed raises ``ParseError`` (answered with BAD). The
lexer (and the framing helpers the listener uses) is imap_reader.py; this module holds the
grammar of each command, those of SEARCH, SORT and THREAD in imap_parse_search.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from mailstead.proto.imap_args import (
    AppendArgs,
    AppendMessage,
    AuthenticateArgs,
    CatenatePart,
    Command,
    CommandArgs,
    CompressArgs,
    CopyArgs,
    CreateArgs,
    EnableArgs,
    FetchArgs,
    FetchItem,
    IdArgs,
    ListArgs,
    LoginArgs,
    MailboxArgs,
    NoArgs,
    QresyncParams,
    QuotaRootArgs,
    RenameArgs,
    Section,
    SelectArgs,
    SequenceSet,
    StatusArgs,
    StoreArgs,
    UidExpungeArgs,
)
from mailstead.proto.imap_notify import parse_notify
from mailstead.proto.imap_parse_search import (
    parse_cancelupdate,
    parse_search,
    parse_sort,
    parse_thread,
)
from mailstead.proto.imap_reader import (
    _ATOM_SPECIALS,
    _SECTION_TEXT,
    _TAG_SPECIALS,
    MAX_FETCH_ITEMS,
    ParseError,
    _Reader,
)
from mailstead.proto.imap_urlauth import parse_genurlauth, parse_resetkey, parse_urlfetch

# ---------------------------------------------------------------------------------------------
# Commands


def parse_command(data: bytes) -> Command:
    """Parses one complete command (literals inline, no final CRLF)."""
    r = _Reader(data)
    raw_tag = r._run(_TAG_SPECIALS)
    if not raw_tag:
        raise ParseError("missing or invalid tag")
    r.tag = raw_tag.decode("latin-1")
    if not r.maybe_sp():
        raise r.error("missing command")
    name = r.atom().upper()
    if name == "UID":
        r.sp()
        name = "UID " + r.atom().upper()
    handler = _COMMANDS.get(name)
    if handler is None:
        raise r.error(f"unknown command {name}")
    args = handler(r)
    r.end()
    return Command(r.tag, name, args)


def _no_args(r: _Reader) -> CommandArgs:
    return NoArgs()


def _login(r: _Reader) -> CommandArgs:
    r.sp()
    user = r.astring()
    r.sp()
    return LoginArgs(user, r.astring())


def _authenticate(r: _Reader) -> CommandArgs:
    r.sp()
    mechanism = r.atom().upper()
    initial = None
    if r.maybe_sp():  # SASL-IR (RFC 4959): base64 or "=" for empty
        raw = r._run(_ATOM_SPECIALS)
        if not raw:
            raise r.error("expected an initial response")
        initial = "" if raw == b"=" else raw.decode("ascii", "replace")
    return AuthenticateArgs(mechanism, initial)


def _compress(r: _Reader) -> CommandArgs:
    r.sp()
    return CompressArgs(r.atom())


def _enable(r: _Reader) -> CommandArgs:
    caps = []
    while r.maybe_sp():
        r.count()
        caps.append(r.atom().upper())
    if not caps:
        raise r.error("ENABLE needs at least one capability")
    return EnableArgs(tuple(caps))


def _select(r: _Reader) -> CommandArgs:
    r.sp()
    mailbox = r.mailbox()
    condstore = False
    qresync = None
    if r.maybe_sp():  # select-params (RFC 4466 2.1, RFC 7162 3.1.8 / 3.2.5)
        r.expect(b"(")
        while True:
            word = r.atom().upper()
            if word == "CONDSTORE":
                condstore = True
            elif word == "QRESYNC":
                r.sp()
                qresync = _qresync_params(r)
            else:
                raise r.error(f"unknown SELECT parameter {word}")
            if r.peek() == ord(")"):
                r.pos += 1
                break
            r.sp()
    return SelectArgs(mailbox, condstore, qresync)


def _qresync_params(r: _Reader) -> QresyncParams:
    r.expect(b"(")
    uidvalidity = r.number(nonzero=True)
    r.sp()
    modseq = r.number(nonzero=True)
    known = None
    seq_match = None
    if r.maybe_sp():
        if r.peek() != ord("("):
            known = r.sequence_set()
            r.maybe_sp()
        if r.peek() == ord("("):
            r.pos += 1
            seqs = r.sequence_set()
            r.sp()
            uids = r.sequence_set()
            r.expect(b")")
            seq_match = (seqs, uids)
    r.expect(b")")
    return QresyncParams(uidvalidity, modseq, known, seq_match)


def _mailbox_only(r: _Reader) -> CommandArgs:
    r.sp()
    return MailboxArgs(r.mailbox())


def _create(r: _Reader) -> CommandArgs:
    r.sp()
    mailbox = r.mailbox()
    uses: list[str] = []
    if r.maybe_sp():  # CREATE-SPECIAL-USE (RFC 6154 3): (USE (\Sent))
        r.expect(b"(")
        word = r.atom().upper()
        if word != "USE":
            raise r.error(f"unknown CREATE parameter {word}")
        r.sp()
        uses = r.paren_list("flag")
        r.expect(b")")
    return CreateArgs(mailbox, tuple(uses))


def _rename(r: _Reader) -> CommandArgs:
    r.sp()
    old = r.mailbox()
    r.sp()
    return RenameArgs(old, r.mailbox())


_LIST_SELECT = {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}
_LIST_RETURN = {"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS", "MYRIGHTS"}


def _list(r: _Reader) -> CommandArgs:
    r.sp()
    select: set[str] = set()
    extended = False
    if r.peek() == ord("("):  # list-select-opts (RFC 5258 3)
        extended = True
        select = {w.upper() for w in r.paren_list("atom")}
        unknown = select - _LIST_SELECT
        if unknown:
            raise r.error(f"unknown LIST selection option {sorted(unknown)[0]}")
        if "RECURSIVEMATCH" in select and len(select) == 1:
            raise r.error("RECURSIVEMATCH needs another selection option")
        r.sp()
    reference = r.mailbox()
    r.sp()
    patterns: list[str] = []
    if r.peek() == ord("("):
        extended = True
        r.pos += 1
        while True:
            r.count()
            patterns.append(r.list_mailbox())
            if r.peek() == ord(")"):
                r.pos += 1
                break
            r.sp()
    else:
        patterns.append(r.list_mailbox())
    returns: set[str] = set()
    status_items: tuple[str, ...] = ()
    if r.maybe_sp():
        extended = True
        r.expect(b"RETURN")
        r.sp()
        r.expect(b"(")
        while r.peek() != ord(")"):
            word = r.atom().upper()
            if word not in _LIST_RETURN:
                raise r.error(f"unknown LIST return option {word}")
            returns.add(word)
            if word == "STATUS":  # LIST-STATUS (RFC 5819)
                r.sp()
                status_items = _status_items(r)
            if r.peek() != ord(")"):
                r.sp()
        r.pos += 1
    return ListArgs(
        reference, tuple(patterns), frozenset(select), frozenset(returns), status_items,
        extended,
    )


def _lsub(r: _Reader) -> CommandArgs:
    r.sp()
    reference = r.mailbox()
    r.sp()
    return ListArgs(reference, (r.list_mailbox(),), lsub=True)


STATUS_ITEMS = frozenset(
    {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE",
     "HIGHESTMODSEQ", "APPENDLIMIT", "DELETED-STORAGE"}
)


def _status_items(r: _Reader) -> tuple[str, ...]:
    items = [w.upper() for w in r.paren_list("atom")]
    if not items:
        raise r.error("STATUS needs at least one item")
    for item in items:
        if item not in STATUS_ITEMS:
            raise r.error(f"unknown STATUS item {item}")
    return tuple(items)


def _status(r: _Reader) -> CommandArgs:
    r.sp()
    mailbox = r.mailbox()
    r.sp()
    return StatusArgs(mailbox, _status_items(r))


def _append(r: _Reader) -> CommandArgs:
    r.sp()
    mailbox = r.mailbox()
    messages: list[AppendMessage] = []
    while r.maybe_sp():  # MULTIAPPEND (RFC 3502): more messages follow, each with its options
        flags: list[str] = []
        when = None
        if r.peek() == ord("("):
            flags = r.paren_list("flag")
            r.sp()
        if r.peek() == 0x22:
            when = r.date_time()
            r.sp()
        if r.peek_is(b"CATENATE ("):
            r.pos += len(b"CATENATE (")
            parts = _catenate_parts(r)
            messages.append(AppendMessage(tuple(flags), when, b"",
                                          any(p.binary for p in parts), parts))
            continue
        data, binary = r.literal(allow_binary=True)
        messages.append(AppendMessage(tuple(flags), when, data, binary))
    if not messages:
        raise r.error("APPEND needs a message literal")
    return AppendArgs(mailbox, tuple(messages))


def _catenate_parts(r: _Reader) -> tuple[CatenatePart, ...]:
    """``cat-part *(SP cat-part) ")"`` (RFC 4469 5), after ``CATENATE (``."""
    parts: list[CatenatePart] = []
    while True:
        if r.peek_is(b"TEXT "):
            r.pos += len(b"TEXT ")
            text, binary = r.literal(allow_binary=True)  # RFC 4469 5 with RFC 3516 literal8
            parts.append(CatenatePart(text, binary))
        elif r.peek_is(b"URL "):
            r.pos += len(b"URL ")
            parts.append(CatenatePart(url=r.astring()))
        else:
            raise r.error(f"expected TEXT or URL at position {r.pos}")
        if r.peek() == ord(")"):
            r.pos += 1
            return tuple(parts)
        r.sp()


_FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_SIMPLE_FETCH = frozenset(
    {"FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE", "MODSEQ",
     "RFC822", "RFC822.HEADER", "RFC822.TEXT", "BODY"}
)


# What follows the sequence set of a FETCH or STORE (its items, flags and modifiers) -> the
# parse of it: a client asks for the same items again and again, with other numbers. The
# values are frozen, so shared; (class, fields after ``numbers``, items counted).
_NumberedArgs = FetchArgs | StoreArgs
_TAILS: dict[tuple[str, bytes], tuple[type[_NumberedArgs], tuple[Any, ...], int]] = {}
TAILS_KEPT = 512
TAIL_BYTES = 1024  # longer ones are parsed each time


def _kept_tail(r: _Reader, kind: str,
               parse: Callable[[_Reader, SequenceSet], _NumberedArgs]) -> _NumberedArgs:
    """``parse(r, numbers)`` of a command whose sequence set comes first (after one space),
    answered from ``_TAILS`` when its text after the numbers was parsed before."""
    r.sp()
    numbers = r.sequence_set()
    r.sp()
    counted = r.items
    tail = r.data[r.pos:]
    key = (kind, tail)
    known = _TAILS.get(key) if len(tail) <= TAIL_BYTES else None
    if known is not None:
        r.count(known[2])  # the same limits as when parsed
        r.pos = len(r.data)
        return known[0](numbers, *known[1])
    args = parse(r, numbers)
    if r.at_end() and len(tail) <= TAIL_BYTES:
        if len(_TAILS) >= TAILS_KEPT:
            _TAILS.clear()
        rest = tuple(getattr(args, name) for name in type(args).__slots__[1:])
        _TAILS[key] = (type(args), rest, r.items - counted)
    return args


def _fetch(r: _Reader) -> CommandArgs:
    return _kept_tail(r, "FETCH", _fetch_items)


def _fetch_items(r: _Reader, numbers: SequenceSet) -> FetchArgs:
    items: list[FetchItem] = []
    if r.peek() == ord("("):
        r.pos += 1
        while True:
            if len(items) >= MAX_FETCH_ITEMS:
                raise r.error(f"too many FETCH attributes (at most {MAX_FETCH_ITEMS})", "LIMIT")
            r.count()
            items.append(_fetch_att(r))
            if r.peek() == ord(")"):
                r.pos += 1
                break
            r.sp()
    else:
        save = r.pos
        word = r._run(_ATOM_SPECIALS).decode("latin-1").upper()
        if word in _FETCH_MACROS:
            items = [FetchItem(n) for n in _FETCH_MACROS[word]]
        else:
            r.pos = save
            items.append(_fetch_att(r))
    changedsince = None
    vanished = False
    if r.maybe_sp():  # fetch-modifiers (RFC 7162 3.1.4, 3.2.6)
        r.expect(b"(")
        while True:
            word = r.atom().upper()
            if word == "CHANGEDSINCE":
                r.sp()
                changedsince = r.number(nonzero=True)
            elif word == "VANISHED":
                vanished = True
            else:
                raise r.error(f"unknown FETCH modifier {word}")
            if r.peek() == ord(")"):
                r.pos += 1
                break
            r.sp()
        if vanished and changedsince is None:
            raise r.error("VANISHED needs CHANGEDSINCE")  # RFC 7162 3.2.6
    return FetchArgs(numbers, tuple(items), changedsince, vanished)


_FETCH_WORD = re.compile(rb"[A-Za-z0-9.]+")


def _fetch_att(r: _Reader) -> FetchItem:
    m = _FETCH_WORD.match(r.data, r.pos)
    if m is None:
        raise r.error(f"expected a fetch attribute at position {r.pos}")
    word = m.group().decode().upper()
    r.pos = m.end()
    if r.peek() != ord("["):
        if word == "PREVIEW":  # RFC 8970 3.1: "PREVIEW" [SP "(" "LAZY" ")"]
            if r.peek_is(b" (LAZY)"):
                r.pos += len(b" (LAZY)")  # a preview costs us little: always computed
            return FetchItem(word)
        if word in _SIMPLE_FETCH:
            return FetchItem(word)
        raise r.error(f"unknown fetch attribute {word}")
    if word not in ("BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE"):
        raise r.error(f"unknown fetch attribute {word}")
    r.pos += 1
    binary = word.startswith("BINARY")
    section = _section_binary(r) if binary else _section(r)
    r.expect(b"]")
    partial = None
    if r.peek() == ord("<"):
        if word == "BINARY.SIZE":
            raise r.error("BINARY.SIZE takes no partial")
        r.pos += 1
        origin = r.number()
        r.expect(b".")
        length = r.number(nonzero=True)
        r.expect(b">")
        partial = (origin, length)
    name = {"BODY.PEEK": "BODY", "BINARY.PEEK": "BINARY"}.get(word, word)
    return FetchItem(
        name if binary else "BODY[]", section, word.endswith(".PEEK"), partial,
    )


def _section_binary(r: _Reader) -> Section:
    parts: list[int] = []
    while r.peek() != ord("]"):
        if parts:
            r.expect(b".")
        parts.append(r.number(nonzero=True))
    return Section(tuple(parts))


def _section(r: _Reader) -> Section:
    parts: list[int] = []
    text = ""
    while r.peek() != ord("]"):
        if parts:
            r.expect(b".")
        if ord("0") <= r.peek() <= ord("9"):
            parts.append(r.number(nonzero=True))
            continue
        m = _SECTION_TEXT.match(r.data, r.pos)
        if m is None:
            raise r.error(f"bad section at position {r.pos}")
        text = m.group().decode().upper()
        r.pos = m.end()
        break
    if text == "MIME" and not parts:
        raise r.error("MIME needs a part number")  # RFC 9051 6.4.5
    fields: list[str] = []
    if text.startswith("HEADER.FIELDS"):
        r.sp()
        r.expect(b"(")
        while True:
            r.count()
            fields.append(r.astring().upper())
            if r.peek() == ord(")"):
                r.pos += 1
                break
            r.sp()
    return Section(tuple(parts), text, tuple(fields))


def _store(r: _Reader) -> CommandArgs:
    return _kept_tail(r, "STORE", _store_items)


def _store_items(r: _Reader, numbers: SequenceSet) -> StoreArgs:
    unchangedsince = None
    if r.peek() == ord("("):  # store-modifiers (RFC 7162 3.1.3)
        r.pos += 1
        word = r.atom().upper()
        if word != "UNCHANGEDSINCE":
            raise r.error(f"unknown STORE modifier {word}")
        r.sp()
        unchangedsince = r.number()
        r.expect(b")")
        r.sp()
    word = r.atom().upper()
    mode = "replace"
    if word[:1] in ("+", "-"):
        mode = "add" if word[0] == "+" else "remove"
        word = word[1:]
    if word not in ("FLAGS", "FLAGS.SILENT"):
        raise r.error(f"bad STORE item {word}")
    r.sp()
    if r.peek() == ord("("):
        flags = r.paren_list("flag")
    else:
        flags = [r.flag()]
        while r.maybe_sp():
            r.count()
            flags.append(r.flag())
    return StoreArgs(numbers, mode, word.endswith(".SILENT"), tuple(flags), unchangedsince)


def _copy(r: _Reader) -> CommandArgs:
    r.sp()
    numbers = r.sequence_set()
    r.sp()
    return CopyArgs(numbers, r.mailbox())


def _uid_expunge(r: _Reader) -> CommandArgs:
    r.sp()
    return UidExpungeArgs(r.sequence_set())


def _id(r: _Reader) -> CommandArgs:
    r.sp()
    if r.peek_is(b"NIL"):
        r.pos += 3
        return IdArgs(None)
    r.expect(b"(")
    params: list[tuple[str, str | None]] = []
    while r.peek() != ord(")"):
        key = r.string_bytes().decode("utf-8", "replace")
        r.sp()
        params.append((key, r.nstring()))
        if r.peek() != ord(")"):
            r.sp()
        if len(params) > 30:  # RFC 2971 3.3
            raise r.error("too many ID parameters")
    r.pos += 1
    return IdArgs(tuple(params))


def _quota_root(r: _Reader) -> CommandArgs:
    r.sp()
    return QuotaRootArgs(r.astring())


def _setquota(r: _Reader) -> CommandArgs:
    r.sp()
    root = r.astring()
    r.sp()
    r.expect(b"(")
    depth = 1
    while depth and not r.at_end():  # skipped: SETQUOTA is refused anyway
        c = r.peek()
        depth += (c == ord("(")) - (c == ord(")"))
        r.pos += 1
    return QuotaRootArgs(root)


_COMMANDS = {
    "CAPABILITY": _no_args, "NOOP": _no_args, "LOGOUT": _no_args, "STARTTLS": _no_args,
    "CHECK": _no_args, "CLOSE": _no_args, "UNSELECT": _no_args, "EXPUNGE": _no_args,
    "NAMESPACE": _no_args, "IDLE": _no_args, "UNAUTHENTICATE": _no_args,
    "LOGIN": _login, "AUTHENTICATE": _authenticate, "ENABLE": _enable, "COMPRESS": _compress,
    "SELECT": _select, "EXAMINE": _select, "CREATE": _create, "DELETE": _mailbox_only,
    "RENAME": _rename, "SUBSCRIBE": _mailbox_only, "UNSUBSCRIBE": _mailbox_only,
    "LIST": _list, "LSUB": _lsub, "STATUS": _status, "APPEND": _append,
    "SEARCH": parse_search, "FETCH": _fetch, "STORE": _store, "COPY": _copy, "MOVE": _copy,
    "UID SEARCH": parse_search, "UID FETCH": _fetch, "UID STORE": _store, "UID COPY": _copy,
    "UID MOVE": _copy, "UID EXPUNGE": _uid_expunge,
    "ID": _id, "GETQUOTA": _quota_root, "GETQUOTAROOT": _mailbox_only, "SETQUOTA": _setquota,
    "SORT": parse_sort, "UID SORT": parse_sort,
    "THREAD": parse_thread, "UID THREAD": parse_thread,
    "CANCELUPDATE": parse_cancelupdate,
    "NOTIFY": parse_notify,
    "GENURLAUTH": parse_genurlauth, "URLFETCH": parse_urlfetch, "RESETKEY": parse_resetkey,
}
fetch_att = _fetch_att  # for MessageNew's attributes in NOTIFY (imap_notify)
