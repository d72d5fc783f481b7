"""POP3 listener: drives ``proto.pop3.Pop3Session`` over a connection and gives it the INBOX
of the same store IMAP uses.

- The maildrop is a snapshot of INBOX taken at login (RFC 1939 section 8: messages arriving
  later show up in the next session). UIDL is ``<uidvalidity>.<uid>``: stable across
  sessions and restarts, and never reused for another message.
- One POP3 session per mailbox at a time: the lock registry lives in ``services.extra`` so
  the pop3 and pop3s listeners of a process share it. (Several nodes on PostgreSQL each have
  their own registry: the lock is per node.)
- Deletions reach the store only at QUIT (UPDATE state), as one ``expunge``: IMAP sessions
  then see the messages gone. Retrieved messages are marked \\Seen at the same time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailstead.config import ListenerConfig
from mailstead.core.errors import CorruptBlob, MailsteadError, NotFound
from mailstead.net.listener import Connection, IdleTimeout, LineTooLong
from mailstead.obs import log_event
from mailstead.proto.pop3 import (
    MAX_LINE,
    Maildrop,
    Pop3Message,
    Pop3Session,
    Refused,
    err,
)
from mailstead.services.accounts import AuthFailed
from mailstead.store.interfaces import MessageMeta, SystemFlag

if TYPE_CHECKING:
    from mailstead.app import Services

LOCKS_KEY = "pop3_locks"


def _locks(services: Services) -> set[int]:
    """Mailbox ids that have a POP3 session in this process."""
    locks: set[int] = services.extra.setdefault(LOCKS_KEY, set())
    return locks


class StoreMaildrop:
    """The locked INBOX of one session, as the snapshot taken at login."""

    def __init__(
        self, services: Services, mailbox_id: int, uidvalidity: int, rows: Sequence[MessageMeta],
        session_id: str,
    ) -> None:
        self.services = services
        self.mailbox_id = mailbox_id
        self.rows = list(rows)
        self.session_id = session_id
        self._messages = [Pop3Message(f"{uidvalidity}.{row.uid}", row.size) for row in rows]
        self._locked = True

    @property
    def messages(self) -> Sequence[Pop3Message]:
        return self._messages

    async def fetch(self, index: int) -> bytes:
        row = self.rows[index]
        try:
            return await asyncio.to_thread(self.services.blobs.get, row.blob_id)
        except CorruptBlob as exc:
            # Never serve bytes that fail their hash check (mailstead check reports them).
            log_event("pop3.corrupt", session=self.session_id, blob=exc.blob_id,
                      reason=exc.reason)
            raise Refused(
                "SYS/PERM", f"message {index + 1} is damaged and cannot be sent"
            ) from None
        except (NotFound, OSError):
            raise Refused(None, f"message {index + 1} is no longer available") from None

    async def commit(self, deleted: Sequence[int], retrieved: Sequence[int]) -> int:
        store = self.services.store
        gone = {self.rows[i].uid for i in deleted}
        seen = [self.rows[i].uid for i in retrieved if self.rows[i].uid not in gone]
        try:
            if seen:
                await store.update_flags(self.mailbox_id, seen, "add", SystemFlag.SEEN)
            removed = await store.expunge(self.mailbox_id, sorted(gone)) if gone else []
        except MailsteadError as exc:
            log_event("pop3.update_failed", session=self.session_id, error=str(exc))
            raise Refused("SYS/TEMP", "could not update the mailbox") from None
        log_event("pop3.update", session=self.session_id, mailbox=self.mailbox_id,
                  deleted=len(removed), seen=len(seen))
        return len(removed)

    def release(self) -> None:
        if self._locked:
            _locks(self.services).discard(self.mailbox_id)
            self._locked = False


@dataclass
class StoreBackend:
    services: Services
    conn: Connection

    async def open_maildrop(self, username: str, password: str) -> Maildrop:
        services = self.services
        try:
            account = await services.accounts.authenticate(username, password, self.conn.peer_ip)
        except AuthFailed as exc:
            # RFC 3206: [AUTH] for credentials, [SYS/TEMP] for the temporary lockout.
            raise Refused("SYS/TEMP" if exc.temporary else "AUTH", str(exc)) from None
        inbox = await services.store.get_mailbox(account.id, "INBOX")
        if inbox is None:
            raise Refused("SYS/PERM", "this account has no INBOX")
        locks = _locks(services)
        if inbox.id in locks:
            # RFC 2449 section 8.1.1 [IN-USE]: the maildrop lock is held by another session.
            raise Refused("IN-USE", "mailbox in use by another POP3 session")
        locks.add(inbox.id)
        try:
            rows = await services.store.get_messages(inbox.id)
        except BaseException:
            locks.discard(inbox.id)
            raise
        log_event("pop3.login", session=self.conn.session_id, user=account.address,
                  messages=len(rows))
        return StoreMaildrop(services, inbox.id, inbox.uidvalidity, rows, self.conn.session_id)


class Pop3Handler:
    def __init__(self, services: Services, listener_name: str, config: ListenerConfig) -> None:
        self.services = services
        self.listener_name = listener_name
        self.config = config

    def busy_reply(self) -> bytes:
        return err("too many connections", "SYS/TEMP")

    async def handle(self, conn: Connection) -> None:
        cfg = self.services.cfg
        session = Pop3Session(
            StoreBackend(self.services, conn),
            tls_active=conn.is_tls,
            tls_available=self.config.tls == "starttls" and conn.ssl_context is not None,
            plaintext_allowed=cfg.auth.allow_plaintext_on_loopback and conn.is_loopback,
            max_errors=cfg.limits.max_errors,
        )
        try:
            await conn.send(session.greeting())
            while not session.closed:
                try:
                    line = await conn.readline(MAX_LINE, cfg.limits.pop3_idle_timeout)
                except LineTooLong:
                    reply = session.line_too_long()
                except IdleTimeout:
                    # RFC 1939 section 3: an autologout ends without entering UPDATE.
                    await conn.send(err("autologout: idle for too long"))
                    return
                else:
                    reply = await session.receive(line)
                await conn.send(reply.data)
                if reply.start_tls:
                    await conn.start_tls()  # pipelined plaintext is discarded (RFC 2595)
                    session.tls_started()
                if reply.close:
                    return
        finally:
            session.abort()  # releases the lock; deletes nothing unless QUIT committed


def make_pop3_handler(
    services: Services, listener_name: str, listener_config: ListenerConfig
) -> Pop3Handler:
    return Pop3Handler(services, listener_name, listener_config)
