"""What arrives at the monitor: StatsD lines, with DogStatsD-style tags.

A datagram holds lines ``name:value|type`` or ``name:value|type|#tag:value,tag:value``
(type ``c`` counter, ``g`` gauge, ``ms``/``h`` timing, ``s`` set). mailstead nodes send
``<prefix>.<metric>:<value>|<type>|#node:<name>`` for their figures, and for each message
``<prefix>.message:1|c|#node:<name>,proto:smtp,dir:in,from:<address>,to:<address>``.

Pure: no sockets. A line that is not of this shape is counted as malformed and dropped, and
the rest of the datagram still counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_DATAGRAM = 8192  # bytes: larger ones are dropped whole (a node sends at most 1,400)
MAX_LINE = 1024
MAX_TAGS = 16
KINDS = frozenset({"c", "g", "ms", "h", "s"})


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    value: float
    kind: str  # c, g, ms, h, s
    tags: dict[str, str] = field(default_factory=dict)


def _printable(text: str) -> bool:
    return text.isprintable() and " " not in text


def parse_line(line: str) -> Sample | None:
    """One StatsD line, or None when it is malformed."""
    if not line or len(line) > MAX_LINE:
        return None
    fields = line.split("|")
    if len(fields) < 2:
        return None
    name, sep, value_text = fields[0].rpartition(":")
    kind = fields[1]
    if not sep or not name or not _printable(name) or kind not in KINDS:
        return None
    try:
        value = float(value_text)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    tags: dict[str, str] = {}
    for extra in fields[2:]:
        if extra.startswith("@"):  # sample rate: counters are scaled up by it
            try:
                rate = float(extra[1:])
            except ValueError:
                return None
            if not 0 < rate <= 1:
                return None
            if kind == "c":
                value /= rate
        elif extra.startswith("#"):
            pairs = extra[1:].split(",")
            if len(pairs) > MAX_TAGS:
                return None
            for pair in pairs:
                key, _, tag_value = pair.partition(":")
                if not key or not _printable(key) or not _printable(tag_value or "x"):
                    return None
                tags[key] = tag_value
        else:
            return None
    return Sample(name, value, kind, tags)


def parse_datagram(data: bytes) -> tuple[list[Sample], int]:
    """The samples of one datagram and how many of its lines were malformed. A datagram
    over MAX_DATAGRAM bytes or not UTF-8 counts as one malformed line and gives nothing."""
    if len(data) > MAX_DATAGRAM:
        return [], 1
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [], 1
    samples: list[Sample] = []
    bad = 0
    for line in text.split("\n"):
        line = line.strip("\r")
        if not line:
            continue
        sample = parse_line(line)
        if sample is None:
            bad += 1
        else:
            samples.append(sample)
    return samples, bad
