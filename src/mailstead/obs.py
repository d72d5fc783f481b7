"""Logging: one line per event, ``key=value`` pairs, with the session id when there is one."""

from __future__ import annotations

import logging
import sys
from collections import Counter
from typing import Any

_logger = logging.getLogger("mailstead")
# How many times each event happened in this process (the admin console's live statistics).
EVENT_COUNTS: Counter[str] = Counter()


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("mailstead")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\r\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """``log_event("smtp.delivered", session="ab12", queue_id="...", size=123)``."""
    EVENT_COUNTS[event] += 1
    if not _logger.isEnabledFor(level):
        return
    parts = [event] + [f"{k}={_quote(v)}" for k, v in fields.items() if v is not None]
    _logger.log(level, " ".join(parts))
