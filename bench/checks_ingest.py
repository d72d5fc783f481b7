"""SMTP ingest with plug-in checks on, against the same server with none (issue 21 item 6).

Two mailstead servers (subprocesses, SQLite), the load of bench/smtp_ingest.py (its code),
rounds alternating between them. "on" runs a plug-in with all four hooks (tests/smtp/
check_samples.py PhaseCheck: lists to look through at MAIL/RCPT, a header field and a score at
DATA) and the DNSBL check at RCPT (so once per message, not once per session) with two zones.
Both servers ask the same small DNS server on loopback (dnspython, in a thread of this script:
NXDOMAIN for every name, as a blocklist answers for a clean client), which SPF asks too.

    .venv/bin/python bench/checks_ingest.py [--messages 3000] [--sessions 20] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
from pathlib import Path

import dns.message
import dns.rcode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import smtp_ingest

ZONES = ["bl-one.bench.test", "bl-two.bench.test"]


class NxServer:
    """Answers every query with NXDOMAIN; counts them."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.queries = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:
                continue
            self.queries += 1
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self.sock.close()


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
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="checks-bench-"))
    dns_server = NxServer()
    root = smtp_ingest.ROOT
    # The servers import the sample plug-in from tests/ by module path.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(root), str(root / "src"), os.environ.get("PYTHONPATH", "")])
    common = {"delivery": {"resolvers": [f"127.0.0.1:{dns_server.port}"]},
              "spam": {"bayes": False}}
    plugins = {"checks": {
        "modules": ["phase=tests.smtp.check_samples:phase"],
        "phase": {"greylist": ["nobody@nowhere.test"], "refuse_rcpts": ["nobody@x.test"],
                  "spam_word": "never-in-these-messages", "reject_word": "nor-this"},
        "dnsbl": {"zones": ZONES, "phase": "rcpt", "exempt": []},
    }}
    reports: list[smtp_ingest.Report] = []
    try:
        for name in ("on", "off"):
            more = smtp_ingest_merge(common, plugins if name == "on" else {})
            smtp_ingest.prepare_mailstead(workdir / name, args.users, more)
            server = smtp_ingest.start_mailstead(workdir / name, None)
            reports.append(smtp_ingest.Report(name, server))
        for report in reports:
            report.rss["idle"] = report.rss["after_idle"] = float("nan")
        for report in reports:
            asyncio.run(smtp_ingest.run_load(report.server.port, args.warmup, args.sessions,
                                             args.size, args.users))
        per_round = [args.messages // args.rounds] * args.rounds
        for n, messages in enumerate(per_round):
            for report in reports if n % 2 == 0 else reports[::-1]:
                report.run_round(messages, args)
        print(f"\n{args.messages} messages of {args.size} bytes per server, {args.sessions} "
              f"sessions, {args.rounds} alternating rounds; 'on': a 4-hook plug-in and the "
              f"DNSBL check ({len(ZONES)} zones, at RCPT); DNS queries answered: "
              f"{dns_server.queries}")
        for r in reports:
            print(f"{r.name:<4} {r.result.rate:8.0f} msgs/s  p50 {r.result.percentile(0.5):6.1f}"
                  f" ms  p99 {r.result.percentile(0.99):6.1f} ms  CPU "
                  f"{r.cpu_ms_per_message:5.2f} ms/msg  rounds: "
                  f"{', '.join(f'{x:.0f}' for x in r.rounds)}")
        on, off = reports
        pairs = [a / b for a, b in zip(on.rounds, off.rounds, strict=True) if b]
        print(f"\non / off: {on.result.rate / off.result.rate:.3f}x messages per second "
              f"(median of the rounds' ratios {statistics.median(pairs):.3f}x); CPU per "
              f"message {on.cpu_ms_per_message / off.cpu_ms_per_message:.3f}x")
    finally:
        for report in reports:
            report.server.stop()
        dns_server.close()
        shutil.rmtree(workdir, ignore_errors=True)


def smtp_ingest_merge(a: dict[str, object], b: dict[str, object]) -> dict[str, object]:
    from mailstead.config import deep_merge

    return deep_merge(a, b)


if __name__ == "__main__":
    main()
