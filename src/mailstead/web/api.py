"""The JSON API under /api/: everything the pages do, for scripts. Authentication: a Bearer
token (from POST /api/token with HTTP Basic, or made on the settings page), or the browser
session plus an X-CSRF-Token header on changes. Errors are ``{"error": "..."}`` with the
usual status codes. The OpenAPI document (/api/openapi.json) is built from ``ENDPOINTS``."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailstead.core.errors import InvalidInput, NotFound
from mailstead.queue.recall import RecallReport
from mailstead.services.accounts import AuthFailed
from mailstead.store.interfaces import Account, Mailbox, MessageMeta, QueueEntry, SystemFlag
from mailstead.web import accountops, adminops, security, sending
from mailstead.web import api_models as m
from mailstead.web.compose import Draft, Upload
from mailstead.web.mailroom import (
    MAX_ID,
    ListQuery,
    Mailroom,
    Row,
    SearchQuery,
    SummaryCache,
)
from mailstead.web.messages import part_content, read_message
from mailstead.web.pages import web_state
from mailstead.web.routes_mail import part_response
from mailstead.web.sanitize import clean_html

Auth = Literal["token", "basic", "none"]


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    location: Literal["path", "query"]
    schema: dict[str, Any]
    description: str = ""
    required: bool = False


@dataclass
class Ctx:
    request: Request
    account: Account | None
    body: Any = None

    @property
    def state(self) -> Any:
        return web_state(self.request)

    @property
    def user(self) -> Account:
        assert self.account is not None
        return self.account

    def room(self) -> Mailroom:
        state = self.state
        cache: SummaryCache = self.request.app.state.summaries
        return Mailroom(state.mailboxes, self.user, cache, state.cfg.web.page_size)

    def path_int(self, name: str) -> int:
        value = int(self.request.path_params[name])
        if value > MAX_ID:
            raise NotFound(f"no such {name.replace('_', ' ')}")
        return value

    def query(self, name: str, default: str = "") -> str:
        return self.request.query_params.get(name, default)


Handler = Callable[[Ctx], Awaitable[Any]]


@dataclass
class Endpoint:
    method: str
    path: str  # Starlette form, with {name:int} converters
    handler: Handler
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    response: Any = None  # a model, list[model], or None (Ok)
    status: int = 200
    errors: tuple[int, ...] = ()
    auth: Auth = "token"
    admin: bool = False
    params: tuple[Param, ...] = ()
    produces: str = "application/json"
    operation_id: str = field(default="")


ENDPOINTS: list[Endpoint] = []


def endpoint(method: str, path: str, summary: str, tag: str, **kwargs: Any) -> Callable[
        [Handler], Handler]:
    def register(fn: Handler) -> Handler:
        ENDPOINTS.append(Endpoint(method, path, fn, summary, tag, operation_id=fn.__name__,
                                  **kwargs))
        return fn

    return register


# -- authentication --


async def _basic_account(request: Request) -> Account:
    state = web_state(request)
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        raise HTTPException(401, "send your address and password with HTTP Basic")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise HTTPException(401, "malformed Basic credentials") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise HTTPException(401, "malformed Basic credentials")
    try:
        return await state.services.accounts.authenticate(user, password,
                                                          security.client_ip(request))
    except AuthFailed as exc:
        if exc.temporary:  # RFC 6585 section 4: 429 MAY say how long to wait
            raise HTTPException(429, "too many failed logins; try again later", headers={
                "Retry-After": str(max(1, math.ceil(exc.retry_after)))}) from None
        raise HTTPException(401, "wrong address or password") from None


async def _token_account(request: Request) -> Account:
    state = web_state(request)
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        account = await security.account_from_token(state, value.strip())
        if account is None:
            raise HTTPException(401, "the token is not valid (or the password changed)")
        return account
    if header:
        raise HTTPException(401, "use 'Authorization: Bearer <token>'")
    session = await security.load_session(state, request)
    if session is None:
        raise HTTPException(401, "authentication required")
    if request.method not in ("GET", "HEAD") and not security.check_csrf(
        session, request.headers.get("x-csrf-token", "")
    ):
        raise HTTPException(403, "browser sessions must send the X-CSRF-Token header")
    return session.account


async def _body(request: Request, model: type[BaseModel]) -> BaseModel:
    raw = await request.body()
    try:
        data = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("the body is not valid JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(f"{where}: {first['msg']}") from None


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value


def _route(ep: Endpoint) -> Route:
    async def run(request: Request) -> Response:
        account: Account | None = None
        if ep.auth == "basic":
            account = await _basic_account(request)
        elif ep.auth == "token":
            account = await _token_account(request)
        if ep.admin and (account is None or not account.is_admin):
            raise HTTPException(403, "administrators only")
        body = await _body(request, ep.body) if ep.body is not None else None
        result = await ep.handler(Ctx(request, account, body))
        if isinstance(result, Response):
            return result
        if result is None:
            result = m.Ok()
        return JSONResponse(_dump(result), status_code=ep.status)

    return Route(ep.path, run, methods=[ep.method])


# -- converters --


def _folder(f: Any) -> m.Folder:
    return m.Folder(id=f.id, name=f.name, special_use=f.special_use, messages=f.messages,
                    unseen=f.unseen)


def _summary(box: Mailbox, meta: MessageMeta, row: Row | None = None) -> dict[str, Any]:
    env = meta.envelope
    from mailstead.web.mailroom import message_date

    return {
        "uid": meta.uid, "folder_id": box.id, "subject": env.subject, "from": env.from_,
        "to": env.to, "cc": env.cc, "date": message_date(meta), "size": meta.size,
        "seen": bool(meta.flags & SystemFlag.SEEN),
        "flagged": bool(meta.flags & SystemFlag.FLAGGED),
        "answered": bool(meta.flags & SystemFlag.ANSWERED),
        "draft": bool(meta.flags & SystemFlag.DRAFT),
        "has_attachment": row.summary.has_attachment if row else False,
        "snippet": row.summary.snippet if row else "",
        "thread_size": row.thread_size if row else 1,
        "integrity": meta.integrity,
    }


def _quota(q: Any) -> m.Quota:
    return m.Quota(used_bytes=q.used_bytes, used_messages=q.used_messages,
                   limit_bytes=q.limit_bytes, limit_messages=q.limit_messages)


def _queue_item(e: QueueEntry) -> m.QueueItem:
    return m.QueueItem(
        id=e.id, sender=e.sender, size=e.size, created=e.created,
        next_attempt=e.next_attempt, attempts=e.attempts, state=e.state,
        recipients=[m.QueueRecipientOut(address=r.address, status=r.status,
                                        last_reply=r.last_reply) for r in e.recipients],
    )


def _bool(value: str) -> bool:
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise InvalidInput(f"{value!r} is not a boolean (true or false)")


def _date(name: str, value: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{name}: expected a date like 2024-05-31") from None


FOLDER_ID = Param("folder_id", "path", {"type": "integer", "minimum": 0}, required=True)
UID = Param("uid", "path", {"type": "integer", "minimum": 0}, required=True)
COMMON = (400, 401, 413)

# -- account --


@endpoint("POST", "/api/token", "Get an API token with your address and password (HTTP Basic)",
          "account", response=m.TokenOut, auth="basic", errors=(401, 429))
async def create_token(ctx: Ctx) -> m.TokenOut:
    return m.TokenOut(token=security.make_api_token(ctx.state, ctx.user, "api"),
                      address=ctx.user.address)


@endpoint("POST", "/api/signup", "Create an account (when sign-up is open or by invitation)",
          "account", body=m.SignupIn, response=m.TokenOut, status=201, auth="none",
          errors=(400, 403, 409, 413, 429))
async def signup(ctx: Ctx) -> m.TokenOut:
    body: m.SignupIn = ctx.body
    try:
        account = await accountops.signup(
            ctx.state, username=body.username, domain=body.domain, password=body.password,
            confirm=body.password, invite=body.invite,
            client_ip=security.client_ip(ctx.request))
    except accountops.SignupRefused as exc:
        raise HTTPException(429 if "too many" in str(exc) else 403, str(exc)) from None
    return m.TokenOut(token=security.make_api_token(ctx.state, account, "signup"),
                      address=account.address)


@endpoint("GET", "/api/me", "Your account: address, quota use, sender addresses", "account",
          response=m.Me, errors=(401,))
async def me(ctx: Ctx) -> m.Me:
    quota = await ctx.state.mailboxes.quota(ctx.user.id)
    senders = await sending.sender_addresses(ctx.state.services.accounts, ctx.user)
    return m.Me(address=ctx.user.address, is_admin=ctx.user.is_admin,
                created=ctx.user.created, quota=_quota(quota), senders=senders)


@endpoint("POST", "/api/password", "Change your password (ends other sessions and tokens)",
          "account", body=m.PasswordIn, response=m.TokenOut, errors=(*COMMON, 429))
async def change_password(ctx: Ctx) -> m.TokenOut:
    body: m.PasswordIn = ctx.body
    account = await accountops.change_password(
        ctx.state, ctx.user, current=body.current, new=body.new, confirm=body.new,
        client_ip=security.client_ip(ctx.request))
    return m.TokenOut(token=security.make_api_token(ctx.state, account, "api"),
                      address=account.address)


@endpoint("GET", "/api/client-settings", "Servers, ports and TLS for a mail client", "account",
          response=list[m.ClientSetting], errors=(401,))
async def client_settings(ctx: Ctx) -> list[m.ClientSetting]:
    return [m.ClientSetting(kind=s.kind, host=s.host, port=s.port,  # type: ignore[arg-type]
                            security=s.security, username=s.username)
            for s in accountops.client_settings(ctx.state, ctx.user.address)]


@endpoint("GET", "/api/aliases", "Your aliases", "account", response=list[m.AliasOut],
          errors=(401,))
async def list_own_aliases(ctx: Ctx) -> list[m.AliasOut]:
    return [m.AliasOut(source=a.source, destination=a.destination)
            for a in await accountops.own_aliases(ctx.state, ctx.user)]


@endpoint("POST", "/api/aliases", "Add an alias of your own address (if the server allows)",
          "account", body=m.OwnAliasIn, response=m.AliasOut, status=201,
          errors=(*COMMON, 409))
async def add_own_alias(ctx: Ctx) -> m.AliasOut:
    alias = await accountops.add_own_alias(ctx.state, ctx.user, ctx.body.local)
    return m.AliasOut(source=alias.source, destination=alias.destination)


@endpoint("DELETE", "/api/aliases/{source}", "Remove one of your aliases", "account",
          params=(Param("source", "path", {"type": "string"}, required=True),),
          errors=(400, 401, 404))
async def remove_own_alias(ctx: Ctx) -> m.Ok:
    await accountops.remove_own_alias(ctx.state, ctx.user, ctx.request.path_params["source"])
    return m.Ok(count=1)


# -- folders --


@endpoint("GET", "/api/folders", "Your folders with message and unread counts", "mail",
          response=list[m.Folder], errors=(401,))
async def list_folders(ctx: Ctx) -> list[m.Folder]:
    return [_folder(f) for f in await ctx.room().folders()]


async def _folder_info(room: Mailroom, box_id: int) -> m.Folder:
    for f in await room.folders():
        if f.id == box_id:
            return _folder(f)
    raise NotFound("no such folder")


@endpoint("POST", "/api/folders", "Create a folder ('/' separates levels)", "mail",
          body=m.FolderIn, response=m.Folder, status=201, errors=(*COMMON, 409))
async def create_folder(ctx: Ctx) -> m.Folder:
    room = ctx.room()
    box = await room.create_folder(ctx.body.name)
    return await _folder_info(room, box.id)


@endpoint("PATCH", "/api/folders/{folder_id:int}", "Rename a folder", "mail", body=m.FolderIn,
          response=m.Folder, params=(FOLDER_ID,), errors=(*COMMON, 404, 409))
async def rename_folder(ctx: Ctx) -> m.Folder:
    room = ctx.room()
    box_id = ctx.path_int("folder_id")
    await room.rename_folder(box_id, ctx.body.name)
    return await _folder_info(room, box_id)


@endpoint("DELETE", "/api/folders/{folder_id:int}", "Delete a folder and its messages", "mail",
          params=(FOLDER_ID,), errors=(400, 401, 404))
async def delete_folder(ctx: Ctx) -> m.Ok:
    await ctx.room().delete_folder(ctx.path_int("folder_id"))
    return m.Ok(count=1)


LIST_PARAMS = (
    FOLDER_ID,
    Param("page", "query", {"type": "integer", "minimum": 1, "default": 1}),
    Param("sort", "query", {"type": "string", "enum": ["date", "from", "subject", "size"]}),
    Param("order", "query", {"type": "string", "enum": ["asc", "desc"]}),
    Param("threads", "query", {"type": "boolean"}, "one entry per conversation"),
    Param("q", "query", {"type": "string"}, "sender, recipients or subject contains"),
    Param("from", "query", {"type": "string"}),
    Param("to", "query", {"type": "string"}, "To or Cc contains"),
    Param("subject", "query", {"type": "string"}),
    Param("body", "query", {"type": "string"}, "the text contains"),
    Param("since", "query", {"type": "string", "format": "date"}),
    Param("before", "query", {"type": "string", "format": "date"}, "on or before this day"),
    Param("has_attachment", "query", {"type": "boolean"}),
)


@endpoint("GET", "/api/folders/{folder_id:int}/messages",
          "List messages: paging, sorting, conversations and search", "mail",
          response=m.MessageList, params=LIST_PARAMS, errors=(400, 401, 404))
async def list_messages(ctx: Ctx) -> m.MessageList:
    room = ctx.room()
    box = await room.folder(ctx.path_int("folder_id"))
    page_text = ctx.query("page", "1")
    if not page_text.isdigit() or int(page_text) < 1 or len(page_text) > 9:
        raise InvalidInput("page: expected a number from 1")
    sort = ctx.query("sort", "date")
    if sort not in ("date", "from", "subject", "size"):
        raise InvalidInput("sort: one of date, from, subject, size")
    order = ctx.query("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidInput("order: asc or desc")
    query = ListQuery(
        page=int(page_text), sort=sort, order="asc" if order == "asc" else "desc",
        threads=_bool(ctx.query("threads")),
        search=SearchQuery(
            text=ctx.query("q"), from_=ctx.query("from"), to=ctx.query("to"),
            subject=ctx.query("subject"), body=ctx.query("body"),
            since=_date("since", ctx.query("since")), before=_date("before", ctx.query("before")),
            has_attachment=_bool(ctx.query("has_attachment")),
        ),
    )
    listing = await room.listing(box, query)
    return m.MessageList(
        total=listing.total, page=listing.page, pages=listing.pages,
        truncated_search=listing.truncated_search,
        messages=[m.MessageSummary.model_validate(_summary(box, r.meta, r))
                  for r in listing.rows],
    )


async def _message(ctx: Ctx) -> tuple[Mailroom, Mailbox, MessageMeta]:
    room = ctx.room()
    box = await room.folder(ctx.path_int("folder_id"))
    return room, box, await room.message(box, ctx.path_int("uid"))


@endpoint("GET", "/api/folders/{folder_id:int}/messages/{uid:int}",
          "Read a message (marks it read): headers, text, sanitised HTML, attachments", "mail",
          response=m.MessageDetail, errors=(400, 401, 404),
          params=(FOLDER_ID, UID, Param("images", "query", {"type": "boolean"},
                                        "keep remote images in the HTML")))
async def get_message(ctx: Ctx) -> m.MessageDetail:
    room, box, meta = await _message(ctx)
    images = _bool(ctx.query("images"))
    data = await room.content(meta)
    message = await asyncio.to_thread(read_message, data)
    if not meta.flags & SystemFlag.SEEN:
        await room.set_flag(box, [meta.uid], "seen", True)
        meta = await room.message(box, meta.uid)
    cleaned = clean_html(message.html, allow_remote_images=images) if message.html else None
    row = Row(meta, await room.summary(meta))
    detail = _summary(box, meta, row)
    detail.update(
        reply_to=message.reply_to, message_id=message.message_id, text=message.text,
        html=cleaned.html if cleaned else None,
        blocked_images=cleaned.blocked_images if cleaned else 0,
        attachments=[m.Attachment(path=a.path, filename=a.filename, content_type=a.mime_type,
                                  size=a.size, content_id=a.content_id, inline=a.inline)
                     for a in message.attachments],
    )
    return m.MessageDetail.model_validate(detail)


@endpoint("PATCH", "/api/folders/{folder_id:int}/messages/{uid:int}",
          "Set or clear flags: seen, flagged, answered", "mail", body=m.FlagsIn,
          response=m.MessageSummary, params=(FOLDER_ID, UID), errors=(*COMMON, 404))
async def update_flags(ctx: Ctx) -> m.MessageSummary:
    room, box, meta = await _message(ctx)
    body: m.FlagsIn = ctx.body
    for name in ("seen", "flagged", "answered"):
        value = getattr(body, name)
        if value is not None:
            await room.set_flag(box, [meta.uid], name, value)
    meta = await room.message(box, meta.uid)
    return m.MessageSummary.model_validate(_summary(box, meta, Row(meta,
                                                                   await room.summary(meta))))


@endpoint("POST", "/api/folders/{folder_id:int}/messages/{uid:int}/move",
          "Move a message to another folder", "mail", body=m.MoveIn, params=(FOLDER_ID, UID),
          errors=(*COMMON, 404))
async def move_message(ctx: Ctx) -> m.Ok:
    room, box, meta = await _message(ctx)
    target_id = ctx.body.folder_id
    if target_id > MAX_ID or target_id < 0:
        raise NotFound("no such folder")
    target = await room.folder(target_id)
    return m.Ok(count=await room.move(box, [meta.uid], target))


@endpoint("POST", "/api/folders/{folder_id:int}/messages/{uid:int}/junk",
          "Mark as junk (to Junk) or not junk (to the Inbox)", "mail", body=m.JunkIn,
          params=(FOLDER_ID, UID), errors=(*COMMON, 404))
async def junk_message(ctx: Ctx) -> m.Ok:
    room, box, meta = await _message(ctx)
    return m.Ok(count=await room.junk(box, [meta.uid], ctx.body.junk))


@endpoint("DELETE", "/api/folders/{folder_id:int}/messages/{uid:int}",
          "Delete: to Trash, or for good from Trash and Junk", "mail", params=(FOLDER_ID, UID),
          errors=(400, 401, 404))
async def delete_message(ctx: Ctx) -> m.Ok:
    room, box, meta = await _message(ctx)
    return m.Ok(count=await room.delete(box, [meta.uid]))


@endpoint("GET", "/api/folders/{folder_id:int}/messages/{uid:int}/raw",
          "The message source (RFC 5322)", "mail", params=(FOLDER_ID, UID),
          produces="message/rfc822", errors=(400, 401, 404))
async def raw_message(ctx: Ctx) -> Response:
    room, _box, meta = await _message(ctx)
    return Response(await room.content(meta), media_type="message/rfc822")


@endpoint("GET", "/api/folders/{folder_id:int}/messages/{uid:int}/parts/{path}",
          "Download an attachment (decoded) by its part path", "mail",
          params=(FOLDER_ID, UID, Param("path", "path", {"type": "string",
                                                         "pattern": "^[0-9]+(\\.[0-9]+)*$"},
                                        required=True)),
          produces="application/octet-stream", errors=(400, 401, 404))
async def message_part(ctx: Ctx) -> Response:
    room, _box, meta = await _message(ctx)
    part = part_content(await room.content(meta), ctx.request.path_params["path"])
    if part is None:
        raise NotFound("no such part")
    return part_response(part.data, part.mime_type, part.filename, inline=False)


def _draft(ctx: Ctx) -> Draft:
    body: m.MessageIn = ctx.body
    uploads = []
    for a in body.attachments:
        try:
            data = base64.b64decode(a.data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"attachment {a.filename!r}: data is not valid base64") from None
        uploads.append(Upload(a.filename, a.content_type, data))
    return Draft(
        from_addr=body.from_ or ctx.user.address, to=", ".join(body.to), cc=", ".join(body.cc),
        bcc=", ".join(body.bcc), subject=body.subject, text=body.text, html=body.html,
        attachments=uploads, in_reply_to=body.in_reply_to, references=body.references,
    )


@endpoint("POST", "/api/messages/send",
          "Send: local recipients get it now, remote ones through the queue; copy in Sent",
          "mail", body=m.MessageIn, response=m.SendOut, errors=(*COMMON, 422, 429))
async def send_message(ctx: Ctx) -> m.SendOut:
    scheme = ctx.request.url.scheme
    result = await sending.send(ctx.state, ctx.room(), _draft(ctx),
                                client_ip=security.client_ip(ctx.request),
                                protocol="HTTPS" if scheme == "https" else "HTTP")
    return m.SendOut(queue_id=result.queue_id, delivered=result.delivered,
                     queued=result.queued, sent_uid=result.sent_uid)


@endpoint("POST", "/api/messages/{queue_id}/recall",
          "Recall a message you sent that still waits in the queue (the queue_id from send)",
          "mail", response=m.RecallOut, params=(Param("queue_id", "path", {"type": "string"},
                                                      required=True),),
          errors=(400, 401, 404))
async def recall_own(ctx: Ctx) -> m.RecallOut:
    return _recall_out(await adminops.recall(ctx.state, ctx.request.path_params["queue_id"],
                                             account=ctx.user))


@endpoint("POST", "/api/drafts", "Save a draft in Drafts", "mail", body=m.MessageIn,
          response=m.DraftOut, status=201, errors=(*COMMON, 422))
async def save_draft(ctx: Ctx) -> m.DraftOut:
    box, uid = await sending.save_draft(ctx.state, ctx.room(), _draft(ctx))
    return m.DraftOut(folder_id=box.id, uid=uid)


# -- admin --


@endpoint("GET", "/api/admin/stats", "Live statistics", "admin", response=m.Stats, admin=True,
          errors=(401, 403))
async def admin_stats(ctx: Ctx) -> m.Stats:
    return m.Stats.model_validate(await adminops.statistics(ctx.state))


@endpoint("GET", "/api/admin/domains", "Mail domains", "admin", response=list[m.DomainOut],
          admin=True, errors=(401, 403))
async def admin_domains(ctx: Ctx) -> list[m.DomainOut]:
    return [m.DomainOut(name=d.name, created=d.created)
            for d in await ctx.state.store.list_domains()]


@endpoint("POST", "/api/admin/domains", "Add a mail domain", "admin", body=m.DomainIn,
          response=m.DomainOut, status=201, admin=True, errors=(*COMMON, 403, 409))
async def admin_add_domain(ctx: Ctx) -> m.DomainOut:
    name = await adminops.add_domain(ctx.state, ctx.body.name)
    domain = await ctx.state.store.get_domain(name)
    return m.DomainOut(name=domain.name, created=domain.created)


DOMAIN = Param("name", "path", {"type": "string"}, required=True)


@endpoint("DELETE", "/api/admin/domains/{name}", "Remove a domain (it must have no users or "
          "aliases left)", "admin", params=(DOMAIN,), admin=True,
          errors=(400, 401, 403, 404, 409))
async def admin_remove_domain(ctx: Ctx) -> m.Ok:
    await adminops.remove_domain(ctx.state, ctx.request.path_params["name"])
    return m.Ok(count=1)


@endpoint("GET", "/api/admin/domains/{name}/dns", "The DNS records to publish for a domain",
          "admin", params=(DOMAIN,), response=list[m.DnsRecord], admin=True,
          errors=(400, 401, 403, 404))
async def admin_domain_dns(ctx: Ctx) -> list[m.DnsRecord]:
    from mailstead.core.addresses import normalize_domain

    name = normalize_domain(ctx.request.path_params["name"])
    if await ctx.state.store.get_domain(name) is None:
        raise NotFound(f"no domain {name}")
    return [m.DnsRecord(name=r.name, type=r.rdtype, value=r.value, purpose=r.why)
            for r in await adminops.dns_records(ctx.state, name)]


def _user(row: adminops.UserRow) -> m.UserOut:
    a = row.account
    return m.UserOut(address=a.address, is_admin=a.is_admin, created=a.created,
                     quota=m.Quota(used_bytes=row.used_bytes, used_messages=row.used_messages,
                                   limit_bytes=a.quota_bytes, limit_messages=a.quota_messages))


@endpoint("GET", "/api/admin/users", "Accounts with their quota use", "admin",
          response=list[m.UserOut], admin=True, errors=(400, 401, 403),
          params=(Param("domain", "query", {"type": "string"}, "only this domain"),))
async def admin_users(ctx: Ctx) -> list[m.UserOut]:
    from mailstead.core.addresses import normalize_domain

    domain = ctx.query("domain")
    rows = await adminops.users(ctx.state, normalize_domain(domain) if domain else None)
    return [_user(r) for r in rows]


async def _user_row(ctx: Ctx, address: str) -> m.UserOut:
    account = await adminops.require_user(ctx.state, address)
    used_bytes, used_messages = await ctx.state.store.quota_usage(account.id)
    return _user(adminops.UserRow(account, used_bytes, used_messages))


@endpoint("POST", "/api/admin/users", "Create an account", "admin", body=m.UserIn,
          response=m.UserOut, status=201, admin=True, errors=(*COMMON, 403, 409))
async def admin_add_user(ctx: Ctx) -> m.UserOut:
    body: m.UserIn = ctx.body
    account = await adminops.add_user(ctx.state, body.address, body.password,
                                      quota_bytes=body.quota_bytes,
                                      quota_messages=body.quota_messages)
    return await _user_row(ctx, account.address)


ADDRESS = Param("address", "path", {"type": "string"}, required=True)


@endpoint("PATCH", "/api/admin/users/{address}", "Change an account's quota or password",
          "admin", body=m.UserPatch, response=m.UserOut, params=(ADDRESS,), admin=True,
          errors=(*COMMON, 403, 404))
async def admin_update_user(ctx: Ctx) -> m.UserOut:
    body: m.UserPatch = ctx.body
    account = await adminops.update_user(
        ctx.state, ctx.request.path_params["address"], quota_bytes=body.quota_bytes,
        quota_messages=body.quota_messages, password=body.password)
    return await _user_row(ctx, account.address)


@endpoint("DELETE", "/api/admin/users/{address}", "Remove an account and all its mail",
          "admin", params=(ADDRESS,), admin=True, errors=(400, 401, 403, 404))
async def admin_remove_user(ctx: Ctx) -> m.Ok:
    await adminops.remove_user(ctx.state, ctx.request.path_params["address"], ctx.user)
    return m.Ok(count=1)


@endpoint("GET", "/api/admin/aliases", "Every alias", "admin", response=list[m.AliasOut],
          admin=True, errors=(401, 403))
async def admin_aliases(ctx: Ctx) -> list[m.AliasOut]:
    return [m.AliasOut(source=a.source, destination=a.destination)
            for a in await ctx.state.store.list_aliases(None)]


@endpoint("POST", "/api/admin/aliases", "Add an alias (source @domain: the catch-all)", "admin",
          body=m.AliasIn, response=m.AliasOut, status=201, admin=True,
          errors=(*COMMON, 403, 409))
async def admin_add_alias(ctx: Ctx) -> m.AliasOut:
    src, dst = await adminops.add_alias(ctx.state, ctx.body.source, ctx.body.destination)
    return m.AliasOut(source=src, destination=dst)


@endpoint("DELETE", "/api/admin/aliases", "Remove an alias (one destination, or all)", "admin",
          admin=True, errors=(400, 401, 403, 404),
          params=(Param("source", "query", {"type": "string"}, required=True),
                  Param("destination", "query", {"type": "string"})))
async def admin_remove_alias(ctx: Ctx) -> m.Ok:
    source = ctx.query("source")
    if not source:
        raise InvalidInput("source is required")
    count = await adminops.remove_alias(ctx.state, source, ctx.query("destination") or None)
    return m.Ok(count=count)


@endpoint("GET", "/api/admin/queue", "The outbound queue", "admin", response=list[m.QueueItem],
          admin=True, errors=(400, 401, 403),
          params=(Param("include_done", "query", {"type": "boolean"}),))
async def admin_queue(ctx: Ctx) -> list[m.QueueItem]:
    entries = await adminops.queue_entries(ctx.state, _bool(ctx.query("include_done")))
    return [_queue_item(e) for e in entries]


QUEUE_ID = Param("queue_id", "path", {"type": "string"}, required=True)


@endpoint("GET", "/api/admin/queue/{queue_id}", "One queued message", "admin",
          response=m.QueueItem, params=(QUEUE_ID,), admin=True, errors=(401, 403, 404))
async def admin_queue_entry(ctx: Ctx) -> m.QueueItem:
    return _queue_item(await adminops.require_entry(ctx.state,
                                                    ctx.request.path_params["queue_id"]))


@endpoint("POST", "/api/admin/queue/{queue_id}/retry", "Try delivering now", "admin",
          response=m.QueueItem, params=(QUEUE_ID,), admin=True, errors=(400, 401, 403, 404))
async def admin_queue_retry(ctx: Ctx) -> m.QueueItem:
    return _queue_item(await adminops.retry(ctx.state, ctx.request.path_params["queue_id"]))


def _recall_out(report: RecallReport) -> m.RecallOut:
    return m.RecallOut(queue_id=report.queue_id, recalled=report.recalled,
                       delivered=report.delivered, failed=report.failed,
                       recalled_by=report.recalled_by)


@endpoint("POST", "/api/admin/queue/{queue_id}/recall",
          "Recall any queued message: recipients not reached yet will not get it", "admin",
          response=m.RecallOut, params=(QUEUE_ID,), admin=True, errors=(400, 401, 403, 404))
async def admin_queue_recall(ctx: Ctx) -> m.RecallOut:
    return _recall_out(await adminops.recall(ctx.state, ctx.request.path_params["queue_id"],
                                             by=ctx.user.address))


async def openapi_document(request: Request) -> Response:
    from mailstead.web.openapi import build_document

    return JSONResponse(build_document(ENDPOINTS, web_state(request).cfg.hostname))


# These register their endpoints (GET /api/outbox is routes_outbox's).
from mailstead.web import api_lists, routes_outbox  # noqa: E402, F401

routes = [Route("/api/openapi.json", openapi_document), *(_route(ep) for ep in ENDPOINTS)]
