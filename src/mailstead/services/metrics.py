"""Monitoring: this process's usage figures, as Prometheus metrics and as StatsD reports.

One source of figures (``statistics``) feeds the admin console, the JSON API, ``/metrics``
and StatsD, so they never disagree. Counters count since the process started: one per log
event (``obs.EVENT_COUNTS``: ``smtp.transaction``, ``auth.failed``, ``queue.attempt``...).
Gauges say what is happening now: the outbound queue, open connections, accounts.

StatsD gets the counters as deltas since the last report (``|c``) and the gauges as values
(``|g``), every ``metrics.statsd_interval`` seconds over UDP, several lines a datagram.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from mailstead.config import MetricsConfig, host_and_port
from mailstead.obs import EVENT_COUNTS, EVENT_TAPS, log_event
from mailstead.services import spam_log
from mailstead.store.interfaces import MetadataStore

DATAGRAM_SIZE = 1400  # bytes: below a typical MTU, so a report is never fragmented


def _sum(prefixes: tuple[str, ...], names: tuple[str, ...] = ()) -> int:
    return sum(n for event, n in EVENT_COUNTS.items()
               if event in names or any(event.startswith(p) for p in prefixes))


async def statistics(
    store: MetadataStore, connections: Mapping[str, int], started: float
) -> dict[str, Any]:
    """Counters since this process started (at ``started``, a time.time()), and what is
    happening now: ``connections`` are the open ones by protocol."""
    queue = await store.list_queue(False)
    spam_counts, spam_recent = await spam_log.panel(store)  # every node's, from the store
    return {
        "uptime_seconds": int(time.time() - started),
        "messages_in": _sum((), ("smtp.transaction", "dmtp.delivered")),
        "messages_sent_web": EVENT_COUNTS.get("web.sent", 0),
        "messages_out": EVENT_COUNTS.get("queue.attempt", 0),
        "queue_size": len(queue),
        "queue_recipients": sum(1 for e in queue for r in e.recipients
                                if r.status == "pending"),
        "connections": {k: v for k, v in sorted(connections.items()) if v > 0},
        "connections_total": sum(connections.values()),
        "logins_failed": EVENT_COUNTS.get("auth.failed", 0),
        "lockouts": EVENT_COUNTS.get("auth.locked", 0),
        "spam_verdicts": spam_counts,
        "spam_recent": spam_recent,
        "accounts": len(await store.list_accounts(None)),
        "domains": len(await store.list_domains()),
        "events": dict(sorted(EVENT_COUNTS.items())),
    }


# -- Prometheus --------------------------------------------------------------------------------

_GAUGES = (  # (figure, metric name, help)
    ("queue_size", "mailstead_queue_messages", "messages waiting in the outbound queue"),
    ("queue_recipients", "mailstead_queue_recipients_pending",
     "recipients not yet delivered, over the queued messages"),
    ("connections_total", "mailstead_connections_open", "open client connections"),
    ("accounts", "mailstead_accounts", "accounts in the store"),
    ("domains", "mailstead_domains", "mail domains in the store"),
    ("uptime_seconds", "mailstead_uptime_seconds", "seconds since this process started"),
)


class _Figures:
    """A prometheus_client collector over one ``statistics`` result."""

    def __init__(self, figures: dict[str, Any]) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily("mailstead_events", "events logged since the process "
                                     "started, by name (one log line each)", labels=["event"])
        for name, count in self.figures["events"].items():
            events.add_metric([name], count)
        yield events
        by_protocol = GaugeMetricFamily("mailstead_connections", "open client connections "
                                        "by protocol", labels=["protocol"])
        for protocol, count in self.figures["connections"].items():
            by_protocol.add_metric([protocol], count)
        yield by_protocol
        for figure, name, text in _GAUGES:
            yield GaugeMetricFamily(name, text, value=self.figures[figure])


def prometheus_text(figures: dict[str, Any]) -> bytes:
    """The figures in Prometheus' text format, with the process's CPU time, memory and open
    files (prometheus_client's process collector)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Figures(figures))
    ProcessCollector(registry=registry)
    return generate_latest(registry)


def may_read_metrics(client_ip: str, authorization: str, allow_from: Iterable[str],
                     token: str) -> bool:
    """Whether a client may read /metrics: from an allowed network, or with the token."""
    if token and authorization == f"Bearer {token}":
        return True
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(network, strict=False) for network in allow_from)


# -- StatsD ------------------------------------------------------------------------------------


def _metric_name(text: str) -> str:
    """A StatsD name part: dots kept (they make the hierarchy), other separators out."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def statsd_lines(figures: dict[str, Any], reported: Counter[str], prefix: str) -> list[str]:
    """The report for ``figures``: counters as the deltas since ``reported`` (updated), gauges
    as they are."""
    lines = []
    for event, count in figures["events"].items():
        delta = count - reported[event]
        if delta > 0:
            lines.append(f"{prefix}.events.{_metric_name(event)}:{delta}|c")
            reported[event] = count
    for figure, name, _text in _GAUGES:
        lines.append(f"{prefix}.{name.removeprefix('mailstead_')}:{figures[figure]}|g")
    for protocol, count in figures["connections"].items():
        lines.append(f"{prefix}.connections.{_metric_name(protocol)}:{count}|g")
    return lines


def datagrams(lines: list[str], size: int = DATAGRAM_SIZE) -> list[bytes]:
    """Lines joined by newlines into datagrams of at most ``size`` bytes (a longer line goes
    alone)."""
    packets: list[bytes] = []
    current = b""
    for line in lines:
        data = line.encode("utf-8")
        if current and len(current) + 1 + len(data) > size:
            packets.append(current)
            current = b""
        current = data if not current else current + b"\n" + data
    if current:
        packets.append(current)
    return packets


async def _send_reports(
    target: str, interval: float, report: Callable[[dict[str, Any]], list[str]],
    figures_now: Callable[[], Awaitable[dict[str, Any]]],
) -> None:
    """Sends ``report(figures_now())`` to ``target`` (host:port) over UDP every ``interval``
    seconds until cancelled."""
    host, port = host_and_port(target)  # checked when the config was loaded
    loop = asyncio.get_running_loop()
    transport, _protocol = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=(host, port), family=socket.AF_UNSPEC)
    try:
        while True:
            await asyncio.sleep(interval)
            try:
                figures = await figures_now()
            except Exception as exc:  # the store is away for now: the next report catches up
                log_event("metrics.report_failed", logging.WARNING, to=target, error=str(exc))
                continue
            for packet in datagrams(report(figures)):
                transport.sendto(packet)  # UDP: a lost report is only a lost report
    finally:
        with contextlib.suppress(Exception):
            transport.close()


async def report_to_statsd(
    cfg: MetricsConfig, figures_now: Callable[[], Awaitable[dict[str, Any]]]
) -> None:
    """Sends a report of ``figures_now()`` every ``statsd_interval`` seconds until cancelled."""
    reported: Counter[str] = Counter()
    await _send_reports(cfg.statsd, cfg.statsd_interval,
                        lambda figures: statsd_lines(figures, reported, cfg.statsd_prefix),
                        figures_now)


# -- the mailstead monitor ---------------------------------------------------------------------

MAX_PENDING_EVENTS = 10_000  # per report: past it, message events are counted, not itemised


def _tag_value(text: str) -> str:
    """A DogStatsD tag value: no separators of the line format in it."""
    return "".join("_" if c in ",|# " or not c.isprintable() else c for c in text)[:200]


def hide_local_part(address: str) -> str:
    """``h-<12 hex>@domain``: who it was stays private, which domain stays visible."""
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    digest = hashlib.sha256(local.lower().encode("utf-8", "replace")).hexdigest()[:12]
    return f"h-{digest}@{domain.lower()}" if domain else f"h-{digest}"


class MessageEvents:
    """An ``obs.EVENT_TAPS`` tap that turns each accepted or sent message into monitor lines
    ``<prefix>.message:1|c|#proto:..,dir:in|out,from:..,to:..`` (one per recipient)."""

    def __init__(self, prefix: str, addresses: str) -> None:
        self.prefix = prefix
        self.addresses = addresses  # off | hashed | plain
        self.pending: list[str] = []
        self.unlisted = 0

    def _name(self, address: str) -> str:
        address = address.strip().strip("<>")
        if not address:
            return "<>"
        return _tag_value(address if self.addresses == "plain" else hide_local_part(address))

    def _add(self, proto: str, direction: str, sender: str | None, recipients: list[str]) -> None:
        for recipient in recipients or [""]:
            if len(self.pending) >= MAX_PENDING_EVENTS:
                self.unlisted += 1
                continue
            tags = f"proto:{_tag_value(proto)},dir:{direction}"
            if self.addresses != "off":
                if sender is not None:
                    tags += f",from:{self._name(sender)}"
                if recipient:
                    tags += f",to:{self._name(recipient)}"
            self.pending.append(f"{self.prefix}.message:1|c|#{tags}")

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        if event == "smtp.transaction" and int(fields.get("code") or 0) // 100 == 2:
            recipients = [r for r in str(fields.get("recipients") or "").split(",") if r]
            self._add(str(fields.get("listener") or "smtp"), "in", str(fields.get("sender")),
                      recipients)
        elif event == "dmtp.delivered":
            self._add("dmtp", "in", str(fields.get("sender") or ""), [])
        elif event == "web.sent":
            self._add("web", "in", str(fields.get("user") or ""), [])
        elif event == "queue.attempt" and fields.get("result") == "delivered":
            self._add("smtp", "out", None, [str(fields.get("recipient") or "")])

    def drain(self) -> list[str]:
        lines, self.pending = self.pending, []
        if self.unlisted:
            lines.append(f"{self.prefix}.message:{self.unlisted}|c|#proto:unlisted,dir:in")
            self.unlisted = 0
        return lines


def node_name(cfg: MetricsConfig) -> str:
    return _tag_value(cfg.node_name or socket.gethostname())


async def report_to_monitor(
    cfg: MetricsConfig, figures_now: Callable[[], Awaitable[dict[str, Any]]],
    worker: int | None = None,
) -> None:
    """Sends the StatsD report and the message events, each line tagged ``node:<name>``, to
    the ``mailstead monitor`` at ``metrics.monitor`` every ``monitor_interval`` seconds."""
    reported: Counter[str] = Counter()
    events = MessageEvents(cfg.statsd_prefix, cfg.monitor_addresses)
    tag = f"node:{node_name(cfg)}" + (f",worker:{worker}" if worker is not None else "")

    def report(figures: dict[str, Any]) -> list[str]:
        lines = [f"{line}|#{tag}" for line in statsd_lines(figures, reported,
                                                            cfg.statsd_prefix)]
        return lines + [line.replace("|#", f"|#{tag},", 1) for line in events.drain()]

    EVENT_TAPS.append(events)
    try:
        await _send_reports(cfg.monitor, cfg.monitor_interval, report, figures_now)
    finally:
        EVENT_TAPS.remove(events)
