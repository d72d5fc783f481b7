"""The server's log lines (obs.py): one line an event, the lines of one turn of the event loop
written together, in order, never held once the loop is gone."""

from __future__ import annotations

import asyncio
import io
import logging
import re

import pytest

from mailstead import obs

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) (.*)$")


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    logger = logging.getLogger("mailstead")
    saved = (logger.handlers[:], logger.level, logger.propagate, obs._handler)
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    obs.setup_logging("info")
    yield out
    obs.flush_logs()
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]
    obs._handler = saved[3]


def lines(text: str) -> list[str]:
    found = []
    for line in text.splitlines():
        m = LINE.match(line)
        assert m, line
        found.append(f"{m.group(1)} {m.group(2)}")
    return found


def test_lines_of_a_loop_turn_are_written_together_at_its_end(stream: io.StringIO) -> None:
    async def turn() -> str:
        obs.log_event("conn.open", session="ab", client="127.0.0.1")
        logging.getLogger("mailstead.x").info("through logging")
        obs.log_event("smtp.transaction", result="250 2.0.0 Ok: queued as X", size=3)
        held = stream.getvalue()
        await asyncio.sleep(0)
        return held

    held = asyncio.run(turn())
    assert held == ""
    assert lines(stream.getvalue()) == [
        "INFO conn.open session=ab client=127.0.0.1", "INFO through logging",
        'INFO smtp.transaction result="250 2.0.0 Ok: queued as X" size=3']


def test_warnings_and_lines_outside_a_loop_are_written_at_once(stream: io.StringIO) -> None:
    async def turn() -> str:
        obs.log_event("conn.open", session="ab")
        obs.log_event("smtp.internal_error", logging.ERROR, error="boom")
        return stream.getvalue()

    assert lines(asyncio.run(turn())) == ["INFO conn.open session=ab",
                                          "ERROR smtp.internal_error error=boom"]

    async def last_turn() -> None:
        obs.log_event("left.behind")  # its flush never runs: the loop stops first

    asyncio.run(last_turn())
    obs.log_event("later")  # no loop: written now, after the one left behind
    assert lines(stream.getvalue())[2:] == ["INFO left.behind", "INFO later"]
