"""Helpers shared by the HTML pages: the logged-in session, CSRF checks, forms, rendering."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, unquote, urlencode

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mailstead.web import security
from mailstead.web.mailroom import Mailroom, SummaryCache
from mailstead.web.security import Session
from mailstead.web.state import WebState

Handler = Callable[[Request], Awaitable[Response]]
MAX_FORM_FIELDS = 2000
FLASH_COOKIE = "mailstead_notice"


def web_state(request: Request) -> WebState:
    state: WebState = request.app.state.web
    return state


def session_of(request: Request) -> Session:
    session: Session = request.state.session
    return session


def mailroom(request: Request) -> Mailroom:
    state = web_state(request)
    cache: SummaryCache = request.app.state.summaries
    return Mailroom(state.mailboxes, session_of(request).account, cache, state.cfg.web.page_size)


async def read_form(request: Request) -> FormData:
    """The request's form (read once; uploads up to the message size limit)."""
    cached: FormData | None = getattr(request.state, "form", None)
    if cached is None:
        limit = web_state(request).cfg.limits.max_message_size
        cached = await request.form(max_files=100, max_fields=MAX_FORM_FIELDS,
                                    max_part_size=limit)
        request.state.form = cached
    return cached


def field(form: FormData, name: str, default: str = "") -> str:
    value = form.get(name)
    return value if isinstance(value, str) else default


def fields(form: FormData, name: str) -> list[str]:
    return [v for v in form.getlist(name) if isinstance(v, str)]


def uploads(form: FormData, name: str) -> list[UploadFile]:
    return [v for v in form.getlist(name) if isinstance(v, UploadFile) and v.filename]


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def page(handler: Handler) -> Handler:
    """Decorator: the page needs a logged-in user. POSTs must carry the session's CSRF token
    in the ``csrf`` field."""
    return _guard(handler, admin=False)


def admin_page(handler: Handler) -> Handler:
    """Decorator: like ``page``, for administrators only."""
    return _guard(handler, admin=True)


def _guard(fn: Handler, *, admin: bool) -> Handler:
    @functools.wraps(fn)
    async def inner(request: Request) -> Response:
        state = web_state(request)
        session = await security.load_session(state, request)
        if session is None:
            if request.method == "GET":
                return login_redirect(request)
            raise HTTPException(401, "your session has ended; log in again")
        if admin and not session.account.is_admin:
            raise HTTPException(403, "this page is for administrators")
        request.state.session = session
        if request.method == "POST":
            form = await read_form(request)
            if not security.same_origin(request) or not security.check_csrf(
                session, field(form, "csrf")
            ):
                raise HTTPException(403, "the form was stale or came from another site; "
                                         "reload the page and try again")
        return await fn(request)

    return inner


def render(request: Request, template: str, context: dict[str, Any] | None = None,
           status_code: int = 200) -> Response:
    state = web_state(request)
    ctx: dict[str, Any] = {
        "session": getattr(request.state, "session", None),
        "cfg": state.cfg,
        "notice": unquote(request.cookies.get(FLASH_COOKIE, ""))[:500],
    }
    session = ctx["session"]
    if session is not None:
        ctx["csrf"] = session.csrf
        ctx["account"] = session.account
    else:
        ctx["csrf"] = security.pre_session_token(state, request)
    ctx.update(context or {})
    response = state.templates.TemplateResponse(request, template, ctx, status_code=status_code)
    security.attach_pre_cookie(state, request, response)
    if FLASH_COOKIE in request.cookies:
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


def redirect(url: str, notice: str = "", **params: Any) -> RedirectResponse:
    """A 303 to ``url``; ``notice`` is shown once on the next page (a short-lived cookie, so
    a crafted link cannot put words on our pages)."""
    query = {k: v for k, v in params.items() if v not in (None, "")}
    if query:
        url += ("&" if "?" in url else "?") + urlencode(query)
    response = RedirectResponse(url, status_code=303)
    if notice:
        response.set_cookie(FLASH_COOKIE, quote(notice[:500]), max_age=60, path="/",
                            httponly=True, secure=True, samesite="strict")
    return response
