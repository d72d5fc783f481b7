"""Line framing for text protocols, and the SMTP DATA reader with its smuggling guard.

Pure code: bytes in, bytes out. The network driver reads; these helpers decide what the bytes mean.

SMTP DATA ends only at <CRLF>.<CRLF> (RFC 5321 4.1.1.4): servers that disagree about where a
message ends are how SMTP smuggling works (CVE-2023-51764, CVE-2023-51765, CVE-2023-51766). A lone
LF or CR inside the message never ends it and never starts a dot-stuffed line; by default it is
then stored as CRLF (``normalize_line_ends``), so no stored message holds a bare LF that a server
we relay it to could read as a line end. ``bare_newlines="reject"`` refuses such a message instead
(Postfix's smtpd_forbid_bare_newline).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from io import IncrementalNewlineDecoder
from typing import Literal

CRLF = b"\r\n"
END_OF_DATA = b"\r\n.\r\n"
DOT_LINE = b"\r\n."  # a line that starts with a dot: the end marker or a stuffed line
END_TAIL = END_OF_DATA[len(DOT_LINE):]
# The same two searched for through many octets: ``bytes.find`` of a 3- or 5-octet needle
# (CPython's fastsearch) costs ~0.7-3.5 ns an octet on mail text, stopping wherever the needle's
# last octet occurs, where the regex engine's literal-prefix scan costs ~0.3-0.7 ns (64 KiB of
# prose ~60 us vs ~21 us, short lines ~250 us vs ~45 us; bench/dot_reader.py). Same matches:
# a literal pattern searched in [pos, endpos) is ``find(needle, start, end)``.
_DOT_LINE_RE = re.compile(re.escape(DOT_LINE))
_END_OF_DATA_RE = re.compile(re.escape(END_OF_DATA))

COMMAND_LINE_MAX = 512  # RFC 5321 4.5.3.1.4, including CRLF
TEXT_LINE_MAX = 1000  # RFC 5321 4.5.3.1.6, including CRLF, not counting a stuffing dot
MAX_LINE_DEFAULT = 1_048_576  # the longest message line accepted unless configured otherwise
# A message larger than this is joined and checked in a thread (the checks pass over all of
# it): other sessions keep the event loop meanwhile.
OFF_LOOP_SIZE = 1024 * 1024

BareNewlines = Literal["normalize", "reject"]

# DotReader's visits of the dots of a chunk (``_find_end``): this many are free, then one
# more for every DOT_HOP_SPACING octets gone through.
DOT_HOPS = 16
DOT_HOP_SPACING = 512
HEADER_SCAN = 16 * 1024  # octets of the first chunk searched for the end of the header section


def strip_eol(line: bytes) -> bytes:
    """The line without its CRLF (or lone LF) terminator."""
    if line.endswith(CRLF):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


SCAN_PIECE = 1 << 20  # octets handed to the line-end scan at a time (its text is a copy)
_CRLF_ONLY = (None, "\r\n")  # IncrementalNewlineDecoder.newlines without a bare one


def has_bare_cr_or_lf(data: bytes) -> bool:
    """True when a CR or LF appears other than as part of a CRLF pair (RFC 5321 2.3.8).

    ``io.IncrementalNewlineDecoder`` (C, the universal-newlines scanner of text files) records
    which kinds of line end a text holds: CRLF, CR alone, LF alone (``newlines``). Told not to
    translate, it only scans, one pass in C that looks at each character once and at the one
    after each CR, so "\ra\n" is a CR and an LF, never a pair. The octets are handed over as a
    Latin-1 text (one character an octet, a copy at memcpy speed). For 100 KiB, ~37 us where
    counting the line ends and searching for a CR without LF took ~75 us (~130-160 us for
    short lines). ``final=True``: a CR at the very end is scanned, not held back for more."""
    decoder = IncrementalNewlineDecoder(None, False)
    if len(data) <= SCAN_PIECE:
        decoder.decode(data.decode("latin-1"), True)
    else:  # a large message (BDAT, up to max_message_size): no copy of all of it at once
        view = memoryview(data)
        for start in range(0, len(data), SCAN_PIECE):
            # A CR ending a piece is held back by the decoder and seen with the next one.
            decoder.decode(str(view[start : start + SCAN_PIECE], "latin-1"),
                           start + SCAN_PIECE >= len(data))
    return decoder.newlines not in _CRLF_ONLY


def normalize_line_ends(data: bytes) -> bytes:
    """``data`` with every bare CR and bare LF turned into CRLF (CRLF pairs are kept)."""
    if not has_bare_cr_or_lf(data):
        return data
    return _to_crlf(data)


def _to_crlf(data: bytes) -> bytes:
    """``data`` with every line end (CRLF, CR or LF) made CRLF."""
    if b"\r" not in data:  # LF line ends only (a Unix client): one pass
        return data.replace(b"\n", CRLF)
    return data.replace(CRLF, b"\n").replace(b"\r", b"\n").replace(b"\n", CRLF)


def line_over(data: bytes, limit: int = TEXT_LINE_MAX) -> bool:
    """Whether a line of ``data`` (CRLF line ends only) is longer than ``limit`` octets, its
    CRLF included; a last line without one counts as if it had it.

    Jumps from line end to line end ``limit`` octets at a time: the last LF within the next
    ``limit`` octets (``rfind``, a memrchr) ends the lines that lie wholly among them, and
    none there means the line starting here is too long. A 100 KiB message costs about a
    hundred searches, where splitting it into its lines cost a dozen times the time."""
    size = len(data)
    end = -1  # the LF ending the lines known to fit (-1: none yet)
    while size - end + 1 > limit:  # the rest, as one line with its CRLF, might not fit
        end = data.rfind(b"\n", end + 1, end + limit + 1)
        if end < 0:
            return True
    return False


def dot_unstuff(raw: bytes) -> bytes:
    """Removes the transparency dot of every line that starts with one (RFC 5321 4.5.2)."""
    if raw.startswith(b"."):
        raw = raw[1:]
    # One left-to-right pass as ``replace(b"\r\n.", b"\r\n")`` (non-overlapping, the same
    # result) at the regex scan's speed (see _DOT_LINE_RE): 100 KiB of dotted lines
    # ~140 us vs ~215 us, of prose ~36 us vs ~190 us.
    return _DOT_LINE_RE.sub(CRLF, raw)


def dot_stuff(content: bytes) -> bytes:
    """The inverse of ``dot_unstuff``, for clients and tests: doubles each line's leading dot."""
    if content.startswith(b"."):
        content = b"." + content
    return content.replace(b"\r\n.", b"\r\n..")


# Cross-protocol input on a mail port: a browser tricked into posting to it (the request line
# of RFC 9112 3) or a client speaking TLS to a plaintext port (a TLS record starts with content
# type 22, handshake, then major version 3; RFC 8446 5.1). Neither is ever a valid command.
_HTTP_METHODS = (b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT",
                 b"PATCH", b"TRACE")


def is_http_request(line: bytes) -> bool:
    """True for an HTTP request line such as ``GET / HTTP/1.1`` (method, target, version)."""
    # At most 4 pieces: a command carrying a message literal is not split into its words.
    parts = line.rstrip(b"\r\n").split(b" ", 3)
    return (
        len(parts) == 3 and parts[0].upper() in _HTTP_METHODS
        and parts[2].upper().startswith(b"HTTP/")
    )


def is_tls_handshake(first: bytes) -> bool:
    """True when the first bytes a client sent begin a TLS handshake record (a ClientHello):
    0x16, and 0x03 next if that byte has arrived. 0x16 (SYN) starts no valid text command."""
    return first[:1] == b"\x16" and (len(first) < 2 or first[1:2] == b"\x03")


class LineTooLong:
    """Returned by ``InputBuffer.take_line`` for a line over the limit (already thrown away)."""


LINE_TOO_LONG = LineTooLong()


class InputBuffer:
    """Bytes received and not yet used. A driver appends what the socket gives and takes lines
    or counted octets out; one large read then serves many pipelined commands (RFC 2920)."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._skipping = False  # inside an over-long line, dropping bytes up to its LF

    def __len__(self) -> int:
        return len(self._data)

    def append(self, data: bytes) -> None:
        self._data += data

    def take_line(self, max_length: int) -> bytes | LineTooLong | None:
        """The next line with its LF; LINE_TOO_LONG once a line longer than ``max_length``
        has been dropped whole; None when more input is needed."""
        end = self._data.find(b"\n")
        if end < 0:
            if self._skipping or len(self._data) > max_length:
                self._skipping = True
                self._data.clear()  # keep no more than one limit's worth of a runaway line
            return None
        line = bytes(self._data[: end + 1])
        del self._data[: end + 1]
        if self._skipping or len(line) > max_length:
            self._skipping = False
            return LINE_TOO_LONG
        return line

    def take(self, n: int) -> bytes:
        """Up to ``n`` octets."""
        part = bytes(self._data[:n])
        del self._data[:n]
        return part

    def take_all(self) -> bytes:
        part = bytes(self._data)
        self._data.clear()
        return part

    def clear(self) -> int:
        """Drops everything; returns how many octets were dropped."""
        dropped = len(self._data)
        self._data.clear()
        self._skipping = False
        return dropped


class DataProblem(Enum):
    """Why a received message is refused; the SMTP session maps each to a reply."""

    TOO_BIG = "too_big"
    BARE_NEWLINE = "bare_newline"
    LINE_TOO_LONG = "line_too_long"


@dataclass(frozen=True, slots=True)
class DataOutcome:
    content: bytes  # the message, unstuffed; empty when refused
    size: int  # octets received (unstuffed size when kept, raw size when too big)
    problem: DataProblem | None


class DotReader:
    """Collects the lines after DATA until <CRLF>.<CRLF>.

    ``feed`` takes bytes in any split; it stops at the end marker and hands back what follows it.
    Past ``max_size`` the content is no longer kept (the sender still has to finish, RFC 1870
    section 6.3), so a huge message costs no memory. ``bare_newlines`` says what a lone CR or LF
    in the message does (normalised to CRLF, or the message refused); a line longer than
    ``max_line`` octets (CRLF included) refuses the message.
    """

    def __init__(self, max_size: int, *, bare_newlines: BareNewlines = "reject",
                 max_line: int = TEXT_LINE_MAX) -> None:
        self.max_size = max_size
        self.bare_newlines: BareNewlines = bare_newlines
        self.max_line = max_line
        # Dot-stuffing can add a third (a line "." becomes ".."); past this raw size the content
        # cannot fit however much stuffing it carried.
        self._keep_limit = max_size + max_size // 3 + 3
        self._parts: list[bytes] = []
        # The CRLF that ended the DATA command starts the first line, so "." at once is the end.
        self._recent = CRLF
        self.raw_size = 0
        self.done = False
        # Whether some line may start with a transparency dot: the search for the end marker
        # looks for <CRLF>"." and sees them, so a message without any (most) is not scanned a
        # second time to unstuff it. Only ever errs towards True (unstuffing then runs).
        self._dots = False

    def feed(self, chunk: bytes) -> bytes:
        """Consumes ``chunk`` up to the end marker. Returns the bytes after the marker (empty
        when there are none); ``done`` tells whether the marker was seen."""
        if self.done:
            return chunk
        # A marker begun in the previous chunk ends in this one's first 4 bytes; one that lies
        # wholly in this chunk is searched for in place (the chunk is not copied to look).
        seam = self._recent + chunk[:4]
        if DOT_LINE in seam:
            self._dots = True
        found = seam.find(END_OF_DATA)
        if found >= 0:
            cut = found + len(END_OF_DATA) - len(self._recent)
        else:
            found = self._find_end(chunk)
            if found < 0:
                self._keep(chunk)
                self._recent = (self._recent + chunk[-4:])[-4:]
                return b""
            cut = found + len(END_OF_DATA)
        self._keep(chunk[:cut] if cut < len(chunk) else chunk)
        self.done = True
        return chunk[cut:]

    def _find_end(self, chunk: bytes) -> int:
        """Where the first end marker lies wholly in ``chunk``, or -1. Until a line starting
        with a dot is seen, each <CRLF>"." found is either the marker or such a line; after
        one, the marker is searched for directly (a message of dot lines costs no loop).

        The dots of the chunk are visited from one to the next (``find`` of one octet is a
        memchr, a few microseconds for 64 KiB): most large messages are base64 or other text
        with few dots, and then the only dot line is the marker, found without a search for
        <CRLF>"." through every octet (about 70 us for 100 KiB). The header section, dense
        with dots (host names, addresses), is searched in bulk first. Prose puts a dot every
        few dozen octets: once the dots come faster than one per DOT_HOP_SPACING octets (after
        DOT_HOPS free ones), the rest of the chunk is searched in bulk, so the visits cost at
        most about what the bulk search costs."""
        if self._dots:
            return _search(_END_OF_DATA_RE, chunk, 0, len(chunk))
        pos = 0
        if self.raw_size == 0:  # the first chunk: the header section first, in bulk
            blank = chunk.find(b"\r\n\r\n", 0, HEADER_SCAN)
            if blank >= 0:
                pos = blank + 4
                found = _search(_DOT_LINE_RE, chunk, 0, pos)  # a dot line wholly before pos
                if found >= 0:
                    return self._dot_line(chunk, found)
        hops = 0
        while True:
            dot = chunk.find(b".", pos)
            if dot < 0:
                return -1
            # A dot in the chunk's first two octets starts a line only after the CRLF of the
            # previous chunk: ``feed`` looked at that seam already.
            if dot >= 2 and chunk[dot - 2] == 13 and chunk[dot - 1] == 10:
                return self._dot_line(chunk, dot - 2)
            pos = dot + 1
            hops += 1
            if hops > DOT_HOPS + pos // DOT_HOP_SPACING:
                break  # dense dots: no longer worth visiting one at a time
        # Every dot before ``pos`` is mid-line; a dot line found from pos - 2 has its dot at
        # pos or later.
        found = _search(_DOT_LINE_RE, chunk, max(pos - 2, 0), len(chunk))
        if found < 0:
            return -1
        return self._dot_line(chunk, found)

    def _dot_line(self, chunk: bytes, found: int) -> int:
        """The marker's offset when the dot line at ``found`` is the end marker; otherwise
        notes that lines start with dots and searches for the marker from there."""
        if chunk.startswith(END_TAIL, found + len(DOT_LINE)):
            return found
        self._dots = True
        return _search(_END_OF_DATA_RE, chunk, found, len(chunk))

    def _keep(self, part: bytes) -> None:
        self.raw_size += len(part)
        if self.raw_size <= self._keep_limit:
            self._parts.append(part)
        else:
            self._parts.clear()

    def finish(self) -> DataOutcome:
        """The message and its verdict; call once ``done`` is True."""
        if not self.done:
            raise ValueError("end of data not reached")
        if self.raw_size > self._keep_limit:
            return DataOutcome(b"", self.raw_size, DataProblem.TOO_BIG)
        raw = _joined_without_tail(self._parts, 3)  # everything before the final ".\r\n"
        self._parts.clear()
        # Unstuffed first, then normalised: only a dot after CRLF is a transparency dot (RFC
        # 5321 4.5.2); one after a bare LF or CR stays, as the end marker needs CRLF on both
        # sides (4.1.1.4), so "\n.\n", "\n.\r\n", "\r.\r" and "\r\n.\n" end nothing here.
        content = dot_unstuff(raw) if self._dots else raw
        return check_content(content, self.max_size, self.bare_newlines, self.max_line)


def _search(pattern: re.Pattern[bytes], data: bytes, start: int, end: int) -> int:
    """``data.find(needle, start, end)`` for the literal ``pattern`` of ``needle``."""
    found = pattern.search(data, start, end)
    return -1 if found is None else found.start()


def check_content(content: bytes, max_size: int, bare_newlines: BareNewlines,
                  max_line: int) -> DataOutcome:
    """A message's content (after DATA's unstuffing, or BDAT's chunks joined) kept or
    refused: too big, a bare CR or LF (RFC 5321 2.3.8: made CRLF, or refused with
    ``bare_newlines="reject"``), a line over ``max_line``."""
    if len(content) > max_size:
        return DataOutcome(b"", len(content), DataProblem.TOO_BIG)
    if has_bare_cr_or_lf(content):
        if bare_newlines == "reject":
            return DataOutcome(b"", len(content), DataProblem.BARE_NEWLINE)
        content = _to_crlf(content)
        if len(content) > max_size:
            return DataOutcome(b"", len(content), DataProblem.TOO_BIG)
    return check_lines(content, max_line)


def chunked_message(parts: list[bytes], binary: bool, max_size: int,
                    bare_newlines: BareNewlines, max_line: int) -> DataOutcome:
    """BDAT's chunks (RFC 3030) as one message. Only a BINARYMIME body may hold lone CR or
    LF and lines of any length (RFC 3030 3); any other would become a smuggling vector once
    relayed with DATA, so it gets DATA's checks (BDAT has no dot-stuffing to undo)."""
    content = b"".join(parts)
    if binary:
        return DataOutcome(content, len(content), None)
    return check_content(content, max_size, bare_newlines, max_line)


def _joined_without_tail(parts: list[bytes], drop: int) -> bytes:
    """``b"".join(parts)[:-drop]`` with one copy: the tail is cut from the last parts (as
    views, not copies) before they are joined."""
    pieces: list[bytes | memoryview] = list(parts)
    while drop and pieces:
        last = pieces.pop()
        if len(last) > drop:
            pieces.append(memoryview(last)[:-drop])
            drop = 0
        else:
            drop -= len(last)
    return b"".join(pieces)


def check_lines(content: bytes, max_line: int) -> DataOutcome:
    """``content`` (CRLF line ends only) kept, or refused when a line is over ``max_line``."""
    if line_over(content, max_line):
        return DataOutcome(b"", len(content), DataProblem.LINE_TOO_LONG)
    return DataOutcome(content, len(content), None)
