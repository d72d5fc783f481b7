"""The login limiter's cost under a spray of failed logins from random addresses and user names
(the case that must neither slow the loop nor grow memory without bound).

    .venv/bin/python bench/auth_limiter.py [--attempts 300000] [--max-records 100000]

Prints microseconds per failed attempt (admit + record_failure), the records held at the end,
and the memory they take.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mailstead.auth.ratelimit import AuthLimiter  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--attempts", type=int, default=300_000)
    parser.add_argument("--max-records", type=int, default=100_000)
    args = parser.parse_args()
    rng = random.Random(7)
    attempts = [(f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}."
                 f"{rng.randrange(256)}", f"user{rng.randrange(10**9)}@example.test",
                 f"{rng.getrandbits(64):016x}") for _ in range(args.attempts)]
    limiter = AuthLimiter(max_records=args.max_records)
    start = time.perf_counter()
    refused = spray(limiter, attempts)
    elapsed = time.perf_counter() - start
    tracemalloc.start()  # a second run, traced, for the memory (tracing slows it down)
    traced = AuthLimiter(max_records=args.max_records)
    spray(traced, attempts)
    held, peak = tracemalloc.get_traced_memory()
    print(f"spray of {args.attempts} failed logins, random addresses and users:")
    print(f"  {elapsed / args.attempts * 1e6:.1f} us per attempt, {refused} refused")
    print(f"  records held: {len(traced)} (cap {args.max_records}), "
          f"{held / 2**20:.0f} MB (peak {peak / 2**20:.0f} MB)")


def spray(limiter: AuthLimiter, attempts: list[tuple[str, str, str]]) -> int:
    refused = 0
    for ip, user, guess in attempts:
        if limiter.admit(ip, user, guess).refused:
            refused += 1
        else:
            limiter.record_failure(ip, user, guess)
    return refused

if __name__ == "__main__":
    main()
