"""Composition root: builds the concrete objects from the config, starts and stops everything.

Only this module (and the CLI, for admin commands) constructs stores and services. A protocol
joins ``mailstead serve`` by adding its handler factory to ``_HANDLERS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mailstead.auth.ratelimit import AuthLimiter
from mailstead.config import Config, ListenerConfig
from mailstead.core.errors import ConfigError
from mailstead.net.listener import ConnectionCaps, Listener, ProtocolHandler, start_listener
from mailstead.net.peers import (
    PeerChannel,
    SharedAuthLimiter,
    WorkerContext,
    connect_peers,
    forward_changes,
    forward_flags,
)
from mailstead.net.sharedcaps import SharedConnectionCaps
from mailstead.net.tls import server_context
from mailstead.obs import log_event
from mailstead.services import metrics
from mailstead.services.accounts import AccountService
from mailstead.store.announce import AnnounceListener
from mailstead.store.changes import ChangeBus
from mailstead.store.factory import make_blob_store, make_metadata_store
from mailstead.store.interfaces import BlobStore, MetadataStore


@dataclass
class Services:
    """Everything a protocol handler may use. Built once per process by ``App``."""

    cfg: Config
    store: MetadataStore
    blobs: BlobStore
    changes: ChangeBus
    limiter: AuthLimiter
    accounts: AccountService
    caps: ConnectionCaps
    extra: dict[str, Any] = field(default_factory=dict)  # services added by later layers
    started: float = field(default_factory=time.time)  # when this process's services began

    async def statistics(self) -> dict[str, Any]:
        """This process's figures for the admin console, the API, /metrics and StatsD."""
        return await metrics.statistics(self.store, self.caps.open_counts(), self.started)


HandlerFactory = Callable[[Services, str, ListenerConfig], ProtocolHandler]


# protocol -> (module, factory name). A module is imported only when a listener needs it.
_HANDLERS: dict[str, tuple[str, str]] = {
    "smtp": ("mailstead.net.smtp_server", "make_smtp_handler"),
    "submission": ("mailstead.net.smtp_server", "make_smtp_handler"),
    "imap": ("mailstead.net.imap_server", "make_imap_handler"),
    "pop3": ("mailstead.net.pop3_server", "make_pop3_handler"),
    "dmtp": ("mailstead.net.dmtp_server", "make_dmtp_handler"),
    "dmap": ("mailstead.net.dmtp_server", "make_dmap_handler"),
    "managesieve": ("mailstead.net.managesieve_server", "make_managesieve_handler"),
}


def handler_factory(protocol: str) -> HandlerFactory | None:
    """The handler factory for a listener's protocol, or None if that protocol is not built."""
    entry = _HANDLERS.get(protocol)
    if entry is None:
        return None
    module_name, attr = entry
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return None
    factory: HandlerFactory = getattr(module, attr)
    return factory


def ssl_context_for(cfg: Config) -> ssl.SSLContext | None:
    """The listeners' TLS context, or None when no certificate is configured."""
    cert, key = cfg.path(cfg.tls.cert), cfg.path(cfg.tls.key)
    if not cert.exists() or not key.exists():
        return None
    try:
        return server_context(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"tls.cert/tls.key: cannot load {cert} / {key}: {exc}") from None


class App:
    """One process's server. ``worker`` is set in the worker processes of ``serve`` (see
    supervisor.py): the listening sockets come bound, and caps, login limits and the change
    feed are shared with the sibling workers (net/sharedcaps.py, net/peers.py)."""

    def __init__(self, cfg: Config, worker: WorkerContext | None = None) -> None:
        self.cfg = cfg
        self.worker = worker
        self.changes = ChangeBus()
        self.store = make_metadata_store(cfg, self.changes)
        self.blobs = make_blob_store(cfg)
        limits = cfg.limits
        self.peers: PeerChannel | None = None
        if worker is None:
            self.limiter = AuthLimiter.from_config(cfg.auth)
            self.caps = ConnectionCaps(limits.max_connections, limits.max_connections_per_ip)
        else:
            self.limiter = SharedAuthLimiter.from_config(cfg.auth)
            self.caps = SharedConnectionCaps(
                limits.max_connections, limits.max_connections_per_ip, worker.caps,
                worker.count, worker.index)
            self.peers = PeerChannel(worker.peer_dir, worker.index, worker.count)
            self.changes.forward = forward_changes(self.peers)
            self.changes.forward_flags = forward_flags(self.peers)
            connect_peers(self.peers, self.limiter, self.changes.publish_here,
                          self.changes.flags_from_peer)
            if self.store.backend == "postgresql":
                # Siblings' NOTIFYs would repeat what the peer channel told us sooner.
                self.store.node = worker.group  # type: ignore[attr-defined]
        self.services = Services(
            cfg=cfg,
            store=self.store,
            blobs=self.blobs,
            changes=self.changes,
            limiter=self.limiter,
            accounts=AccountService(self.store, cfg.auth, self.limiter,
                                    worker.secret if worker else None),
            caps=self.caps,
        )
        # Commits of the CLI on the same SQLite data reach this process (store/announce.py).
        self.announcer = AnnounceListener(cfg.data_dir, self.changes.publish_here) \
            if self.store.backend == "sqlite" else None
        self.changes.settings_hooks.append(self._settings_changed)
        self.listeners: list[Listener] = []
        self.session_tasks: set[asyncio.Task[None]] = set()
        self.background: list[asyncio.Task[None]] = []
        self.web_servers: list[Any] = []  # mailstead.web.server.WebServer, imported lazily

    def _settings_changed(self) -> None:
        """Another process changed domains, accounts or aliases: route caches drop theirs."""
        if hasattr(self.store, "accounts_version"):
            self.store.accounts_version += 1

    def _ssl_context(self) -> ssl.SSLContext | None:
        return ssl_context_for(self.cfg)

    async def start(self) -> list[Listener]:
        # Blob writes, password hashes and store reads run in threads; the default pool
        # (cores + 4) queues them under load, measured slower than 32 (bench/store.py).
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=32, thread_name_prefix="mailstead")
        )
        if self.peers is not None:
            self.peers.start()
        await self.store.open()
        if self.announcer is not None:
            self.announcer.start()
        for domain in self.cfg.domains:
            if await self.store.get_domain(domain.lower()) is None:
                await self.store.add_domain(domain.lower())
        from mailstead import wiring

        if self.worker is not None and self.worker.message_files is not None:
            self.services.extra["shared_message_files"] = self.worker.message_files
        wiring.build(self.services)
        ctx = self._ssl_context()
        # One context for every listener: a renewed certificate loaded into it reaches them all.
        self.services.extra["tls_context"] = ctx
        self.services.extra["worker_index"] = self.worker.index if self.worker else None
        worker = self.worker
        for name, lc in self.cfg.listeners.items():
            if not lc.enabled:
                continue
            sock = worker.sockets.get(name) if worker is not None else None
            if lc.protocol == "http":  # an ASGI app under uvicorn, not a ProtocolHandler
                if worker is not None and not worker.runs_singletons:
                    continue  # the web runs in worker 0 (supervisor.py)
                self.listeners.append(await self._start_web(name, lc, ctx, sock))
                continue
            factory = handler_factory(lc.protocol)
            if factory is None:
                log_event("listener.skipped", listener=name, reason="protocol not built yet")
                continue
            if lc.tls != "none" and ctx is None:
                raise ConfigError(
                    f"listeners.{name}.tls: {lc.tls} needs a certificate at tls.cert "
                    f"({self.cfg.path(self.cfg.tls.cert)})"
                )
            handler = factory(self.services, name, lc)
            prepare = getattr(handler, "prepare", None)
            if prepare is not None:  # what it needs from the store before the first client
                await prepare()
            listener = await start_listener(
                name=name,
                protocol=lc.protocol,
                address=lc.address,
                port=lc.port,
                tls_mode=lc.tls,
                ssl_context=ctx if lc.tls != "none" else None,
                handler=handler,
                caps=self.caps,
                tasks=self.session_tasks,
                sock=sock,
            )
            self.listeners.append(listener)
        # Background work (queue workers...) starts only once every listener is bound: a second
        # `serve` on the same data fails at its first bind and leaves the queue alone.
        wiring.start(self.services, self.background,
                     singletons=worker is None or worker.runs_singletons)
        return self.listeners

    async def _start_web(
        self, name: str, lc: ListenerConfig, ctx: ssl.SSLContext | None,
        sock: socket.socket | None = None,
    ) -> Listener:
        from mailstead.web.server import start_web

        web = await start_web(self.services, name, lc, ctx, self.listeners, sock)
        self.web_servers.append(web)
        listener: Listener = web.listener
        return listener

    async def stop(self) -> None:
        for web in self.web_servers:
            with contextlib.suppress(Exception):
                await web.stop()
        self.web_servers.clear()
        for listener in self.listeners:
            listener.server.close()
        for task in list(self.session_tasks) + self.background:
            task.cancel()
        for task in list(self.session_tasks) + self.background:
            with contextlib.suppress(BaseException):
                await task
        for listener in self.listeners:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.server.wait_closed(), 2)
        self.listeners.clear()
        if self.announcer is not None:
            self.announcer.close()
        await self.store.close()
        if self.peers is not None:
            self.peers.close()
