"""The base subject of a message (RFC 5256 section 2.1) and the i;unicode-casemap comparison
key (RFC 5051) used by SORT and THREAD. Pure code.

The collation: RFC 5051 maps each character to its titlecase form and decomposes the result
(NFKD). Python has no per-character simple titlecase mapping, so this uses the usual
approximation: full case folding (``str.casefold``, which also folds compatibility forms such
as "ß" -> "ss") followed by NFKD. Strings equal under RFC 5051 are equal here; the order of
unequal strings is by code point of the folded, decomposed forms, as RFC 5051 prescribes.
"""

from __future__ import annotations

import re
import unicodedata

# Step 1: tabs, continuations (folded lines) and runs of blanks become one space.
_BLANKS = re.compile(r"[ \t\r\n]{2,}|[\t\r\n]")
# subj-blob = "[" *BLOBCHAR "]" *WSP, BLOBCHAR = any CHAR except "[" and "]"
_BLOB = r"\[[^\[\]]*\][ \t]*"
# subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
_REFWD = r"(?:re|fwd?)[ \t]*(?:" + _BLOB + r")?:"
# subj-leader = (*subj-blob subj-refwd) / WSP
_LEADER = re.compile(r"(?:" + _BLOB + r")*" + _REFWD + r"|[ \t]", re.IGNORECASE)
_BLOB_RE = re.compile(_BLOB)
# Anything that could make the base subject differ from the subject itself.
_SPECIAL = re.compile(r"[\[:(\t\r\n]|  |^ | $")
_CACHE_MAX = 100_000


def base_subject(subject: str) -> tuple[str, bool]:
    """(base subject, is a reply or forward) of an already RFC 2047-decoded subject.

    The second value is True when the extraction removed a "Re:"/"Fw:"/"Fwd:" leader, a
    "(fwd)" trailer or a "[fwd: ...]" wrapper: THREAD=REFERENCES (RFC 5256 section 4, step
    5) needs it."""
    if not _SPECIAL.search(subject):
        return subject, False  # the common case: nothing to remove
    s = _BLANKS.sub(" ", subject)  # (1)
    refwd = False
    while True:
        # (2) remove subj-trailer ("(fwd)" / WSP) at the end, as long as there is one
        while True:
            if s.endswith((" ", "\t")):
                s = s[:-1]
            elif s[-5:].lower() == "(fwd)":
                s = s[:-5]
                refwd = True
            else:
                break
        # (3) remove subj-leader prefixes; (4) a subj-blob prefix when a non-empty base
        # remains; (5) repeat both until nothing matches
        while True:
            m = _LEADER.match(s)
            if m is not None:
                if m.group().strip(" \t"):
                    refwd = True
                s = s[m.end() :]
                continue
            m = _BLOB_RE.match(s)
            if m is not None and m.end() < len(s):
                s = s[m.end() :]
                continue
            break
        # (6) "[fwd:" subject "]": remove the wrapper and start again from step (2)
        if s[:5].lower() == "[fwd:" and s.endswith("]"):
            s = s[5:-1]
            refwd = True
            continue
        return s, refwd  # (7)


def casemap(text: str) -> str:
    """The i;unicode-casemap comparison key of ``text`` (see the module docstring)."""
    if text.isascii():
        return text.lower()  # casefold and NFKD change nothing else in ASCII
    return unicodedata.normalize("NFKD", text.casefold())


class SubjectKeys:
    """Base subject and comparison key per distinct subject, memoised for one command
    (a mailbox holds many messages with the same subject)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, bool, str]] = {}

    def get(self, subject: str) -> tuple[str, bool, str]:
        """(base subject, is a reply or forward, comparison key of the base subject)."""
        found = self._seen.get(subject)
        if found is None:
            base, refwd = base_subject(subject)
            found = (base, refwd, casemap(base))
            if len(self._seen) < _CACHE_MAX:
                self._seen[subject] = found
        return found
