"""Server CPU per IMAP command, one session, one command at a time: mailstead and Dovecot.

    .venv/bin/python bench/imap_per_command.py [--repeat 400] [--inbox 300] [--only NOOP,STATUS]

Starts the same private servers as ``bench/imap_vs_dovecot.py`` (whose helpers it uses), fills
one user's INBOX with ``--inbox`` messages over IMAP, SELECTs it and sends each command of a
fixed list ``--repeat`` times in a row, waiting for each answer. It prints the servers'
CPU-microseconds per command (every process of the server; /proc's clock ticks, so
``--repeat`` sets the resolution: 400 repeats, 25 µs) and the ratio mailstead/Dovecot. The
mixed-load figures stay ``bench/imap_vs_dovecot.py``'s; this one tells which command costs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from imap_vs_dovecot import (
    DOVECOT,
    PASSWORD,
    Client,
    Server,
    append_all,
    free_port,
    mailstead_config,
    message,
    populate_mailstead,
    start_dovecot,
    start_mailstead,
    tree_cpu,
    user_name,
)

from mailstead import bootstrap

COMMANDS = (  # (name, command; {one}: a UID, {sign}: + or -, {last25}: the last 25 UIDs)
    ("NOOP", "NOOP"),
    ("CHECK", "CHECK"),
    ("STATUS", "STATUS INBOX (MESSAGES UNSEEN UIDNEXT)"),
    ("FETCH 1:* FLAGS", "UID FETCH 1:* (FLAGS)"),
    ("FETCH 25 envelopes", "UID FETCH {last25} (UID RFC822.SIZE FLAGS INTERNALDATE ENVELOPE "
                           "BODYSTRUCTURE)"),
    ("FETCH BODY[]", "UID FETCH {one} (BODY.PEEK[])"),
    ("STORE +FLAGS.SILENT \\Seen", "UID STORE {one} +FLAGS.SILENT (\\Seen)"),
    ("STORE ±FLAGS \\Flagged", "UID STORE {one} {sign}FLAGS (\\Flagged)"),
    ("SEARCH UNSEEN", "UID SEARCH UNSEEN"),
    ("SEARCH SUBJECT", "UID SEARCH SUBJECT report"),
    ("SELECT", "SELECT INBOX"),
    ("APPEND", "APPEND"),
)


async def per_command(server: Server, user: str, inbox: int, repeat: int,
                      only: set[str] | None) -> dict[str, float]:
    client = await Client.connect(server.port)
    await client.command(f'LOGIN {user} "{PASSWORD}"')
    await client.command("SELECT INBOX")
    out: dict[str, float] = {}
    for name, template in COMMANDS:
        if only is not None and not any(name.startswith(o) for o in only):
            continue
        texts = [template.format(one=1 + n % inbox, sign="+-"[n % 2],
                                 last25=f"{inbox - 24}:{inbox}") for n in range(repeat)]
        appended: list[int] = []
        cpu0 = tree_cpu(server.proc.pid)
        for n, text in enumerate(texts):
            if text == "APPEND":
                answer = await client.command("APPEND INBOX (\\Seen)",
                                              message(2_000_000 + n, user))
                appended.append(int(answer.split(b"APPENDUID ")[1].split()[1].rstrip(b"]")))
            else:
                await client.command(text)
        out[name] = (tree_cpu(server.proc.pid) - cpu0) / repeat * 1e6
        if appended:  # back to --inbox messages for the commands after
            await client.command(f"UID STORE {appended[0]}:* +FLAGS.SILENT (\\Deleted)")
            await client.command(f"UID EXPUNGE {appended[0]}:*")
    await client.command("LOGOUT")
    client.close()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=400)
    parser.add_argument("--inbox", type=int, default=300)
    parser.add_argument("--only", default="", help="comma-separated command name prefixes")
    parser.add_argument("--workers", type=int, default=None,
                        help="mailstead's [server] workers (1: one process, for cProfile)")
    args = parser.parse_args()
    only = {o.strip() for o in args.only.split(",") if o.strip()} or None
    if not os.path.exists(DOVECOT):
        raise SystemExit(f"{DOVECOT} not found: install Debian's dovecot-imapd")
    users = [user_name(0)]
    with tempfile.TemporaryDirectory(prefix="imap-per-command-") as tmp:
        top = Path(tmp)
        (top / "mailstead").mkdir()
        (top / "dovecot").mkdir()
        cfg = mailstead_config(top / "mailstead", free_port(), args.workers)
        await bootstrap.initialise(cfg, demo_domain=None)
        await populate_mailstead(cfg, users, 0)
        servers = [start_mailstead(top / "mailstead", cfg.listeners["imap"].port),
                   start_dovecot(top / "dovecot", users, "default")]
        try:
            results = {}
            for server in servers:
                await append_all(server.port, users, args.inbox)
                await per_command(server, users[0], args.inbox, 20, only)  # warm up
                results[server.name] = await per_command(server, users[0], args.inbox,
                                                         args.repeat, only)
        finally:
            for server in servers:
                server.stop()
    print(f"server CPU µs per command, {args.repeat} in a row, one session, "
          f"{args.inbox}-message INBOX (load average {os.getloadavg()[0]:.1f}, "
          f"{time.strftime('%H:%M')})")
    ms, dc = results["mailstead"], results["dovecot"]
    for name in ms:
        ratio = dc[name] / ms[name] if ms[name] else float("inf")
        print(f"  {name:<36} mailstead {ms[name]:7.0f}  dovecot {dc[name]:7.0f}  "
              f"CPU ratio {ratio:4.2f}")


if __name__ == "__main__":
    asyncio.run(main())
