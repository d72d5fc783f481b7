"""The base subject of a message (RFC 5256 section 2.1), the i;unicode-casemap comparison
key (RFC 5051) used by SORT and THREAD, and the keys a store keeps for them. Pure code.

The collation: RFC 5051 maps each character to its titlecase form and decomposes the result
(NFKD). Python has no per-character simple titlecase mapping, so this uses the usual
approximation: full case folding (``str.casefold``, which also folds compatibility forms such
as "ß" -> "ss") followed by NFKD. Strings equal under RFC 5051 are equal here; the order of
unequal strings is by code point of the folded, decomposed forms, as RFC 5051 prescribes.
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

# Step 1: tabs, continuations (folded lines) and runs of blanks become one space.
_BLANKS = re.compile(r"[ \t\r\n]{2,}|[\t\r\n]")
# subj-blob = "[" *BLOBCHAR "]" *WSP, BLOBCHAR = any CHAR except "[" and "]". A run of them,
# possessive: the scans below never backtrack, so the work stays linear in the subject's
# length however many prefixes a hostile subject stacks up.
_BLOBS = re.compile(r"(?:\[[^\[\]]*\][ \t]*)*+")
# subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
_REFWD = re.compile(r"(?:re|fwd?)[ \t]*+(?:\[[^\[\]]*\][ \t]*+)?:", re.IGNORECASE)
# Anything that could make the base subject differ from the subject itself.
_SPECIAL = re.compile(r"[\[:(\t\r\n]|  |^ | $")
_CACHE_MAX = 100_000


def base_subject(subject: str) -> tuple[str, bool]:
    """(base subject, is a reply or forward) of an already RFC 2047-decoded subject.

    The second value is True when the extraction removed a "Re:"/"Fw:"/"Fwd:" leader, a
    "(fwd)" trailer or a "[fwd: ...]" wrapper: THREAD=REFERENCES (RFC 5256 section 5, step
    5) needs it. The text is never copied while prefixes go: ``start`` and ``end`` move."""
    if not _SPECIAL.search(subject):
        return subject, False  # the common case: nothing to remove
    s = _BLANKS.sub(" ", subject)  # (1)
    start, end = 0, len(s)
    refwd = False
    while True:
        # (2) remove subj-trailer ("(fwd)" / WSP) at the end, as long as there is one
        while end > start:
            if s[end - 1] in " \t":
                end -= 1
            elif end - start >= 5 and s[end - 5 : end].lower() == "(fwd)":
                end -= 5
                refwd = True
            else:
                break
        # (3) remove subj-leader prefixes (*subj-blob subj-refwd / WSP); (4) a subj-blob
        # prefix when a non-empty base remains; (5) repeat both until nothing matches
        while start < end:
            if s[start] in " \t":
                start += 1
                continue
            blobs = _BLOBS.match(s, start, end)
            after = blobs.end() if blobs is not None else start
            leader = _REFWD.match(s, after, end)
            if leader is not None:
                start = leader.end()
                refwd = True
                continue
            if after == start:
                break
            if after < end:  # every blob of the run can go: text remains after them
                start = after
                continue
            last = s.rfind("[", start, end)  # all but the last blob (it is the base)
            if last <= start:
                break
            start = last
        # (6) "[fwd:" subject "]": remove the wrapper and start again from step (2)
        if end - start >= 6 and s[start : start + 5].lower() == "[fwd:" and s[end - 1] == "]":
            start += 5
            end -= 1
            refwd = True
            continue
        return s[start:end], refwd  # (7)


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


# ---------------------------------------------------------------------------------------------
# What a store keeps per message so SORT and THREAD need no per-message parsing


_MSG_ID = re.compile(r"<([^<>\s]+)>")


def message_ids(value: str) -> list[str]:
    """The msg-ids of a header value, without angle brackets (compared case-sensitively)."""
    return _MSG_ID.findall(value)


class ThreadKeys(NamedTuple):
    """Computed once at delivery and stored beside the envelope columns: ``subject`` is the
    comparison key of the base subject (RFC 5256 2.1, i;unicode-casemap), ``reply`` whether
    extracting it removed a reply/forward marker, ``message_id`` the first msg-id of the
    Message-ID field ("" when none), ``parents`` the msg-ids THREAD=REFERENCES links the
    message under, space-separated: those of References, else the first of In-Reply-To
    (RFC 5256 5, step 1). ``parents`` is None when References was not recorded."""

    subject: str
    reply: bool
    message_id: str
    parents: str | None


def thread_keys(subject: str, message_id: str, in_reply_to: str,
                references: str | None) -> ThreadKeys:
    """The stored SORT/THREAD keys of a message from its (RFC 2047-decoded) envelope fields."""
    base, reply = base_subject(subject)
    ids = message_ids(message_id)
    parents: str | None = None
    if references is not None:
        refs = message_ids(references)
        if not refs and in_reply_to:
            refs = message_ids(in_reply_to)[:1]
        parents = " ".join(refs)
    return ThreadKeys(casemap(base), reply, ids[0] if ids else "", parents)
