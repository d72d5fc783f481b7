"""uvicorn embedded in mailstead's event loop: one ``WebServer`` per listener of protocol http.

uvicorn's ``serve()`` would install its own signal handlers (and ``run()`` its own loop), so the
pieces are driven by hand: startup on a socket we bind, the tick loop as a task, shutdown on
``stop``. Long-lived responses (server-sent events) end when ``WebState.closing`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import TYPE_CHECKING

import uvicorn
from starlette.types import ASGIApp

from mailstead.config import ListenerConfig
from mailstead.core.errors import ConfigError
from mailstead.net.listener import Listener

if TYPE_CHECKING:
    from mailstead.app import Services
    from mailstead.web.state import WebState


def bind_tcp(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


class WebServer:
    def __init__(self, state: WebState, server: uvicorn.Server, sock: socket.socket,
                 listener: Listener) -> None:
        self.state = state
        self.server = server
        self.sock = sock
        self.listener = listener
        self.ticker: asyncio.Task[None] = asyncio.create_task(server.main_loop())

    async def stop(self) -> None:
        self.state.closing.set()
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            await self.ticker
        await self.server.shutdown()


async def start_uvicorn(app: ASGIApp, sock: socket.socket,
                        ssl_context: ssl.SSLContext | None = None) -> uvicorn.Server:
    """uvicorn serving ``app`` on the bound ``sock`` in the running loop; the caller runs
    ``server.main_loop()`` as a task and awaits ``server.shutdown()`` to stop it."""
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        ws="none",
        http="h11",
        timeout_graceful_shutdown=3,
        h11_max_incomplete_event_size=64 * 1024,
    )
    config.load()
    config.ssl = ssl_context
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    try:
        await server.startup(sockets=[sock])
    except BaseException:
        sock.close()
        raise
    return server


async def start_web(
    services: Services,
    name: str,
    lc: ListenerConfig,
    ssl_context: ssl.SSLContext | None,
    listeners: list[Listener],
    sock: socket.socket | None = None,
) -> WebServer:
    """Binds the listener (or takes ``sock``, bound already) and starts serving the web app
    on the running loop. ``listeners`` is the App's list (filled as it starts), read for the
    client settings pages."""
    from mailstead.web.app import build_app
    from mailstead.web.state import WebState, session_key

    if lc.tls == "starttls":
        raise ConfigError(f"listeners.{name}.tls: http has no STARTTLS (use none or implicit)")
    if lc.tls == "implicit" and ssl_context is None:
        raise ConfigError(f"listeners.{name}.tls: implicit needs a certificate at tls.cert")
    state = WebState(services, listeners, https=lc.tls == "implicit",
                     secret=await session_key(services))
    app = build_app(state)
    if sock is None:
        sock = bind_tcp(lc.address, lc.port)
    server = await start_uvicorn(app, sock, ssl_context if lc.tls == "implicit" else None)
    listener = Listener(name=name, protocol=lc.protocol, address=lc.address, port=lc.port,
                        tls_mode=lc.tls, server=server.servers[0])
    return WebServer(state, server, sock, listener)
