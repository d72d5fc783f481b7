"""Client set-up documents beyond Thunderbird's autoconfig: Outlook's autodiscover (POX, the
2006 schemas every Outlook and many phone clients still ask) and an Apple configuration profile
(.mobileconfig, for iPhone, iPad and macOS Mail). Both list only encrypted listeners: a client
must never be offered a way to send its password in clear. Neither carries a password."""

from __future__ import annotations

import plistlib
import re
import uuid
from html import escape

from mailstead.web.accountops import ClientSetting, client_settings
from mailstead.web.state import WebState

AUTODISCOVER_MAX_BODY = 16 * 1024
RESPONSE_SCHEMA = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_SCHEMA = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
_EMAIL = re.compile(rb"<(?:\w+:)?EMailAddress>\s*([^<\s]{3,320})\s*</(?:\w+:)?EMailAddress>",
                    re.IGNORECASE)


def requested_address(body: bytes) -> str | None:
    """The address an autodiscover request asks about (its EMailAddress element). A pattern,
    not an XML parser: the body is a stranger's, and only one element is wanted."""
    found = _EMAIL.search(body[:AUTODISCOVER_MAX_BODY])
    return found.group(1).decode("utf-8", "replace") if found else None


def _encrypted(state: WebState, address: str) -> list[ClientSetting]:
    return [s for s in client_settings(state, address) if s.security != "none"]


def autodiscover_xml(state: WebState, address: str) -> str:
    """The Outlook autodiscover answer (POX, responseschema 2006a) for ``address``."""
    host = escape(state.cfg.hostname)
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        f'<Autodiscover xmlns="{RESPONSE_SCHEMA}">',
        f'  <Response xmlns="{OUTLOOK_SCHEMA}">',
        "    <Account>",
        "      <AccountType>email</AccountType>",
        "      <Action>settings</Action>",
    ]
    seen: set[str] = set()
    for setting in _encrypted(state, address):
        kind = {"IMAP": "IMAP", "POP3": "POP3", "SMTP": "SMTP"}[setting.kind]
        if kind in seen:  # Outlook reads one Protocol of each type: the preferred (first) one
            continue
        seen.add(kind)
        encryption = "SSL" if setting.security == "SSL/TLS" else "TLS"
        lines += [
            "      <Protocol>",
            f"        <Type>{kind}</Type>",
            f"        <Server>{host}</Server>",
            f"        <Port>{setting.port}</Port>",
            "        <DomainRequired>off</DomainRequired>",
            f"        <LoginName>{escape(address)}</LoginName>",
            "        <SPA>off</SPA>",
            f"        <Encryption>{encryption}</Encryption>",
            "        <AuthRequired>on</AuthRequired>",
        ]
        if kind == "SMTP":
            lines.append("        <UsePOPAuth>off</UsePOPAuth>")
        lines.append("      </Protocol>")
    lines += ["    </Account>", "  </Response>", "</Autodiscover>", ""]
    return "\n".join(lines)


def autodiscover_error(code: int, message: str) -> str:
    """An autodiscover error answer (Outlook shows its message)."""
    return "\n".join([
        '<?xml version="1.0" encoding="utf-8"?>',
        f'<Autodiscover xmlns="{RESPONSE_SCHEMA}">',
        "  <Response>",
        f'    <Error Id="{uuid.uuid4().int % 10**9}">',
        f"      <ErrorCode>{code}</ErrorCode>",
        f"      <Message>{escape(message)}</Message>",
        "    </Error>",
        "  </Response>",
        "</Autodiscover>", ""])


def mobileconfig(state: WebState, address: str, name: str = "") -> bytes:
    """An Apple configuration profile with one mail account (IMAP in, submission out). The
    password is asked on the device when the profile is installed."""
    settings = _encrypted(state, address)
    incoming = next((s for s in settings if s.kind == "IMAP"), None)
    outgoing = next((s for s in settings if s.kind == "SMTP"), None)
    if incoming is None or outgoing is None:
        raise LookupError("no encrypted IMAP or submission listener is running")
    domain = address.rpartition("@")[2]
    reverse = ".".join(reversed(state.cfg.hostname.split(".")))
    stable = uuid.uuid5(uuid.NAMESPACE_DNS, f"{address}.{state.cfg.hostname}")
    account = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{reverse}.mailstead.mail.{stable}",
        "PayloadUUID": str(uuid.uuid5(stable, "mail")).upper(),
        "PayloadDisplayName": f"Mail: {address}",
        "EmailAccountDescription": address,
        "EmailAccountName": name or address,
        "EmailAccountType": "EmailTypeIMAP",
        "EmailAddress": address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": state.cfg.hostname,
        "IncomingMailServerPortNumber": incoming.port,
        "IncomingMailServerUseSSL": True,  # implicit TLS, or STARTTLS on 143
        "IncomingMailServerUsername": address,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": state.cfg.hostname,
        "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": address,
        "OutgoingPasswordSameAsIncomingPassword": True,
        "PreventMove": False,
        "SMIMEEnabled": False,
    }
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{reverse}.mailstead.{stable}",
        "PayloadUUID": str(stable).upper(),
        "PayloadDisplayName": f"{domain} mail ({address})",
        "PayloadDescription": f"Sets up the mail account {address} on {state.cfg.hostname}.",
        "PayloadOrganization": domain,
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [account],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)
