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

import os
import shutil
import socket
import sys
import tempfile
import threading
from pathlib import Path

import dns.message
import dns.rcode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
import smtp_ingest

from mailstead.config import deep_merge

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
    args = smtp_ingest.pair_arguments(__doc__)
    workdir = Path(tempfile.mkdtemp(prefix="checks-bench-"))
    dns_server = NxServer()
    root = smtp_ingest.ROOT
    # The servers import the sample plug-in from tests/ by module path.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(root), str(root / "src"), os.environ.get("PYTHONPATH", "")])
    # One worker process each: the two compare on equal terms on a small machine, and
    # --profile sees the process that does the work.
    common = {"delivery": {"resolvers": [f"127.0.0.1:{dns_server.port}"]},
              "spam": {"bayes": False}, "server": {"workers": 1}}
    plugins = {"checks": {
        "modules": ["phase=tests.smtp.check_samples:phase"],
        "phase": {"greylist": ["nobody@nowhere.test"], "refuse_rcpts": ["nobody@x.test"],
                  "spam_word": "never-in-these-messages", "reject_word": "nor-this"},
        "dnsbl": {"zones": ZONES, "phase": "rcpt", "exempt": []},
    }}
    reports: list[smtp_ingest.Report] = []
    try:
        for name in ("on", "off"):
            more = deep_merge(common, plugins if name == "on" else {})
            smtp_ingest.prepare_mailstead(workdir / name, args.users, more)
            server = smtp_ingest.start_mailstead(workdir / name,
                                                 args.profile if name == "on" else None)
            reports.append(smtp_ingest.Report(name, server))
        for report in reports:
            report.rss["idle"] = report.rss["after_idle"] = float("nan")
        smtp_ingest.alternate_rounds(reports, args)
        print(f"\n{args.messages} messages of {args.size} bytes per server, {args.sessions} "
              f"sessions, {args.rounds} alternating rounds; 'on': a 4-hook plug-in and the "
              f"DNSBL check ({len(ZONES)} zones, at RCPT); DNS queries answered: "
              f"{dns_server.queries}")
        smtp_ingest.print_pair(reports, "on / off")
    finally:
        for report in reports:
            report.server.stop()
        dns_server.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
