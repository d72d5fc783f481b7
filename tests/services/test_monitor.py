"""``mailstead monitor``: two real ``serve`` nodes report over UDP to one real monitor, which
counts per server, per address and per protocol; malformed datagrams are counted and dropped."""

from __future__ import annotations

import io
import json
import re
import smtplib
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from mailstead.monitor.datagrams import MAX_DATAGRAM, parse_datagram, parse_line
from mailstead.monitor.tally import Tally
from mailstead.monitor.view import render
from mailstead.services.metrics import MessageEvents, hide_local_part
from tests.conftest import ServeProcess, mailstead_cmd
from tests.smtp.helpers import ALICE, BOB
from tests.smtp.test_crash import prepare


@pytest.fixture
def monitor() -> Iterator[tuple[int, str]]:
    proc = subprocess.Popen(
        mailstead_cmd("monitor", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0",
                      "--no-live"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.match(r"monitor listening udp 127\.0\.0\.1:(\d+) http (127\.0\.0\.1:\d+)",
                         line)
        assert found, (line, proc.stderr.read() if proc.poll() is not None else "")
        yield int(found.group(1)), f"http://{found.group(2)}"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def stats(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/stats.json", timeout=10) as response:
        data: dict[str, Any] = json.load(response)
        return data


def wait_for(base: str, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        snapshot = stats(base)
        if ready(snapshot):
            return snapshot
        assert time.monotonic() < deadline, json.dumps(snapshot, indent=1)[:3000]
        time.sleep(0.2)


def send(port: int, sender: str, recipients: list[str], subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.sendmail(sender, recipients,
                      f"From: {sender}\r\nSubject: {subject}\r\n\r\nhello\r\n".encode())


def message_total(snapshot: dict[str, Any], server: str) -> float:
    counters = snapshot["servers"].get(server, {}).get("counters", {})
    return float(counters.get("total", {}).get("message", 0))


def test_two_nodes_report_to_one_monitor(
    tmp_path: Path, tls_files: tuple[Path, Path], monitor: tuple[int, str],
    serve_process: Callable[..., ServeProcess],
) -> None:
    udp_port, base = monitor
    nodes = {}
    for name, addresses in (("node-a", "plain"), ("node-b", "hashed")):
        cfg = prepare(tmp_path / name, {"metrics": {
            "monitor": f"127.0.0.1:{udp_port}", "monitor_interval": 0.2, "node_name": name,
            "monitor_addresses": addresses}}, tls_files)
        nodes[name] = serve_process(cfg.data_dir, "smtp=127.0.0.1:0").ports["smtp"]
    send(nodes["node-a"], "carol@remote.test", [ALICE, BOB], "one")
    send(nodes["node-a"], "carol@remote.test", [ALICE], "two")
    send(nodes["node-b"], "dave@remote.test", [ALICE], "three")

    snapshot = wait_for(base, lambda s: message_total(s, "node-a") == 3
                        and message_total(s, "node-b") == 1)
    # Per server: the message events and the node's own figures (events, gauges).
    a = snapshot["servers"]["node-a"]
    assert a["counters"]["1m"]["message"] == 3
    assert a["counters"]["total"]["events.smtp.transaction"] == 2
    assert a["gauges"]["accounts"] == 2
    # Per address: node-a names them; node-b hides local parts and keeps the domain.
    addresses = snapshot["addresses"]
    assert addresses[ALICE]["total"] == {"received": 2}
    assert addresses[BOB]["total"] == {"received": 1}
    assert addresses["carol@remote.test"]["total"] == {"sent": 3}
    hidden = hide_local_part(ALICE)
    assert hidden.endswith("@example.test") and addresses[hidden]["total"] == {"received": 1}
    assert "dave@remote.test" not in addresses
    # Per protocol: the listener the mail came in on.
    assert snapshot["protocols"]["total"] == {"smtp": 4}

    # Prometheus text, as a scraper reads it.
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'mailstead_monitor_server_events_total{metric="message",server="node-a"} 3.0' in text
    assert 'mailstead_monitor_messages_total{protocol="smtp"} 4.0' in text
    # The web page and the terminal view show the same tables.
    with urllib.request.urlopen(f"{base}/", timeout=10) as response:
        page = response.read().decode()
    assert "<td>node-a</td>" in page and f"<td>{ALICE}</td>" in page
    console = Console(width=160, record=True, file=io.StringIO())
    console.print(render(snapshot))
    shown = console.export_text()
    assert "node-a" in shown and "node-b" in shown and "carol@remote.test" in shown


def test_malformed_and_oversized_datagrams_are_counted_and_dropped(
    monitor: tuple[int, str],
) -> None:
    udp_port, base = monitor
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for junk in (b"\xff\xfe not utf-8", b"x" * (MAX_DATAGRAM + 1), b"no value here",
                     b"a:1|zz", b"a:nan|c", b"a:1|c|#" + b"t:v," * 40,
                     # one good line beside a bad one: the good one counts
                     b"ms.message:1|c|#node:n1,proto:smtp\nbroken line"):
            sock.sendto(junk, ("127.0.0.1", udp_port))
    snapshot = wait_for(base, lambda s: s["malformed"] >= 7 and message_total(s, "n1") == 1)
    assert snapshot["malformed"] == 7
    assert snapshot["protocols"]["total"] == {"smtp": 1}


def test_statsd_line_format() -> None:
    sample = parse_line("ms.events.smtp.transaction:3|c|@0.5|#node:mx1,proto:smtp")
    assert sample is not None and sample.value == 6 and sample.kind == "c"
    assert sample.tags == {"node": "mx1", "proto": "smtp"}
    assert parse_line("ms.accounts:12|g") is not None
    for bad in ("", ":1|c", "a:1", "a:x|c", "a:1|c|@2", "a:1|c|extra", "a b:1|c", "a:inf|g"):
        assert parse_line(bad) is None, bad
    samples, bad_count = parse_datagram(b"a:1|c\r\n\nb:2|g\n:::")
    assert [s.name for s in samples] == ["a", "b"] and bad_count == 1


def test_windows_forget_what_is_older_than_an_hour() -> None:
    tally = Tally()
    samples, _ = parse_datagram(b"ms.message:1|c|#node:n,proto:smtp,to:x@y.test")
    tally.record(samples, "127.0.0.1:1", 1000.0)
    tally.record(samples, "127.0.0.1:1", 1000.0 + 120)
    snap = tally.snapshot(1000.0 + 130)
    assert snap["protocols"]["1m"] == {"smtp": 1} and snap["protocols"]["1h"] == {"smtp": 2}
    snap = tally.snapshot(1000.0 + 3700)
    assert snap["protocols"]["1h"] == {"smtp": 1} and snap["protocols"]["total"] == {"smtp": 2}
    later = tally.snapshot(1000.0 + 7300)
    assert later["protocols"]["1h"] == {} and later["addresses"]["x@y.test"]["total"] == {
        "received": 2}


def test_message_events_are_bounded_and_hide_addresses() -> None:
    events = MessageEvents("ms", "hashed")
    for _ in range(10_005):
        events("smtp.transaction", {"code": 250, "listener": "smtp", "sender": "<a@b.test>",
                                    "recipients": "c@d.test"})
    events("smtp.transaction", {"code": 550, "listener": "smtp", "sender": "<x@y.test>",
                                "recipients": "c@d.test"})
    lines = events.drain()
    assert len(lines) == 10_001 and lines[-1] == "ms.message:5|c|#proto:unlisted,dir:in"
    assert "a@b.test" not in lines[0] and "@b.test" in lines[0]
    assert events.drain() == []


def test_gauges_of_a_node_s_workers_add_up_where_they_are_per_process() -> None:
    tally = Tally()
    for worker, connections in (("0", 3), ("1", 4)):
        samples, _ = parse_datagram(
            f"ms.connections_open:{connections}|g|#node:n,worker:{worker}\n"
            f"ms.queue_messages:7|g|#node:n,worker:{worker}".encode())
        tally.record(samples, "127.0.0.1:1", 1000.0)
    gauges = tally.snapshot(1000.0)["servers"]["n"]["gauges"]
    assert gauges == {"connections_open": 7, "queue_messages": 7}
