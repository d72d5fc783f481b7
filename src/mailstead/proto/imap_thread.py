"""THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256 sections 4 and 5 of the algorithms,
"Base Subject" 2.1, "Sent Date" 2.2) and the THREAD response's thread lists. Pure code.

Every walk over the tree is iterative: a reply chain may be as long as the mailbox, and
recursion would hit Python's limit.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import NamedTuple, TypeVar, cast

from mailstead.proto.base_subject import SubjectKeys

_MSG_ID = re.compile(r"<([^<>\s]+)>")
STEP = 2000  # messages between two pauses of a long threading run
T = TypeVar("T")
# A long computation cut in steps: it yields None between steps, so the caller can let other
# work run (the IMAP command awaits its session's checkpoint there), and returns its result.
Steps = Generator[None, None, T]


class ThreadMessage(NamedTuple):
    """What threading needs of one message. ``number`` is what the response shows (sequence
    number or UID); ``seq`` breaks ties (RFC 5256 2.2: order in the mailbox); ``date`` is the
    sent date, any comparable number (the internal date when the Date: header is unusable).
    A NamedTuple: a THREAD builds one per message of the mailbox."""

    number: int
    seq: int
    date: float
    subject: str  # RFC 2047-decoded
    message_id: str = ""  # raw header values
    in_reply_to: str = ""
    references: str = ""


def message_ids(value: str) -> list[str]:
    """The msg-ids of a header value, without angle brackets (compared case-sensitively)."""
    return _MSG_ID.findall(value)


# ---------------------------------------------------------------------------------------------
# ORDEREDSUBJECT


def ordered_subject(messages: Iterable[ThreadMessage], keys: SubjectKeys) -> str:
    return run(ordered_subject_steps(messages, keys))


def ordered_subject_steps(messages: Iterable[ThreadMessage], keys: SubjectKeys) -> Steps[str]:
    """RFC 5256 THREAD=ORDEREDSUBJECT: messages sorted by base subject then sent date; one
    thread per base subject whose first message is the parent of all the others (siblings),
    threads ordered by the sent date of their first message. Returns the thread lists of
    the THREAD response (see ``Steps``)."""
    msgs = list(messages)
    subject_key = keys.get
    subjects: list[str] = []
    for start in range(0, len(msgs), STEP):
        subjects += [subject_key(m.subject)[2] for m in msgs[start : start + STEP]]
        yield
    # Three stable sorts of positions, the last key first (the keys are plain lists, so the
    # comparisons run in C): mailbox order, then sent date, then base subject.
    order = list(range(len(msgs)))
    order.sort(key=list(map(attrgetter("seq"), msgs)).__getitem__)
    order.sort(key=list(map(attrgetter("date"), msgs)).__getitem__)
    order.sort(key=subjects.__getitem__)
    yield
    threads: list[list[ThreadMessage]] = []
    last_key: str | None = None
    for n, i in enumerate(order):
        if n % STEP == STEP - 1:
            yield
        key = subjects[i]
        if key != last_key:
            threads.append([])
            last_key = key
        threads[-1].append(msgs[i])
    threads.sort(key=lambda t: (t[0].date, t[0].seq))
    yield
    out = []
    for t in threads:
        head = str(t[0].number)
        if len(t) == 1:
            out.append(f"({head})")
        elif len(t) == 2:
            out.append(f"({head} {t[1].number})")
        else:
            out.append(f"({head} " + "".join(f"({m.number})" for m in t[1:]) + ")")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# REFERENCES


@dataclass(eq=False, slots=True)
class Node:
    """A container of the thread tree: a message, or a dummy (``msg`` None) standing for a
    referenced message that is not among those threaded."""

    msg: ThreadMessage | None = None
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    dead: bool = False  # merged away in step 5


def _is_ancestor(a: Node, b: Node) -> bool:
    """True when ``a`` is ``b`` or one of its ancestors."""
    x: Node | None = b
    while x is not None:
        if x is a:
            return True
        x = x.parent
    return False


def _link(parent: Node, child: Node) -> None:
    child.parent = parent
    parent.children.append(child)


def _unlink(child: Node) -> None:
    parent = child.parent
    if parent is not None:
        parent.children.remove(child)
        child.parent = None


def _order(node: Node) -> tuple[float, int]:
    """Sent date then mailbox order; a dummy sorts as its first child (RFC 5256 steps 4, 6)."""
    while node.msg is None:
        node = node.children[0]
    return node.msg.date, node.msg.seq


def build_tree(messages: Iterable[ThreadMessage]) -> Steps[list[Node]]:
    """Steps 1 and 2 of THREAD=REFERENCES: the parent/child links from References (or the
    first msg-id of In-Reply-To), with dummies for messages not present; returns the roots.
    A generator (see ``Steps``) that pauses every STEP messages."""
    table: dict[str, Node] = {}
    order: list[Node] = []  # every container, in creation order
    get = table.get
    find_ids = _MSG_ID.findall
    for n, m in enumerate(sorted(messages, key=attrgetter("seq"))):
        if n % STEP == STEP - 1:
            yield
        ids = find_ids(m.message_id)
        own = table.get(ids[0]) if ids else None
        if own is not None and own.msg is None:
            own.msg = m  # a dummy created by an earlier reference
        else:
            # No (valid) Message-ID, or a duplicate of an earlier message's: this message
            # gets an ID of its own; only the first message keeps a shared one (step 1).
            own = Node(m)
            order.append(own)
            if ids and ids[0] not in table:
                table[ids[0]] = own
        refs: list[str] = find_ids(m.references) if m.references else []
        if not refs and m.in_reply_to:
            refs = find_ids(m.in_reply_to)[:1]
        # (1.A) link the references in order, never changing an existing parent nor making
        # a loop (the References field may be truncated or reordered by a MUA)
        previous: Node | None = None
        for ref in refs:
            node = get(ref)
            if node is None:
                node = table[ref] = Node()  # a dummy until its message turns up
                order.append(node)
            if previous is not None and node.parent is None and not _is_ancestor(node, previous):
                _link(previous, node)
            previous = node
        # (1.B) the last reference is this message's parent, replacing any earlier link
        # (without references the message is now a root); again no loops
        _unlink(own)
        if previous is not None and not _is_ancestor(own, previous):
            _link(previous, own)
    return [node for node in order if node.parent is None]  # (2)


def _prune(roots: list[Node]) -> Steps[list[Node]]:
    """Step 3: dummies without children go; a dummy's children take its place, except at the
    top level when there are several of them. Children are pruned before their parent."""
    preorder: list[Node] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        preorder.append(node)
        stack.extend(node.children)
    for n, node in enumerate(reversed(preorder)):  # every node after its descendants
        if n % STEP == STEP - 1:
            yield
        if not node.children:
            continue
        kept: list[Node] = []
        for child in node.children:
            if child.msg is None:
                kept.extend(child.children)  # pruned already: all real, or kept dummies
            else:
                kept.append(child)
        for child in kept:
            child.parent = node
        node.children = kept
    top: list[Node] = []
    for r in roots:
        if r.msg is not None:
            top.append(r)
        elif len(r.children) == 1:
            r.children[0].parent = None
            top.append(r.children[0])
        elif r.children:
            top.append(r)
    return top


def _group_by_subject(top: list[Node], keys: SubjectKeys) -> Steps[list[Node]]:
    """Step 5: top-level threads whose (non-empty) base subjects are equal are gathered."""

    def subject_of(node: Node) -> tuple[str, bool]:
        first = node if node.msg is not None else node.children[0]
        assert first.msg is not None
        _base, refwd, key = keys.get(first.msg.subject)
        return key, refwd and node.msg is not None

    table: dict[str, Node] = {}
    for n, node in enumerate(top):  # (5.B)
        if n % STEP == STEP - 1:
            yield
        key, refwd = subject_of(node)
        if not key:
            continue
        held = table.get(key)
        # the first thread of a subject, unless a later one is a dummy or is not a reply
        # while the one held is (and the one held is no dummy)
        better = held is not None and held.msg is not None and (
            node.msg is None or (subject_of(held)[1] and not refwd))
        if held is None or better:
            table[key] = node
    result = list(top)
    for n, node in enumerate(top):  # (5.C)
        if n % STEP == STEP - 1:
            yield
        if node.parent is not None or node.dead:
            continue  # gathered under another thread already
        key, refwd = subject_of(node)
        if not key:
            continue
        held = table[key]
        if held is node:
            continue
        if held.msg is None and node.msg is None:
            for child in node.children:
                _link(held, child)
            node.children = []
            node.dead = True
        elif held.msg is None or (refwd and not subject_of(held)[1]):
            # under the dummy, or a reply under the thread it replies to
            _link(held, node)
        else:
            dummy = Node()
            _link(dummy, held)
            _link(dummy, node)
            table[key] = dummy
            result.append(dummy)
    return [n for n in result if n.parent is None and not n.dead]


def _sort_siblings(top: list[Node]) -> Steps[list[Node]]:
    """Step 6: every set of siblings by sent date, the deepest ones first."""
    post: list[Node] = []
    stack = list(top)
    while stack:
        node = stack.pop()
        post.append(node)
        stack.extend(node.children)
    for n, node in enumerate(reversed(post)):  # children before their parents
        if n % STEP == STEP - 1:
            yield
        if len(node.children) > 1:
            node.children.sort(key=_order)
    return sorted(top, key=_order)


def references_steps(messages: Iterable[ThreadMessage], keys: SubjectKeys) -> Steps[list[Node]]:
    """RFC 5256 THREAD=REFERENCES: the top-level threads, each sorted (see ``Steps``)."""
    roots = yield from build_tree(messages)  # steps 1-2
    top = yield from _prune(roots)  # (3)
    for node in top:  # (4) a dummy sorts as its earliest child
        if node.msg is None:
            node.children.sort(key=_order)
    top.sort(key=_order)
    yield
    top = yield from _group_by_subject(top, keys)  # (5)
    yield
    return (yield from _sort_siblings(top))  # (6)


def references(messages: Iterable[ThreadMessage], keys: SubjectKeys) -> list[Node]:
    return run(references_steps(messages, keys))


def run(steps: Steps[T]) -> T:
    """Runs a ``Steps`` generator to its end without pausing."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast(T, done.value)


def format_threads(top: list[Node]) -> str:
    """The thread lists of the THREAD response: "(2)(3 6 (4 23)(44 7 96))" (RFC 5256
    section 4): a message with one child continues its list; several children each open a
    nested list; a dummy shows only its children."""
    out: list[str] = []
    stack: list[Node | str] = []
    for node in reversed(top):
        stack += [")", node, "("]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        lead = ""
        if item.msg is not None:
            out.append(str(item.msg.number))
            lead = " "
        kids = item.children
        if len(kids) == 1:
            stack += [kids[0], lead]
        elif kids:
            for kid in reversed(kids):
                stack += [")", kid, "("]
            stack.append(lead)
    return "".join(out)


def thread_numbers(top: list[Node]) -> list[int]:
    """Every message number in a thread forest (tests check that each appears once)."""
    found: list[int] = []
    stack = list(top)
    while stack:
        node = stack.pop()
        if node.msg is not None:
            found.append(node.msg.number)
        stack.extend(node.children)
    return found
