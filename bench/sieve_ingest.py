"""SMTP ingest with a 20-rule Sieve script active for every recipient, against the same server
without scripts (issue 19: the rate may drop by less than 10 %).

Four mailstead servers (subprocesses, SQLite, one hash seed), two with the script for every
user (sieve-1, sieve-2) and two without (none-1, none-2), started sieve-1 none-1 none-2
sieve-2 (A B B A: starting first, which has looked like a handicap on this machine, is no
one kind's). The load is bench/smtp_ingest.py's client: ``--sessions`` SMTP sessions to each
server, opened once and kept open, ``--messages`` messages per server
sent in ``--slices`` short slices per server, the servers taking turns, forward then back
(A B C D D C B A ...). The script tests headers, addresses, the envelope, sizes, the spam
score and the body; one rule matches every message (a flag), one files a tenth of them (by
subject) into a folder.

    .venv/bin/python bench/sieve_ingest.py [--messages 4800] [--sessions 20] [--slices 32]
        [--none-first] [--aa] [--script FILE] [--py-spy DIR]

Printed, per kind: messages per second, latency, CPU per message of the workers and of the
message-file helper; then sieve over none: the rate (the issue's figure) as all messages
over all time and as the median (with quartiles) of the ratios of the paired slices (sieve-n
against none-n, run next to each other), and the same for the CPU per message (the servers'
own work, which the other processes of this shared machine disturb less than the rate).
``--aa``: no server has a script, what the bench reads when there is no difference.
``--script FILE`` runs that script instead of the 20 rules (what costs what).
``--py-spy DIR`` records every worker and message-file helper over all the slices (the rates
of such a run are not comparable), for bench/profile_top.py. ``--none-first`` starts none-1
first (none-1 sieve-1 sieve-2 none-2).
"""

from __future__ import annotations

import argparse
import asyncio
import os
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


def add_scripts(data_dir: Path, users: int, text: str = RULES) -> None:
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
                await sieve_store(store).put_sieve_script(account.id, "rules", text)
                await sieve_store(store).set_active_sieve_script(account.id, "rules")
        finally:
            await store.close()

    asyncio.run(setup())


def _own_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--none-first", action="store_true",
                        help="start a server without scripts first")
    parser.add_argument("--script", metavar="FILE",
                        help="this script instead of the 20 rules (to tell what costs what)")
    parser.add_argument("--aa", action="store_true",
                        help="no script on either server (A/A): what the bench reads when "
                        "there is no difference")


def main() -> None:
    args = smtp_ingest.pair_arguments(__doc__, extra=_own_arguments, slices=True)
    workdir = Path(tempfile.mkdtemp(prefix="sieve-bench-"))
    # Every server hashes alike (dict and set layouts): one less difference between them
    # that is not the script.
    os.environ["PYTHONHASHSEED"] = "1"
    # Two servers of each kind, started A B B A: the order of starting is no advantage to
    # either kind (it has looked like one on this machine, with no script on either side).
    kinds = ("none", "sieve") if args.none_first else ("sieve", "none")
    order = [kinds[0], kinds[1], kinds[1], kinds[0]]
    sides: list[smtp_ingest.SliceSide] = []
    text = Path(args.script).read_text() if args.script else RULES
    try:
        for n, kind in enumerate(order):
            name = f"{kind}-{1 + order[:n].count(kind)}"
            smtp_ingest.prepare_mailstead(workdir / name, args.users)
            if kind == "sieve" and not args.aa:
                from mailstead.sieve.check import compile_script

                compile_script(text)  # fails loudly here rather than as log lines
                add_scripts(workdir / name, args.users, text)
            sides.append(smtp_ingest.SliceSide(name, smtp_ingest.start_mailstead(workdir / name,
                                                                                 None)))
        asyncio.run(smtp_ingest.run_slices(sides, args))
        sieve = [s for s in sides if s.name.startswith("sieve")]
        none = [s for s in sides if s.name.startswith("none")]
        print(f"\n{args.messages} messages of {args.size} bytes per server, {args.sessions} "
              f"sessions kept open each, {args.users} recipients each with (sieve) or without "
              f"(none) a 20-rule script{' (--aa: none has one)' if args.aa else ''}"
              f"{f' (--script {args.script})' if args.script else ''}; 4 servers started "
              f"{' '.join(s.name for s in sides)}, taking turns in {args.slices} slices each")
        smtp_ingest.print_slices(smtp_ingest.SliceGroup("sieve", sieve),
                                 smtp_ingest.SliceGroup("none", none),
                                 # (sieve-n's slices ran next to none-n's)
                                 list(zip(sieve, none, strict=True)),
                                 "sieve / none")
    finally:
        for side in sides:
            side.server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
