"""Webmail pages: folders, the message list, reading, actions, compose, and live updates."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from mailstead.core.errors import Conflict, InvalidInput, NotFound, QuotaExceeded
from mailstead.proto import mime
from mailstead.queue.outbox import OutboxItem, by_message_id, outbox
from mailstead.store.interfaces import Mailbox, SystemFlag
from mailstead.web import sending
from mailstead.web.compose import Draft, Upload, forward_draft, reply_draft
from mailstead.web.mailroom import (
    FolderInfo,
    ListQuery,
    Mailroom,
    SearchQuery,
    folders_token,
)
from mailstead.web.messages import part_content, read_message
from mailstead.web.pages import (
    field,
    fields,
    mailroom,
    page,
    read_form,
    redirect,
    render,
    session_of,
    uploads,
    web_state,
)
from mailstead.web.sanitize import clean_html, text_to_html

# Types a browser may show inline from our origin; everything else is a download.
SAFE_INLINE = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "text/plain",
                         "application/pdf"})
PART_CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox"
ACTIONS = ("read", "unread", "flag", "unflag", "delete", "junk", "notjunk", "move")


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


def _date(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def list_query(params: Any) -> ListQuery:
    search = SearchQuery(
        text=params.get("q", "")[:200],
        from_=params.get("from", "")[:200],
        to=params.get("to", "")[:200],
        subject=params.get("subject", "")[:200],
        body=params.get("body", "")[:200],
        since=_date(params.get("since")),
        before=_date(params.get("before")),
        has_attachment=params.get("attach") in ("1", "on", "true"),
    )
    return ListQuery(page=_int(params.get("page"), 1), sort=params.get("sort", "date"),
                     order="asc" if params.get("order") == "asc" else "desc",
                     threads=params.get("threads") in ("1", "on", "true"),
                     search=search)


async def _box(room: Mailroom, request: Request) -> Mailbox:
    return await room.folder(int(request.path_params["box"]))


@page
async def mail_home(request: Request) -> Response:
    inbox = await mailroom(request).inbox()
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(f"/mail/{inbox.id}{query}", status_code=303)


@page
async def folder_page(request: Request) -> Response:
    room = mailroom(request)
    box = await _box(room, request)
    query = list_query(request.query_params)
    listing = await room.listing(box, query)
    folders = await room.folders()
    base = {k: v for k, v in request.query_params.items() if k != "page"}
    # Sent: Message-ID -> the queued message a Recall can still stop
    waiting: dict[str, OutboxItem] = {}
    if box.special_use == "\\Sent":
        state = web_state(request)
        waiting = by_message_id(await outbox(state.store, state.services.blobs, room.account))
    return render(request, "mail.html", {
        "folders": folders, "live": folders_token(folders), "box": box, "listing": listing,
        "query": query,
        "waiting": waiting,
        "params": base, "current_url": str(request.url.path) + (
            "?" + request.url.query if request.url.query else ""),
        "title": box.name,
    })


def _back(form: FormData, default: str) -> str:
    back = field(form, "back")
    # Only our own webmail pages: never an open redirect.
    return back if back.startswith("/mail/") and "//" not in back and "\\" not in back \
        else default


@page
async def folder_action(request: Request) -> Response:
    room = mailroom(request)
    box = await _box(room, request)
    form = await read_form(request)
    action = field(form, "action")
    uids = [int(u) for u in fields(form, "uid") if u.isdigit()]
    back = _back(form, f"/mail/{box.id}")
    if action not in ACTIONS:
        raise HTTPException(400, f"unknown action {action!r}")
    if not uids:
        return redirect(back, "Select at least one message first.")
    count = await _apply(room, box, action, uids, field(form, "target"))
    done = {"read": "marked read", "unread": "marked unread", "flag": "flagged",
            "unflag": "unflagged", "delete": "deleted", "junk": "moved to Junk",
            "notjunk": "moved to the Inbox", "move": "moved"}[action]
    if action in ("delete", "junk", "notjunk", "move") and back.startswith(
            f"/mail/{box.id}/"):
        back = f"/mail/{box.id}"  # the message is no longer here
    return redirect(back, f"{count} message{'s' if count != 1 else ''} {done}.")


async def _apply(room: Mailroom, box: Mailbox, action: str, uids: list[int], target: str) -> int:
    if action in ("read", "unread"):
        return await room.set_flag(box, uids, "seen", action == "read")
    if action in ("flag", "unflag"):
        return await room.set_flag(box, uids, "flagged", action == "flag")
    if action == "delete":
        return await room.delete(box, uids)
    if action in ("junk", "notjunk"):
        return await room.junk(box, uids, action == "junk")
    if not target.isdigit():
        raise InvalidInput("choose a folder to move to")
    return await room.move(box, uids, await room.folder(int(target)))


@page
async def message_page(request: Request) -> Response:
    room = mailroom(request)
    box = await _box(room, request)
    uid = int(request.path_params["uid"])
    meta = await room.message(box, uid)
    data = await room.content(meta)
    message = await asyncio.to_thread(read_message, data)
    if not meta.flags & SystemFlag.SEEN:
        await room.set_flag(box, [uid], "seen", True)
    images = request.query_params.get("images") == "1"
    blocked = 0
    if message.html is not None:
        blocked = clean_html(message.html, allow_remote_images=False).blocked_images
    newer, older = await room.neighbours(box, uid)
    conversation = await room.conversation(box, meta)
    queued = None  # a Sent message still waiting in the queue: it can be recalled
    if box.special_use == "\\Sent" and meta.envelope.message_id:
        state = web_state(request)
        queued = by_message_id(await outbox(state.store, state.services.blobs, room.account)
                               ).get(meta.envelope.message_id.strip())
    folders = await room.folders()
    return render(request, "message.html", {
        "folders": folders, "live": folders_token(folders), "box": box, "meta": meta,
        "message": message,
        "text_html": text_to_html(message.text) if message.text is not None else "",
        "images": images, "blocked": blocked, "newer": newer, "older": older,
        "conversation": conversation if len(conversation) > 1 else [],
        "flagged": bool(meta.flags & SystemFlag.FLAGGED), "title": message.subject,
        "queued": queued,
    })


@page
async def message_body(request: Request) -> Response:
    """The sanitised HTML body as its own document, shown in a sandboxed iframe."""
    room = mailroom(request)
    box = await _box(room, request)
    uid = int(request.path_params["uid"])
    meta = await room.message(box, uid)
    message = await asyncio.to_thread(read_message, await room.content(meta))
    images = request.query_params.get("images") == "1"
    cids = {a.content_id: a.path for a in message.attachments if a.content_id}

    def cid_url(cid: str) -> str | None:
        path = cids.get(cid)
        return f"/mail/{box.id}/{uid}/part/{path}?inline=1" if path else None

    cleaned = clean_html(message.html or "", allow_remote_images=images, cid_url=cid_url)
    img_src = "'self' data: https: http:" if images else "'self' data:"
    document = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><base target="_blank">'
        '<style>body{font:15px/1.5 system-ui,sans-serif;color:#1d2430;margin:0;padding:4px;'
        "word-wrap:break-word}img{max-width:100%;height:auto}"
        "blockquote{border-left:3px solid #ccd;margin:0 0 0 .5em;padding-left:.8em;"
        "color:#555}</style></head>"
        f"<body>{cleaned.html}</body></html>"
    )
    return Response(document, media_type="text/html", headers={
        "Content-Security-Policy": f"default-src 'none'; img-src {img_src}; "
                                   "style-src 'unsafe-inline'; font-src data:; "
                                   "frame-ancestors 'self'; form-action 'none'",
        "Cache-Control": "private, no-store",
    })


@page
async def message_raw(request: Request) -> Response:
    room = mailroom(request)
    box = await _box(room, request)
    meta = await room.message(box, int(request.path_params["uid"]))
    data = await room.content(meta)
    if request.query_params.get("download") == "1":
        return Response(data, media_type="message/rfc822", headers={
            "Content-Disposition": f'attachment; filename="message-{meta.uid}.eml"',
            "Content-Security-Policy": PART_CSP})
    return Response(data.decode("utf-8", "replace"), media_type="text/plain; charset=utf-8",
                    headers={"Content-Security-Policy": PART_CSP})


def _ascii_filename(name: str) -> str:
    cleaned = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_"
                      for c in name)
    return cleaned or "attachment"


def part_response(data: bytes, mime_type: str, filename: str, inline: bool) -> Response:
    from urllib.parse import quote

    show_inline = inline and mime_type in SAFE_INLINE
    disposition = "inline" if show_inline else "attachment"
    media_type = mime_type if show_inline else "application/octet-stream"
    if media_type == "text/plain":
        media_type = "text/plain; charset=utf-8"
    return Response(data, media_type=media_type, headers={
        "Content-Disposition": f"{disposition}; filename=\"{_ascii_filename(filename)}\"; "
                               f"filename*=UTF-8''{quote(filename)}",
        "Content-Security-Policy": PART_CSP,
        "Cache-Control": "private, max-age=300",
    })


@page
async def message_part(request: Request) -> Response:
    room = mailroom(request)
    box = await _box(room, request)
    meta = await room.message(box, int(request.path_params["uid"]))
    part = part_content(await room.content(meta), request.path_params["path"])
    if part is None:
        raise NotFound("no such attachment")
    return part_response(part.data, part.mime_type, part.filename,
                         request.query_params.get("inline") == "1")


# -- compose --


def _parse_ref(value: str) -> tuple[int, int] | None:
    box, _, uid = value.partition(":")
    if box.isdigit() and uid.isdigit():
        return int(box), int(uid)
    return None


async def _source(room: Mailroom, ref: str) -> tuple[Mailbox, int, bytes] | None:
    parsed = _parse_ref(ref)
    if parsed is None:
        return None
    box = await room.folder(parsed[0])
    meta = await room.message(box, parsed[1])
    return box, meta.uid, await room.content(meta)


@page
async def compose_page(request: Request) -> Response:
    room = mailroom(request)
    state = web_state(request)
    account = session_of(request).account
    senders = await sending.sender_addresses(state.services.accounts, account)
    params = request.query_params
    draft = Draft(from_addr=account.address, to=params.get("to", "")[:500])
    carry: list[dict[str, Any]] = []
    reply_ref = draft_ref = ""
    mode = params.get("mode", "")
    if params.get("reply"):
        found = await _source(room, params["reply"])
        if found is not None:
            box, uid, data = found
            original = await asyncio.to_thread(read_message, data)
            if mode == "forward":
                draft = forward_draft(original, account.address)
                carry = [{"ref": f"{box.id}:{uid}:{a.path}", "name": a.filename,
                          "size": a.size} for a in original.attachments if not a.inline]
            else:
                draft = reply_draft(original, account.address, reply_all=mode == "all",
                                    own_addresses={s.lower() for s in senders})
                reply_ref = f"{box.id}:{uid}"
    elif params.get("draft"):
        found = await _source(room, params["draft"])
        if found is not None:
            box, uid, data = found
            draft, carry = _draft_from(data, account.address, f"{box.id}:{uid}")
            draft_ref = f"{box.id}:{uid}"
    return render(request, "compose.html", {
        "draft": draft, "senders": senders, "carry": carry, "reply_ref": reply_ref,
        "draft_ref": draft_ref, "folders": await room.folders(), "error": "",
        "html_mode": draft.html is not None, "title": "Compose",
    })


def _draft_from(data: bytes, own: str, ref: str) -> tuple[Draft, list[dict[str, Any]]]:
    message = read_message(data)
    root = mime.parse(data)
    draft = Draft(
        from_addr=own, to=message.to, cc=message.cc,
        bcc=mime.decoded_header(root.get("Bcc") or ""), subject=message.subject,
        text=message.text or "", html=message.html,
        in_reply_to=root.get("In-Reply-To") or "", references=message.references,
    )
    carry = [{"ref": f"{ref}:{a.path}", "name": a.filename, "size": a.size}
             for a in message.attachments]
    return draft, carry


async def _carried(room: Mailroom, refs: list[str]) -> list[Upload]:
    out = []
    for ref in refs:
        box_id, _, rest = ref.partition(":")
        uid, _, path = rest.partition(":")
        if not (box_id.isdigit() and uid.isdigit()):
            continue
        box = await room.folder(int(box_id))
        meta = await room.message(box, int(uid))
        part = part_content(await room.content(meta), path)
        if part is not None:
            out.append(Upload(part.filename, part.mime_type, part.data))
    return out


async def draft_from_form(request: Request, room: Mailroom, form: FormData) -> Draft:
    html_mode = field(form, "format") == "html"
    attachments = [Upload(f.filename or "attachment", f.content_type or "", await f.read())
                   for f in uploads(form, "attachment")]
    attachments += await _carried(room, fields(form, "carry"))
    return Draft(
        from_addr=field(form, "from") or room.account.address,
        to=field(form, "to"), cc=field(form, "cc"), bcc=field(form, "bcc"),
        subject=field(form, "subject").strip(),
        text=field(form, "text") if not html_mode else "",
        html=field(form, "html") if html_mode else None,
        attachments=attachments,
        in_reply_to=field(form, "in_reply_to"), references=field(form, "references"),
    )


@page
async def compose_submit(request: Request) -> Response:
    room = mailroom(request)
    state = web_state(request)
    form = await read_form(request)
    action = field(form, "action", "send")
    draft = await draft_from_form(request, room, form)
    draft_ref = _parse_ref(field(form, "draft_ref"))
    replaced = None
    if draft_ref is not None:
        drafts_box = await room.folder(draft_ref[0])
        if drafts_box.special_use == "\\Drafts":
            replaced = (drafts_box, draft_ref[1])
    try:
        if action == "save":
            box, uid = await sending.save_draft(state, room, draft, replaced)
            return redirect("/compose", "Draft saved.", draft=f"{box.id}:{uid}")
        client = request.client.host if request.client else ""
        result = await sending.send(state, room, draft, client_ip=client,
                                    protocol="HTTPS" if request.url.scheme == "https"
                                    else "HTTP", replaced_draft=replaced)
    except (InvalidInput, Conflict, sending.SendRefused, QuotaExceeded) as exc:
        message = str(exc)
        if isinstance(exc, QuotaExceeded):
            message = "a recipient's mailbox is full (or yours is, for the Sent copy)"
        senders = await sending.sender_addresses(state.services.accounts, room.account)
        return render(request, "compose.html", {
            "draft": draft, "senders": senders, "carry": [
                {"ref": r, "name": r.rsplit(":", 1)[-1], "size": 0}
                for r in fields(form, "carry")],
            "reply_ref": field(form, "reply_ref"), "draft_ref": field(form, "draft_ref"),
            "folders": await room.folders(), "error": message,
            "html_mode": draft.html is not None, "title": "Compose",
        }, status_code=400)
    reply_ref = _parse_ref(field(form, "reply_ref"))
    if reply_ref is not None:
        try:
            await room.set_flag(await room.folder(reply_ref[0]), [reply_ref[1]], "answered",
                                True)
        except NotFound:
            pass
    inbox = await room.inbox()
    where = f" ({len(result.queued)} queued for delivery elsewhere)" if result.queued else ""
    return redirect(f"/mail/{inbox.id}", f"Message sent{where}.")


# -- folders --


@page
async def folders_action(request: Request) -> Response:
    room = mailroom(request)
    form = await read_form(request)
    action = field(form, "action")
    name = field(form, "name").strip()
    if action == "create":
        box = await room.create_folder(name)
        return redirect(f"/mail/{box.id}", f"Folder {box.name} created.")
    box_id = field(form, "box")
    if not box_id.isdigit():
        raise InvalidInput("which folder?")
    if action == "rename":
        await room.rename_folder(int(box_id), name)
        return redirect(f"/mail/{box_id}", f"Folder renamed to {name}.")
    if action == "delete":
        await room.delete_folder(int(box_id))
        inbox = await room.inbox()
        return redirect(f"/mail/{inbox.id}", "Folder deleted.")
    raise InvalidInput(f"unknown folder action {action!r}")


# -- live updates --


@page
async def events(request: Request) -> Response:
    """Server-sent events: 'change' with the unread counts whenever a folder changes, and at
    once when the folders differ from what the page showed (``shown``: ``folders_token``)."""
    room = mailroom(request)
    state = web_state(request)
    shown = request.query_params.get("shown")
    boxes = await room.mailboxes.list_mailboxes(room.account.id)
    watches = [state.services.changes.watch(b.id) for b in boxes]

    async def stream() -> AsyncIterator[str]:
        try:
            yield "retry: 3000\n\n"
            if shown is not None:  # the watches are in place: a later change wakes them
                folders = await room.folders()
                if folders_token(folders) != shown:
                    yield _change_event(folders)
            while not state.closing.is_set():
                waiters = [asyncio.ensure_future(w.event.wait()) for w in watches]
                waiters.append(asyncio.ensure_future(state.closing.wait()))
                try:
                    done, _ = await asyncio.wait(waiters, timeout=20,
                                                 return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()
                if state.closing.is_set():
                    return
                if not done:
                    yield ": keep-alive\n\n"
                    continue
                for w in watches:
                    w.event.clear()
                await asyncio.sleep(0.2)  # let a burst of changes settle into one event
                yield _change_event(await room.folders())
        finally:
            for w in watches:
                w.close()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _change_event(folders: list[FolderInfo]) -> str:
    """The live-update event that gives the page the folders' unread counts."""
    counts = {f.id: f.unseen for f in folders}
    return f"event: change\ndata: {json.dumps({'unseen': counts})}\n\n"


routes = [
    Route("/mail", mail_home),
    Route("/mail/{box:int}", folder_page),
    Route("/mail/{box:int}/action", folder_action, methods=["POST"]),
    Route("/mail/{box:int}/{uid:int}", message_page),
    Route("/mail/{box:int}/{uid:int}/body", message_body),
    Route("/mail/{box:int}/{uid:int}/raw", message_raw),
    Route("/mail/{box:int}/{uid:int}/part/{path}", message_part),
    Route("/compose", compose_page),
    Route("/compose", compose_submit, methods=["POST"]),
    Route("/folders", folders_action, methods=["POST"]),
    Route("/events", events),
]
