"""IMAP NOTIFY (RFC 5465): the client names mailboxes and events once, and the server tells it
of them as they happen, between commands, without IDLE. Pure code.

``NOTIFY SET [STATUS] (filter events) ...`` / ``NOTIFY NONE`` are parsed here (the command's
args live here too, imap_parse only registers the parser). The session keeps a ``Notifier``
while NOTIFY is on; the network layer waits for "the next command line or a change"
(``Notifier.wait``) and calls ``Notifier.deliver`` when a change came first.

What is told:
- the selected mailbox (SELECTED / SELECTED-DELAYED): EXISTS, EXPUNGE (not with
  SELECTED-DELAYED, whose expunges wait for a command that allows them, RFC 9051 7.5.1),
  FETCH FLAGS, and a FETCH of the new messages' chosen attributes (MessageNew's fetch-att);
- other mailboxes: ``* STATUS name (MESSAGES n UIDNEXT n UNSEEN n)`` (RFC 5465 5.2-5.4),
  HIGHESTMODSEQ too once CONDSTORE is on; at most one per mailbox per wake-up (the feed
  coalesces changes), so the work of one wake-up is bounded by the mailboxes that changed;
- MailboxName: ``* LIST`` of a created mailbox, ``\\NonExistent`` for a deleted one, and the
  new name with ``("OLDNAME" (old))`` for a renamed one (RFC 5465 5.4, RFC 5258 3.5);
- SubscriptionChange: ``* LIST (\\Subscribed)`` or without it (RFC 5465 5.5).

Choices where RFC 5465 leaves room: INBOXES is INBOX (the only mailbox delivery writes to);
a mailbox matched by several groups follows the first of them; without a SELECTED group the
selected mailbox gets no unsolicited responses between commands (its changes are reported at
the next command, as without NOTIFY); likewise its flag changes wait for the next command when
the SELECTED group lacks FlagChange.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mailstead.core.errors import NotFound
from mailstead.core.models import Mailbox
from mailstead.obs import log_event
from mailstead.proto.imap_backend import LIST_CHANGED, FeedWatch
from mailstead.proto.imap_format import Reply

if TYPE_CHECKING:
    from mailstead.proto.imap_args import Command, FetchItem
    from mailstead.proto.imap_reader import _Reader
    from mailstead.proto.imap_session import ImapSession

SELECTED_FILTERS = frozenset({"SELECTED", "SELECTED-DELAYED"})
OTHER_FILTERS = frozenset({"INBOXES", "PERSONAL", "SUBSCRIBED"})
LIST_FILTERS = frozenset({"SUBTREE", "MAILBOXES"})
MESSAGE_EVENTS = frozenset({"MESSAGENEW", "MESSAGEEXPUNGE", "FLAGCHANGE", "ANNOTATIONCHANGE"})
MAILBOX_EVENTS = frozenset({"MAILBOXNAME", "SUBSCRIPTIONCHANGE"})
# The events this server can tell of (named in NO [BADEVENT (...)], RFC 5465 5).
SUPPORTED = ("MessageNew", "MessageExpunge", "FlagChange", "MailboxName", "SubscriptionChange")
_SUPPORTED_UPPER = frozenset(e.upper() for e in SUPPORTED)
MAX_GROUPS = 100
MAX_NAMES = 1000  # mailbox names in the SUBTREE / MAILBOXES lists of one command
STATUS_PAUSE = 50  # STATUS responses between two turns of the other sessions


@dataclass(frozen=True, slots=True)
class EventGroup:
    filter: str  # SELECTED, SELECTED-DELAYED, INBOXES, PERSONAL, SUBSCRIBED, SUBTREE, MAILBOXES
    mailboxes: tuple[str, ...] = ()  # SUBTREE / MAILBOXES, as sent (mUTF-7 for rev1)
    events: frozenset[str] | None = None  # upper case; None = NONE
    fetch: tuple[FetchItem, ...] = ()  # MessageNew's fetch-att (SELECTED only)


@dataclass(frozen=True, slots=True)
class NotifyArgs:
    none: bool = False
    status: bool = False
    groups: tuple[EventGroup, ...] = field(default_factory=tuple)


# ---------------------------------------------------------------------------------------------
# Parsing (RFC 5465 8: notify = "NOTIFY" SP (notify-set / notify-none))


def parse_notify(r: _Reader) -> NotifyArgs:
    r.sp()
    word = r.atom().upper()
    if word == "NONE":
        return NotifyArgs(none=True)
    if word != "SET":
        raise r.error("expected NOTIFY SET or NOTIFY NONE")
    r.sp()
    status = False
    if r.peek_is(b"STATUS"):
        r.expect(b"STATUS")
        r.sp()
        status = True
    groups: list[EventGroup] = []
    names = 0
    while True:
        if len(groups) >= MAX_GROUPS:
            raise r.error(f"too many event groups (at most {MAX_GROUPS})", "LIMIT")
        group = _event_group(r)
        names += len(group.mailboxes)
        if names > MAX_NAMES:
            raise r.error(f"too many mailbox names (at most {MAX_NAMES})", "LIMIT")
        groups.append(group)
        if not r.maybe_sp():
            break
    return NotifyArgs(status=status, groups=tuple(groups))


def _event_group(r: _Reader) -> EventGroup:
    """event-group = "(" filter-mailboxes SP events ")"."""
    r.expect(b"(")
    filt = r.atom().upper()
    mailboxes: tuple[str, ...] = ()
    if filt in LIST_FILTERS:
        r.sp()
        mailboxes = _one_or_more_mailbox(r)
    elif filt not in SELECTED_FILTERS and filt not in OTHER_FILTERS:
        raise r.error(f"unknown mailbox filter {filt}")
    r.sp()
    events: frozenset[str] | None
    fetch: tuple[FetchItem, ...] = ()
    if r.peek() == ord("("):
        r.pos += 1
        found: list[str] = []
        while True:
            r.count()
            event = r.atom().upper()
            found.append(event)
            if event == "MESSAGENEW" and r.peek_is(b" ("):
                r.pos += 1
                fetch = _fetch_atts(r)
            if r.peek() == ord(")"):
                r.pos += 1
                break
            r.sp()
        events = frozenset(found)
    else:
        if r.atom().upper() != "NONE":
            raise r.error("expected a list of events or NONE")
        events = None
    r.expect(b")")
    return EventGroup(filt, mailboxes, events, fetch)


def _one_or_more_mailbox(r: _Reader) -> tuple[str, ...]:
    if r.peek() != ord("("):
        return (r.mailbox(),)
    r.pos += 1
    names: list[str] = []
    while True:
        r.count()
        names.append(r.mailbox())
        if r.peek() == ord(")"):
            r.pos += 1
            return tuple(names)
        r.sp()


def _fetch_atts(r: _Reader) -> tuple[FetchItem, ...]:
    from mailstead.proto.imap_parse import fetch_att

    r.expect(b"(")
    items: list[FetchItem] = []
    while True:
        r.count()
        items.append(fetch_att(r))
        if r.peek() == ord(")"):
            r.pos += 1
            return tuple(items)
        r.sp()


# ---------------------------------------------------------------------------------------------
# The command


def _check(args: NotifyArgs) -> Reply | None:
    """RFC 5465 5 and 8: the combinations a client must not ask for (BAD), then the events
    this server does not support (NO [BADEVENT (supported events)])."""
    selected = [g for g in args.groups if g.filter in SELECTED_FILTERS]
    if len(selected) > 1:
        return Reply("BAD", "Only one SELECTED or SELECTED-DELAYED event group is allowed")
    unsupported = False
    for g in args.groups:
        if g.events is None:
            continue
        ev = g.events
        # RFC 5465 5: MessageNew and MessageExpunge come together; FlagChange and
        # AnnotationChange need both of them.
        if ("MESSAGENEW" in ev) != ("MESSAGEEXPUNGE" in ev):
            return Reply("BAD", "MessageNew and MessageExpunge must be asked for together")
        if ev & {"FLAGCHANGE", "ANNOTATIONCHANGE"} and "MESSAGENEW" not in ev:
            return Reply("BAD", "FlagChange needs MessageNew and MessageExpunge")
        if g.filter in SELECTED_FILTERS and ev & MAILBOX_EVENTS:  # RFC 5465 8
            return Reply("BAD", "Only message events apply to the selected mailbox")
        if g.fetch and g.filter not in SELECTED_FILTERS:
            # RFC 5465 8: fetch-att is for the selected mailbox only.
            return Reply("BAD", "MessageNew attributes apply to the selected mailbox only")
        if not ev <= _SUPPORTED_UPPER:
            unsupported = True
    for g in selected:
        from mailstead.proto.imap_cmd_fetch import sets_seen

        if any(sets_seen(item) for item in g.fetch):
            return Reply("BAD", "Use BODY.PEEK in NOTIFY: a notification must not set \\Seen")
    if unsupported:
        return Reply("NO", "Event not supported", f"BADEVENT ({' '.join(SUPPORTED)})")
    return None


async def cmd_notify(s: ImapSession, cmd: Command) -> Reply:
    args = cmd.args
    assert isinstance(args, NotifyArgs)
    account = s.require_account()
    if args.none:
        s.end_notify()
        return Reply("OK", "NOTIFY completed")
    problem = _check(args)
    if problem is not None:
        return problem
    s.end_notify()
    # RFC 5465 3.1: a successful NOTIFY SET MUST return the selected mailbox's accumulated
    # changes at once (an implicit NOOP): the store is asked even if no change was announced.
    s.force_refresh = True
    watch = s.mailboxes.watch_account(account.id)
    try:
        notifier = Notifier(s, args.groups, watch)  # may refuse a name (bad mUTF-7)
        await notifier.start(args.status)
    except BaseException:
        watch.close()
        raise
    s.notify = notifier
    return Reply("OK", "NOTIFY completed")


# ---------------------------------------------------------------------------------------------
# The running notifications


class Notifier:
    def __init__(self, s: ImapSession, groups: Iterable[EventGroup], watch: FeedWatch) -> None:
        self.s = s
        self.watch = watch
        self.selected: EventGroup | None = None
        self.others: list[EventGroup] = []
        for g in groups:
            if g.filter in SELECTED_FILTERS:
                self.selected = g
            else:
                self.others.append(g)
        self.names: dict[int, list[str]] = {}  # group index -> stored names (SUBTREE/MAILBOXES)
        for i, g in enumerate(self.others):
            self.names[i] = [s.mailbox_in(n) for n in g.mailboxes]
        self.boxes: dict[int, Mailbox] = {}  # the account's mailboxes by id
        self.subscribed: set[str] = set()
        self.told: dict[int, tuple[int, ...]] = {}  # mailbox id -> last STATUS values sent
        self.watched_view: int | None = None

    # -- which group a mailbox follows --

    def group_of(self, box: Mailbox) -> EventGroup | None:
        for i, g in enumerate(self.others):
            f = g.filter
            if (
                f == "PERSONAL"
                or (f == "INBOXES" and box.name == "INBOX")
                or (f == "SUBSCRIBED" and box.name in self.subscribed)
                or (f == "MAILBOXES" and box.name in self.names[i])
                or (f == "SUBTREE" and any(box.name == n or box.name.startswith(n + "/")
                                           for n in self.names[i]))
            ):
                return g
        return None

    def _events(self, box: Mailbox) -> frozenset[str]:
        g = self.group_of(box)
        return frozenset() if g is None or g.events is None else g.events

    def _view_id(self) -> int | None:
        view = self.s.view
        return view.mailbox.id if view is not None else None

    def _rewatch(self) -> None:
        """Watches every mailbox of the account (and the selected one), not only those with
        message events now: which group a mailbox follows is decided when its change is
        told. A mailbox that joins a group (SUBSCRIBED after a SUBSCRIBE) while its news is
        already on the way would otherwise miss it: the watch would have dropped the news
        before the list change that made it count was read."""
        view_id = self._view_id()
        ids = [i for i in self.boxes if i != view_id]
        if view_id is not None:  # wakes IDLE; between commands only a SELECTED group tells
            ids.append(view_id)
        self.watched_view = view_id
        self.watch.set_ids(ids)

    async def _load(self) -> None:
        account = self.s.require_account()
        self.boxes = {b.id: b for b in await self.s.mailboxes.list_mailboxes(account.id)}
        self.subscribed = set(await self.s.mailboxes.subscriptions(account.id))

    async def start(self, status: bool) -> None:
        await self._load()
        self._rewatch()
        if status:
            # RFC 5465 3: with STATUS, the server MUST send a STATUS response for each
            # mailbox with message events (other than the selected one) before the tagged OK.
            view_id = self._view_id()
            for box in sorted(self.boxes.values(), key=lambda b: b.name):
                if box.id != view_id and self._events(box) & MESSAGE_EVENTS:
                    await self._status(box, force=True)

    def close(self) -> None:
        self.watch.close()

    # -- waiting and telling --

    async def wait(self) -> None:
        if self._view_id() != self.watched_view:  # SELECT / CLOSE since the last wait
            self._rewatch()
        await self.watch.wait()

    async def deliver(self) -> None:
        """Tells the client what changed since the last wake-up (each mailbox once)."""
        dirty = self.watch.take()
        renamed: set[int] = set()
        try:
            if LIST_CHANGED in dirty:
                renamed = await self._list_changes()
            view_id = self._view_id()
            if view_id is not None and view_id in dirty and self.selected is not None:
                await self._selected_changes()
            count = 0
            for mailbox_id in sorted(dirty):
                box = self.boxes.get(mailbox_id)
                if box is None or mailbox_id == view_id:
                    continue
                if self._events(box) & MESSAGE_EVENTS:
                    # A rename touches the mailbox without changing its messages: without a
                    # STATUS told before, only note where it stands.
                    try:
                        await self._status(box, quiet=mailbox_id in renamed)
                    except NotFound:  # deleted meanwhile: its LIST comes with the list news
                        continue
                    count += 1
                    if count % STATUS_PAUSE == 0:
                        await self.s.io.pause()
        except Exception as exc:  # the store hiccuped: the session goes on
            log_event("imap.error", logging.ERROR, command="(notify)", error=repr(exc))

    async def _selected_changes(self) -> None:
        s = self.s
        group = self.selected
        view = s.view
        assert group is not None and view is not None
        events = group.events or frozenset()
        before = view.last_uid
        # SELECTED: expunges are told at once (RFC 5465 5.3 lets NOTIFY lift RFC 9051
        # 7.5.1's "no EXPUNGE without a command"); SELECTED-DELAYED keeps them for a command
        # that may report them.
        await s.report_updates(
            allow_expunge=group.filter == "SELECTED" and "MESSAGEEXPUNGE" in events,
            allow_flags="FLAGCHANGE" in events,
        )
        if s.view is None or not group.fetch or "MESSAGENEW" not in events:
            return
        view = s.view
        if view.last_uid > before:
            from mailstead.proto.imap_cmd_fetch import fetch_for_notify

            uids = view.uids_in_uid_ranges([(before + 1, view.last_uid)])
            await fetch_for_notify(s, uids, list(group.fetch))

    async def _status(self, box: Mailbox, force: bool = False, quiet: bool = False) -> None:
        """``* STATUS`` of a mailbox other than the selected one (RFC 5465 5.1-5.3): MESSAGES
        and UIDNEXT for MessageNew/MessageExpunge, UNSEEN (and HIGHESTMODSEQ with CONDSTORE)
        for FlagChange; sent only when something asked for moved since the last one.
        UIDVALIDITY is always there: RFC 5465 3.1 has the STATUS sent for NOTIFY SET STATUS
        carry MESSAGES, UIDNEXT and UIDVALIDITY (and UIDVALIDITY with HIGHESTMODSEQ for
        FlagChange under CONDSTORE, as 5.1 asks of a flag change elsewhere too), and 5.1 wants
        a changed UIDVALIDITY told."""
        s = self.s
        events = self._events(box)
        st = await s.mailboxes.status(box)
        items = [("MESSAGES", st.messages), ("UIDNEXT", st.uidnext),
                 ("UIDVALIDITY", st.uidvalidity), ("UNSEEN", st.unseen)]
        if s.condstore:  # RFC 5465 5.2, 5.3: HIGHESTMODSEQ MUST be there with CONDSTORE
            items.append(("HIGHESTMODSEQ", st.highestmodseq))
        values = tuple(v for _n, v in items)
        last = self.told.get(box.id)
        self.told[box.id] = values
        if quiet and last is None:
            return
        if not force and last is not None:
            compared = 4 if "FLAGCHANGE" in events else 3  # UNSEEN moves with flags
            if "FLAGCHANGE" in events and s.condstore:
                compared = 5
            if last[:compared] == values[:compared]:
                return
        pairs = " ".join(f"{n} {v}" for n, v in items)
        s.io.write(b"* STATUS " + s.mailbox_out(box.name) + f" ({pairs})\r\n".encode())

    async def _list_changes(self) -> set[int]:
        """MailboxName and SubscriptionChange: compares the account's mailbox list and
        subscriptions with the last ones seen and tells the differences as LIST responses."""
        s = self.s
        old_boxes, old_subs = self.boxes, self.subscribed
        await self._load()
        out = s.io.write
        renamed: set[str] = set()
        renamed_ids: set[int] = set()
        for mailbox_id, box in self.boxes.items():
            was = old_boxes.get(mailbox_id)
            if was is None:
                if "MAILBOXNAME" in self._events(box):
                    out(self._list_line(box.name))
            elif was.name != box.name:
                renamed.update((was.name, box.name))
                renamed_ids.add(mailbox_id)
                if "MAILBOXNAME" in self._events(box) or "MAILBOXNAME" in self._events(was):
                    # RFC 5465 5.4 with RFC 5258 3.5's OLDNAME extended data item.
                    out(self._list_line(box.name, b' ("OLDNAME" ('
                                        + s.mailbox_out(was.name) + b"))"))
        for mailbox_id, was in old_boxes.items():
            if mailbox_id not in self.boxes and "MAILBOXNAME" in self._events(was):
                out(self._list_line(was.name))
        by_name = {b.name: b for b in self.boxes.values()}
        for name in sorted(self.subscribed ^ old_subs):
            if name in renamed:
                continue
            named = by_name.get(name) or next(
                (b for b in old_boxes.values() if b.name == name), None
            )
            if named is None or "SUBSCRIPTIONCHANGE" not in self._events(named):
                continue
            out(self._list_line(name))
        for mailbox_id in old_boxes.keys() - self.boxes.keys():
            self.told.pop(mailbox_id, None)
        self._rewatch()
        return renamed_ids

    def _list_line(self, name: str, extra: bytes = b"") -> bytes:
        """``* LIST`` of a name as it stands now. RFC 5465 5.4: \\NonExistent for a name that
        is no mailbox (any more); 5.4 (SHOULD) \\HasChildren / \\HasNoChildren, 5.5: the
        attributes computed as LIST would, \\Subscribed if and only if the name is."""
        box = next((b for b in self.boxes.values() if b.name == name), None)
        if box is None:
            attrs = ["\\NonExistent"]
        else:
            below = name + "/"
            children = any(b.name.startswith(below) for b in self.boxes.values())
            attrs = ["\\HasChildren" if children else "\\HasNoChildren"]
            if box.special_use:
                attrs.append(box.special_use)
        if name in self.subscribed:
            attrs.append("\\Subscribed")
        return (f"* LIST ({' '.join(attrs)}) \"/\" ".encode() + self.s.mailbox_out(name)
                + extra + b"\r\n")
