"""SMTP ingest with allow/block lists against the same without any (issue 19).

Two mailstead servers (SQLite) with the same users: one has no list entries, the other gives
every user ``--entries`` entries (addresses, domains, IP ranges, none matching the bench's
sender) and the domain as many. Both get the load of bench/smtp_ingest.py, in alternating
rounds. Printed: smtp_ingest's table for both, and the ratio of their rates (lists / none).

    .venv/bin/python bench/sender_lists.py [--messages 3000] [--sessions 20] [--entries 50]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))

import smtp_ingest  # noqa: E402


def add_entries(data_dir: Path, users: int, entries: int) -> None:
    from mailstead.config import load_config
    from mailstead.services.sender_lists import SenderLists
    from mailstead.store.factory import make_metadata_store

    cfg = load_config(data_dir)

    async def fill() -> None:
        store = make_metadata_store(cfg)
        await store.open()
        lists = SenderLists(store, cfg.lists)
        owners = [("user", f"user{i}@{smtp_ingest.DOMAIN}") for i in range(users)]
        try:
            for scope, owner in [*owners, ("domain", smtp_ingest.DOMAIN)]:
                for n in range(entries):
                    pattern = (f"pest{n}@spam{n}.test", f"spam{n}.example",
                               f"198.51.{n % 250}.0/24")[n % 3]
                    await lists.add(scope, owner, "block" if n % 2 else "allow",  # type: ignore[arg-type]
                                    pattern)
        finally:
            await store.close()

    asyncio.run(fill())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--entries", type=int, default=50, help="entries per user and domain")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    args.idle = 0
    workdir = Path(tempfile.mkdtemp(prefix="lists-bench-"))
    reports: list[smtp_ingest.Report] = []
    try:
        for name in ("lists", "none"):
            smtp_ingest.prepare_mailstead(workdir / name, args.users,
                                          {"lists": {"max_entries": max(args.entries, 1)}})
            if name == "lists":
                add_entries(workdir / name, args.users, args.entries)
            reports.append(smtp_ingest.Report(
                name, smtp_ingest.start_mailstead(workdir / name, None)))
        smtp_ingest.measure(reports, args)
        smtp_ingest.print_report(reports, args)
        lists, none = reports
        pairs = [a / b for a, b in zip(lists.rounds, none.rounds, strict=True) if b]
        print(f"\nwith {args.entries} entries per user and domain / without lists: "
              f"{lists.result.rate / none.result.rate:.2f}x messages per second (median of "
              f"rounds {statistics.median(pairs):.2f}x); CPU ms/msg "
              f"{lists.cpu_ms_per_message:.2f} vs {none.cpu_ms_per_message:.2f}")
    finally:
        for report in reports:
            report.server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
