"""Settings → Move mail over real HTTP: an .mbox upload and an IMAP pull run in the background
with a progress page, and the whole account downloads as one tar.gz of Maildir folders."""

from __future__ import annotations

import io
import re
import tarfile
import time
from collections.abc import Callable

from tests.conftest import PASSWORD, RunningServer
from tests.mailmove.helpers import imap, read_account
from tests.mailmove.test_import_export import MBOX, populate
from tests.web.conftest import ALICE, BOB
from tests.web.helpers import WebClient


def finished(client: WebClient) -> str:
    """The progress page once the import has stopped running."""
    deadline = time.monotonic() + 60
    while True:
        page = client.get("/settings/import")
        assert page.status_code == 200
        state = re.search(r'data-state="(\w+)"', page.text)
        assert state, page.text[:2000]
        if state.group(1) != "running":
            return page.text
        assert 'http-equiv="refresh"' in page.text  # a page that refreshes itself
        assert time.monotonic() < deadline
        time.sleep(0.2)


def counts(page: str) -> str:
    found = re.search(r'<p id="import-counts">(.*?)</p>', page, re.S)
    assert found
    return re.sub(r"<[^>]+>", "", found.group(1))


def test_mbox_upload_imports_in_the_background(
    web_server: RunningServer, client_for: Callable[..., WebClient]
) -> None:
    client = client_for(ALICE)
    response = client.post("/settings/import/mbox", data={"csrf": client.csrf(),
                                                          "folder": "Old/2026"},
                           files={"mbox": ("old.mbox", MBOX, "application/mbox")})
    assert response.status_code == 200
    page = finished(client)
    assert 'data-state="done"' in page
    assert counts(page).startswith("3 stored, 1 skipped as duplicates, 4 of 4 read")
    assert "old.mbox #3: no header fields" in page
    account = read_account(imap(web_server, ALICE))
    assert [flags for flags, _d, _b in account["Old/2026"]] == [
        ("$Label1", "\\Answered", "\\Flagged", "\\Seen", "work"), (), ()]


def test_imap_pull_from_the_settings_page(
    web_server: RunningServer, make_server: Callable[..., RunningServer],
    client_for: Callable[..., WebClient],
) -> None:
    source = make_server(auth={"allow_plaintext_on_loopback": True})
    populate(source, ALICE)
    client = client_for(BOB)
    form = {"csrf": client.csrf(), "host": "127.0.0.1", "port": str(source.ports["imap"]),
            "security": "none", "login": ALICE, "password": PASSWORD}
    assert client.post("/settings/import/imap", data=form).status_code == 200
    page = finished(client)
    assert 'data-state="done"' in page, page
    assert counts(page).startswith("7 stored, 0 skipped")
    assert read_account(imap(web_server, BOB)) == read_account(imap(source, ALICE))

    form["password"] = "wrong"
    client.post("/settings/import/imap", data={**form, "csrf": client.csrf()})
    page = finished(client)
    assert 'data-state="failed"' in page and 'id="import-error"' in page


def test_imap_pull_refuses_plain_text_to_a_remote_host(
    client_for: Callable[..., WebClient],
) -> None:
    client = client_for(ALICE)
    form = {"csrf": client.csrf(), "host": "192.0.2.1", "port": "143", "security": "none",
            "login": "x", "password": "y"}
    response = client.post("/settings/import/imap", data=form, follow=False)
    assert response.status_code == 400
    assert "192.0.2.1 is not a loopback host" in response.text
    assert "No import has run" in client.get("/settings/import").text


def test_download_the_whole_account(
    web_server: RunningServer, client_for: Callable[..., WebClient]
) -> None:
    client = client_for(ALICE)
    client.post("/settings/import/mbox", data={"csrf": client.csrf()},
                files={"mbox": ("old.mbox", MBOX, "application/mbox")})
    finished(client)
    assert 'href="/settings/export"' in client.get("/settings").text
    response = client.get("/settings/export")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/gzip"
    assert "attachment" in response.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        names = [m.name for m in archive.getmembers() if m.isfile()]
        dirs = {m.name for m in archive.getmembers() if m.isdir()}
        files = {n: archive.extractfile(n).read()  # type: ignore[union-attr]
                 for n in names if "/cur/" in n}
    assert {"Maildir/cur", "Maildir/new", "Maildir/.Sent/cur", "Maildir/.Junk/tmp"} <= dirs
    stored = sorted(body for _f, _d, body in read_account(imap(web_server, ALICE))["INBOX"])
    assert sorted(files.values()) == stored
    assert any(n.endswith(":2,FRSab") for n in files)  # flags and keywords in the names
