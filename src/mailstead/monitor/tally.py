"""The monitor's counts: per server, per address and per protocol, over sliding windows.

Counters go into ten-second buckets kept for an hour, so "the last minute" and "the last hour"
are sums of buckets (to within ten seconds), and a total since the monitor started is kept
beside them. Gauges keep their last value per server. The number of servers and addresses
tracked is bounded; past it, new names count under ``(other)``.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from mailstead.monitor.datagrams import Sample

BUCKET_SECONDS = 10
HOUR = 3600
WINDOWS = {"1m": 60, "1h": HOUR}
OTHER = "(other)"
MAX_WORKERS = 64  # worker processes told apart per server


class Windowed:
    """Counts by key, in ten-second buckets over the last hour, plus totals."""

    def __init__(self) -> None:
        self._buckets: deque[tuple[int, defaultdict[str, float]]] = deque()
        self.total: defaultdict[str, float] = defaultdict(float)

    def add(self, key: str, amount: float, now: float) -> None:
        slot = int(now) // BUCKET_SECONDS
        if not self._buckets or self._buckets[-1][0] != slot:
            self._buckets.append((slot, defaultdict(float)))
            self._trim(slot)
        self._buckets[-1][1][key] += amount
        self.total[key] += amount

    def _trim(self, slot: int) -> None:
        oldest = slot - HOUR // BUCKET_SECONDS
        while self._buckets and self._buckets[0][0] <= oldest:
            self._buckets.popleft()

    def within(self, seconds: int, now: float) -> dict[str, float]:
        first = int(now) // BUCKET_SECONDS - (seconds // BUCKET_SECONDS) + 1
        result: defaultdict[str, float] = defaultdict(float)
        for slot, counts in reversed(self._buckets):
            if slot < first:
                break
            for key, value in counts.items():
                result[key] += value
        return dict(result)

    def summary(self, now: float) -> dict[str, dict[str, float]]:
        out = {name: self.within(seconds, now) for name, seconds in WINDOWS.items()}
        out["total"] = dict(self.total)
        return out


# Gauges that each worker process of a node reports for itself (summed over its workers); the
# others describe the whole node or its store, and every worker reports the same value.
PER_PROCESS_GAUGES = ("connections",)


@dataclass
class ServerState:
    name: str
    source: str
    first_seen: float
    last_seen: float
    counters: Windowed = field(default_factory=Windowed)
    by_worker: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def gauges(self) -> dict[str, float]:
        """The node's gauges: per-process ones summed over its workers, others the latest."""
        out: dict[str, float] = {}
        for gauges in self.by_worker.values():
            for metric, value in gauges.items():
                if metric.startswith(PER_PROCESS_GAUGES):
                    out[metric] = out.get(metric, 0) + value
                else:
                    out[metric] = max(out.get(metric, value), value)
        return out


def _metric(name: str) -> str:
    """The metric without the node's prefix (``mailstead.events.x`` is ``events.x``)."""
    return name.split(".", 1)[1] if "." in name else name


class Tally:
    """Everything the monitor knows. Not thread-safe: one event loop feeds and reads it."""

    def __init__(self, max_servers: int = 1000, max_addresses: int = 100_000) -> None:
        self.started: float | None = None
        self.max_servers = max_servers
        self.max_addresses = max_addresses
        self.servers: dict[str, ServerState] = {}
        self.addresses = Windowed()  # key: "address\tsent" / "address\treceived"
        self._address_names: set[str] = set()
        self.protocols = Windowed()  # messages by protocol
        self.datagrams = 0
        self.malformed = 0  # lines (or whole datagrams) dropped

    def _server(self, name: str, source: str, now: float) -> ServerState:
        state = self.servers.get(name)
        if state is None:
            if len(self.servers) >= self.max_servers:
                name = OTHER
                state = self.servers.get(name)
            if state is None:
                state = self.servers[name] = ServerState(name, source, now, now)
        state.last_seen = now
        state.source = source
        return state

    def _address(self, address: str) -> str:
        if address in self._address_names:
            return address
        if len(self._address_names) >= self.max_addresses:
            return OTHER
        self._address_names.add(address)
        return address

    def dropped(self, count: int) -> None:
        self.malformed += count

    def record(self, samples: list[Sample], source: str, now: float) -> None:
        """One datagram's samples, from ``source`` (``ip:port``) at ``now``."""
        if self.started is None:
            self.started = now
        self.datagrams += 1
        for sample in samples:
            server = self._server(sample.tags.get("node") or source.rpartition(":")[0],
                                  source, now)
            metric = _metric(sample.name)
            if sample.kind == "g":
                worker = sample.tags.get("worker", "")[:20]
                if worker not in server.by_worker and len(server.by_worker) >= MAX_WORKERS:
                    worker = OTHER
                server.by_worker.setdefault(worker, {})[metric] = sample.value
                continue
            if sample.kind != "c":
                continue  # timings and sets: not shown (yet)
            server.counters.add(metric, sample.value, now)
            if metric == "message":
                self._message(sample, now)

    def _message(self, sample: Sample, now: float) -> None:
        tags = sample.tags
        self.protocols.add(tags.get("proto", "?"), sample.value, now)
        if tags.get("from"):
            self.addresses.add(self._address(tags["from"]) + "\tsent", sample.value, now)
        if tags.get("to"):
            self.addresses.add(self._address(tags["to"]) + "\treceived", sample.value, now)

    def snapshot(self, now: float) -> dict[str, Any]:
        """All counts, as JSON-ready data (the HTTP API and the terminal view read this)."""
        addresses: dict[str, dict[str, dict[str, float]]] = {}
        for window, counts in self.addresses.summary(now).items():
            for key, value in counts.items():
                address, _, what = key.partition("\t")
                addresses.setdefault(address, {}).setdefault(window, {})[what] = value
        return {
            "uptime_seconds": round(now - self.started, 1) if self.started else 0,
            "datagrams": self.datagrams,
            "malformed": self.malformed,
            "servers": {
                name: {
                    "source": s.source,
                    "last_seen_seconds_ago": round(now - s.last_seen, 1),
                    "gauges": dict(sorted(s.gauges.items())),
                    "counters": s.counters.summary(now),
                }
                for name, s in sorted(self.servers.items())
            },
            "protocols": self.protocols.summary(now),
            "addresses": dict(sorted(addresses.items())),
        }
