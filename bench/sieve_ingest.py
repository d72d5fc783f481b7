"""SMTP ingest with a 20-rule Sieve script active for every recipient, against the same server
without scripts (issue 19: the rate may drop by less than 10 %).

Two mailstead servers (subprocesses, SQLite), the same load as bench/smtp_ingest.py (its code):
``--sessions`` concurrent sessions, rounds alternating between the two servers. The script
tests headers, addresses, the envelope, sizes, the spam score and the body; one rule matches
every message (a flag), one files a tenth of them (by subject) into a folder.

    .venv/bin/python bench/sieve_ingest.py [--messages 3000] [--sessions 20] [--rounds 6]
        [--none-first] [--py-spy DIR]

Besides the rates, the CPU per message of the workers and of the message-file helper of each
server. ``--py-spy DIR`` records every process of both servers during each round (the rates
of such a run are not comparable), for bench/profile_top.py. ``--none-first`` starts the
server without scripts first: the order is the one asymmetry left between the two (the
rounds alternate), and on this machine it has shown in runs where neither server had a
script to run.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
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


def _order_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--none-first", action="store_true",
                        help="start the server without scripts first (on this shared machine "
                        "the server started first has measured slower, scripts or not)")


def main() -> None:
    args = smtp_ingest.pair_arguments(__doc__, extra=_order_argument)
    workdir = Path(tempfile.mkdtemp(prefix="sieve-bench-"))
    reports: list[smtp_ingest.Report] = []
    try:
        for name in ("none", "sieve") if args.none_first else ("sieve", "none"):
            smtp_ingest.prepare_mailstead(workdir / name, args.users)
            if name == "sieve":
                from mailstead.sieve.check import compile_script

                compile_script(RULES)  # fails loudly here rather than as log lines
                add_scripts(workdir / name, args.users)
            server = smtp_ingest.start_mailstead(workdir / name,
                                                 args.profile if name == "sieve" else None)
            reports.append(smtp_ingest.Report(f"{name}", server))
        reports.sort(key=lambda r: r.name != "sieve")  # printed sieve first in either order
        if args.idle == 0:
            for report in reports:
                report.rss["idle"] = report.rss["after_idle"] = float("nan")
        smtp_ingest.alternate_rounds(reports, args)
        print(f"\n{args.messages} messages of {args.size} bytes per server, {args.sessions} "
              f"sessions, {args.users} recipients each with (sieve) or without (none) a "
              f"20-rule script, {args.rounds} alternating rounds")
        smtp_ingest.print_pair(reports, "sieve / none")
    finally:
        for report in reports:
            report.server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
