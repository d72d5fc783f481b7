"""What SORT and THREAD keep between commands and sessions, per process (RFC 5256). Pure code.

A message's sort and thread keys (its dates, size, addresses, base subject, msg-ids: what
``SelectedView.sort_columns`` reads) never change for a UID while the mailbox keeps its
UIDVALIDITY: they come from the message itself, which IMAP never alters. So what was read
once stays true, and a mailbox is only ever read again for its new messages:

- ``KeyColumns``: the key columns of the big mailboxes read lately, by UID. A SORT or THREAD
  reads only the rows past the highest UID kept (new mail), then picks the rows of the
  messages it selected. Expunged messages' rows stay until the kept rows outgrow the
  mailbox, so a session that has not heard of an expunge yet still finds every message of
  its view (its sequence numbers stay valid until it is told, RFC 3501 7.4.1).
- ``LinkCache``: step 1 of THREAD=REFERENCES (imap_thread.Links) over a whole mailbox as a
  session selected it. Step 1 links messages one by one in mailbox order and new mail comes
  last, so for a mailbox that only gained messages it is extended, not redone; any other
  change (an expunge, a session that has not seen the new mail yet) starts afresh.

Each worker process keeps its own; only an optimisation: a cold process reads everything.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from mailstead.proto.imap_thread import Links

if TYPE_CHECKING:
    from mailstead.proto.imap_backend import SelectedView

MIN_MESSAGES = 1000  # smaller mailboxes are cheap to read afresh


class _Kept:
    __slots__ = ("columns", "uids")

    def __init__(self, uids: list[int], columns: dict[str, list[Any]]) -> None:
        self.uids = uids
        self.columns = columns


class KeyColumns:
    """The sort/thread key columns of the last few big mailboxes read (see the module
    docstring)."""

    ENTRIES = 4

    def __init__(self) -> None:
        self._kept: OrderedDict[tuple[int, int], _Kept] = OrderedDict()

    async def read(self, view: SelectedView, names: tuple[str, ...]) -> list[list[Any]]:
        """As ``view.sort_columns(names)``: the UIDs of every message stored (at least every
        message of the view), then one list per name; lists this cache keeps, not to be
        changed by the caller."""
        key = (view.mailbox.id, view.mailbox.uidvalidity)
        kept = self._kept.get(key)
        if kept is not None and not kept.uids:  # all expunged when last compacted
            del self._kept[key]
            kept = None
        if kept is None:
            fresh = await view.sort_columns(names)
            if len(fresh[0]) < MIN_MESSAGES:
                return fresh
            kept = self._kept[key] = _Kept(fresh[0], dict(zip(names, fresh[1:], strict=True)))
        else:
            await self._extend(kept, view)
            missing = tuple(name for name in names if name not in kept.columns)
            if missing:
                kept = await self._add_columns(key, kept, view, missing)
            if len(kept.uids) > 2 * view.exists + MIN_MESSAGES:
                kept = self._compact(key, kept, view)
        self._kept.move_to_end(key)
        while len(self._kept) > self.ENTRIES:
            self._kept.popitem(last=False)
        return [kept.uids, *(kept.columns[name] for name in names)]

    @staticmethod
    async def _extend(kept: _Kept, view: SelectedView) -> None:
        """Reads the rows of the messages stored since (past the highest UID kept)."""
        names = tuple(kept.columns)
        more = await view.sort_columns(names, kept.uids[-1])
        # Another session may have added the same rows meanwhile: only those past it.
        start = bisect.bisect_right(more[0], kept.uids[-1])
        if start < len(more[0]):
            kept.uids += more[0][start:]
            for name, column in zip(names, more[1:], strict=True):
                kept.columns[name] += column[start:]

    async def _add_columns(self, key: tuple[int, int], kept: _Kept, view: SelectedView,
                           missing: tuple[str, ...]) -> _Kept:
        """Reads columns not kept yet, for every message; the kept rows of messages no
        longer stored go (they are missing from that read)."""
        fresh = await view.sort_columns(missing)
        stop = bisect.bisect_right(fresh[0], kept.uids[-1])  # newer: the next _extend's
        uids = fresh[0][:stop]
        if uids == kept.uids:
            kept.columns.update(zip(missing, (c[:stop] for c in fresh[1:]), strict=True))
            return kept
        where = dict(zip(kept.uids, range(len(kept.uids)), strict=True))
        places = [where.get(uid) for uid in uids]
        if None in places:  # cannot be (UIDs are given in commit order): read all afresh
            names = (*kept.columns, *missing)
            fresh = await view.sort_columns(names)
            rebuilt = _Kept(fresh[0], dict(zip(names, fresh[1:], strict=True)))
        else:
            at = [p for p in places if p is not None]
            rebuilt = _Kept(uids, {name: list(map(column.__getitem__, at))
                                   for name, column in kept.columns.items()})
            rebuilt.columns.update(zip(missing, (c[:stop] for c in fresh[1:]), strict=True))
        self._kept[key] = rebuilt
        return rebuilt

    def _compact(self, key: tuple[int, int], kept: _Kept, view: SelectedView) -> _Kept:
        """Most kept rows were expunged: keeps those of this view's messages and newer
        ones. A session whose view still has others finds them missing and leaves them
        out, as if read from the store."""
        present = set(view.uids_in_seq_ranges([(1, view.exists)]) if view.exists else ())
        last = view.last_uid
        places = [i for i, uid in enumerate(kept.uids) if uid in present or uid > last]
        compacted = _Kept([kept.uids[i] for i in places],
                          {name: [column[i] for i in places]
                           for name, column in kept.columns.items()})
        self._kept[key] = compacted
        return compacted

    def forget(self) -> None:
        self._kept.clear()


class LinkCache:
    """Step 1 of THREAD=REFERENCES over the whole of the last few big mailboxes threaded
    (see the module docstring)."""

    ENTRIES = 4

    def __init__(self) -> None:
        self._kept: OrderedDict[tuple[int, int], tuple[list[int], Links]] = OrderedDict()

    def get(self, key: tuple[int, int], uids: list[int]) -> Links | None:
        """Links to start step 1 from for the messages ``uids`` (in mailbox order): done
        over all of them, or over the first ones (a copy, to be extended over the rest);
        None when none kept fit."""
        found = self._kept.get(key)
        if found is None:
            return None
        kept_uids, links = found
        count = len(kept_uids)
        if count > len(uids) or uids[count - 1 : count] != kept_uids[-1:] \
                or uids[:count] != kept_uids:
            return None
        self._kept.move_to_end(key)
        return links if count == len(uids) else links.copy()

    def put(self, key: tuple[int, int], uids: list[int], links: Links) -> None:
        if len(uids) < MIN_MESSAGES:
            return
        self._kept[key] = (uids, links)
        self._kept.move_to_end(key)
        while len(self._kept) > self.ENTRIES:
            self._kept.popitem(last=False)

    def forget(self) -> None:
        self._kept.clear()


KEY_COLUMNS = KeyColumns()
LINKS = LinkCache()
