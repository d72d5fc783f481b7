"""``/metrics``: Prometheus' view of this process (services/metrics.py makes the figures).

Readable from the networks in ``metrics.allow_from`` (loopback by default) or with
``Authorization: Bearer <metrics.token>`` from anywhere; behind a reverse proxy every client
comes from the proxy's address, so give the proxy no such address or use the token.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from mailstead.services.metrics import may_read_metrics, prometheus_text
from mailstead.web.pages import web_state
from mailstead.web.security import client_ip


async def metrics(request: Request) -> Response:
    state = web_state(request)
    cfg = state.cfg.metrics
    if not cfg.prometheus:
        return PlainTextResponse("metrics are off (metrics.prometheus = false)\n", 404)
    if not may_read_metrics(client_ip(request), request.headers.get("authorization", ""),
                            cfg.allow_from, cfg.token):
        return PlainTextResponse("metrics are readable from metrics.allow_from or with "
                                 "metrics.token only\n", 403)
    body = prometheus_text(await state.services.statistics())
    return Response(body, media_type=CONTENT_TYPE_LATEST)


routes = [Route("/metrics", metrics)]
