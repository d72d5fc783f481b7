"""Request and response bodies of the JSON API (pydantic models; the OpenAPI document is
generated from them, so the document and the checks cannot drift apart)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Error(BaseModel):
    error: str = Field(description="what went wrong, in words")


class Ok(BaseModel):
    ok: bool = True
    count: int = Field(0, description="how many items the request changed")


class TokenOut(BaseModel):
    token: str = Field(description="send as 'Authorization: Bearer <token>'")
    address: str


class PasswordIn(_In):
    current: str = Field(max_length=1024)
    new: str = Field(max_length=1024)


class SignupIn(_In):
    username: str = Field(max_length=64, description="the part before @")
    domain: str = Field(max_length=255)
    password: str = Field(max_length=1024)
    invite: str = Field("", max_length=200, description="invitation code (signup = invite)")


class Quota(BaseModel):
    used_bytes: int
    used_messages: int
    limit_bytes: int = Field(description="0: unlimited")
    limit_messages: int = Field(description="0: unlimited")


class Me(BaseModel):
    address: str
    is_admin: bool
    created: datetime
    quota: Quota
    senders: list[str] = Field(description="addresses this account may send as")


class Folder(BaseModel):
    id: int
    name: str
    special_use: str | None
    messages: int
    unseen: int


class FolderIn(_In):
    name: str = Field(min_length=1, max_length=200)


class MessageSummary(BaseModel):
    uid: int
    folder_id: int
    subject: str
    from_: str = Field(alias="from")
    to: str
    cc: str
    date: datetime
    size: int
    seen: bool
    flagged: bool
    answered: bool
    draft: bool
    has_attachment: bool
    snippet: str
    thread_size: int = 1
    integrity: Literal["verified", "unsigned", "failed"] | None = Field(
        default=None, description="verified: the sender's signature (DKIM of the From domain, "
        "or the DMTP hash) matches; unsigned: nothing to check; failed: a signature that does "
        "not match; null: unknown or not applicable (e.g. our users' own mail)")

    model_config = ConfigDict(populate_by_name=True)


class MessageList(BaseModel):
    total: int
    page: int
    pages: int
    truncated_search: bool
    messages: list[MessageSummary]


class Attachment(BaseModel):
    path: str = Field(description="part path, for .../parts/{path}")
    filename: str
    content_type: str
    size: int
    content_id: str
    inline: bool


class MessageDetail(MessageSummary):
    reply_to: str
    message_id: str
    text: str | None = Field(description="plain text body; null when there is only HTML")
    html: str | None = Field(description="HTML body, sanitised; remote images removed unless "
                                         "images=true")
    blocked_images: int
    attachments: list[Attachment]


class FlagsIn(_In):
    seen: bool | None = None
    flagged: bool | None = None
    answered: bool | None = None


class MoveIn(_In):
    folder_id: int = Field(description="the target folder")


class JunkIn(_In):
    junk: bool = Field(True, description="true: to Junk; false: back to the Inbox")


class AttachmentIn(_In):
    filename: str = Field(min_length=1, max_length=200)
    content_type: str = Field("application/octet-stream", max_length=200)
    data: str = Field(description="the content, base64")


class MessageIn(_In):
    from_: str | None = Field(None, alias="from", max_length=320,
                              description="your address or one of your aliases")
    to: list[str] = Field(default_factory=list, max_length=1000)
    cc: list[str] = Field(default_factory=list, max_length=1000)
    bcc: list[str] = Field(default_factory=list, max_length=1000)
    subject: str = Field("", max_length=998)
    text: str = Field("", description="plain text body (or the text part of an HTML message)")
    html: str | None = Field(None, description="HTML body; sanitised before sending")
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=100)
    in_reply_to: str = Field("", max_length=998)
    references: str = Field("", max_length=8000)


class SendOut(BaseModel):
    queue_id: str
    delivered: list[str] = Field(description="local recipients, already in their mailboxes")
    queued: list[str] = Field(description="remote recipients, waiting in the outbound queue")
    sent_uid: int = Field(description="uid of the copy in Sent")


class DraftOut(BaseModel):
    folder_id: int
    uid: int


class AliasOut(BaseModel):
    source: str
    destination: str


class OwnAliasIn(_In):
    local: str = Field(min_length=1, max_length=64, description="the part before @")


class ClientSetting(BaseModel):
    kind: Literal["IMAP", "POP3", "SMTP"]
    host: str
    port: int
    security: str
    username: str


class DomainOut(BaseModel):
    name: str
    created: datetime


class DomainIn(_In):
    name: str = Field(min_length=1, max_length=255)


class DnsRecord(BaseModel):
    name: str
    type: str
    value: str
    purpose: str


class UserOut(BaseModel):
    address: str
    is_admin: bool
    created: datetime
    quota: Quota


class UserIn(_In):
    address: str = Field(max_length=320)
    password: str = Field(max_length=1024)
    quota_bytes: int = Field(0, ge=0, le=2**62)
    quota_messages: int = Field(0, ge=0, le=2**62)


class UserPatch(_In):
    quota_bytes: int | None = Field(None, ge=0, le=2**62)
    quota_messages: int | None = Field(None, ge=0, le=2**62)
    password: str | None = Field(None, max_length=1024)


class AliasIn(_In):
    source: str = Field(max_length=320, description="address, or @domain for a catch-all")
    destination: str = Field(max_length=320)


class QueueRecipientOut(BaseModel):
    address: str
    status: str
    last_reply: str


class QueueItem(BaseModel):
    id: str
    sender: str
    recipients: list[QueueRecipientOut]
    size: int
    created: datetime
    next_attempt: datetime
    attempts: int
    state: str


class RecallOut(BaseModel):
    queue_id: str
    recalled: list[str] = Field(description="recipients that will not get the message")
    delivered: list[str] = Field(description="recipients that had it already")
    failed: list[str] = Field(description="recipients it had bounced for already")
    recalled_by: str = Field(description='who recalled: "the sender", or "the administrator '
                             '<address>"')


class SpamVerdictOut(BaseModel):
    at: str = Field(description="when (ISO 8601, UTC)")
    recipient: str
    score: float
    tests: list[str] = Field(description="the rules that matched")
    action: str = Field(description="inbox, junk or reject")


class Stats(BaseModel):
    model_config = ConfigDict(extra="allow")

    uptime_seconds: int
    messages_in: int = Field(description="SMTP and DMTP transactions received")
    messages_out: int = Field(description="delivery attempts to other servers")
    messages_sent_web: int
    queue_size: int
    queue_recipients: int
    connections: dict[str, int]
    connections_total: int
    logins_failed: int
    lockouts: int
    spam_verdicts: dict[str, int] = Field(description="verdicts per action (inbox, junk, "
                                          "reject), every node's")
    spam_recent: list[SpamVerdictOut] = Field(description="the last verdicts, newest first")
    accounts: int
    domains: int
    events: dict[str, Any]
