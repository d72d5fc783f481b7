"""``mailstead serve`` on every core: one supervisor process and ``server.workers`` workers
(DESIGN.md "Using every core of one machine").

The supervisor (this process) prepares the store once (migrations, the configured domains),
binds every listening socket once -- so a port in use is one line and a non-zero exit with
nothing started -- prints the ``listening`` lines, makes the shared pages of the connection
caps and the directory of the peer channel, then forks the workers. Each worker inherits the
bound sockets and runs an ``App`` on its own event loop; the kernel hands each new connection
to whichever worker accepts it first, so a busy worker leaves new clients to an idle one.

Every listener runs in every worker except the web (``http``), which runs in worker 0 with the
other singletons: the outbound queue, the blob sweeper and StatsD (wiring.start). What the
workers share goes through the store (the POP3 maildrop lock, the queue's leases) or through
``net/sharedcaps.py`` (connection and session caps) and ``net/peers.py`` (the change feed and
the failed-login limiter); nothing through process memory.

Supervision: a worker that dies is started again (at most once a second per worker), with the
same sockets; the others keep serving meanwhile. SIGTERM or SIGINT stops every worker
gracefully (each closes its listeners and sessions, as a single process does), SIGKILL after
``STOP_TIMEOUT``. Workers die with the supervisor (``PR_SET_PDEATHSIG``), even when it is
killed. Exit status: 0 after a requested stop; a worker's status when one failed to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from mailstead import __version__, wiring
from mailstead import loop as event_loop
from mailstead.app import App, handler_factory, ssl_context_for
from mailstead.config import Config
from mailstead.core.errors import ConfigError
from mailstead.net.listener import BACKLOG
from mailstead.net.peers import WorkerContext
from mailstead.net.sharedcaps import make_mapping
from mailstead.obs import flush_logs, log_event
from mailstead.services.message_file_helper import SharedHelper, start_shared
from mailstead.store.factory import make_blob_store, make_metadata_store

STOP_TIMEOUT = 20.0  # seconds the workers get to close their sessions on SIGTERM
RESTART_SPACING = 1.0  # a worker that keeps dying is started again at most this often
_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
PR_SET_PDEATHSIG = 1


def worker_count(cfg: Config) -> int:
    """``server.workers``, or one per core this process may run on when it is 0."""
    if cfg.server.workers:
        return cfg.server.workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# -- before the workers --


async def prepare_store(cfg: Config) -> None:
    """Migrations, the message files' layout and the configured domains, once, before any
    worker opens the store."""
    make_blob_store(cfg)
    store = make_metadata_store(cfg)
    await store.open()
    try:
        for domain in cfg.domains:
            if await store.get_domain(domain.lower()) is None:
                await store.add_domain(domain.lower())
    finally:
        await store.close()


def bind(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def bind_listeners(cfg: Config) -> dict[str, socket.socket]:
    """A bound socket for each enabled listener a worker will serve (the TLS ones checked
    first: a missing certificate is a ConfigError, as in a single process)."""
    ctx = ssl_context_for(cfg)
    bound: dict[str, socket.socket] = {}
    try:
        for name, lc in cfg.listeners.items():
            if not lc.enabled:
                continue
            if lc.protocol != "http" and handler_factory(lc.protocol) is None:
                continue
            if lc.tls != "none" and ctx is None:
                raise ConfigError(
                    f"listeners.{name}.tls: {lc.tls} needs a certificate at tls.cert "
                    f"({cfg.path(cfg.tls.cert)})"
                )
            bound[name] = bind(lc.address, lc.port)
    except BaseException:
        for sock in bound.values():
            sock.close()
        raise
    return bound


def listening_line(name: str, sock: socket.socket, tls: str) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"listening {name} {shown}:{port} {tls}"


# -- the supervisor --


class Supervisor:
    def __init__(self, cfg: Config, count: int, sockets: dict[str, socket.socket],
                 echo: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.count = count
        self.sockets = sockets
        self.echo = echo
        self.peer_dir = Path(tempfile.mkdtemp(prefix="mailstead-"))
        self.caps = make_mapping(count)
        self.group = f"serve-{secrets.token_hex(8)}"
        self.secret = secrets.token_bytes(32)
        self.pids: dict[int, int] = {}  # pid -> worker index
        self.started: dict[int, float] = {}  # worker index -> when it was last started
        self.due: dict[int, float] = {}  # worker index -> when to start it again
        self.ready: set[int] = set()
        self.announced = False
        self.ready_r, self.ready_w = os.pipe()
        os.set_blocking(self.ready_r, False)
        # One message-file helper for every worker (services/message_file_helper.py serve_shared):
        # started before them, and again when it dies (RESTART_SPACING), its socket kept.
        self.files: SharedHelper | None = None
        self.files_started = 0.0
        self.files_due: float | None = None

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        # What the supervisor imported stays shared with the workers: the collector of a
        # worker leaves these objects alone, so their pages are not copied into each worker.
        # So the modules every worker imports as it starts are imported here first.
        wiring.preload()
        gc.collect()
        gc.freeze()
        try:
            if self.count > 1:
                self.files = start_shared(self.cfg.path(self.cfg.store.blob_dir),
                                          self.cfg.sqlite_path, self.peer_dir / "files")
                self.files_started = time.monotonic()
            for index in range(self.count):
                self._spawn(index)
            return self._supervise()
        finally:
            self._stop_all()
            if self.files is not None:  # after the workers: what they sent is answered
                self.files.stop()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            os.close(self.ready_r)
            os.close(self.ready_w)
            for sock in self.sockets.values():
                sock.close()
            shutil.rmtree(self.peer_dir, ignore_errors=True)

    def _supervise(self) -> int:
        while True:
            info = signal.sigtimedwait(_SIGNALS, 0.2)
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                log_event("serve.stopping", signal=signal.Signals(info.si_signo).name)
                return 0
            self._read_ready()
            failed = self._reap()
            if failed is not None:
                return failed
            now = time.monotonic()
            if self.files is not None and self.files_due is not None and self.files_due <= now:
                self.files_due = None
                self.files.start()
                self.files_started = now
            for index, when in list(self.due.items()):
                if when <= now:
                    del self.due[index]
                    self._spawn(index)

    def _read_ready(self) -> None:
        try:
            data = os.read(self.ready_r, 256)
        except BlockingIOError:
            return
        for index in data:
            if index not in self.ready:
                self.ready.add(index)
                if self.announced:
                    log_event("serve.worker_ready", worker=index)
        if not self.announced and len(self.ready) == self.count:
            self.announced = True
            self.echo(f"mailstead {__version__} ready (data: {self.cfg.data_dir}, "
                      f"{self.count} workers)")

    def _reap(self) -> int | None:
        """Collects dead workers and plans their restart; a status to exit with when one
        died before every worker was ready (a configuration or startup error)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid == 0:
                return None
            if self.files is not None and pid == self.files.pid:
                log_event("serve.message_files_died", pid=pid,
                          status=os.waitstatus_to_exitcode(status))
                self.files_due = max(time.monotonic(), self.files_started + RESTART_SPACING)
                continue
            index = self.pids.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            self.ready.discard(index)
            if not self.announced:
                return code if code > 0 else 1
            log_event("serve.worker_died", worker=index, pid=pid, status=code)
            self.due[index] = max(time.monotonic(),
                                  self.started.get(index, 0.0) + RESTART_SPACING)

    def _spawn(self, index: int) -> None:
        context = WorkerContext(index=index, count=self.count, peer_dir=self.peer_dir,
                                group=self.group, caps=self.caps, secret=self.secret,
                                sockets=self.sockets,
                                message_files=None if self.files is None
                                else self.peer_dir / "files")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                if self.files is not None:
                    self.files.close_in_child()
                code = _worker_main(self.cfg, context, self.ready_w, self.ready_r)
            except BaseException:
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    flush_logs()  # os._exit runs no atexit hook
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        self.pids[pid] = index
        self.started[index] = time.monotonic()
        log_event("serve.worker_started", worker=index, pid=pid)

    def _stop_all(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.pids and time.monotonic() < deadline:
            signal.sigtimedwait({signal.SIGCHLD}, 0.1)
            self._reap_quietly()
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while self.pids:
            pid, _status = os.waitpid(-1, 0)
            self.pids.pop(pid, None)

    def _reap_quietly(self) -> None:
        while self.pids:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.pids.clear()
                return
            if pid == 0:
                return
            self.pids.pop(pid, None)


# -- a worker --


def _die_with_parent(parent: int) -> None:
    """The kernel kills this worker when the supervisor dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)  # it died before the line above


def _worker_main(cfg: Config, context: WorkerContext, ready_w: int, ready_r: int) -> int:
    parent = os.getppid()
    os.close(ready_r)
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    _die_with_parent(parent)
    try:
        event_loop.run(_serve_worker(App(cfg, context), ready_w, context.index))
    except ConfigError as exc:
        print(f"mailstead: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"mailstead: worker {context.index}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


async def _serve_worker(app: App, ready_w: int, index: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
        os.write(ready_w, bytes([index]))
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await app.stop()


def serve(cfg: Config, count: int, echo: Callable[[str], None]) -> int:
    """Runs ``count`` workers until SIGTERM/SIGINT; the exit status. Raises ConfigError or
    OSError (a port in use) before anything started."""
    event_loop.run(prepare_store(cfg))
    sockets = bind_listeners(cfg)
    for name, sock in sockets.items():
        echo(listening_line(name, sock, cfg.listeners[name].tls))
    return Supervisor(cfg, count, sockets, echo).run()
