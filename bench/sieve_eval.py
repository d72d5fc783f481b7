"""CPU-microseconds of one Sieve evaluation, in process, rule by rule: where the cost that
``bench/sieve_ingest.py`` measures at the server comes from (issue 19).

    .venv/bin/python bench/sieve_eval.py [--messages 1000] [--repeat 9]

Evaluates (sieve/interp.py ``evaluate``, a new Context per message, as at delivery) the
bench's 20-rule script, the same script without its body test, an empty script, and each
rule alone, on the messages of ``bench/smtp_ingest.py``. Each figure is the lowest of
``--repeat`` runs of process CPU time, per message. A rule alone includes the parse of the
header (or of the whole message, for the body test) that its first test pays for.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sieve_ingest
import smtp_ingest


def per_message(text: str, messages: list[bytes], repeat: int) -> float:
    """The lowest CPU-microseconds per message over ``repeat`` runs of ``text``."""
    from mailstead.sieve.check import compile_script
    from mailstead.sieve.interp import Context, evaluate

    script = compile_script(text)
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for message in messages:
            ctx = Context(message=message, envelope_from="sender@remote.test",
                          envelope_to=f"user1@{smtp_ingest.DOMAIN}", now=datetime.now(UTC),
                          spam_score=1.0, spam_required=5.0)
            evaluate(script, ctx)
        best = min(best, (time.process_time() - start) / len(messages) * 1e6)
    return best


def rules_of(script: str) -> tuple[str, list[str]]:
    """The script's require line and its rules (each ``if`` with its continuation lines)."""
    lines = script.strip().splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("if"))
    require = "\n".join(lines[:end])
    rules: list[str] = []
    for line in lines[end:]:
        if line.startswith("if"):
            rules.append(line)
        else:
            rules[-1] += "\n" + line
    return require, rules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    messages = [smtp_ingest.make_message(4096, n) for n in range(args.messages)]
    require, rules = rules_of(sieve_ingest.RULES)
    print(f"µs CPU per message (lowest of {args.repeat} runs of {args.messages} messages)")
    print(f"{per_message(sieve_ingest.RULES, messages, args.repeat):7.1f}  the whole script")
    without_body = "\n".join([require, *(r for r in rules if "body :" not in r)])
    print(f"{per_message(without_body, messages, args.repeat):7.1f}  without its body test")
    print(f"{per_message(require, messages, args.repeat):7.1f}  no rule (require only)")
    for rule in rules:
        figure = per_message(require + "\n" + rule, messages, args.repeat)
        print(f"{figure:7.1f}  {rule.splitlines()[0][:80]}")


if __name__ == "__main__":
    main()
