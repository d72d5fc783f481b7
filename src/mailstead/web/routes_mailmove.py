"""Settings → Move mail: import an uploaded mbox file or pull from another IMAP server (in the
background, with a page that refreshes itself while it runs), and download the whole account as
one archive (Maildir in a tar.gz)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from mailstead.core.errors import InvalidInput
from mailstead.mailmove import export
from mailstead.mailmove.imap_pull import ImapAccount, Security
from mailstead.services.mailbox_names import normalize_name
from mailstead.web.pages import (
    field,
    mailroom,
    page,
    read_form,
    redirect,
    render,
    session_of,
    uploads,
    web_state,
)

STATUS_PAGE = "/settings/import"
SECURITIES: tuple[Security, ...] = ("ssl", "starttls", "none")


def _work_dir(request: Request) -> Path:
    path = web_state(request).cfg.data_dir / "tmp"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


@page
async def import_status(request: Request) -> Response:
    state = web_state(request)
    job = state.imports.latest(session_of(request).account)
    return render(request, "import.html", {"job": job, "title": "Import",
                                           "folders": await mailroom(request).folders()})


@page
async def import_mbox(request: Request) -> Response:
    state = web_state(request)
    form = await read_form(request)
    files = uploads(form, "mbox")
    if not files:
        raise InvalidInput("choose an .mbox file to upload")
    folder = normalize_name(field(form, "folder").strip() or "INBOX")
    upload = files[0]
    fd, name = tempfile.mkstemp(suffix=".mbox", dir=_work_dir(request))
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            await asyncio.to_thread(shutil.copyfileobj, upload.file, out)
        state.imports.start_mbox(session_of(request).account, path,
                                 upload.filename or "upload.mbox", folder)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return redirect(STATUS_PAGE, "Import started.")


@page
async def import_imap(request: Request) -> Response:
    state = web_state(request)
    form = await read_form(request)
    host = field(form, "host").strip()
    login = field(form, "login").strip()
    if not host or not login:
        raise InvalidInput("give the server's host name and your user name there")
    port_text = field(form, "port").strip()
    if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
        raise InvalidInput("the port is a number from 1 to 65535")
    security = field(form, "security", "ssl")
    if security not in SECURITIES:
        raise InvalidInput("security is ssl, starttls or none")
    remote = ImapAccount(host, login, field(form, "password"),
                         port=int(port_text) if port_text else None,
                         security=next(s for s in SECURITIES if s == security))
    state.imports.start_imap(session_of(request).account, remote)
    return redirect(STATUS_PAGE, "Import started.")


@page
async def export_archive(request: Request) -> Response:
    """The whole account as one download: its Maildir tree in a tar.gz."""
    state = web_state(request)
    account = session_of(request).account
    content = await export.folders(state.mailboxes, account)
    fd, name = tempfile.mkstemp(suffix=".tar.gz", dir=_work_dir(request))
    os.close(fd)
    path = Path(name)
    try:
        await asyncio.to_thread(export.write_archive, path, state.mailboxes.blobs, content)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    filename = f"{account.address.replace('@', '_at_')}-mail.tar.gz"
    return FileResponse(path, media_type="application/gzip", filename=filename,
                        background=BackgroundTask(_remove, path))


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


routes = [
    Route(STATUS_PAGE, import_status),
    Route("/settings/import/mbox", import_mbox, methods=["POST"]),
    Route("/settings/import/imap", import_imap, methods=["POST"]),
    Route("/settings/export", export_archive),
]
