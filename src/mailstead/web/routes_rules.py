"""The mail rules page (/settings/rules): vacation form, simple rules, raw Sieve editor; and the
admin console's global Sieve scripts (/admin/sieve), which users' scripts ``include :global``."""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailstead.core.errors import InvalidInput
from mailstead.sieve.service import check_name, check_script, sieve_store
from mailstead.web import pages
from mailstead.web.pages import page
from mailstead.web.sieve_rules import (
    SimpleRule,
    VacationSettings,
    WebRules,
    current,
    generate,
    save_script,
    sieve_service,
)

EMPTY_ROWS = 3  # blank rows offered below the saved rules


async def _show(request: Request, *, script: str | None = None, check_result: str = "",
                status_code: int = 200) -> Response:
    state = pages.web_state(request)
    account = pages.session_of(request).account
    active, web = await current(sieve_service(state), account)
    rows = [r.model_dump() for r in (web.rules if web else [])]
    rows += [{"field": "from", "contains": "", "action": "move", "target": ""}] * EMPTY_ROWS
    listener = state.cfg.listeners.get("managesieve")
    return pages.render(request, "rules.html", {
        "folders": await pages.mailroom(request).folders(), "title": "Mail rules",
        "web": web or WebRules(), "hand_edited": bool(active) and web is None, "rows": rows,
        "script": active if script is None else script, "check_result": check_result,
        "managesieve_port": listener.port if listener is not None else 4190,
    }, status_code=status_code)


@page
async def rules_page(request: Request) -> Response:
    return await _show(request)


async def _save(request: Request, settings: WebRules, what: str) -> Response:
    state = pages.web_state(request)
    try:
        await save_script(sieve_service(state), pages.session_of(request).account,
                          generate(settings))
    except InvalidInput as exc:
        return pages.redirect("/settings/rules", f"Not saved: {exc}")
    return pages.redirect("/settings/rules", f"{what} saved.")


@page
async def rules_vacation(request: Request) -> Response:
    form = await pages.read_form(request)
    _active, web = await current(sieve_service(pages.web_state(request)),
                                 pages.session_of(request).account)
    try:
        vacation = VacationSettings(
            enabled=pages.field(form, "enabled") == "on", start=pages.field(form, "start"),
            end=pages.field(form, "end"), subject=pages.field(form, "subject"),
            text=pages.field(form, "text"))
    except ValidationError as exc:
        return pages.redirect("/settings/rules", f"Not saved: {exc.errors()[0]['msg']}")
    return await _save(request, WebRules(rules=web.rules if web else [], vacation=vacation),
                       "Vacation reply")


@page
async def rules_simple(request: Request) -> Response:
    form = await pages.read_form(request)
    _active, web = await current(sieve_service(pages.web_state(request)),
                                 pages.session_of(request).account)
    rows = zip(pages.fields(form, "field"), pages.fields(form, "contains"),
               pages.fields(form, "action"),
               pages.fields(form, "target"), strict=False)
    try:
        rules = [SimpleRule(field=f, contains=c.strip(), action=a, target=t.strip())  # type: ignore[arg-type]
                 for f, c, a, t in rows if c.strip()]
        settings = WebRules(rules=rules, vacation=web.vacation if web else VacationSettings())
    except ValidationError as exc:
        return pages.redirect("/settings/rules", f"Not saved: {exc.errors()[0]['msg']}")
    return await _save(request, settings, "Rules")


@page
async def rules_raw(request: Request) -> Response:
    form = await pages.read_form(request)
    text = pages.field(form, "script").replace("\r\n", "\n").replace("\n", "\r\n")
    try:
        check_script(text)
    except InvalidInput as exc:
        return await _show(request, script=text, check_result=f"Error: {exc}", status_code=400)
    if pages.field(form, "action") == "check":
        return await _show(request, script=text, check_result="Syntax OK.")
    await save_script(sieve_service(pages.web_state(request)),
                      pages.session_of(request).account, text)
    return pages.redirect("/settings/rules", "Script saved and active.")


# -- the admin's global scripts (RFC 6609 include :global) --


async def _show_global(request: Request, name: str, script: str | None = None,
                       check_result: str = "", status_code: int = 200) -> Response:
    store = sieve_store(sieve_service(pages.web_state(request)).store)
    if script is None:
        script = (await store.get_global_sieve_script(name) or "") if name else ""
    return pages.render(request, "admin/sieve.html", {
        "names": await store.list_global_sieve_scripts(), "name": name, "script": script,
        "check_result": check_result, "section": "sieve", "title": "Global Sieve scripts",
    }, status_code=status_code)


@pages.admin_page
async def global_page(request: Request) -> Response:
    return await _show_global(request, request.query_params.get("name", ""))


@pages.admin_page
async def global_action(request: Request) -> Response:
    form = await pages.read_form(request)
    service = sieve_service(pages.web_state(request))
    name = pages.field(form, "name").strip()
    action = pages.field(form, "action")
    if action == "delete":
        await service.delete_global(name)
        return pages.redirect("/admin/sieve", f"Global script {name} deleted.")
    text = pages.field(form, "script").replace("\r\n", "\n").replace("\n", "\r\n")
    try:
        check_name(name)
        check_script(text)
    except InvalidInput as exc:
        return await _show_global(request, name, text, f"Error: {exc}", 400)
    if action == "check":
        return await _show_global(request, name, text, "Syntax OK.")
    await service.put_global(name, text)
    return pages.redirect("/admin/sieve", f"Global script {name} saved.", name=name)


routes = [
    Route("/admin/sieve", global_page),
    Route("/admin/sieve", global_action, methods=["POST"]),
    Route("/settings/rules", rules_page),
    Route("/settings/rules/vacation", rules_vacation, methods=["POST"]),
    Route("/settings/rules/simple", rules_simple, methods=["POST"]),
    Route("/settings/rules/raw", rules_raw, methods=["POST"]),
]
