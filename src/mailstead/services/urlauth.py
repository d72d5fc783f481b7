"""URLAUTH's view of the mail store (RFC 4467): accounts by address, mailboxes, message bytes
and the per-mailbox access keys, for the IMAP URLAUTH commands, CATENATE and BURL
(proto/imap_urlauth.py holds the protocol; this is the ``UrlAuthBackend`` it asks)."""

from __future__ import annotations

import secrets

from mailstead.core.models import Mailbox
from mailstead.services.mailbox import MailboxService
from mailstead.store.interfaces import MetadataStore

KEY_BYTES = 32  # RFC 4467 2.2: at least 128 bits, unpredictable


class UrlAuthService:
    def __init__(self, store: MetadataStore, mailboxes: MailboxService) -> None:
        self.store = store
        self.mailboxes = mailboxes

    async def account_id(self, address: str) -> int | None:
        account = await self.store.get_account(address)
        return None if account is None else account.id

    async def find(self, account_id: int, name: str) -> Mailbox | None:
        return await self.mailboxes.find(account_id, name)

    async def message_bytes(self, mailbox: Mailbox, uid: int) -> bytes | None:
        return await self.mailboxes.message_bytes(mailbox, uid)

    async def access_key(self, mailbox: Mailbox, create: bool) -> bytes | None:
        fresh = secrets.token_hex(KEY_BYTES) if create else None
        key = await self.store.mailbox_access_key(mailbox.id, fresh)
        return None if key is None else bytes.fromhex(key)

    async def reset_access_keys(self, account_id: int, mailbox: Mailbox | None) -> None:
        await self.store.reset_access_keys(account_id, None if mailbox is None else mailbox.id)
