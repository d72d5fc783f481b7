"""Comparators and match types (RFC 5228 2.7, RFC 4790, RFC 5231 relational).

Bounded: a value is cut at MAX_VALUE characters before matching, and ``:matches`` runs without
backtracking (each literal run between stars is found leftmost, once), so a hostile header
and a pattern full of stars cost a few passes of str.find or of one fixed-length regex.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache

MAX_VALUE = 64 * 1024  # characters of one value that take part in a match

_ASCII_FOLD = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def casefold_ascii(text: str) -> str:
    """i;ascii-casemap (RFC 4790 9.2): only A-Z fold, so lengths and offsets stay."""
    if text.isascii():  # (a flag of the string, not a scan) lower() then folds only A-Z
        return text.lower()
    return text.translate(_ASCII_FOLD)


def _fold(text: str, comparator: str) -> str:
    return casefold_ascii(text) if comparator == "i;ascii-casemap" else text


@lru_cache(maxsize=4096)
def _fold_key(text: str, comparator: str) -> str:
    """A key folded once: the same keys come back with every message."""
    return _fold(text, comparator)


_DIGITS = re.compile(r"[0-9]+")


def numeric_key(text: str) -> int | None:
    """i;ascii-numeric (RFC 4790 9.1): the leading digits as a number; None (positive
    infinity) when the string does not start with a digit."""
    m = _DIGITS.match(text)
    return int(m.group()) if m is not None else None


def compare_numbers(na: int | None, nb: int | None) -> int:
    """``compare`` under i;ascii-numeric of two strings with these ``numeric_key``s."""
    if na is None or nb is None:
        return 0 if na is nb else (1 if na is None else -1)
    return (na > nb) - (na < nb)


def compare(a: str, b: str, comparator: str) -> int:
    """-1, 0 or 1 as ``a`` orders before, equal to, or after ``b``."""
    if comparator == "i;ascii-numeric":
        return compare_numbers(numeric_key(a), numeric_key(b))
    fa, fb = _fold(a, comparator), _fold_key(b, comparator)
    return (fa > fb) - (fa < fb)


_RELATION = {
    "gt": lambda c: c > 0, "ge": lambda c: c >= 0, "lt": lambda c: c < 0,
    "le": lambda c: c <= 0, "eq": lambda c: c == 0, "ne": lambda c: c != 0,
}


def relation(name: str) -> Callable[[int], bool]:
    """Whether a ``compare`` result satisfies the relational ``name`` (RFC 5231 4)."""
    return _RELATION[name.lower()]


def relation_holds(name: str, a: str, b: str, comparator: str) -> bool:
    return bool(relation(name)(compare(a, b, comparator)))


# -- :matches -------------------------------------------------------------------------------


_Run = tuple[str, "re.Pattern[str] | None", int]


@lru_cache(maxsize=512)
def _glob(pattern: str) -> tuple[_Run, ...]:
    """The pattern as its runs between stars: (literal text, a regex when it holds '?',
    how many characters it spans)."""
    pieces: list[list[str | None]] = [[]]  # None stands for '?'
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            pieces[-1].append(pattern[i + 1])
            i += 1
        elif ch == "*":
            pieces.append([])
        elif ch == "?":
            pieces[-1].append(None)
        else:
            pieces[-1].append(ch)
        i += 1
    runs: list[_Run] = []
    for piece in pieces:
        if None in piece:
            text = "".join("(.)" if c is None else re.escape(c) for c in piece)
            runs.append(("", re.compile(text, re.S), len(piece)))
        else:
            runs.append(("".join(c for c in piece if c is not None), None, len(piece)))
    return tuple(runs)


def glob_match(value: str, pattern: str, comparator: str) -> list[str] | None:
    """The wildcard expansions when ``value`` matches ``pattern`` (RFC 5228 2.7.1: ``*`` any
    run, ``?`` one character, backslash quotes), else None. Stars take as little as they can,
    the last one what is left (RFC 5229 3.2 leaves the split to us)."""
    value = value[:MAX_VALUE]
    return glob_match_runs(value, _fold(value, comparator), _glob(_fold(pattern, comparator)))


def glob_runs(pattern: str, comparator: str) -> tuple[_Run, ...]:
    """``pattern`` made ready for glob_match_runs (once for a key that does not change)."""
    return _glob(_fold(pattern, comparator))


def glob_match_runs(value: str, folded: str, runs: tuple[_Run, ...]) -> list[str] | None:
    """glob_match for ``value`` (at most MAX_VALUE characters), ``folded`` by the
    comparator, against a pattern's ``glob_runs``."""
    captures: list[str] = []
    if len(runs) == 1:  # no star: the whole value
        found = _match_at(folded, runs[0], 0, len(folded))
        if found is None or found[0] != len(folded):
            return None
        return _original(value, 0, found[1])
    first, *middle, last = runs
    head = _match_at(folded, first, 0, len(folded))
    if head is None:
        return None
    pos = head[0]
    captures.extend(_original(value, 0, head[1]))
    last_start = len(folded) - last[2]
    if last_start < pos:
        return None
    for run in middle:
        hit = _search(folded, run, pos, last_start)
        if hit is None:
            return None
        start, end, groups = hit
        captures.append(value[pos:start])  # the star before this run
        captures.extend(_original(value, start, groups))
        pos = end
    tail = _match_at(folded, last, last_start, len(folded))
    if tail is None:
        return None
    captures.append(value[pos:last_start])  # the last star
    captures.extend(_original(value, last_start, tail[1]))
    return captures


def _original(value: str, _base: int, groups: list[int]) -> list[str]:
    return [value[i] for i in groups]


def _match_at(text: str, run: _Run, pos: int,
              endpos: int) -> tuple[int, list[int]] | None:
    literal, regex, _length = run
    if regex is None:
        return (pos + len(literal), []) if text.startswith(literal, pos, endpos) else None
    m = regex.match(text, pos, endpos)
    if m is None:
        return None
    return m.end(), [m.start(i) for i in range(1, (m.re.groups or 0) + 1)]


def _search(text: str, run: _Run, pos: int,
            endpos: int) -> tuple[int, int, list[int]] | None:
    literal, regex, _length = run
    if regex is None:
        at = text.find(literal, pos, endpos)
        return None if at < 0 else (at, at + len(literal), [])
    m = regex.search(text, pos, endpos)
    if m is None:
        return None
    return m.start(), m.end(), [m.start(i) for i in range(1, (m.re.groups or 0) + 1)]


# -- one test over values and keys ----------------------------------------------------------


def test_values(values: Sequence[str], keys: Sequence[str], match_type: str,
                relation: str, comparator: str) -> tuple[bool, list[str] | None]:
    """Whether any value matches any key; with :matches also the expansions of the match
    (for the variables extension, RFC 5229 3.2)."""
    if match_type == "count":
        count = str(len(values))
        return any(relation_holds(relation, count, k, comparator) for k in keys), None
    for value in values:
        value = value[:MAX_VALUE]
        folded = _fold(value, comparator) if match_type == "contains" else value
        for key in keys:
            if match_type == "is":
                if compare(value, key, comparator) == 0:
                    return True, None
            elif match_type == "contains":
                if _fold_key(key, comparator) in folded:
                    return True, None
            elif match_type == "matches":
                found = glob_match(value, key, comparator)
                if found is not None:
                    return True, [value, *found]
            elif match_type == "value" and relation_holds(relation, value, key, comparator):
                return True, None
    return False, None
