"""The JSON API of the allow and block lists (services/sender_lists.py): each user's own under
/api/lists, a domain's (admins) under /api/admin/domains/{name}/lists. Registered into
``api.ENDPOINTS`` by importing this module (api.py does, before building its routes)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from mailstead.core.addresses import normalize_domain
from mailstead.core.errors import NotFound
from mailstead.services.sender_lists import SenderLists, sender_lists
from mailstead.store.interfaces import ListEntry
from mailstead.web.api import DOMAIN, Ctx, Param, endpoint
from mailstead.web.api_models import Ok, _In


class ListEntryIn(_In):
    list: Literal["allow", "block"] = Field(description="which list")
    entry: str = Field(min_length=1, max_length=255, description="a sender address "
                       "(user@example.org), a domain (example.org, with its subdomains) or "
                       "an IP range (192.0.2.0/24, 2001:db8::/32)")
    action: Literal["", "refuse", "junk"] = Field(
        "", description="block entries: refuse at RCPT (550 5.7.1, the default) or file "
        "in Junk; allow entries take none")


class ListEntryOut(BaseModel):
    id: int
    list: Literal["allow", "block"]
    entry: str
    action: str
    scope: Literal["user", "domain"]
    owner: str = Field(description="the account's address or the domain's name")


def _out(entry: ListEntry) -> ListEntryOut:
    return ListEntryOut(id=entry.id, list=entry.kind, entry=entry.pattern, action=entry.action,
                        scope=entry.scope, owner=entry.owner)


def lists_of(state: Any) -> SenderLists:
    """The process's SenderLists (made here when the web runs without the MX services)."""
    found = sender_lists(state.services)
    if found is None:
        found = SenderLists(state.store, state.cfg.lists)
        state.services.extra["lists"] = found
    return found


KIND = Param("list", "query", {"type": "string", "enum": ["allow", "block"]},
             "which list", required=True)
ENTRY = Param("entry", "query", {"type": "string", "maxLength": 255}, "the entry to remove",
              required=True)


def _domain(ctx: Ctx) -> str:
    name = normalize_domain(ctx.request.path_params["name"])
    return name


@endpoint("GET", "/api/lists", "Your allow and block lists, and your domain's", "settings",
          response=list[ListEntryOut], errors=(401, 404))
async def own_lists(ctx: Ctx) -> list[ListEntryOut]:
    lists = lists_of(ctx.state)
    own = await lists.entries("user", ctx.user.address)
    return [_out(e) for e in [*own, *await lists.entries("domain", ctx.user.domain)]]


@endpoint("POST", "/api/lists", "Add a sender address, domain or IP range to your allow or "
          "block list", "settings", body=ListEntryIn, response=ListEntryOut, status=201,
          errors=(400, 401, 409, 413))
async def add_own_entry(ctx: Ctx) -> ListEntryOut:
    body: ListEntryIn = ctx.body
    return _out(await lists_of(ctx.state).add("user", ctx.user.address, body.list, body.entry,
                                              body.action))


@endpoint("DELETE", "/api/lists", "Remove an entry from your allow or block list", "settings",
          params=(KIND, ENTRY), errors=(400, 401, 404))
async def remove_own_entry(ctx: Ctx) -> Ok:
    removed = await lists_of(ctx.state).remove("user", ctx.user.address, ctx.query("list"),
                                               ctx.query("entry"))
    if not removed:
        raise NotFound("no such entry")
    return Ok(count=removed)


@endpoint("GET", "/api/admin/domains/{name}/lists", "A domain's allow and block lists (they "
          "apply to all its users)", "admin", params=(DOMAIN,), response=list[ListEntryOut],
          admin=True, errors=(400, 401, 403, 404))
async def domain_lists(ctx: Ctx) -> list[ListEntryOut]:
    return [_out(e) for e in await lists_of(ctx.state).entries("domain", _domain(ctx))]


@endpoint("POST", "/api/admin/domains/{name}/lists", "Add an entry to a domain's allow or "
          "block list", "admin", params=(DOMAIN,), body=ListEntryIn, response=ListEntryOut,
          status=201, admin=True, errors=(400, 401, 403, 404, 409, 413))
async def add_domain_entry(ctx: Ctx) -> ListEntryOut:
    body: ListEntryIn = ctx.body
    return _out(await lists_of(ctx.state).add("domain", _domain(ctx), body.list, body.entry,
                                              body.action))


@endpoint("DELETE", "/api/admin/domains/{name}/lists", "Remove an entry from a domain's allow "
          "or block list", "admin", params=(DOMAIN, KIND, ENTRY), admin=True,
          errors=(400, 401, 403, 404))
async def remove_domain_entry(ctx: Ctx) -> Ok:
    removed = await lists_of(ctx.state).remove("domain", _domain(ctx), ctx.query("list"),
                                               ctx.query("entry"))
    if not removed:
        raise NotFound("no such entry")
    return Ok(count=removed)
