"""Sieve at delivery (``DeliveryRules`` of services/delivery.py) and the management of scripts
that ManageSieve, the CLI and the web share.

Per local recipient, after the spam verdict: the account's active script runs against the
message (sieve/interp.py) and its outcome becomes the copies to store (mailbox ids, created
for ``fileinto :create``), redirects (sent through ``DeliveryService.deliver``, which stores
locally or queues for remote, before the original copy is committed: a crash in between
delivers twice rather than never), a refusal (in the SMTP reply when the message has this one
recipient, else a notice to the sender) and a vacation reply (RFC 5230, once per sender per
period, logged in the store, sent from the null sender through the queue).

Errors never lose mail: a script that does not compile or fails at run time leaves the
message to the implicit keep (INBOX, or Junk by the spam verdict) and a log line.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol, cast

from mailstead.core.addresses import parse_address
from mailstead.core.errors import Conflict, InvalidInput, NotFound
from mailstead.obs import count_event, event_wanted, log_event
from mailstead.proto import mime
from mailstead.proto.headers import count_received, header_section
from mailstead.queue.notices import send_notice
from mailstead.services.accounts import AccountService
from mailstead.services.delivery import (
    DeliveryService,
    InboundEnvelope,
    InboundRecipient,
    RulePlan,
)
from mailstead.services.spam import SpamVerdict
from mailstead.sieve.check import Script, compile_script
from mailstead.sieve.grammar import SieveSyntaxError
from mailstead.sieve.interp import Context, Outcome, SieveRuntimeError, Vacation, evaluate
from mailstead.sieve.vacation import build_reply, should_reply
from mailstead.store.interfaces import Account, Mailbox

MAX_SCRIPT_BYTES = 64 * 1024  # per script stored (ManageSieve PUTSCRIPT, CLI, web)
MAX_SCRIPTS = 20  # per user
# How long a worker reuses an account's active script (and those it includes) without asking
# the store: a safety net only, since every change of a script drops the caches of every
# process and node at once (the change feed's SETTINGS_CHANGED: ``forget``).
SCRIPT_CACHE_SECONDS = 60.0
# How long a worker reuses a mailbox a rule files into; a safety net as well: a mailbox
# created, renamed or deleted drops its account's at once (``forget_mailboxes``, from the
# change feed's account channel).
MAILBOX_CACHE_SECONDS = 60.0
MAX_REDIRECT_HOPS = 20  # Received fields past which a message is no longer redirected
_NAME = re.compile(r"[^\x00-\x1f\x7f/]{1,128}")
_CLOCK_TESTS = frozenset({"date", "currentdate"})  # the tests that read Context.now
_NO_CLOCK = datetime(1970, 1, 1, tzinfo=UTC)  # Context.now of a script that never reads it


class SieveStore(Protocol):
    """The store operations this service uses (SqlStore has them)."""

    async def list_sieve_scripts(self, account_id: int) -> list[tuple[str, bool]]: ...
    async def get_sieve_script(self, account_id: int, name: str) -> str | None: ...
    async def active_sieve_script(self, account_id: int) -> tuple[str, str] | None: ...
    async def put_sieve_script(self, account_id: int, name: str, script: str,
                               max_count: int = 0) -> None: ...
    async def set_active_sieve_script(self, account_id: int, name: str) -> None: ...
    async def delete_sieve_script(self, account_id: int, name: str) -> None: ...
    async def rename_sieve_script(self, account_id: int, old: str, new: str) -> None: ...
    async def get_global_sieve_script(self, name: str) -> str | None: ...
    async def put_global_sieve_script(self, name: str, script: str) -> None: ...
    async def list_global_sieve_scripts(self) -> list[str]: ...
    async def delete_global_sieve_script(self, name: str) -> None: ...
    async def note_vacation_reply(self, account_id: int, sender: str, handle: str, now: int,
                                  until: int) -> bool: ...
    async def list_mailboxes(self, account_id: int) -> list[Mailbox]: ...
    async def get_mailbox(self, account_id: int, name: str) -> Mailbox | None: ...
    async def create_mailbox(self, account_id: int, name: str,
                             special_use: str | None = None) -> Mailbox: ...


def sieve_store(store: object) -> SieveStore:
    """``store`` as a SieveStore (the SQL stores are); TypeError for one that is not."""
    if not hasattr(store, "active_sieve_script"):
        raise TypeError(f"{type(store).__name__} keeps no Sieve scripts")
    return cast(SieveStore, store)


def check_name(name: str) -> str:
    """A script name as RFC 5804 1.6 allows (no controls; we also refuse '/')."""
    if not _NAME.fullmatch(name):
        raise InvalidInput("a script name is 1 to 128 characters, no control characters or /")
    return name


def check_script(text: str) -> Script:
    """Compiles ``text``; InvalidInput (with the line) when it is too large or wrong."""
    if len(text.encode("utf-8", "surrogateescape")) > MAX_SCRIPT_BYTES:
        raise InvalidInput(f"the script is larger than {MAX_SCRIPT_BYTES} octets")
    if "\x00" in text:
        raise InvalidInput("the script holds a NUL character")
    try:
        return compile_script(text)
    except SieveSyntaxError as exc:
        raise InvalidInput(str(exc)) from None


class SieveService:
    def __init__(self, store: SieveStore, delivery: DeliveryService,
                 accounts: AccountService) -> None:
        self.store = store
        self.delivery = delivery
        self.accounts = accounts
        # account id -> (until, active script, the scripts its includes reach)
        self._active: dict[int, tuple[float, Script | None,
                                      dict[tuple[str, str], Script]]] = {}
        self._boxes: dict[int, dict[str, tuple[float, Mailbox]]] = {}  # account, name
        self._compiled: OrderedDict[str, Script | SieveSyntaxError] = OrderedDict()

    # -- managing scripts ----------------------------------------------------------------

    async def put(self, account: Account, name: str, text: str) -> None:
        check_name(name)
        check_script(text)
        await self.store.put_sieve_script(account.id, name, text, MAX_SCRIPTS)
        self._active.pop(account.id, None)

    async def activate(self, account: Account, name: str) -> None:
        if name:
            check_name(name)
        await self.store.set_active_sieve_script(account.id, name)
        self._active.pop(account.id, None)

    async def delete(self, account: Account, name: str) -> None:
        await self.store.delete_sieve_script(account.id, name)

    async def rename(self, account: Account, old: str, new: str) -> None:
        check_name(new)
        await self.store.rename_sieve_script(account.id, old, new)
        self._active.pop(account.id, None)

    async def put_global(self, name: str, text: str) -> None:
        """Stores global script ``name`` (RFC 6609 ``include :global``) once it compiles."""
        check_name(name)
        check_script(text)
        await self.store.put_global_sieve_script(name, text)

    async def delete_global(self, name: str) -> None:
        await self.store.delete_global_sieve_script(name)

    def forget(self) -> None:
        """Scripts or mailboxes changed in another process (the CLI): read them again."""
        self._active.clear()
        self._boxes.clear()

    def forget_mailboxes(self, account_id: int) -> None:
        """The account's mailbox list changed (here or in another process)."""
        self._boxes.pop(account_id, None)

    def _compile(self, text: str) -> Script:
        """Compiled scripts by text (a few hundred kept): a script runs for every message."""
        found = self._compiled.get(text)
        if found is None:
            try:
                found = compile_script(text)
            except SieveSyntaxError as exc:
                found = exc
            self._compiled[text] = found
            if len(self._compiled) > 512:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(text)
        if isinstance(found, SieveSyntaxError):
            raise found
        return found

    async def _active_script(self, account: Account
                             ) -> tuple[Script | None, dict[tuple[str, str], Script]]:
        """The account's active script and the scripts its includes reach (RFC 6609)."""
        now = time.monotonic()
        cached = self._active.get(account.id)
        if cached is not None and cached[0] > now:
            return cached[1], cached[2]
        found = await self.store.active_sieve_script(account.id)
        script = None
        included: dict[tuple[str, str], Script] = {}
        if found is not None:
            script = self._compile(found[1])  # SieveSyntaxError goes to the caller
            if script.includes:
                included = await self._included(account, script)
        if len(self._active) > 50_000:
            self._active.clear()
        self._active[account.id] = (now + SCRIPT_CACHE_SECONDS, script, included)
        return script, included

    async def _mailbox(self, account: Account, name: str) -> Mailbox | None:
        """The named mailbox, remembered: a rule files many messages in one."""
        now = time.monotonic()
        boxes = self._boxes.get(account.id)
        cached = None if boxes is None else boxes.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        box = await self.store.get_mailbox(account.id, name)
        if len(self._boxes) > 10_000:
            self._boxes.clear()
        if box is not None:
            boxes = self._boxes.setdefault(account.id, {})
            if len(boxes) > 256:
                boxes.clear()
            boxes[name] = (now + MAILBOX_CACHE_SECONDS, box)
        return box

    async def _included(self, account: Account, script: Script
                        ) -> dict[tuple[str, str], Script]:
        """Every script ``include`` can reach from ``script`` (RFC 6609), loaded up front."""
        found: dict[tuple[str, str], Script] = {}
        pending = list(script.includes)
        while pending and len(found) < 32:
            scope, name, _optional = pending.pop()
            if (scope, name) in found:
                continue
            if scope == "global":
                text = await self.store.get_global_sieve_script(name)
            else:
                text = await self.store.get_sieve_script(account.id, name)
            if text is None:
                continue  # missing: an error at run time unless :optional
            included = self._compile(text)
            found[scope, name] = included
            pending.extend(included.includes)
        return found

    # -- at delivery (DeliveryRules) -----------------------------------------------------

    async def plan(self, envelope: InboundEnvelope, message: bytes,
                   accounts: Sequence[Account], verdicts: Sequence[SpamVerdict | None],
                   can_refuse: bool) -> list[RulePlan | None]:
        plans: list[RulePlan | None] = []
        for account, verdict in zip(accounts, verdicts, strict=True):
            plans.append(await self._plan_one(envelope, message, account, verdict,
                                              can_refuse))
        return plans

    async def _plan_one(self, envelope: InboundEnvelope, message: bytes, account: Account,
                        verdict: SpamVerdict | None, can_refuse: bool) -> RulePlan | None:
        try:
            script, included = await self._active_script(account)
            if script is None:
                return None
            recipient = _recipient_of(envelope, account)
            # The mailboxes are read only when the script may ask about them (RFC 5490
            # mailboxexists), else per fileinto target below: most messages need neither.
            by_name: dict[str, Mailbox | None] = {}
            if "mailboxexists" in script.tests:
                by_name = {b.name: b for b in await self.store.list_mailboxes(account.id)}
            ctx = Context(
                message=message, envelope_from=envelope.sender, envelope_to=recipient,
                # read by the date tests only (RFC 5260); an included script may have them
                now=(datetime.now(UTC)
                     if script.includes or not script.tests.isdisjoint(_CLOCK_TESTS)
                     else _NO_CLOCK),
                mailboxes=frozenset(by_name),
                spam_score=None if verdict is None else verdict.score,
                spam_required=5.0 if verdict is None else verdict.required,
                scripts=included,
            )
            outcome = evaluate(script, ctx)
            return await self._carry_out(envelope, message, account, recipient, outcome,
                                         by_name, ctx, can_refuse)
        except (SieveSyntaxError, SieveRuntimeError, InvalidInput, Conflict, NotFound) as exc:
            # RFC 5228 2.10.6: on a runtime error the implicit keep is taken.
            log_event("sieve.error", logging.WARNING, user=account.address,
                      error=f"{type(exc).__name__}: {exc}")
            return None

    async def _carry_out(self, envelope: InboundEnvelope, message: bytes, account: Account,
                         recipient: str, outcome: Outcome, by_name: dict[str, Mailbox | None],
                         ctx: Context, can_refuse: bool) -> RulePlan:
        copies: list[tuple[int | None, frozenset[str]]] = []
        for name, flags, create in outcome.targets():
            if name == "INBOX":
                copies.append((None, flags))  # the box the spam verdict chose
                continue
            if name not in by_name:
                by_name[name] = await self._mailbox(account, name)
            box = by_name[name]
            if box is None and create:  # RFC 5490 3.2 fileinto :create
                box = await self.store.create_mailbox(account.id, name)
                by_name[name] = box
                log_event("sieve.mailbox_created", user=account.address, mailbox=name)
            if box is None:
                # RFC 5228 4.1 leaves a missing mailbox to us: never lose the copy.
                log_event("sieve.no_mailbox", logging.WARNING, user=account.address,
                          mailbox=name)
                copies.append((None, flags))
            else:
                copies.append((box.id, flags))
        if outcome.redirects:
            await self._redirect(envelope, message, account, outcome.redirects)
        refuse = None
        notices = []
        if outcome.reject is not None:
            if can_refuse:
                refuse = outcome.reject  # RFC 5429 2.1: in the SMTP reply where possible
            elif envelope.sender:
                notices.append(("reject", envelope.sender,
                                _rejection(outcome.reject, envelope.sender, recipient, ctx,
                                           self.delivery)))
        if event_wanted(logging.DEBUG):
            log_event("sieve.done", logging.DEBUG, user=account.address, copies=len(copies),
                      redirects=len(outcome.redirects) or None,
                      reject="yes" if outcome.reject is not None else None,
                      vacation="asked" if outcome.vacation is not None else None)
        else:
            count_event("sieve.done")  # (every message: its fields only when read)
        vacation = outcome.vacation
        if not notices and vacation is None:
            return RulePlan(copies, refuse)

        async def after() -> None:
            # The copies are stored: a failure now must not fail the delivery (the client
            # would send again), so it is logged and dropped.
            try:
                for kind, to, text in notices:
                    await send_notice(self.delivery, self.accounts, to, text, f"sieve-{kind}")
                if vacation is not None:
                    await self._vacation(envelope, account, recipient, ctx, vacation)
            except Exception as exc:
                log_event("sieve.after_error", logging.ERROR, user=account.address,
                          error=f"{type(exc).__name__}: {exc}")

        return RulePlan(copies, refuse, after)

    async def _redirect(self, envelope: InboundEnvelope, message: bytes, account: Account,
                        addresses: list[str]) -> None:
        if count_received(header_section(message), MAX_REDIRECT_HOPS) >= MAX_REDIRECT_HOPS:
            raise SieveRuntimeError("the message went through too many hops to redirect")
        recipients = []
        for text in addresses:
            try:
                address = parse_address(text)
            except InvalidInput:
                raise SieveRuntimeError(f"bad redirect address {text!r}") from None
            route = await self.accounts.route(address)
            if route.empty:
                raise SieveRuntimeError(f"redirect to {text}: no such local user")
            recipients.append(InboundRecipient(text, route.local, route.remote))
        # RFC 5228 4.2: the envelope sender stays (SRS, when configured, rewrites it on the
        # way out as for any forwarded mail). The message goes as received, with our trace.
        forwarded = InboundEnvelope(sender=envelope.sender, recipients=recipients,
                                    protocol="LOCAL", helo=self.delivery.hostname,
                                    smtputf8=envelope.smtputf8, body=envelope.body)
        result = await self.delivery.deliver(forwarded, message)
        log_event("sieve.redirect", user=account.address, to=",".join(addresses),
                  queue_id=result.queue_id)

    async def _vacation(self, envelope: InboundEnvelope, account: Account, recipient: str,
                        ctx: Context, vacation: Vacation) -> None:
        own = [recipient, account.address, *vacation.addresses]
        why_not = should_reply(envelope.sender, ctx.head, own)
        if why_not:
            log_event("sieve.vacation_skipped", user=account.address, reason=why_not)
            return
        now = int(time.time())
        if not await self.store.note_vacation_reply(account.id, envelope.sender.lower(),
                                                    vacation.handle[:200], now,
                                                    now + vacation.seconds):
            log_event("sieve.vacation_skipped", user=account.address,
                      reason="answered in this period")
            return
        reply = build_reply(vacation, sender=envelope.sender, to=recipient, root=ctx.head,
                            now=datetime.now(UTC), hostname=self.delivery.hostname)
        # RFC 3834 3.3 / RFC 5230 4.5: sent with the null reverse-path (send_notice does).
        await send_notice(self.delivery, self.accounts, envelope.sender, reply,
                          "sieve-vacation")


def _recipient_of(envelope: InboundEnvelope, account: Account) -> str:
    """The address the sender named for this account (an alias, a +tag...)."""
    wanted = account.id
    for recipient in envelope.recipients:
        for local in recipient.local:
            if local.id == wanted:
                return recipient.address
    return account.address


def _rejection(reason: str, to: str, recipient: str, ctx: Context,
               delivery: DeliveryService) -> bytes:
    """A plain notice that the recipient's rules refused the message (RFC 5429 2.1 allows a
    DSN or an MDN; this is the readable part of one)."""
    subject = mime.decoded_header(ctx.head.get("Subject") or "")
    text = (f"Your message to {recipient} was refused by the recipient's mail rules.\r\n"
            f"Subject: {subject[:200]}\r\n\r\nReason given:\r\n{reason[:4000]}\r\n")
    head = (f"From: Mail Delivery System <MAILER-DAEMON@{delivery.hostname}>\r\n"
            f"To: <{to}>\r\n"
            f"Subject: Message refused: {subject[:100]}\r\n"
            f"Date: {datetime.now(UTC).strftime('%a, %d %b %Y %H:%M:%S +0000')}\r\n"
            f"Message-ID: <sieve-reject.{secrets.token_hex(10)}@{delivery.hostname}>\r\n"
            "Auto-Submitted: auto-replied (rejected)\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n")
    return (head + "\r\n" + text).encode("utf-8")
