"""Import rate of a large mbox into one account, durable (message files flushed, rows
committed), through the same Importer `mailstead import mbox` uses.

    .venv/bin/python bench/import.py [--count 100000] [--size 3000] [--peer 2000]

Prints messages/s (wall) and CPU-seconds per 1,000 messages for the batched import, and, as
the peer measured in the same run, the same figures for storing one message at a time
(MailboxService.append, one flush and one commit each) over the first --peer messages, with the
ratio. Target: >= 2,000 messages/s durable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
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


def write_mbox(path: Path, count: int, size: int) -> None:
    filler = ("lorem ipsum dolor sit amet " * 3).strip() + "\n"
    body = filler * max(1, size // len(filler))
    with path.open("w") as fh:
        for i in range(count):
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


async def run(cfg: Config, mbox: Path, peer: int) -> tuple[float, float, int, float, float]:
    store = make_metadata_store(cfg)
    await store.open()
    try:
        await bootstrap.add_domain(store, "example.test")
        await bootstrap.add_user(store, USER, "bench-Passw0rd!")
        account = await store.get_account(USER)
        assert account is not None
        mailboxes = MailboxService(store, make_blob_store(cfg), ChangeBus(),
                                   cfg.limits.max_message_size)
        wall, cpu0 = time.perf_counter(), cpu()
        report = await Importer(mailboxes, account).run(read_mbox(mbox))
        batched = (time.perf_counter() - wall, cpu() - cpu0)
        # The peer: the same messages one at a time into another folder.
        box = await mailboxes.create(account.id, "OneByOne")
        wall, cpu0 = time.perf_counter(), cpu()
        done = 0
        for item in read_mbox(mbox):
            if done >= peer:
                break
            await mailboxes.append(box, item.data, item.flags, item.keywords, item.internal_date)
            done += 1
        single = (time.perf_counter() - wall, cpu() - cpu0)
        return batched[0], batched[1], report.stored, single[0] / max(done, 1), \
            single[1] / max(done, 1)
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=3000, help="approximate bytes a message")
    parser.add_argument("--peer", type=int, default=2000,
                        help="messages stored one at a time for the comparison")
    parser.add_argument("--dir", default=None, help="where to work (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        mbox = work / "big.mbox"
        write_mbox(mbox, args.count, args.size)
        megabytes = mbox.stat().st_size / 2**20
        cfg = bootstrap.build_config(work / "data", {})
        asyncio.run(bootstrap.initialise(cfg, demo_domain=None))
        wall, cpu_s, stored, peer_wall, peer_cpu = asyncio.run(run(cfg, mbox, args.peer))
    rate = stored / wall
    print(f"import of a {args.count:,}-message mbox ({megabytes:,.0f} MB, ~{args.size} bytes a "
          f"message), durable, on {os.cpu_count()} cores:")
    print(f"  batched import : {rate:8,.0f} messages/s  {cpu_s / stored * 1000:6.2f} CPU-s per "
          f"1,000  ({stored:,} stored in {wall:.1f}s)")
    print(f"  one at a time  : {1 / peer_wall:8,.0f} messages/s  {peer_cpu * 1000:6.2f} CPU-s "
          f"per 1,000  (first {args.peer:,}; the peer)")
    print(f"  ratio          : {rate * peer_wall:.1f}x faster batched; target >= 2,000/s: "
          f"{'met' if rate >= 2000 else 'NOT met'}")


if __name__ == "__main__":
    main()
