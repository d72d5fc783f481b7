"""THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256 sections 4 and 5 of the algorithms,
"Base Subject" 2.1, "Sent Date" 2.2) and the THREAD response's thread lists. Pure code.

The input is column-wise (``ThreadColumns``: one list per field, a message's index its place
in the mailbox), with the keys a store keeps per message (core/base_subject.thread_keys), so
threading parses nothing. The tree is plain integers: a container is an index into the
``msg`` list (the message it holds, -1 for a dummy) and the ``parent`` list, and only
containers with children have a list of them. No object per message: 100,000 messages
thread in a fraction of a second and leave the garbage collector little to scan.

Every walk over the tree is iterative: a reply chain may be as long as the mailbox, and
recursion would hit Python's limit.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import add, attrgetter, eq, lt, mul, not_
from typing import Any, NamedTuple, TypeVar, cast

from mailstead.core.base_subject import thread_keys

STEP = 2000  # messages between two pauses of a long threading run
T = TypeVar("T")
# A long computation cut in steps: it yields None between steps, so the caller can let other
# work run (the IMAP command awaits its session's checkpoint there), and returns its result.
Steps = Generator[None, None, T]


@dataclass(slots=True)
class ThreadColumns:
    """What threading needs of the messages, one list per field, in mailbox order (RFC 5256
    2.2: the order that breaks ties). ``numbers`` is what the response shows (sequence
    numbers or UIDs); ``sent`` the sent date, any comparable number (the internal date when
    the Date: header is unusable); ``subjects`` the comparison keys of the base subjects;
    ``replies`` whether each subject was a reply or forward; ``ids`` each message's own
    msg-id ("" when none); ``parents`` the msg-ids it threads under, space-separated."""

    numbers: list[int]
    sent: list[Any]
    subjects: list[str]
    replies: list[Any] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)


class ThreadMessage(NamedTuple):
    """One message with its raw header values (RFC 2047-decoded subject), for callers that
    have rows rather than stored keys; ``columns`` turns a list of them into the input."""

    number: int
    seq: int
    date: float
    subject: str
    message_id: str = ""
    in_reply_to: str = ""
    references: str = ""


def columns(messages: Iterable[ThreadMessage]) -> ThreadColumns:
    """The threading input of ``messages`` (in mailbox order whatever their order here)."""
    ordered = sorted(messages, key=attrgetter("seq"))
    keys = [thread_keys(m.subject, m.message_id, m.in_reply_to, m.references)
            for m in ordered]
    return ThreadColumns(
        [m.number for m in ordered], [m.date for m in ordered], [k.subject for k in keys],
        [k.reply for k in keys], [k.message_id for k in keys], [k.parents or "" for k in keys],
    )


def _ranks(sent: list[Any]) -> tuple[list[int], list[int]]:
    """The messages in sent-date order, ties in mailbox order, and each message's place in
    that order (one int to compare instead of a (date, position) pair)."""
    by_date = sorted(range(len(sent)), key=sent.__getitem__)  # stable: ties stay in order
    rank = [0] * len(sent)
    for place, i in enumerate(by_date):
        rank[i] = place
    return by_date, rank


def _date_keys(sent: list[Any]) -> list[int]:
    """One int per message that orders the messages by sent date, ties in mailbox order:
    date * count + place when the dates are ints (the stores' microseconds; no sort
    needed, and computed in C: no Python loop over the messages), else the rank of
    ``_ranks``."""
    count = len(sent)
    if set(map(type, sent)) <= {int}:
        return list(map(add, map(mul, sent, repeat(count)), range(count)))
    return _ranks(sent)[1]


# ---------------------------------------------------------------------------------------------
# ORDEREDSUBJECT


def ordered_subject(messages: Iterable[ThreadMessage]) -> str:
    return run(ordered_subject_steps(columns(messages)))


def ordered_subject_steps(cols: ThreadColumns) -> Steps[str]:
    """RFC 5256 THREAD=ORDEREDSUBJECT: messages sorted by base subject then sent date; one
    thread per base subject whose first message is the parent of all the others (siblings),
    threads ordered by the sent date of their first message. Returns the thread lists of
    the THREAD response (see ``Steps``)."""
    by_date, rank = _ranks(cols.sent)
    yield
    subjects, numbers = cols.subjects, cols.numbers
    order = sorted(by_date, key=subjects.__getitem__)  # subject, then date, then mailbox
    yield
    threads: list[list[int]] = []
    last_key: str | None = None
    for n, i in enumerate(order):
        if n % STEP == STEP - 1:
            yield
        key = subjects[i]
        if key != last_key:
            threads.append([])
            last_key = key
        threads[-1].append(i)
    threads.sort(key=lambda t: rank[t[0]])
    yield
    out = []
    for t in threads:
        head = str(numbers[t[0]])
        if len(t) == 1:
            out.append(f"({head})")
        elif len(t) == 2:
            out.append(f"({head} {numbers[t[1]]})")
        else:
            out.append(f"({head} " + "".join(f"({numbers[i]})" for i in t[1:]) + ")")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# REFERENCES


Kids = list[list[int] | None]  # the children of each container, by container


@dataclass(slots=True)
class Forest:
    """The thread tree: ``top`` the containers at the top level in order, ``kids`` the
    children of each container in order (None for none); ``msg`` the message index each
    container holds (-1 for a dummy, standing for a referenced message not threaded)."""

    top: list[int]
    kids: Kids
    msg: list[int]
    numbers: list[int]


@dataclass(slots=True)
class Links:
    """Step 1 of THREAD=REFERENCES done over the first ``done`` messages: each container's
    message (-1 for a dummy) and parent (-1 for none), and the container of each msg-id
    seen. Messages are linked one by one in mailbox order, so the links of a mailbox that
    only gained messages (higher UIDs, last in that order) are those of the messages it
    had, extended (``extend_links``): a cache of them (imap_sort_cache.py) spares a big
    mailbox most of step 1 when new mail came since the last THREAD."""

    msg: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    table: dict[str, int] = field(default_factory=dict)
    done: int = 0

    def copy(self) -> Links:
        return Links(self.msg[:], self.parent[:], dict(self.table), self.done)


def extend_links(cols: ThreadColumns, links: Links | None = None) -> Steps[Links]:
    """Step 1 of THREAD=REFERENCES for the messages of ``cols`` past ``links.done`` (all
    when ``links`` is None), changing ``links`` in place: the parent of every container,
    from the references of each message, with dummies for messages not present. A
    generator (see ``Steps``). The loop is written out flat (no call per message or
    reference): it is most of the time of a big THREAD."""
    if links is None:
        links = Links()
    ids, parents = cols.ids, cols.parents
    msg, parent, table = links.msg, links.parent, links.table
    claim = table.setdefault  # one lookup that also adds
    grow_msg, grow_parent = msg.append, parent.append
    count = len(ids)
    for start in range(links.done, count, STEP):
        if start > links.done:
            yield
        for i in range(start, min(start + STEP, count)):
            mid = ids[i]
            new = len(msg)
            own = claim(mid, new) if mid else new
            if own != new and msg[own] < 0:
                msg[own] = i  # a dummy created by an earlier reference
                walk = _WALK  # it may have descendants: (1.B) looks for a loop
            else:
                # A msg-id seen first (now in the table), or none (no valid Message-ID)
                # or a duplicate of an earlier message's: this message gets an ID of its
                # own; only the first keeps a shared one (step 1). A new container has no
                # descendants; only a reference to its own msg-id (through the table) can
                # give it some below.
                walk = _WALK_IF_NAMED if own == new and mid else _NO_WALK
                own = new
                grow_msg(i)
                grow_parent(-1)
            # (1.A) link the references in order, never changing an existing parent nor
            # making a loop (the References field may be truncated or reordered by a MUA)
            previous = -1
            refs = parents[i]
            if refs:
                for ref in refs.split(" "):
                    new = len(msg)
                    node = claim(ref, new)
                    if node == new:  # a dummy until its message turns up
                        grow_msg(-1)
                        grow_parent(previous)  # new: it can be no ancestor of previous
                    elif previous >= 0 and parent[node] < 0:
                        up = previous  # no loop: node is neither previous nor above it
                        while up >= 0 and up != node:
                            up = parent[up]
                        if up < 0:
                            parent[node] = previous
                    previous = node
            # (1.B) the last reference is this message's parent, replacing any earlier link
            # (without references the message is now a root); again no loops. A new
            # container is no ancestor of ``previous`` unless its msg-id is among the
            # references (``in`` on the text: a cheap test that errs only towards the walk).
            if previous >= 0:
                if walk == _NO_WALK or (walk == _WALK_IF_NAMED and mid not in refs):
                    parent[own] = previous
                    continue
                up = previous
                while up >= 0 and up != own:
                    up = parent[up]
                parent[own] = previous if up < 0 else -1
            else:
                parent[own] = -1
    links.done = count
    return links


_NO_WALK, _WALK_IF_NAMED, _WALK = 0, 1, 2  # extend_links: when (1.B) looks for a loop


def _prune(msg: list[int], parent: list[int]
           ) -> Steps[tuple[list[int], Kids, list[int]]]:
    """Steps 2 and 3: the roots; dummies without children go; a dummy's children take its
    place, except at the top level when there are several of them. So every message's
    parent becomes its nearest ancestor that is a message, or the dummy at the root of its
    tree, which stays only with two children or more. Returns the top level, the
    children lists and the containers given a second child (only their lists need
    sorting, step 6)."""
    count = len(msg)
    kids: Kids = [None] * count
    crowded: list[int] = []
    for start in range(0, count, STEP):
        if start:
            yield
        # Only parent[c] changes, after it was read: the slice is what the loop reads.
        for c, up in enumerate(parent[start : start + STEP], start):
            if up < 0 or msg[c] < 0:
                continue
            while msg[up] < 0 and parent[up] >= 0:  # only dummies' links are read
                up = parent[up]
            parent[c] = up
            siblings = kids[up]
            if siblings is None:
                kids[up] = [c]
            else:
                siblings.append(c)
                if len(siblings) == 2:
                    crowded.append(up)
    top: list[int] = []
    # The roots, listed first (in C) as the loop makes more: a lone child of a dummy
    for c in list(compress(range(count), map(eq, parent, repeat(-1)))):
        if msg[c] >= 0:
            top.append(c)
            continue
        children = kids[c]
        if children is None:
            continue  # a dummy with no message below: gone
        if len(children) == 1:
            parent[children[0]] = -1
            kids[c] = None
            top.append(children[0])
        else:
            top.append(c)
    return top, kids, crowded


class _Threader:
    """Steps 4 to 6 over the pruned tree (containers are ints, see the module docstring)."""

    def __init__(self, cols: ThreadColumns, msg: list[int], parent: list[int],
                 kids: Kids, crowded: list[int]) -> None:
        self.cols, self.msg, self.parent, self.kids = cols, msg, parent, kids
        self.crowded = crowded  # every container given a second child
        # Each container's order (sent date then mailbox order, RFC 5256 steps 4 and 6),
        # gathered in C; a dummy's is its first child's, set when its children are sorted
        # (steps 4 and 6), before any sort reads it: until then it holds a meaningless
        # value (the last message's, msg -1). Dummies left in the tree now are all at the
        # top level (step 3), and step 5 gives the dummies it makes their keys in step 6.
        self.key = list(map(_date_keys(cols.sent).__getitem__, msg))

    def _dummy(self) -> int:
        self.msg.append(-1)
        self.parent.append(-1)
        self.key.append(0)
        self.kids.append(None)
        return len(self.msg) - 1

    def _link(self, parent: int, child: int) -> None:
        self.parent[child] = parent
        siblings = self.kids[parent]
        if siblings is None:
            self.kids[parent] = [child]
        else:
            siblings.append(child)
            if len(siblings) == 2:
                self.crowded.append(parent)

    def _sort_kids(self, c: int) -> None:
        children = self.kids[c]
        assert children is not None
        if len(children) > 1:
            children.sort(key=self.key.__getitem__)
        if self.msg[c] < 0:
            self.key[c] = self.key[children[0]]

    def sort_top(self, top: list[int]) -> None:
        """Step 4: the top level by sent date, a dummy sorting as its earliest child."""
        for c in top:
            if self.msg[c] < 0:
                self._sort_kids(c)
        top.sort(key=self.key.__getitem__)

    def group_by_subject(self, top: list[int]) -> Steps[list[int]]:
        """Step 5: top-level threads whose (non-empty) base subjects are equal are
        gathered. The subject of a thread is its top message's, or a dummy's first
        child's; only a message can be a reply. What is read per thread is gathered by
        ``map`` in C: the threads' messages lie all over memory, and a Python loop would
        wait for each in turn."""
        msg, kids, parent = self.msg, self.kids, self.parent
        subjects, replies = self.cols.subjects, self.cols.replies
        heads = list(map(msg.__getitem__, top))  # each thread's message, -1 for a dummy
        dummies = -1 in heads
        firsts = [m if m >= 0 else msg[kids[c][0]]  # type: ignore[index]
                  for c, m in zip(top, heads, strict=True)] if dummies else heads
        keys = list(map(subjects.__getitem__, firsts))
        refwds = list(map(replies.__getitem__, firsts))
        if dummies:
            refwds = [r if m >= 0 else 0 for r, m in zip(refwds, heads, strict=True)]
        # (5.B) the thread each subject gathers under: its first thread that is a dummy,
        # else its first that is not a reply, else its first (later ones overwrite
        # earlier ones in a dict, hence the reversed lists)
        table = dict(zip(reversed(keys), reversed(top), strict=True))
        plain = list(map(not_, refwds))
        table.update(zip(reversed(list(compress(keys, plain))),
                         reversed(list(compress(top, plain))), strict=True))
        if dummies:
            gone = list(map(lt, heads, repeat(0)))
            table.update(zip(reversed(list(compress(keys, gone))),
                             reversed(list(compress(top, gone))), strict=True))
        table.pop("", None)  # an empty subject gathers nothing
        yield
        result = list(top)
        link = self._link
        dead: set[int] = set()
        held_of = table.get
        for c, key, refwd in zip(top, keys, refwds, strict=True):  # (5.C)
            held = held_of(key)
            if held is None or held == c or parent[c] >= 0 or c in dead:
                continue  # no subject, the thread held, or gathered under another already
            mh = msg[held]
            if mh < 0 and msg[c] < 0:
                for child in kids[c] or ():
                    link(held, child)
                kids[c] = None
                dead.add(c)
            elif mh < 0 or (refwd and not replies[mh]):
                # under the dummy, or a reply under the thread it replies to
                link(held, c)
            else:
                dummy = self._dummy()
                link(dummy, held)
                link(dummy, c)
                table[key] = dummy
                result.append(dummy)
        alive = list(compress(result, map(eq, map(parent.__getitem__, result), repeat(-1))))
        return [c for c in alive if c not in dead] if dead else alive

    def sort_siblings(self, top: list[int]) -> Steps[list[int]]:
        """Step 6: every set of siblings by sent date, the deepest ones first. Messages
        have only messages as children; dummies, at the top or just under it, go last,
        deepest first, so each sorts by its children's earliest."""
        msg, kids, by_key = self.msg, self.kids, self.key.__getitem__
        # Only a container given a second child has siblings to sort. Every dummy left
        # with children has two or more (step 3 removed the others, step 5 makes them
        # with two); one emptied by step 5 has none.
        dummies = [c for c in self.crowded if msg[c] < 0 and kids[c] is not None]
        for n, c in enumerate(self.crowded):
            if n % STEP == STEP - 1:
                yield
            children = kids[c]
            if msg[c] >= 0 and children is not None:
                children.sort(key=by_key)
        dummies.sort(key=self._depth, reverse=True)
        for c in dummies:
            self._sort_kids(c)
        return sorted(top, key=by_key)

    def _depth(self, c: int) -> int:
        depth = 0
        while self.parent[c] >= 0:
            c = self.parent[c]
            depth += 1
        return depth


def references_steps(cols: ThreadColumns, links: Links | None = None) -> Steps[Forest]:
    """RFC 5256 THREAD=REFERENCES: the top-level threads, each sorted (see ``Steps``).
    ``links``: step 1 done over the first messages already (``extend_links``), extended
    in place over the others; the later steps work on copies of its lists."""
    if links is None or links.done != len(cols.ids):
        links = yield from extend_links(cols, links)  # (1)
    msg, parent = links.msg[:], links.parent[:]
    top, kids, crowded = yield from _prune(msg, parent)  # (2), (3)
    threader = _Threader(cols, msg, parent, kids, crowded)
    yield
    threader.sort_top(top)  # (4)
    yield
    top = yield from threader.group_by_subject(top)  # (5)
    top = yield from threader.sort_siblings(top)  # (6)
    return Forest(top, kids, msg, cols.numbers)


def references(messages: Iterable[ThreadMessage]) -> Forest:
    return run(references_steps(columns(messages)))


def run(steps: Steps[T]) -> T:
    """Runs a ``Steps`` generator to its end without pausing."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast(T, done.value)


def format_threads(forest: Forest) -> str:
    """The thread lists of the THREAD response: "(2)(3 6 (4 23)(44 7 96))" (RFC 5256
    section 4): a message with one child continues its list; several children each open a
    nested list; a dummy shows only its children. Each container's label (None for a
    dummy) is gathered in C first, so the walk reads one list where it would read two."""
    kids = forest.kids
    labels: list[str | None] = list(map(str, forest.numbers))
    labels.append(None)  # msg -1: a dummy
    label = list(map(labels.__getitem__, forest.msg))
    out: list[str | None] = []
    append = out.append
    # containers, and _CLOSE for a list's closing parenthesis; a container opens its list
    stack = [_CLOSE, 0] * len(forest.top)
    stack[1::2] = forest.top[::-1]
    pop = stack.pop
    while stack:
        c = pop()
        if c < 0:
            append(")")
            continue
        append("(")
        while True:  # down a chain of only children without the stack
            children = kids[c]
            if children is None:
                append(label[c])
                break
            text = label[c]
            if text is not None:
                append(text)
                append(" ")
            if len(children) == 1:
                c = children[0]
                continue
            more = [_CLOSE, 0] * len(children)
            more[1::2] = children[::-1]
            stack += more
            break
    return "".join(out)  # type: ignore[arg-type]  # a leaf is a message: never None


_CLOSE = -1


def thread_numbers(forest: Forest) -> list[int]:
    """Every message number in a thread forest (tests check that each appears once)."""
    found: list[int] = []
    stack = list(forest.top)
    while stack:
        c = stack.pop()
        if forest.msg[c] >= 0:
            found.append(forest.numbers[forest.msg[c]])
        stack.extend(forest.kids[c] or ())
    return found


def members(forest: Forest, top: int) -> list[tuple[int, int]]:
    """The messages of one thread (a container of ``forest.top``) as (number, depth), in
    the order the THREAD response lists them; a dummy's children sit at its depth."""
    found: list[tuple[int, int]] = []
    stack = [(top, 0)]
    while stack:
        c, depth = stack.pop()
        i = forest.msg[c]
        if i >= 0:
            found.append((forest.numbers[i], depth))
        below = depth + 1 if i >= 0 else depth
        stack.extend((kid, below) for kid in reversed(forest.kids[c] or ()))
    return found
