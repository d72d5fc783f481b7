"""What the terminal client asks of mailstead's JSON API, where IMAP and SMTP have no word
for it: recalling a sent message that still waits in the server's queue.

The Sent copy and the queued message carry the same Message-ID: ``GET /api/outbox`` lists the
user's waiting messages with theirs, and ``POST /api/messages/{queue_id}/recall`` stops the
recipients not reached yet. A Bearer token is fetched once with the IMAP login's address and
password (HTTP Basic on ``POST /api/token``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from mailstead.client.connection import ClientError, Settings


@dataclass(frozen=True, slots=True)
class RecallOutcome:
    subject: str
    queue_id: str
    recalled: list[str] = field(default_factory=list)  # will not get it
    delivered: list[str] = field(default_factory=list)  # had it already
    failed: list[str] = field(default_factory=list)  # had bounced already
    recalled_by: str = "the sender"

    def lines(self) -> list[str]:
        """Each recipient's outcome, for the screen."""
        about = f'"{self.subject}"' if self.subject else "the message"
        out = [f"Recalled {about} (queue id {self.queue_id}):"]
        out += [f"  {a}: recalled, will not receive it" for a in self.recalled]
        out += [f"  {a}: already delivered, cannot be taken back" for a in self.delivered]
        out += [f"  {a}: had failed already" for a in self.failed]
        return out


class WebApi:
    def __init__(self, settings: Settings, base_url: str) -> None:
        self.settings = settings
        verify: Any = settings.ssl_context() if base_url.startswith("https:") else True
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=settings.timeout,
                                 verify=verify)
        self._token = ""

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str) -> Any:
        try:
            if not self._token:
                got = self.http.post("/api/token", auth=(self.settings.user,
                                                         self.settings.password))
                if got.status_code != 200:
                    raise ClientError(f"the web API refused the login: {_error(got)}")
                self._token = str(got.json()["token"])
            response = self.http.request(method, path,
                                         headers={"Authorization": f"Bearer {self._token}"})
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach the web API at {self.http.base_url}: "
                              f"{exc}") from None
        if response.status_code != 200:
            raise ClientError(_error(response))
        return response.json()

    def outbox(self) -> dict[str, dict[str, Any]]:
        """The user's messages still waiting in the queue, by Message-ID."""
        listed = self._request("GET", "/api/outbox")
        return {str(m["message_id"]): m for m in listed["messages"] if m["message_id"]}

    def recall(self, message_id: str) -> RecallOutcome:
        """Recalls the waiting message with this Message-ID (that of the Sent copy)."""
        item = self.outbox().get(message_id.strip())
        if item is None:
            raise ClientError("this message is not waiting in the queue: there is nothing "
                              "to recall (it went out already, or was never queued)")
        got = self._request("POST", f"/api/messages/{item['queue_id']}/recall")
        return RecallOutcome(subject=str(item["subject"]), queue_id=str(got["queue_id"]),
                             recalled=list(got["recalled"]), delivered=list(got["delivered"]),
                             failed=list(got["failed"]),
                             recalled_by=str(got.get("recalled_by", "the sender")))


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"
