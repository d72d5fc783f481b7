"""Sorted and threaded views of a mailbox for the faces that list mail (webmail, its API):
the orders IMAP SORT and THREAD=REFERENCES give (RFC 5256), computed over the keys the
store keeps per message (MetadataStore.sort_columns), so no face sorts or threads messages
itself. A message whose keys only its file knows (stored without envelope) sorts with empty
ones here; IMAP reads the file for those."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailstead.proto.imap_cmd_sort import Addresses
from mailstead.proto.imap_thread import ThreadColumns, members, references_steps, run
from mailstead.store.interfaces import MetadataStore

# A view's sort name -> the store's key (and the IMAP SORT criterion it matches)
SORTS = {"date": "sent", "arrival": "arrival", "from": "from", "subject": "subject_key",
         "size": "size"}


async def sorted_uids(store: MetadataStore, mailbox_id: int, sort: str,
                      descending: bool = False) -> list[int]:
    """The mailbox's UIDs in the order of SORT (DATE), (ARRIVAL), (FROM), (SUBJECT) or
    (SIZE), reversed when ``descending``; messages with equal keys stay in UID order."""
    uids, column = await store.sort_columns(mailbox_id, (SORTS[sort],))
    keys: list[Any]
    if sort == "from":
        first = Addresses().key
        keys = [first(value, False) for value in column]
    elif sort == "subject":
        keys = [value or "" for value in column]
    else:
        keys = column
    order = sorted(range(len(uids)), key=keys.__getitem__, reverse=descending)
    return [uids[i] for i in order]


@dataclass(slots=True)
class Conversation:
    """One thread of THREAD=REFERENCES: its messages as (uid, depth) in thread order (each
    reply below what it answers), and the sent date of its newest message."""

    messages: list[tuple[int, int]]
    latest: int


async def conversations(store: MetadataStore, mailbox_id: int) -> list[Conversation]:
    """The mailbox's threads (RFC 5256 REFERENCES), the newest conversation first."""
    uids, sent, subjects, replies, ids, parents = await store.sort_columns(
        mailbox_id, ("sent", "subject_key", "reply", "thread_id", "thread_parents"))
    cols = ThreadColumns(uids, sent, [s or "" for s in subjects], [r or 0 for r in replies],
                         [i or "" for i in ids], [p or "" for p in parents])
    forest = run(references_steps(cols))
    when = dict(zip(uids, sent, strict=True))
    found = []
    for top in forest.top:
        messages = members(forest, top)
        found.append(Conversation(messages, max(when[uid] for uid, _depth in messages)))
    found.sort(key=lambda c: c.latest, reverse=True)
    return found
