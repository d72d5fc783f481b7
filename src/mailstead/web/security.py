"""Sessions, CSRF tokens and API tokens.

- A session is a signed cookie (itsdangerous, HMAC-SHA1 over our key) holding the account id,
  a random nonce and a fingerprint of the account's password hash: changing the password ends
  every other session and every API token at once. Logging out revokes the nonce.
- Cookies are Secure, HttpOnly and SameSite=Strict. Browsers keep Secure cookies over plain
  HTTP only on loopback (http://127.0.0.1, http://localhost); anywhere else run the listener
  with tls = "implicit" or behind an HTTPS proxy (the login page says so).
- CSRF: every form carries a token that is an HMAC of the session nonce (or, before login, of a
  random pre-session cookie). POSTs without the right token are refused with 403.
- API tokens ("mst_...") are signed too and carry the same password fingerprint.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from mailstead.store.interfaces import Account
from mailstead.web.state import WebState

SESSION_COOKIE = "mailstead_session"
PRE_COOKIE = "mailstead_pre"
TOKEN_PREFIX = "mst_"


def password_fingerprint(account: Account) -> str:
    """Short digest of the password hash: a session or token outlives no password change."""
    return hashlib.sha256(account.password_hash.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Session:
    account: Account
    nonce: str
    csrf: str


def _mac(state: WebState, purpose: str, value: str) -> str:
    return hmac.new(state.secret, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()[:40]


def _session_serializer(state: WebState) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(state.secret, salt="mailstead-session")


def _token_serializer(state: WebState) -> URLSafeSerializer:
    return URLSafeSerializer(state.secret, salt="mailstead-api-token")


def cookie_args(state: WebState) -> dict[str, Any]:
    return {"httponly": True, "secure": True, "samesite": "strict", "path": "/"}


# -- sessions --


def start_session(state: WebState, response: Response, account: Account) -> None:
    nonce = secrets.token_urlsafe(16)
    value = _session_serializer(state).dumps(
        {"a": account.id, "n": nonce, "p": password_fingerprint(account)}
    )
    response.set_cookie(
        SESSION_COOKIE, value, max_age=state.cfg.web.session_hours * 3600, **cookie_args(state)
    )


def end_session(state: WebState, response: Response, session: Session | None) -> None:
    if session is not None:
        now = time.time()
        state.revoked_sessions[session.nonce] = now + state.cfg.web.session_hours * 3600
        for nonce in [n for n, exp in state.revoked_sessions.items() if exp < now]:
            del state.revoked_sessions[nonce]
    response.delete_cookie(SESSION_COOKIE, **cookie_args(state))


async def load_session(state: WebState, request: Request) -> Session | None:
    """The logged-in session of this request, or None (missing, forged, expired, revoked,
    password changed since, or the account is gone)."""
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        return None
    try:
        data = _session_serializer(state).loads(raw, max_age=state.cfg.web.session_hours * 3600)
    except BadSignature:
        return None
    if not isinstance(data, dict):
        return None
    account_id, nonce, fingerprint = data.get("a"), data.get("n"), data.get("p")
    if not isinstance(account_id, int) or not isinstance(nonce, str):
        return None
    if nonce in state.revoked_sessions:
        return None
    account = await state.store.get_account_by_id(account_id)
    if account is None or password_fingerprint(account) != fingerprint:
        return None
    return Session(account, nonce, _mac(state, "csrf", nonce))


# -- CSRF before login (login and sign-up forms) --


def pre_session_token(state: WebState, request: Request) -> str:
    """The CSRF token for anonymous forms. When the pre-session cookie is missing a new value
    is chosen; ``attach_pre_cookie`` then sets it on the response carrying the form."""
    value = request.cookies.get(PRE_COOKIE)
    if not value or len(value) > 64:
        value = secrets.token_urlsafe(18)
        request.state.new_pre_cookie = value
    return _mac(state, "pre", value)


def attach_pre_cookie(state: WebState, request: Request, response: Response) -> None:
    value = getattr(request.state, "new_pre_cookie", None)
    if value:
        response.set_cookie(PRE_COOKIE, value, max_age=86_400, **cookie_args(state))


def check_pre_session_token(state: WebState, request: Request, token: str) -> bool:
    value = request.cookies.get(PRE_COOKIE)
    if not value or not token:
        return False
    return hmac.compare_digest(_mac(state, "pre", value), token)


def check_csrf(session: Session, token: str) -> bool:
    return bool(token) and hmac.compare_digest(session.csrf, token)


# -- API tokens --


def make_api_token(state: WebState, account: Account, label: str = "") -> str:
    body = _token_serializer(state).dumps(
        {"a": account.id, "p": password_fingerprint(account), "i": secrets.token_hex(4),
         "l": label[:40]}
    )
    return TOKEN_PREFIX + body


async def account_from_token(state: WebState, token: str) -> Account | None:
    if not token.startswith(TOKEN_PREFIX):
        return None
    try:
        data = _token_serializer(state).loads(token[len(TOKEN_PREFIX):])
    except BadSignature:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("a"), int):
        return None
    account = await state.store.get_account_by_id(data["a"])
    if account is None or password_fingerprint(account) != data.get("p"):
        return None
    return account


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def same_origin(request: Request) -> bool:
    """A browser's Origin header, when sent, must name this site (defence in depth for CSRF)."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host
