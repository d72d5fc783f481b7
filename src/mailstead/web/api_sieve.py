"""The JSON API of mail rules: Sieve scripts (as ManageSieve and the CLI see them) and the
web's vacation and simple-rule settings (web/sieve_rules.py). Registered in api.ENDPOINTS, so
the OpenAPI document lists them."""

from __future__ import annotations

from pydantic import BaseModel, Field

from mailstead.core.errors import InvalidInput, NotFound
from mailstead.sieve.service import MAX_SCRIPT_BYTES, check_script, sieve_store
from mailstead.web import api_models as m
from mailstead.web.api import ENDPOINTS, Ctx, Param, _route, endpoint
from mailstead.web.sieve_rules import (
    WebRules,
    current,
    generate,
    save_script,
    sieve_service,
)

NAME = Param("name", "path", {"type": "string"}, required=True)
ERRORS = (400, 401, 403, 404, 409)


class ScriptOut(BaseModel):
    name: str
    active: bool
    script: str = ""


class ScriptIn(BaseModel):
    script: str = Field(max_length=MAX_SCRIPT_BYTES)
    active: bool = Field(False, description="make it the active script")


class CheckOut(BaseModel):
    ok: bool
    error: str = ""


class RulesOut(WebRules):
    hand_edited: bool = Field(False, description="the active script was not written by the "
                                                 "forms: saving rules replaces it")


@endpoint("GET", "/api/sieve", "Your Sieve scripts", "rules", response=list[ScriptOut],
          errors=(401,))
async def list_scripts(ctx: Ctx) -> list[ScriptOut]:
    store = sieve_store(sieve_service(ctx.state).store)
    return [ScriptOut(name=n, active=a) for n, a in await store.list_sieve_scripts(ctx.user.id)]


@endpoint("GET", "/api/sieve/{name}", "One Sieve script", "rules", response=ScriptOut,
          params=(NAME,), errors=(401, 404))
async def get_script(ctx: Ctx) -> ScriptOut:
    name = ctx.request.path_params["name"]
    store = sieve_store(sieve_service(ctx.state).store)
    text = await store.get_sieve_script(ctx.user.id, name)
    if text is None:
        raise NotFound(f"no script {name!r}")
    active = dict(await store.list_sieve_scripts(ctx.user.id)).get(name, False)
    return ScriptOut(name=name, active=active, script=text)


@endpoint("PUT", "/api/sieve/{name}", "Store a Sieve script (checked first)", "rules",
          body=ScriptIn, params=(NAME,), errors=ERRORS)
async def put_script(ctx: Ctx) -> m.Ok:
    sieve = sieve_service(ctx.state)
    name = ctx.request.path_params["name"]
    await sieve.put(ctx.user, name, ctx.body.script)
    if ctx.body.active:
        await sieve.activate(ctx.user, name)
    return m.Ok(count=1)


@endpoint("POST", "/api/sieve/{name}/activate", "Make a script the active one", "rules",
          params=(NAME,), errors=ERRORS)
async def activate_script(ctx: Ctx) -> m.Ok:
    await sieve_service(ctx.state).activate(ctx.user, ctx.request.path_params["name"])
    return m.Ok(count=1)


@endpoint("DELETE", "/api/sieve/{name}", "Delete a script (not the active one)", "rules",
          params=(NAME,), errors=ERRORS)
async def delete_script(ctx: Ctx) -> m.Ok:
    await sieve_service(ctx.state).delete(ctx.user, ctx.request.path_params["name"])
    return m.Ok(count=1)


@endpoint("POST", "/api/sieve-check", "Check a Sieve script's syntax", "rules", body=ScriptIn,
          response=CheckOut, errors=(400, 401))
async def check(ctx: Ctx) -> CheckOut:
    try:
        check_script(ctx.body.script)
    except InvalidInput as exc:
        return CheckOut(ok=False, error=str(exc))
    return CheckOut(ok=True)


@endpoint("GET", "/api/rules", "Vacation reply and simple rules", "rules", response=RulesOut,
          errors=(401,))
async def get_rules(ctx: Ctx) -> RulesOut:
    active, web = await current(sieve_service(ctx.state), ctx.user)
    found = web or WebRules()
    return RulesOut(rules=found.rules, vacation=found.vacation,
                    hand_edited=bool(active) and web is None)


@endpoint("PUT", "/api/rules", "Set the vacation reply and simple rules (the active script)",
          "rules", body=WebRules, errors=ERRORS)
async def put_rules(ctx: Ctx) -> m.Ok:
    await save_script(sieve_service(ctx.state), ctx.user, generate(ctx.body))
    return m.Ok(count=1)


# -- the admin's global scripts (RFC 6609 include :global) --


class GlobalScriptOut(BaseModel):
    name: str
    script: str = ""


class GlobalScriptIn(BaseModel):
    script: str = Field(max_length=MAX_SCRIPT_BYTES)


@endpoint("GET", "/api/admin/sieve-global", "Global Sieve scripts (for include :global)",
          "rules", response=list[GlobalScriptOut], admin=True, errors=(401, 403))
async def list_global(ctx: Ctx) -> list[GlobalScriptOut]:
    store = sieve_store(sieve_service(ctx.state).store)
    return [GlobalScriptOut(name=n) for n in await store.list_global_sieve_scripts()]


@endpoint("GET", "/api/admin/sieve-global/{name}", "One global Sieve script", "rules",
          response=GlobalScriptOut, params=(NAME,), admin=True, errors=(401, 403, 404))
async def get_global(ctx: Ctx) -> GlobalScriptOut:
    name = ctx.request.path_params["name"]
    text = await sieve_store(sieve_service(ctx.state).store).get_global_sieve_script(name)
    if text is None:
        raise NotFound(f"no global script {name!r}")
    return GlobalScriptOut(name=name, script=text)


@endpoint("PUT", "/api/admin/sieve-global/{name}", "Store a global Sieve script (its syntax "
          "checked first: 400 with the error)", "rules", body=GlobalScriptIn, params=(NAME,),
          admin=True, errors=(400, 401, 403))
async def put_global(ctx: Ctx) -> m.Ok:
    await sieve_service(ctx.state).put_global(ctx.request.path_params["name"], ctx.body.script)
    return m.Ok(count=1)


@endpoint("DELETE", "/api/admin/sieve-global/{name}", "Delete a global Sieve script", "rules",
          params=(NAME,), admin=True, errors=(401, 403, 404))
async def delete_global(ctx: Ctx) -> m.Ok:
    await sieve_service(ctx.state).delete_global(ctx.request.path_params["name"])
    return m.Ok(count=1)


routes = [_route(ep) for ep in ENDPOINTS if ep.tag == "rules"]
