"""The allow and block lists in the web pages: a section of each user's settings, and a page
of the admin console for each domain's lists (services/sender_lists.py says what they do)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailstead.core.addresses import normalize_domain
from mailstead.store.interfaces import Account
from mailstead.web import pages
from mailstead.web.api_lists import lists_of
from mailstead.web.pages import field, read_form, web_state


async def settings_context(state: Any, account: Account) -> dict[str, Any]:
    """What settings.html shows of the lists: the user's entries and the domain's."""
    lists = lists_of(state)
    return {"own_lists": await lists.entries("user", account.address),
            "domain_lists": await lists.entries("domain", account.domain)}


async def _change(state: Any, form: Any, scope: Any, owner: str) -> str:
    lists = lists_of(state)
    kind, entry = field(form, "list"), field(form, "entry")
    if field(form, "action") == "remove":
        removed = await lists.remove(scope, owner, kind, entry)
        return f"{entry} removed from the {kind} list." if removed else "No such entry."
    added = await lists.add(scope, owner, kind, entry, field(form, "block_action"))
    return f"{added.pattern} added to the {added.kind} list."


@pages.page
async def settings_lists(request: Request) -> Response:
    account = pages.session_of(request).account
    notice = await _change(web_state(request), await read_form(request), "user",
                           account.address)
    return pages.redirect("/settings", notice)


@pages.admin_page
async def lists_page(request: Request) -> Response:
    state = web_state(request)
    domains = await state.store.list_domains()
    selected = request.query_params.get("domain") or (domains[0].name if domains else "")
    entries = await lists_of(state).entries("domain", selected) if selected else []
    return pages.render(request, "admin/lists.html", {
        "domains": domains, "selected": selected, "entries": entries, "section": "lists",
        "title": "Allow and block lists",
    })


@pages.admin_page
async def lists_action(request: Request) -> Response:
    form = await read_form(request)
    domain = normalize_domain(field(form, "domain"))
    notice = await _change(web_state(request), form, "domain", domain)
    return pages.redirect("/admin/lists", notice, domain=domain)


routes = [
    Route("/settings/lists", settings_lists, methods=["POST"]),
    Route("/admin/lists", lists_page),
    Route("/admin/lists", lists_action, methods=["POST"]),
]
