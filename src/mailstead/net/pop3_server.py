"""POP3 listener: drives ``proto.pop3.Pop3Session`` over a connection and gives it the INBOX
of the same store IMAP uses.

- The maildrop is a snapshot of INBOX taken at login (RFC 1939 section 8: messages arriving
  later show up in the next session). UIDL is ``<uidvalidity>.<uid>``: stable across
  sessions and restarts, and never reused for another message.
- One POP3 session per mailbox at a time, across every listener and every node sharing the
  store: the lock is a lease in the store (``lock_maildrop``), renewed while the session
  lives and given back when it ends; a node that dies without giving it back frees it when
  the lease runs out.
- Deletions reach the store only at QUIT (UPDATE state), as one ``expunge``: IMAP sessions
  then see the messages gone. Retrieved messages are marked \\Seen at the same time.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailstead.config import ListenerConfig
from mailstead.core.errors import CorruptBlob, MailsteadError, NotFound
from mailstead.net.listener import Connection, IdleTimeout, LineTooLong
from mailstead.obs import log_event
from mailstead.proto.lines import is_http_request, is_tls_handshake
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

LOCK_LEASE = 60.0  # seconds a maildrop lock lasts unless renewed (every third of that)


class StoreMaildrop:
    """The locked INBOX of one session, as the snapshot taken at login."""

    def __init__(
        self, services: Services, mailbox_id: int, uidvalidity: int, rows: Sequence[MessageMeta],
        session_id: str, owner: str,
    ) -> None:
        self.services = services
        self.mailbox_id = mailbox_id
        self.rows = list(rows)
        self.session_id = session_id
        self.owner = owner  # of the maildrop lock, taken before this was made
        self._messages = [Pop3Message(f"{uidvalidity}.{row.uid}", row.size) for row in rows]
        self._locked = True
        self._lost = False  # the lease ran out and someone else may hold the lock now
        self._renewer = asyncio.ensure_future(self._renew())
        self._unlocking: asyncio.Future[None] | None = None

    @property
    def messages(self) -> Sequence[Pop3Message]:
        return self._messages

    async def fetch(self, index: int) -> bytes:
        row = self.rows[index]
        # The snapshot may be stale: a message expunged since (over IMAP, or on another node)
        # is gone, not served from its file. One lookup by primary key.
        if not await self.services.store.get_messages(self.mailbox_id, [row.uid]):
            log_event("pop3.gone", session=self.session_id, uid=row.uid)
            raise Refused(None, "no such message")
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

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(LOCK_LEASE / 3)
            try:
                held = await self.services.store.lock_maildrop(self.mailbox_id, self.owner,
                                                               LOCK_LEASE)
            except Exception as exc:  # the store is away for now: try again at the next turn
                log_event("pop3.lock_renew_failed", session=self.session_id, error=str(exc))
                continue
            if not held:
                self._lost = True
                log_event("pop3.lock_lost", session=self.session_id, mailbox=self.mailbox_id)
                return

    async def commit(self, deleted: Sequence[int], retrieved: Sequence[int]) -> int:
        if self._lost:
            # Another session may have the maildrop now: deleting from a stale snapshot could
            # remove what that one is showing.
            raise Refused("SYS/TEMP", "the maildrop lock was lost")
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
        await self._unlock()  # the end of UPDATE: unlocked before QUIT's +OK goes out
        return len(removed)

    async def _unlock(self) -> None:
        if not self._locked:
            return
        self._locked = False
        self._renewer.cancel()
        try:
            await self.services.store.unlock_maildrop(self.mailbox_id, self.owner)
        except Exception as exc:  # its lease runs out instead
            log_event("pop3.unlock_failed", session=self.session_id, error=str(exc))

    def release(self) -> None:
        if self._locked and self._unlocking is None:
            self._unlocking = asyncio.ensure_future(self._unlock())

    async def released(self) -> None:
        """Waits for the unlock that ``release`` started."""
        if self._unlocking is not None:
            await self._unlocking


@dataclass
class StoreBackend:
    services: Services
    conn: Connection
    maildrop: StoreMaildrop | None = None

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
        owner = f"{services.cfg.hostname} {os.getpid()} {self.conn.session_id}"
        if not await services.store.lock_maildrop(inbox.id, owner, LOCK_LEASE):
            # RFC 2449 section 8.1.1 [IN-USE]: the maildrop lock is held by another session.
            raise Refused("IN-USE", "mailbox in use by another POP3 session")
        try:
            rows = await services.store.get_messages(inbox.id)
        except BaseException:
            await services.store.unlock_maildrop(inbox.id, owner)
            raise
        log_event("pop3.login", session=self.conn.session_id, user=account.address,
                  messages=len(rows))
        self.maildrop = StoreMaildrop(services, inbox.id, inbox.uidvalidity, rows,
                                      self.conn.session_id, owner)
        return self.maildrop


class Pop3Handler:
    def __init__(self, services: Services, listener_name: str, config: ListenerConfig) -> None:
        self.services = services
        self.listener_name = listener_name
        self.config = config

    def busy_reply(self) -> bytes:
        return err("too many connections", "SYS/TEMP")

    async def handle(self, conn: Connection) -> None:
        cfg = self.services.cfg
        backend = StoreBackend(self.services, conn)
        session = Pop3Session(
            backend,
            tls_active=conn.is_tls,
            tls_available=self.config.tls == "starttls" and conn.ssl_context is not None,
            plaintext_allowed=cfg.auth.allow_plaintext_on_loopback and conn.is_loopback,
            max_errors=cfg.limits.max_errors,
        )
        timeout = cfg.limits.pop3_idle_timeout
        try:
            await conn.send(session.greeting())
            try:
                first = b"" if conn.is_tls else await conn.peek(3, timeout)
            except IdleTimeout:
                await conn.send(err("autologout: idle for too long"))
                return
            if is_tls_handshake(first):
                await self._hang_up(conn, "TLS handshake on a plaintext port", "tls_on_plaintext")
                return
            while not session.closed:
                if conn.pending_input():  # pipelined commands: the others get a turn between
                    await asyncio.sleep(0)
                try:
                    line = await conn.readline(MAX_LINE, timeout)
                except LineTooLong:
                    reply = session.line_too_long()
                except IdleTimeout:
                    # RFC 1939 section 3: an autologout ends without entering UPDATE.
                    await conn.send(err("autologout: idle for too long"))
                    return
                else:
                    if is_http_request(line):  # a browser made to post here: hang up
                        await self._hang_up(conn, "this is a POP3 server, not HTTP",
                                            "http_request")
                        return
                    reply = await session.receive(line)
                await conn.send(reply.data)
                if reply.start_tls:
                    await conn.start_tls()  # pipelined plaintext is discarded (RFC 2595)
                    session.tls_started()
                if reply.close:
                    return
        finally:
            session.abort()  # releases the lock; deletes nothing unless QUIT committed
            if backend.maildrop is not None:
                await backend.maildrop.released()


    @staticmethod
    async def _hang_up(conn: Connection, text: str, reason: str) -> None:
        """Input that is not POP3 at all: -ERR and close (nothing is deleted)."""
        log_event("pop3.hang_up", session=conn.session_id, client=conn.peer_ip, reason=reason)
        await conn.send(err(text))


def make_pop3_handler(
    services: Services, listener_name: str, listener_config: ListenerConfig
) -> Pop3Handler:
    return Pop3Handler(services, listener_name, listener_config)
