"""Exporting an account: a Maildir++ tree (flags in the ":2," suffix, keywords through a
dovecot-keywords file, internal dates as file times), one mboxrd file per folder (flags in
Status / X-Status / X-Keywords fields), or the Maildir tree as one tar.gz archive.

The message bytes are written as stored, so an export imported again gives the same bytes.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import tarfile
from pathlib import Path
from typing import Protocol

from mailstead.core.errors import InvalidInput
from mailstead.core.models import Account, Mailbox, MessageMeta
from mailstead.mailmove.sources import (
    KEYWORDS_FILE,
    MAILDIR_FLAGS,
    STATUS_FLAGS,
    X_STATUS_FLAGS,
    from_line,
)
from mailstead.proto import mutf7
from mailstead.services.mailbox import MailboxService
from mailstead.store.interfaces import BlobStore

FORMATS = ("maildir", "mbox", "tar.gz")
_NEEDS_QUOTE = re.compile(rb"^(>*From )", re.M)


class Sink(Protocol):
    def write(self, path: str, data: bytes, mtime: float) -> None: ...
    def mkdir(self, path: str, mtime: float) -> None: ...


class DirectorySink:
    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, path: str, data: bytes, mtime: float) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        os.utime(target, (mtime, mtime))

    def mkdir(self, path: str, mtime: float) -> None:
        (self.root / path).mkdir(parents=True, exist_ok=True)


class TarSink:
    def __init__(self, archive: tarfile.TarFile) -> None:
        self.archive = archive
        self.dirs: set[str] = set()

    def mkdir(self, path: str, mtime: float) -> None:
        parts = [part for part in path.split("/") if part]
        for depth in range(1, len(parts) + 1):
            directory = "/".join(parts[:depth])
            if directory not in self.dirs:
                self.dirs.add(directory)
                info = tarfile.TarInfo(directory)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o700, int(mtime)
                self.archive.addfile(info)

    def write(self, path: str, data: bytes, mtime: float) -> None:
        self.mkdir(path.rpartition("/")[0], mtime)
        info = tarfile.TarInfo(path)
        info.size, info.mode, info.mtime = len(data), 0o600, int(mtime)
        self.archive.addfile(info, io.BytesIO(data))


def maildir_folder(name: str) -> str:
    """Maildir++ directory of a mailbox: "" for INBOX, ".Lists.python" for Lists/python."""
    if name == "INBOX":
        return ""
    return "." + ".".join(mutf7.encode(level) for level in name.split("/"))


def maildir_name(meta: MessageMeta, uidvalidity: int, letters: dict[str, str]) -> str:
    info = "".join(sorted(
        [letter for letter, bit in MAILDIR_FLAGS.items() if meta.flags & bit]
        + [letters[k] for k in meta.keywords if k in letters]))
    stamp = int(meta.internal_date.timestamp())
    return f"{stamp}.M{meta.uid}V{uidvalidity}.mailstead,S={meta.size}:2,{info}"


def write_maildir_folder(sink: Sink, blobs: BlobStore, box: Mailbox,
                         rows: list[MessageMeta]) -> int:
    base = maildir_folder(box.name)
    prefix = f"{base}/" if base else ""
    words = sorted({k for m in rows for k in m.keywords})[:26]  # Maildir has 26 letters
    letters = {word: chr(ord("a") + i) for i, word in enumerate(words)}
    now = max((m.internal_date.timestamp() for m in rows), default=0.0)
    for sub in ("cur", "new", "tmp"):  # a maildir has all three, even when empty
        sink.mkdir(f"{prefix}{sub}", now)
    if words:
        text = "".join(f"{i} {w}\n" for i, w in enumerate(words)).encode()
        sink.write(f"{prefix}{KEYWORDS_FILE}", text, now)
    for meta in rows:
        data = blobs.get(meta.blob_id)
        sink.write(f"{prefix}cur/{maildir_name(meta, box.uidvalidity, letters)}", data,
                   meta.internal_date.timestamp())
    return len(rows)


def mbox_entry(meta: MessageMeta, data: bytes) -> bytes:
    """One message as an mboxrd entry: the From_ line, the flag fields, the message with LF
    line ends and ">"-quoted From lines, and the blank line that ends it."""
    fields = []
    status = "".join(c for c, bit in STATUS_FLAGS.items() if meta.flags & bit)
    if status:
        fields.append(f"Status: {status}O\n")
    xstatus = "".join(c for c, bit in X_STATUS_FLAGS.items() if meta.flags & bit)
    if xstatus:
        fields.append(f"X-Status: {xstatus}\n")
    if meta.keywords:
        fields.append(f"X-Keywords: {' '.join(sorted(meta.keywords))}\n")
    body = _NEEDS_QUOTE.sub(rb">\1", data.replace(b"\r\n", b"\n"))
    if not body.endswith(b"\n"):
        body += b"\n"
    return from_line(meta.internal_date) + "".join(fields).encode() + body + b"\n"


def mbox_file_name(name: str) -> str:
    return "/".join(level.replace("\\", "_") for level in name.split("/")) + ".mbox"


def write_mbox_folder(sink: Sink, blobs: BlobStore, box: Mailbox, rows: list[MessageMeta]
                      ) -> int:
    mtime = max((m.internal_date.timestamp() for m in rows), default=0.0)
    sink.write(mbox_file_name(box.name),
               b"".join(mbox_entry(m, blobs.get(m.blob_id)) for m in rows), mtime)
    return len(rows)


async def folders(mailboxes: MailboxService, account: Account
                  ) -> list[tuple[Mailbox, list[MessageMeta]]]:
    found = []
    for box in sorted(await mailboxes.list_mailboxes(account.id), key=lambda b: b.name):
        found.append((box, await mailboxes.store.get_messages(box.id)))
    return found


async def export_account(mailboxes: MailboxService, account: Account, dest: Path, fmt: str
                         ) -> int:
    """Writes the account to ``dest`` (a directory; a file for tar.gz); returns the message
    count. Files are read and written in a worker thread."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown export format {fmt}")
    if dest.exists() and (fmt == "tar.gz" or any(dest.iterdir())):
        raise InvalidInput(f"{dest} exists already and is not empty")
    content = await folders(mailboxes, account)
    blobs = mailboxes.blobs
    if fmt == "tar.gz":
        return await asyncio.to_thread(write_archive, dest, blobs, content)
    write = write_maildir_folder if fmt == "maildir" else write_mbox_folder
    sink = DirectorySink(dest)
    dest.mkdir(parents=True, exist_ok=True)

    def run() -> int:
        return sum(write(sink, blobs, box, rows) for box, rows in content)

    return await asyncio.to_thread(run)


def write_archive(dest: Path | io.BufferedIOBase, blobs: BlobStore,
                  content: list[tuple[Mailbox, list[MessageMeta]]]) -> int:
    """The Maildir tree, as one tar.gz (under a top directory "Maildir")."""
    with tarfile.open(fileobj=None if isinstance(dest, Path) else dest,
                      name=dest if isinstance(dest, Path) else None, mode="w:gz") as archive:
        sink = _Prefixed(TarSink(archive), "Maildir/")
        return sum(write_maildir_folder(sink, blobs, box, rows) for box, rows in content)


class _Prefixed:
    def __init__(self, inner: TarSink, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix

    def write(self, path: str, data: bytes, mtime: float) -> None:
        self.inner.write(self.prefix + path, data, mtime)

    def mkdir(self, path: str, mtime: float) -> None:
        self.inner.mkdir(self.prefix + path, mtime)
