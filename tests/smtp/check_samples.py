"""Checks and delivery filters for the tests, loaded by ``[checks] modules`` / ``filters``.

``PhaseCheck`` says what its options tell it to, phase by phase:
- connect: refuse clients of ``refuse_ips`` (554), tempfail those of ``tempfail_ips`` (421);
  ``connect_header`` adds a header field to every message of the session;
- mail: tempfail the senders of ``greylist`` (451 4.7.1);
- rcpt: refuse the recipients of ``refuse_rcpts`` (550 5.7.1 ... by phase check);
- data: a message holding ``reject_word`` is refused with ``reject_code`` / ``reject_status``,
  one holding ``tempfail_word`` deferred; every other gets X-Phase-Check; one holding
  ``spam_word`` scores ``spam_points`` (test PHASE_SPAMMY).
"""

from __future__ import annotations

import asyncio
from typing import Any

from mailstead.checks import (
    Check,
    CheckContext,
    CheckSetup,
    DeliveryFilter,
    Filing,
    FilterContext,
    HookResult,
    add_header,
    reject,
    score,
    tempfail,
)


class PhaseCheck(Check):
    name = "phase"

    def __init__(self, setup: CheckSetup) -> None:
        self.o: dict[str, Any] = dict(setup.options)
        self.calls: list[str] = []

    def _list(self, key: str) -> list[str]:
        return [str(v).lower() for v in self.o.get(key, [])]

    async def connect(self, ctx: CheckContext) -> HookResult:
        if ctx.client_ip in self._list("refuse_ips"):
            return reject(554, "5.7.1", f"client {ctx.client_ip} refused by phase check")
        if ctx.client_ip in self._list("tempfail_ips"):
            return tempfail(421, "4.7.0", "busy, come back later")
        if "connect_header" in self.o:
            return add_header("X-Connect-Check", str(self.o["connect_header"]))
        return None

    async def mail(self, ctx: CheckContext, sender: str) -> HookResult:
        if sender.lower() in self._list("greylist"):
            return tempfail(451, "4.7.1", "greylisted, try again later")
        return None

    async def rcpt(self, ctx: CheckContext, address: str) -> HookResult:
        if address.lower() in self._list("refuse_rcpts"):
            return reject(550, "5.7.1", f"<{address}> refused by phase check")
        return None

    async def data(self, ctx: CheckContext, message: bytes) -> HookResult:
        word = str(self.o.get("reject_word", "")).encode()
        if word and word in message:
            return reject(int(self.o.get("reject_code", 550)),
                          str(self.o.get("reject_status", "5.7.1")), "content refused")
        word = str(self.o.get("tempfail_word", "")).encode()
        if word and word in message:
            return tempfail(451, "4.3.2", "content scanner busy")
        said = [add_header("X-Phase-Check", f"checked for {ctx.sender} at {ctx.client_ip}")]
        word = str(self.o.get("spam_word", "")).encode()
        if word and word in message:
            said.append(score(float(self.o.get("spam_points", 20.0)), "PHASE_SPAMMY"))
        return said


def phase(setup: CheckSetup) -> PhaseCheck:
    return PhaseCheck(setup)


class Broken(Check):
    """Fails at RCPT (an exception) and is slow at DATA (a timeout)."""

    def __init__(self, setup: CheckSetup) -> None:
        self.sleep = float(setup.options.get("sleep", 5.0))

    async def rcpt(self, ctx: CheckContext, address: str) -> HookResult:
        raise RuntimeError("the plug-in has a bug")

    async def data(self, ctx: CheckContext, message: bytes) -> HookResult:
        await asyncio.sleep(self.sleep)
        return reject(550, "5.7.1", "too late to say this")


def broken(setup: CheckSetup) -> Broken:
    return Broken(setup)


class FileByWord(DeliveryFilter):
    """Files a copy holding ``word`` in ``mailbox``, flags it and stamps it."""

    def __init__(self, setup: CheckSetup) -> None:
        self.word = str(setup.options.get("word", "invoice")).encode()
        self.mailbox = str(setup.options.get("mailbox", "Archive"))

    async def deliver(self, ctx: FilterContext, message: bytes) -> Filing | None:
        if self.word not in message:
            return Filing(headers=(("X-Filed-By", "none"),))
        return Filing(mailbox=self.mailbox, flags=frozenset({"\\Flagged", "$Invoice"}),
                      headers=(("X-Filed-By", f"file-by-word for {ctx.account}"),))


def file_by_word(setup: CheckSetup) -> FileByWord:
    return FileByWord(setup)


def broken_factory(setup: CheckSetup) -> Check:
    raise ValueError("missing option 'url'")


def hookless(setup: CheckSetup) -> Check:
    return Check()
