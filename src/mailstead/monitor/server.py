"""The monitor's network side: a UDP endpoint feeding the Tally, and an HTTP endpoint (uvicorn
in the same loop) with ``/stats.json`` and ``/metrics`` (Prometheus text)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from mailstead.config import host_and_port
from mailstead.monitor.datagrams import parse_datagram
from mailstead.monitor.tally import Tally
from mailstead.monitor.view import render_page
from mailstead.web.server import bind_tcp, start_uvicorn


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        samples, bad = parse_datagram(data)
        if bad:
            self.tally.dropped(bad)
        if samples:
            self.tally.record(samples, f"{addr[0]}:{addr[1]}", time.time())


class _Collector:
    """The tally's totals as Prometheus metrics."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        yield CounterMetricFamily("mailstead_monitor_datagrams", "datagrams received",
                                  value=snap["datagrams"])
        yield CounterMetricFamily("mailstead_monitor_malformed", "lines or datagrams dropped "
                                  "as malformed or oversized", value=snap["malformed"])
        counters = CounterMetricFamily("mailstead_monitor_server_events", "counters reported "
                                       "by each server", labels=["server", "metric"])
        gauges = GaugeMetricFamily("mailstead_monitor_server_gauge", "gauges reported by "
                                   "each server", labels=["server", "metric"])
        servers = snap["servers"]
        for name, server in servers.items():
            for metric, value in server["counters"]["total"].items():
                counters.add_metric([name, metric], value)
            for metric, value in server["gauges"].items():
                gauges.add_metric([name, metric], value)
        yield counters
        yield gauges
        protocols = CounterMetricFamily("mailstead_monitor_messages", "messages by protocol",
                                        labels=["protocol"])
        by_protocol = snap["protocols"]
        for protocol, value in by_protocol["total"].items():
            protocols.add_metric([protocol], value)
        yield protocols
        per_address = CounterMetricFamily("mailstead_monitor_address_messages", "messages by "
                                          "address and direction", labels=["address", "what"])
        addresses = snap["addresses"]
        for address, windows in addresses.items():
            for what, value in windows.get("total", {}).items():
                per_address.add_metric([address, what], value)
        yield per_address


def build_app(tally: Tally) -> Starlette:
    async def stats(request: Request) -> Response:
        return JSONResponse(tally.snapshot(time.time()))

    async def metrics(request: Request) -> Response:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(tally.snapshot(time.time())))
        return Response(generate_latest(registry),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    async def page(request: Request) -> Response:
        return HTMLResponse(render_page(tally.snapshot(time.time())))

    return Starlette(routes=[Route("/", page), Route("/stats.json", stats),
                             Route("/metrics", metrics)])


@dataclass
class Monitor:
    tally: Tally
    transport: asyncio.DatagramTransport
    udp_address: tuple[str, int]
    http: uvicorn.Server | None
    http_address: tuple[str, int] | None
    ticker: asyncio.Task[None] | None

    async def stop(self) -> None:
        self.transport.close()
        if self.http is not None and self.ticker is not None:
            self.http.should_exit = True
            await self.ticker
            await self.http.shutdown()


async def start_monitor(listen: str, http: str, tally: Tally | None = None) -> Monitor:
    """Binds the UDP ``listen`` address and, unless ``http`` is empty, the HTTP one."""
    tally = tally or Tally()
    host, port = host_and_port(listen, bind=True)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Receiver(tally),
                                                       local_addr=(host, port))
    udp_address = transport.get_extra_info("sockname")[:2]
    server = ticker = None
    http_address = None
    if http:
        try:
            http_host, http_port = host_and_port(http, bind=True)
            sock = bind_tcp(http_host, http_port)
            http_address = sock.getsockname()[:2]
            server = await start_uvicorn(build_app(tally), sock)
        except BaseException:
            transport.close()
            raise
        ticker = asyncio.create_task(server.main_loop())
    return Monitor(tally, transport, udp_address, server, http_address, ticker)
