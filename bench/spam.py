"""Spam scoring costs per message: the rules (every MX message), tokenizing (messages to a
user whose filter is trained), and a trained user's whole verdict with its store lookup.

    .venv/bin/python bench/spam.py [--size 4096] [--trained 200] [--repeat 7]

Prints the median of ``--repeat`` runs of each, in microseconds per message.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mailstead.config import SpamConfig  # noqa: E402
from mailstead.services.spam import SpamService  # noqa: E402
from mailstead.spam import tokenize  # noqa: E402
from mailstead.store.blob_fs import FsBlobStore  # noqa: E402
from mailstead.store.changes import ChangeBus  # noqa: E402
from mailstead.store.sqlite import SqliteStore  # noqa: E402

WORDS = ["meeting", "budget", "project", "invoice", "offer", "discount", "winner", "casino",
         "crypto", "report", "draft", "review", "weekend", "family", "holiday", "schedule",
         "payment", "account", "security", "update"]


def message(size: int, rng: random.Random) -> bytes:
    head = (f"From: Someone <s{rng.randrange(1000)}@remote.test>\r\nTo: user@bench.test\r\n"
            f"Subject: {' '.join(rng.choices(WORDS, k=4))}\r\n"
            "Date: Wed, 02 Dec 2026 10:00:00 +0000\r\nMessage-ID: <x@remote.test>\r\n\r\n")
    body = []
    while sum(len(w) + 1 for w in body) < size - len(head):
        body.append(rng.choice(WORDS) + str(rng.randrange(50)))
    return (head + " ".join(body) + "\r\n").encode()


def per_message(run: Callable[[], None], count: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) / count * 1e6)
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--trained", type=int, default=200, help="messages of each class")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(1)
    messages = [message(args.size, rng) for _ in range(500)]
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "m.db", ChangeBus())
        await store.open()
        blobs = FsBlobStore(Path(tmp) / "blobs")
        spam = SpamService(SpamConfig(), store, blobs)
        await store.add_domain("bench.test")
        account = await store.add_account("user@bench.test", "x")
        base = spam.rules_verdict(messages[0], b"")
        print(f"{args.size}-byte messages, median of {args.repeat} runs")
        rules_us = per_message(lambda: [spam.rules_verdict(m, b"") for m in messages],
                               len(messages), args.repeat)
        print(f"rules, every MX message:         {rules_us:8.1f} us")
        tokens_us = per_message(lambda: [tokenize.hashed(tokenize.tokens(m)) for m in messages],
                                len(messages), args.repeat)
        print(f"tokens, for a trained user:      {tokens_us:8.1f} us")
        start = time.perf_counter()
        for i in range(args.trained * 2):
            data = message(args.size, rng)
            blob_id = blobs.put(data)
            await spam.train(account.id, [blob_id], i % 2 == 0)
        train_ms = (time.perf_counter() - start) / (args.trained * 2) * 1e3
        print(f"training one message:            {train_ms:8.2f} ms "
              f"({args.trained} spam + {args.trained} good)")
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            for m in messages[:100]:
                await spam.judge(m, base, [account])
            times.append((time.perf_counter() - start) / 100 * 1e6)
        print(f"verdict of a trained user:       {statistics.median(times):8.1f} us "
              "(tokens + store lookup + combining)")
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
