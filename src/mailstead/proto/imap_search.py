"""SEARCH and UID SEARCH (RFC 9051 6.4.4, ESEARCH RFC 4731, CONDSTORE MODSEQ RFC 7162 3.1.5,
WITHIN RFC 5032): evaluation of a search key over message rows, reading a message file only
when a key needs its text, and the SEARCH / ESEARCH responses. Pure code.

Evaluation is three-valued: ``matches`` returns None when the answer depends on the message
text and the text is not loaded yet; the caller loads it and asks again. So "UNSEEN BODY x"
reads only unseen messages, and flag-only searches never leave the flag rows.
"""

from __future__ import annotations

import bisect
import contextlib
import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from mailstead.core.models import SYSTEM_FLAG_NAMES, MessageMeta
from mailstead.proto import imap_format as fmt
from mailstead.proto import mime
from mailstead.proto.imap_args import (
    Command,
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
)
from mailstead.proto.imap_format import Reply

if TYPE_CHECKING:
    from mailstead.proto.imap_session import ImapSession

CHUNK = 500  # message rows read per store call
# Plain ints: IntFlag's "&" runs Python code, too slow for a test per message.
_SYSTEM = {name.upper(): int(bit) for name, bit in SYSTEM_FLAG_NAMES.items()}
_ENVELOPE_FIELDS = {"FROM": "from_", "TO": "to", "CC": "cc", "SUBJECT": "subject"}


class Need(enum.IntEnum):
    """What a search key reads: flag rows, full rows (dates, sizes, envelope), message text."""

    FLAGS = 0
    META = 1
    TEXT = 2


def need(key: SearchKey) -> Need:
    if isinstance(key, SkAnd):
        return max((need(k) for k in key.keys), default=Need.FLAGS)
    if isinstance(key, SkOr):
        return max(need(key.left), need(key.right))
    if isinstance(key, SkNot):
        return need(key.key)
    if isinstance(key, SkDate | SkSize | SkAge):
        return Need.META
    if isinstance(key, SkText):
        return Need.META if key.where in _ENVELOPE_FIELDS else Need.TEXT
    return Need.FLAGS


def any_key(key: SearchKey, test: Callable[[SearchKey], bool]) -> bool:
    """True when ``test`` holds for a key anywhere in the tree (AND, OR, NOT looked into)."""
    if test(key):
        return True
    if isinstance(key, SkAnd):
        return any(any_key(k, test) for k in key.keys)
    if isinstance(key, SkOr):
        return any_key(key.left, test) or any_key(key.right, test)
    if isinstance(key, SkNot):
        return any_key(key.key, test)
    return False


def uses_modseq(key: SearchKey) -> bool:
    return any_key(key, lambda k: isinstance(k, SkModseq))


@dataclass(slots=True)
class Candidate:
    """One message being tested."""

    seq: int
    uid: int
    modseq: int
    flags: int
    keywords: frozenset[str]
    recent: bool
    meta: MessageMeta | None = None
    data: bytes | None = None
    # Text keys already answered for this message, and those a test is waiting for
    # (see ``resolve``).
    hits: dict[SkText, bool] | None = None
    wanted: list[SkText] | None = None
    _root: mime.Part | None = None
    _body_text: str | None = None
    # Header fields decoded once per message and SEARCH, however many keys read them.
    _fields: dict[str, list[str]] | None = None
    _header_text: str | None = None

    def root(self) -> mime.Part:
        assert self.data is not None
        if self._root is None:
            self._root = mime.parse(self.data)
        return self._root

    def body_text(self) -> str:
        if self._body_text is None:
            assert self.data is not None
            self._body_text = mime.text_for_search(self.data, self.root()).casefold()
        return self._body_text

    def _decode_fields(self) -> dict[str, list[str]]:
        if self._fields is None:
            by_name: dict[str, list[str]] = {}
            lines = []
            for f in self.root().fields:
                value = mime.decoded_header(f.value)
                by_name.setdefault(f.name.lower(), []).append(value.casefold())
                lines.append(f"{f.name}: {value}")
            self._fields = by_name
            self._header_text = "\n".join(lines).casefold()
        return self._fields

    def header_values(self, name: str) -> list[str]:
        return self._decode_fields().get(name.lower(), [])

    def header_text(self) -> str:
        self._decode_fields()
        assert self._header_text is not None
        return self._header_text


async def resolve(c: Candidate, test: Predicate, s: ImapSession) -> bool | None:
    """Tests a message whose bytes are loaded, scanning its text for one key at a time (in
    the order the test asks for them, so a failing key early in an AND spares the rest), with
    a checkpoint after each scan: the other sessions run in between and the command's budget
    holds, however big the message and however many keys (issue 16). Keys asked twice are
    scanned once, and the header is decoded once per message."""
    c.root()  # the parse: one step of its own
    await s.checkpoint()
    c.hits = {}
    batch = 1
    while True:
        c.wanted = []
        result = test(c)
        if result is not None or not c.wanted:
            return result
        for key in c.wanted[:batch]:  # batches double: few re-tests for many keys
            if key not in c.hits:
                c.hits[key] = _scan(key, c)
                await s.checkpoint()
        batch *= 2


@dataclass(frozen=True, slots=True)
class Scope:
    largest_seq: int
    largest_uid: int
    now: datetime
    saved: frozenset[int] = frozenset()  # UIDs of "$" (SEARCHRES)


Predicate = Callable[[Candidate], "bool | None"]


def compile_key(key: SearchKey, scope: Scope) -> Predicate:
    """Turns a search key into a function of one message, so the per-message work is a few
    attribute tests (SEARCH runs it over every message of the mailbox)."""
    if isinstance(key, SkAll):
        return lambda c: True
    if isinstance(key, SkAnd):
        return _all_of([compile_key(k, scope) for k in key.keys])
    if isinstance(key, SkOr):
        return _any_of(compile_key(key.left, scope), compile_key(key.right, scope))
    if isinstance(key, SkNot):
        inner = compile_key(key.key, scope)

        def negated(c: Candidate) -> bool | None:
            r = inner(c)
            return None if r is None else not r

        return negated
    if isinstance(key, SkFlag):
        return _flag_test(key)
    if isinstance(key, SkRecent):
        present = key.present
        return lambda c: c.recent == present
    if isinstance(key, SkSet):
        return _set_test(key, scope)
    if isinstance(key, SkModseq):
        floor = key.modseq
        return lambda c: c.modseq >= floor
    if isinstance(key, SkSize):
        size, larger = key.size, key.larger
        if larger:
            return lambda c: _meta(c).size > size
        return lambda c: _meta(c).size < size
    if isinstance(key, SkAge):
        seconds, older, now = key.seconds, key.older, scope.now

        def age_test(c: Candidate) -> bool:
            age = (now - _aware(_meta(c).internal_date)).total_seconds()
            return age >= seconds if older else age < seconds

        return age_test
    if isinstance(key, SkDate):
        return _date_test(key)
    text_key = key
    field = _ENVELOPE_FIELDS.get(key.where)
    if field is None:
        return lambda c: _text_matches(text_key, c)
    tests = [(field, key.value.casefold())]

    def envelope_test(c: Candidate) -> bool | None:
        # _text_matches's first step, with the needle casefolded once per SEARCH.
        meta = c.meta
        if meta is not None:
            hit = _envelope_hit(tests, meta)
            if hit is not None:
                return hit
        return _text_matches(text_key, c)

    return envelope_test


def _all_of(preds: list[Predicate]) -> Predicate:
    def all_of(c: Candidate) -> bool | None:
        unknown = False
        for pred in preds:
            r = pred(c)
            if r is False:
                return False
            if r is None:
                unknown = True
        return None if unknown else True

    return all_of


def _any_of(left: Predicate, right: Predicate) -> Predicate:
    def any_of(c: Candidate) -> bool | None:
        a = left(c)
        if a is True:
            return True
        b = right(c)
        if b is True:
            return True
        return None if None in (a, b) else False

    return any_of


def _system_flags(key: SearchKey) -> tuple[int, int] | None:
    """(bits that must be set, bits that must be clear) when the whole key is system flag
    tests ANDed, such as UNSEEN or FLAGGED UNSEEN; None for any other key."""
    keys = key.keys if isinstance(key, SkAnd) else (key,)
    on = off = 0
    for k in keys:
        if isinstance(k, SkAnd):
            inner = _system_flags(k)
            if inner is None:
                return None
            on, off = on | inner[0], off | inner[1]
            continue
        bit = _SYSTEM.get(k.flag.upper()) if isinstance(k, SkFlag) else None
        if bit is None or not isinstance(k, SkFlag):
            return None
        if k.present:
            on |= bit
        else:
            off |= bit
    return (on, off) if keys else None


def _narrowed(key: SearchKey, scope: Scope, uids: list[int]) -> list[int]:
    """The UIDs of ``uids`` (the mailbox, in sequence order) inside every message set ANDed
    at the top of ``key``: "UID 1000:1200 SUBJECT x" reads 201 rows, not the mailbox. The
    key is still tested on each of them; this only skips messages it cannot match."""
    kept: set[int] | None = None
    for k in key.keys if isinstance(key, SkAnd) else (key,):
        if not isinstance(k, SkSet) or k.numbers.saved:
            continue
        picked: list[int] = []
        if k.uid:
            for lo, hi in k.numbers.bounds(scope.largest_uid):
                picked += uids[bisect.bisect_left(uids, lo):bisect.bisect_right(uids, hi)]
        else:  # uids[i] has sequence number i + 1
            for lo, hi in k.numbers.bounds(scope.largest_seq):
                picked += uids[max(lo, 1) - 1:hi]
        kept = set(picked) if kept is None else kept & set(picked)
    if kept is None:
        return uids
    return sorted(kept)


def _flag_test(key: SkFlag) -> Predicate:
    bit = _SYSTEM.get(key.flag.upper())
    present = key.present
    if bit is not None:
        if present:
            return lambda c: c.flags & bit != 0
        return lambda c: c.flags & bit == 0
    wanted = key.flag.casefold()  # keywords compare without case (RFC 9051 2.3.2)
    return lambda c: any(k.casefold() == wanted for k in c.keywords) == present


def _set_test(key: SkSet, scope: Scope) -> Predicate:
    if key.numbers.saved:
        saved = scope.saved
        return lambda c: c.uid in saved
    largest = scope.largest_uid if key.uid else scope.largest_seq
    inside = _in_ranges(key.numbers.bounds(largest))
    if key.uid:
        return lambda c: inside(c.uid)
    return lambda c: inside(c.seq)


def _in_ranges(bounds: list[tuple[int, int]]) -> Callable[[int], bool]:
    """Membership in a union of ranges in O(log n): a sequence set may hold thousands of
    ranges, tested once per message."""
    merged: list[list[int]] = []
    for lo, hi in sorted(bounds):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    if len(merged) == 1:
        lo, hi = merged[0]
        return lambda n: lo <= n <= hi
    starts = [lo for lo, _hi in merged]
    ends = [hi for _lo, hi in merged]

    def inside(n: int) -> bool:
        i = bisect.bisect_right(starts, n) - 1
        return i >= 0 and n <= ends[i]

    return inside


# Time zones run from UTC-12:00 to UTC+14:00: a Date: stored as an instant (its zone not kept)
# fell on one of the days that range spans, in the sender's own zone.
_WEST = timedelta(hours=12)
_EAST = timedelta(hours=14)


def _date_test(key: SkDate) -> Predicate:
    op, day = key.op, key.day

    def compare(value: date) -> bool:
        if op == "BEFORE":
            return value < day
        if op == "ON":
            return value == day
        return value >= day

    if not key.sent:
        # RFC 9051 6.4.4: the internal date's day, time and zone disregarded.
        return lambda c: compare(_meta(c).internal_date.date())

    def sent_test(c: Candidate) -> bool | None:
        # RFC 3501 6.4.4 / RFC 9051 6.4.4: SENT* compare the day of the Date: header as written,
        # in the sender's own zone, not converted to ours.
        meta = _meta(c)
        if c.data is None:
            stored = meta.envelope.date
            if stored is None:
                return None  # read the Date: header from the message
            instant = _aware(stored)
            earliest, latest = (instant - _WEST).date(), (instant + _EAST).date()
            # BEFORE and SINCE are monotonic in the day: the two ends agreeing settles them.
            # ON may hold for a day strictly between the ends (26 hours can touch 3 days).
            settled = compare(earliest) == compare(latest) and (
                op != "ON" or not earliest <= day <= latest)
            if earliest == latest or settled:
                return compare(earliest)
            return None  # near midnight somewhere: the header says which day it was
        return compare(_sent_day(c))

    return sent_test


def _envelope_tests(key: SearchKey) -> list[tuple[str, str]] | None:
    """(envelope attribute, casefolded string) of each text key when ``key`` is only such
    keys on envelope fields, ANDed, with UID sets (which ``_narrowed`` has applied); else
    None."""
    tests = []
    for k in key.keys if isinstance(key, SkAnd) else (key,):
        if isinstance(k, SkText) and k.where in _ENVELOPE_FIELDS:
            tests.append((_ENVELOPE_FIELDS[k.where], k.value.casefold()))
        elif not (isinstance(k, SkSet) and k.uid and not k.numbers.saved):
            return None
    return tests or None


def _envelope_hit(tests: list[tuple[str, str]], meta: MessageMeta) -> bool | None:
    """Whether the message matches every test; None when a column it needs is empty (the
    general test then reads the message's own header, as ``_text_matches`` does)."""
    envelope = meta.envelope
    for field, needle in tests:
        value = getattr(envelope, field)
        if not value:
            return None
        if needle not in value.casefold():
            return False
    return True


def _meta(c: Candidate) -> MessageMeta:
    assert c.meta is not None, "search key needs message rows"
    return c.meta


def _sent_day(c: Candidate) -> date:
    """The day of the message's Date: header in its own zone, or of the internal date when
    it has none that parses (RFC 9051 6.4.4 leaves that case to the server)."""
    raw = c.root().get("Date")
    if raw:
        with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
            return parsedate_to_datetime(raw).date()
    return _meta(c).internal_date.date()


def _text_matches(key: SkText, c: Candidate) -> bool | None:
    envelope_field = _ENVELOPE_FIELDS.get(key.where)
    if envelope_field is not None and c.meta is not None:
        # The envelope parsed at delivery answers without reading the file; a row stored
        # without one falls back to the message's own header.
        value = getattr(c.meta.envelope, envelope_field)
        if value:
            return key.value.casefold() in value.casefold()
    if c.data is None:
        return None
    if c.hits is None:
        return _scan(key, c)
    hit = c.hits.get(key)
    if hit is None and c.wanted is not None:
        c.wanted.append(key)  # ``resolve`` scans for it, then tests again
    return hit


def _scan(key: SkText, c: Candidate) -> bool:
    """Whether the message's text holds the key's string (its bytes are loaded)."""
    needle = key.value.casefold()
    if key.where == "BODY":
        return needle in c.body_text()
    if key.where == "TEXT":
        return needle in c.header_text() or needle in c.body_text()
    values = c.header_values(key.where)
    if not needle:  # an empty string matches every message that has the field
        return bool(values)
    return any(needle in v for v in values)


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


# ---------------------------------------------------------------------------------------------
# The command


async def cmd_search(s: ImapSession, cmd: Command) -> Reply:
    args = cmd.args
    assert isinstance(args, SearchArgs)
    view = s.require_view()
    from mailstead.proto.imap_context import tag_in_use

    refused = tag_in_use(s, cmd, args.return_options)
    if refused is not None:
        return refused
    with_modseq = uses_modseq(args.key)
    if with_modseq:
        s.enable_condstore()
    level = need(args.key)
    scope = Scope(view.exists, view.last_uid, datetime.now(UTC), frozenset(s.saved_uids))
    s.saved_uids = []  # a failing SEARCH leaves "$" empty (RFC 5182 2.1)
    test = compile_key(args.key, scope)
    recent = view.recent_checker() if not s.rev2 else (lambda uid: False)
    all_uids = view.uids_in_seq_ranges([(1, view.exists)]) if view.exists else []
    all_uids = _narrowed(args.key, scope, all_uids)
    found: list[tuple[int, int, int]] = []  # (seq, uid, modseq)
    work = s.work
    system = _system_flags(args.key)
    if level is Need.FLAGS and system is not None:
        # UNSEEN, FLAGGED...: the commonest searches, tested on the flag bits directly.
        on, off = system
        states = await view.flag_states(all_uids)
        pairs = zip(view.seqs_of([st.uid for st in states]), states, strict=True)
        hits = [(seq, st) for seq, st in pairs
                if seq is not None and st.flags & on == on and not st.flags & off]
        found = [(seq, st.uid, st.modseq) for seq, st in hits]
    elif level is Need.FLAGS:
        states = await view.flag_states(all_uids)
        for seq, st in zip(view.seqs_of([st.uid for st in states]), states, strict=True):
            if work is not None and work.due():  # checkpoint's own test
                await s.checkpoint()  # a thousand keys on 100,000 messages is real work
            if seq is None:
                continue
            c = Candidate(seq, st.uid, st.modseq, st.flags, st.keywords, recent(st.uid))
            if test(c):
                found.append((seq, st.uid, st.modseq))
    else:
        # SUBJECT / FROM / TO / CC strings (in UID sets, which _narrowed applied already) are
        # tested on the envelope columns without a Candidate per message; a message whose
        # column is empty takes the general test below (which reads its file).
        envelope = _envelope_tests(args.key)
        for start in range(0, len(all_uids), CHUNK):
            with s.waiting():
                metas = await view.messages(all_uids[start : start + CHUNK])
            for seq, meta in zip(view.seqs_of([m.uid for m in metas]), metas, strict=True):
                if work is not None and work.due():  # checkpoint's own test
                    await s.checkpoint()
                if seq is None:
                    continue
                if envelope is not None:
                    hit = _envelope_hit(envelope, meta)
                    if hit is not None:
                        if hit:
                            found.append((seq, meta.uid, meta.modseq))
                        continue
                c = Candidate(
                    seq, meta.uid, meta.modseq, meta.flags, meta.keywords, recent(meta.uid), meta
                )
                result = test(c)
                if result is None:
                    with s.waiting():
                        c.data = await view.body(meta.blob_id, meta.size)
                    result = await resolve(c, test, s)
                if result:
                    found.append((seq, meta.uid, meta.modseq))
    found.sort()
    numbers = [uid if cmd.uid else seq for seq, uid, _modseq in found]
    highest = max((modseq for _seq, _uid, modseq in found), default=0)
    options = args.return_options or ()
    if "UPDATE" in options:  # CONTEXT=SEARCH (RFC 5267 4.3): keep the result up to date
        from mailstead.proto import imap_context

        uids = [uid for _seq, uid, _modseq in found]
        imap_context.start(s, cmd, args.key, scope.saved, None, uids, uids, scope.largest_uid)
    if "SAVE" in options:
        kept = [uid for _seq, uid, _modseq in found]
        if args.partial is not None:  # RFC 9394 3.1: SAVE keeps what PARTIAL returns
            from mailstead.proto.imap_context import partial_slice

            kept = kept[partial_slice(len(kept), args.partial)]
        s.saved_uids = _saved(options, kept)
        if options == ("SAVE",):  # RFC 5182 2.1: nothing else asked, nothing sent
            return Reply("OK", "Search completed (result saved)")
    if args.return_options is None and not s.rev2:
        line = "* SEARCH" + "".join(f" {n}" for n in numbers)
        if with_modseq and numbers:
            line += f" (MODSEQ {highest})"
        s.io.write(line.encode() + b"\r\n")
    else:
        options = args.return_options or ("ALL",)
        modseq = _esearch_modseq(options, found) if with_modseq else 0
        s.io.write(esearch_response(cmd, options, numbers, modseq, args.partial))
    return Reply("OK", "Search completed")


def _esearch_modseq(options: tuple[str, ...], found: list[tuple[int, int, int]]) -> int:
    """The MODSEQ of an ESEARCH answer (RFC 7162 3.1.5, RFC 4731 3.2): the highest of the
    messages it returns. Only MIN and/or MAX asked: the modseq of those messages; with ALL or
    COUNT: of every match. ``found`` is in sequence order (so in UID order too)."""
    if not found:
        return 0
    if "ALL" in options or "COUNT" in options or not {"MIN", "MAX"} & set(options):
        return max(modseq for _seq, _uid, modseq in found)
    returned = []
    if "MIN" in options:
        returned.append(found[0][2])
    if "MAX" in options:
        returned.append(found[-1][2])
    return max(returned)


def _saved(options: tuple[str, ...], uids: list[int]) -> list[int]:
    """What SAVE keeps: everything, or only MIN and/or MAX when those were asked for."""
    if not uids or not ({"MIN", "MAX"} & set(options)) or "ALL" in options or "COUNT" in options:
        return uids
    keep = set()
    if "MIN" in options:
        keep.add(uids[0])
    if "MAX" in options:
        keep.add(uids[-1])
    return sorted(keep)


def esearch_response(cmd: Command, options: tuple[str, ...], numbers: list[int], modseq: int,
                     partial: tuple[int, int] | None = None) -> bytes:
    """``* ESEARCH (TAG "a1") UID MIN 2 COUNT 3`` (RFC 4731 3.1), ``PARTIAL (1:10 ...)``
    (RFC 5267 4.4). For SORT's ESEARCH (RFC 5267 3) ``numbers`` come in sort order: MIN and
    MAX are then the first and last of the sorted result, ALL and PARTIAL keep its order."""
    parts = [f"* ESEARCH (TAG {fmt.quoted(cmd.tag)})"]
    if cmd.uid:
        parts.append("UID")
    if numbers:
        if "MIN" in options:
            parts.append(f"MIN {numbers[0]}")
        if "MAX" in options:
            parts.append(f"MAX {numbers[-1]}")
    if "COUNT" in options:
        parts.append(f"COUNT {len(numbers)}")
    if numbers and "ALL" in options:
        parts.append(f"ALL {fmt.sequence_set(numbers)}")
    if partial is not None:
        from mailstead.proto.imap_context import partial_data, partial_slice

        parts.append(partial_data(partial, numbers[partial_slice(len(numbers), partial)]))
    if modseq and numbers:
        parts.append(f"MODSEQ {modseq}")
    return (" ".join(parts) + "\r\n").encode()
