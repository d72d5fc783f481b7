"""IMAP writes while SMTP mail pours in: STORE latency on one mailbox, alone and during ingest.

Starts mailstead (SQLite) with an MX and a plain-text IMAP listener on 127.0.0.1, logs one user
in over IMAP and times ``--stores`` flag changes (``STORE +FLAGS``/``-FLAGS \\Seen``, each an
fsync'd commit) first alone, then while ``--sessions`` SMTP sessions deliver 4 KiB messages to
other users as fast as they can. Printed: p50 and p99 of both, and the messages delivered.
Delivered rows and flag changes come from two SQLite writers (the message file helper and the
store's writer thread), so this shows what one costs the other.

    .venv/bin/python bench/imap_during_ingest.py [--stores 400] [--sessions 20]
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import smtp_ingest  # noqa: E402  (the server start-up and SMTP client of the ingest bench)


def prepare(data_dir: Path, users: int) -> None:
    smtp_ingest.prepare_mailstead(data_dir, users, {
        "listeners": {"imap": {"address": "127.0.0.1", "port": 0, "enabled": True,
                               "tls": "none"}},
        "auth": {"allow_plaintext_on_loopback": True},
    })


def start(data_dir: Path) -> tuple[smtp_ingest.Server, int]:
    """The server and its IMAP port (its SMTP port is ``server.port``)."""
    cmd = [sys.executable, "-m", "mailstead", "serve", "--data", str(data_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    ports: dict[str, int] = {}
    assert proc.stdout is not None
    while len(ports) < 2:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("mailstead exited before listening")
        words = line.split()
        if len(words) >= 3 and words[0] == "listening":
            ports[words[1]] = int(words[2].rpartition(":")[2])
    return smtp_ingest.Server("mailstead", proc, ports["smtp"]), ports["imap"]


def deliver_until(stop: threading.Event, port: int, sessions: int, users: int,
                  delivered: list[int]) -> None:
    bodies = [smtp_ingest.make_message(4096, n) for n in range(64)]

    async def worker(number: int) -> None:
        session = await smtp_ingest.Session.open(port)
        count = 0
        while not stop.is_set():
            await session.send(f"user{number % users}@{smtp_ingest.DOMAIN}",
                               bodies[count % len(bodies)])
            count += 1
        delivered.append(count)
        await session.close()

    async def main() -> None:
        await asyncio.gather(*(worker(n) for n in range(sessions)))

    asyncio.run(main())


def time_stores(imap: imaplib.IMAP4, count: int) -> list[float]:
    times = []
    for n in range(count):
        start = time.perf_counter()
        imap.store("1", "+FLAGS" if n % 2 == 0 else "-FLAGS", "\\Seen")
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> str:
    p99 = sorted(times)[int(len(times) * 0.99)]
    return f"p50 {statistics.median(times) * 1000:6.2f} ms   p99 {p99 * 1000:6.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", type=int, default=400)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--users", type=int, default=20, help="recipients of the SMTP load")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="imap-ingest-"))
    server = None
    try:
        prepare(workdir / "mailstead", args.users + 1)
        server, imap_port = start(workdir / "mailstead")
        imap = imaplib.IMAP4("127.0.0.1", imap_port)
        imap.login(f"user{args.users}@{smtp_ingest.DOMAIN}", smtp_ingest.PASSWORD)
        imap.append("INBOX", None, None, smtp_ingest.make_message(4096, 0)[:-3])
        imap.select("INBOX")
        alone = time_stores(imap, args.stores)
        stop, delivered = threading.Event(), []
        load = threading.Thread(target=deliver_until,
                                args=(stop, server.port, args.sessions, args.users, delivered))
        load.start()
        time.sleep(2)  # the sessions are up and the helper busy
        started = time.perf_counter()
        during = time_stores(imap, args.stores)
        elapsed = time.perf_counter() - started
        stop.set()
        load.join()
        imap.logout()
        rate = sum(delivered) / (elapsed + 2)
        print(f"STORE alone          {summary(alone)}")
        print(f"STORE during ingest  {summary(during)}   ({args.sessions} SMTP sessions, "
              f"{sum(delivered)} messages delivered, about {rate:.0f}/s)")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
