"""Account operations a user does for themselves: sign up, change the password, manage their
own aliases, and the settings a mail client needs (also served as Thunderbird autoconfig)."""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from html import escape

from starlette.exceptions import HTTPException

from mailstead import bootstrap
from mailstead.auth.passwords import check_password_rules, hash_password
from mailstead.core.addresses import normalize_domain, parse_address
from mailstead.core.errors import Conflict, InvalidInput, NotFound
from mailstead.obs import log_event
from mailstead.services.accounts import AuthFailed
from mailstead.store.interfaces import Account, Alias
from mailstead.web.state import WebState

USERNAME = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,30}[a-z0-9])?$")
RESERVED = frozenset({
    "abuse", "admin", "administrator", "hostmaster", "mailer-daemon", "noreply", "no-reply",
    "postmaster", "root", "security", "support", "webmaster", "info", "www", "ftp", "mail",
    "dmarc", "dmarc-reports", "tls-reports", "autoconfig", "autodiscover",
})


class SignupRefused(Exception):
    """Sign-up not allowed (closed, rate limit, bad invitation); the text explains."""


def username_rules() -> list[str]:
    return [
        "1 to 32 characters: lower-case letters, digits, '.', '_' and '-'",
        "starts and ends with a letter or a digit; no '+' (it is used for tags)",
        "not a reserved name such as postmaster, abuse or admin",
    ]


def password_rules(min_length: int) -> list[str]:
    return [
        f"at least {min_length} characters",
        "no spaces at the start or the end, no control characters",
        "at least 3 different characters (longer passphrases are better)",
    ]


def check_username(name: str) -> str:
    local = name.strip().lower()
    if not USERNAME.match(local) or ".." in local:
        raise InvalidInput(f"the username {name!r} does not follow the rules below")
    if local in RESERVED:
        raise InvalidInput(f"the username {local!r} is reserved")
    return local


async def signup_domains(state: WebState) -> list[str]:
    wanted = [normalize_domain(d) for d in state.cfg.web.signup_domains]
    existing = [d.name for d in await state.store.list_domains()]
    return [d for d in wanted if d in existing] if wanted else existing


def _code_digest(code: str) -> str:
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


def _invite_used(state: WebState, code: str) -> bool:
    path = state.cfg.path("web/invites-used")
    if not path.exists():
        return False
    return _code_digest(code) in path.read_text(encoding="ascii").split()


def _mark_invite_used(state: WebState, code: str) -> None:
    path = state.cfg.path("web/invites-used")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="ascii") as f:
        f.write(_code_digest(code) + "\n")
        f.flush()
        os.fsync(f.fileno())


async def signup(state: WebState, *, username: str, domain: str, password: str, confirm: str,
                 invite: str, client_ip: str) -> Account:
    """Creates the account, or raises SignupRefused / InvalidInput / Conflict with the reason."""
    web = state.cfg.web
    if web.signup == "off":
        raise SignupRefused("sign-up is closed on this server; ask its administrator")
    if not state.signups.allowed(client_ip):
        raise SignupRefused(
            f"too many sign-ups from your address ({web.signup_per_ip_per_day} a day); "
            "try again tomorrow"
        )
    code = invite.strip()
    if web.signup == "invite" and (code not in web.invite_codes or _invite_used(state, code)):
        raise SignupRefused("sign-up needs a valid invitation code that has not been used")
    domains = await signup_domains(state)
    try:
        chosen = normalize_domain(domain)
    except InvalidInput:
        chosen = ""
    if chosen not in domains:
        raise InvalidInput("choose one of the offered domains")
    local = check_username(username)
    if password != confirm:
        raise InvalidInput("the two passwords differ")
    check_password_rules(password, state.cfg.auth.min_password_length)
    address = f"{local}@{chosen}"
    if await state.store.get_account(address) is not None or \
            await state.store.alias_destinations(address):
        raise Conflict(f"{address} is taken; pick another username")
    account = await bootstrap.add_user(
        state.store, address, password, min_password_length=state.cfg.auth.min_password_length
    )
    state.signups.record(client_ip)
    if web.signup == "invite":
        _mark_invite_used(state, code)
    log_event("web.signup", user=address, client=client_ip)
    return account


async def change_password(state: WebState, account: Account, *, current: str, new: str,
                          confirm: str, client_ip: str) -> Account:
    try:
        await state.services.accounts.authenticate(account.address, current, client_ip)
    except AuthFailed as exc:
        if exc.temporary:  # 429 with Retry-After (RFC 6585 section 4), like the login
            raise HTTPException(429, "too many wrong passwords; try again later", headers={
                "Retry-After": str(max(1, math.ceil(exc.retry_after)))}) from None
        raise InvalidInput("the current password is wrong") from None
    if new != confirm:
        raise InvalidInput("the two new passwords differ")
    check_password_rules(new, state.cfg.auth.min_password_length)
    await state.store.set_password(account.address, hash_password(new))
    log_event("web.password_changed", user=account.address, client=client_ip)
    updated = await state.store.get_account_by_id(account.id)
    if updated is None:
        raise NotFound("account is gone")
    return updated


# -- own aliases --


async def own_aliases(state: WebState, account: Account) -> list[Alias]:
    return [a for a in await state.store.list_aliases(account.domain)
            if a.destination.lower() == account.address and not a.source.startswith("@")]


async def add_own_alias(state: WebState, account: Account, local_part: str) -> Alias:
    if not state.cfg.web.users_manage_aliases:
        raise InvalidInput("aliases are managed by the administrator on this server")
    local = check_username(local_part)
    source = f"{local}@{account.domain}"
    if await state.store.get_account(source) is not None or \
            await state.store.alias_destinations(source):
        raise Conflict(f"{source} is taken")
    return await state.store.add_alias(source, account.address)


async def remove_own_alias(state: WebState, account: Account, source: str) -> None:
    if not state.cfg.web.users_manage_aliases:
        raise InvalidInput("aliases are managed by the administrator on this server")
    key = parse_address(source).key
    if not any(a.source == key for a in await own_aliases(state, account)):
        raise NotFound(f"you have no alias {key}")
    await state.store.remove_alias(key, account.address)


# -- client settings --


@dataclass(frozen=True, slots=True)
class ClientSetting:
    kind: str  # "IMAP", "POP3", "SMTP"
    host: str
    port: int
    security: str  # "SSL/TLS", "STARTTLS", "none"
    username: str


_KINDS = {"imap": "IMAP", "pop3": "POP3", "submission": "SMTP"}
_SECURITY = {"implicit": "SSL/TLS", "starttls": "STARTTLS", "none": "none"}


def client_settings(state: WebState, address: str) -> list[ClientSetting]:
    """Incoming and outgoing servers as configured and running, encrypted ones first."""
    out: list[ClientSetting] = []
    for _name, (protocol, port, tls) in state.listener_ports().items():
        kind = _KINDS.get(protocol)
        if kind is None:
            continue
        out.append(ClientSetting(kind, state.cfg.hostname, port, _SECURITY.get(tls, tls),
                                 address))
    order = {"IMAP": 0, "POP3": 1, "SMTP": 2}
    sec = {"SSL/TLS": 0, "STARTTLS": 1, "none": 2}
    return sorted(out, key=lambda s: (order[s.kind], sec.get(s.security, 3), s.port))


def autoconfig_xml(state: WebState, address: str, domain: str) -> str:
    """Thunderbird's autoconfig document (clientConfig version 1.1)."""
    host = escape(state.cfg.hostname)
    dom = escape(domain)
    socket_type = {"SSL/TLS": "SSL", "STARTTLS": "STARTTLS", "none": "plain"}
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<clientConfig version="1.1">',
        f'  <emailProvider id="{dom}">',
        f"    <domain>{dom}</domain>",
        f"    <displayName>{dom} (mailstead)</displayName>",
        f"    <displayShortName>{dom}</displayShortName>",
    ]
    for setting in client_settings(state, address or "%EMAILADDRESS%"):
        if setting.security == "none":
            continue  # never offer a client a way to send its password in clear
        tag = "outgoingServer" if setting.kind == "SMTP" else "incomingServer"
        lines += [
            f'    <{tag} type="{"smtp" if setting.kind == "SMTP" else setting.kind.lower()}">',
            f"      <hostname>{host}</hostname>",
            f"      <port>{setting.port}</port>",
            f"      <socketType>{socket_type[setting.security]}</socketType>",
            "      <authentication>password-cleartext</authentication>",
            "      <username>%EMAILADDRESS%</username>",
            f"    </{tag}>",
        ]
    lines += ["  </emailProvider>", "</clientConfig>", ""]
    return "\n".join(lines)
