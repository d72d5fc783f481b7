"""Import rate of a large mbox into one account, durable (message files flushed, rows
committed), through the same Importer `mailstead import mbox` uses.

    .venv/bin/python bench/import.py [--count 100000] [--size 3000] [--peer 2000] [--rounds 5]

The mbox is cut into --rounds files. Each round imports one of them (batched), then stores
--peer/--rounds messages of it one at a time (MailboxService.append: one flush and one commit
each), the peer measured in the same conditions. Prints the medians over the rounds of
messages/s (wall) and CPU-seconds per 1,000 messages, the total, and the ratio.
Target: >= 2,000 messages/s durable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mailstead import bootstrap  # noqa: E402
from mailstead.config import Config  # noqa: E402
from mailstead.mailmove.importer import Importer  # noqa: E402
from mailstead.mailmove.sources import read_mbox  # noqa: E402
from mailstead.services.mailbox import MailboxService  # noqa: E402
from mailstead.store.changes import ChangeBus  # noqa: E402
from mailstead.store.factory import make_blob_store, make_metadata_store  # noqa: E402

USER = "bench@example.test"


def write_mbox(path: Path, first: int, count: int, size: int) -> None:
    filler = ("lorem ipsum dolor sit amet " * 3).strip() + "\n"
    body = filler * max(1, size // len(filler))
    with path.open("w") as fh:
        for i in range(first, first + count):
            fh.write(f"From sender{i % 97}@example.org Sat Dec  5 10:{i % 60:02d}:00 2026\n"
                     f"Message-ID: <m{i}@bench.example.org>\n"
                     f"Date: Sat, 05 Dec 2026 10:{i % 60:02d}:00 +0000\n"
                     f"From: sender{i % 97}@example.org\nTo: {USER}\n"
                     f"Subject: message number {i}\n"
                     f"{'Status: RO' + chr(10) if i % 3 else ''}\n"
                     f"{body}message {i}\n\n")


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


Figures = tuple[float, float]  # messages/s, CPU-seconds per 1,000 messages


async def run(cfg: Config, files: list[Path], peer: int) -> tuple[list[Figures], list[Figures],
                                                                  int, float]:
    store = make_metadata_store(cfg)
    await store.open()
    try:
        await bootstrap.add_domain(store, "example.test")
        await bootstrap.add_user(store, USER, "bench-Passw0rd!")
        account = await store.get_account(USER)
        assert account is not None
        mailboxes = MailboxService(store, make_blob_store(cfg), ChangeBus(),
                                   cfg.limits.max_message_size)
        batched: list[Figures] = []
        single: list[Figures] = []
        stored, total_wall = 0, 0.0
        for number, mbox in enumerate(files):
            wall, cpu0 = time.perf_counter(), cpu()
            report = await Importer(mailboxes, account).run(read_mbox(mbox, f"Round{number}"))
            elapsed, used = time.perf_counter() - wall, cpu() - cpu0
            batched.append((report.stored / elapsed, used / report.stored * 1000))
            stored += report.stored
            total_wall += elapsed
            box = await mailboxes.create(account.id, f"OneByOne{number}")
            wall, cpu0 = time.perf_counter(), cpu()
            done = 0
            for item in read_mbox(mbox):
                if done >= peer:
                    break
                await mailboxes.append(box, item.data, item.flags, item.keywords,
                                       item.internal_date)
                done += 1
            elapsed, used = time.perf_counter() - wall, cpu() - cpu0
            single.append((done / elapsed, used / done * 1000))
        return batched, single, stored, total_wall
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=3000, help="approximate bytes a message")
    parser.add_argument("--peer", type=int, default=2000,
                        help="messages stored one at a time for the comparison (in all)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to work (default: a temp dir)")
    args = parser.parse_args()
    rounds = max(1, args.rounds)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        share = args.count // rounds
        files = []
        for number in range(rounds):
            files.append(work / f"part{number}.mbox")
            count = share if number < rounds - 1 else args.count - share * (rounds - 1)
            write_mbox(files[-1], share * number, count, args.size)
        megabytes = sum(f.stat().st_size for f in files) / 2**20
        cfg = bootstrap.build_config(work / "data", {})
        asyncio.run(bootstrap.initialise(cfg, demo_domain=None))
        batched, single, stored, wall = asyncio.run(
            run(cfg, files, max(1, args.peer // rounds)))
    rate, cpu_s = (statistics.median(f[i] for f in batched) for i in (0, 1))
    peer_rate, peer_cpu = (statistics.median(f[i] for f in single) for i in (0, 1))
    print(f"import of a {args.count:,}-message mbox ({megabytes:,.0f} MB, ~{args.size} bytes a "
          f"message) in {rounds} rounds, durable, on {os.cpu_count()} cores (medians):")
    print(f"  batched import : {rate:8,.0f} messages/s  {cpu_s:6.2f} CPU-s per 1,000  "
          f"({stored:,} stored in {wall:.1f}s: {stored / wall:,.0f}/s overall)")
    print(f"  one at a time  : {peer_rate:8,.0f} messages/s  {peer_cpu:6.2f} CPU-s per 1,000  "
          f"(the peer: {args.peer:,} messages over the same rounds)")
    print(f"  ratio          : {rate / peer_rate:.1f}x the rate, {peer_cpu / cpu_s:.1f}x less CPU; "
          f"target >= 2,000/s: {'met' if rate >= 2000 else 'NOT met'}")


if __name__ == "__main__":
    main()
