"""Summarise py-spy collapsed stacks (``--format raw``): where the samples are.

    .venv/bin/python bench/profile_top.py PROFILE.txt [more.txt ...] [--top 40] [--match TEXT]

Prints the functions with the most samples of their own (self) and the most samples anywhere
on the stack (inclusive), as a share of all samples. ``--match`` keeps only stacks that pass
through a frame containing TEXT (e.g. ``imap_cmd_fetch``), to look inside one command.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# py-spy's frame text: "function (path/to/file.py:line)"; the line is dropped so that one
# function is one row.
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("/mailstead/", "/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--match", default=None)
    args = parser.parse_args()
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for name in args.files:
        for line in Path(name).read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            frames = stack.split(";")
            if args.match and not any(args.match in f for f in frames):
                continue
            count = int(count_text)
            total += count
            names = [frame_name(f) for f in frames if not f.startswith("process ")]
            if names:
                own[names[-1]] += count
            for n in set(names):
                anywhere[n] += count
    if not total:
        raise SystemExit("no samples")
    print(f"{total} samples" + (f" through {args.match!r}" if args.match else ""))
    for title, counter in (("self", own), ("inclusive", anywhere)):
        print(f"\n{title}:")
        for n, count in counter.most_common(args.top):
            print(f"  {100 * count / total:5.1f}%  {n}")


if __name__ == "__main__":
    main()
