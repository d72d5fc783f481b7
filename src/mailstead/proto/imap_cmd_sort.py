"""SORT and UID SORT (RFC 5256 3, SORT=DISPLAY RFC 5957, ESORT RFC 5267 3) and THREAD and UID
THREAD (RFC 5256 3, ORDEREDSUBJECT and REFERENCES). Pure code.

The messages are chosen by the SEARCH evaluator (imap_search.compile_key): flag-only keys
from the flag rows, others over the full rows. What a sort needs of a message (subject,
addresses, Date:, Message-ID, In-Reply-To, References) comes from the envelope columns
parsed at delivery, read in one query of only the columns wanted (SelectedView.sort_fields);
a message file is read only when a search key needs its text, or for a row stored without
envelope columns (or, for THREAD=REFERENCES, before References was kept).

The per-message work is cut in steps with ``ImapSession.checkpoint`` between them (a turn
for the other sessions every few milliseconds, and the per-command work budget, issue 16),
and the cyclic collector is held off while a step builds its many acyclic objects.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import TYPE_CHECKING, Any, TypeVar, cast

from mailstead.core.models import SortFields
from mailstead.proto import mime, mime_address
from mailstead.proto.base_subject import SubjectKeys, casemap
from mailstead.proto.imap_args import Command, SearchKey, SkAll, SortArgs, ThreadArgs
from mailstead.proto.imap_format import Reply
from mailstead.proto.imap_parse import SORT_CHARSETS
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
from mailstead.proto.imap_thread import (
    Steps,
    ThreadMessage,
    format_threads,
    ordered_subject_steps,
    references_steps,
)

if TYPE_CHECKING:
    from mailstead.proto.imap_session import ImapSession

THREAD_ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")
_WANTED = {  # the stored field each sort criterion reads (SortFields)
    "ARRIVAL": "", "CC": "cc", "DATE": "date", "FROM": "from_", "SIZE": "size",
    "SUBJECT": "subject", "TO": "to", "DISPLAYFROM": "from_", "DISPLAYTO": "to",
}


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
    """The matching messages, in mailbox order: sequence numbers and sort fields side by
    side (lists, so the per-message work runs in C where it can)."""

    seqs: list[int]
    rows: list[SortFields]
    highest_modseq: int = 0


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Holds the cyclic garbage collector off during one synchronous step that builds many
    acyclic objects (rows, thread tree nodes): its collections would re-scan them all, for
    nothing, several times (as store/gcpause.py does for big listings; this module may not
    import the store). Never held across an await. Should a store thread pause and resume
    the collector meanwhile, every interleaving still leaves it on in the end."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
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


async def _matching(s: ImapSession, key: SearchKey, wanted: frozenset[str]) -> Found:
    """The messages the search key selects (the SEARCH evaluator, imap_search.compile_key),
    in mailbox order, with the sort fields ``wanted`` (see SortFields), and their highest
    MODSEQ."""
    view = s.require_view()
    scope = Scope(view.exists, view.last_uid, datetime.now(UTC), frozenset(s.saved_uids))
    test = compile_key(key, scope)
    recent = view.recent_checker() if not s.rev2 else (lambda uid: False)
    all_uids = view.uids_in_seq_ranges([(1, view.exists)]) if view.exists else []
    seqs: list[int] = []
    uids: list[int] = []
    highest = 0
    if isinstance(key, SkAll):
        seqs, uids = list(range(1, len(all_uids) + 1)), all_uids  # no test to run
    elif need(key) is Need.FLAGS:
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
    else:
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
    with s.waiting():
        stored = await view.sort_fields(wanted)
    await s.checkpoint()
    with collector_paused():
        stored_uids = list(map(attrgetter("uid"), stored))
        rows: list[SortFields | None]
        if stored_uids[: len(uids)] == uids:  # the usual case: the whole mailbox, in order
            rows = list(stored[: len(uids)])
        else:
            rows = list(map(dict(zip(stored_uids, stored, strict=True)).get, uids))
    if None in rows:  # expunged meanwhile by another session
        kept = [(seq, r) for seq, r in zip(seqs, rows, strict=True) if r is not None]
        seqs, rows = [seq for seq, _r in kept], [r for _seq, r in kept]
    found = Found(seqs, cast(list[SortFields], rows), highest)
    refs = "references" in wanted
    unknown = [i for i, row in enumerate(found.rows)
               if row.bare or (refs and row.references is None)]
    if unknown:  # rows stored without (some) envelope columns: the message file answers
        with s.waiting():
            metas = await view.messages([found.rows[i].uid for i in unknown])
        files = {m.uid: m for m in metas}
        for i in unknown:
            stored_row = files.get(found.rows[i].uid)
            if stored_row is not None:
                with s.waiting():
                    data = await view.body(stored_row.blob_id, stored_row.size)
                found.rows[i] = _from_message(found.rows[i], data)
                await s.checkpoint()
    await s.checkpoint()
    return found


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


class _Addresses:
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


def _sort_keys(criterion: str, rows: list[SortFields], subjects: SubjectKeys,
               addresses: _Addresses) -> list[Any]:
    """Each row's key for one criterion (RFC 5256 3, RFC 5957 4)."""
    if criterion == "ARRIVAL":
        return list(map(attrgetter("internal_date"), rows))
    if criterion == "DATE":
        return list(map(sent_date, rows))
    if criterion == "SIZE":
        return list(map(attrgetter("size"), rows))
    if criterion == "SUBJECT":
        subject_key = subjects.get
        return [subject_key(r.subject)[2] for r in rows]
    field = {"FROM": "from_", "DISPLAYFROM": "from_", "TO": "to", "DISPLAYTO": "to",
             "CC": "cc"}[criterion]
    display = criterion.startswith("DISPLAY")
    address_key = addresses.key
    return [address_key(value, display) for value in map(attrgetter(field), rows)]


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
    """One tuple per row that orders the rows as ``sort_order`` does: the criteria in turn
    (REVERSE ones compared the other way), then the UID (mailbox order, RFC 5256 3). Used to
    place a message in a kept sorted result (CONTEXT=SORT, imap_context.py)."""
    subjects, addresses = SubjectKeys(), _Addresses()
    columns: list[list[Any]] = []
    for criterion, reverse in criteria:
        keys = _sort_keys(criterion, rows, subjects, addresses)
        columns.append([Reversed(k) for k in keys] if reverse else keys)
    columns.append([r.uid for r in rows])
    return list(zip(*columns, strict=True))


async def sort_order(s: ImapSession, rows: list[SortFields],
                     criteria: tuple[tuple[str, bool], ...]) -> list[int]:
    """The positions of ``rows`` (in mailbox order) sorted by the criteria in turn, REVERSE
    turning one around; rows equal under every criterion stay in mailbox order (RFC 5256 3).
    One stable sort per criterion, the last criterion first: Python's sort keeps equal items
    in their order even with reverse=True."""
    order = list(range(len(rows)))
    subjects, addresses = SubjectKeys(), _Addresses()
    for criterion, reverse in reversed(criteria):
        with collector_paused():
            keys = _sort_keys(criterion, rows, subjects, addresses)
        await s.checkpoint()
        with collector_paused():
            order.sort(key=keys.__getitem__, reverse=reverse)
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
    wanted = frozenset(_WANTED[criterion] for criterion, _reverse in args.criteria) - {""}
    found = await _matching(s, args.key, wanted)
    order = await sort_order(s, found.rows, args.criteria)
    shown = [r.uid for r in found.rows] if cmd.uid else found.seqs
    numbers = [shown[i] for i in order]
    highest = found.highest_modseq
    if args.return_options is not None and "UPDATE" in args.return_options:
        # CONTEXT=SORT (RFC 5267 4.3): the sorted result kept, each message with its keys
        from mailstead.proto import imap_context

        with collector_paused():
            keys = order_keys(args.criteria, found.rows)
            ordered = [keys[i] for i in order]
            uids = [found.rows[i].uid for i in order]
        await s.checkpoint()
        imap_context.start(s, cmd, args.key, frozenset(s.saved_uids), args.criteria, ordered,
                           uids, s.require_view().last_uid)
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
    wanted = {"subject", "date"}
    if wants_refs:
        wanted |= {"message_id", "in_reply_to", "references"}
    found = await _matching(s, args.key, frozenset(wanted))
    shown = [r.uid for r in found.rows] if cmd.uid else found.seqs
    with collector_paused():
        messages = [
            ThreadMessage(number, seq, sent_date(r), r.subject, r.message_id, r.in_reply_to,
                          r.references or "")
            for number, seq, r in zip(shown, found.seqs, found.rows, strict=True)
        ]
    await s.checkpoint()
    subjects = SubjectKeys()
    if wants_refs:
        top = await _drive(s, references_steps(messages, subjects))
        with collector_paused():
            text = format_threads(top)
    else:
        text = await _drive(s, ordered_subject_steps(messages, subjects))
    s.io.write(("* THREAD" + (" " + text if text else "")).encode() + b"\r\n")
    return Reply("OK", "Thread completed")
