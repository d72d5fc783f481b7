"""IMAP load benchmark against a real ``mailstead serve`` process.

    .venv/bin/python bench/imap_load.py [--clients 20] [--seconds 10] [--idle 1000]
                                        [--big 100000] [--inbox 200] [--no-sort] [--cold 3]
                                        [--cold-only] [--store-url postgresql://...]

Phases, each printing its figures:
1. ``UID FETCH 1:* (FLAGS)`` on a mailbox of ``--big`` messages (and the SELECT before it).
2. ``--clients`` busy clients for ``--seconds``, each looping over a steady mix: UID FETCH 1:*
   (FLAGS), UID FETCH n (BODY.PEEK[]), UID STORE +/-FLAGS, UID SEARCH UNSEEN, NOOP, IDLE/DONE,
   and every 50 commands LOGOUT + reconnect + LOGIN (the credential cache at work). Prints
   commands per second and p50/p99 latency, overall and per command.
3. ``--sort`` (on by default with ``--big``): SORT (several criteria), ESORT and THREAD
   (REFERENCES, ORDEREDSUBJECT) on the big mailbox, whose messages carry varied envelopes
   (subjects with Re:/[list] prefixes, senders, dates, reply chains with some missing
   parents); also the longest wait of another client's NOOP while they run. First, with
   ``--cold N``, THREAD REFERENCES, THREAD ORDEREDSUBJECT and SORT (DATE) as the first
   command of N fresh server processes each (nothing kept in memory yet); then each command
   in a new session of one server (first run, repeats); then THREAD after new mail.
4. ``--idle`` connections logged in, INBOX selected, in IDLE: the server's resident memory
   before and after (per connection, and extrapolated to 10,000), then how long until every
   one of them hears about a message APPENDed by another client.

Targets on 2 cores: UID FETCH 1:* (FLAGS) on 100,000 messages < 0.5 s; SORT and THREAD on
them < 0.5 s each; >= 2,000 commands/s
with 20 busy clients; 10,000 idle connections < 300 MB server RSS (measure that with
``--idle 10000``; a smaller count prints only a guess).
The server runs in its own process (plaintext IMAP on 127.0.0.1, loopback login allowed) so
its memory can be read from /proc and the load generator does not share its interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mailstead import bootstrap
from mailstead.config import Config
from mailstead.store.factory import make_blob_store, make_metadata_store
from mailstead.store.interfaces import Delivery, Envelope, NewMessage, SystemFlag

USER = "bench@example.test"
PASSWORD = "bench-Passw0rd!"


# ---------------------------------------------------------------------------------------------
# A minimal IMAP client


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.n = 0

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        client = cls(reader, writer)
        await reader.readline()  # greeting
        return client

    async def command(self, text: str) -> bytes:
        """Sends a command, returns everything up to and including its tagged reply."""
        self.n += 1
        tag = f"b{self.n}".encode()
        self.writer.write(tag + b" " + text.encode() + b"\r\n")
        return await self.until(tag)

    async def until(self, tag: bytes) -> bytes:
        chunks = []
        prefix = tag + b" "
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            chunks.append(line)
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if m:
                chunks.append(await self.reader.readexactly(int(m.group(1))))
                continue
            if line.startswith(prefix):
                if not line[len(prefix):].startswith(b"OK"):
                    raise RuntimeError(f"{line!r}")
                return b"".join(chunks)

    async def command_bulk(self, text: str) -> bytes:
        """Like ``command`` for answers without literals, read in big chunks so the client
        is not what is being measured (UID FETCH 1:* (FLAGS) on 100,000 messages)."""
        self.n += 1
        tag = f"b{self.n}".encode()
        self.writer.write(tag + b" " + text.encode() + b"\r\n")
        marker = b"\r\n" + tag + b" OK"
        buffer = bytearray()
        while True:
            chunk = await self.reader.read(1 << 20)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buffer += chunk
            if buffer.endswith(b"\r\n") and marker in buffer[-200:]:
                return bytes(buffer)

    async def idle_start(self) -> bytes:
        self.n += 1
        tag = f"b{self.n}".encode()
        self.writer.write(tag + b" IDLE\r\n")
        line = await self.reader.readline()
        assert line.startswith(b"+"), line
        return tag

    async def idle_done(self, tag: bytes) -> None:
        self.writer.write(b"DONE\r\n")
        await self.until(tag)

    async def login(self) -> None:
        await self.command(f'LOGIN {USER} "{PASSWORD}"')

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------------------------------
# Setup: data directory, mail, the server process


def sample_message(n: int) -> bytes:
    body = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 60 + "\r\n") * 1
    return (
        f"From: sender{n % 17}@example.org\r\nTo: {USER}\r\nSubject: message {n}\r\n"
        f"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{n}@bench.example>\r\n\r\n"
        f"{body}"
    ).encode()


def big_envelope(n: int, now: datetime) -> Envelope:
    """Varied envelopes for SORT and THREAD: threads of up to 5 messages (1 in 10 has lost
    its first message: a dummy parent), reply subjects, 97 senders, shuffled sent dates."""
    thread, k = divmod(n, 5)
    topic = f"Topic {thread % 7919}"
    subject = topic if k == 0 else ("Re: " if k % 2 else "[list] Re: ") + topic
    lost = thread % 10 == 0  # this thread's first message is not in the mailbox

    def msg_id(j: int) -> str:
        if lost and j == 0:
            return f"<gone{thread}@big.example>"
        return f"<{thread * 5 + j}@big.example>"

    ids = [msg_id(j) for j in range(k)]
    return Envelope(
        subject=subject,
        from_=f"Sender {n % 97} <sender{n % 97}@example.org>",
        to=USER,
        date=now - timedelta(minutes=(n * 7919) % 100_003),
        message_id=f"<{n}@big.example>" if k or not lost else f"<other{n}@big.example>",
        in_reply_to=ids[-1] if ids else "",
        references=" ".join(ids),
    )


async def populate(cfg: Config, inbox: int, big: int) -> None:
    store = make_metadata_store(cfg)
    blobs = make_blob_store(cfg)
    await store.open()
    try:
        await store.add_domain("example.test")
        await bootstrap.add_user(store, USER, PASSWORD)
        account = await store.get_account(USER)
        assert account is not None
        box = await store.get_mailbox(account.id, "INBOX")
        big_box = await store.create_mailbox(account.id, "Big")
        assert box is not None
        now = datetime.now(UTC)
        for n in range(inbox):
            data = sample_message(n)
            blob_id = blobs.put(data)
            flags = SystemFlag.SEEN if n % 3 else 0
            msg = NewMessage(blob_id=blob_id, size=len(data), internal_date=now, flags=flags)
            await store.store_message([Delivery(box.id, msg)])
        # The big mailbox: a few distinct files, each referenced by many messages.
        templates = []
        for n in range(20):
            data = sample_message(1_000_000 + n)
            templates.append((blobs.put(data), len(data)))
        batch = 1000
        for start in range(0, big, batch):
            blob_id, size = templates[(start // batch) % len(templates)]
            deliveries = [
                Delivery(big_box.id, NewMessage(
                    blob_id=blob_id, size=size + (start + i) % 1000,
                    internal_date=now - timedelta(seconds=big - start - i),
                    flags=SystemFlag.SEEN if (start + i) % 4 else 0,
                    envelope=big_envelope(start + i, now),
                ))
                for i in range(min(batch, big - start))
            ]
            await store.store_message(deliveries)
    finally:
        await store.close()


def start_server(data_dir: Path) -> tuple[subprocess.Popen[str], int]:
    profile = os.environ.get("MAILSTEAD_BENCH_PROFILE")  # cProfile output file, for digging
    python = [sys.executable, "-m", "cProfile", "-o", profile] if profile else [sys.executable]
    proc = subprocess.Popen(
        [*python, "-m", "mailstead", "serve", "--data", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    port = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.match(r"listening imap \S+:(\d+)", line.strip())
        if m:
            port = int(m.group(1))
        if "ready" in line:
            break
    if not port:
        proc.kill()
        raise RuntimeError("the server did not start an IMAP listener")
    return proc, port


def _tree(pid: int) -> list[str]:
    """The server and its descendants (worker processes, message file helpers)."""
    from smtp_ingest import descendants

    return descendants(pid)


def _memory_kib(pid: int, field: str, file: str) -> int:
    total = 0
    for one in _tree(pid):
        try:
            lines = Path(f"/proc/{one}/{file}").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in lines if line.startswith(field))
    return total


def rss_mb(pid: int) -> float:
    """Resident memory of every process of the server, added up (pages the workers share
    since the fork count once per worker: see pss_mb)."""
    return _memory_kib(pid, "VmRSS:", "status") / 1024


def pss_mb(pid: int) -> float:
    """Proportional set size of the server's processes: shared pages split between them, so
    the sum is the memory the server really holds."""
    return _memory_kib(pid, "Pss:", "smaps_rollup") / 1024


def cpu_seconds(pid: int) -> float:
    ticks = 0
    for one in _tree(pid):
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# ---------------------------------------------------------------------------------------------
# Phases


async def big_fetch(port: int, pid: int) -> None:
    client = await Client.connect(port)
    await client.login()
    start = time.perf_counter()
    answer = await client.command("SELECT Big")
    select_time = time.perf_counter() - start
    exists = re.search(rb"\* (\d+) EXISTS", answer)
    times = []
    cpu = []
    size = 0
    for _ in range(5):
        start, cpu_start = time.perf_counter(), cpu_seconds(pid)
        answer = await client.command_bulk("UID FETCH 1:* (FLAGS)")
        times.append(time.perf_counter() - start)
        cpu.append(cpu_seconds(pid) - cpu_start)
        size = len(answer)
    client.close()
    count = int(exists.group(1)) if exists else 0
    print(f"big mailbox: {count} messages; SELECT {select_time * 1000:.0f} ms")
    print(f"  UID FETCH 1:* (FLAGS): best {min(times) * 1000:.0f} ms, "
          f"median {statistics.median(times) * 1000:.0f} ms ({size / 1e6:.1f} MB answer; "
          f"server CPU {statistics.median(cpu) * 1000:.0f} ms)")


SORT_COMMANDS = [
    "SORT (DATE) UTF-8 ALL", "SORT (ARRIVAL) UTF-8 ALL", "SORT (REVERSE SUBJECT) UTF-8 ALL",
    "SORT (FROM DATE) UTF-8 ALL", "SORT (DISPLAYFROM) UTF-8 ALL", "SORT (SIZE) UTF-8 UNSEEN",
    "UID SORT RETURN (MIN MAX COUNT) (DATE) UTF-8 ALL",
    "THREAD REFERENCES UTF-8 ALL", "THREAD ORDEREDSUBJECT UTF-8 ALL",
]
COLD_COMMANDS = ["THREAD REFERENCES UTF-8 ALL", "THREAD ORDEREDSUBJECT UTF-8 ALL",
                 "SORT (DATE) UTF-8 ALL"]


async def _timed(client: Client, command: str, pid: int) -> tuple[float, float, int]:
    """Wall time, server CPU and answer size of one command."""
    start, cpu_start = time.perf_counter(), cpu_seconds(pid)
    answer = await client.command_bulk(command)
    return time.perf_counter() - start, cpu_seconds(pid) - cpu_start, len(answer)


async def cold_sort(data_dir: Path, runs: int) -> None:
    """The first SORT / THREAD of a server process (nothing kept yet, imap_sort_cache.py):
    a fresh server per run, a session that selects the big mailbox and sends it."""
    print(f"  first command of a fresh server process (median of {runs} processes):")
    for command in COLD_COMMANDS:
        cpu = []
        for _ in range(runs):
            proc, port = start_server(data_dir)
            try:
                client = await Client.connect(port)
                await client.login()
                await client.command("SELECT Big")
                cpu.append((await _timed(client, command, proc.pid))[1])
                client.close()
            finally:
                proc.terminate()
                proc.wait(30)
        print(f"    {command}: server CPU median {statistics.median(cpu) * 1000:.0f} ms "
              f"(runs: {', '.join(f'{c * 1000:.0f}' for c in cpu)} ms)")


async def big_sort(port: int, pid: int) -> None:
    """Each command in a new session (SELECT, then the command three times): its first run
    there (the process may keep keys from the commands before), then the repeats (the same
    result again, imap_cmd_sort.Results). Then THREAD REFERENCES in a new session after
    another session APPENDed a message (the kept step 1 extended)."""
    probe = await Client.connect(port)
    await probe.login()
    for command in SORT_COMMANDS:
        client = await Client.connect(port)
        await client.login()
        await client.command("SELECT Big")
        times, cpu, waits = [], [], []
        size = 0
        for _ in range(3):
            stop = asyncio.Event()

            async def noop_probe(stop: asyncio.Event) -> float:
                worst = 0.0
                while not stop.is_set():
                    t0 = time.perf_counter()
                    await probe.command("NOOP")
                    worst = max(worst, time.perf_counter() - t0)
                    await asyncio.sleep(0.01)
                return worst

            prober = asyncio.create_task(noop_probe(stop))
            took, used, size = await _timed(client, command, pid)
            times.append(took)
            cpu.append(used)
            stop.set()
            waits.append(await prober)
        client.close()
        print(f"  {command}: first in a session {times[0] * 1000:.0f} ms (server CPU "
              f"{cpu[0] * 1000:.0f} ms), repeated: median {statistics.median(times[1:]) * 1000:.0f}"
              f" ms (server CPU {statistics.median(cpu[1:]) * 1000:.0f} ms; {size / 1e6:.2f} MB "
              f"answer; other client's NOOP waited at most {max(waits) * 1000:.0f} ms)")
    cpu = []
    for n in range(3):
        data = sample_message(2_000_000 + n)
        await probe.command(f"APPEND Big {{{len(data)}+}}\r\n" + data.decode())
        client = await Client.connect(port)
        await client.login()
        await client.command("SELECT Big")
        cpu.append((await _timed(client, "THREAD REFERENCES UTF-8 ALL", pid))[1])
        client.close()
    print(f"  THREAD REFERENCES UTF-8 ALL after new mail, in a new session: server CPU median "
          f"{statistics.median(cpu) * 1000:.0f} ms")
    probe.close()


async def busy(port: int, clients: int, seconds: float, inbox: int, pid: int) -> None:
    latencies: dict[str, list[float]] = defaultdict(list)
    deadline = time.perf_counter() + seconds

    async def timed(kind: str, coro: object) -> None:
        start = time.perf_counter()
        await coro  # type: ignore[misc]
        latencies[kind].append(time.perf_counter() - start)

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        while time.perf_counter() < deadline:
            client = await Client.connect(port)
            await timed("LOGIN", client.login())
            await timed("SELECT", client.command("SELECT INBOX"))
            for _ in range(50):
                if time.perf_counter() >= deadline:
                    break
                uid = rng.randint(1, inbox)
                choice = rng.random()
                if choice < 0.2:
                    await timed("FETCH FLAGS 1:*", client.command("UID FETCH 1:* (FLAGS)"))
                elif choice < 0.45:
                    await timed("FETCH BODY", client.command(f"UID FETCH {uid} (BODY.PEEK[])"))
                elif choice < 0.7:
                    sign = rng.choice("+-")
                    await timed("STORE", client.command(f"UID STORE {uid} {sign}FLAGS (\\Flagged)"))
                elif choice < 0.8:
                    await timed("SEARCH", client.command("UID SEARCH UNSEEN"))
                elif choice < 0.9:
                    await timed("NOOP", client.command("NOOP"))
                else:
                    start = time.perf_counter()
                    tag = await client.idle_start()
                    await client.idle_done(tag)
                    latencies["IDLE+DONE"].append(time.perf_counter() - start)
            await timed("LOGOUT", client.command("LOGOUT"))
            client.close()

    started, cpu_start = time.perf_counter(), cpu_seconds(pid)
    await asyncio.gather(*(worker(i) for i in range(clients)))
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu_start
    every = [v for values in latencies.values() for v in values]
    print(f"busy: {clients} clients for {elapsed:.1f} s: {len(every) / elapsed:,.0f} commands/s, "
          f"p50 {pct(every, 50) * 1000:.1f} ms, p99 {pct(every, 99) * 1000:.1f} ms")
    print(f"  server CPU {cpu:.1f} s: {len(every) / max(cpu, 1e-9):,.0f} commands per CPU-second; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for kind, values in sorted(latencies.items()):
        print(f"  {kind:<16} {len(values):>7} x  p50 {pct(values, 50) * 1000:6.1f} ms  "
              f"p99 {pct(values, 99) * 1000:6.1f} ms")


async def idle_connections(port: int, count: int, pid: int) -> None:
    before = rss_mb(pid)
    clients: list[tuple[Client, bytes]] = []

    async def open_one() -> None:
        client = await Client.connect(port)
        await client.login()
        await client.command("SELECT INBOX")
        clients.append((client, await client.idle_start()))

    for start in range(0, count, 200):
        await asyncio.gather(*(open_one() for _ in range(min(200, count - start))))
    await asyncio.sleep(1)
    after = rss_mb(pid)
    per = (after - before) / max(count, 1) * 1024
    print(f"idle: {count} connections in IDLE: server RSS {before:.0f} MB -> {after:.0f} MB "
          f"({per:.0f} KiB each; PSS {pss_mb(pid):.0f} MB, all processes)")
    if count < 10_000:
        # Memory freed by earlier phases is reused first, so growth over a warm heap
        # understates the cost of a connection: only --idle 10000 measures the target.
        print(f"  (10,000 not measured: --idle 10000 does; a linear guess from here says "
              f"{before + per * 10_000 / 1024:.0f} MB, an underestimate after the busy phase)")
    # Fan-out: one APPEND, every idler must hear EXISTS.
    writer = await Client.connect(port)
    await writer.login()
    start = time.perf_counter()
    message = sample_message(424242)
    writer.writer.write(b"w1 APPEND INBOX {%d+}\r\n" % len(message) + message + b"\r\n")
    await writer.until(b"w1")

    async def hears(client: Client) -> float:
        while b"EXISTS" not in await client.reader.readline():
            pass
        return time.perf_counter() - start

    delays = await asyncio.gather(*(hears(c) for c, _tag in clients))
    print(f"  new mail reached all {count} idlers in {max(delays) * 1000:.0f} ms "
          f"(p50 {pct(list(delays), 50) * 1000:.0f} ms)")
    for client, _tag in clients:
        client.close()
    writer.close()


def raise_fd_limit(needed: int) -> None:
    """Each idle connection costs a descriptor here and one in the server (which inherits
    the limit): raise the soft limit as far as the hard one allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < needed:
        print(f"warning: only {soft} file descriptors allowed; the idle phase may fail")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--inbox", type=int, default=200)
    parser.add_argument("--sort", action=argparse.BooleanOptionalAction, default=True,
                        help="SORT and THREAD on the big mailbox")
    parser.add_argument("--cold", type=int, default=3,
                        help="fresh server processes for the first-command SORT/THREAD "
                        "figures (0: none)")
    parser.add_argument("--cold-only", action="store_true",
                        help="only the first-command SORT/THREAD figures (--cold processes)")
    parser.add_argument("--store-url", default="",
                        help="postgresql://... to run on PostgreSQL (a schema of its own, "
                        "dropped at the end); default: SQLite in the data directory")
    parser.add_argument("--workers", default="",
                        help="server.workers to run in turn on the same data, e.g. 1,2 "
                        "(default: the config's, one per core)")
    args = parser.parse_args()
    raise_fd_limit(args.idle + args.clients + 200)
    with tempfile.TemporaryDirectory(prefix="mailstead-imap-bench-") as tmp:
        data_dir = Path(tmp)
        overrides = {
            "listeners": {name: {"enabled": False} for name in bootstrap.build_config(
                data_dir).listeners} | {"imap": {"address": "127.0.0.1", "port": 0,
                                                  "enabled": True, "tls": "none"}},
            "auth": {"allow_plaintext_on_loopback": True},
            "limits": {"max_connections": 20_000, "max_connections_per_ip": 20_000,
                       "imap_sessions_per_user_ip": 20_000},
            "trust": {"dns": "off"},  # loopback only: the system's resolvers are not asked
        }
        schema = f"imap_bench_{os.getpid()}"
        if args.store_url:
            overrides["store"] = {"url": args.store_url, "pg_schema": schema}
        cfg = bootstrap.build_config(data_dir, overrides)
        await bootstrap.initialise(cfg, demo_domain=None)
        start = time.perf_counter()
        await populate(cfg, args.inbox, args.big)
        print(f"setup: {args.inbox} + {args.big} messages stored in "
              f"{time.perf_counter() - start:.1f} s; {os.cpu_count()} CPUs")
        try:
            if args.big and args.sort and args.cold:
                await cold_sort(data_dir, args.cold)
            rounds = args.workers.split(",") if args.workers else [""]
            for workers in [] if args.cold_only else rounds:
                if workers:
                    cfg.server.workers = int(workers)
                    bootstrap.write_config(cfg)
                    print(f"\n== server.workers = {workers}")
                await run_phases(args, data_dir)
        finally:
            if args.store_url:
                import psycopg

                with psycopg.connect(args.store_url, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


async def run_phases(args: argparse.Namespace, data_dir: Path) -> None:
    proc, port = start_server(data_dir)
    try:
        print(f"server pid {proc.pid}: RSS {rss_mb(proc.pid):.0f} MB at start "
              f"({len(_tree(proc.pid))} processes)")
        if args.big:
            await big_fetch(port, proc.pid)
        if args.big and args.sort:
            await big_sort(port, proc.pid)
        if args.clients:
            await busy(port, args.clients, args.seconds, args.inbox, proc.pid)
        if args.idle:
            await idle_connections(port, args.idle, proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    asyncio.run(main())
