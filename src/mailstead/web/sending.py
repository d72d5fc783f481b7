"""Sending from the web: local recipients are delivered, remote ones queued (one
``DeliveryService.deliver`` call, the same path as SMTP submission), a copy goes to Sent, and
drafts are kept in Drafts. New accounts have a daily cap on recipients."""

from __future__ import annotations

from dataclasses import dataclass

from mailstead.core.addresses import parse_address
from mailstead.core.errors import InvalidInput
from mailstead.obs import log_event
from mailstead.services.accounts import AccountService
from mailstead.services.delivery import InboundEnvelope, InboundRecipient
from mailstead.services.sendcap import SendingCapExceeded, sending_cap
from mailstead.store.interfaces import Account, Mailbox, SystemFlag
from mailstead.web.compose import Draft, build_message, envelope_recipients
from mailstead.web.mailroom import Mailroom
from mailstead.web.state import WebState


class SendRefused(Exception):
    """The message may not go out (daily cap); the text says why and until when."""


@dataclass(frozen=True, slots=True)
class SendResult:
    queue_id: str
    delivered: list[str]  # local recipients
    queued: list[str]  # remote recipients, waiting in the outbound queue
    sent_uid: int  # the copy in Sent


async def sender_addresses(accounts: AccountService, account: Account) -> list[str]:
    """The account's own address and the aliases that deliver only to it."""
    own = [account.address]
    for alias in await accounts.store.list_aliases(None):
        if alias.source.startswith("@") or alias.source in own:
            continue
        if alias.destination.lower() == account.address and await accounts.owns_address(
            account, parse_address(alias.source)
        ):
            own.append(alias.source)
    return own


def check_cap(state: WebState, account: Account, count: int) -> None:
    try:
        sending_cap(state.services.extra, state.services.cfg.web).check(account, count)
    except SendingCapExceeded as exc:
        raise SendRefused(str(exc)) from None


async def send(state: WebState, room: Mailroom, draft: Draft, *, client_ip: str,
               protocol: str, replaced_draft: tuple[Mailbox, int] | None = None) -> SendResult:
    """Delivers/queues the message and files the Sent copy. Raises InvalidInput (bad
    address, unknown local user, too big), SendRefused (cap) or QuotaExceeded."""
    account = room.account
    accounts = state.services.accounts
    if draft.from_addr.lower() not in await sender_addresses(accounts, account):
        raise InvalidInput(f"you cannot send as {draft.from_addr}")
    recipients = envelope_recipients(draft)
    if not recipients:
        raise InvalidInput("add at least one recipient")
    if len(recipients) > state.cfg.limits.max_recipients:
        raise InvalidInput(f"at most {state.cfg.limits.max_recipients} recipients per message")
    check_cap(state, account, len(recipients))
    routed = []
    for address in recipients:
        route = await accounts.route(parse_address(address))
        if route.empty:
            raise InvalidInput(f"{address}: there is no such mailbox here")
        routed.append(InboundRecipient(address, route.local, route.remote))
    hostname = state.cfg.hostname
    outgoing = build_message(draft, hostname=hostname, include_bcc=False)
    if len(outgoing) > state.cfg.limits.max_message_size:
        raise InvalidInput(
            f"the message is {len(outgoing)} bytes; the limit is "
            f"{state.cfg.limits.max_message_size}"
        )
    message_id = _message_id(outgoing)
    envelope = InboundEnvelope(
        sender=account.address if draft.from_addr.lower() == account.address
        else str(parse_address(draft.from_addr)),
        recipients=routed,
        protocol=protocol,
        client_ip=client_ip,
        helo="webmail",
        account=account,
        smtputf8=not all(a.isascii() for a in [draft.from_addr, *recipients]),
        body="8BITMIME" if any(b > 0x7F for b in outgoing) else "7BIT",
    )
    result = await state.delivery.deliver(envelope, outgoing)
    sending_cap(state.services.extra, state.services.cfg.web).record(account, len(recipients))
    sent_copy = build_message(draft, hostname=hostname, include_bcc=True, message_id=message_id)
    sent_box = await room.by_role("\\Sent")
    stored = await room.mailboxes.append(sent_box, sent_copy, flags=int(SystemFlag.SEEN))
    if replaced_draft is not None:
        await room.delete_for_good(*replaced_draft)
    log_event("web.sent", user=account.address, queue_id=result.queue_id,
              recipients=len(recipients), queued=len(result.queued), client=client_ip)
    delivered = [r.address for r in routed if r.local]
    return SendResult(result.queue_id, delivered, result.queued, stored.uid)


async def save_draft(state: WebState, room: Mailroom, draft: Draft,
                     replaced_draft: tuple[Mailbox, int] | None = None) -> tuple[Mailbox, int]:
    """Files the draft in Drafts (replacing the earlier version); returns where it went."""
    data = build_message(draft, hostname=state.cfg.hostname, include_bcc=True)
    if len(data) > state.cfg.limits.max_message_size:
        raise InvalidInput("the draft is larger than the message size limit")
    box = await room.by_role("\\Drafts")
    stored = await room.mailboxes.append(
        box, data, flags=int(SystemFlag.DRAFT | SystemFlag.SEEN)
    )
    if replaced_draft is not None:
        await room.delete_for_good(*replaced_draft)
    return box, stored.uid


def _message_id(data: bytes) -> str:
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    for line in head.split("\r\n"):
        if line.lower().startswith("message-id:"):
            return line.split(":", 1)[1].strip()
    return ""
