"""What the monitor shows: the same tables in the terminal (rich, redrawn live) and on its web
page (plain HTML that reloads itself): servers, protocols and the busiest addresses."""

from __future__ import annotations

import html
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table

TOP_ADDRESSES = 15
Rows = list[list[str]]


def _count(windows: dict[str, dict[str, float]], key: str, window: str) -> str:
    return f"{windows.get(window, {}).get(key, 0):g}"


def tables(snap: dict[str, Any], top: int = TOP_ADDRESSES) -> list[tuple[str, list[str], Rows]]:
    """(title, column names, rows) of each table, from a ``Tally.snapshot``."""
    servers = [[name, f"{s['last_seen_seconds_ago']:.0f}s ago",
                *(_count(s["counters"], "message", w) for w in ("1m", "1h", "total")),
                f"{s['gauges'].get('connections_open', 0):g}",
                f"{s['gauges'].get('queue_messages', 0):g}",
                _count(s["counters"], "events.auth.failed", "1h")]
               for name, s in snap["servers"].items()]
    by_protocol = snap["protocols"]
    protocols = [[p, *(_count(by_protocol, p, w) for w in ("1m", "1h", "total"))]
                 for p in sorted(by_protocol["total"])]
    busiest = sorted(snap["addresses"].items(),
                     key=lambda item: -sum(item[1].get("1h", {}).values()))[:top]
    addresses = [[a, *(_count(w, what, window) for window in ("1h", "total")
                       for what in ("sent", "received"))] for a, w in busiest]
    return [
        ("servers (messages count once per recipient)",
         ["server", "seen", "msgs 1m", "msgs 1h", "msgs total", "connections", "queue",
          "logins failed 1h"], servers),
        ("messages by protocol (in, and out delivered)", ["protocol", "1m", "1h", "total"],
         protocols),
        (f"busiest addresses (top {top}, last hour)",
         ["address", "sent 1h", "received 1h", "sent total", "received total"], addresses),
    ]


def footer(snap: dict[str, Any]) -> str:
    return (f"datagrams {snap['datagrams']}  malformed (dropped) {snap['malformed']}"
            f"  up {snap['uptime_seconds']:.0f}s")


def render(snap: dict[str, Any]) -> RenderableType:
    parts: list[RenderableType] = []
    for title, head, rows in tables(snap):
        table = Table(title=title, expand=True)
        for i, column in enumerate(head):
            table.add_column(column, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        parts.append(table)
    return Group(*parts, footer(snap))


def render_page(snap: dict[str, Any]) -> str:
    out = ['<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" '
           'content="5"><title>mailstead monitor</title><style>body{font-family:sans-serif;'
           'margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}td,th{border:1px '
           'solid #ccc;padding:.3em .6em;text-align:right}td:first-child,th:first-child'
           '{text-align:left}</style></head><body><h1>mailstead monitor</h1>']
    for title, head, rows in tables(snap, top=50):
        out.append(f"<h2>{html.escape(title)}</h2><table><tr>")
        out.extend(f"<th>{html.escape(h)}</th>" for h in head)
        out.append("</tr>")
        for row in rows:
            out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        if not rows:
            out.append(f'<tr><td colspan="{len(head)}">nothing yet</td></tr>')
        out.append("</table>")
    out.append(f"<p>{html.escape(footer(snap))}</p></body></html>")
    return "".join(out)
