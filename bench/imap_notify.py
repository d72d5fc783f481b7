"""IMAP NOTIFY (RFC 5465) on an account with many mailboxes: what one change costs.

Starts mailstead (SQLite) with a plain-text IMAP listener on 127.0.0.1, gives one user
``--mailboxes`` mailboxes, and opens ``--watchers`` sessions that each run
``NOTIFY SET (PERSONAL (MessageNew MessageExpunge))`` (all mailboxes watched). Then another
session APPENDs ``--appends`` messages to mailboxes picked across the account, and the time from
the APPEND's OK until every watcher has read its ``* STATUS`` is taken. Printed: how long the
NOTIFY SET took, p50/p99 of that delay, and a NOOP's round trip from a further session while
the watchers wait (each change costs O(watchers) work, not O(mailboxes)).

    .venv/bin/python bench/imap_notify.py [--mailboxes 5000] [--watchers 10] [--appends 100]
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import imap_during_ingest  # noqa: E402  (server start-up)
import smtp_ingest  # noqa: E402

USER = f"user0@{smtp_ingest.DOMAIN}"


def make_mailboxes(data_dir: Path, count: int) -> None:
    from mailstead.config import load_config
    from mailstead.store.factory import make_metadata_store

    cfg = load_config(data_dir)

    async def go() -> None:
        store = make_metadata_store(cfg)
        await store.open()
        try:
            account = await store.get_account(USER)
            assert account is not None
            for i in range(count):
                await store.create_mailbox(account.id, f"box{i:05d}", None)
        finally:
            await store.close()

    asyncio.run(go())


class Watcher:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buf = b""
        self.line()
        self.cmd(f'LOGIN {USER} "{smtp_ingest.PASSWORD}"')

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def cmd(self, text: str) -> list[bytes]:
        self.sock.sendall(b"t " + text.encode() + b"\r\n")
        lines = []
        while True:
            lines.append(self.line())
            if lines[-1].startswith(b"t "):
                assert b" OK " in lines[-1], lines
                return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mailboxes", type=int, default=5000)
    parser.add_argument("--watchers", type=int, default=10)
    parser.add_argument("--appends", type=int, default=100)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="mailstead-bench-notify-"))
    server = None
    try:
        smtp_ingest.prepare_mailstead(data_dir, 1, {
            "listeners": {"imap": {"address": "127.0.0.1", "port": 0, "enabled": True,
                                   "tls": "none"}},
            "auth": {"allow_plaintext_on_loopback": True},
            "limits": {"imap_sessions_per_user_ip": 1000},
        })
        started = time.perf_counter()
        make_mailboxes(data_dir, args.mailboxes)
        print(f"created {args.mailboxes} mailboxes in {time.perf_counter() - started:.1f} s")
        server, port = imap_during_ingest.start(data_dir)
        watchers = [Watcher(port) for _ in range(args.watchers)]
        started = time.perf_counter()
        for w in watchers:
            w.cmd("NOTIFY SET (PERSONAL (MessageNew MessageExpunge))")
        per_set = (time.perf_counter() - started) / args.watchers
        print(f"NOTIFY SET (PERSONAL ...) over {args.mailboxes + 6} mailboxes: "
              f"{per_set * 1000:.1f} ms each")
        writer = imaplib.IMAP4("127.0.0.1", port)
        writer.login(USER, smtp_ingest.PASSWORD)
        other = Watcher(port)
        delays = []
        noops = []
        step = max(1, args.mailboxes // args.appends)
        for i in range(args.appends):
            box = f"box{(i * step) % args.mailboxes:05d}"
            typ, _ = writer.append(box, "", None, b"Subject: n\r\n\r\nbody\r\n")
            assert typ == "OK"
            sent = time.perf_counter()
            for w in watchers:
                line = w.line()
                assert line.startswith(b"* STATUS"), line
            delays.append(time.perf_counter() - sent)
            t0 = time.perf_counter()
            other.cmd("NOOP")
            noops.append(time.perf_counter() - t0)
        delays.sort()
        noops.sort()
        print(f"APPEND OK -> all {args.watchers} watchers told: p50 "
              f"{statistics.median(delays) * 1000:.1f} ms, p99 "
              f"{delays[int(len(delays) * 0.99) - 1] * 1000:.1f} ms")
        print(f"NOOP of an ordinary session between them: p50 {statistics.median(noops) * 1000:.1f}"
              f" ms, p99 {noops[int(len(noops) * 0.99) - 1] * 1000:.1f} ms")
        writer.logout()
    finally:
        if server is not None:
            server.proc.terminate()
            server.proc.wait(10)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
