"""SMTP ingest with a 20-rule Sieve script active for every recipient, against the same server
without scripts (issue 19: the rate may drop by less than 10 %).

Two mailstead servers (subprocesses, SQLite), the same load as bench/smtp_ingest.py (its code):
``--sessions`` concurrent sessions, rounds alternating between the two servers. The script
tests headers, addresses, the envelope, sizes, the spam score and the body; one rule matches
every message (a flag), one files a tenth of them (by subject) into a folder.

    .venv/bin/python bench/sieve_ingest.py [--messages 3000] [--sessions 20] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import smtp_ingest

RULES = r'''require ["fileinto", "imap4flags", "envelope", "relational",
         "comparator-i;ascii-numeric", "spamtest", "body", "variables", "mailbox"];
if header :contains "subject" "[announce]" { fileinto :create "Announce"; stop; }
if address :domain "from" "lists.example.org" { fileinto :create "Lists"; stop; }
if header :is "list-id" "<dev.example.org>" { fileinto :create "Dev"; stop; }
if envelope :domain "from" "partner.example" { addflag "$Partner"; }
if header :matches "subject" "*invoice #*" { fileinto :create "Invoices"; stop; }
if size :over 5M { addflag "$Big"; }
if spamtest :value "ge" :comparator "i;ascii-numeric" "9" { fileinto "Junk"; stop; }
if header :contains "x-mailer" "BulkMailer" { discard; stop; }
if address :localpart "to" "billing" { fileinto :create "Billing"; stop; }
if header :contains ["cc", "to"] "board@example.org" { addflag "\\Flagged"; }
if exists "x-priority" { addflag "$Priority"; }
if header :value "ge" :comparator "i;ascii-numeric" "x-score" "50" { addflag "$High"; }
if anyof (header :contains "subject" "urgent", header :contains "subject" "asap")
    { addflag "\\Flagged"; }
if allof (address :is "from" "boss@example.org", not header :contains "subject" "fyi")
    { addflag "$Boss"; }
if header :matches "subject" "Re: *" { set "thread" "${1}"; }
if address :domain "from" "remote.test" { addflag "$Remote"; }
if header :contains "subject" "message 7" { fileinto :create "Sevens"; }
if body :contains "unsubscribe here" { fileinto :create "Newsletters"; stop; }
if header :contains "subject" "newsletter" { fileinto :create "Newsletters"; stop; }
if envelope :localpart "to" "postmaster" { fileinto :create "Admin"; }
'''


def add_scripts(data_dir: Path, users: int) -> None:
    from mailstead.config import load_config
    from mailstead.sieve.service import sieve_store
    from mailstead.store.factory import make_metadata_store

    async def setup() -> None:
        store = make_metadata_store(load_config(data_dir))
        await store.open()
        try:
            for i in range(users):
                account = await store.get_account(f"user{i}@{smtp_ingest.DOMAIN}")
                assert account is not None
                await sieve_store(store).put_sieve_script(account.id, "rules", RULES)
                await sieve_store(store).set_active_sieve_script(account.id, "rules")
        finally:
            await store.close()

    asyncio.run(setup())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--idle", type=int, default=0)
    parser.add_argument("--profile", help="run the server with scripts under cProfile, "
                                          "writing this file")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sieve-bench-"))
    reports: list[smtp_ingest.Report] = []
    try:
        for name in ("sieve", "none"):
            smtp_ingest.prepare_mailstead(workdir / name, args.users)
            if name == "sieve":
                from mailstead.sieve.check import compile_script

                compile_script(RULES)  # fails loudly here rather than as log lines
                add_scripts(workdir / name, args.users)
            server = smtp_ingest.start_mailstead(workdir / name,
                                                 args.profile if name == "sieve" else None)
            reports.append(smtp_ingest.Report(f"{name}", server))
        if args.idle == 0:
            for report in reports:
                report.rss["idle"] = report.rss["after_idle"] = float("nan")
        measure(reports, args)
        print(f"\n{args.messages} messages of {args.size} bytes per server, {args.sessions} "
              f"sessions, {args.users} recipients each with (sieve) or without (none) a "
              f"20-rule script, {args.rounds} alternating rounds")
        for r in reports:
            print(f"{r.name:<6} {r.result.rate:8.0f} msgs/s  p50 {r.result.percentile(0.5):6.1f}"
                  f" ms  p99 {r.result.percentile(0.99):6.1f} ms  CPU "
                  f"{r.cpu_ms_per_message:5.2f} ms/msg  rounds: "
                  f"{', '.join(f'{x:.0f}' for x in r.rounds)}")
        sieve, none = reports
        pairs = [a / b for a, b in zip(sieve.rounds, none.rounds, strict=True) if b]
        print(f"\nsieve / none: {sieve.result.rate / none.result.rate:.3f}x messages per second"
              f" (median of the rounds' ratios {statistics.median(pairs):.3f}x); CPU per "
              f"message {sieve.cpu_ms_per_message / none.cpu_ms_per_message:.3f}x")
    finally:
        for report in reports:
            report.server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def measure(reports: list[smtp_ingest.Report], args: argparse.Namespace) -> None:
    for report in reports:
        asyncio.run(smtp_ingest.run_load(report.server.port, args.warmup, args.sessions,
                                         args.size, args.users))
    per_round = [args.messages // args.rounds] * args.rounds
    for n, messages in enumerate(per_round):
        for report in reports if n % 2 == 0 else reports[::-1]:
            report.run_round(messages, args)


if __name__ == "__main__":
    main()
