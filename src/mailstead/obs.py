"""Logging: one line per event, ``key=value`` pairs, with the session id when there is one."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
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
        return f"{self.stamp_of(int(record.created))},{int(record.msecs):03d}"  # as logging's

    def stamp_of(self, second: int) -> str:
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return self._stamp


class _LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The server's handler: the lines logged during one turn of the event loop are written
    together at its end (one write system call, not one per line: an SMTP connection logs
    three), straight away outside a loop and for warnings and errors. ``log_event`` hands it
    its lines without a LogRecord (``line``) while it is the only handler."""

    def __init__(self, formatter: _Formatter) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(formatter)
        self.lines: list[str] = []
        # The loop a flush is due on. One that stopped before running it leaves it here:
        # the next line, logged on another loop or none, is not held behind it.
        self.flush_on: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.line(record.levelno, self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)

    def line(self, level: int, text: str) -> None:
        with self.lock:  # type: ignore[union-attr]
            self.lines.append(text)
        if level >= logging.WARNING:
            self.flush()
            return
        due = self.flush_on
        if due is not None and due.is_running():
            # A flush is due on a running loop (this one, nearly always): it writes this line
            # too. Saves looking the loop up, a getpid() system call (asyncio's fork check).
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: now
            self.flush()
            return
        if self.flush_on is not loop:
            loop.call_soon(self.flush)
            self.flush_on = loop

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self.flush_on = None
            lines, self.lines = self.lines, []
            if lines:
                with contextlib.suppress(Exception):
                    self.stream.write("".join(lines))
            super().flush()


_handler: _LineHandler | None = None
_formatter = _Formatter()


def setup_logging(level: str = "info") -> None:
    global _handler
    flush_logs()
    _handler = _LineHandler(_formatter)
    root = logging.getLogger("mailstead")
    root.handlers[:] = [_handler]
    root.setLevel(level.upper())
    root.propagate = False


def flush_logs() -> None:
    """Writes the lines still held (before a process ends without unwinding: os._exit)."""
    if _handler is not None:
        _handler.flush()


atexit.register(flush_logs)


_NEEDS_QUOTES = re.compile(r'[ "=\n\r\t]')


def _quote(value: Any) -> str:
    text = value if type(value) is str else str(value)
    if text == "" or _NEEDS_QUOTES.search(text) is not None:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def event_wanted(level: int) -> bool:
    """Whether a ``log_event`` at ``level`` would be written or seen by a tap: when not, a
    caller of a frequent event may ``count_event`` it instead of building its fields."""
    return bool(EVENT_TAPS) or _logger.isEnabledFor(level)


def count_event(event: str) -> None:
    """What ``log_event`` does for an event that ``event_wanted`` says nobody reads."""
    EVENT_COUNTS[event] += 1


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """``log_event("smtp.delivered", session="ab12", queue_id="...", size=123)``."""
    EVENT_COUNTS[event] += 1
    for tap in EVENT_TAPS:
        tap(event, fields)
    if not _logger.isEnabledFor(level):
        return
    parts = [event] + [f"{k}={_quote(v)}" for k, v in fields.items() if v is not None]
    handler = _handler
    handlers = _logger.handlers
    if handler is not None and len(handlers) == 1 and handlers[0] is handler \
            and not _logger.filters and not handler.filters and level >= handler.level:
        # The server's own handler alone: the line it would format, without a LogRecord
        # (most of a line's cost: the clock, thread and process names...).
        now = time.time()
        stamp = _formatter.stamp_of(int(now))
        handler.line(level, f"{stamp},{int((now % 1) * 1000):03d} "
                            f"{logging.getLevelName(level)} {' '.join(parts)}\n")
        return
    # makeRecord + handle is what log() does, less finding the caller's file and line by
    # walking the stack: the format shows neither.
    _logger.handle(_logger.makeRecord(_logger.name, level, "", 0, " ".join(parts), (), None))
