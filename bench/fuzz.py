"""Fuzzes every protocol parser and prints, per parser: inputs run, inputs/s, crashes, the
slowest input's CPU time and the exception types seen.

    .venv/bin/python bench/fuzz.py                      # 1,000,000 inputs per parser
    .venv/bin/python bench/fuzz.py --parser imap --inputs 50000 --seed 7
    .venv/bin/python bench/fuzz.py --seconds 60         # at most a minute per parser

Crashing inputs, inputs over the CPU bound and each parser's slowest input are saved to
bench/out/ (fuzz-<parser>-*.bin, with a .txt traceback beside each crash). The exit status is 1
when any parser crashed or went over the bound. The machine is shared: run it under
``nice -n 10``. See bench/fuzzlib.py for the targets and the mutations.

``--engine atheris`` hands one parser's target to libFuzzer instead (coverage-guided, when
``pip install atheris`` works on the machine; it is not a project dependency):

    .venv/bin/python bench/fuzz.py --engine atheris --parser mime --inputs 200000

libFuzzer prints its own statistics; crashes and inputs over the bound (``-timeout``) are saved
as bench/out/atheris-<parser>-crash-*, the corpus it grew in bench/out/atheris-<parser>-corpus/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fuzzlib import CPU_BOUND, OUT_DIR, Report, fuzz, scaling, targets


def line(report: Report) -> str:
    slowest = report.slowest[0][0] * 1000 if report.slowest else 0.0
    kinds = ", ".join(f"{name} {count}" for name, count in report.exceptions.most_common())
    return (f"{report.name:6} inputs {report.inputs:>9,}  {report.rate:>8,.0f}/s  "
            f"crashes {len(report.crashes)}  over bound {len(report.slow)}  "
            f"slowest {slowest:7.1f} ms CPU  corpus {report.corpus}  exceptions: {kinds or '-'}")


def main() -> int:
    available = targets()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parser", action="append", choices=sorted(available),
                        help="fuzz only this parser (repeatable); default: all")
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs per parser")
    parser.add_argument("--seconds", type=float, default=None,
                        help="stop each parser after this many seconds")
    parser.add_argument("--seed", type=int, default=1, help="random seed (runs are repeatable)")
    parser.add_argument("--bound", type=float, default=CPU_BOUND,
                        help="CPU seconds one input may cost before it counts as a failure")
    parser.add_argument("--scaling", action="store_true",
                        help="time large hostile inputs at n and 4n instead (a ratio near 16 "
                        "means the cost is quadratic)")
    parser.add_argument("--engine", choices=("mutate", "atheris"), default="mutate",
                        help="mutate: this script's own fuzzer; atheris: libFuzzer (one parser)")
    args = parser.parse_args()
    if args.engine == "atheris":
        if not args.parser or len(args.parser) != 1:
            parser.error("--engine atheris fuzzes one --parser at a time")
        return run_atheris(args.parser[0], args.inputs, args.bound, args.seed)
    if args.scaling:
        return print_scaling()
    failed = False
    for name in args.parser or list(available):
        target = available[name]()
        report = fuzz(target, inputs=args.inputs, seed=args.seed, seconds=args.seconds,
                      bound=args.bound,
                      progress=lambda r: print(f"  ... {r.name} {r.inputs:,} inputs, "
                                               f"{len(r.findings)} findings", flush=True))
        print(line(report), flush=True)
        for finding in report.findings:
            failed = True
            print(f"    {finding.kind}: {finding.summary}  -> {finding.saved}", flush=True)
        if report.slowest:
            cpu, data = report.slowest[0]
            print(f"    slowest input ({cpu * 1000:.1f} ms, {len(data)} bytes): "
                  f"{OUT_DIR / f'fuzz-{name}-slowest.bin'}", flush=True)
    return 1 if failed else 0


def print_scaling() -> int:
    failed = False
    for row in scaling():
        flag = "  <- grows faster than the input" if row.ratio > 8 and row.cpu_4n > 0.05 else ""
        failed = failed or bool(flag)
        print(f"{row.name:24} n={row.n:>6}: {row.cpu_n * 1000:8.1f} ms   4n ({row.size:>8,} "
              f"bytes): {row.cpu_4n * 1000:8.1f} ms   x{row.ratio:5.1f}{flag}", flush=True)
    return 1 if failed else 0


def run_atheris(name: str, inputs: int, bound: float, seed: int) -> int:
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        print("atheris is not installed: .venv/bin/pip install atheris", file=sys.stderr)
        return 2
    atheris.instrument_all()  # coverage of everything imported so far: mailstead.proto
    target = targets()[name]()
    corpus = OUT_DIR / f"atheris-{name}-corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed_input in enumerate(target.seeds):
        (corpus / f"seed-{i}").write_bytes(seed_input)

    def one_input(data: bytes) -> None:
        try:
            target.run(data)
        except target.allowed:
            pass

    atheris.Setup([sys.argv[0], f"-runs={inputs}", f"-timeout={max(1, round(bound))}",
                   f"-seed={seed}", "-max_len=16384", "-rss_limit_mb=4096",
                   f"-artifact_prefix={OUT_DIR}/atheris-{name}-", str(corpus)], one_input)
    atheris.Fuzz()  # exits the process when done
    return 0


if __name__ == "__main__":
    sys.exit(main())
