"""UIDONLY (RFC 9586): after ``ENABLE UIDONLY`` a session names messages by UID alone. Pure code.

What changes for such a session:
- a command that would take message sequence numbers is BAD [UIDREQUIRED] (RFC 9586 3): FETCH,
  STORE, SEARCH, COPY, MOVE, SORT and THREAD without UID, a sequence-set search key inside a
  UID SEARCH / UID SORT / UID THREAD, and QRESYNC's sequence match data in SELECT;
- FETCH responses, asked for or not, are ``* uid UIDFETCH (...)`` (RFC 9586 3.3; the
  ``fetch_head`` helper here, used wherever a FETCH line is written);
- expunges are told by ``* VANISHED uid-set``, never ``* n EXPUNGE`` (RFC 9586 3.4);
- SELECT leaves out the ``[UNSEEN n]`` code, which is a sequence number.

EXPUNGE (which takes no numbers), UID EXPUNGE, the UID forms and "$" (SEARCHRES) work as
before. ``* n EXISTS`` stays: it is a count, not a message number.
"""

from __future__ import annotations

from mailstead.proto.imap_args import (
    Command,
    SearchArgs,
    SearchKey,
    SelectArgs,
    SkSet,
    SortArgs,
    ThreadArgs,
)
from mailstead.proto.imap_format import Reply
from mailstead.proto.imap_search import any_key

CODE = "UIDREQUIRED"
# The commands whose plain form takes or answers with message sequence numbers.
SEQUENCE_COMMANDS = frozenset({"FETCH", "STORE", "SEARCH", "COPY", "MOVE", "SORT", "THREAD"})


def _by_sequence(key: SearchKey) -> bool:
    return isinstance(key, SkSet) and not key.uid and not key.numbers.saved


def uses_sequence_numbers(key: SearchKey) -> bool:
    """True when a search key names messages by sequence number (a bare sequence set)."""
    return any_key(key, _by_sequence)


def refusal(cmd: Command) -> Reply | None:
    """The BAD [UIDREQUIRED] answer to a command that uses sequence numbers, else None.
    RFC 9586 3: the server MUST answer BAD when the client uses message sequence numbers
    (and SHOULD give the UIDREQUIRED code, which it always does here)."""
    if cmd.name in SEQUENCE_COMMANDS:
        return Reply("BAD", f"UIDONLY is enabled: use UID {cmd.name}", CODE)
    args = cmd.args
    if isinstance(args, SearchArgs | SortArgs | ThreadArgs) and uses_sequence_numbers(args.key):
        return Reply("BAD", "UIDONLY is enabled: search by UID, not by sequence number", CODE)
    if isinstance(args, SelectArgs) and args.qresync is not None and args.qresync.seq_match:
        return Reply("BAD", "UIDONLY is enabled: QRESYNC sequence match data is not allowed",
                     CODE)
    return None


def fetch_head(uidonly: bool, seq: int, uid: int) -> bytes:
    """The start of a FETCH response line up to its opening parenthesis: ``* seq FETCH (``,
    or ``* uid UIDFETCH (`` under UIDONLY (RFC 9586 3.3)."""
    if uidonly:
        return b"* %d UIDFETCH (" % uid
    return b"* %d FETCH (" % seq
