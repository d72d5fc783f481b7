"""What real-world mail costs to take in and pass on (issue 22): the pure steps, timed.

- DATA end: ``DotReader`` over an LF-only message (unstuffing, normalising to CRLF, the line
  bound), against the same message already in CRLF. This runs on the session's event loop.
- ``has_long_lines``: the check every message with a remote recipient gets (on the loop).
- ``shorten_long_lines``: re-encoding before signing (in a worker thread), for a message with
  one long HTML line and one with many.

    .venv/bin/python bench/long_lines.py [--size 20000000] [--rounds 5]

Printed: the best of ``--rounds`` in milliseconds, and MB/s.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from mailstead.proto import mime, mime_encoding
from mailstead.proto.lines import MAX_LINE_DEFAULT, DotReader, dot_stuff


def best(rounds: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def read_data(wire: bytes) -> None:
    reader = DotReader(len(wire) * 2, bare_newlines="normalize", max_line=MAX_LINE_DEFAULT)
    reader.feed(wire)
    assert reader.done
    assert reader.finish().problem is None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=20_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    line = b"Some text of an ordinary line, about seventy octets long, as mail is.\n"
    body = line * (args.size // len(line))
    lf = b"Subject: lf\n\n" + body
    crlf = lf.replace(b"\n", b"\r\n")
    html_line = b"<p>" + b"word " * (900_000 // 5) + b"</p>\r\n"
    one_long = (b"Subject: one\r\nContent-Type: text/html\r\n\r\n" + html_line)
    many_long = (b"Subject: many\r\nContent-Type: text/html\r\n\r\n"
                 + html_line * max(1, args.size // len(html_line)))
    cases: list[tuple[str, int, Callable[[], object]]] = [
        ("DATA end, LF-only message", len(lf),
         lambda: read_data(dot_stuff(lf) + b"\r\n.\r\n")),
        ("DATA end, CRLF message", len(crlf),
         lambda: read_data(dot_stuff(crlf) + b".\r\n")),
        ("has_long_lines, CRLF message", len(crlf),
         lambda: mime_encoding.has_long_lines(crlf)),
        ("shorten_long_lines, one 900 kB line", len(one_long),
         lambda: mime_encoding.shorten_long_lines(one_long, mime.parse(one_long))),
        ("shorten_long_lines, many 900 kB lines", len(many_long),
         lambda: mime_encoding.shorten_long_lines(many_long, mime.parse(many_long))),
    ]
    for name, size, work in cases:
        seconds = best(args.rounds, work)
        print(f"{name:40s} {size / 1e6:7.1f} MB  {seconds * 1000:8.1f} ms  "
              f"{size / 1e6 / seconds:8.0f} MB/s")


if __name__ == "__main__":
    main()
