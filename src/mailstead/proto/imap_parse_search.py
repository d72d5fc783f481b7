"""IMAP command parser, the searching commands: SEARCH with its keys (RFC 9051 6.4.4, RFC 3501
6.4.4; ESEARCH's RETURN, RFC 4731; MODSEQ, RFC 7162 3.1.5), SORT and THREAD (RFC 5256, SORT=DISPLAY
RFC 5957), ESORT/CONTEXT's RETURN options, PARTIAL and CANCELUPDATE (RFC 5267, RFC 9394).
Split from imap_parse.py, whose command table names these parsers; same conventions.
"""

from __future__ import annotations

from mailstead.proto.imap_args import (
    CancelUpdateArgs,
    CommandArgs,
    SearchArgs,
    SearchKey,
    SkAge,
    SkAll,
    SkAnd,
    SkDate,
    SkFlag,
    SkModseq,
    SkNot,
    SkOr,
    SkRecent,
    SkSet,
    SkSize,
    SkText,
    SortArgs,
    ThreadArgs,
)
from mailstead.proto.imap_reader import _MAX_DEPTH, _Reader


def parse_search(r: _Reader) -> CommandArgs:
    r.sp()
    returns: tuple[str, ...] | None = None
    partial = None
    if r.peek_is(b"RETURN ("):  # ESEARCH (RFC 4731), CONTEXT=SEARCH (RFC 5267 4)
        r.pos += 7
        returns, partial = _returns(r, ("MIN", "MAX", "ALL", "COUNT", "SAVE"), "SEARCH")
        r.sp()
    charset = "US-ASCII"
    if r.peek_is(b"CHARSET "):
        r.pos += 8
        charset = r.astring().upper()
        if not _charset_known(charset):
            raise r.error(
                f"unsupported charset {charset}", code="BADCHARSET (US-ASCII UTF-8)"
            )
        r.sp()
    keys = [_search_key(r, charset, 0)]
    while r.maybe_sp():
        keys.append(_search_key(r, charset, 0))
    key = keys[0] if len(keys) == 1 else SkAnd(tuple(keys))
    return SearchArgs(key, charset, returns, partial)


def _charset_known(charset: str) -> bool:
    try:
        "".encode(charset)
    except (LookupError, ValueError):  # unknown; a name that is no str; the "undefined" codec
        return False
    return True


_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True), "FLAGGED": ("\\Flagged", True), "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False), "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False), "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
_DATE_KEYS = {
    "BEFORE": (False, "BEFORE"), "ON": (False, "ON"), "SINCE": (False, "SINCE"),
    "SENTBEFORE": (True, "BEFORE"), "SENTON": (True, "ON"), "SENTSINCE": (True, "SINCE"),
}
_TEXT_KEYS = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"}


def _search_string(r: _Reader, charset: str) -> str:
    raw = r.astring_bytes()
    try:
        return raw.decode(charset)
    except (ValueError, LookupError):  # not that charset; UnicodeError for IDNA and the like
        raise r.error(f"search string is not valid {charset}") from None


def _search_key(r: _Reader, charset: str, depth: int) -> SearchKey:
    if depth > _MAX_DEPTH:
        raise r.error("search keys nested too deeply", "LIMIT")
    r.count()
    c = r.peek()
    if c == ord("("):
        r.pos += 1
        keys = [_search_key(r, charset, depth + 1)]
        while r.peek() != ord(")"):
            r.sp()
            keys.append(_search_key(r, charset, depth + 1))
        r.pos += 1
        return keys[0] if len(keys) == 1 else SkAnd(tuple(keys))
    if c in (ord("*"), ord("$")) or ord("0") <= c <= ord("9"):
        return SkSet(r.sequence_set(), uid=False)
    word = r.atom().upper()
    if word == "ALL":
        return SkAll()
    if word in _FLAG_KEYS:
        flag, present = _FLAG_KEYS[word]
        return SkFlag(flag, present)
    if word in ("KEYWORD", "UNKEYWORD"):
        r.sp()
        return SkFlag(r.flag(), word == "KEYWORD")
    if word in ("NEW", "OLD", "RECENT"):
        if word == "NEW":  # RECENT UNSEEN
            return SkAnd((SkRecent(True), SkFlag("\\Seen", False)))
        return SkRecent(word == "RECENT")
    if word in _DATE_KEYS:
        r.sp()
        sent, op = _DATE_KEYS[word]
        return SkDate(sent, op, r.date())
    if word in ("LARGER", "SMALLER"):
        r.sp()
        return SkSize(word == "LARGER", r.number())
    if word in _TEXT_KEYS:
        r.sp()
        return SkText(word, _search_string(r, charset))
    if word == "HEADER":
        r.sp()
        name = r.astring().upper()
        r.sp()
        return SkText(name, _search_string(r, charset))
    if word == "NOT":
        r.sp()
        return SkNot(_search_key(r, charset, depth + 1))
    if word == "OR":
        r.sp()
        left = _search_key(r, charset, depth + 1)
        r.sp()
        return SkOr(left, _search_key(r, charset, depth + 1))
    if word == "UID":
        r.sp()
        return SkSet(r.sequence_set(), uid=True)
    if word == "MODSEQ":  # RFC 7162 3.1.5: MODSEQ [entry-name entry-type] mod-sequence-valzer
        r.sp()
        if r.peek() == 0x22:
            r.quoted()
            r.sp()
            r.atom()
            r.sp()
        return SkModseq(r.number())
    if word in ("OLDER", "YOUNGER"):  # WITHIN (RFC 5032)
        r.sp()
        return SkAge(word == "OLDER", r.number(nonzero=True))
    raise r.error(f"unknown search key {word}")


SORT_KEYS = frozenset(
    {"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"}
)
SORT_CHARSETS = ("US-ASCII", "UTF-8")


def _sort_charset(r: _Reader) -> tuple[str, str]:
    """The charset of SORT/THREAD (mandatory, RFC 5256 3) and the one to decode the search
    strings with: an unsupported charset is answered NO [BADCHARSET] by the command."""
    charset = r.astring().upper()
    return charset, charset if charset in SORT_CHARSETS else "latin-1"


def _search_keys(r: _Reader, charset: str) -> SearchKey:
    keys = [_search_key(r, charset, 0)]
    while r.maybe_sp():
        keys.append(_search_key(r, charset, 0))
    return keys[0] if len(keys) == 1 else SkAnd(tuple(keys))


def parse_sort(r: _Reader) -> CommandArgs:
    """SORT [RETURN (options)] (criteria) charset search-keys (RFC 5256 3, RFC 5267 3)."""
    r.sp()
    returns: tuple[str, ...] | None = None
    partial = None
    if r.peek_is(b"RETURN ("):  # ESORT (RFC 5267 3), CONTEXT=SORT (RFC 5267 4)
        r.pos += 7
        returns, partial = _returns(r, ("MIN", "MAX", "ALL", "COUNT"), "SORT")
        r.sp()
    words = r.paren_list("atom")
    criteria: list[tuple[str, bool]] = []
    reverse = False
    for word in (w.upper() for w in words):
        if word == "REVERSE" and not reverse:
            reverse = True
            continue
        if word not in SORT_KEYS:
            raise r.error(f"unknown sort criterion {word}")
        criteria.append((word, reverse))
        reverse = False
    if reverse or not criteria:
        raise r.error("SORT needs sort criteria (REVERSE must precede one)")
    r.sp()
    charset, decode_as = _sort_charset(r)
    r.sp()
    return SortArgs(tuple(criteria), charset, _search_keys(r, decode_as), returns, partial)


def parse_thread(r: _Reader) -> CommandArgs:
    """THREAD algorithm charset search-keys (RFC 5256 3)."""
    r.sp()
    algorithm = r.atom().upper()
    r.sp()
    charset, decode_as = _sort_charset(r)
    r.sp()
    return ThreadArgs(algorithm, charset, _search_keys(r, decode_as))


def _returns(
    r: _Reader, known: tuple[str, ...], command: str
) -> tuple[tuple[str, ...], tuple[int, int] | None]:
    """The RETURN options of SEARCH / SORT: those of ESEARCH / ESORT, plus CONTEXT, UPDATE
    and ``PARTIAL range`` (RFC 5267 4.2-4.4). An empty list means ALL (RFC 4731 3.1)."""
    words = r.paren_list("atom")
    options: list[str] = []
    partial = None
    i = 0
    while i < len(words):
        option = words[i].upper()
        if option == "PARTIAL" and partial is None and i + 1 < len(words):
            partial = partial_range(words[i + 1])
            if partial is None:
                raise r.error(f"bad PARTIAL range {words[i + 1]}")
            i += 1
        elif option not in (*known, "CONTEXT", "UPDATE"):
            raise r.error(f"unknown {command} return option {option}")
        options.append(option)
        i += 1
    if partial is not None and "ALL" in options:  # RFC 9394 3.1: one or the other
        raise r.error("PARTIAL and ALL cannot be combined")
    return tuple(options) or ("ALL",), partial


def partial_range(text: str) -> tuple[int, int] | None:
    """``first:last`` positions in a result, from 1 (RFC 5267 4.4), or ``-first:-last``
    counted from the end (RFC 9394 3.1), either way round; None when malformed."""
    first, colon, last = text.partition(":")
    negative = first.startswith("-")
    if not colon or last.startswith("-") != negative:
        return None
    a, b = first.removeprefix("-"), last.removeprefix("-")
    if not (a.isdigit() and b.isdigit() and a.isascii() and b.isascii()):
        return None
    lo, hi = sorted((int(a), int(b)))
    if lo == 0 or hi >= 2**32:
        return None
    return (-lo, -hi) if negative else (lo, hi)


def parse_cancelupdate(r: _Reader) -> CommandArgs:
    """CANCELUPDATE 1*(SP tag-string) (RFC 5267 4.5)."""
    tags = []
    while r.maybe_sp():
        r.count()
        tags.append(r.astring())
    if not tags:
        raise r.error("CANCELUPDATE needs the tag of a search")
    return CancelUpdateArgs(tuple(tags))
