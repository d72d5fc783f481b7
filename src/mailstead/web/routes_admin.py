"""The admin console: statistics, domains (with DNS records), users, aliases, the queue."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailstead.core.errors import InvalidInput
from mailstead.web import adminops
from mailstead.web.pages import (
    admin_page,
    field,
    read_form,
    redirect,
    render,
    session_of,
    web_state,
)

UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """'500M', '2G', '1048576' or '' (0, unlimited) -> bytes."""
    value = text.strip().upper().removesuffix("B").strip()
    if not value:
        return 0
    unit = value[-1] if value[-1] in "KMGT" else ""
    number = value[:-1] if unit else value
    try:
        amount = float(number)
    except ValueError:
        raise InvalidInput(f"{text!r} is not a size (e.g. 500M, 2G)") from None
    if amount < 0:
        raise InvalidInput("sizes cannot be negative")
    return int(amount * UNITS[unit])


def _count(text: str) -> int:
    if not text.strip():
        return 0
    if not text.strip().isdigit():
        raise InvalidInput(f"{text!r} is not a number")
    return int(text)


@admin_page
async def dashboard(request: Request) -> Response:
    state = web_state(request)
    return render(request, "admin/dashboard.html", {
        "stats": await adminops.statistics(state), "section": "dashboard", "title": "Admin",
        "monitor_page": state.services.cfg.metrics.monitor_page,
    })


@admin_page
async def stats_json(request: Request) -> Response:
    return JSONResponse(await adminops.statistics(web_state(request)))


@admin_page
async def domains_page(request: Request) -> Response:
    state = web_state(request)
    domains = await state.store.list_domains()
    selected = request.query_params.get("domain") or (domains[0].name if domains else "")
    return render(request, "admin/domains.html", {
        "domains": domains, "selected": selected,
        "records": await adminops.dns_records(state, selected) if selected else [],
        "section": "domains", "title": "Domains",
    })


@admin_page
async def domains_action(request: Request) -> Response:
    state = web_state(request)
    form = await read_form(request)
    name = field(form, "name")
    if field(form, "action") == "remove":
        await adminops.remove_domain(state, name)
        return redirect("/admin/domains", f"Domain {name} removed.")
    domain = await adminops.add_domain(state, name)
    return redirect("/admin/domains", f"Domain {domain} added: publish its DNS records.",
                    domain=domain)


@admin_page
async def users_page(request: Request) -> Response:
    state = web_state(request)
    return render(request, "admin/users.html", {
        "users": await adminops.users(state), "domains": await state.store.list_domains(),
        "section": "users", "title": "Users",
    })


@admin_page
async def users_action(request: Request) -> Response:
    state = web_state(request)
    form = await read_form(request)
    action = field(form, "action")
    address = field(form, "address")
    if action == "remove":
        await adminops.remove_user(state, address, session_of(request).account)
        return redirect("/admin/users", f"User {address} removed with all their mail.")
    if action == "quota":
        await adminops.update_user(state, address, quota_bytes=parse_size(field(form, "bytes")),
                                   quota_messages=_count(field(form, "messages")))
        return redirect("/admin/users", f"Quota of {address} updated.")
    if action == "password":
        await adminops.update_user(state, address, password=field(form, "password"))
        return redirect("/admin/users", f"Password of {address} changed.")
    account = await adminops.add_user(
        state, address, field(form, "password"), quota_bytes=parse_size(field(form, "bytes")),
        quota_messages=_count(field(form, "messages")))
    return redirect("/admin/users", f"User {account.address} created.")


@admin_page
async def aliases_page(request: Request) -> Response:
    state = web_state(request)
    return render(request, "admin/aliases.html", {
        "aliases": await state.store.list_aliases(None), "section": "aliases",
        "title": "Aliases",
    })


@admin_page
async def aliases_action(request: Request) -> Response:
    state = web_state(request)
    form = await read_form(request)
    if field(form, "action") == "remove":
        await adminops.remove_alias(state, field(form, "source"),
                                    field(form, "destination") or None)
        return redirect("/admin/aliases", "Alias removed.")
    src, dst = await adminops.add_alias(state, field(form, "source"), field(form, "destination"))
    return redirect("/admin/aliases", f"Alias {src} → {dst} added.")


@admin_page
async def queue_page(request: Request) -> Response:
    state = web_state(request)
    show_done = request.query_params.get("done") == "1"
    return render(request, "admin/queue.html", {
        "entries": await adminops.queue_entries(state, show_done), "show_done": show_done,
        "section": "queue", "title": "Queue",
    })


@admin_page
async def queue_action(request: Request) -> Response:
    state = web_state(request)
    form = await read_form(request)
    queue_id = field(form, "id")
    if field(form, "action") == "recall":
        report = await adminops.recall(state, queue_id, by=session_of(request).account.address)
        text = f"Message {queue_id} recalled: {len(report.recalled)} recipient(s) will not get it"
        if report.delivered:
            text += f"; already delivered to {', '.join(report.delivered)}"
        return redirect("/admin/queue", text + ". The sender was told.")
    await adminops.retry(state, queue_id)
    return redirect("/admin/queue", f"Message {queue_id} will be retried now.")


routes = [
    Route("/admin", dashboard),
    Route("/admin/stats.json", stats_json),
    Route("/admin/domains", domains_page),
    Route("/admin/domains", domains_action, methods=["POST"]),
    Route("/admin/users", users_page),
    Route("/admin/users", users_action, methods=["POST"]),
    Route("/admin/aliases", aliases_page),
    Route("/admin/aliases", aliases_action, methods=["POST"]),
    Route("/admin/queue", queue_page),
    Route("/admin/queue", queue_action, methods=["POST"]),
]
