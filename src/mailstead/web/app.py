"""The Starlette application: routes of every area, security headers, body size limit, and
errors turned into pages (or JSON under /api/)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from markupsafe import Markup
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailstead.core.errors import (
    Conflict,
    CorruptBlob,
    MailsteadError,
    NotFound,
    QuotaExceeded,
)
from mailstead.obs import log_event
from mailstead.web import (
    api,
    api_sieve,
    routes_account,
    routes_admin,
    routes_lists,
    routes_mail,
    routes_mailmove,
    routes_metrics,
    routes_outbox,
    routes_rules,
)
from mailstead.web.accountops import SignupRefused
from mailstead.web.mailroom import SummaryCache
from mailstead.web.pages import redirect, render
from mailstead.web.sanitize import clean_html
from mailstead.web.sending import SendRefused
from mailstead.web.state import HERE, WebState

PAGE_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'self'")


class SecurityHeaders:
    """Headers every response gets unless the route set its own (message bodies do)."""

    def __init__(self, app: ASGIApp, https: bool) -> None:
        self.app = app
        self.https = https

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                wanted = [
                    (b"content-security-policy", PAGE_CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"SAMEORIGIN"),
                    (b"referrer-policy", b"same-origin"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                    (b"cache-control", b"no-store"),
                ]
                if self.https:
                    wanted.append((b"strict-transport-security", b"max-age=31536000"))
                headers += [(k, v) for k, v in wanted if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """Refuses request bodies above ``limit`` bytes (413) before they fill memory."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                text = f"request body too large (the limit is {self.limit} bytes)"
                response: Response = (
                    JSONResponse({"error": text}, status_code=413)
                    if scope["path"].startswith("/api/")
                    else PlainTextResponse(text[:1].upper() + text[1:] + ".\n", status_code=413)
                )
                await response(scope, receive, send)
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, "request body too large")
            return message

        await self.app(scope, counting_receive, send)


def _status(exc: Exception) -> int:
    if isinstance(exc, HTTPException):
        return exc.status_code
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, QuotaExceeded):
        return 422
    if isinstance(exc, SendRefused):
        return 429
    if isinstance(exc, SignupRefused):
        return 403
    if isinstance(exc, CorruptBlob):
        return 500
    if isinstance(exc, MailsteadError | ValueError):
        return 400
    return 500


def _text(exc: Exception, status: int) -> str:
    if isinstance(exc, HTTPException):
        return str(exc.detail)
    if isinstance(exc, QuotaExceeded):
        return "the mailbox is full (quota exceeded)"
    if status == 500:
        return "something went wrong on the server; the error was logged"
    return str(exc) or "error"


def _same_site_referer(request: Request) -> str | None:
    referer = request.headers.get("referer", "")
    parts = urlsplit(referer)
    if parts.netloc and parts.netloc == request.headers.get("host") and parts.path.startswith("/"):
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return None


async def handle_error(request: Request, exc: Exception) -> Response:
    status = _status(exc)
    text = _text(exc, status)
    if status >= 500:
        log_event("web.error", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
    if request.url.path.startswith("/api/"):
        headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="mailstead"'
        return JSONResponse({"error": text}, status_code=status, headers=headers or None)
    if request.method == "POST" and 400 <= status < 500 and status not in (401, 403, 413):
        back = _same_site_referer(request)
        if back is not None:  # show the reason on the page the form came from
            return redirect(back, text[:1].upper() + text[1:])
    if status == 401:
        return redirect("/login", "Your session has ended; log in again.")
    return render(request, "error.html", {"status": status, "message": text,
                                          "title": f"Error {status}"}, status_code=status)


def _size(value: int | float) -> str:
    number = float(value)
    for unit in ("bytes", "KB", "MB", "GB"):
        if number < 1024 or unit == "GB":
            return f"{int(number)} {unit}" if unit == "bytes" else f"{number:.1f} {unit}"
        number /= 1024
    return f"{number:.1f} GB"


def _when(value: datetime | None) -> str:
    if value is None:
        return ""
    now = datetime.now(UTC)
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    if value.date() == now.date():
        return value.strftime("%H:%M")
    if value.year == now.year:
        return value.strftime("%d %b")
    return value.strftime("%d %b %Y")


def _name(value: str) -> str:
    """'Alice <alice@x>' -> 'Alice'; 'bob@x' stays."""
    first = value.split(",")[0].strip()
    if "<" in first:
        name = first.split("<", 1)[0].strip().strip('"')
        return name or first.split("<", 1)[1].rstrip(">")
    return first


def build_app(state: WebState) -> Starlette:
    env: Any = state.templates.env
    env.filters["size"] = _size
    env.filters["when"] = _when
    env.filters["name"] = _name
    env.filters["sentence"] = lambda text: text[:1].upper() + text[1:]
    env.filters["dict_merge"] = lambda base, extra: {**base, **extra}
    env.filters["safe_html"] = lambda value: Markup(clean_html(value or "").html)
    env.globals["now"] = lambda: datetime.now(UTC)
    limit = state.cfg.limits.max_message_size * 4 // 3 + 1024 * 1024
    errors: dict[Any, Any] = {cls: handle_error for cls in (
        HTTPException, MailsteadError, SendRefused, SignupRefused, ValueError, Exception)}
    app = Starlette(
        routes=[
            *routes_account.routes, *routes_mail.routes, *routes_admin.routes,
            *routes_lists.routes, *api.routes,
            *routes_metrics.routes, *routes_mailmove.routes, *routes_rules.routes,
            *api_sieve.routes, *routes_outbox.routes,
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ],
        middleware=[Middleware(SecurityHeaders, https=state.https),
                    Middleware(BodyLimit, limit=limit)],
        exception_handlers=errors,
    )
    app.state.web = state
    app.state.summaries = SummaryCache()
    return app
