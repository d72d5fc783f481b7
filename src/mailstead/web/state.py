"""What every request handler shares: the services, the templates, the signing key, limiters.

Built once per web listener by ``server.start_web``; handlers reach it as
``request.app.state.web``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.templating import Jinja2Templates

from mailstead.mailmove.jobs import ImportJobs
from mailstead.net.listener import Listener
from mailstead.services.delivery import DeliveryService, delivery_service
from mailstead.services.mailbox import MailboxService
from mailstead.services.secrets import WEB_SESSION, shared_secret

if TYPE_CHECKING:
    from mailstead.app import Services

HERE = Path(__file__).parent
SECRET_BYTES = 32


async def session_key(services: Services) -> bytes:
    """The key signing web sessions and API tokens: shared by every node through the store
    (moved in from ``web.session_secret_file`` where an earlier version made it)."""
    text = await shared_secret(services.store, WEB_SESSION,
                               lambda: secrets.token_hex(SECRET_BYTES),
                               services.cfg.path(services.cfg.web.session_secret_file))
    return text.encode("ascii")


class SlidingWindow:
    """At most ``limit`` events per key within ``window`` seconds (sign-ups per IP)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._events: dict[str, deque[float]] = {}

    def _fresh(self, key: str) -> deque[float]:
        now = time.monotonic()
        events = self._events.setdefault(key, deque())
        while events and now - events[0] > self.window:
            events.popleft()
        return events

    def allowed(self, key: str) -> bool:
        return len(self._fresh(key)) < self.limit

    def record(self, key: str) -> None:
        self._fresh(key).append(time.monotonic())
        if len(self._events) > 10_000:  # forget idle keys so memory stays bounded
            for stale in [k for k, v in self._events.items() if not v]:
                del self._events[stale]


class WebState:
    def __init__(self, services: Services, listeners: list[Listener], *, https: bool,
                 secret: bytes) -> None:
        self.services = services
        self.cfg = services.cfg
        self.store = services.store
        self.listeners = listeners
        self.https = https
        self.closing = asyncio.Event()
        self.secret = secret
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.signups = SlidingWindow(self.cfg.web.signup_per_ip_per_day, 86_400)
        # Per (account id, UTC day): recipients sent from the web, for the new-account cap.
        self.revoked_sessions: dict[str, float] = {}  # session nonce -> expiry (logout)

    @property
    def mailboxes(self) -> MailboxService:
        """The process's MailboxService (shared with IMAP; made here when IMAP is off)."""
        existing = self.services.extra.get("mailbox")
        if isinstance(existing, MailboxService):
            return existing
        made = MailboxService(
            self.store, self.services.blobs, self.services.changes,
            self.cfg.limits.max_message_size,
        )
        self.services.extra["mailbox"] = made
        return made

    @property
    def imports(self) -> ImportJobs:
        """The background imports of the webmail (wiring makes them)."""
        jobs = self.services.extra.get("imports")
        if not isinstance(jobs, ImportJobs):
            jobs = self.services.extra["imports"] = ImportJobs(self.mailboxes)
        return jobs

    @property
    def delivery(self) -> DeliveryService:
        return delivery_service(self.services)

    def listener_ports(self) -> dict[str, tuple[str, int, str]]:
        """protocol listener name -> (protocol, bound port, tls mode) of what is running."""
        return {
            li.name: (li.protocol, li.bound_port, li.tls_mode) for li in self.listeners
        }
