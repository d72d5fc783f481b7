"""SORT and UID SORT (RFC 5256 3, SORT=DISPLAY RFC 5957, ESORT RFC 5267 3) and THREAD and UID
THREAD (RFC 5256 3, ORDEREDSUBJECT and REFERENCES). Pure code.

The messages are chosen by the SEARCH evaluator (imap_search.compile_key): flag-only keys
from the flag rows, others over the full rows. What a sort needs of a message comes from
the store in one query of only the columns wanted (SelectedView.sort_columns): dates, size,
addresses, and the keys computed once at delivery (core/base_subject.thread_keys: the base
subject's comparison key, the msg-ids to thread by), so a SORT or THREAD parses nothing per
message. The process keeps those columns for the big mailboxes it sorted lately and reads
only new messages' rows afterwards, and keeps THREAD=REFERENCES' step 1 to extend it with new
mail (imap_sort_cache.py), whichever session asks. A message file is read only when a search
key needs its text, or for a row stored without envelope columns (or, for THREAD=REFERENCES,
before References was kept).

The per-message work is cut in steps with ``ImapSession.checkpoint`` between them (a turn
for the other sessions every few milliseconds, and the per-command work budget, issue 16),
and the cyclic collector is held off while a step builds its many acyclic objects.
"""

from __future__ import annotations

import contextlib
import gc
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

from mailstead.core.base_subject import SubjectKeys, casemap, thread_keys
from mailstead.core.models import MessageMeta, SortFields
from mailstead.proto import mime, mime_address
from mailstead.proto.imap_args import Command, SearchKey, SkAll, SortArgs, ThreadArgs
from mailstead.proto.imap_format import Reply
from mailstead.proto.imap_parse_search import SORT_CHARSETS
from mailstead.proto.imap_search import (
    CHUNK,
    Candidate,
    Need,
    Scope,
    compile_key,
    esearch_response,
    need,
    resolve,
    uses_modseq,
)
from mailstead.proto.imap_sort_cache import KEY_COLUMNS, LINKS
from mailstead.proto.imap_thread import (
    Links,
    Steps,
    ThreadColumns,
    extend_links,
    format_threads,
    ordered_subject_steps,
    references_steps,
)

if TYPE_CHECKING:
    from mailstead.proto.imap_session import ImapSession

THREAD_ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")
_COLUMN = {  # the key each sort criterion reads (MetadataStore.sort_columns)
    "ARRIVAL": "arrival", "CC": "cc", "DATE": "sent", "FROM": "from", "SIZE": "size",
    "SUBJECT": "subject_key", "TO": "to", "DISPLAYFROM": "from", "DISPLAYTO": "to",
}
_ADDRESSES = frozenset({"CC", "FROM", "TO", "DISPLAYFROM", "DISPLAYTO"})


T = TypeVar("T")


async def _drive(s: ImapSession, steps: Steps[T]) -> T:
    """Runs a stepped computation (imap_thread.Steps), the other sessions getting a turn
    between its steps."""
    while True:
        try:
            with collector_paused():
                next(steps)
        except StopIteration as done:
            return cast(T, done.value)
        await s.checkpoint()


@dataclass(slots=True)
class Found:
    """The matching messages, in mailbox order: sequence numbers, UIDs and one list per sort
    key asked for (named as MetadataStore.sort_columns names them), side by side, so the
    per-message work runs in C where it can."""

    seqs: list[int]
    uids: list[int]
    keys: dict[str, list[Any]]
    highest_modseq: int = 0
    from_files: bool = False  # some keys were read from message files


@contextlib.contextmanager
def collector_paused(keeps: bool = False) -> Iterator[None]:
    """Holds the cyclic garbage collector off while many acyclic objects are built (rows,
    key lists, a thread tree): its collections would re-scan them all, for nothing, several
    times (as store/gcpause.py does for big listings; this module may not import the store).
    Over one synchronous step; or over the whole of a SORT or THREAD after its search, its
    awaits included, as each time the collector came back on between two steps it would
    scan everything built so far again (a third of a big THREAD's time when other sessions
    allocate meanwhile): their cyclic garbage waits that long (a fraction of a second),
    reference counting frees the rest as usual. Nested pauses find it off and leave it off;
    should a store thread or another command pause and resume it meanwhile, every
    interleaving still leaves it on in the end (at worst some of a pause is lost).

    ``keeps``: the pause builds what the process keeps (the key columns and step 1 of
    imap_sort_cache.py, lists of 100,000 items): back on, everything allocated meanwhile
    goes straight to the oldest generation, unscanned (``gc.freeze`` then ``gc.unfreeze``,
    as store/gcpause.py does), instead of the next young collection walking those lists
    (20 ms after a cold THREAD on 100,000 messages). What is moved stays collectable: a
    cycle among it goes at the next full collection."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            if keeps:
                gc.freeze()
                gc.unfreeze()
            gc.enable()


def _micros(when: datetime) -> int:
    """RFC 5256 2.2: a date without a time zone is taken as UTC."""
    aware = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    return round(aware.timestamp() * 1_000_000)


def _from_message(f: SortFields, data: bytes) -> SortFields:
    env = mime.parse_envelope_fields(data)
    if not f.bare:  # only References was missing
        return f._replace(references=env.references)
    return f._replace(
        subject=env.subject, from_=env.from_, to=env.to, cc=env.cc,
        date=None if env.date is None else _micros(env.date), message_id=env.message_id,
        in_reply_to=env.in_reply_to, references=env.references,
    )


def _file_keys(meta: MessageMeta, data: bytes, names: tuple[str, ...]) -> tuple[Any, ...]:
    """A row of ``sort_columns`` for a message whose stored keys are unknown (stored without
    envelope columns, or before References was kept): from its file."""
    env = mime.parse_envelope_fields(data)
    keys = thread_keys(env.subject, env.message_id, env.in_reply_to, env.references)
    known = {
        "arrival": _micros(meta.internal_date), "size": meta.size,
        "sent": _micros(env.date if env.date is not None else meta.internal_date),
        "from": env.from_, "to": env.to, "cc": env.cc, "subject_key": keys.subject,
        "reply": int(keys.reply), "thread_id": keys.message_id,
        "thread_parents": keys.parents or "",
    }
    return (meta.uid, *(known[name] for name in names))


async def _select(s: ImapSession, key: SearchKey) -> tuple[list[int], list[int], int]:
    """The sequence numbers and UIDs of the messages the search key selects (the SEARCH
    evaluator, imap_search.compile_key), in mailbox order, and their highest MODSEQ."""
    view = s.require_view()
    scope = Scope(view.exists, view.last_uid, datetime.now(UTC), frozenset(s.saved_uids))
    test = compile_key(key, scope)
    recent = view.recent_checker() if not s.rev2 else (lambda uid: False)
    all_uids = view.uids_in_seq_ranges([(1, view.exists)]) if view.exists else []
    seqs: list[int] = []
    uids: list[int] = []
    highest = 0
    if isinstance(key, SkAll):
        return list(range(1, len(all_uids) + 1)), all_uids, 0  # no test to run
    if need(key) is Need.FLAGS:
        # Flag, set and MODSEQ keys (and ALL) are answered from the flag rows.
        with s.waiting():
            states = await view.flag_states(all_uids)
        for seq, st in zip(view.seqs_of([st.uid for st in states]), states, strict=True):
            await s.checkpoint()  # cheap unless a turn for the others is due
            if seq is None:
                continue
            if test(Candidate(seq, st.uid, st.modseq, st.flags, st.keywords, recent(st.uid))):
                seqs.append(seq)
                uids.append(st.uid)
                highest = max(highest, st.modseq)
        return seqs, uids, highest
    for start in range(0, len(all_uids), CHUNK):
        with s.waiting():
            metas = await view.messages(all_uids[start : start + CHUNK])
        for seq, meta in zip(view.seqs_of([m.uid for m in metas]), metas, strict=True):
            await s.checkpoint()
            if seq is None:
                continue
            c = Candidate(seq, meta.uid, meta.modseq, meta.flags, meta.keywords,
                          recent(meta.uid), meta)
            result = test(c)
            if result is None:  # as SEARCH does: the text, one key scan at a time
                with s.waiting():
                    c.data = await view.body(meta.blob_id, meta.size)
                result = await resolve(c, test, s)
            if result:
                seqs.append(seq)
                uids.append(meta.uid)
                highest = max(highest, meta.modseq)
    return seqs, uids, highest


async def _matching(s: ImapSession, selected: tuple[list[int], list[int], int],
                    names: tuple[str, ...], unknown_if: str) -> Found:
    """The messages ``_select`` selected with the sort keys ``names`` (see
    MetadataStore.sort_columns), read in one pass over only those columns. A message whose
    ``unknown_if`` key is None has its keys taken from its file (see ``_file_keys``)."""
    view = s.require_view()
    seqs, uids, highest = selected
    if unknown_if not in names:
        names = (*names, unknown_if)
    with s.waiting():
        stored = await KEY_COLUMNS.read(view, names)  # lists kept: copied below
    await s.checkpoint()
    with collector_paused():
        if stored[0][: len(uids)] != uids:  # not simply the whole mailbox in order
            where = dict(zip(stored[0], range(len(stored[0])), strict=True))
            places: list[int | None] = [where.get(uid) for uid in uids]
            if None in places:  # expunged meanwhile by another session
                kept = [(seq, p) for seq, p in zip(seqs, places, strict=True) if p is not None]
                seqs, places = [seq for seq, _p in kept], [p for _seq, p in kept]
            stored = [list(map(column.__getitem__, cast(list[int], places)))
                      for column in stored]
        else:
            stored = [column[: len(uids)] for column in stored]
    await s.checkpoint()
    keys = {name: stored[n + 1] for n, name in enumerate(names)}
    flags = keys[unknown_if]
    if None in flags:  # rows whose keys only the message file has
        unknown = [i for i, value in enumerate(flags) if value is None]
        with s.waiting():
            metas = {m.uid: m for m in await view.messages([stored[0][i] for i in unknown])}
        for i in unknown:
            meta = metas.get(stored[0][i])
            if meta is None:  # expunged meanwhile: sorts as a message without any field
                for name, column in keys.items():
                    if column[i] is None:
                        column[i] = 0 if name == "reply" else ""
                continue
            with s.waiting():
                data = await view.body(meta.blob_id, meta.size)
            for column, value in zip(stored, _file_keys(meta, data, names), strict=True):
                column[i] = value
            await s.checkpoint()
    return Found(seqs, stored[0], keys, highest, None in flags)


class Results:
    """The last few SORT and THREAD results over big selections, kept by this process so a
    client that repeats one (a webmail refreshing its list) is answered without reading or
    sorting 100,000 rows again. A result depends only on the messages selected, whose
    stored keys never change for a UID while the UIDVALIDITY stays: it is reused only for
    exactly the same UIDs (and sequence numbers, which a THREAD shows) in the same mailbox,
    compared in full (a few milliseconds for 100,000). Only an optimisation: every worker
    process keeps its own."""

    ENTRIES = 4
    MIN_MESSAGES = 1000  # smaller selections are cheap to answer afresh

    def __init__(self) -> None:
        self._kept: OrderedDict[tuple[Any, ...], tuple[list[int], list[int], Any]] = \
            OrderedDict()

    def get(self, key: tuple[Any, ...], uids: list[int], seqs: list[int]) -> Any:
        found = self._kept.get(_result_key(key))
        if found is None or found[0] != uids or found[1] != seqs:
            return None
        self._kept.move_to_end(_result_key(key))
        return found[2]

    def put(self, key: tuple[Any, ...], uids: list[int], seqs: list[int], value: Any) -> None:
        if len(uids) < self.MIN_MESSAGES:
            return
        self._kept[_result_key(key)] = (uids, seqs, value)
        self._kept.move_to_end(_result_key(key))
        while len(self._kept) > self.ENTRIES:
            self._kept.popitem(last=False)


def _result_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
    mailbox = key[0]
    return (mailbox.id, mailbox.uidvalidity, *key[1:])


RESULTS = Results()


def _charset_ok(charset: str) -> Reply | None:
    if charset in SORT_CHARSETS:
        return None
    # RFC 5256 3: an unsupported charset is NO with the BADCHARSET response code.
    return Reply("NO", f"Unsupported charset {charset}",
                 "BADCHARSET (" + " ".join(SORT_CHARSETS) + ")")


# ---------------------------------------------------------------------------------------------
# SORT


def sent_date(f: SortFields) -> int:
    """The Date: header, else the internal date (RFC 5256 2.2), in microseconds."""
    date = f.date
    return f.internal_date if date is None else date


class Addresses:
    """First address of an address field, memoised per distinct field value."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, bool], str] = {}

    def key(self, value: str, display: bool) -> str:
        found = self._seen.get((value, display))
        if found is None:
            found = casemap(self._first(value, display))
            if len(self._seen) < 100_000:
                self._seen[(value, display)] = found
        return found

    @staticmethod
    def _first(value: str, display: bool) -> str:
        for name, _adl, mailbox, host in mime_address.parse_addresses(value) if value else []:
            if mailbox is None or host is None:
                continue  # a group's start or end: its members follow
            if not display:
                return mailbox  # RFC 5256 3: the addr-mailbox of the first address
            # RFC 5957 3: the decoded display name when there is one, else the addr-spec
            shown = mime.decoded_header(name).strip() if name else ""
            return shown or f"{mailbox}@{host}"
        return ""


def _sort_keys(criterion: str, keys: dict[str, list[Any]], addresses: Addresses
               ) -> list[Any]:
    """Each message's key for one criterion (RFC 5256 3, RFC 5957 4), from the columns of
    ``_matching``."""
    column = keys[_COLUMN[criterion]]
    if criterion not in _ADDRESSES:
        return column  # numbers, or the stored comparison key of the base subject
    display = criterion.startswith("DISPLAY")
    address_key = addresses.key
    return [address_key(value, display) for value in column]


class Reversed:
    """A sort key compared the other way round (a REVERSE criterion inside a tuple key)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: Reversed) -> bool:
        return bool(other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reversed) and bool(self.value == other.value)

    __hash__ = None  # type: ignore[assignment]


def order_keys(criteria: tuple[tuple[str, bool], ...], rows: list[SortFields]
               ) -> list[tuple[Any, ...]]:
    """One tuple per row that orders the rows as ``sort_order`` does (see ``key_tuples``)."""
    subject_key = SubjectKeys().get
    keys: dict[str, list[Any]] = {
        "arrival": [r.internal_date for r in rows], "sent": [sent_date(r) for r in rows],
        "size": [r.size for r in rows], "subject_key": [subject_key(r.subject)[2] for r in rows],
        "from": [r.from_ for r in rows], "to": [r.to for r in rows], "cc": [r.cc for r in rows],
    }
    return key_tuples(criteria, keys, [r.uid for r in rows])


def key_tuples(criteria: tuple[tuple[str, bool], ...], keys: dict[str, list[Any]],
               uids: list[int]) -> list[tuple[Any, ...]]:
    """One tuple per message that orders the messages as ``sort_order`` does: the criteria
    in turn (REVERSE ones compared the other way), then the UID (mailbox order, RFC 5256 3).
    Used to place a message in a kept sorted result (CONTEXT=SORT, imap_context.py)."""
    addresses = Addresses()
    columns: list[list[Any]] = []
    for criterion, reverse in criteria:
        column = _sort_keys(criterion, keys, addresses)
        columns.append([Reversed(k) for k in column] if reverse else column)
    columns.append(uids)
    return list(zip(*columns, strict=True))


async def sort_order(s: ImapSession, keys: dict[str, list[Any]], count: int,
                     criteria: tuple[tuple[str, bool], ...]) -> list[int]:
    """The positions of the ``count`` messages (in mailbox order) sorted by the criteria in
    turn, REVERSE turning one around; messages equal under every criterion stay in mailbox
    order (RFC 5256 3). One stable sort per criterion, the last criterion first: Python's
    sort keeps equal items in their order even with reverse=True."""
    order = list(range(count))
    addresses = Addresses()
    for criterion, reverse in reversed(criteria):
        with collector_paused():
            column = _sort_keys(criterion, keys, addresses)
        await s.checkpoint()
        with collector_paused():
            order.sort(key=column.__getitem__, reverse=reverse)
        await s.checkpoint()
    return order


async def cmd_sort(s: ImapSession, cmd: Command) -> Reply:
    args = cmd.args
    assert isinstance(args, SortArgs)
    s.require_view()
    from mailstead.proto.imap_context import tag_in_use

    refused = _charset_ok(args.charset) or tag_in_use(s, cmd, args.return_options)
    if refused is not None:
        return refused
    with_modseq = uses_modseq(args.key)
    if with_modseq:
        s.enable_condstore()
    names = tuple(dict.fromkeys(_COLUMN[criterion] for criterion, _reverse in args.criteria))
    selected = await _select(s, args.key)
    seqs, uids, highest = selected
    kept_as = (s.require_view().mailbox, "SORT", args.criteria)
    updates = args.return_options is not None and "UPDATE" in args.return_options
    order = None if updates else RESULTS.get(kept_as, uids, seqs)
    if order is None:
        with collector_paused(keeps=True):
            found = await _matching(s, selected, names, "subject_key")
            seqs, uids = found.seqs, found.uids
            order = await sort_order(s, found.keys, len(uids), args.criteria)
        RESULTS.put(kept_as, uids, seqs, order)
    shown = uids if cmd.uid else seqs
    numbers = [shown[i] for i in order]
    if updates:
        # CONTEXT=SORT (RFC 5267 4.3): the sorted result kept, each message with its keys
        from mailstead.proto import imap_context

        with collector_paused():
            keys = key_tuples(args.criteria, found.keys, uids)
            ordered = [keys[i] for i in order]
            sorted_uids = [uids[i] for i in order]
        await s.checkpoint()
        imap_context.start(s, cmd, args.key, frozenset(s.saved_uids), args.criteria, ordered,
                           sorted_uids, s.require_view().last_uid)
    if args.return_options is None:
        line = "* SORT" + (" " + " ".join(map(str, numbers)) if numbers else "")
        if with_modseq and numbers:
            line += f" (MODSEQ {highest})"  # RFC 7162 3.1.5
        s.io.write(line.encode() + b"\r\n")
    else:
        modseq = highest if with_modseq else 0
        s.io.write(esearch_response(cmd, args.return_options, numbers, modseq, args.partial))
    return Reply("OK", "Sort completed")


# ---------------------------------------------------------------------------------------------
# THREAD


async def _references_text(s: ImapSession, cols: ThreadColumns, links: Links | None) -> str:
    """Steps 2 to 6 and the response text. The thread tree (a list per container with
    children) dies on return, while the caller still holds the collector off: back on, its
    first collection would otherwise scan every one of those lists (30 ms on 100,000)."""
    forest = await _drive(s, references_steps(cols, links))
    return format_threads(forest)


async def cmd_thread(s: ImapSession, cmd: Command) -> Reply:
    args = cmd.args
    assert isinstance(args, ThreadArgs)
    s.require_view()
    if args.algorithm not in THREAD_ALGORITHMS:
        return Reply("BAD", f"Unknown threading algorithm {args.algorithm}")
    refused = _charset_ok(args.charset)
    if refused is not None:
        return refused
    if uses_modseq(args.key):
        s.enable_condstore()
    wants_refs = args.algorithm == "REFERENCES"
    names: tuple[str, ...] = ("sent", "subject_key")
    if wants_refs:
        names += ("reply", "thread_id", "thread_parents")
    selected = await _select(s, args.key)
    kept_as = (s.require_view().mailbox, "THREAD", args.algorithm, cmd.uid)
    text = RESULTS.get(kept_as, selected[1], selected[0])
    if text is None:
        with collector_paused(keeps=True):
            found = await _matching(s, selected, names, names[-1])
            keys = found.keys
            cols = ThreadColumns(found.uids if cmd.uid else found.seqs, keys["sent"],
                                 keys["subject_key"], keys.get("reply", []),
                                 keys.get("thread_id", []), keys.get("thread_parents", []))
            if wants_refs:
                # Step 1 over the whole mailbox is kept (imap_sort_cache.LinkCache) and only
                # extended when new mail came since; never from keys a file gave (rare).
                mailbox = s.require_view().mailbox
                cache_key = (mailbox.id, mailbox.uidvalidity)
                kept = isinstance(args.key, SkAll) and not found.from_files
                links = LINKS.get(cache_key, found.uids) if kept else None
                links = await _drive(s, extend_links(cols, links))
                if kept:
                    LINKS.put(cache_key, found.uids, links)
                text = await _references_text(s, cols, links)
            else:
                text = await _drive(s, ordered_subject_steps(cols))
            RESULTS.put(kept_as, found.uids, found.seqs, text)
    s.io.write(("* THREAD" + (" " + text if text else "")).encode() + b"\r\n")
    return Reply("OK", "Thread completed")
