"""SMTP ingest: mailstead against a minimal aiosmtpd server that fsyncs each message to a file.

Both servers run as subprocesses and get the same load: ``--sessions`` concurrent SMTP sessions,
each sending its messages one after another over one connection (with PIPELINING when the server
offers it, as real MTAs do), ``--messages`` messages of ``--size`` bytes per server in all. The
load runs in ``--rounds`` rounds per server, alternating between the two (A B B A A B ...), since
this machine's speed drifts during a run by a third and more. Printed: messages per second, p50
and p99 latency (MAIL sent -> 250 received), CPU per message and resident memory of the server's
processes (mailstead's include its message file helper) before, half-way, after, and with
``--idle`` extra sessions open and idle; each round's rate, the ratio, and what a file fsync
costs on this disk (it sets the baseline's pace).

    .venv/bin/python bench/smtp_ingest.py [--messages 5000] [--sessions 20] [--size 4096]
    .venv/bin/python bench/smtp_ingest.py --profile /tmp/ms.prof   # cProfile the server

Target (issue 3): mailstead >= 2x the baseline's messages/s, p99 < 100 ms, flat memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

DOMAIN = "bench.test"
PASSWORD = "bench-password-1"
ROOT = Path(__file__).resolve().parent.parent


# -- the servers ----------------------------------------------------------------------------


def descendants(root: int) -> list[str]:
    """``root`` and every process below it."""
    parents: dict[str, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[stat.parent.name] = stat.read_text().rsplit(")", 1)[1].split()[1]
        except OSError:
            continue  # a process that just ended
    pids = [str(root)]
    for pid in pids:
        pids += [child for child, parent in parents.items() if parent == pid]
    return pids


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[str]
    port: int

    def _pids(self) -> list[str]:
        """The server's process and all its descendants (worker processes, the helpers that
        write message files), so CPU and memory figures include every process doing the
        server's work."""
        return descendants(self.proc.pid)

    @property
    def rss_mib(self) -> float:
        kib = 0
        for pid in self._pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kib += int(line.split()[1])
        return kib / 1024

    @property
    def cpu_seconds(self) -> float:
        """User + system CPU time of the server's processes (all their threads)."""
        return sum(self.cpu_by_role().values())

    def roles(self) -> dict[str, str]:
        """pid -> what the process is: ``supervisor`` (the one started), ``files`` (the
        message-file helper, services/message_files.py) or ``workers`` (the others)."""
        found: dict[str, str] = {}
        for pid in self._pids():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue  # a process that just ended
            found[pid] = ("supervisor" if pid == str(self.proc.pid)
                          else "files" if b"message_file" in command else "workers")
        return found

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds (user + system, all threads) of the server's processes by role."""
        ticks: dict[str, int] = {"workers": 0, "files": 0, "supervisor": 0}
        for pid, role in self.roles().items():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks[role] += int(fields[11]) + int(fields[12])
        return {role: n / os.sysconf("SC_CLK_TCK") for role, n in ticks.items()}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _wait_for_port(proc: subprocess.Popen[str], pattern: str) -> int:
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.search(pattern, line)
        if m:
            return int(m.group(1))
    raise RuntimeError(f"server exited with {proc.wait()} before listening")


def prepare_mailstead(data_dir: Path, users: int, more: dict[str, Any] | None = None) -> None:
    """A data directory with ``users`` users; ``more``: listeners and options to add (another
    bench's)."""
    sys.path.insert(0, str(ROOT / "src"))
    from mailstead import bootstrap
    from mailstead.config import Config, deep_merge
    from mailstead.store.factory import make_metadata_store

    # Only the MX listener: the others are not measured here.
    listeners: dict[str, Any] = {name: {"enabled": False} for name in Config().listeners}
    listeners["smtp"] = {"address": "127.0.0.1", "port": 0, "enabled": True}
    cfg = bootstrap.build_config(data_dir, deep_merge({
        "hostname": "mail.bench.test",
        "listeners": listeners,
        "limits": {"max_connections_per_ip": 100_000, "max_connections": 100_000},
        # Loopback only: inbound checks run (they give temperror) but ask no outside resolver.
        "trust": {"dns": "off"},
    }, more or {}))

    async def setup() -> None:
        await bootstrap.initialise(cfg, demo_domain=None)
        store = make_metadata_store(cfg)
        await store.open()
        try:
            await bootstrap.add_domain(store, DOMAIN)
            for i in range(users):
                await bootstrap.add_user(store, f"user{i}@{DOMAIN}", PASSWORD)
        finally:
            await store.close()

    asyncio.run(setup())


def start_mailstead(data_dir: Path, profile: str | None) -> Server:
    cmd = [sys.executable]
    if profile:
        cmd += ["-m", "cProfile", "-o", profile]
    cmd += ["-m", "mailstead", "serve", "--data", str(data_dir), "--listen", "smtp=127.0.0.1:0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return Server("mailstead", proc, _wait_for_port(proc, r"^listening smtp \S+:(\d+)"))


def start_baseline(spool: Path) -> Server:
    cmd = [sys.executable, __file__, "--baseline-server", str(spool)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return Server("aiosmtpd", proc, _wait_for_port(proc, r"^listening (\d+)"))


def run_baseline_server(spool: Path) -> None:
    """The Python baseline: aiosmtpd, writing each message to its own file with an fsync
    before answering 250 (the simplest durable server one would write)."""
    from aiosmtpd.smtp import SMTP

    spool.mkdir(parents=True, exist_ok=True)

    class FsyncHandler:
        def __init__(self) -> None:
            self.count = 0

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            self.count += 1
            path = spool / f"{self.count}.eml"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, envelope.original_content or b"")
                os.fsync(fd)
            finally:
                os.close(fd)
            return "250 OK"

    async def main() -> None:
        handler = FsyncHandler()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SMTP(handler, hostname="baseline"),
                                          "127.0.0.1", 0, backlog=4096)
        print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# -- the load -------------------------------------------------------------------------------


class Session:
    """A minimal SMTP client; cheap, so the load generator is not what is measured."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pipelining = False

    @classmethod
    async def open(cls, port: int) -> Session:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        session = cls(reader, writer)
        await session.reply(220)
        session.writer.write(b"EHLO bench.client\r\n")
        session.pipelining = "PIPELINING" in await session.reply(250)
        return session

    async def reply(self, expected: int) -> str:
        text = []
        while True:
            line = (await self.reader.readline()).decode()
            if not line:
                raise ConnectionError("server closed the connection")
            text.append(line)
            if line[3:4] != "-":
                break
        if int(line[:3]) != expected:
            raise RuntimeError(f"expected {expected}, got {''.join(text)!r}")
        return "".join(text)

    async def send(self, rcpt: str, message: bytes) -> None:
        envelope = [b"MAIL FROM:<sender@remote.test>\r\n",
                    f"RCPT TO:<{rcpt}>\r\n".encode(), b"DATA\r\n"]
        if self.pipelining:
            self.writer.write(b"".join(envelope))
            for code in (250, 250, 354):
                await self.reply(code)
        else:
            for line, code in zip(envelope, (250, 250, 354), strict=True):
                self.writer.write(line)
                await self.reply(code)
        self.writer.write(message)
        await self.reply(250)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(b"QUIT\r\n")
            await self.reply(221)
        self.writer.close()


def make_message(size: int, number: int) -> bytes:
    """A realistic text message of about ``size`` bytes, dot-stuffed and terminated."""
    head = (f"From: Sender <sender@remote.test>\r\nTo: <someone@{DOMAIN}>\r\n"
            f"Subject: benchmark message {number}\r\nMessage-ID: <{number}.{secrets.token_hex(6)}"
            f"@remote.test>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n")
    line = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return (head + body).encode() + b".\r\n"


@dataclass
class RunResult:
    messages: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000


async def run_load(port: int, messages: int, sessions: int, size: int, users: int) -> RunResult:
    result = RunResult()
    remaining = [messages]
    bodies = [make_message(size, n) for n in range(64)]

    async def worker(index: int) -> None:
        session = await Session.open(port)
        rcpt = f"user{index % users}@{DOMAIN}"
        try:
            while remaining[0] > 0:
                remaining[0] -= 1
                number = remaining[0]
                start = time.perf_counter()
                await session.send(rcpt, bodies[number % len(bodies)])
                result.latencies.append(time.perf_counter() - start)
                result.messages += 1
        finally:
            await session.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(sessions)))
    result.seconds = time.perf_counter() - start
    return result


async def open_idle(port: int, count: int) -> list[Session]:
    opened: list[Session] = []
    for batch in range(0, count, 100):
        opened += await asyncio.gather(*(Session.open(port) for _ in range(batch, min(count,
                                                                                     batch + 100))))
    return opened


@dataclass
class Report:
    name: str
    server: Server
    result: RunResult = field(default_factory=RunResult)
    rounds: list[float] = field(default_factory=list)  # msgs/s of each round
    rss: dict[str, float] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    cpu_roles: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds

    @property
    def cpu_ms_per_message(self) -> float:
        return self.cpu_seconds * 1000 / self.result.messages if self.result.messages else 0.0

    def role_ms_per_message(self, role: str) -> float:
        return (self.cpu_roles.get(role, 0.0) * 1000 / self.result.messages
                if self.result.messages else 0.0)

    def run_round(self, messages: int, args: argparse.Namespace) -> None:
        before = self.server.cpu_by_role()
        spies = start_spies(self, args)
        result = asyncio.run(run_load(self.server.port, messages, args.sessions, args.size,
                                      args.users))
        after = self.server.cpu_by_role()
        stop_spies(spies)
        for role, seconds in after.items():
            self.cpu_roles[role] = self.cpu_roles.get(role, 0.0) + seconds - before[role]
        self.cpu_seconds += sum(after.values()) - sum(before.values())
        self.result.messages += result.messages
        self.result.seconds += result.seconds
        self.result.latencies += result.latencies
        self.rounds.append(result.rate)


def start_spies(report: Report, args: argparse.Namespace) -> list[subprocess.Popen[bytes]]:
    """With ``--py-spy DIR``: py-spy recording each process of the server for one round,
    one file of collapsed stacks each (``<server>-<role>-<pid>-r<round>.txt``, for
    bench/profile_top.py). Sampling does not pause the processes (--nonblocking) but takes
    CPU of its own: the rates of a round that is recorded are not comparable."""
    folder = getattr(args, "py_spy", None)
    if not folder:
        return []
    spy = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--py-spy: py-spy not found (PATH or PY_SPY)")
    Path(folder).mkdir(parents=True, exist_ok=True)
    spies = []
    for pid, role in report.server.roles().items():
        if role == "supervisor":
            continue  # it waits on its workers
        out = Path(folder) / f"{report.name}-{role}-{pid}-r{len(report.rounds) + 1}.txt"
        spies.append(subprocess.Popen(
            [spy, "record", "--pid", pid, "--nonblocking", "--format", "raw", "--rate",
             "200", "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(0.5)  # attached before the load starts
    return spies


def stop_spies(spies: list[subprocess.Popen[bytes]]) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    for spy in spies:
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


def measure(reports: list[Report], args: argparse.Namespace) -> None:
    """Warms every server up, then runs ``--rounds`` rounds for each, alternating between the
    servers in the order A B B A A B ..., so a machine that speeds up or slows down during
    the run (this one does, by a third and more) weighs on both alike."""
    for report in reports:
        asyncio.run(run_load(report.server.port, args.warmup, args.sessions, args.size,
                             args.users))
        report.rss["start"] = report.server.rss_mib
    per_round = [args.messages // args.rounds + (1 if n < args.messages % args.rounds else 0)
                 for n in range(args.rounds)]
    for n, messages in enumerate(per_round):
        for report in reports if n % 2 == 0 else reports[::-1]:
            report.run_round(messages, args)
            if n == (args.rounds - 1) // 2:
                report.rss["half"] = report.server.rss_mib
    for report in reports:
        report.rss["end"] = report.server.rss_mib

    async def idle(report: Report) -> None:
        sessions = await open_idle(report.server.port, args.idle)
        await asyncio.sleep(1)
        report.rss["idle"] = report.server.rss_mib
        await asyncio.gather(*(s.close() for s in sessions))
        await asyncio.sleep(1)
        report.rss["after_idle"] = report.server.rss_mib

    if args.idle:
        for report in reports:
            asyncio.run(idle(report))


def fsync_ms(directory: Path, size: int, samples: int = 200) -> float:
    """Median time to create a file of ``size`` bytes and fsync it, as the baseline does for
    each message: what the disk charges per message decides how fast the baseline can go, and
    so what the ratio means on the day (the issue's 400-500 msgs/s came from a slow disk)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = secrets.token_bytes(size)
    times = []
    for n in range(samples):
        start = time.perf_counter()
        fd = os.open(directory / f"{n}.probe", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        times.append(time.perf_counter() - start)
    shutil.rmtree(directory, ignore_errors=True)
    return statistics.median(times) * 1000


def print_report(reports: list[Report], args: argparse.Namespace) -> None:
    print(f"\n{args.messages} messages of {args.size} bytes per server, {args.sessions} concurrent"
          f" sessions ({args.users} recipients), in {args.rounds} alternating rounds\n")
    print(f"{'server':<10} {'msgs/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/msg':>10}   RSS MiB: "
          f"start -> half -> end, with {args.idle} idle sessions -> after they close")
    for r in reports:
        m = r.rss
        print(f"{r.name:<10} {r.result.rate:8.0f} {r.result.percentile(0.5):8.1f} "
              f"{r.result.percentile(0.99):8.1f} {r.cpu_ms_per_message:10.2f}   "
              f"{m['start']:.1f} -> {m['half']:.1f} -> "
              f"{m['end']:.1f}, {m.get('idle', float('nan')):.1f} -> "
              f"{m.get('after_idle', float('nan')):.1f}")
    print()
    for r in reports:
        print(f"{r.name:<10} msgs/s of each round: {', '.join(f'{x:.0f}' for x in r.rounds)}")
    peers = [r for r in reports if r.name == "aiosmtpd"] + reports[:1]
    for peer in peers:
        for r in reports:
            if r is peer or r.name == "aiosmtpd" or not peer.result.rate:
                continue
            ratio = r.result.rate / peer.result.rate
            pairs = [a / b for a, b in zip(r.rounds, peer.rounds, strict=True) if b]
            print(f"\nratio {r.name} / {peer.name}: {ratio:.2f}x messages per second "
                  f"(median of the rounds' ratios: {statistics.median(pairs):.2f}x)")
    mean = statistics.mean(reports[0].result.latencies) * 1000 if reports[0].result.latencies \
        else float("nan")
    print(f"{reports[0].name} mean latency {mean:.1f} ms")


# -- shared by the benches that compare two mailstead servers (sieve_ingest, checks_ingest) --


def pair_arguments(doc: str | None,
                   extra: Callable[[argparse.ArgumentParser], None] | None = None,
                   slices: bool = False) -> argparse.Namespace:
    """The load options of a two-server comparison; ``extra`` adds a bench's own;
    ``slices``: ``--slices`` (run_slices) rather than ``--rounds`` (alternate_rounds)."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if extra is not None:
        extra(parser)
    parser.add_argument("--messages", type=int, default=4800 if slices else 3000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=400 if slices else 200)
    if slices:
        parser.add_argument("--slices", type=int, default=32,
                            help="slices per server, the servers taking turns, over "
                            "sessions that stay open")
    else:
        parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--idle", type=int, default=0)
    parser.add_argument("--profile", help="run the first server under cProfile, writing this "
                                          "file (the supervisor only: the workers are forked "
                                          "from it; --py-spy sees them)")
    parser.add_argument("--py-spy", metavar="DIR",
                        help="record every worker and message-file helper of both servers "
                        "with py-spy (PATH or PY_SPY), one file per process and round")
    return parser.parse_args()


def alternate_rounds(reports: list[Report], args: argparse.Namespace) -> None:
    """Warms each server up, then runs the rounds, alternating which goes first."""
    for report in reports:
        asyncio.run(run_load(report.server.port, args.warmup, args.sessions, args.size,
                             args.users))
    per_round = [args.messages // args.rounds] * args.rounds
    for n, messages in enumerate(per_round):
        for report in reports if n % 2 == 0 else reports[::-1]:
            report.run_round(messages, args)


def print_pair(reports: list[Report], label: str) -> None:
    """Each server's figures, then the first's rate and CPU per message over the second's."""
    for r in reports:
        print(f"{r.name:<6} {r.result.rate:8.0f} msgs/s  p50 {r.result.percentile(0.5):6.1f}"
              f" ms  p99 {r.result.percentile(0.99):6.1f} ms  CPU "
              f"{r.cpu_ms_per_message:5.2f} ms/msg  rounds: "
              f"{', '.join(f'{x:.0f}' for x in r.rounds)}")
    print("CPU ms/msg by process: " + ";  ".join(
        f"{r.name} workers {r.role_ms_per_message('workers'):.3f}, message files "
        f"{r.role_ms_per_message('files'):.3f}" for r in reports))
    first, second = reports
    pairs = [a / b for a, b in zip(first.rounds, second.rounds, strict=True) if b]
    print(f"\n{label}: {first.result.rate / second.result.rate:.3f}x messages per second"
          f" (median of the rounds' ratios {statistics.median(pairs):.3f}x); CPU per "
          f"message {first.cpu_ms_per_message / second.cpu_ms_per_message:.3f}x")


# -- many short slices over sessions that stay open (sieve_ingest) ----------------------------


@dataclass
class Slice:
    messages: int
    seconds: float
    cpu: dict[str, float]  # role (Server.roles) -> CPU seconds during the slice

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def cpu_ms(self, roles: tuple[str, ...] = ("workers", "files")) -> float:
        """CPU milliseconds per message of these roles."""
        return sum(self.cpu.get(r, 0.0) for r in roles) * 1000 / max(self.messages, 1)


@dataclass
class SliceSide:
    """One server of a sliced comparison, with its sessions and each slice's figures."""

    name: str
    server: Server
    sessions: list[Session] = field(default_factory=list)
    slices: list[Slice] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    @property
    def rounds(self) -> list[float]:  # (what start_spies counts to name its files)
        return []

    async def send(self, messages: int, args: argparse.Namespace,
                   bodies: list[bytes]) -> Slice:
        """``messages`` messages over the open sessions, the CPU of the server's processes
        read from /proc before and after."""
        remaining = [messages]

        async def worker(index: int, session: Session) -> None:
            rcpt = f"user{index % args.users}@{DOMAIN}"
            while remaining[0] > 0:
                remaining[0] -= 1
                body = bodies[remaining[0] % len(bodies)]
                start = time.perf_counter()
                await session.send(rcpt, body)
                self.latencies.append(time.perf_counter() - start)

        before = self.server.cpu_by_role()
        start = time.perf_counter()
        await asyncio.gather(*(worker(i, s) for i, s in enumerate(self.sessions)))
        seconds = time.perf_counter() - start
        after = self.server.cpu_by_role()
        return Slice(messages, seconds, {r: after[r] - before[r] for r in after})


async def run_slices(sides: list[SliceSide], args: argparse.Namespace) -> None:
    """Opens ``--sessions`` sessions to each server (kept open: no slice pays for
    connecting), warms each up, then sends ``--messages`` per server in ``--slices`` slices,
    the servers taking turns in their order, then in reverse (A B C D D C B A A B ...): a
    server's slice has the others' next to it in time, so the machine's drift (other work on
    it, clock speed) weighs on all alike, and the paired slices' ratios show how much the
    figures move."""
    bodies = [make_message(args.size, n) for n in range(64)]
    for side in sides:
        side.sessions = [await Session.open(side.server.port) for _ in range(args.sessions)]
        await side.send(args.warmup, args, bodies)
        side.latencies.clear()
    spies = [spy for side in sides for spy in start_spies(cast(Report, side), args)]
    per_slice = args.messages // args.slices
    try:
        for n in range(args.slices):
            for side in sides if n % 2 == 0 else sides[::-1]:
                side.slices.append(await side.send(per_slice, args, bodies))
    finally:
        stop_spies(spies)
        for side in sides:
            await asyncio.gather(*(s.close() for s in side.sessions))


class SliceGroup:
    """The slices of one or more servers of the same kind, added up."""

    def __init__(self, name: str, sides: list[SliceSide]) -> None:
        self.name = name
        self.sides = sides
        self.slices = [s for side in sides for s in side.slices]
        self.latencies = RunResult(0, 0.0, [t for side in sides for t in side.latencies])

    @property
    def messages(self) -> int:
        return sum(s.messages for s in self.slices)

    @property
    def rate(self) -> float:
        return self.messages / sum(s.seconds for s in self.slices)

    def cpu_ms(self, roles: tuple[str, ...] = ("workers", "files")) -> float:
        return sum(sum(s.cpu.get(r, 0.0) for r in roles) for s in self.slices) * 1000 \
            / self.messages


def _quartiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return f"{statistics.median(values):.3f} (quartiles {q[0]:.3f}-{q[2]:.3f})"


def print_slices(first: SliceGroup, second: SliceGroup,
                 pairs: list[tuple[SliceSide, SliceSide]], label: str) -> None:
    """Each group's rate, latency and CPU per message by role; then the first's over the
    second's: the rate (all messages over all time, and the median of the paired slices'
    ratios with its quartiles) and the CPU per message (the servers' own work, the less
    noisy figure on a shared machine). ``pairs``: the servers whose slices are compared one
    to one (slice n of each ran next to each other)."""
    for group in (first, second):
        timed = group.latencies
        print(f"{group.name:<7} {group.rate:7.0f} msgs/s (median slice "
              f"{statistics.median(s.rate for s in group.slices):5.0f})  p50 "
              f"{timed.percentile(0.5):5.1f} ms  p99 {timed.percentile(0.99):5.1f} ms  "
              f"CPU ms/msg: workers {group.cpu_ms(('workers',)):.3f}, message files "
              f"{group.cpu_ms(('files',)):.3f}, both {group.cpu_ms():.3f}")
    matched = [(a, b) for x, y in pairs for a, b in zip(x.slices, y.slices, strict=True)]
    print(f"\n{label}, {len(matched)} paired slices of {matched[0][0].messages} messages:")
    print(f"  rate            {first.rate / second.rate:.3f}x; median of the pairs "
          + _quartiles([a.rate / b.rate for a, b in matched]))
    for roles, what in ((("workers", "files"), "CPU/msg both"), (("workers",), "  workers"),
                        (("files",), "  msg files")):
        ratios = [a.cpu_ms(roles) / b.cpu_ms(roles) for a, b in matched if b.cpu_ms(roles)]
        print(f"  {what:<15} {first.cpu_ms(roles) / second.cpu_ms(roles):.3f}x; median of "
              f"the pairs " + _quartiles(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--users", type=int, default=20, help="distinct recipients (mailboxes)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=6, help="rounds per server, alternating")
    parser.add_argument("--idle", type=int, default=1000, help="idle sessions to open at the end")
    parser.add_argument("--only", choices=["mailstead", "baseline"])
    parser.add_argument("--profile", help="run mailstead under cProfile, writing this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    parser.add_argument("--no-spam", action="store_true",
                        help="turn mailstead's spam scoring off (spam.enabled = false)")
    parser.add_argument("--workers", default="",
                        help="mailstead's server.workers, e.g. 1,2 to compare one process with "
                        "two workers in the same run (default: the config's, one per core)")
    parser.add_argument("--baseline-server", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        run_baseline_server(Path(args.baseline_server))
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.idle * 2 + 1024)), hard))
    workdir = Path(tempfile.mkdtemp(prefix="smtp-bench-"))
    reports: list[Report] = []
    try:
        if args.only != "baseline":
            for workers in args.workers.split(",") if args.workers else [""]:
                name = f"ms-w{workers}" if workers else "mailstead"
                more: dict[str, Any] = {"spam": {"enabled": False}} if args.no_spam else {}
                if workers:
                    more["server"] = {"workers": int(workers)}
                prepare_mailstead(workdir / name, args.users, more)
                reports.append(Report(name, start_mailstead(workdir / name, args.profile)))
        if args.only != "mailstead":
            reports.append(Report("aiosmtpd", start_baseline(workdir / "baseline")))
        disk = fsync_ms(workdir / "probe", args.size)
        measure(reports, args)
        print_report(reports, args)
        print(f"disk: creating a {args.size}-byte file and fsyncing it takes {disk:.2f} ms "
              f"(median), so one fsync at a time could not pass {1000 / disk:.0f} msgs/s")
    finally:
        for report in reports:
            report.server.stop()
        if args.keep:
            print(f"data kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
