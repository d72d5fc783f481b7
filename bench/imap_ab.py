"""Old code against new on the long-session mix, side by side, in alternating slices.

    .venv/bin/python bench/imap_ab.py OLD_SRC NEW_SRC [MORE_SRC ...] [--slices 8]
        [--seconds 5] [--clients 10] [--inbox 300]

Each SRC is a directory holding a ``mailstead`` package (e.g. ``git archive <commit> src |
tar -x -C /tmp/old`` gives ``/tmp/old/src``). One ``mailstead serve`` per SRC runs at the same
time (each its own data directory, the same users and INBOX contents), and the long-session
generator of ``bench/imap_vs_dovecot.py`` runs against each in turn for ``--seconds``, the order
reversed every slice. It prints each slice's commands/s and server CPU µs per command (the
process tree), then per SRC the median, and per SRC after the first the median of the
per-slice ratios to the first. On a machine shared with other work the load drifts within
seconds: ratios of neighbouring slices tell old from new where two separate runs cannot.
Run nothing else that measures at the same time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from imap_vs_dovecot import (
    Server,
    append_all,
    free_port,
    mailstead_config,
    populate_mailstead,
    run_long,
    tree_cpu,
    user_name,
    wait_port,
)

from mailstead import bootstrap


async def start(src: Path, data: Path, name: str, users: list[str], inbox: int) -> Server:
    data.mkdir()
    cfg = mailstead_config(data, free_port(), None)
    await bootstrap.initialise(cfg, demo_domain=None)
    await populate_mailstead(cfg, users, 0)
    log = open(data / "serve.log", "wb")  # noqa: SIM115 - the child holds it
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailstead", "serve", "--data", str(data)],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(src), "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    port = cfg.listeners["imap"].port
    wait_port(port, proc, name)
    server = Server(name, proc, port)
    await append_all(port, users, inbox)
    return server


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sources", nargs="+", type=Path)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--inbox", type=int, default=300)
    args = parser.parse_args()
    if len(args.sources) < 2:
        raise SystemExit("give at least two source directories")
    users = [user_name(0), user_name(1)]
    names = [f"{n}:{src}" for n, src in enumerate(args.sources)]
    cpu: dict[str, list[float]] = {name: [] for name in names}
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="imap-ab-") as tmp:
        try:
            for n, (name, src) in enumerate(zip(names, args.sources, strict=True)):
                servers.append(await start(src.resolve(), Path(tmp) / str(n), name, users,
                                           args.inbox))
                await run_long(servers[-1].port, users, args.clients, 2, args.inbox, 99,
                               False)  # warm-up
            for i in range(args.slices):
                for server in servers if i % 2 == 0 else servers[::-1]:
                    before = tree_cpu(server.proc.pid)
                    stats = await run_long(server.port, users, args.clients, args.seconds,
                                           args.inbox, i, False)
                    used = tree_cpu(server.proc.pid) - before
                    count = max(1, len(stats.latencies))
                    cpu[server.name].append(used / count * 1e6)
                    print(f"slice {i}  {server.name:<40} {count / args.seconds:7,.0f} "
                          f"commands/s  {used / count * 1e6:6.1f} µs CPU per command  "
                          f"(load {os.getloadavg()[0]:.1f})", flush=True)
        finally:
            for server in servers:
                server.stop()
    first = names[0]
    for name in names:
        print(f"{name}: median {statistics.median(cpu[name]):.1f} µs per command")
    for name in names[1:]:
        ratios = [new / old for new, old in zip(cpu[name], cpu[first], strict=True)]
        print(f"{name} / {first}: median of the per-slice ratios {statistics.median(ratios):.3f}"
              f" ({', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    asyncio.run(main())
