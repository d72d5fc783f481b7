"""Failed logins block their sources, never the account: an attacker on 127.0.0.2 (or rotating
through 127.0.0.2-40, one /24) cannot lock alice out of IMAP, SMTP AUTH, POP3, the web login or
the JSON API from 127.0.0.1, while the attacker's addresses are told to try later, even with the
right password (README "Login protection").

The clients bind their sockets to other loopback addresses (Linux routes all of 127.0.0.0/8 to
lo, and the server on 127.0.0.1 accepts them), so the server sees distinct peers."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import socket
import ssl
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import PASSWORD, RunningServer
from tests.imap.helpers import ALICE, BOB
from tests.web.conftest import web_overrides
from tests.web.helpers import WebClient, api_client, csrf_of

MakeServer = Callable[..., RunningServer]
ATTACKER = "127.0.0.2"


class SourcedIMAP(imaplib.IMAP4_SSL):
    """imaplib over implicit TLS, connecting from a chosen local address."""

    def __init__(self, port: int, source: str, context: ssl.SSLContext) -> None:
        self._source = source
        super().__init__("127.0.0.1", port, ssl_context=context, timeout=30)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self._source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


class SourcedPOP3(poplib.POP3_SSL):
    """poplib over implicit TLS, connecting from a chosen local address."""

    def __init__(self, port: int, source: str, context: ssl.SSLContext) -> None:
        self._source = source
        super().__init__("127.0.0.1", port, context=context, timeout=30)

    def _create_socket(self, timeout: float) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self._source, 0))
        return self.context.wrap_socket(sock, server_hostname=self.host)


def imap_login(server: RunningServer, source: str, user: str, password: str) -> str:
    """'OK', or the response code of the refusal (AUTHENTICATIONFAILED, UNAVAILABLE)."""
    client = SourcedIMAP(server.ports["imaps"], source, server.ssl_context())
    try:
        client.login(user, password)
        return "OK"
    except imaplib.IMAP4.error as exc:
        text = str(exc)
        return text[text.index("[") + 1:text.index("]")] if "[" in text else text
    finally:
        client.shutdown()


def smtp_login(server: RunningServer, source: str, user: str, password: str) -> int:
    with smtplib.SMTP_SSL("127.0.0.1", server.ports["submissions"], timeout=30,
                          source_address=(source, 0), context=server.ssl_context()) as smtp:
        # One AUTH PLAIN per call (smtp.login would try LOGIN too after a failure).
        smtp.ehlo()
        smtp.user, smtp.password = user, password
        try:
            return smtp.auth("PLAIN", smtp.auth_plain)[0]
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code


def pop3_login(server: RunningServer, source: str, user: str, password: str) -> str:
    client = SourcedPOP3(server.ports["pop3s"], source, server.ssl_context())
    try:
        client.user(user)
        return client.pass_(password).decode()
    except poplib.error_proto as exc:
        return str(exc.args[0].decode() if isinstance(exc.args[0], bytes) else exc.args[0])
    finally:
        client.close()


def ordinary_imap_client_is_served(server: RunningServer) -> None:
    """A second, ordinary client (bob from 127.0.0.1): greeting, login and NOOP answered
    within a generous 5 s each."""
    with imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=server.ssl_context(),
                           timeout=5) as client:
        assert client.login(BOB, PASSWORD)[0] == "OK"
        assert client.noop()[0] == "OK"


def test_imap_attacker_on_one_address_cannot_lock_alice_out(make_server: MakeServer) -> None:
    server = make_server()
    codes = [imap_login(server, ATTACKER, ALICE, f"guess{n}") for n in range(20)]
    assert codes[:5] == ["AUTHENTICATIONFAILED"] * 5
    assert codes[5:] == ["UNAVAILABLE"] * 15
    # We chose fail2ban's behaviour: the blocked address is refused even with the right
    # password (checking it would let the attacker keep guessing through the block).
    assert imap_login(server, ATTACKER, ALICE, PASSWORD) == "UNAVAILABLE"
    # Alice, from an address that never failed, logs in at once, with a real client.
    with imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=server.ssl_context(),
                           timeout=30) as alice:
        assert alice.login(ALICE, PASSWORD)[0] == "OK"
        assert alice.select("INBOX")[0] == "OK"
    # Her success does not unblock the attacker.
    assert imap_login(server, ATTACKER, ALICE, PASSWORD) == "UNAVAILABLE"
    ordinary_imap_client_is_served(server)


def test_smtp_auth_attacker_cannot_lock_alice_out(make_server: MakeServer) -> None:
    server = make_server()
    codes = [smtp_login(server, ATTACKER, ALICE, f"guess{n}") for n in range(20)]
    assert codes[:5] == [535] * 5 and codes[5:] == [454] * 15  # RFC 4954 section 6
    assert smtp_login(server, ATTACKER, ALICE, PASSWORD) == 454
    with smtplib.SMTP_SSL("127.0.0.1", server.ports["submissions"], timeout=30,
                          context=server.ssl_context()) as smtp:
        assert smtp.login(ALICE, PASSWORD)[0] == 235
        assert smtp.noop()[0] == 250
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=5) as other:
        assert other.ehlo()[0] == 250  # a second, ordinary client is served


def test_pop3_attacker_cannot_lock_alice_out(make_server: MakeServer) -> None:
    server = make_server()
    replies = [pop3_login(server, ATTACKER, ALICE, f"guess{n}") for n in range(20)]
    assert all(r.startswith("-ERR [AUTH]") for r in replies[:5]), replies
    assert all(r.startswith("-ERR [SYS/TEMP]") for r in replies[5:]), replies  # RFC 3206
    assert pop3_login(server, ATTACKER, ALICE, PASSWORD).startswith("-ERR [SYS/TEMP]")
    alice = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], context=server.ssl_context(),
                            timeout=30)
    alice.user(ALICE)
    assert alice.pass_(PASSWORD).startswith(b"+OK")
    assert alice.stat() == (0, 0)
    alice.quit()
    ordinary_imap_client_is_served(server)


def test_rotating_attacker_in_one_network(make_server: MakeServer) -> None:
    """127.0.0.2 to 127.0.0.40 fail once each, by turns: past network_max_failures (20) the
    /24 is blocked and past account_max_failures_per_minute (10) alice is under attack.
    Addresses that failed are refused even with the right password; fresh ones go one at a
    time; alice from 127.0.0.1 (same /24, never failed) still gets in."""
    server = make_server()
    # One fresh address a second is the policy; a quarter second keeps this test short.
    server.services.limiter.PROBATION_SPACING = 0.25
    codes = [imap_login(server, f"127.0.0.{n}", ALICE, f"guess{n}") for n in range(2, 41)]
    assert codes == ["AUTHENTICATIONFAILED"] * len(codes)  # fresh addresses: queued, checked
    for n in (2, 17, 40):
        assert imap_login(server, f"127.0.0.{n}", ALICE, PASSWORD) == "UNAVAILABLE"
        assert imap_login(server, f"127.0.0.{n}", BOB, PASSWORD) == "UNAVAILABLE"
    # Alice from 127.0.0.1 (no failures) and from 127.0.0.50 (never seen) log in.
    with imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=server.ssl_context(),
                           timeout=30) as alice:
        assert alice.login(ALICE, PASSWORD)[0] == "OK"
    assert imap_login(server, "127.0.0.50", ALICE, PASSWORD) == "OK"
    assert smtp_login(server, "127.0.0.51", ALICE, PASSWORD) == 235
    # A fresh attacker address in the blocked /24 gets one guess, then is refused.
    assert imap_login(server, "127.0.0.60", ALICE, "guess60") == "AUTHENTICATIONFAILED"
    assert imap_login(server, "127.0.0.60", ALICE, PASSWORD) == "UNAVAILABLE"
    # Another /24 is not concerned.
    assert imap_login(server, "127.0.1.2", BOB, PASSWORD) == "OK"
    ordinary_imap_client_is_served(server)


def _sourced_web(server: RunningServer, source: str) -> WebClient:
    client = WebClient(f"http://127.0.0.1:{server.ports['http']}")
    client.http.close()
    client.http = httpx.Client(base_url=client.base_url, follow_redirects=False, timeout=30,
                               transport=httpx.HTTPTransport(local_address=source))
    return client


def _web_login(client: WebClient, user: str, password: str) -> httpx.Response:
    token = csrf_of(client.get("/login").text)
    return client.post("/login", data={"username": user, "password": password, "csrf": token},
                       follow=False)


def test_web_login_and_api_share_the_limiter_and_answer_429(make_server: MakeServer) -> None:
    server = make_server(**web_overrides())
    attacker = _sourced_web(server, ATTACKER)
    statuses = [_web_login(attacker, ALICE, f"guess{n}").status_code for n in range(7)]
    assert statuses == [401] * 5 + [429] * 2
    blocked = _web_login(attacker, ALICE, PASSWORD)
    assert blocked.status_code == 429 and "Too many failed logins" in blocked.text
    assert 1 <= int(blocked.headers["retry-after"]) <= 300  # RFC 6585 section 4
    # The same limiter guards IMAP: the address is blocked there too.
    assert imap_login(server, ATTACKER, ALICE, PASSWORD) == "UNAVAILABLE"
    # The API from that address: 429 with Retry-After, in JSON.
    api_attacker = httpx.Client(base_url=attacker.base_url, timeout=30,
                                transport=httpx.HTTPTransport(local_address=ATTACKER))
    refused = api_attacker.post("/api/token", auth=(ALICE, PASSWORD))
    assert refused.status_code == 429 and "try again later" in refused.json()["error"]
    assert int(refused.headers["retry-after"]) >= 1
    # Alice, on the web and the API from 127.0.0.1, is not concerned.
    alice = WebClient(attacker.base_url)
    assert _web_login(alice, ALICE, PASSWORD).status_code == 303
    api = api_client(attacker.base_url, ALICE)
    assert api.get("/api/me").json()["address"] == ALICE
    for client in (attacker, alice):
        client.close()
    api_attacker.close()
    api.close()


def test_api_guesses_block_the_api_caller(make_server: MakeServer) -> None:
    server = make_server(**web_overrides())
    base = f"http://127.0.0.1:{server.ports['http']}"
    with httpx.Client(base_url=base, timeout=30,
                      transport=httpx.HTTPTransport(local_address="127.0.0.3")) as attacker:
        statuses: list[Any] = [attacker.post("/api/token", auth=(ALICE, f"g{n}")).status_code
                               for n in range(6)]
        assert statuses == [401] * 5 + [429]
    api = api_client(base, ALICE)
    assert api.get("/api/me").json()["address"] == ALICE
    api.close()


def test_delayed_failures_do_not_hold_up_other_clients(make_server: MakeServer) -> None:
    """The delay before a failed answer is a pause of that session only: while five attackers
    wait for theirs (8 s), an ordinary client logs in and is answered (5 s timeout; bob logged
    in once before, so his password check is the cached one, not behind theirs on the CPU)."""
    import threading

    server = make_server(auth={"failure_delay": 8.0})
    ordinary_imap_client_is_served(server)
    results: list[str] = []
    attackers = [threading.Thread(target=lambda n=n: results.append(
        imap_login(server, f"127.0.0.{n}", ALICE, f"guess{n}"))) for n in range(2, 7)]
    for thread in attackers:
        thread.start()
    with imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=server.ssl_context(),
                           timeout=5) as client:
        assert client.login(BOB, PASSWORD)[0] == "OK"
        assert client.noop()[0] == "OK"
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=5) as other:
        assert other.noop()[0] == 250
    for thread in attackers:
        thread.join(60)
    assert results == ["AUTHENTICATIONFAILED"] * 5


def test_api_password_change_guesses_answer_429(make_server: MakeServer) -> None:
    """Guessing the current password through /api/password (with a stolen token) counts
    like a login: 400 for a wrong one, then 429 with Retry-After for the address."""
    server = make_server(**web_overrides())
    base = f"http://127.0.0.1:{server.ports['http']}"
    with httpx.Client(base_url=base, timeout=30,
                      transport=httpx.HTTPTransport(local_address="127.0.0.5")) as thief:
        token = thief.post("/api/token", auth=(ALICE, PASSWORD)).json()["token"]
        thief.headers["Authorization"] = f"Bearer {token}"
        answers = [thief.post("/api/password", json={"current": f"g{n}", "new": "x" * 12})
                   for n in range(6)]
        assert [a.status_code for a in answers] == [400] * 5 + [429]
        assert int(answers[-1].headers["retry-after"]) >= 1
        assert "try again later" in answers[-1].json()["error"]
    api = api_client(base, ALICE)  # alice elsewhere is not concerned
    assert api.get("/api/me").json()["address"] == ALICE
    api.close()
