"""The built-in inbound checks, behind the same interface as plug-ins (checks/__init__.py).

- ``TrustCheck`` (data): SPF, DKIM, ARC and DMARC (mailsec/inbound.py). A DMARC reject is a
  550 5.7.1; quarantine files the message in Junk; the Authentication-Results it writes head
  the stored message.
- ``ListsCheck`` (rcpt, data): the recipients' allow and block lists (services/sender_lists.py).
- ``SpamCheck`` (data): the rules' score plus every point the checks before it gave, then each
  recipient's learning filter (services/spam.py); over ``spam.reject_score`` a 550 5.7.1.

They judge mail arriving on the MX only (``ctx.account`` is None), as before they were checks,
and share what the delivery needs beyond a verdict (the rewritten message, Authentication-
Results, Junk filing, list decisions, spam verdicts) through ``InboundState`` in ``ctx.notes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mailstead.checks import Check, CheckContext, HookResult, reject
from mailstead.mailsec.inbound import TrustService
from mailstead.services.sender_lists import Decision, SenderLists, allows_any, refusal
from mailstead.services.spam import SpamService, SpamVerdict, strip_spam_fields

_STATE = "mailstead.inbound"


@dataclass(slots=True)
class InboundState:
    """What the built-in checks found for the delivery of one message."""

    junk: bool = False
    auth_results: bytes = b""
    trusted_forward: bool = False
    decisions: dict[int, Decision] = field(default_factory=dict)
    spam: dict[int, SpamVerdict] | None = None
    spam_fields: bytes = b""
    spam_score: float | None = None
    spam_refused: SpamVerdict | None = None  # the rules' verdict that refused the message
    has_remote: bool = False


def inbound_state(ctx: CheckContext) -> InboundState:
    found = ctx.notes.get(_STATE)
    if not isinstance(found, InboundState):
        found = ctx.notes[_STATE] = InboundState()
    return found


class TrustCheck(Check):
    name = "trust"

    def __init__(self, trust: TrustService) -> None:
        self.trust = trust

    async def data(self, ctx: CheckContext, message: bytes) -> HookResult:
        if ctx.account is not None:  # our users' submissions are signed, not judged
            return None
        state = inbound_state(ctx)
        verdict = await self.trust.verify_inbound(ctx.client_ip, ctx.helo, ctx.sender or "",
                                                  message)
        ctx.message = verdict.message  # forged Authentication-Results removed
        state.auth_results = verdict.headers
        state.trusted_forward = verdict.trusted_forward
        state.junk = verdict.action == "junk"
        if verdict.action == "reject":
            return reject(550, "5.7.1", verdict.reason)
        return None


class ListsCheck(Check):
    name = "lists"

    def __init__(self, lists: SenderLists) -> None:
        self.lists = lists

    async def rcpt(self, ctx: CheckContext, address: str) -> HookResult:
        if ctx.account is not None or not ctx.accounts:
            return None
        found = await self.lists.rcpt_refusal(ctx.accounts, ctx.sender or "", ctx.client_ip)
        return None if found is None else reject(550, "5.7.1", found.reason)

    async def data(self, ctx: CheckContext, message: bytes) -> HookResult:
        if ctx.account is not None or not ctx.accounts:
            return None
        state = inbound_state(ctx)
        state.decisions = await self.lists.at_data(
            ctx.accounts, ctx.sender or "", message, ctx.client_ip,
            b"dmarc=fail" in state.auth_results)
        refused = refusal(state.decisions, ctx.accounts, state.has_remote)
        return reject(550, "5.7.1", refused) if refused else None


class SpamCheck(Check):
    name = "spam"

    def __init__(self, scorer: SpamService) -> None:
        self.scorer = scorer

    async def data(self, ctx: CheckContext, message: bytes) -> HookResult:
        if ctx.account is not None:
            return None
        state = inbound_state(ctx)
        message = ctx.message = strip_spam_fields(message)  # no sender vouches for itself
        base = self.scorer.rules_verdict(message, state.auth_results, state.trusted_forward)
        if ctx.points or ctx.tests:  # what the plug-ins said adds in
            base = self.scorer.with_points(base, ctx.points, ctx.tests)
        state.spam_score = base.score
        if self.scorer.refuses(base) and not allows_any(state.decisions):
            state.spam_refused = base
            return reject(550, "5.7.1", f"this message looks like spam (score {base.score:.1f})")
        state.spam = await self.scorer.judge(message, base, ctx.accounts)
        state.spam_fields = base.header_fields()
        state.spam_score = max(v.score for v in state.spam.values()) if state.spam \
            else base.score
        return None


def builtin_checks(trust: TrustService | None, lists: SenderLists | None,
                   scorer: SpamService | None) -> tuple[list[tuple[str, Any]],
                                                        list[tuple[str, Any]]]:
    """(the checks that run before the plug-ins, those that run after them)."""
    before: list[tuple[str, Any]] = []
    if trust is not None:
        before.append(("trust", TrustCheck(trust)))
    if lists is not None:
        before.append(("lists", ListsCheck(lists)))
    after: list[tuple[str, Any]] = []
    if scorer is not None:
        after.append(("spam", SpamCheck(scorer)))
    return before, after
