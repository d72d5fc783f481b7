"""The marks column of the terminal client's message list: one character per kind of mark,
each made by its own function from the message's summary, so a new kind of verdict is one
more function in ``MARKS`` (and one more line in ``LEGEND``).

    *  flagged            N  new (not yet read)
    S  spam: the server's filter said so, or the user did ($Junk)
    ~  doubtful: not spam, but scored at least half of what would make it spam
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


# In the order they show. (The message integrity mark goes here too, after the spam mark.)
MARKS: list[Callable[[Summary], str]] = [flag_mark, new_mark, spam_mark]

LEGEND = "marks: * flagged  N new  S spam  ~ doubtful"


def marks(summary: Summary) -> str:
    """The marks column for one message: each mark function's character, in order."""
    return "".join(mark(summary) for mark in MARKS)
