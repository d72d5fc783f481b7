"""The SMTP DATA reader alone (``proto.lines.DotReader``): microseconds per message.

Feeds each kind of message, dot-stuffed and ended by <CRLF>.<CRLF> as a client sends it, in
socket-sized chunks, then ``finish`` (unstuffing, the bare CR/LF check, the line bound), and
prints the median of several runs per kind, split into the reading (``feed``, the search for
the end marker) and ``finish``. No sockets, no server: a before/after of the reader itself.

    PYTHONPATH=src .venv/bin/python bench/dot_reader.py [--size 102400] [--chunk 65536]
    PYTHONPATH=/tmp/old/src .venv/bin/python bench/dot_reader.py   # the code before a change

The kinds: ``xlines`` (what smtp-source sends: 80-column lines of one letter), ``base64``
(an attachment, no dots), ``prose`` (sentences, a dot every few dozen octets), ``short``
(short lines, many line ends), ``dotted`` (every tenth line starts with a dot, so stuffed),
``bare-lf`` (LF line ends, normalised to CRLF).
"""

from __future__ import annotations

import argparse
import base64
import statistics
import time
from collections.abc import Callable

from mailstead.proto.lines import DotReader, dot_stuff

HEADER = (b"Received: from client.example.net (client.example.net [192.0.2.7])\r\n"
          b"\tby mx.example.org with ESMTP id 4QxYz; Mon, 7 Dec 2026 06:00:00 +0000\r\n"
          b"From: Alice <alice@example.net>\r\nTo: bob@example.org\r\n"
          b"Subject: the figures\r\nDate: Mon, 7 Dec 2026 06:00:00 +0000\r\n"
          b"Message-ID: <20261207.1234@client.example.net>\r\nMIME-Version: 1.0\r\n\r\n")


def _repeat(line: bytes, size: int) -> bytes:
    return line * (size // len(line) + 1)


def bodies(size: int) -> dict[str, bytes]:
    """Each kind of message, about ``size`` octets, with CRLF line ends (bare-lf: LF)."""
    b64 = base64.encodebytes(bytes(range(256)) * (size // 256 * 3 // 4 + 1))
    return {
        "xlines": HEADER + _repeat(b"X" * 78 + b"\r\n", size),
        "base64": HEADER + b64.replace(b"\n", b"\r\n")[:size],
        "prose": HEADER + _repeat(b"The figures came in on Monday. They were better than "
                                  b"last week's, by a third. Nobody knew why.\r\n", size),
        "short": HEADER + _repeat(b"ok.\r\n-- \r\n\r\n", size),
        "dotted": HEADER + _repeat(b"line one\r\n" * 9 + b".dot line\r\n", size),
        "bare-lf": (HEADER + _repeat(b"Y" * 70 + b"\r\n", size)).replace(b"\r\n", b"\n"),
    }


def wire(message: bytes) -> bytes:
    """The octets after DATA: stuffed, ended by the marker."""
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return dot_stuff(message) + b".\r\n"


def run_once(data: bytes, chunk: int) -> tuple[float, float]:
    """(seconds feeding, seconds finishing) for one message."""
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    reader = DotReader(50_000_000, bare_newlines="normalize", max_line=1_048_576)
    start = time.perf_counter()
    for piece in pieces:
        reader.feed(piece)
    fed = time.perf_counter()
    outcome = reader.finish()
    done = time.perf_counter()
    assert outcome.problem is None and outcome.content
    return fed - start, done - fed


def median_us(runs: list[tuple[float, float]], pick: Callable[[tuple[float, float]], float]
              ) -> float:
    return statistics.median(pick(r) for r in runs) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100 * 1024)
    parser.add_argument("--chunk", type=int, default=64 * 1024, help="octets per feed")
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    print(f"DotReader, {args.size} octets a message, fed {args.chunk} octets at a time, "
          f"median of {args.runs} runs")
    print(f"  {'kind':10s} {'feed us':>8s} {'finish us':>10s} {'total us':>9s}")
    for kind, message in bodies(args.size).items():
        data = wire(message)
        runs = [run_once(data, args.chunk) for _ in range(args.runs)]
        feed = median_us(runs, lambda r: r[0])
        finish = median_us(runs, lambda r: r[1])
        total = median_us(runs, lambda r: r[0] + r[1])
        print(f"  {kind:10s} {feed:8.1f} {finish:10.1f} {total:9.1f}")


if __name__ == "__main__":
    main()
