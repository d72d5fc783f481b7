"""Outbound delivery: messages per second from one mailstead instance to another over SMTP.

Two ``mailstead serve`` processes: the sender (mx.alpha.test on 127.0.0.2) and the receiver
(mx.beta.test on 127.0.0.3), found through the test DNS world (tests/dnsworld.py: loopback root
and child zones, unbound recursing; needs root and Debian's unbound). ``--messages`` messages of
``--size`` bytes are put in the sender's queue before it starts; the clock runs from the
sender's "ready" line until the receiver's INBOX (IMAP STATUS) holds them all. The delivery
uses everything real: MX lookup, STARTTLS, PIPELINING, connection reuse, per-entry results.

    .venv/bin/python bench/outbound.py [--messages 2000] [--size 4096] [--workers 4]
                                       [--batch 20] [--sender-store sqlite|postgresql]
                                       [--profile /tmp/sender.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailstead import bootstrap  # noqa: E402
from mailstead.services.delivery import new_queue_id  # noqa: E402
from mailstead.store.factory import make_blob_store, make_metadata_store  # noqa: E402
from mailstead.store.interfaces import QueueEntry, QueueRecipient  # noqa: E402
from tests import dnsworld  # noqa: E402

PASSWORD = "bench-password-1"
PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
SENDER = "alice@alpha.test"
RECIPIENT = "bob@beta.test"


def free_port(addresses: list[str]) -> int:
    while True:
        with socket.socket() as s:
            s.bind((addresses[0], 0))
            port = int(s.getsockname()[1])
        try:
            for address in addresses[1:]:
                with socket.socket() as s:
                    s.bind((address, port))
            return port
        except OSError:
            continue


def overrides(ip: str, hostname: str, smtp_port: int, imap_port: int, world: dnsworld.DnsWorld,
              args: argparse.Namespace, store: dict[str, str] | None) -> dict[str, Any]:
    listeners: dict[str, Any] = {
        name: {"enabled": False}
        for name in ("submission", "submissions", "imaps", "pop3", "pop3s", "http")
    }
    listeners["smtp"] = {"address": ip, "port": smtp_port, "enabled": True}
    listeners["imap"] = {"address": ip, "port": imap_port, "enabled": True}
    result: dict[str, Any] = {
        "hostname": hostname,
        "auth": {"allow_plaintext_on_loopback": True},
        "limits": {"max_connections_per_ip": 10_000},
        "log": {"level": "warning"},
        "listeners": listeners,
        "delivery": {
            "workers": args.workers, "batch_size": args.batch, "poll_interval": 0.05,
            "resolvers": [world.resolver], "mx_port": smtp_port, "bind_address": ip,
        },
    }
    if store:
        result["store"] = store
    return result


async def prepare(data_dir: Path, cfg_overrides: dict[str, Any], domain: str, user: str,
                  queue: int, size: int) -> None:
    cfg = bootstrap.build_config(data_dir, cfg_overrides)
    await bootstrap.initialise(cfg, demo_domain=None)
    store = make_metadata_store(cfg)
    await store.open()
    try:
        await bootstrap.add_domain(store, domain)
        await bootstrap.add_user(store, user, PASSWORD)
        blobs = make_blob_store(cfg)
        filler = ("x" * 76 + "\r\n") * max(size // 78, 1)
        now = datetime.now(UTC)
        for n in range(queue):
            data = (f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: bench {n}\r\n"
                    f"Message-ID: <bench-{n}.{secrets.token_hex(4)}@alpha.test>\r\n\r\n"
                    f"{filler}").encode()
            blob_id = blobs.put(data)
            await store.enqueue(QueueEntry(
                id=new_queue_id(), sender=SENDER, recipients=[QueueRecipient(RECIPIENT)],
                blob_id=blob_id, size=len(data), created=now, next_attempt=now))
    finally:
        await store.close()


def serve(data_dir: Path, profile: str | None = None) -> subprocess.Popen[str]:
    python = [sys.executable] + (["-m", "cProfile", "-o", profile] if profile else [])
    proc = subprocess.Popen(
        [*python, "-m", "mailstead", "serve", "--data", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("mailstead ") and "ready" in line:
            # Keep reading its output in the background so the pipe never fills.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc
    raise RuntimeError(f"mailstead serve exited with {proc.wait()}")


def inbox_count(ip: str, port: int) -> int:
    with imaplib.IMAP4(ip, port) as imap:
        imap.login(RECIPIENT, PASSWORD)
        _, data = imap.status("INBOX", "(MESSAGES)")
        imap.logout()
    m = re.search(rb"MESSAGES (\d+)", data[0] or b"")
    return int(m.group(1)) if m else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--sender-store", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the sender into FILE")
    args = parser.parse_args()

    reason = dnsworld.can_run()
    if reason:
        sys.exit(f"bench/outbound.py: {reason}")
    unbound = dnsworld.find_unbound()
    assert unbound is not None
    world = dnsworld.DnsWorld().start(unbound)
    work = Path(tempfile.mkdtemp(prefix="mailstead-bench-outbound-"))
    procs: list[subprocess.Popen[str]] = []
    schema = f"bench_{secrets.token_hex(4)}"
    try:
        smtp_port = free_port(["127.0.0.2", "127.0.0.3"])
        imap_port = free_port(["127.0.0.2", "127.0.0.3"])
        sender_store = ({"url": PG_DSN, "pg_schema": schema}
                        if args.sender_store == "postgresql" else None)
        asyncio.run(prepare(work / "beta", overrides(
            "127.0.0.3", "mx.beta.test", smtp_port, imap_port, world, args, None),
            "beta.test", RECIPIENT, 0, args.size))
        asyncio.run(prepare(work / "alpha", overrides(
            "127.0.0.2", "mx.alpha.test", smtp_port, imap_port, world, args, sender_store),
            "alpha.test", SENDER, args.messages, args.size))
        procs.append(serve(work / "beta"))
        procs.append(serve(work / "alpha", args.profile))
        start = time.perf_counter()
        while (count := inbox_count("127.0.0.3", imap_port)) < args.messages:
            time.sleep(0.2)
        elapsed = time.perf_counter() - start
        print(f"outbound: {count} messages of {args.size} bytes, sender store "
              f"{args.sender_store}, {args.workers} workers x batch {args.batch}: "
              f"{elapsed:.2f} s, {count / elapsed:.0f} delivered messages/s")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(20)
        world.stop()
        shutil.rmtree(work, ignore_errors=True)
        if args.sender_store == "postgresql":
            import psycopg

            with psycopg.connect(PG_DSN, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
