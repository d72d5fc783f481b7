"""SMTP ingest side by side: mailstead against a private Postfix, both driven by smtp-source.

Needs Debian's ``postfix`` package (``/usr/sbin/postfix``, ``/usr/sbin/smtp-source``) and
``unbound`` (the test DNS world of tests/dnsworld.py); installs nothing. Run as root (Postfix's
master starts as root, then runs its daemons as the ``postfix`` user).

- Postfix: a private instance in a temporary folder: its own ``config_directory`` (main.cf and
  master.cf written here), ``queue_directory`` and ``data_directory``, smtpd on a free
  127.0.0.1 port, ``virtual`` delivery into one Maildir, no content filter, no DNS; started with
  ``postfix -c DIR start`` and stopped with ``postfix -c DIR stop``. The machine's /etc/postfix
  is only read (``postfix-files``), never written, and its system instance never started.
- mailstead: ``serve`` with its defaults (inbound checks - SPF, DKIM, DMARC, ARC - and spam
  scoring on), its resolver the loopback DNS world, in which the sender's domain publishes SPF
  and DMARC records, so every message costs the lookups it costs in real life.

The four rows: 4 KiB and 100 KiB payloads, over reused connections (``smtp-source -d``) and
with a new connection per message; ``--sessions`` parallel sessions, ``--messages`` messages per
server, row and round, servers alternating (A B B A ...). Printed per row: accepted messages per
second (smtp-source's wall time), seconds until all are in the mailbox (Maildir files for
Postfix; mailstead's 250 already means "in the mailbox", checked by counting its message files),
server CPU-seconds per 1,000 messages (every process of each server's tree, including children
that ended: Postfix's master, smtpd, cleanup, qmgr, trivial-rewrite, virtual...; mailstead's
serve and its message-file helper), the cores it kept busy meanwhile, RSS after the row
(summed over the tree, so shared pages count once per process), p50/p99 latency from a
second, small pass with a generator of ours (smtp-source prints no latency), and the ratio
mailstead / Postfix per round and as a median. On a loaded machine compare CPU per message:
msgs/s then follows the share of the CPU each server gets (20 smtpd processes get more than
one serve process), shown as "cores".

    .venv/bin/python bench/smtp_vs_postfix.py [--messages 2000] [--rounds 3] [--sessions 20]
    .venv/bin/python bench/smtp_vs_postfix.py --quick
    .venv/bin/python bench/smtp_vs_postfix.py --profile /tmp/ms.prof --rows 4k-new --only mailstead

Old code against new on a shared machine (msgs/s there follows the CPU share each server
gets; the CPU per message of two trees measured in alternating rounds is what tells them
apart): ``git archive OLD src | tar -x -C /tmp/old`` then ``--ab old=/tmp/old/src`` runs that
tree's mailstead beside this one for each ``--workers`` count and prints their ratios per
round. ``--py-spy DIR`` (py-spy from ``PY_SPY`` or PATH; ``PY_SPY_GIL=1`` for the Python work
only) and ``--perf DIR`` record every mailstead round; ``bench/profile_top.py DIR/*.txt``.

Targets (issue 24): 4 KiB new connection >= 1.5x Postfix, 100 KiB new connection >= 1.2x, both
reused rows >= 2x, mailstead CPU per connection <= 0.3 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import dns.zone  # noqa: E402
from smtp_ingest import DOMAIN, prepare_mailstead  # noqa: E402

from tests import dnsworld  # noqa: E402

SENDER_DOMAIN = "remote.test"
SENDER = f"sender@{SENDER_DOMAIN}"
RCPT = f"user0@{DOMAIN}"
HELO = "client.remote.test"
POSTFIX = "/usr/sbin/postfix"
SMTP_SOURCE = "/usr/sbin/smtp-source"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The sender's domain in the DNS world: SPF passes for loopback, DMARC asks for nothing.
SENDER_TTL = 300
SENDER_ZONE = f"""
$TTL {SENDER_TTL}
remote.test.         SOA ns.test. hostmaster.test. 1 3600 600 86400 {SENDER_TTL}
remote.test.         NS  ns.test.
remote.test.         TXT "v=spf1 ip4:127.0.0.0/8 -all"
client.remote.test.  A   127.0.0.1
client.remote.test.  TXT "v=spf1 a -all"
_dmarc.remote.test.  TXT "v=DMARC1; p=none"
"""


@dataclass(frozen=True)
class Row:
    name: str
    size: int
    reuse: bool


ROWS = [Row("4k-reused", 4096, True), Row("4k-new", 4096, False),
        Row("100k-reused", 102400, True), Row("100k-new", 102400, False)]


# -- process trees --------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None  # ended meanwhile


def tree(root: int) -> list[int]:
    """``root`` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def cpu_seconds(root: int) -> float:
    """User + system CPU of the tree, with the children each process has reaped (Postfix's
    master reaps smtpd processes that ended, so their time stays counted)."""
    ticks = 0
    for pid in tree(root):
        fields = _stat(pid)
        if fields is not None:
            ticks += sum(int(x) for x in fields[11:15])
    return ticks / CLK_TCK


def role_of(pid: int, root: int) -> str:
    """mailstead's process roles: the message-file helper (``-m ...message_file_helper``;
    ``message_files`` in older trees), the supervisor (the root when it forked workers) and the
    workers (the root when it did not)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "ended"
    if b"message_file" in cmdline:  # message_files (older trees) or message_file_helper
        return "helper"
    return "supervisor" if pid == root and len(tree(root)) > 2 else "worker"


def cpu_by_role(root: int) -> dict[str, float]:
    """CPU-seconds of each role of mailstead's tree (its own time, no reaped children)."""
    roles: dict[str, float] = {}
    for pid in tree(root):
        fields = _stat(pid)
        if fields is not None:
            role = role_of(pid, root)
            roles[role] = roles.get(role, 0.0) + sum(int(x) for x in fields[11:13]) / CLK_TCK
    return roles


def rss_mib(root: int) -> float:
    kib = 0
    for pid in tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kib += int(line.split()[1])
    return kib / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def count_files(directory: Path, suffix: str = "") -> int:
    total = 0
    for path, _dirs, files in os.walk(directory):
        total += sum(1 for f in files if f.endswith(suffix)) if suffix else len(files)
        del path
    return total


# -- the servers ----------------------------------------------------------------------------


class Server:
    name = ""
    port = 0

    @property
    def root_pid(self) -> int:
        raise NotImplementedError

    def delivered(self) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


MAIN_CF = """\
compatibility_level = 3.6
config_directory = {dir}/etc
queue_directory = {dir}/queue
data_directory = {dir}/data
meta_directory = /etc/postfix
daemon_directory = /usr/lib/postfix/sbin
command_directory = /usr/sbin
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.{domain}
mydomain = {domain}
myorigin = $myhostname
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtp_dns_support_level = disabled
maillog_file_prefixes = {dir}
maillog_file = {dir}/postfix.log
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {dir}/mail
virtual_mailbox_maps = static:box/
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
alias_maps =
alias_database =
local_recipient_maps =
smtputf8_enable = no
biff = no
"""

# Every service smtpd, cleanup, qmgr and virtual delivery talk to; none chrooted.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n - 0 cleanup
qmgr       unix  n - n 300 1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n - - trivial-rewrite
bounce     unix  - - n - 0 bounce
defer      unix  - - n - 0 bounce
trace      unix  - - n - 0 bounce
verify     unix  - - n - 1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n - - proxymap
proxywrite unix  - - n - 1 proxymap
smtp       unix  - - n - - smtp
relay      unix  - - n - - smtp
showq      unix  n - n - - showq
error      unix  - - n - - error
retry      unix  - - n - - error
discard    unix  - - n - - discard
local      unix  - n n - - local
virtual    unix  - n n - - virtual
lmtp       unix  - - n - - lmtp
anvil      unix  - - n - 1 anvil
scache     unix  - - n - 1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


class Postfix(Server):
    name = "postfix"

    def __init__(self, workdir: Path) -> None:
        import pwd

        self.dir = workdir / "postfix"
        etc = self.dir / "etc"
        etc.mkdir(parents=True)
        (self.dir / "queue").mkdir()  # root's; postfix makes its subfolders at start
        # The daemons run as "postfix": they must reach their folders through ours.
        for parent in (workdir, self.dir):
            parent.chmod(0o755)
        user = pwd.getpwnam("postfix")
        for name in ("data", "mail"):
            (self.dir / name).mkdir()
            os.chown(self.dir / name, user.pw_uid, user.pw_gid)
        self.port = free_port()
        (etc / "main.cf").write_text(MAIN_CF.format(dir=self.dir, domain=DOMAIN,
                                                    uid=user.pw_uid, gid=user.pw_gid))
        (etc / "master.cf").write_text(MASTER_CF.format(port=self.port))
        self._postfix("start")
        pid_file = self.dir / "queue" / "pid" / "master.pid"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                self._root = int(pid_file.read_text().split()[0])
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"postfix did not start; see {self.dir}/postfix.log")

    def _postfix(self, command: str) -> None:
        done = subprocess.run([POSTFIX, "-c", str(self.dir / "etc"), command],
                              capture_output=True, text=True)
        if done.returncode:
            log = (self.dir / "postfix.log")
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"postfix {command} failed: {done.stderr}{tail}")

    @property
    def root_pid(self) -> int:
        return self._root

    def delivered(self) -> int:
        return count_files(self.dir / "mail" / "box" / "new")

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._postfix("stop")


class Mailstead(Server):
    name = "mailstead"

    def __init__(self, workdir: Path, resolver: str, profile: str | None,
                 workers: int | None = None, src: tuple[str, str] | None = None) -> None:
        more: dict[str, dict[str, object]] = {"delivery": {"resolvers": [resolver]}}
        if workers is not None:  # None: the default, one worker per core
            self.name = f"mailstead-w{workers}"
            more["server"] = {"workers": workers}
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if src is not None:  # another tree's code (--ab): its own name, its PYTHONPATH
            self.name = f"{src[0]}-w{workers}" if workers is not None else src[0]
            env["PYTHONPATH"] = src[1]
        self.data = workdir / self.name
        prepare_mailstead(self.data, 1, more)
        cmd = [sys.executable]
        if profile:
            cmd += ["-m", "cProfile", "-o", profile]
        cmd += ["-m", "mailstead", "serve", "--data", str(self.data),
                "--listen", "smtp=127.0.0.1:0"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=env)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = re.search(r"^listening smtp \S+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        else:
            raise RuntimeError(f"mailstead exited with {self.proc.wait()} before listening")

    @property
    def root_pid(self) -> int:
        return self.proc.pid

    def delivered(self) -> int:
        return count_files(self.data / "blobs", ".eml")

    def stop(self) -> None:
        self.proc.send_signal(2)  # SIGINT: the profiler (if any) writes its file
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- the load -------------------------------------------------------------------------------


@dataclass
class Round:
    rate: float  # accepted msgs/s
    to_mailbox: float  # seconds from start until all were in the mailbox
    cpu: float  # server CPU-seconds
    roles: dict[str, float] = field(default_factory=dict)  # mailstead's CPU-seconds by role


@dataclass
class Result:
    rounds: list[Round] = field(default_factory=list)
    rss: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000


def start_py_spy(server: Server, out: Path) -> subprocess.Popen[bytes]:
    """py-spy recording mailstead (every process of its tree) until stopped (SIGINT)."""
    spy = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--py-spy: py-spy not found (PATH or PY_SPY)")
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [spy, "record", "--pid", str(server.root_pid), "--subprocesses", "--nonblocking",
         "--format", "raw", "--rate", "200", "--output", str(out),
         *(["--gil"] if os.environ.get("PY_SPY_GIL") else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_perf(server: Server, out: Path) -> subprocess.Popen[bytes]:
    """perf recording the processes of mailstead's tree (call graphs, kernel included) until
    stopped (SIGINT); ``perf report -i FILE`` reads it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    pids = ",".join(str(pid) for pid in tree(server.root_pid))
    return subprocess.Popen(["perf", "record", "-g", "-F", "499", "-p", pids, "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_strace(server: Server, out: Path) -> list[subprocess.Popen[bytes]]:
    """strace counting the system calls of each process (its threads included) of mailstead's
    tree until stopped (SIGINT): one table per process, ``<out>.<role>.<pid>``. It slows the
    server, so only the counts mean anything."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen(["strace", "-c", "-f", "-o",
                              f"{out}.{role_of(pid, server.root_pid)}.{pid}", "-p", str(pid)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for pid in tree(server.root_pid)]


def smtp_source(server: Server, row: Row, messages: int, sessions: int,
                spy_to: Path | None = None, perf_to: Path | None = None,
                strace_to: Path | None = None) -> Round:
    recorders = [start_py_spy(server, spy_to)] if spy_to is not None else []
    if perf_to is not None:
        recorders.append(start_perf(server, perf_to))
    if strace_to is not None:
        recorders += start_strace(server, strace_to)
    if recorders:
        time.sleep(0.5)  # py-spy attaches to every process first
    before_cpu = cpu_seconds(server.root_pid)
    mailstead = isinstance(server, Mailstead)
    before_roles = cpu_by_role(server.root_pid) if mailstead else {}
    before = server.delivered()
    cmd = [SMTP_SOURCE, "-s", str(sessions), "-l", str(row.size), "-m", str(messages),
           "-f", SENDER, "-t", RCPT, "-M", HELO]
    if row.reuse:
        cmd.append("-d")
    start = time.perf_counter()
    done = subprocess.run([*cmd, f"127.0.0.1:{server.port}"], capture_output=True, text=True)
    accepted = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"smtp-source against {server.name}: {done.stderr.strip()}")
    deadline = time.monotonic() + 300
    while server.delivered() - before < messages:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name}: only {server.delivered() - before} of "
                               f"{messages} messages reached the mailbox")
        time.sleep(0.02)
    in_mailbox = time.perf_counter() - start
    for recorder in recorders:
        recorder.send_signal(2)
        recorder.wait()
    after_roles = cpu_by_role(server.root_pid) if mailstead else {}
    roles = {role: cpu - before_roles.get(role, 0.0) for role, cpu in after_roles.items()}
    return Round(messages / accepted, in_mailbox, cpu_seconds(server.root_pid) - before_cpu,
                 roles)


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return line


def _message(size: int, number: int) -> bytes:
    head = (f"From: <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: latency {number}\r\n"
            f"Message-ID: <{number}.{time.time_ns()}@{SENDER_DOMAIN}>\r\n\r\n").encode()
    line = b"X" * 78 + b"\r\n"
    return head + line * max(1, size // len(line)) + b".\r\n"


async def latency_pass(port: int, row: Row, messages: int, sessions: int) -> list[float]:
    """Seconds per message: from connecting (or from MAIL FROM when the connection is
    reused) until the 250 after the data; one command at a time, as smtp-source sends."""
    latencies: list[float] = []
    left = [messages]

    async def session() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _reply(reader)
        writer.write(f"HELO {HELO}\r\n".encode())
        await _reply(reader)
        return reader, writer

    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        for command in (f"MAIL FROM:<{SENDER}>\r\n", f"RCPT TO:<{RCPT}>\r\n", "DATA\r\n"):
            writer.write(command.encode())
            await _reply(reader)
        writer.write(_message(row.size, n))
        answer = await _reply(reader)
        if not answer.startswith(b"250"):
            raise RuntimeError(f"latency pass: {answer!r}")

    async def worker() -> None:
        conn = await session() if row.reuse else None
        while left[0] > 0:
            left[0] -= 1
            start = time.perf_counter()
            reader, writer = conn or await session()
            await send(reader, writer, left[0])
            latencies.append(time.perf_counter() - start)
            if conn is None:
                writer.write(b"QUIT\r\n")
                await _reply(reader)
                writer.close()
        if conn is not None:
            conn[1].write(b"QUIT\r\n")
            await _reply(conn[0])
            conn[1].close()

    await asyncio.gather(*(worker() for _ in range(sessions)))
    return latencies


def wait_settled(server: Server, expected: int) -> None:
    deadline = time.monotonic() + 300
    while server.delivered() < expected and time.monotonic() < deadline:
        time.sleep(0.05)


# -- the report -----------------------------------------------------------------------------


def report(row: Row, results: dict[str, Result], messages: int) -> dict[str, float]:
    """Prints the row; returns each server's median CPU milliseconds per message."""
    print(f"\n{row.name}: {row.size // 1024} KiB, "
          f"{'connection reused (-d)' if row.reuse else 'a new connection per message'}")
    print(f"  {'server':<12} {'msgs/s':>8} {'to mailbox s':>12} {'CPU s/1000':>10} "
          f"{'cores':>6} {'RSS MiB':>8} {'p50 ms':>7} {'p99 ms':>7}")
    for name, r in results.items():
        rate = statistics.median(x.rate for x in r.rounds)
        mailbox = statistics.median(x.to_mailbox for x in r.rounds)
        cpu = statistics.median(x.cpu for x in r.rounds) * 1000 / messages
        # CPU the server got while smtp-source ran: on a loaded machine one process gets a
        # smaller share than twenty, which caps its msgs/s whatever each message costs.
        cores = statistics.median(x.cpu * x.rate / messages for x in r.rounds)
        print(f"  {name:<12} {rate:8.0f} {mailbox:12.2f} {cpu:10.2f} {cores:6.2f} {r.rss:8.1f} "
              f"{r.pct(0.5):7.1f} {r.pct(0.99):7.1f}")
    for name, r in results.items():
        roles = sorted({role for x in r.rounds for role in x.roles})
        if roles:
            per = {role: statistics.median(x.roles.get(role, 0.0) for x in r.rounds)
                   for role in roles}
            split = ", ".join(f"{role} {cpu * 1000 / messages:.2f}" for role, cpu in per.items())
            print(f"  {name} CPU s/1000 by role: {split}")
    pf = results.get("postfix")
    for name, ms in results.items():
        if pf is None or name == "postfix":
            continue
        ratios = [a.rate / b.rate for a, b in zip(ms.rounds, pf.rounds, strict=True)]
        cpus = [a.cpu / b.cpu for a, b in zip(ms.rounds, pf.rounds, strict=True) if b.cpu]
        print(f"  {name} / postfix msgs/s per round: "
              f"{', '.join(f'{x:.2f}' for x in ratios)}; median {statistics.median(ratios):.2f}x"
              f"; CPU ratio median {statistics.median(cpus) if cpus else float('nan'):.2f}")
    for name, r in results.items():  # --ab: this tree's mailstead against the other's
        base = re.sub(r"^.*?(-w\d+)?$", r"mailstead\1", name)
        if name.startswith(("mailstead", "postfix")) or base not in results:
            continue
        new = results[base].rounds
        rates = [a.rate / b.rate for a, b in zip(new, r.rounds, strict=True)]
        cpus = [a.cpu / b.cpu for a, b in zip(new, r.rounds, strict=True) if b.cpu]
        print(f"  {base} / {name} msgs/s per round: {', '.join(f'{x:.2f}' for x in rates)}; "
              f"median {statistics.median(rates):.2f}x; CPU per message ratio per round: "
              f"{', '.join(f'{x:.2f}' for x in cpus)}; median "
              f"{statistics.median(cpus) if cpus else float('nan'):.2f}")
    return {name: statistics.median(x.cpu for x in r.rounds) * 1000 / messages
            for name, r in results.items()}


def per_connection(cpu_ms: dict[str, dict[str, float]]) -> None:
    """What a connection costs beyond its message: CPU per message with a new connection
    per message less CPU per message over reused ones, for each size measured both ways."""
    for size in ("4k", "100k"):
        new, reused = cpu_ms.get(f"{size}-new"), cpu_ms.get(f"{size}-reused")
        if new and reused:
            figures = ", ".join(f"{name} {new[name] - reused[name]:.2f} ms" for name in new)
            print(f"\nCPU per connection ({size} rows): {figures}")


def start_dns_world() -> dnsworld.DnsWorld:
    """The loopback DNS world in which the sender's domain publishes SPF and DMARC (exits
    with one line when it cannot run here)."""
    reason = dnsworld.can_run()
    unbound = dnsworld.find_unbound()
    if reason or unbound is None:
        sys.exit(f"the DNS world cannot run: {reason or 'unbound is missing'}")
    # Answers live 5 minutes, as SPF and DMARC records commonly do (the tests' 5 s would make
    # every session of a round ask again at once each time they expire).
    dnsworld.TTL = SENDER_TTL
    world = dnsworld.DnsWorld()
    world.root.zones.append(dns.zone.from_text(SENDER_ZONE, origin="remote.test.",
                                               relativize=False))
    world.start(unbound)
    return world


def stop_all(servers: Sequence[Server], world: dnsworld.DnsWorld,
             workdir: Path) -> None:
    """Stops the servers and the DNS world, and removes the bench's folder."""
    for server in servers:
        server.stop()
    world.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000, help="per server, row and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--latency", type=int, default=500,
                        help="messages of the latency pass per server and row (0: none)")
    parser.add_argument("--quick", action="store_true", help="200 messages, 2 rounds")
    parser.add_argument("--rows", default=",".join(r.name for r in ROWS))
    parser.add_argument("--only", choices=["mailstead", "postfix"])
    parser.add_argument("--profile", help="run mailstead under cProfile, writing this file")
    parser.add_argument("--workers", default="",
                        help="comma-separated [server] workers counts, one mailstead each "
                             "(default: its own default, one per core)")
    parser.add_argument("--ab", metavar="NAME=SRC", action="append", default=[],
                        help="also run mailstead from another source tree (its src folder, "
                             "e.g. a git worktree of the code before a change), named NAME, "
                             "for each --workers count: old and new code side by side")
    parser.add_argument("--perf", metavar="DIR", default=None,
                        help="record each mailstead round with perf (call graphs) into "
                             "DIR/<server>-<row>-r<round>.data")
    parser.add_argument("--py-spy", metavar="DIR", default=None,
                        help="record each mailstead round with py-spy (PY_SPY or PATH) into "
                             "DIR/<server>-<row>-r<round>.txt (bench/profile_top.py reads "
                             "them); PY_SPY_GIL=1: only samples holding the interpreter lock")
    parser.add_argument("--strace", metavar="DIR", default=None,
                        help="count the system calls of each mailstead round with strace -c "
                             "into DIR/<server>-<row>-r<round>.<pid> (one table per process "
                             "and thread; divide by --messages for calls per message)")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.rounds, args.latency = 200, 2, 100
    rows = [r for r in ROWS if r.name in args.rows.split(",")]
    for binary in (POSTFIX, SMTP_SOURCE):
        if not Path(binary).exists():
            sys.exit(f"{binary} is missing: install Debian's postfix package")
    world = start_dns_world()
    workdir = Path(tempfile.mkdtemp(prefix="smtp-vs-postfix-"))
    servers: list[Server] = []
    try:
        if args.only != "postfix":
            counts = [int(n) for n in args.workers.split(",") if n] or [None]
            servers += [Mailstead(workdir, world.resolver, args.profile, n) for n in counts]
            for name, _, src in (ab.partition("=") for ab in args.ab):
                servers += [Mailstead(workdir, world.resolver, args.profile, n,
                                      (name, str(Path(src).resolve()))) for n in counts]
        if args.only != "mailstead":
            servers.append(Postfix(workdir))
        print(f"{args.messages} messages per server, row and round, {args.rounds} rounds "
              f"alternating, {args.sessions} parallel sessions (smtp-source); load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        for server in servers:  # warm up: first connections, caches, Postfix's processes
            smtp_source(server, ROWS[0], 100, args.sessions)
        cpu_ms: dict[str, dict[str, float]] = {}
        for row in rows:
            results = {s.name: Result() for s in servers}
            for n in range(args.rounds):
                for server in servers if n % 2 == 0 else servers[::-1]:
                    spy_to = perf_to = strace_to = None
                    if isinstance(server, Mailstead):
                        label = f"{server.name}-{row.name}-r{n + 1}"
                        if args.py_spy:
                            spy_to = Path(args.py_spy) / f"{label}.txt"
                        if args.perf:
                            perf_to = Path(args.perf) / f"{label}.data"
                        if args.strace:
                            strace_to = Path(args.strace) / label
                    results[server.name].rounds.append(
                        smtp_source(server, row, args.messages, args.sessions, spy_to, perf_to,
                                    strace_to))
            for server in servers:
                results[server.name].rss = rss_mib(server.root_pid)
                if args.latency:
                    expected = server.delivered() + args.latency
                    results[server.name].latencies = asyncio.run(
                        latency_pass(server.port, row, args.latency, args.sessions))
                    wait_settled(server, expected)
            cpu_ms[row.name] = report(row, results, args.messages)
        per_connection(cpu_ms)
    finally:
        stop_all(servers, world, workdir)


if __name__ == "__main__":
    main()
