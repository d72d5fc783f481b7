"""Mail rules as the web shows them: a vacation form and simple rules ("if sender, subject or
list contains X then move to / flag / forward"), written as one Sieve script (named
``webmail``) and made active. The forms' values ride in the script's first line (a comment),
so the page can show them again; a script edited by hand (the raw editor, ManageSieve) has
no such line, and the page says so before the forms replace it.
"""

from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from mailstead.core.errors import InvalidInput
from mailstead.sieve.service import SieveService, check_script, sieve_store
from mailstead.store.interfaces import Account

WEB_SCRIPT = "webmail"
STATE_PREFIX = "# mailstead-web "
MAX_RULES = 20
_DATE = r"^(\d{4}-\d{2}-\d{2})?$"


class SimpleRule(BaseModel):
    field: Literal["from", "subject", "list", "to"] = "from"
    contains: str = Field(min_length=1, max_length=200)
    action: Literal["move", "flag", "forward", "discard"] = "move"
    target: str = Field("", max_length=320, description="folder (move) or address (forward)")


class VacationSettings(BaseModel):
    enabled: bool = False
    start: str = Field("", pattern=_DATE, description="first day (YYYY-MM-DD), empty: now")
    end: str = Field("", pattern=_DATE, description="last day (YYYY-MM-DD), empty: open")
    subject: str = Field("", max_length=200)
    text: str = Field("", max_length=10_000)
    days: int = Field(7, ge=1, le=30, description="days before the same sender is answered again")


class WebRules(BaseModel):
    rules: list[SimpleRule] = Field(default_factory=list, max_length=MAX_RULES)
    vacation: VacationSettings = Field(default_factory=VacationSettings)


def quote(text: str) -> str:
    """A Sieve quoted string (RFC 5228 2.4.2)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_TESTS = {
    "from": 'address :contains "from" {}',
    "to": 'address :contains ["to", "cc"] {}',
    "subject": 'header :contains "subject" {}',
    "list": 'header :contains "list-id" {}',
}


def generate(settings: WebRules) -> str:
    """The Sieve script for the forms; InvalidInput for a rule that cannot be written."""
    body: list[str] = []
    needs = {"fileinto", "imap4flags", "mailbox"}
    for rule in settings.rules:
        test = _TESTS[rule.field].format(quote(rule.contains))
        if rule.action == "move":
            if not rule.target.strip():
                raise InvalidInput("a move rule needs a folder")
            action = f"fileinto :create {quote(rule.target.strip())}; stop;"
        elif rule.action == "flag":
            action = 'addflag "\\\\Flagged";'
        elif rule.action == "forward":
            if not re.fullmatch(r"[^@\s<>\",]+@[^@\s<>\",]+", rule.target.strip()):
                raise InvalidInput("a forward rule needs an address")
            needs.add("copy")
            action = f"redirect :copy {quote(rule.target.strip())};"
        else:
            action = "discard; stop;"
        body.append(f"if {test} {{ {action} }}")
    vacation = settings.vacation
    if vacation.enabled:
        if not vacation.text.strip():
            raise InvalidInput("the vacation reply needs a text")
        needs |= {"vacation"}
        reply = (f"vacation :days {vacation.days}"
                 + (f" :subject {quote(vacation.subject)}" if vacation.subject else "")
                 + f" {quote(vacation.text)};")
        period = []
        if vacation.start:
            period.append(f'currentdate :value "ge" "date" {quote(vacation.start)}')
        if vacation.end:
            period.append(f'currentdate :value "le" "date" {quote(vacation.end)}')
        if period:
            needs |= {"date", "relational"}
            body.insert(0, f"if allof ({', '.join(period)}) {{ {reply} }}")
        else:
            body.insert(0, reply)
    state = json.dumps(settings.model_dump(), separators=(",", ":"), ensure_ascii=True)
    head = [STATE_PREFIX + state, f"require [{', '.join(quote(n) for n in sorted(needs))}];"]
    text = "\r\n".join(head + body) + "\r\n"
    check_script(text)  # what we write always compiles; a fault here is ours
    return text


def read_state(script: str | None) -> WebRules | None:
    """The forms' values from a script the forms wrote; None for one edited by hand."""
    if not script or not script.startswith(STATE_PREFIX):
        return None
    line = script[len(STATE_PREFIX):].split("\r\n", 1)[0].split("\n", 1)[0]
    try:
        return WebRules.model_validate(json.loads(line))
    except (ValueError, ValidationError):
        return None


async def current(sieve: SieveService, account: Account) -> tuple[str, WebRules | None]:
    """The active script's text ("" for none) and the forms' values if the forms wrote it."""
    found = await sieve_store(sieve.store).active_sieve_script(account.id)
    if found is None:
        return "", WebRules()
    return found[1], read_state(found[1])


async def save_script(sieve: SieveService, account: Account, text: str) -> None:
    """Stores ``text`` as the web's script and makes it the active one."""
    await sieve.put(account, WEB_SCRIPT, text)
    await sieve.activate(account, WEB_SCRIPT)


def sieve_service(state: object) -> SieveService:
    services = getattr(state, "services")  # noqa: B009
    found = services.extra.get("sieve")
    if not isinstance(found, SieveService):
        raise InvalidInput("mail rules are not available on this server")
    return found
