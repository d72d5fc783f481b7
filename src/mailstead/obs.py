"""Logging: one line per event, ``key=value`` pairs, with the session id when there is one."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

_logger = logging.getLogger("mailstead")
# How many times each event happened in this process (the admin console's live statistics).
EVENT_COUNTS: Counter[str] = Counter()
# Called with each event's name and fields before it is logged (the monitor's per-message
# events): a tap must be quick and must not raise.
EVENT_TAPS: list[Callable[[str, dict[str, Any]], None]] = []


class _Formatter(logging.Formatter):
    """The standard format, with the date and time text made once a second rather than for
    every line (strftime is most of a line's formatting cost)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"  # as logging.Formatter writes it


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger("mailstead")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


_NEEDS_QUOTES = re.compile(r'[ "=\n\r\t]')


def _quote(value: Any) -> str:
    text = value if type(value) is str else str(value)
    if text == "" or _NEEDS_QUOTES.search(text) is not None:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """``log_event("smtp.delivered", session="ab12", queue_id="...", size=123)``."""
    EVENT_COUNTS[event] += 1
    for tap in EVENT_TAPS:
        tap(event, fields)
    if not _logger.isEnabledFor(level):
        return
    parts = [event] + [f"{k}={_quote(v)}" for k, v in fields.items() if v is not None]
    # makeRecord + handle is what log() does, less finding the caller's file and line by
    # walking the stack: the format shows neither.
    _logger.handle(_logger.makeRecord(_logger.name, level, "", 0, " ".join(parts), (), None))
