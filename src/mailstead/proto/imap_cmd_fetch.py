"""FETCH and UID FETCH (RFC 9051 6.4.5 with BINARY RFC 3516, CONDSTORE/QRESYNC RFC 7162), and
the QRESYNC part of SELECT. Pure code.

Large mailboxes: a FETCH that asks only for UID / FLAGS / MODSEQ reads the flag rows alone and
writes its answer in chunks, draining in between, so ``UID FETCH 1:* (FLAGS)`` on 100,000
messages never holds more than the flag rows. Other fetches read message rows in chunks and a
message file only when an item needs its bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from mailstead.core.errors import CorruptBlob
from mailstead.core.models import FlagState, MessageMeta, SystemFlag
from mailstead.proto import imap_fetch_cache, imap_sexpr, mime, mime_imap, mime_preview
from mailstead.proto import imap_format as fmt
from mailstead.proto.imap_args import Command, FetchArgs, FetchItem, QresyncParams, Section
from mailstead.proto.imap_format import CommandError, Reply
from mailstead.proto.imap_uidonly import fetch_head

if TYPE_CHECKING:
    from mailstead.proto.imap_backend import SelectedView
    from mailstead.proto.imap_session import ImapSession

FLAG_ITEMS = frozenset({"UID", "FLAGS", "MODSEQ"})
TEXT_ITEMS = frozenset({"BODY[]", "BINARY", "BINARY.SIZE", "RFC822", "RFC822.HEADER",
                        "RFC822.TEXT", "ENVELOPE", "BODY", "BODYSTRUCTURE", "PREVIEW"})
ROWS_PER_CHUNK = 200
SEEN = int(SystemFlag.SEEN)  # plain ints: IntFlag arithmetic is slow in per-message loops
LINES_PER_WRITE = 2000
DRAIN_BYTES = 256 * 1024


def _sets_seen(item: FetchItem) -> bool:
    """RFC 9051 6.4.5: BODY[...] and BINARY[...] without .PEEK, RFC822 and RFC822.TEXT."""
    if item.name in ("BODY[]", "BINARY"):
        return not item.peek
    return item.name in ("RFC822", "RFC822.TEXT")


sets_seen = _sets_seen


async def fetch_for_notify(s: ImapSession, uids: list[int], items: list[FetchItem]) -> None:
    """NOTIFY's MessageNew attributes for new messages of the selected mailbox (RFC 5465
    5.2): the FETCH responses a FETCH of these UIDs would give (no \\Seen is set: NOTIFY
    refuses the attributes that would set it)."""
    if {item.name for item in items} <= FLAG_ITEMS:
        await _fetch_flags(s, uids, items, None)
    else:
        await _fetch_messages(s, uids, items, None)


async def cmd_fetch(s: ImapSession, cmd: Command) -> Reply:
    args = cmd.args
    assert isinstance(args, FetchArgs)
    uids = s.resolve(args.numbers, cmd.uid)
    items = list(dict.fromkeys(args.items))  # an item asked twice is answered once
    names = {item.name for item in items}
    if args.changedsince is not None or "MODSEQ" in names:
        s.enable_condstore()  # RFC 7162 3.1
    if args.vanished and not (cmd.uid and s.qresync):
        return Reply("BAD", "VANISHED needs UID FETCH and QRESYNC enabled")  # RFC 7162 3.2.6
    if cmd.uid and "UID" not in names and not s.uidonly:
        # RFC 9051 6.4.9: UID FETCH always returns the UID (under UIDONLY it leads the
        # UIDFETCH line, RFC 9586 3.3).
        items.insert(0, FetchItem("UID"))
    if args.changedsince is not None and "MODSEQ" not in names:
        items.append(FetchItem("MODSEQ"))
    if args.vanished and args.changedsince is not None:
        await _report_vanished_earlier(s, args, args.changedsince)
    names = {item.name for item in items}
    if names <= FLAG_ITEMS:
        found = await _fetch_flags(s, uids, items, args.changedsince)
    else:
        found = await _fetch_messages(s, uids, items, args.changedsince)
    # No drain here: the responses go out with the tagged reply, in one send (ImapSession
    # drains after it); a large FETCH drained on the way already.
    if found < len(uids) and not cmd.uid:
        # RFC 9051 7.1: another session expunged some of them; their EXPUNGE comes later.
        return Reply("NO", "Some of the requested messages no longer exist", "EXPUNGEISSUED")
    return Reply("OK", "Fetch completed")


async def _report_vanished_earlier(s: ImapSession, args: FetchArgs, modseq: int) -> None:
    view = s.require_view()
    changes = await view.changes_since(modseq)
    largest = max(view.last_uid, view.uidnext - 1)
    gone = [u for u in changes.vanished if args.numbers.contains(u, largest)]
    if gone:
        s.io.write(fmt.untagged(f"VANISHED (EARLIER) {fmt.sequence_set(gone)}"))


async def _fetch_flags(
    s: ImapSession, uids: Sequence[int], items: list[FetchItem], changedsince: int | None
) -> int:
    view = s.require_view()
    states = await view.flag_states(uids)
    found = len(states)
    if changedsince is not None:
        states = [st for st in states if st.modseq > changedsince]
    seqs = view.seqs_of([st.uid for st in states])
    if any(item.name == "FLAGS" for item in items):
        s.announce_keywords([st.keywords for st in states])
    render = _flags_renderer(tuple(item.name for item in items), not s.rev2, view, s.uidonly)
    for start in range(0, len(states), LINES_PER_WRITE):
        end = start + LINES_PER_WRITE
        s.io.write(render(seqs[start:end], states[start:end]))
        if end < len(states):
            with s.waiting():
                await s.io.drain()
            await s.checkpoint()
    return found


Renderer = Callable[[Sequence[int | None], Sequence[FlagState]], bytes]


def _never(uid: int) -> bool:
    return False


def _flags_renderer(
    order: tuple[str, ...], rev1: bool, view: SelectedView, uidonly: bool
) -> Renderer:
    """Formats ``* n FETCH (...)`` lines of UID / FLAGS / MODSEQ items for a slice of
    messages. The usual orders are spelled out as comprehensions: this runs once per message
    of FETCH 1:* on huge mailboxes (a None sequence number is a message not in the view).
    Under UIDONLY the lines are ``* uid UIDFETCH (...)`` (RFC 9586 3.3)."""
    recent = view.recent_checker() if rev1 else _never
    flags = fmt.flag_list

    def render(seqs: Sequence[int | None], states: Sequence[FlagState]) -> bytes:
        pairs = zip(seqs, states, strict=True)
        if uidonly:
            return b"".join([_general(order, None, st, recent) for q, st in pairs
                             if q is not None])
        if order == ("UID", "FLAGS"):
            return b"".join([
                b"* %d FETCH (UID %d FLAGS %s)\r\n"
                % (q, st.uid, flags(st.flags, st.keywords, recent(st.uid)))
                for q, st in pairs if q is not None
            ])
        if order == ("FLAGS",):
            return b"".join([
                b"* %d FETCH (FLAGS %s)\r\n" % (q, flags(st.flags, st.keywords, recent(st.uid)))
                for q, st in pairs if q is not None
            ])
        return b"".join([_general(order, q, st, recent) for q, st in pairs if q is not None])

    return render


def _general(
    order: tuple[str, ...], seq: int | None, st: FlagState, recent: Callable[[int], bool]
) -> bytes:
    """One FETCH line; ``seq`` None makes it a UIDFETCH line (UIDONLY, RFC 9586 3.3)."""
    parts = []
    for name in order:
        if name == "UID":
            parts.append(b"UID %d" % st.uid)
        elif name == "FLAGS":
            parts.append(b"FLAGS " + fmt.flag_list(st.flags, st.keywords, recent(st.uid)))
        else:
            parts.append(b"MODSEQ (%d)" % st.modseq)
    head = fetch_head(seq is None, seq or 0, st.uid)
    return head + b" ".join(parts) + b")\r\n"


async def _fetch_messages(
    s: ImapSession, uids: Sequence[int], items: list[FetchItem], changedsince: int | None
) -> int:
    view = s.require_view()
    set_seen = not view.readonly and any(_sets_seen(item) for item in items)
    wants_flags = any(item.name == "FLAGS" for item in items)
    recent_of = view.recent_checker() if not s.rev2 else _never  # \Recent: IMAP4rev1 only
    found = 0
    pending = 0
    damaged: CorruptBlob | None = None
    # Items answered from the row and the per-file cache, without a coroutine per message;
    # a message whose file must be read (the first time, for the cached ones) takes _render.
    fast = _now_renderers(items, s.utf8)
    shape = _shape(items, s.utf8) if fast is not None else ()
    uidonly = s.uidonly
    work = s.work
    lines = _LINES
    for start in range(0, len(uids), ROWS_PER_CHUNK):
        with s.waiting():
            metas = await view.messages(uids[start : start + ROWS_PER_CHUNK])
        found += len(metas)
        if changedsince is not None:
            metas = [m for m in metas if m.modseq > changedsince]
        changed: dict[int, FlagState] = {}
        if set_seen:
            unseen = [m.uid for m in metas if not m.flags & SEEN]
            if unseen:
                update = await view.store_flags(unseen, "add", SEEN, frozenset())
                changed = {st.uid: st for st in update.changed}
        if wants_flags or changed:
            s.announce_keywords([m.keywords for m in metas])
        for meta in metas:
            if work is not None and work.due():  # checkpoint's own test, without a coroutine
                await s.checkpoint()  # other sessions run between messages; the budget holds
            seq = view.seq_of(meta.uid)
            if seq is None:
                continue
            state = changed.get(meta.uid) if changed else None
            line = None
            if fast is not None and state is None:
                recent = recent_of(meta.uid)
                known = lines.get(id(meta))
                if (known is not None and known[0] is meta and known[1] is shape
                        and known[2] is recent):
                    body: bytes | None = known[3]
                else:
                    body = _render_now_body(fast, meta, recent)
                    if body is not None and len(body) <= LINE_KEPT_BYTES:
                        if len(lines) >= LINES_KEPT:
                            lines.clear()
                        lines[id(meta)] = (meta, shape, recent, body)
                if body is not None:
                    line = _line(body, seq, meta.uid, uidonly)
            if line is None:
                try:
                    line = await _render(s, seq, meta, items, state, state is not None
                                         and not wants_flags, recent_of)
                except CorruptBlob as exc:
                    # Nothing of this message is sent; the others still are, and the command
                    # ends NO [CORRUPTION] (imap_session) so the client knows one is missing.
                    damaged = damaged or exc
                    continue
            s.io.write(line)
            pending += len(line)
            if pending >= DRAIN_BYTES:
                pending = 0
                with s.waiting():  # a slow reader costs time, not work
                    await s.io.drain()
    if damaged is not None:
        raise damaged
    return found


class _Message:
    """A message's bytes and part tree, loaded on first use."""

    def __init__(self, s: ImapSession, meta: MessageMeta) -> None:
        self.s = s
        self.meta = meta
        self.data: bytes | None = None
        self.tree: mime.Part | None = None

    async def bytes(self) -> bytes:
        if self.data is None:
            view = self.s.require_view()
            # A small file is read on the spot: work of this command, not a wait (and no
            # stop/resume of the work budget's clock per message).
            self.data = view.body_now(self.meta.blob_id, self.meta.size)
            if self.data is None:
                with self.s.waiting():
                    self.data = await view.body(self.meta.blob_id, self.meta.size)
        return self.data

    async def root(self) -> mime.Part:
        data = await self.bytes()
        if self.tree is None:
            self.tree = imap_fetch_cache.tree(self.meta.blob_id, data)
            await self.s.checkpoint()
        return self.tree


async def _structure(msg: _Message, name: str) -> bytes:
    """ENVELOPE, BODY or BODYSTRUCTURE, encoded: computed once per message file (and session
    mode), as the file never changes."""
    blob_id, utf8 = msg.meta.blob_id, msg.s.utf8
    cached = imap_fetch_cache.encoded(blob_id, name, utf8)
    if cached is not None:
        return cached
    data = await msg.bytes()
    if name == "ENVELOPE":
        # The header is enough: the body's parts are parsed only if another item needs them.
        root = msg.tree or imap_fetch_cache.kept_tree(blob_id) or mime.parse_header_only(data)
        value = mime_imap.envelope(data, root)
    else:
        root = await msg.root()
        value = mime_imap.bodystructure(data, root, name != "BODY")
    encoded = imap_sexpr.encode(value, utf8)
    imap_fetch_cache.remember(blob_id, name, utf8, encoded)
    return encoded


async def _render(
    s: ImapSession,
    seq: int,
    meta: MessageMeta,
    items: list[FetchItem],
    new_state: FlagState | None,
    add_flags: bool,
    recent_of: Callable[[int], bool],
) -> bytes:
    msg = _Message(s, meta)
    flags, keywords, modseq = meta.flags, meta.keywords, meta.modseq
    if new_state is not None:
        flags, keywords, modseq = new_state.flags, new_state.keywords, new_state.modseq
    recent = recent_of(meta.uid)
    parts: list[bytes] = []
    room = _answer_room(meta)
    built = 0
    utf8 = s.utf8
    for item in items:
        if parts:
            built += len(parts[-1])
            if built > room:
                raise CommandError("NO", "Too much data asked for one message", "LIMIT")
        part = _item_now(item, meta, flags, keywords, modseq, recent, utf8)
        if part is None:
            await s.checkpoint()
            part = await _item_later(msg, item)
        parts.append(part)
    if add_flags:
        parts.append(b"FLAGS " + fmt.flag_list(flags, keywords, recent))
        if s.condstore and not any(item.name == "MODSEQ" for item in items):
            parts.append(b"MODSEQ (%d)" % modseq)
    return fetch_head(s.uidonly, seq, meta.uid) + b" ".join(parts) + b")\r\n"


def _answer_room(meta: MessageMeta) -> int:
    """The octets one message's answer may hold: at most a few copies of the message (BODY[]
    and RFC822 together, say), not a hundred, as each item is built in memory before it is
    sent."""
    return 4 * meta.size + (1 << 20)


_STRUCTURES = {"ENVELOPE": b"ENVELOPE ", "BODY": b"BODY ", "BODYSTRUCTURE": b"BODYSTRUCTURE "}
# One item of a FETCH answered from the message's row (and \Recent) or the per-file cache
# alone: its bytes, or None when it needs the message file.
NowRenderer = Callable[[MessageMeta, bool], bytes | None]


def _now_renderers(items: list[FetchItem], utf8: bool) -> list[NowRenderer] | None:
    """Per-item renderers for what ``_item_now`` answers, made once per FETCH (labels and
    cache keys worked out here, not per message); None when some item always needs the
    message file (BODY[], BINARY...)."""
    out: list[NowRenderer] = []
    flag_list = fmt.flag_list
    for item in items:
        name = item.name
        if name == "UID":
            out.append(lambda meta, recent: b"UID %d" % meta.uid)
        elif name == "FLAGS":
            out.append(lambda meta, recent: b"FLAGS " + flag_list(meta.flags, meta.keywords,
                                                                 recent))
        elif name == "MODSEQ":
            out.append(lambda meta, recent: b"MODSEQ (%d)" % meta.modseq)
        elif name == "INTERNALDATE":
            out.append(lambda meta, recent: b"INTERNALDATE "
                       + fmt.internal_date(meta.internal_date))
        elif name == "RFC822.SIZE":
            out.append(lambda meta, recent: b"RFC822.SIZE %d" % meta.size)
        elif name in _STRUCTURES:
            out.append(_cached_structure(name, utf8))
        elif (name == "BODY[]" and item.section is not None
              and item.section.text.startswith("HEADER")):
            out.append(_cached_header(item, item.section))
        else:
            return None
    return out


def _cached_structure(name: str, utf8: bool) -> NowRenderer:
    label = _STRUCTURES[name]
    encoded = imap_fetch_cache.encoded

    def render(meta: MessageMeta, recent: bool) -> bytes | None:
        cached = encoded(meta.blob_id, name, utf8)
        return None if cached is None else label + cached

    return render


def _cached_header(item: FetchItem, section: Section) -> NowRenderer:
    spec = section.spec
    label = b"BODY[" + spec.encode("utf-8", "surrogateescape") + b"]"
    encoded = imap_fetch_cache.encoded

    def render(meta: MessageMeta, recent: bool) -> bytes | None:
        content = encoded(meta.blob_id, spec, False)
        if content is None:
            return None
        suffix, content = _partial(content, item)
        return label + suffix + b" " + imap_sexpr.literal(content)

    return render


# The items between the parentheses of FETCH lines answered by _render_now_body, kept per
# message row: a row (MessageMeta) never changes, a new flag state comes as a new row
# (MailboxView.messages), and the per-file parts (ENVELOPE, BODYSTRUCTURE, header fields)
# are of a file that never changes. So a line is known by the row object itself, the FETCH's
# items (an interned _shape) and \Recent; several sessions or devices fetching the same
# headers build each line once. Keyed by id(row), the row kept in the entry (an id is
# reused only once its object is gone, and this entry keeps it alive); bounded.
LINES_KEPT = 4096
LINE_KEPT_BYTES = 2048  # longer lines (big header fields) are built each time: <= 8 MiB kept
_LINES: dict[int, tuple[MessageMeta, tuple[object, ...], bool, bytes]] = {}
_SHAPES: dict[tuple[object, ...], tuple[object, ...]] = {}
SHAPES_KEPT = 256


def _shape(items: list[FetchItem], utf8: bool) -> tuple[object, ...]:
    """The FETCH's items and mode as one shared object (compared by identity per message)."""
    key = (utf8, *items)
    shape = _SHAPES.get(key)
    if shape is None:
        if len(_SHAPES) >= SHAPES_KEPT:
            _SHAPES.clear()
            _LINES.clear()  # their shapes are no longer the interned ones: never hit again
        shape = _SHAPES[key] = key
    return shape


def _line(body: bytes, seq: int, uid: int, uidonly: bool) -> bytes:
    if uidonly:
        return fetch_head(True, seq, uid) + body + b")\r\n"
    return b"* %d FETCH (%s)\r\n" % (seq, body)


def _render_now_body(renderers: list[NowRenderer], meta: MessageMeta, recent: bool
                     ) -> bytes | None:
    """What one message's FETCH line holds between its parentheses, from
    ``_now_renderers``; None when an item needs the file, or when the answer is past the
    bound ``_render`` enforces (which then refuses it)."""
    parts = []
    for render in renderers:
        part = render(meta, recent)
        if part is None:
            return None
        parts.append(part)
    if len(parts) > 1 and sum(map(len, parts)) - len(parts[-1]) > _answer_room(meta):
        return None
    return b" ".join(parts)


def _item_now(
    item: FetchItem, meta: MessageMeta, flags: int, keywords: frozenset[str], modseq: int,
    recent: bool, utf8: bool,
) -> bytes | None:
    """An item answered from the row or from the per-file cache, without waiting; None
    when it needs the message file (``_item_later``)."""
    name = item.name
    if name == "UID":
        return b"UID %d" % meta.uid
    if name == "FLAGS":
        return b"FLAGS " + fmt.flag_list(flags, keywords, recent)
    if name == "MODSEQ":
        return b"MODSEQ (%d)" % modseq
    if name == "INTERNALDATE":
        return b"INTERNALDATE " + fmt.internal_date(meta.internal_date)
    if name == "RFC822.SIZE":
        return b"RFC822.SIZE %d" % meta.size
    label = _STRUCTURES.get(name)
    if label is not None:
        cached = imap_fetch_cache.encoded(meta.blob_id, name, utf8)
        return None if cached is None else label + cached
    section = item.section
    if name == "BODY[]" and section is not None and section.text.startswith("HEADER"):
        content = imap_fetch_cache.encoded(meta.blob_id, section.spec, False)
        return None if content is None else _section_answer(section, item, content)
    return None


async def _item_later(msg: _Message, item: FetchItem) -> bytes:
    """An item that needs the message file (the first time, for the cached ones)."""
    name = item.name
    if name == "PREVIEW":
        text = mime_preview.preview(await msg.bytes(), await msg.root())
        return b"PREVIEW " + imap_sexpr.encode(text, msg.s.utf8)
    if name in _STRUCTURES:
        return _STRUCTURES[name] + await _structure(msg, name)
    if name == "RFC822":
        return b"RFC822 " + imap_sexpr.literal(await msg.bytes())
    if name in ("RFC822.HEADER", "RFC822.TEXT"):
        spec = mime_imap.SectionSpec((), name.removeprefix("RFC822."))
        content = mime_imap.section(await msg.bytes(), await msg.root(), spec) or b""
        return name.encode() + b" " + imap_sexpr.literal(content)
    if name == "BODY[]":
        return await _body_section(msg, item)
    return await _binary_section(msg, item)


def _partial(content: bytes, item: FetchItem) -> tuple[bytes, bytes]:
    """(label suffix "<origin>", the slice) for BODY[...]<origin.length>."""
    if item.partial is None:
        return b"", content
    origin, length = item.partial
    return b"<%d>" % origin, content[origin : origin + length]


async def _body_section(msg: _Message, item: FetchItem) -> bytes:
    assert item.section is not None
    section = item.section
    if not section.part and not section.text:
        content: bytes | None = await msg.bytes()
    elif section.text.startswith("HEADER"):
        # Small, and asked again by every client on every resync (the header fields of the
        # message list): kept per message file like BODYSTRUCTURE (see _item_now).
        content = await _section(msg, section)
        if content is not None:
            imap_fetch_cache.remember(msg.meta.blob_id, section.spec, False, content)
    else:
        content = await _section(msg, section)
    return _section_answer(section, item, content)


def _section_answer(section: Section, item: FetchItem, content: bytes | None) -> bytes:
    label = b"BODY[" + section.spec.encode("utf-8", "surrogateescape") + b"]"
    if content is None:  # no such part
        return label + b" NIL"
    suffix, content = _partial(content, item)
    return label + suffix + b" " + imap_sexpr.literal(content)


async def _section(msg: _Message, section: Section) -> bytes | None:
    spec = mime_imap.SectionSpec(section.part, section.text, section.fields)
    return mime_imap.section(await msg.bytes(), await msg.root(), spec)


async def _binary_section(msg: _Message, item: FetchItem) -> bytes:
    assert item.section is not None
    part = ".".join(str(n) for n in item.section.part)
    data = await msg.bytes()
    try:
        content = mime_imap.binary_section(data, await msg.root(), part)
    except mime.UnknownEncoding:
        raise CommandError("NO", "Unknown Content-Transfer-Encoding", "UNKNOWN-CTE") from None
    label = item.name.encode() + b"[" + part.encode() + b"]"
    if content is None:
        return label + b" NIL"
    if item.name == "BINARY.SIZE":
        return label + b" %d" % len(content)
    suffix, content = _partial(content, item)
    # RFC 3516 4.3: literal8 only where the content really carries NUL.
    body = imap_sexpr.literal8(content) if b"\x00" in content else imap_sexpr.literal(content)
    return label + suffix + b" " + body


# ---------------------------------------------------------------------------------------------
# SELECT (QRESYNC ...) (RFC 7162 3.2.5)


async def qresync_select(s: ImapSession, params: QresyncParams) -> None:
    """Tells a resynchronising client what vanished and what changed since its MODSEQ."""
    view = s.require_view()
    if params.uidvalidity != view.mailbox.uidvalidity:
        return  # the client's cache is void; it starts over
    changes = await view.changes_since(params.modseq)
    largest = max(view.last_uid, view.uidnext - 1)
    gone = [
        uid for uid in changes.vanished
        if params.known_uids is None or params.known_uids.contains(uid, largest)
    ]
    if gone:
        s.io.write(fmt.untagged(f"VANISHED (EARLIER) {fmt.sequence_set(gone)}"))
    s.announce_keywords([st.keywords for st in changes.changed])
    lines = []
    for st in changes.changed:
        seq = view.seq_of(st.uid)
        if seq is not None:
            lines.append(s.flags_fetch_line(seq, st.uid, st.flags, st.keywords, st.modseq))
    s.io.write(b"".join(lines))
