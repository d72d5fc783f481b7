"""Monitoring: Prometheus metrics at /metrics (read with curl, as a scraper does) and StatsD
usage reports over UDP to a listener of ours on 127.0.0.1."""

from __future__ import annotations

import smtplib
import socket
import subprocess
import time
from collections.abc import Callable

from mailstead.obs import EVENT_COUNTS
from mailstead.services.metrics import datagrams
from tests.conftest import RunningServer, require_binary
from tests.smtp.helpers import message
from tests.web.conftest import ALICE, base_url


def curl(url: str, *extra: str) -> tuple[int, str]:
    """(HTTP status, body) of a GET with Debian's curl."""
    result = subprocess.run(
        [require_binary("curl"), "-sS", "-w", "\n%{http_code}", *extra, url],
        capture_output=True, timeout=60, text=True,
    )
    assert result.returncode == 0, result.stderr
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


def send_one(server: RunningServer, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as smtp:
        smtp.sendmail("carol@remote.test", [ALICE], message(subject))


def test_prometheus_reads_counters_and_gauges(web_server: RunningServer) -> None:
    send_one(web_server, "counted")
    status, text = curl(f"{base_url(web_server)}/metrics")
    assert status == 200
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines()
                   if line and not line.startswith("#"))
    assert float(samples['mailstead_events_total{event="smtp.transaction"}']) >= 1
    assert float(samples["mailstead_accounts"]) == 3  # alice, bob and the admin
    assert float(samples["mailstead_domains"]) == 1
    assert samples["mailstead_queue_messages"] == "0.0"
    assert "# TYPE mailstead_events_total counter" in text
    assert float(samples["process_resident_memory_bytes"]) > 0


def test_metrics_from_elsewhere_need_the_token(
    make_server: Callable[..., RunningServer],
) -> None:
    """With loopback not in allow_from, this client stands for any outside address."""
    server = make_server(metrics={"allow_from": [], "token": "scrape-secret"})
    url = f"{base_url(server)}/metrics"
    status, text = curl(url)
    assert status == 403 and "metrics.token" in text
    assert curl(url, "-H", "Authorization: Bearer wrong")[0] == 403
    status, text = curl(url, "-H", "Authorization: Bearer scrape-secret")
    assert status == 200 and "mailstead_uptime_seconds" in text


def test_metrics_can_be_turned_off(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(metrics={"prometheus": False})
    status, text = curl(f"{base_url(server)}/metrics")
    assert status == 404 and "metrics.prometheus" in text


def test_statsd_reports_counter_deltas_and_gauges(
    make_server: Callable[..., RunningServer],
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(10)
        port = sink.getsockname()[1]
        server = make_server(metrics={"statsd": f"127.0.0.1:{port}", "statsd_interval": 0.2,
                                      "statsd_prefix": "ms"})
        # The first report counts everything since this (test) process began.
        expected = EVENT_COUNTS["smtp.transaction"] + 2
        send_one(server, "one")
        send_one(server, "two")
        deltas: list[int] = []
        gauges: dict[str, str] = {}
        deadline = time.monotonic() + 20
        # A report spans several datagrams when many events were logged (a whole test run):
        # the gauges may come in a later one than the counter.
        while sum(deltas) < expected or "ms.accounts" not in gauges:
            assert time.monotonic() < deadline, "no StatsD report counted both messages"
            for line in sink.recv(65536).decode().splitlines():
                name, _, value = line.partition(":")
                if name == "ms.events.smtp.transaction":
                    assert value.endswith("|c")
                    deltas.append(int(value.removesuffix("|c")))
                elif value.endswith("|g"):
                    gauges[name] = value
        # Deltas, not totals: they add up to the count however the reports fell.
        assert sum(deltas) == expected
        assert gauges["ms.accounts"] == "2|g" and gauges["ms.queue_messages"] == "0|g"


def test_reports_fill_datagrams_without_splitting_a_line() -> None:
    lines = [f"mailstead.events.e{n}:1|c" for n in range(200)]
    packets = datagrams(lines, size=100)
    assert all(len(p) <= 100 for p in packets)
    assert b"\n".join(packets).decode().splitlines() == lines
