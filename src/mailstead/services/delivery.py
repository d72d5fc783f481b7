"""Inbound delivery: a received message goes into local INBOXes and/or the outbound queue.

One call stores one message for every recipient atomically: the blob is written (and fsync'd)
once, then every mailbox row and the queue entry are committed in one store transaction. Only
when ``deliver`` returns may a protocol acknowledge the message (SMTP 250, DMTP OK). A crash
before that leaves at most an unreferenced blob, which ``mailstead check`` can sweep.

The stored message starts with the trace fields added on receipt (RFC 5321 4.4): Return-Path
when it is delivered locally, and a Received field. The queue worker removes a leading
Return-Path before relaying (a relay must not send one, RFC 5321 4.4).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mailstead.checks import Filing, FilterContext, FilterHook
from mailstead.core.errors import NotFound
from mailstead.core.models import INTEGRITY_KEYWORDS, SYSTEM_FLAG_NAMES, Integrity, SystemFlag
from mailstead.proto import mime, mime_encoding
from mailstead.services import spam_log
from mailstead.services.message_file_wire import with_blob
from mailstead.services.message_files import MessageFileWriter
from mailstead.services.spam import SpamVerdict
from mailstead.store.blob_fs import FsBlobStore
from mailstead.store.interfaces import (
    Account,
    BlobStore,
    Delivery,
    Envelope,
    MessageMeta,
    MetadataStore,
    NewMessage,
    QueueEntry,
    QueueRecipient,
    SpamVerdictRow,
)
from mailstead.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from mailstead.services.forwarding import Forwarding


class TrustHooks(Protocol):
    async def sign_outbound(self, message: bytes) -> bytes: ...

    async def sign_notice(self, message: bytes) -> bytes: ...

    async def seal_forwarded(self, message: bytes, auth_results: bytes) -> bytes: ...


@dataclass(slots=True)
class InboundRecipient:
    """One accepted recipient with where it routes (``accounts.route`` at RCPT time)."""

    address: str
    local: Sequence[Account] = ()
    remote: Sequence[str] = ()
    notify: str = ""  # DSN NOTIFY (RFC 3461)
    orcpt: str = ""  # DSN ORCPT, decoded


@dataclass(slots=True)
class InboundEnvelope:
    sender: str  # "" for the null reverse-path
    recipients: Sequence[InboundRecipient]
    protocol: str  # Received "with": ESMTP, ESMTPS, ESMTPSA, UTF8SMTPS..., or "DMTP"
    client_ip: str = ""
    helo: str = ""
    tls: str = ""  # e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384"; "" without TLS
    account: Account | None = None  # the authenticated sender
    envid: str = ""  # DSN ENVID
    ret: str = ""  # DSN RET
    requiretls: bool = False  # RFC 8689
    smtputf8: bool = False
    body: str = "7BIT"  # 7BIT, 8BITMIME or BINARYMIME
    # A notice we wrote (vacation reply, Sieve refusal, DSN, recall report): DKIM-signed as
    # our domain, never ARC-sealed or SRS-rewritten as if forwarded.
    generated: bool = False


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    queue_id: str
    blob_id: str
    size: int  # of the stored message, trace fields included
    stored: list[MessageMeta] = field(default_factory=list)  # one row per local mailbox
    queued: list[str] = field(default_factory=list)  # remote addresses put in the queue


AfterDelivery = Callable[[InboundEnvelope, DeliveryResult, bytes], Awaitable[None]]


class RefusedByRules(Exception):
    """A recipient's rules refuse the message (Sieve reject, RFC 5429) while the sender can
    still be told in the SMTP reply: nothing was stored."""


@dataclass(slots=True)
class RulePlan:
    """What one account's mail rules (Sieve, sieve/service.py) decided for its copy."""

    # (mailbox id, or None for the box the spam verdict chose; IMAP flag names) per copy;
    # none at all: the copy is discarded, redirected or refused.
    copies: list[tuple[int | None, frozenset[str]]]
    refuse: str | None = None  # only when deliver allowed it: refuse at SMTP time
    after: Callable[[], Awaitable[None]] | None = None  # once the copies are stored


class DeliveryRules(Protocol):
    async def plan(self, envelope: InboundEnvelope, message: bytes,
                   accounts: Sequence[Account], verdicts: Sequence[SpamVerdict | None],
                   can_refuse: bool) -> list[RulePlan | None]: ...

    def forget(self) -> None:
        """What the rules remember (scripts, mailboxes) may be stale: read it again."""


_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_BASE32_PAIRS = [a + b for a in _BASE32 for b in _BASE32]  # every 10 bits as two characters


# Random octets drawn from the system a page at a time, not a system call per message; a
# forked child starts with none, so it never repeats its parent's ids.
_RANDOM_POOL = bytearray()
os.register_at_fork(after_in_child=_RANDOM_POOL.clear)


def new_queue_id() -> str:
    """12 upper-case base32 characters (60 random bits): short enough for a log line. Made
    from a table, not base64.b32encode, which is Python code and costs twice as much."""
    if len(_RANDOM_POOL) < 8:
        _RANDOM_POOL[:] = os.urandom(4096)
    n = int.from_bytes(_RANDOM_POOL[-8:], "big") >> 4
    del _RANDOM_POOL[-8:]
    pairs = _BASE32_PAIRS
    return (pairs[n >> 50] + pairs[(n >> 40) & 1023] + pairs[(n >> 30) & 1023]
            + pairs[(n >> 20) & 1023] + pairs[(n >> 10) & 1023] + pairs[n & 1023])


_SAFE_HELO = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")


def _fold(fields: list[str]) -> str:
    """Joins parts of a header field into folded lines (RFC 5322 2.2.3)."""
    return "\r\n\t".join(fields) + "\r\n"


class DeliveryService:
    def __init__(self, store: MetadataStore, blobs: BlobStore, hostname: str,
                 shared_files: Path | None = None) -> None:
        self.store = store
        self.hostname = hostname
        if not isinstance(blobs, FsBlobStore):
            raise TypeError("delivery writes message files: it needs an FsBlobStore")
        # Message files of all sessions are written and parsed by a helper process in
        # batches, one flush each (why a process: services/message_files.py). With SQLite it
        # commits their rows too, after the flush. The worker processes of one serve share
        # one helper (``shared_files``, supervisor.py): batches twice the size.
        self._sqlite = store if isinstance(store, SqliteStore) else None
        self._files = MessageFileWriter(
            blobs.root, None if self._sqlite is None else self._sqlite.path, shared_files,
            None if self._sqlite is None else self._sqlite.changes.publish)
        # INBOX mailbox id per account. An account's INBOX row lives as long as the account
        # (it cannot be deleted; RENAME INBOX moves messages, RFC 9051 6.3.6), and the key
        # holds the creation time, so a re-created account never meets an old entry.
        self._inboxes: dict[tuple[int, datetime], int] = {}
        self.trust: TrustHooks | None = None  # DKIM signing and ARC sealing (mailsec)
        # The SRS rewrite of the sender of forwarded mail (services/forwarding.py).
        self.forwarding: Forwarding | None = None
        # Runs once local copies are committed (the 'delivered' DSNs of queue.delivered).
        self.after_local_delivery: AfterDelivery | None = None
        self.rules: DeliveryRules | None = None  # per-recipient Sieve (sieve/service.py)
        # Plug-in delivery filters (checks/chain.py FilterChain): mailbox, flags, headers.
        self.filters: FilterHook | None = None
        self._date: tuple[tuple[int, timedelta | None], str] = ((-1, None), "")

    async def close(self) -> None:
        await self._files.close()

    def trace_fields(
        self, envelope: InboundEnvelope, queue_id: str, now: datetime, *, local: bool
    ) -> bytes:
        """Return-Path (final delivery only) and Received (RFC 5321 4.4)."""
        helo = _SAFE_HELO.sub("", envelope.helo) or "unknown"
        parts = [f"Received: from {helo} ([{envelope.client_ip}])"] if envelope.client_ip \
            else [f"Received: from {helo}"]
        if envelope.tls:
            parts.append(f"(using {envelope.tls})")
        if envelope.account is not None:
            parts.append(f"(authenticated as {envelope.account.address})")
        parts.append(f"by {self.hostname} (mailstead) with {envelope.protocol} id {queue_id}")
        if len(envelope.recipients) == 1:
            # Naming the recipient only for a single one: several would expose Bcc (7.2).
            parts.append(f"for <{envelope.recipients[0].address}>")
        parts[-1] += f"; {self._date_text(now)}"
        text = _fold(parts)
        if local:
            text = f"Return-Path: <{envelope.sender}>\r\n" + text
        return text.encode("utf-8")

    def _date_text(self, now: datetime) -> str:
        """``format_datetime(now)``, made once a second (it shows whole seconds)."""
        key = (int(now.timestamp()), now.utcoffset())
        if key != self._date[0]:
            self._date = (key, format_datetime(now))
        return self._date[1]

    async def store_blob(self, data: bytes) -> tuple[str, Envelope]:
        """Writes a message file durably and parses its envelope fields (in the helper)."""
        return await self._files.submit(data)

    async def _inbox_ids(self, accounts: Sequence[Account]) -> list[int]:
        cache = self._inboxes
        if len(cache) > 100_000:
            cache.clear()  # entries of deleted accounts are never hit again
        ids = {a.id: cache[a.id, a.created] for a in accounts if (a.id, a.created) in cache}
        missing = [a for a in accounts if a.id not in ids]
        if missing:  # else no lookup, and no tasks for one: the usual case
            boxes = await asyncio.gather(*(self.store.get_mailbox(a.id, "INBOX")
                                           for a in missing))
            for account, box in zip(missing, boxes, strict=True):
                if box is None:
                    raise LookupError(f"account {account.address} has no INBOX")
                ids[account.id] = cache[account.id, account.created] = box.id
        return [ids[a.id] for a in accounts]

    async def _box_ids(self, accounts: Sequence[Account], in_junk: Sequence[bool]) -> list[int]:
        """Each account's INBOX, or its Junk mailbox where ``in_junk`` says so (INBOX when it
        has none)."""
        inboxes = await self._inbox_ids(accounts)
        if not any(in_junk):  # the usual case: no lookups, and no tasks for none
            return inboxes
        boxes = await asyncio.gather(*(self.store.get_mailbox(a.id, "Junk")
                                       for a, junk in zip(accounts, in_junk, strict=True) if junk))
        found = iter(boxes)
        ids = []
        for inbox, junk in zip(inboxes, in_junk, strict=True):
            box = next(found) if junk else None
            ids.append(box.id if box is not None else inbox)
        return ids

    async def _store(self, parts: list[tuple[bytes, list[Delivery]]], entry: QueueEntry | None,
                     entry_part: int, verdict_log: Sequence[SpamVerdictRow]
                     ) -> tuple[list[str], list[MessageMeta]]:
        """The files, then the rows naming them: in one request to the helper with SQLite,
        else the files from the helper and the rows from the store (one transaction). The
        spam log rows: with the message's (SQLite), else written once it is stored."""
        if self._sqlite is not None:
            # (The writer publishes the touched mailboxes, once for all the deliveries
            # answered together, as the store does after its commits.)
            blob_ids, stored, _touched = await self._files.deliver_parts(
                parts, entry, entry_part, verdict_log)
            return blob_ids, stored
        blob_ids, filled, queued = [], [], None
        for index, (data, deliveries) in enumerate(parts):
            blob_id, fields = await self.store_blob(data)
            part_rows, part_entry = with_blob(deliveries, entry if index == entry_part else None,
                                              blob_id, fields)
            blob_ids.append(blob_id)
            filled += part_rows
            queued = part_entry or queued
        stored = await self.store.store_message(filled, queued)
        await spam_log.write(self.store, verdict_log)
        return blob_ids, stored

    async def deliver(
        self, envelope: InboundEnvelope, message: bytes, keywords: frozenset[str] = frozenset(),
        *, junk: bool = False, auth_results: bytes = b"",
        spam: Mapping[int, SpamVerdict] | None = None, spam_fields: bytes = b"",
        integrity: Integrity | None = None, verdict_log: Sequence[SpamVerdictRow] = (),
    ) -> DeliveryResult:
        """Stores ``message`` for every recipient in one transaction; see the module doc.
        ``keywords`` are IMAP keywords set on the local copies (DMTP: $IntegrityFailed).
        ``junk`` files every local copy in Junk (DMARC quarantine). ``spam`` holds each
        recipient account's verdict: its X-Spam fields head that account's copy (one file per
        distinct set of fields), and a spam verdict files the copy in Junk with $Junk set.
        ``spam_fields`` head the copy that is queued for remote recipients.
        ``integrity`` (mailsec/integrity.py) is stored with each local copy, which also gets
        its keyword (core/models.INTEGRITY_KEYWORDS) for IMAP clients.
        ``verdict_log``: the spam log rows of the message (services/spam_log.py), stored
        with it; never a cause of failure.
        Raises QuotaExceeded (nothing stored) when a mailbox cannot take it."""
        if integrity is not None:
            keywords = keywords | {INTEGRITY_KEYWORDS[integrity]}
        now = datetime.now(UTC)
        queue_id = new_queue_id()
        accounts = unique_accounts(envelope.recipients)
        remote = _remote_recipients(envelope.recipients)
        if not accounts and not remote:
            raise ValueError("a delivery needs at least one recipient")
        if remote and (len(message) > _LONG_CHECK_OFF_LOOP
                       or mime_encoding.has_long_lines(message)):
            # Lines past RFC 5322's 998 octets are taken in (issue 22), but a server we relay
            # to may refuse them (RFC 5321 4.5.3.1.6): the parts holding them are re-encoded
            # now, before DKIM signing or ARC sealing, so the signature covers what is sent.
            # (A large message is checked in the thread too.)
            message = await asyncio.to_thread(_shortened, message)
        if self.trust is not None:
            # Signed (our users' mail) or sealed (forwarded mail) before the one blob is
            # written, so every copy and the queue entry carry the same bytes.
            if envelope.account is not None:
                message = await self.trust.sign_outbound(message)
            elif envelope.generated:
                message = await self.trust.sign_notice(message)
            elif remote:
                message = await self.trust.seal_forwarded(message, auth_results)
        sender = envelope.sender
        if (remote and envelope.account is None and not envelope.generated
                and self.forwarding is not None):
            # Forwarded (an alias or a Sieve redirect to a remote address): the queued copy
            # goes out from an SRS address of ours, so SPF passes at the next server and its
            # bounces come back to us for reversal. Local copies keep the original sender.
            via = next((r.address for r in envelope.recipients if r.remote), "")
            sender = await self.forwarding.forward_sender(sender, via.rpartition("@")[2])
        head = self.trace_fields(envelope, queue_id, now, local=bool(accounts)) + auth_results
        spam = spam or {}
        verdicts = [spam.get(a.id) for a in accounts]
        is_spam = [v is not None and v.is_spam for v in verdicts]
        boxes = await self._box_ids(accounts, [junk or s for s in is_spam])
        filings: list[Filing | None] = [None] * len(accounts)
        if self.filters:
            filings, boxes = await self._filter(envelope, message, accounts, verdicts, boxes)
        plans: Sequence[RulePlan | None] = [None] * len(accounts)
        if self.rules is not None and accounts:
            # After the spam verdict (issue 19). Refusing in the SMTP reply is possible only
            # when the message has this one recipient; else the rules send a notice.
            can_refuse = (len(envelope.recipients) == 1 and not remote and len(accounts) == 1
                          and "SMTP" in envelope.protocol)  # an SMTP reply can carry it
            plans = await self.rules.plan(envelope, message, accounts, verdicts, can_refuse)
            refused = next((p.refuse for p in plans if p is not None and p.refuse), None)
            if refused is not None:
                raise RefusedByRules(refused)
        # One file per distinct header: usually one, since verdicts differ only once the
        # recipients have trained their filters. Blob id and envelope are filled in once
        # each file is written.
        parts: dict[bytes, list[Delivery]] = {}
        for box_id, verdict, spammy, plan, filing in zip(boxes, verdicts, is_spam, plans,
                                                         filings, strict=True):
            fields = verdict.header_fields() if verdict is not None else b""
            set_flags: frozenset[str] = frozenset()
            if filing is not None:
                fields += "".join(f"{n}: {v}\r\n" for n, v in filing.headers).encode("utf-8")
                set_flags = filing.flags
            flagged = keywords | {"$Junk"} if spammy else keywords
            data_len = len(head) + len(fields) + len(message)
            copies = [(None, frozenset[str]())] if plan is None else plan.copies
            for target, names in copies:
                system, extra = _flag_bits(names | set_flags)
                parts.setdefault(fields, []).append(Delivery(
                    box_id if target is None else target, NewMessage(
                        blob_id="", size=data_len, internal_date=now, flags=system,
                        keywords=flagged | extra, integrity=integrity)))
        if remote:
            parts.setdefault(spam_fields, [])
        ordered = list(parts.items())
        if not ordered:  # every local copy discarded or redirected by the rules, none remote
            await spam_log.write(self.store, verdict_log)
            await self._after_rules(plans)
            return DeliveryResult(queue_id, "", 0)
        entry_part = [f for f, _d in ordered].index(spam_fields) if remote else 0
        datas = [(head + fields + message, deliveries) for fields, deliveries in ordered]
        entry = None
        if remote:
            entry = QueueEntry(
                id=queue_id,
                sender=sender,
                recipients=remote,
                blob_id="",
                size=len(datas[entry_part][0]),
                created=now,
                next_attempt=now,
                account_id=envelope.account.id if envelope.account else None,
                envid=envelope.envid,
                ret=envelope.ret,
                requiretls=envelope.requiretls,
                smtputf8=envelope.smtputf8,
                body_8bit=envelope.body != "7BIT",
            )
        try:
            blob_ids, stored = await self._store(datas, entry, entry_part, verdict_log)
        except NotFound:
            for account in accounts:  # an account went away since RCPT: look INBOXes up afresh
                self._inboxes.pop((account.id, account.created), None)
            if self.rules is not None:  # (or a mailbox a rule files into, since it was read)
                self.rules.forget()
            raise
        first = datas[0][0]
        result = DeliveryResult(queue_id, blob_ids[0], len(first), stored,
                                [r.address for r in remote])
        if accounts and self.after_local_delivery is not None:
            await self.after_local_delivery(envelope, result, first)
        await self._after_rules(plans)
        return result

    async def _filter(self, envelope: InboundEnvelope, message: bytes,
                      accounts: Sequence[Account], verdicts: Sequence[SpamVerdict | None],
                      boxes: list[int]) -> tuple[list[Filing | None], list[int]]:
        """Each account's filing by the delivery filters, and the mailbox of its copy (the one
        a filter named, when the account has it; else the one the spam verdict chose)."""
        assert self.filters is not None
        filings: list[Filing | None] = []
        chosen = list(boxes)
        for index, (account, verdict) in enumerate(zip(accounts, verdicts, strict=True)):
            filing = await self.filters.run(FilterContext(
                account=account.address, sender=envelope.sender,
                recipients=[r.address for r in envelope.recipients],
                client_ip=envelope.client_ip, is_spam=verdict is not None and verdict.is_spam,
                spam_score=verdict.score if verdict is not None else None,
                authenticated=envelope.account is not None), message)
            filings.append(filing)
            if filing.mailbox:
                box = await self.store.get_mailbox(account.id, filing.mailbox)
                if box is not None:
                    chosen[index] = box.id
        return filings, chosen

    @staticmethod
    async def _after_rules(plans: Sequence[RulePlan | None]) -> None:
        for plan in plans:
            if plan is not None and plan.after is not None:
                await plan.after()


def _flag_bits(names: frozenset[str]) -> tuple[int, frozenset[str]]:
    """IMAP flag names as the SystemFlag bits and the keywords they are."""
    if not names:
        return 0, frozenset()
    system, keywords = 0, set()
    for name in names:
        bit = _SYSTEM_FLAGS.get(name.lower())
        if bit is not None:
            system |= bit
        elif not name.startswith("\\") and _KEYWORD.fullmatch(name):
            keywords.add(name)
    return system, frozenset(keywords)


_SYSTEM_FLAGS = {name.lower(): int(bit) for name, bit in SYSTEM_FLAG_NAMES.items()
                 if bit != SystemFlag.DELETED}
_KEYWORD = re.compile(r"[!#$&'+\-.0-9:<>=?@A-Z^_`a-z|~]{1,100}")  # IMAP atom, no specials


_LONG_CHECK_OFF_LOOP = 1024 * 1024  # octets


def _shortened(message: bytes) -> bytes:
    if not mime_encoding.has_long_lines(message):
        return message
    return mime_encoding.shorten_long_lines(message, mime.parse(message))


def unique_accounts(recipients: Sequence[InboundRecipient]) -> list[Account]:
    """Each account once, however many of its addresses or aliases were named."""
    seen: dict[int, Account] = {}
    for recipient in recipients:
        for account in recipient.local:
            seen.setdefault(account.id, account)
    return list(seen.values())


def _remote_recipients(recipients: Sequence[InboundRecipient]) -> list[QueueRecipient]:
    seen: dict[str, QueueRecipient] = {}
    for recipient in recipients:
        for address in recipient.remote:
            seen.setdefault(address.lower(), QueueRecipient(
                address, notify=recipient.notify, orcpt=recipient.orcpt))
    return list(seen.values())


def delivery_service(services: object) -> DeliveryService:
    """The process's DeliveryService from ``services.extra`` (created by wiring.build)."""
    extra: dict[str, object] = getattr(services, "extra")  # noqa: B009
    found = extra.get("delivery")
    if not isinstance(found, DeliveryService):
        raise RuntimeError("the delivery service was not started (wiring.py)")
    return found
