"""The marks column of the terminal client's message list: one character per kind of mark,
each made by its own function from the message's summary, so a new kind of verdict is one
more function in ``MARKS`` (and one more line in ``LEGEND``).

    *  flagged            N  new (not yet read)
    S  spam: the server's filter said so, or the user did ($Junk)
    ~  doubtful: not spam, but scored at least half of what would make it spam
    V  integrity verified: the sender's signature (DKIM, or the DMTP hash) matches
    -  unsigned: nothing to check       !  integrity failed: a signature that does not match
"""

from __future__ import annotations

from collections.abc import Callable

from mailstead.client.connection import Summary


def flag_mark(summary: Summary) -> str:
    return "*" if summary.flagged else " "


def new_mark(summary: Summary) -> str:
    return " " if summary.seen else "N"


def spam_mark(summary: Summary) -> str:
    """"S" for spam, "~" for a high score; the user's own word ($Junk / $NotJunk, RFC 5788's
    registry) beats the filter's."""
    if "$NotJunk" in summary.flags:
        return " "
    if "$Junk" in summary.flags:
        return "S"
    verdict = summary.spam
    if verdict is None:
        return " "
    if verdict.is_spam:
        return "S"
    if verdict.score is not None and verdict.required and verdict.required > 0 \
            and verdict.score >= verdict.required / 2:
        return "~"
    return " "


INTEGRITY_MARKS = {"verified": "V", "unsigned": "-", "failed": "!"}
# What `mail read` and the message view say.
INTEGRITY_WORDS = {
    "verified": "verified (the sender's signature matches)",
    "unsigned": "unsigned (no signature to check)",
    "failed": "FAILED (a signature does not match: the message may have been changed)",
}


def integrity_mark(summary: Summary) -> str:
    """The server's integrity decision, from the keyword it set at delivery."""
    state = summary.integrity
    return " " if state is None else INTEGRITY_MARKS[state]


# In the order they show.
MARKS: list[Callable[[Summary], str]] = [flag_mark, new_mark, spam_mark, integrity_mark]

LEGEND = "marks: * flagged  N new  S spam  ~ doubtful  V verified  - unsigned  ! failed"


def marks(summary: Summary) -> str:
    """The marks column for one message: each mark function's character, in order."""
    return "".join(mark(summary) for mark in MARKS)
