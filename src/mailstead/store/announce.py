"""Telling running servers about commits made by another process on the same data directory
(the CLI's ``import``, ``sieve put``, list and account edits while ``serve`` runs on SQLite).

Each running server process (every worker of ``serve``, or the one process) binds a Unix
datagram socket in the abstract namespace and writes its name into a file of
``<data>/run/announce/``. A CLI process whose store commits touch mailboxes sends the ids to
every socket named there, as the workers' peer channel (net/peers.py) does among siblings, so
IMAP IDLE sees imported mail at once. When the CLI command ends it sends ``SETTINGS_CHANGED``
too: the servers drop their caches of accounts, Sieve scripts and allow/block lists, so a
``sieve activate`` counts for the very next message.

A datagram only wakes watchers, which then read the store: a stray one costs a read, no more.
A name left by a server that died is removed by the first sender that finds nobody there.
PostgreSQL needs none of this: its LISTEN/NOTIFY feed reaches every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from array import array
from collections.abc import Callable, Iterable
from pathlib import Path

from mailstead.obs import log_event
from mailstead.store.changes import SETTINGS_CHANGED

ANNOUNCE_DIR = Path("run") / "announce"
__all__ = ["SETTINGS_CHANGED", "AnnounceListener", "announce", "announce_dir"]
IDS_PER_DATAGRAM = 8192


def announce_dir(data_dir: Path) -> Path:
    return data_dir / ANNOUNCE_DIR


class AnnounceListener:
    """One server process's socket: hands the ids it receives to ``deliver``."""

    def __init__(self, data_dir: Path, deliver: Callable[[Iterable[int]], None]) -> None:
        self.directory = announce_dir(data_dir)
        self.deliver = deliver
        self.name = f"mailstead-announce-{os.getpid()}-{secrets.token_hex(8)}"
        self.file = self.directory / self.name
        self.sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("\0" + self.name)
        sock.setblocking(False)
        self.sock = sock
        temporary = self.file.with_suffix(".tmp")
        temporary.write_text(self.name)
        temporary.replace(self.file)  # a sender never reads half a name
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    def close(self) -> None:
        if self.sock is None:
            return
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.sock = None
        with contextlib.suppress(OSError):
            self.file.unlink()

    def _readable(self) -> None:
        assert self.sock is not None
        for _ in range(256):  # then let the loop run other callbacks
            try:
                datagram = self.sock.recv(1 << 17)
            except OSError:
                return
            if len(datagram) % 8:
                continue  # not ours
            ids = array("q")
            ids.frombytes(datagram)
            try:
                self.deliver(ids)
            except Exception as exc:
                log_event("announce.bad_datagram", error=f"{type(exc).__name__}: {exc}")


def announce(data_dir: Path, ids: Iterable[int]) -> None:
    """Sends ``ids`` to every running server of ``data_dir`` (none running: nothing to do)."""
    ordered = sorted(set(ids))
    directory = announce_dir(data_dir)
    if not ordered or not directory.is_dir():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)  # a server too busy to take a datagram within it misses it
        for entry in directory.iterdir():
            if entry.suffix == ".tmp":
                continue
            try:
                name = entry.read_text()
            except OSError:
                continue
            for start in range(0, len(ordered), IDS_PER_DATAGRAM):
                chunk = array("q", ordered[start:start + IDS_PER_DATAGRAM]).tobytes()
                try:
                    sock.sendto(chunk, "\0" + name)
                except (ConnectionRefusedError, FileNotFoundError):
                    with contextlib.suppress(OSError):
                        entry.unlink()  # that server is gone
                    break
                except OSError as exc:
                    log_event("announce.send_failed", server=name, error=str(exc))
                    break
