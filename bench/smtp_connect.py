"""What one SMTP connection costs mailstead's server, in CPU microseconds, old code against new.

smtp_vs_postfix.py gives the cost of a connection as the difference of two noisy rows (a
message per new connection less a message over a reused one). This bench measures it
directly: ``--sessions`` clients of ours open connections one after another, each doing only

- ``connect``: greeting, EHLO, QUIT (what an MX pays for any client before its first MAIL);
- ``message``: the same around one 4 KiB message (MAIL, RCPT, DATA), as smtp-source's rows
  without ``-d`` do;

and the server's CPU (every process of its tree: worker, message-file helper) is read from
/proc before and after. Servers are started as smtp_vs_postfix.py starts them (defaults:
inbound checks and spam scoring on, the loopback DNS world where the sender publishes SPF and
DMARC); rounds alternate between them. ``--ab NAME=SRC`` adds another tree's mailstead (``git
archive OLD src | tar -x -C /tmp/old``); the ratios new/old per round and their median are
printed. Run as root (the DNS world binds port 53 on loopback):

    .venv/bin/python bench/smtp_connect.py --ab old=/tmp/old/src [--mode connect,message]
        [--connections 3000] [--rounds 5] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from smtp_vs_postfix import (  # noqa: E402
    HELO,
    RCPT,
    SENDER,
    Mailstead,
    _message,
    _reply,
    cpu_by_role,
    start_dns_world,
    stop_all,
    wait_settled,
)


async def _connection(port: int, message: int | None) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _reply(reader)
        writer.write(f"EHLO {HELO}\r\n".encode())
        await _reply(reader)
        if message is not None:
            for command in (f"MAIL FROM:<{SENDER}>\r\n", f"RCPT TO:<{RCPT}>\r\n", "DATA\r\n"):
                writer.write(command.encode())
                await _reply(reader)
            writer.write(_message(4096, message))
            answer = await _reply(reader)
            if not answer.startswith(b"250"):
                raise RuntimeError(f"message refused: {answer!r}")
        writer.write(b"QUIT\r\n")
        await _reply(reader)
    finally:
        writer.close()


async def load(port: int, connections: int, sessions: int, with_message: bool) -> float:
    left = [connections]

    async def client() -> None:
        while left[0] > 0:
            left[0] -= 1
            await _connection(port, left[0] if with_message else None)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(sessions)))
    return time.perf_counter() - start


def py_spy(server: Mailstead, out: Path) -> subprocess.Popen[bytes]:
    """py-spy (PY_SPY or PATH) recording the server's tree at 1,000 samples a second, only
    while it holds the interpreter lock (idle waits left out)."""
    spy = os.environ.get("PY_SPY") or shutil.which("py-spy") or "py-spy"
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [spy, "record", "--pid", str(server.root_pid), "--subprocesses", "--nonblocking",
         "--gil", "--format", "raw", "--rate", "1000", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def one_round(server: Mailstead, mode: str, connections: int, sessions: int,
              spy_to: Path | None = None) -> tuple[float, dict[str, float]]:
    """(connections per second, CPU microseconds per connection by role and in all)."""
    expected = server.delivered() + (connections if mode == "message" else 0)
    spy = py_spy(server, spy_to) if spy_to is not None else None
    if spy is not None:
        time.sleep(0.5)  # attached to every process first
    before = cpu_by_role(server.root_pid)
    seconds = asyncio.run(load(server.port, connections, sessions, mode == "message"))
    wait_settled(server, expected)
    after = cpu_by_role(server.root_pid)
    if spy is not None:
        spy.send_signal(2)
        spy.wait()
    per = {role: (cpu - before.get(role, 0.0)) / connections * 1e6
           for role, cpu in after.items()}
    per["all"] = sum(per.values())
    return connections / seconds, per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="connect,message")
    parser.add_argument("--connections", type=int, default=3000, help="per server and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--ab", metavar="NAME=SRC", action="append", default=[])
    parser.add_argument("--py-spy", metavar="DIR", default=None,
                        help="record each round with py-spy into DIR/<server>-<mode>-r<n>.txt "
                             "(bench/profile_top.py reads them); it costs CPU, so the figures "
                             "of such a run are not comparable")
    args = parser.parse_args()
    world = start_dns_world()
    workdir = Path(tempfile.mkdtemp(prefix="smtp-connect-"))
    servers: list[Mailstead] = []
    try:
        servers.append(Mailstead(workdir, world.resolver, None, args.workers))
        for name, _, src in (ab.partition("=") for ab in args.ab):
            servers.append(Mailstead(workdir, world.resolver, None, args.workers,
                                     (name, str(Path(src).resolve()))))
        for server in servers:  # warm up: first connections, DNS answers, caches
            one_round(server, "message", 200, args.sessions)
        print(f"{args.connections} connections per server and round, {args.rounds} rounds "
              f"alternating, {args.sessions} parallel clients, [server] workers = "
              f"{args.workers}")
        for mode in args.mode.split(","):
            cpu: dict[str, list[float]] = {s.name: [] for s in servers}
            roles: dict[str, dict[str, list[float]]] = {s.name: {} for s in servers}
            rates: dict[str, list[float]] = {s.name: [] for s in servers}
            for n in range(args.rounds):
                for server in servers if n % 2 == 0 else servers[::-1]:
                    spy_to = Path(args.py_spy) / f"{server.name}-{mode}-r{n + 1}.txt" \
                        if args.py_spy else None
                    rate, per = one_round(server, mode, args.connections, args.sessions,
                                          spy_to)
                    rates[server.name].append(rate)
                    cpu[server.name].append(per["all"])
                    for role, value in per.items():
                        roles[server.name].setdefault(role, []).append(value)
            print(f"\n{mode}: server CPU us per connection (rounds; median), connections/s")
            for server in servers:
                name = server.name
                figures = " ".join(f"{v:.0f}" for v in cpu[name])
                by_role = ", ".join(f"{role} {statistics.median(v):.0f}"
                                    for role, v in sorted(roles[name].items()) if role != "all")
                print(f"  {name:16} {figures}; median {statistics.median(cpu[name]):.0f} "
                      f"({by_role}); {statistics.median(rates[name]):.0f}/s")
            base = servers[0].name
            for other in servers[1:]:
                ratios = [a / b for a, b in zip(cpu[base], cpu[other.name], strict=True)]
                print(f"  {base} / {other.name} CPU: "
                      f"{' '.join(f'{r:.3f}' for r in ratios)}; median "
                      f"{statistics.median(ratios):.3f}")
    finally:
        stop_all(servers, world, workdir)


if __name__ == "__main__":
    main()
