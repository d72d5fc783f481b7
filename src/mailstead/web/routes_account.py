"""Log in and out, sign up, account settings, client autoconfiguration, and the MTA-STS
policy of our domains."""

from __future__ import annotations

import math

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from mailstead.core.addresses import parse_address
from mailstead.core.errors import Conflict, InvalidInput, NotFound
from mailstead.mailsec import dnsrecords, mta_sts
from mailstead.obs import log_event
from mailstead.services.accounts import AuthFailed
from mailstead.services.certificates import CHALLENGE_PREFIX
from mailstead.web import accountops, clientsetup, routes_lists, security
from mailstead.web.pages import (
    field,
    mailroom,
    page,
    read_form,
    redirect,
    render,
    session_of,
    web_state,
)


def _safe_next(value: str) -> str:
    """Where to go after login: only a path on this site (no open redirect)."""
    if value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/mail"


def _insecure_origin(request: Request) -> bool:
    """Plain HTTP to a name that is not loopback: browsers drop our Secure cookies there."""
    host = (request.url.hostname or "").lower()
    return request.url.scheme != "https" and host not in ("127.0.0.1", "localhost", "::1")


async def index(request: Request) -> Response:
    state = web_state(request)
    session = await security.load_session(state, request)
    return RedirectResponse("/mail" if session else "/login", status_code=303)


async def login_page(request: Request) -> Response:
    state = web_state(request)
    if await security.load_session(state, request) is not None:
        return RedirectResponse(_safe_next(request.query_params.get("next", "")),
                                status_code=303)
    return render(request, "login.html", {
        "next": _safe_next(request.query_params.get("next", "")), "error": "",
        "insecure": _insecure_origin(request), "username": "", "title": "Log in",
    })


async def login_submit(request: Request) -> Response:
    state = web_state(request)
    form = await read_form(request)
    username = field(form, "username").strip()
    target = _safe_next(field(form, "next"))
    error = ""
    retry_after = 0.0
    if not security.same_origin(request) or not security.check_pre_session_token(
        state, request, field(form, "csrf")
    ):
        error = "The form had expired. Please try again."
    else:
        try:
            account = await state.services.accounts.authenticate(
                username, field(form, "password"), security.client_ip(request)
            )
        except AuthFailed as exc:
            error = ("Too many failed logins. Wait a few minutes and try again."
                     if exc.temporary else "Wrong address or password.")
            retry_after = exc.retry_after
            log_event("web.login_failed", user=username, client=security.client_ip(request))
        else:
            log_event("web.login", user=account.address, client=security.client_ip(request))
            response = RedirectResponse(target, status_code=303)
            security.start_session(state, response, account)
            return response
    page_response = render(request, "login.html", {
        "next": target, "error": error, "insecure": _insecure_origin(request),
        "username": username, "title": "Log in",
    }, status_code=401 if "Wrong" in error else 429 if "Too many" in error else 403)
    if page_response.status_code == 429:  # RFC 6585 section 4
        page_response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return page_response


@page
async def logout(request: Request) -> Response:
    state = web_state(request)
    response = RedirectResponse("/login", status_code=303)
    security.end_session(state, response, session_of(request))
    return response


# -- sign-up --


async def _signup_context(request: Request, **extra: object) -> dict[str, object]:
    state = web_state(request)
    ctx: dict[str, object] = {
        "mode": state.cfg.web.signup,
        "domains": await accountops.signup_domains(state),
        "username_rules": accountops.username_rules(),
        "password_rules": accountops.password_rules(state.cfg.auth.min_password_length),
        "error": "", "username": "", "domain": "", "invite": "", "title": "Sign up",
        "cap": state.cfg.web.new_account_daily_cap, "cap_days": state.cfg.web.new_account_days,
    }
    ctx.update(extra)
    return ctx


async def signup_page(request: Request) -> Response:
    state = web_state(request)
    status = 404 if state.cfg.web.signup == "off" else 200
    return render(request, "signup.html", await _signup_context(request), status_code=status)


async def signup_submit(request: Request) -> Response:
    state = web_state(request)
    form = await read_form(request)
    values = {"username": field(form, "username"), "domain": field(form, "domain"),
              "invite": field(form, "invite")}
    if not security.same_origin(request) or not security.check_pre_session_token(
        state, request, field(form, "csrf")
    ):
        return render(request, "signup.html", await _signup_context(
            request, error="The form had expired. Please try again.", **values),
            status_code=403)
    try:
        account = await accountops.signup(
            state, username=values["username"], domain=values["domain"],
            password=field(form, "password"), confirm=field(form, "confirm"),
            invite=values["invite"], client_ip=security.client_ip(request),
        )
    except accountops.SignupRefused as exc:
        status = 429 if "too many" in str(exc) else 403
        return render(request, "signup.html", await _signup_context(
            request, error=str(exc), **values), status_code=status)
    except (InvalidInput, Conflict) as exc:
        return render(request, "signup.html", await _signup_context(
            request, error=str(exc), **values), status_code=400)
    response = redirect("/mail", f"Welcome! Your address is {account.address}.")
    security.start_session(state, response, account)
    return response


# -- settings --


@page
async def settings_page(request: Request) -> Response:
    state = web_state(request)
    account = session_of(request).account
    room = mailroom(request)
    quota = await state.mailboxes.quota(account.id)
    return render(request, "settings.html", {
        "quota": quota, "folders": await room.folders(),
        "aliases": await accountops.own_aliases(state, account),
        "clients": accountops.client_settings(state, account.address),
        "password_rules": accountops.password_rules(state.cfg.auth.min_password_length),
        "token": "", "title": "Settings",
        **await routes_lists.settings_context(state, account),
        "autoconfig_url": f"{request.url.scheme}://{request.url.netloc}"
                          f"/.well-known/autoconfig/mail/config-v1.1.xml"
                          f"?emailaddress={account.address}",
    })


@page
async def settings_password(request: Request) -> Response:
    state = web_state(request)
    form = await read_form(request)
    session = session_of(request)
    account = await accountops.change_password(
        state, session.account, current=field(form, "current"), new=field(form, "new"),
        confirm=field(form, "confirm"), client_ip=security.client_ip(request),
    )
    # The old session died with the old password; this browser gets a fresh one.
    response = redirect("/settings", "Password changed. Other sessions and API tokens "
                                     "were signed out.")
    security.start_session(state, response, account)
    return response


@page
async def settings_alias(request: Request) -> Response:
    state = web_state(request)
    form = await read_form(request)
    account = session_of(request).account
    if field(form, "action") == "remove":
        await accountops.remove_own_alias(state, account, field(form, "source"))
        return redirect("/settings", "Alias removed.")
    alias = await accountops.add_own_alias(state, account, field(form, "local"))
    return redirect("/settings", f"Alias {alias.source} added.")


@page
async def settings_token(request: Request) -> Response:
    state = web_state(request)
    form = await read_form(request)
    account = session_of(request).account
    token = security.make_api_token(state, account, field(form, "label"))
    log_event("web.token_created", user=account.address)
    room = mailroom(request)
    return render(request, "settings.html", {
        "quota": await state.mailboxes.quota(account.id), "folders": await room.folders(),
        "aliases": await accountops.own_aliases(state, account),
        "clients": accountops.client_settings(state, account.address),
        "password_rules": accountops.password_rules(state.cfg.auth.min_password_length),
        "token": token, "title": "Settings",
        **await routes_lists.settings_context(state, account),
        "autoconfig_url": f"{request.url.scheme}://{request.url.netloc}"
                          f"/.well-known/autoconfig/mail/config-v1.1.xml"
                          f"?emailaddress={account.address}",
    })


# -- autoconfig --


async def autoconfig(request: Request) -> Response:
    """Thunderbird autoconfig, at /.well-known/autoconfig/mail/config-v1.1.xml on the mail
    domain and at /mail/config-v1.1.xml on autoconfig.<domain>."""
    state = web_state(request)
    address = request.query_params.get("emailaddress", "")
    domain = ""
    if address:
        try:
            parsed = parse_address(address)
        except InvalidInput:
            return Response("bad emailaddress", status_code=400, media_type="text/plain")
        domain = parsed.domain
    else:
        host = (request.url.hostname or "").lower().removeprefix("autoconfig.")
        domain = host
    if await state.store.get_domain(domain) is None:
        domains = await state.store.list_domains()
        if address or not domains:
            raise NotFound(f"{domain or 'this host'} is not a mail domain here")
        domain = domains[0].name
    xml = accountops.autoconfig_xml(state, address, domain)
    return Response(xml, media_type="application/xml",
                    headers={"Cache-Control": "public, max-age=3600"})


async def autodiscover(request: Request) -> Response:
    """Outlook's autodiscover (POST /autodiscover/autodiscover.xml, on the mail domain or on
    autodiscover.<domain>): the settings for the address in the request."""
    state = web_state(request)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > clientsetup.AUTODISCOVER_MAX_BODY:
            return Response(clientsetup.autodiscover_error(600, "Request too large"),
                            status_code=413, media_type="application/xml")
    text = clientsetup.requested_address(body)
    try:
        domain = parse_address(text).domain if text else ""
    except InvalidInput:
        domain = ""
    if not domain:
        return Response(clientsetup.autodiscover_error(600, "Invalid Request: no EMailAddress"),
                        status_code=400, media_type="application/xml")
    if await state.store.get_domain(domain) is None:
        return Response(clientsetup.autodiscover_error(
            600, f"{domain} is not a mail domain here"), status_code=404,
            media_type="application/xml")
    assert text is not None
    return Response(clientsetup.autodiscover_xml(state, parse_address(text).key),
                    media_type="application/xml", headers={"Cache-Control": "no-store"})


@page
async def settings_mobileconfig(request: Request) -> Response:
    """The signed-in user's Apple configuration profile, as a download."""
    state = web_state(request)
    account = session_of(request).account
    try:
        profile = clientsetup.mobileconfig(state, account.address)
    except LookupError as exc:
        raise InvalidInput(f"no profile: {exc}") from None
    filename = f"{account.address.replace('@', '-at-')}.mobileconfig"
    return Response(profile, media_type="application/x-apple-aspen-config",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"',
                             "Cache-Control": "no-store"})


async def acme_challenge(request: Request) -> Response:
    """RFC 8555 8.3: the key authorization of an HTTP-01 challenge one of our nodes is
    answering (the ACME server may reach any node: the answers are in the store)."""
    token = request.path_params.get("token", "")
    answer = await web_state(request).store.get_secret(CHALLENGE_PREFIX + token) \
        if token and len(token) <= 200 else None
    if answer is None:
        return Response("no such challenge\n", status_code=404, media_type="text/plain")
    return Response(answer, media_type="application/octet-stream",
                    headers={"Cache-Control": "no-store"})


async def mta_sts_policy(request: Request) -> Response:
    """RFC 8461 3.3: the policy of <domain>, served on mta-sts.<domain> (text/plain)."""
    state = web_state(request)
    host = (request.url.hostname or "").lower()
    domain = host.removeprefix("mta-sts.")
    if domain == host or await state.store.get_domain(domain) is None:
        return Response(f"no MTA-STS policy for {host}\n", status_code=404,
                        media_type="text/plain")
    return Response(dnsrecords.served_mta_sts_policy(state.cfg), media_type="text/plain",
                    headers={"Cache-Control": "no-store"})


routes = [
    Route("/", index),
    Route("/login", login_page),
    Route("/login", login_submit, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/signup", signup_page),
    Route("/signup", signup_submit, methods=["POST"]),
    Route("/settings", settings_page),
    Route("/settings/password", settings_password, methods=["POST"]),
    Route("/settings/alias", settings_alias, methods=["POST"]),
    Route("/settings/token", settings_token, methods=["POST"]),
    Route("/.well-known/autoconfig/mail/config-v1.1.xml", autoconfig),
    Route("/mail/config-v1.1.xml", autoconfig),
    Route(mta_sts.POLICY_PATH, mta_sts_policy),
    Route("/.well-known/acme-challenge/{token}", acme_challenge),
    Route("/settings/mobileconfig", settings_mobileconfig),
    *(Route(path, autodiscover, methods=["POST"])
      for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml",
                   "/AutoDiscover/AutoDiscover.xml")),
]
