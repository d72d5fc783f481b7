"""A small cookie-keeping HTTP client for the web tests (httpx's cookie jar, like the standard
library's, will not send our Secure cookies over http://127.0.0.1, while browsers do)."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.conftest import PASSWORD

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    m = CSRF_RE.search(html)
    assert m, "no CSRF field in the page"
    return m.group(1)


class WebClient:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, follow_redirects=False, timeout=30)
        self.cookies: dict[str, str] = {}
        self.set_cookie_headers: list[str] = []

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, url: str, *, follow: bool = True, **kwargs: Any
                ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        for _ in range(10):
            if self.cookies:
                headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            response = self.http.request(method, url, headers=headers, **kwargs)
            self._remember(response)
            if not follow or response.status_code not in (301, 302, 303, 307):
                return response
            url = response.headers["location"]
            method, kwargs = "GET", {}
        raise AssertionError("too many redirects")

    def _remember(self, response: httpx.Response) -> None:
        for header in response.headers.get_list("set-cookie"):
            self.set_cookie_headers.append(header)
            pair = header.split(";", 1)[0]
            name, _, value = pair.partition("=")
            if value in ("", '""') or "max-age=0" in header.lower():
                self.cookies.pop(name.strip(), None)
            else:
                self.cookies[name.strip()] = value.strip()

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def csrf(self, url: str = "/settings") -> str:
        return csrf_of(self.get(url).text)

    def login(self, username: str, password: str = PASSWORD) -> httpx.Response:
        token = csrf_of(self.get("/login").text)
        return self.post("/login", data={"username": username, "password": password,
                                         "csrf": token, "next": "/mail"})


def send_smtp(port: int, sender: str, recipients: list[str], message: bytes) -> None:
    """Delivers a message through the server's SMTP (MX) listener, like a remote server."""
    import smtplib

    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.sendmail(sender, recipients, message)


def api_client(base_url: str, user: str, password: str = PASSWORD) -> httpx.Client:
    """An httpx client carrying a Bearer token got with HTTP Basic from POST /api/token."""
    client = httpx.Client(base_url=base_url, timeout=30)
    response = client.post("/api/token", auth=(user, password))
    assert response.status_code == 200, response.text
    client.headers["Authorization"] = f"Bearer {response.json()['token']}"
    return client
