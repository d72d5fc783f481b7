"""Hostile IMAP commands against a real ``mailstead serve`` process (issue 16).

    .venv/bin/python bench/imap_hostile.py [--keys 36] [--lines 100000] [--phases 1,2,3,4,5]

Phases, each printing how long the hostile command took, the server CPU it cost, and the
latency of a second client meanwhile (an SMTP greeting and an IMAP NOOP on another session,
repeated while the hostile command runs: median and max):

1. ``SEARCH`` holding 100,000 one-byte ``TEXT`` literals sent with LITERAL+ ``{1+}``.
2. The same with synchronising literals (the client waits for each "+").
3. ``SEARCH TEXT x HEADER Received y BODY z ...`` (``--keys`` keys) over a mailbox holding a
   ~7 MB message of ``--lines`` ``Received:`` lines (every key matches, so each is evaluated).
4. ``SEARCH`` with 999 distinct ``BODY`` keys, all matching, over three ~7 MB messages (many
   seconds of real work: runs until done or the budget, ``limits.imap_command_seconds``).
5. SIGTERM while phase 4's command runs: seconds until the process is gone.

The server runs in its own process (plaintext IMAP and SMTP on 127.0.0.1, loopback login
allowed), so the load generator does not share its interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from mailstead import bootstrap
from mailstead.config import Config
from mailstead.store.factory import make_blob_store, make_metadata_store
from mailstead.store.interfaces import Delivery, NewMessage

USER = "bench@example.test"
PASSWORD = "bench-Passw0rd!"


def received_message(lines: int) -> bytes:
    hops = b"".join(
        b"Received: from relay%d.example.org ([192.0.2.%d]) by mx.example.test\r\n"
        % (i, i % 250)
        for i in range(lines)
    )
    return hops + b"From: carol@example.org\r\nSubject: many hops\r\n\r\nThe body says hello.\r\n"


BODY_LINE = b"plain words of a very long body, nothing to find in it at all\r\n"
# The last line: keys taken from it match, but only after a scan of the whole body.
LAST_LINE = "zebra quixotic jumbled fjord nymph vexing gawky sphinx of black quartz judge my vow"


def big_body_message(size: int = 7_000_000) -> bytes:
    return (b"From: carol@example.org\r\nSubject: big body\r\n\r\n"
            + BODY_LINE * (size // len(BODY_LINE)) + LAST_LINE.encode() + b"\r\n")


async def populate(cfg: Config, lines: int) -> None:
    store = make_metadata_store(cfg)
    blobs = make_blob_store(cfg)
    await store.open()
    try:
        await store.add_domain("example.test")
        await bootstrap.add_user(store, USER, PASSWORD)
        account = await store.get_account(USER)
        assert account is not None
        inbox = await store.get_mailbox(account.id, "INBOX")
        big = await store.create_mailbox(account.id, "Big")
        assert inbox is not None
        now = datetime.now(UTC)
        for box_id, data in [(inbox.id, received_message(lines)),
                             (inbox.id, b"Subject: small\r\n\r\nHello.\r\n"),
                             *[(big.id, big_body_message()) for _ in range(3)]]:
            blob_id = blobs.put(data)
            msg = NewMessage(blob_id=blob_id, size=len(data), internal_date=now)
            await store.store_message([Delivery(box_id, msg)])
    finally:
        await store.close()


def start_server(data_dir: Path) -> tuple[subprocess.Popen[str], dict[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailstead", "serve", "--data", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    ports: dict[str, int] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.match(r"listening (\S+) \S+:(\d+)", line.strip())
        if m:
            ports[m.group(1)] = int(m.group(2))
        if "ready" in line:
            break
    return proc, ports


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, select: str = "INBOX") -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**24)
        client = cls(reader, writer)
        await reader.readline()
        await client.command(f'l LOGIN {USER} "{PASSWORD}"', b"l")
        await client.command(f"s SELECT {select}", b"s")
        return client

    async def command(self, text: str, tag: bytes) -> bytes:
        self.writer.write(text.encode() + b"\r\n")
        return await self.until(tag)

    async def until(self, tag: bytes) -> bytes:
        while True:
            line = await self.reader.readline()
            if not line:
                return b"(connection closed)"
            if line.startswith(tag + b" ") or line.startswith(b"* BYE"):
                return line.strip()

    def close(self) -> None:
        self.writer.close()


async def greeting(port: int) -> float:
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()
    writer.close()
    return time.perf_counter() - start


async def while_running(
    name: str, ports: dict[str, int], pid: int, hostile: Callable[[], Awaitable[bytes]],
) -> None:
    other = await Client.connect(ports["imap"])
    cpu = cpu_seconds(pid)
    start = time.perf_counter()
    task = asyncio.ensure_future(hostile())
    greetings: list[float] = []
    noops: list[float] = []
    while not task.done():
        greetings.append(await greeting(ports["smtp"]))
        t = time.perf_counter()
        await other.command("n NOOP", b"n")
        noops.append(time.perf_counter() - t)
        await asyncio.sleep(0.05)
    answer = await task
    took = time.perf_counter() - start
    other.close()
    print(f"{name}: {took:.2f} s, server CPU {cpu_seconds(pid) - cpu:.2f} s -> {answer.decode()}")
    print(f"    meanwhile SMTP greeting median {statistics.median(greetings) * 1000:.1f} ms, "
          f"max {max(greetings) * 1000:.1f} ms; IMAP NOOP median "
          f"{statistics.median(noops) * 1000:.1f} ms, max {max(noops) * 1000:.1f} ms "
          f"({len(greetings)} probes)")


async def literal_plus(port: int) -> bytes:
    client = await Client.connect(port)
    client.writer.write(b"a1 SEARCH TEXT {1+}\r\nx" + b" TEXT {1+}\r\nx" * 99_999 + b"\r\n")
    try:
        return await client.until(b"a1")
    finally:
        client.close()


async def synchronising(port: int) -> bytes:
    client = await Client.connect(port)
    client.writer.write(b"a1 SEARCH TEXT {1}\r\n")
    try:
        for _ in range(100_000):
            line = await client.reader.readline()
            if not line.startswith(b"+"):
                return line.strip()
            client.writer.write(b"x TEXT {1}\r\n")
        return b"(all sent)"
    finally:
        client.close()


async def many_keys(port: int, keys: int) -> bytes:
    client = await Client.connect(port)
    words = []  # distinct keys that all match the big message: an AND evaluates every one
    for i in range(keys // 3):
        tail = "the body says hello"[i % 10:]
        words += [f'TEXT "relay{i}."', f'HEADER Received "relay{i}.example"', f'BODY "{tail}"']
    try:
        return await client.command("a1 SEARCH " + " ".join(words), b"a1")
    finally:
        client.close()


def body_keys() -> str:
    """999 distinct BODY keys that all match the 7 MB bodies, each only at their end (none
    ends the AND early, each reads the whole body)."""
    line = LAST_LINE
    words = sorted(w for w in {line[i : i + n] for n in range(8, 60) for i in range(len(line) - n)}
                   if w not in BODY_LINE.decode())
    return "a1 SEARCH " + " ".join(f'BODY "{w}"' for w in words[:999])


async def thousand_keys(port: int) -> bytes:
    client = await Client.connect(port, "Big")
    try:
        return await client.command(body_keys(), b"a1")
    finally:
        client.close()


async def sigterm(proc: subprocess.Popen[str], port: int) -> None:
    client = await Client.connect(port, "Big")
    client.writer.write(body_keys().encode() + b"\r\n")
    await asyncio.sleep(1.0)
    start = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    while proc.poll() is None and time.perf_counter() - start < 60:
        await asyncio.sleep(0.02)
    print(f"SIGTERM during the 999-key SEARCH: process gone after "
          f"{time.perf_counter() - start:.2f} s (exit {proc.poll()})")
    client.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--keys", type=int, default=36)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--phases", default="1,2,3,4,5", help="which phases to run")
    args = parser.parse_args()
    phases = {int(n) for n in args.phases.split(",")}
    with tempfile.TemporaryDirectory(prefix="mailstead-hostile-") as tmp:
        data_dir = Path(tmp)
        wanted = {"imap", "smtp"}
        overrides = {
            "listeners": {name: {"enabled": False} for name in bootstrap.build_config(
                data_dir).listeners} | {
                name: {"address": "127.0.0.1", "port": 0, "enabled": True, "tls": "none"}
                for name in wanted},
            "auth": {"allow_plaintext_on_loopback": True},
            "delivery": {"workers": 0},
            "trust": {"dns": "off"},  # loopback only: the system's resolvers are not asked
        }
        cfg = bootstrap.build_config(data_dir, overrides)
        await bootstrap.initialise(cfg, demo_domain=None)
        await populate(cfg, args.lines)
        print(f"setup: INBOX holds a {len(received_message(args.lines)) / 1e6:.1f} MB message "
              f"of {args.lines} Received: lines; Big holds 3 messages of 7 MB; "
              f"{os.cpu_count()} CPUs; budget "
              f"{getattr(cfg.limits, 'imap_command_seconds', 'none')} s")
        proc, ports = start_server(data_dir)
        try:
            if 1 in phases:
                await while_running("SEARCH with 100,000 LITERAL+ literals", ports, proc.pid,
                                    lambda: literal_plus(ports["imap"]))
            if 2 in phases:
                await while_running("SEARCH with 100,000 synchronising literals", ports,
                                    proc.pid, lambda: synchronising(ports["imap"]))
            if 3 in phases:
                await while_running(f"SEARCH of {args.keys} TEXT/HEADER/BODY keys on the big "
                                    "header", ports, proc.pid,
                                    lambda: many_keys(ports["imap"], args.keys))
            if 4 in phases:
                await while_running("SEARCH of 999 BODY keys on 3 x 7 MB", ports, proc.pid,
                                    lambda: thousand_keys(ports["imap"]))
            if 5 in phases:
                await sigterm(proc, ports["imap"])
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)


if __name__ == "__main__":
    asyncio.run(main())
