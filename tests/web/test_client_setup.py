"""Client set-up beyond Thunderbird: Outlook's autodiscover asked with curl as Outlook asks
it, and the Apple configuration profile downloaded from the webmail settings."""

from __future__ import annotations

import plistlib
import subprocess
import xml.etree.ElementTree as ET

import httpx

from tests.conftest import RunningServer, require_binary
from tests.web.conftest import ALICE, DOMAIN, base_url
from tests.web.helpers import WebClient

NS = {"r": "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006",
      "o": "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"}
REQUEST = """<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>{address}</EMailAddress>
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request>
</Autodiscover>"""


def _curl_autodiscover(server: RunningServer, body: str, path: str) -> tuple[int, str]:
    curl = require_binary("curl")
    proc = subprocess.run(
        [curl, "-s", "-w", "\n%{http_code}", "-X", "POST", "-H", "Content-Type: text/xml",
         "--data-binary", "@-", base_url(server) + path],
        input=body.encode(), capture_output=True, timeout=30, check=True)
    text, _, code = proc.stdout.decode().rpartition("\n")
    return int(code), text


def test_outlook_autodiscover(shared_server: RunningServer) -> None:
    code, text = _curl_autodiscover(shared_server, REQUEST.format(address=ALICE.upper()),
                                    "/Autodiscover/Autodiscover.xml")
    assert code == 200, text
    account = ET.fromstring(text).find("o:Response/o:Account", NS)
    assert account is not None and account.findtext("o:Action", namespaces=NS) == "settings"
    protocols = {p.findtext("o:Type", namespaces=NS): p
                 for p in account.findall("o:Protocol", NS)}
    assert set(protocols) == {"IMAP", "POP3", "SMTP"}
    ports = shared_server.ports
    imap, smtp = protocols["IMAP"], protocols["SMTP"]
    assert imap.findtext("o:Port", namespaces=NS) == str(ports["imaps"])
    assert imap.findtext("o:Encryption", namespaces=NS) == "SSL"
    assert imap.findtext("o:LoginName", namespaces=NS) == ALICE
    assert smtp.findtext("o:Port", namespaces=NS) == str(ports["submissions"])
    assert {p.findtext("o:Encryption", namespaces=NS) for p in protocols.values()} == {"SSL"}

    # Strangers' input: a clear error each time, in Outlook's error form.
    code, text = _curl_autodiscover(shared_server, REQUEST.format(address="x@unknown.example"),
                                    "/autodiscover/autodiscover.xml")
    assert code == 404 and "unknown.example is not a mail domain here" in text
    code, text = _curl_autodiscover(shared_server, "<not xml", "/autodiscover/autodiscover.xml")
    assert code == 400 and "<ErrorCode>600</ErrorCode>" in text
    code, text = _curl_autodiscover(shared_server, "x" * 100_000,
                                    "/autodiscover/autodiscover.xml")
    assert code == 413
    assert httpx.get(base_url(shared_server) + "/", timeout=10).status_code in (200, 303)


def test_apple_configuration_profile(shared_server: RunningServer) -> None:
    client = WebClient(base_url(shared_server))
    try:
        assert client.get("/settings/mobileconfig", follow=False).status_code in (302, 303)
        client.login(ALICE)
        assert 'href="/settings/mobileconfig"' in client.get("/settings").text
        response = client.get("/settings/mobileconfig")
    finally:
        client.close()
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-apple-aspen-config"
    assert ".mobileconfig" in response.headers["content-disposition"]
    profile = plistlib.loads(response.content)
    assert profile["PayloadType"] == "Configuration"
    mail = profile["PayloadContent"][0]
    assert mail["PayloadType"] == "com.apple.mail.managed"
    assert mail["EmailAddress"] == ALICE and mail["EmailAccountType"] == "EmailTypeIMAP"
    assert mail["IncomingMailServerPortNumber"] == shared_server.ports["imaps"]
    assert mail["OutgoingMailServerPortNumber"] == shared_server.ports["submissions"]
    assert mail["IncomingMailServerUseSSL"] is True
    # No password travels in the profile: the device asks for it.
    assert not [k for k, v in mail.items() if "Password" in k and isinstance(v, str)]
    assert DOMAIN in profile["PayloadDisplayName"]
