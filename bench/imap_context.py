"""What CONTEXT=SEARCH / CONTEXT=SORT (RFC 5267 4) cost: kept results on a big mailbox.

    .venv/bin/python bench/imap_context.py [--big 50000] [--appends 100] [--stores 1000]

Starts ``mailstead serve`` (SQLite, plain-text IMAP on 127.0.0.1) with a mailbox of ``--big``
messages (the envelopes of bench/imap_load.py). One client selects it and opens three update
contexts: ``UID SORT RETURN (COUNT UPDATE) (DATE) UTF-8 UNSEEN``, ``UID SEARCH RETURN (COUNT
UPDATE) UNSEEN`` and ``UID SORT RETURN (COUNT UPDATE) (REVERSE SUBJECT) UTF-8 FROM a``; printed:
each command's time against the same without UPDATE (the price of keeping the result); each
of the three runs of each leaves a context, so nine are kept. Then
another client APPENDs ``--appends`` messages and marks ``--stores`` unseen messages seen, and
the first client's NOOP (which tests only those messages against the three contexts and sends
the ADDTO / REMOVEFROM) is timed, with the server's CPU and the longest wait of a third
client's NOOP meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import imap_load  # noqa: E402  (the client, mailbox filler and server start-up of the IMAP bench)

from mailstead import bootstrap  # noqa: E402

CONTEXTS = [
    "UID SORT RETURN (COUNT{}) (DATE) UTF-8 UNSEEN",
    "UID SEARCH RETURN (COUNT{}) UNSEEN",
    "UID SORT RETURN (COUNT{}) (REVERSE SUBJECT) UTF-8 FROM a",
]


async def timed(client: imap_load.Client, command: str, pid: int) -> tuple[float, float, bytes]:
    start, cpu = time.perf_counter(), imap_load.cpu_seconds(pid)
    answer = await client.command_bulk(command)
    return time.perf_counter() - start, imap_load.cpu_seconds(pid) - cpu, answer


async def run(port: int, pid: int, appends: int, stores: int) -> None:
    watcher = await imap_load.Client.connect(port)
    await watcher.login()
    await watcher.command("SELECT Big")
    for template in CONTEXTS:
        plain = [(await timed(watcher, template.format(""), pid))[0] for _ in range(3)]
        kept = [(await timed(watcher, template.format(" UPDATE"), pid))[0] for _ in range(3)]
        print(f"  {template.format(' UPDATE')}: median {statistics.median(kept) * 1000:.0f} ms"
              f" (without UPDATE {statistics.median(plain) * 1000:.0f} ms)")
    other = await imap_load.Client.connect(port)
    await other.login()
    answer = await other.command_bulk("SELECT Big")
    unseen = await other.command_bulk("UID SEARCH UNSEEN")
    uids = [int(n) for n in unseen.split(b"\r\n")[0].split()[2:]][:stores]
    start = time.perf_counter()
    for n in range(appends):
        data = imap_load.sample_message(2_000_000 + n)
        other.writer.write(f"a{n} APPEND Big {{{len(data)}+}}\r\n".encode() + data + b"\r\n")
        await other.until(f"a{n}".encode())
    for i in range(0, len(uids), 200):
        chunk = ",".join(map(str, uids[i:i + 200]))
        await other.command(f"UID STORE {chunk} +FLAGS.SILENT (\\Seen)")
    print(f"  other client: {appends} APPENDs and {len(uids)} messages marked seen in "
          f"{time.perf_counter() - start:.1f} s")
    probe = await imap_load.Client.connect(port)
    await probe.login()
    stop = asyncio.Event()

    async def noop_probe() -> float:
        worst = 0.0
        while not stop.is_set():
            t0 = time.perf_counter()
            await probe.command("NOOP")
            worst = max(worst, time.perf_counter() - t0)
            await asyncio.sleep(0.01)
        return worst

    prober = asyncio.create_task(noop_probe())
    took, cpu, answer = await timed(watcher, "NOOP", pid)
    stop.set()
    worst = await prober
    lines = [ln for ln in answer.split(b"\r\n") if ln.startswith(b"* ESEARCH")]
    adds = sum(len(re.findall(rb"ADDTO \(([^)]*)\)", ln)) for ln in lines)
    drops = len([ln for ln in answer.split(b"\r\n") if b"NOUPDATE" in ln])
    print(f"  watcher's NOOP with the updates: {took * 1000:.0f} ms (server CPU "
          f"{cpu * 1000:.0f} ms; {len(lines)} ESEARCH updates, {adds} with ADDTO, "
          f"{drops} contexts dropped; {len(answer) / 1e3:.0f} kB); another client's NOOP "
          f"waited at most {worst * 1000:.0f} ms")
    for client in (watcher, other, probe):
        client.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--big", type=int, default=50_000)
    parser.add_argument("--appends", type=int, default=100)
    parser.add_argument("--stores", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailstead-context-bench-") as tmp:
        data_dir = Path(tmp)
        overrides = {
            "listeners": {name: {"enabled": False} for name in bootstrap.build_config(
                data_dir).listeners} | {"imap": {"address": "127.0.0.1", "port": 0,
                                                  "enabled": True, "tls": "none"}},
            "auth": {"allow_plaintext_on_loopback": True},
            "trust": {"dns": "off"},  # loopback only: the system's resolvers are not asked
        }
        cfg = bootstrap.build_config(data_dir, overrides)
        await bootstrap.initialise(cfg, demo_domain=None)
        await imap_load.populate(cfg, 0, args.big)
        proc, port = imap_load.start_server(data_dir)
        try:
            print(f"big mailbox of {args.big} messages (server pid {proc.pid})")
            await run(port, proc.pid, args.appends, args.stores)
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    asyncio.run(main())
