"""ManageSieve listener (RFC 5804, port 4190): drives ``proto.managesieve`` over a connection
and gives it the scripts of the authenticated user through the Sieve service.

Authentication goes through ``AccountService.authenticate`` like IMAP and POP3, so the same
rate limits and lockouts apply; AUTHENTICATE needs TLS unless plaintext on loopback is
allowed (``auth.allow_plaintext_on_loopback``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailstead.config import ListenerConfig
from mailstead.core.errors import Conflict, InvalidInput, NotFound
from mailstead.net.listener import Connection, ConnectionClosed, IdleTimeout
from mailstead.obs import log_event
from mailstead.proto.managesieve import (
    CommandReader,
    ManageSieveSession,
    ProtocolError,
    Refused,
    response,
)
from mailstead.services.accounts import AuthFailed
from mailstead.sieve.check import EXTENSIONS
from mailstead.sieve.service import MAX_SCRIPT_BYTES, MAX_SCRIPTS, SieveService, check_script
from mailstead.store.interfaces import Account

if TYPE_CHECKING:
    from mailstead.app import Services

READ_SIZE = 64 * 1024


class SieveBackend:
    """The session's view of one user's scripts (``proto.managesieve.ManageSieveBackend``)."""

    def __init__(self, services: Services, conn: Connection) -> None:
        self.services = services
        self.conn = conn
        self.account: Account | None = None
        found = services.extra.get("sieve")
        if not isinstance(found, SieveService):
            raise RuntimeError("the Sieve service was not started (wiring.py)")
        self.sieve = found

    def _user(self) -> Account:
        if self.account is None:
            raise Refused("authenticate first")
        return self.account

    async def authenticate(self, username: str, password: str) -> str:
        try:
            self.account = await self.services.accounts.authenticate(username, password,
                                                                     self.conn.peer_ip)
        except AuthFailed as exc:
            raise Refused(str(exc), "TRYLATER" if exc.temporary else "") from None
        log_event("managesieve.login", session=self.conn.session_id, user=self.account.address)
        return self.account.address

    async def list_scripts(self) -> list[tuple[str, bool]]:
        return await self.sieve.store.list_sieve_scripts(self._user().id)

    async def get_script(self, name: str) -> str:
        text = await self.sieve.store.get_sieve_script(self._user().id, name)
        if text is None:
            raise Refused(f"no script {name!r}", "NONEXISTENT")
        return text

    async def put_script(self, name: str, text: str) -> str:
        try:
            await self.sieve.put(self._user(), name, text)
        except InvalidInput as exc:
            raise Refused(str(exc)) from None
        except Conflict as exc:
            raise Refused(str(exc), "QUOTA/MAXSCRIPTS") from None
        return ""

    async def check_script(self, text: str) -> str:
        try:
            check_script(text)
        except InvalidInput as exc:
            raise Refused(str(exc)) from None
        return ""

    async def have_space(self, name: str, size: int) -> None:
        scripts = await self.list_scripts()
        if size > MAX_SCRIPT_BYTES:
            raise Refused("script too large", "QUOTA/MAXSIZE")
        if name not in {n for n, _a in scripts} and len(scripts) >= MAX_SCRIPTS:
            raise Refused(f"at most {MAX_SCRIPTS} scripts", "QUOTA/MAXSCRIPTS")

    async def set_active(self, name: str) -> None:
        try:
            await self.sieve.activate(self._user(), name)
        except (NotFound, InvalidInput) as exc:
            raise Refused(str(exc), "NONEXISTENT") from None

    async def delete_script(self, name: str) -> None:
        try:
            await self.sieve.delete(self._user(), name)
        except NotFound as exc:
            raise Refused(str(exc), "NONEXISTENT") from None
        except Conflict as exc:
            raise Refused(str(exc), "ACTIVE") from None

    async def rename_script(self, old: str, new: str) -> None:
        try:
            await self.sieve.rename(self._user(), old, new)
        except NotFound as exc:
            raise Refused(str(exc), "NONEXISTENT") from None
        except Conflict as exc:
            raise Refused(str(exc), "ALREADYEXISTS") from None
        except InvalidInput as exc:
            raise Refused(str(exc)) from None


class ManageSieveHandler:
    def __init__(self, services: Services, listener_name: str, config: ListenerConfig) -> None:
        self.services = services
        self.listener_name = listener_name
        self.config = config

    def busy_reply(self) -> bytes:
        return response("BYE", "too many connections", "TRYLATER")

    async def handle(self, conn: Connection) -> None:
        cfg = self.services.cfg
        session = ManageSieveSession(
            backend=SieveBackend(self.services, conn),
            extensions=EXTENSIONS,
            tls_active=conn.is_tls,
            tls_available=self.config.tls == "starttls" and conn.ssl_context is not None,
            plaintext_allowed=cfg.auth.allow_plaintext_on_loopback and conn.is_loopback,
            max_script=MAX_SCRIPT_BYTES,
            max_errors=cfg.limits.max_errors,
        )
        timeout = cfg.limits.managesieve_idle_timeout
        reader = CommandReader()
        try:
            await conn.send(session.greeting())
            while not session.closed:
                try:
                    words = reader.next_command()
                except ProtocolError as exc:
                    reply = session.protocol_error(str(exc))
                else:
                    if words is None:
                        reader.feed(await conn.read_some(READ_SIZE, timeout))
                        continue
                    reply = await session.receive(words)
                await conn.send(reply.data)
                if reply.start_tls:
                    reader = CommandReader()  # pipelined plain text is dropped
                    await conn.start_tls()
                    session.tls_started()
                    # RFC 5804 2.2: the capabilities again once TLS is up.
                    await conn.send(session.capabilities() + response("OK"))
                if reply.close:
                    return
        except IdleTimeout:
            await conn.send(response("BYE", "idle for too long"))
        except ConnectionClosed:
            return


def make_managesieve_handler(
    services: Services, listener_name: str, listener_config: ListenerConfig
) -> ManageSieveHandler:
    return ManageSieveHandler(services, listener_name, listener_config)
