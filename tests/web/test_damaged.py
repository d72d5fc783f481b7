"""A message whose file fails its SHA-256 (changed, or cut short) is never served by the web:
the message page, its body frame, the raw download and the JSON API answer 500 with a message
and a log line; the folder list and the other messages still work. Both stores."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import RunningServer
from tests.imap.helpers import deliver, message
from tests.web.conftest import ALICE, base_url
from tests.web.helpers import WebClient, api_client


def _damage(server: RunningServer, raw: bytes, how: str) -> None:
    blob_id = hashlib.sha256(raw).hexdigest()
    path = server.cfg.path(server.cfg.store.blob_dir) / blob_id[:2] / f"{blob_id}.eml"
    path.chmod(0o644)
    path.write_bytes(raw.replace(b"original", b"tampered") if how == "same length"
                     else raw[: len(raw) // 2])


def _inbox_id(api: httpx.Client) -> int:
    return next(int(f["id"]) for f in api.get("/api/folders").json() if f["name"] == "INBOX")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("how", ["same length", "truncated"])
def test_damaged_message_gives_500_everywhere(
    web_server: RunningServer, client_for: Callable[..., WebClient], how: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mailstead")
    bad = message("precious", body="original words\r\n" * 30)
    good = message("intact", body="fine words\r\n")
    bad_uid = deliver(web_server, bad)
    good_uid = deliver(web_server, good)
    _damage(web_server, bad, how)

    api = api_client(base_url(web_server), ALICE)
    try:
        inbox = _inbox_id(api)
        for path in (f"/api/folders/{inbox}/messages/{bad_uid}",
                     f"/api/folders/{inbox}/messages/{bad_uid}/raw"):
            response = api.get(path)
            assert response.status_code == 500, (path, response.text)
            assert response.headers["content-type"].startswith("application/json")
            assert "error was logged" in response.json()["error"]
            assert b"tampered" not in response.content
        assert api.get(f"/api/folders/{inbox}/messages/{good_uid}").status_code == 200
        raw = api.get(f"/api/folders/{inbox}/messages/{good_uid}/raw")
        assert raw.status_code == 200 and raw.content == good
        listing = api.get(f"/api/folders/{inbox}/messages")
        assert listing.status_code == 200
        assert len(listing.json()["messages"]) == 2  # the damaged one keeps its row
    finally:
        api.close()

    web = client_for(ALICE)
    for path in (f"/mail/{inbox}/{bad_uid}", f"/mail/{inbox}/{bad_uid}/body",
                 f"/mail/{inbox}/{bad_uid}/raw"):
        response = web.get(path)
        assert response.status_code == 500, (path, response.status_code)
        assert response.headers["content-type"].startswith("text/html")
        assert "error was logged" in response.text
        assert "tampered" not in response.text
    assert web.get(f"/mail/{inbox}/{good_uid}").status_code == 200
    assert web.get(f"/mail/{inbox}").status_code == 200

    logged = [r.getMessage() for r in caplog.records if "web.error" in r.getMessage()]
    assert len(logged) == 5
    assert all("CorruptBlob" in line and "SHA-256 mismatch" in line for line in logged)
    # Another user is served at once.
    assert httpx.get(base_url(web_server) + "/login", timeout=2).status_code == 200
