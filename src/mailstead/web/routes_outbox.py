"""Recall where users are: the outbox (queued messages of the user, found by Message-ID from
the Sent view and the terminal client) and the webmail's Recall button.

``GET /api/outbox`` lists them for API clients (registered into ``api.ENDPOINTS`` by importing
this module, as api.py does); ``POST /mail/outbox/{queue_id}/recall`` is the Sent view's form
button, which comes back to the Sent view with each recipient's outcome.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailstead.core.errors import InvalidInput, NotFound
from mailstead.queue.outbox import OutboxItem, by_message_id, outbox
from mailstead.queue.recall import RecallReport
from mailstead.store.interfaces import Account
from mailstead.web import adminops
from mailstead.web.api import Ctx, endpoint
from mailstead.web.pages import field, page, read_form, redirect, session_of, web_state
from mailstead.web.state import WebState


class OutboxItemOut(BaseModel):
    queue_id: str = Field(description="for POST /api/messages/{queue_id}/recall")
    message_id: str = Field(description="the Message-ID header, as in the copy in Sent")
    subject: str
    created: datetime
    pending: list[str] = Field(description="recipients not reached yet (a recall stops these)")
    delivered: list[str]
    failed: list[str]


class OutboxOut(BaseModel):
    messages: list[OutboxItemOut] = Field(description="oldest first")


async def account_outbox(state: WebState, account: Account) -> list[OutboxItem]:
    return await outbox(state.store, state.services.blobs, account)


async def waiting_in_sent(state: WebState, account: Account) -> dict[str, OutboxItem]:
    """For the Sent view: Message-ID -> the queued message still waiting for someone."""
    return by_message_id(await account_outbox(state, account))


@endpoint("GET", "/api/outbox",
          "Your sent messages still waiting in the queue for some recipient (match them to "
          "Sent by Message-ID; recall with POST /api/messages/{queue_id}/recall)",
          "mail", response=OutboxOut, errors=(401,))
async def list_outbox(ctx: Ctx) -> OutboxOut:
    items = await account_outbox(ctx.state, ctx.user)
    return OutboxOut(messages=[OutboxItemOut(
        queue_id=i.queue_id, message_id=i.message_id, subject=i.subject, created=i.created,
        pending=i.pending, delivered=i.delivered, failed=i.failed) for i in items])


def outcome_text(report: RecallReport, subject: str = "") -> str:
    """Each recipient's outcome in one notice line."""
    about = f'"{subject}"' if subject else "The message"
    parts = [f"{about} recalled"]
    if report.recalled:
        parts.append(f"will not be delivered to {', '.join(report.recalled)}")
    if report.delivered:
        parts.append(f"already delivered to {', '.join(report.delivered)}")
    if report.failed:
        parts.append(f"had already failed for {', '.join(report.failed)}")
    return "; ".join(parts) + "."


@page
async def recall_from_sent(request: Request) -> Response:
    state = web_state(request)
    account = session_of(request).account
    form = await read_form(request)
    back = field(form, "back")
    if not (back.startswith("/mail/") and "//" not in back and "\\" not in back):
        back = "/mail"
    queue_id = request.path_params["queue_id"]
    subject = next((i.subject for i in await account_outbox(state, account)
                    if i.queue_id == queue_id), "")
    try:
        report = await adminops.recall(state, queue_id, account=account)
    except (NotFound, InvalidInput):
        return redirect(back, "This message is no longer waiting: it can no longer be "
                              "recalled.")
    return redirect(back, outcome_text(report, subject))


routes = [Route("/mail/outbox/{queue_id}/recall", recall_from_sent, methods=["POST"])]
