"""CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 section 4): the PARTIAL return option, and
search and sort results the server keeps up to date (UPDATE, CANCELUPDATE). Pure code.

A SEARCH or SORT with ``RETURN (UPDATE ...)`` leaves an update context behind: the result's
messages (UIDs; for SORT with their sort keys, in sort order). As the session learns of
changes (``ImapSession.report_updates``, after commands and during IDLE) only the changed
messages are tested again: the new ones, those whose flags changed, and the expunged ones
leave. The client hears ``* ESEARCH (TAG "t") [UID] REMOVEFROM (...) ADDTO (...)``.

What an update may cost is bounded: at most ``MAX_CONTEXTS`` contexts a session, a work
budget for a round of updates (the per-command one, ImapSession.checkpoint), at most
``MAX_RETEST`` changed messages re-tested against a key that reads message rows and
``MAX_TEXT_READS`` message files read for text keys; past that the context is dropped with
``* NO [NOUPDATE "t"]`` (RFC 5267 4.3) and the client searches again if it cares.

Choices where RFC 5267 leaves room (documented in README):
- Updates come when EXPUNGE responses may (RFC 9051 7.5.1; not during FETCH, STORE, SEARCH
  by sequence number): a context by sequence numbers must not see numbers shift under it.
- REMOVEFROM for an expunged message is sent just before its EXPUNGE response, in the numbers
  the client knows then; the other updates after EXISTS and the flag FETCHes.
- SEARCH results are unordered sets: their updates give position 0 and the whole set
  (4.3: ``ADDTO (0 uid-set)``). SORT updates give one ``position number`` pair per message,
  to apply in order: removals from the last position down, additions at their final
  positions from the first up.
- PARTIAL with UPDATE: the context follows the whole result (positions are in the whole
  sorted result); the client picks what falls in its window.
- Keys that depend on the clock (YOUNGER, OLDER) or on sequence numbers are not re-tested
  on unchanged messages.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mailstead.core.models import MessageMeta, SortFields
from mailstead.proto import imap_format as fmt
from mailstead.proto.imap_args import CancelUpdateArgs, Command, SearchKey
from mailstead.proto.imap_format import Reply

if TYPE_CHECKING:
    from mailstead.proto.imap_backend import SelectedView, Updates
    from mailstead.proto.imap_session import ImapSession

MAX_CONTEXTS = 10  # update contexts one session may hold
MAX_RETEST = 10_000  # changed messages one round re-tests against a key reading message rows
MAX_TEXT_READS = 500  # message files one round may read for one context
UPDATE_SECONDS = 2.0  # work (CPU seconds) one round of updates may cost, all contexts


class TooCostly(Exception):
    """This round of updates would cost more than a context may: drop it (NOUPDATE)."""


# ---------------------------------------------------------------------------------------------
# PARTIAL (RFC 5267 4.4, RFC 9394 3.1)


def partial_slice(count: int, partial: tuple[int, int]) -> slice:
    """The part of a result of ``count`` items that a PARTIAL range names: positions from 1,
    or from the end when negative (-1 is the last)."""
    lo, hi = partial
    if lo > 0:
        return slice(lo - 1, hi)
    start, stop = count + hi, count + lo + 1  # -1:-3 of 10 items -> [7:10]
    return slice(max(start, 0), max(stop, 0))


def partial_data(partial: tuple[int, int], numbers: list[int]) -> str:
    """``PARTIAL (1:100 uid-set)`` or ``PARTIAL (1:100 NIL)``; ``numbers`` is the window (a
    sorted result keeps its order)."""
    lo, hi = partial
    return f"PARTIAL ({lo}:{hi} {fmt.sequence_set(numbers) if numbers else 'NIL'})"


# ---------------------------------------------------------------------------------------------
# Update contexts


@dataclass(eq=False)
class UpdateContext:
    """One kept result. ``order`` holds the result in order: UIDs ascending for SEARCH, the
    sort key tuples (imap_cmd_sort.order_keys, the UID last) for SORT; ``entries`` maps each
    member UID to its item of ``order``."""

    tag: str
    uid: bool  # UID SEARCH / UID SORT: updates name messages by UID
    key: SearchKey
    saved: frozenset[int]  # "$" as it was when the search ran
    criteria: tuple[tuple[str, bool], ...] | None  # SORT criteria; None for SEARCH
    order: list[Any] = field(default_factory=list)
    entries: dict[int, Any] = field(default_factory=dict)

    @property
    def sorted(self) -> bool:
        return self.criteria is not None

    def position(self, uid: int) -> int:
        return bisect.bisect_left(self.order, self.entries[uid]) + 1

    def remove(self, uid: int) -> int:
        """Takes a member out; returns the position it had."""
        pos = self.position(uid)
        del self.order[pos - 1]
        del self.entries[uid]
        return pos

    def insert(self, uid: int, entry: Any) -> int:
        """Puts a message in; returns its position."""
        pos = bisect.bisect_left(self.order, entry)
        self.order.insert(pos, entry)
        self.entries[uid] = entry
        return pos + 1


def esearch_update(ctx: UpdateContext, removed: list[tuple[int, int]],
                   added: list[tuple[int, int]]) -> bytes:
    """``* ESEARCH (TAG "t") UID REMOVEFROM (...) ADDTO (...)`` (RFC 5267 4.3) from
    (position, number) pairs in the order they apply."""
    parts = [f"* ESEARCH (TAG {fmt.quoted(ctx.tag)})"]
    if ctx.uid:
        parts.append("UID")
    for name, pairs in (("REMOVEFROM", removed), ("ADDTO", added)):
        if not pairs:
            continue
        if ctx.sorted:
            parts.append(f"{name} (" + " ".join(f"{p} {n}" for p, n in pairs) + ")")
        else:  # an unordered result: position 0, the whole set
            parts.append(f"{name} (0 {fmt.sequence_set(sorted(n for _p, n in pairs))})")
    return (" ".join(parts) + "\r\n").encode()


def sort_row(meta: MessageMeta) -> SortFields:
    """The SORT fields of a message from its row (as the store's sort_fields gives them)."""
    env = meta.envelope
    bare = not (env.subject or env.from_ or env.to or env.cc or env.date is not None
                or env.message_id or env.in_reply_to)
    return SortFields(
        meta.uid, _micros(meta.internal_date), meta.size, env.subject, env.from_, env.to,
        env.cc, None if env.date is None else _micros(env.date), env.message_id,
        env.in_reply_to, env.references, bare,
    )


def _micros(when: datetime) -> int:
    aware = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    return round(aware.timestamp() * 1_000_000)


class Contexts:
    """A session's update contexts, and the changes not yet tested against them."""

    def __init__(self, seen_uid: int) -> None:
        self.active: dict[str, UpdateContext] = {}
        self.dirty: set[int] = set()  # messages whose flags changed since the last round
        self.seen_uid = seen_uid  # messages above this UID are new to every context

    def touch(self, uids: list[int]) -> None:
        """This session changed these messages' flags itself (STORE)."""
        if self.active:
            self.dirty.update(uids)

    def expunged(self, view: SelectedView, expunged: list[tuple[int, int]]) -> bytes:
        """REMOVEFROM for members among the expunged messages, sent before the EXPUNGE
        responses: ``expunged`` is (seq after the previous removals, uid), so the number the
        client knows now is seq + the removals before it."""
        if not expunged or not self.active:
            return b""
        out = []
        for ctx in self.active.values():
            gone = [(seq + i, uid) for i, (seq, uid) in enumerate(expunged)
                    if uid in ctx.entries]
            if not gone:
                continue
            pairs = sorted(((ctx.position(uid), uid if ctx.uid else seq) for seq, uid in gone),
                           reverse=True)
            for _seq, uid in gone:
                ctx.remove(uid)
            out.append(esearch_update(ctx, pairs, []))
        return b"".join(out)

    async def report(self, s: ImapSession, updates: Updates, allow_expunge: bool) -> None:
        """Tests the changed and new messages against every context and tells the client
        what entered or left a result. Waits, like EXPUNGE, for a moment when sequence
        numbers may change (RFC 9051 7.5.1)."""
        view = s.view
        if view is None or not self.active:
            return
        self.dirty.update(state.uid for _seq, state in updates.flags)
        if not allow_expunge:
            return
        last = view.last_uid
        changed = set(self.dirty)
        if last > self.seen_uid:
            changed.update(view.uids_in_uid_ranges([(self.seen_uid + 1, last)]))
            self.seen_uid = last
        self.dirty.clear()
        uids = sorted(u for u in changed if view.seq_of(u) is not None)
        if not uids:
            return
        from mailstead.proto.imap_session import BudgetSpent, WorkBudget

        outer, s.work = s.work, WorkBudget(UPDATE_SECONDS)
        try:
            for ctx in list(self.active.values()):
                try:
                    line = await _retest(s, view, ctx, uids)
                except (TooCostly, BudgetSpent):
                    del self.active[ctx.tag]
                    s.io.write(fmt.untagged(
                        f"NO [NOUPDATE {fmt.quoted(ctx.tag)}] Too many changes to follow; "
                        "search again"))
                    continue
                if line:
                    s.io.write(line)
        finally:
            s.work = outer


async def _retest(s: ImapSession, view: SelectedView, ctx: UpdateContext,
                  uids: list[int]) -> bytes:
    """Tests ``uids`` (in the view, ascending) against a context's key; updates the context
    and returns the ESEARCH update, or b"" when nothing entered or left."""
    from mailstead.proto.imap_search import (
        CHUNK,
        Candidate,
        Need,
        Scope,
        compile_key,
        need,
        resolve,
    )

    level = need(ctx.key)
    if level is not Need.FLAGS and len(uids) > MAX_RETEST:
        raise TooCostly()
    test = compile_key(ctx.key, Scope(view.exists, view.last_uid, datetime.now(UTC), ctx.saved))
    recent = view.recent_checker() if not s.rev2 else (lambda uid: False)
    verdicts: dict[int, bool] = {}
    metas: dict[int, MessageMeta] = {}
    reads = 0
    if level is Need.FLAGS:
        with s.waiting():
            states = await view.flag_states(uids)
        for st in states:
            await s.checkpoint()
            seq = view.seq_of(st.uid)
            if seq is not None:
                c = Candidate(seq, st.uid, st.modseq, st.flags, st.keywords, recent(st.uid))
                verdicts[st.uid] = bool(test(c))
    else:
        for start in range(0, len(uids), CHUNK):
            with s.waiting():
                rows = await view.messages(uids[start : start + CHUNK])
            for meta in rows:
                await s.checkpoint()
                seq = view.seq_of(meta.uid)
                if seq is None:
                    continue
                c = Candidate(seq, meta.uid, meta.modseq, meta.flags, meta.keywords,
                              recent(meta.uid), meta)
                result = test(c)
                if result is None:
                    reads += 1
                    if reads > MAX_TEXT_READS:
                        raise TooCostly()
                    with s.waiting():
                        c.data = await view.body(meta.blob_id, meta.size)
                    result = await resolve(c, test, s)
                verdicts[meta.uid] = bool(result)
                metas[meta.uid] = meta
    leaving = [u for u, hit in verdicts.items() if not hit and u in ctx.entries]
    entering = [u for u, hit in verdicts.items() if hit and u not in ctx.entries]
    if not leaving and not entering:
        return b""
    entries: dict[int, Any] = {u: u for u in entering}
    if ctx.criteria is not None and entering:
        entries = await _sort_entries(s, view, ctx.criteria, entering, metas, reads)
        entering = [u for u in entering if u in entries]

    def number(uid: int) -> int:
        return uid if ctx.uid else (view.seq_of(uid) or 0)

    # Removals from the last position down, so each position holds when it is applied;
    # then additions at their final positions from the first up.
    removed = sorted(((ctx.position(u), number(u)) for u in leaving), reverse=True)
    for u in leaving:
        ctx.remove(u)
    for u in entering:
        bisect.insort(ctx.order, entries[u])
        ctx.entries[u] = entries[u]
    added = sorted((ctx.position(u), number(u)) for u in entering)
    return esearch_update(ctx, removed, added)


async def _sort_entries(s: ImapSession, view: SelectedView,
                        criteria: tuple[tuple[str, bool], ...], uids: list[int],
                        metas: dict[int, MessageMeta], reads: int) -> dict[int, Any]:
    """The sort keys of messages entering a sorted result, from their rows (and their file
    for a row stored without envelope fields, as SORT does)."""
    from mailstead.proto.imap_cmd_sort import _from_message, order_keys

    missing = [u for u in uids if u not in metas]
    if missing:
        with s.waiting():
            for found in await view.messages(missing):
                metas[found.uid] = found
    rows: list[SortFields] = []
    for u in uids:
        meta = metas.get(u)
        if meta is None:
            continue  # expunged meanwhile: the next round removes nothing it never added
        row = sort_row(meta)
        if row.bare:
            reads += 1
            if reads > MAX_TEXT_READS:
                raise TooCostly()
            with s.waiting():
                data = await view.body(meta.blob_id, meta.size)
            row = _from_message(row, data)
            await s.checkpoint()
        rows.append(row)
    keys = order_keys(criteria, rows)
    return {row.uid: key for row, key in zip(rows, keys, strict=True)}


# ---------------------------------------------------------------------------------------------
# Starting and ending contexts


def tag_in_use(s: ImapSession, cmd: Command, options: tuple[str, ...] | None) -> Reply | None:
    """RFC 5267 4.3: UPDATE with a tag that a kept context already uses SHALL be rejected
    with BAD (the updates are told by tag, so two contexts must not share one). Checked
    before the search runs."""
    if options is None or "UPDATE" not in options:
        return None
    contexts = s.contexts
    if contexts is not None and cmd.tag in contexts.active:
        return Reply("BAD", "Tag reuse: an update context already has this tag")
    return None


def start(s: ImapSession, cmd: Command, key: SearchKey, saved: frozenset[int],
          criteria: tuple[tuple[str, bool], ...] | None, order: list[Any],
          uids: list[int], seen_uid: int) -> None:
    """Keeps the result of a SEARCH / SORT with RETURN (UPDATE): ``order`` as UpdateContext
    holds it, ``uids`` its messages in the same order, ``seen_uid`` the highest UID the
    command looked at. Past MAX_CONTEXTS the client is told NOUPDATE (RFC 5267 4.3) and the
    command still succeeds."""
    contexts = s.contexts
    if contexts is None or not contexts.active:
        contexts = s.contexts = Contexts(seen_uid)
    if cmd.tag not in contexts.active and len(contexts.active) >= MAX_CONTEXTS:
        s.io.write(fmt.untagged(
            f"NO [NOUPDATE {fmt.quoted(cmd.tag)}] Too many update contexts "
            f"(at most {MAX_CONTEXTS}); CANCELUPDATE one first"))
        return
    contexts.seen_uid = min(contexts.seen_uid, seen_uid)
    ctx = UpdateContext(cmd.tag, cmd.uid, key, saved, criteria, order,
                        dict(zip(uids, order, strict=True)))
    contexts.active[cmd.tag] = ctx  # a new tag: tag_in_use refused a kept one


async def cmd_cancelupdate(s: ImapSession, cmd: Command) -> Reply:
    """RFC 5267 4.3.5: ends the named contexts; no more updates for them."""
    args = cmd.args
    assert isinstance(args, CancelUpdateArgs)
    contexts = s.contexts
    active = contexts.active if contexts is not None else {}
    unknown = [tag for tag in args.tags if tag not in active]
    for tag in args.tags:
        active.pop(tag, None)
    if unknown:
        return Reply("BAD", "No update context for " + ", ".join(fmt.quoted(t) for t in unknown))
    return Reply("OK", "Updates cancelled")
