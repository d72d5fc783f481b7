"""Saving what a message holds to files: the whole message as it came (.eml) or one of its
attachments. A file name a sender chose is only a suggestion: it is cut to its last path
component and stripped of control characters, so no attachment can write outside the folder
the user picked. Nothing is overwritten unless the user said so; a new file is created with
O_EXCL, so a file that appears meanwhile is not overwritten either.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from mailstead.client.connection import Letter

_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:]+")
MAX_NAME = 200  # characters; file systems stop at 255 bytes


@dataclass(frozen=True, slots=True)
class Saveable:
    label: str  # what the user picks from
    filename: str  # the suggested file name (already made safe)
    data: bytes


def saveables(letter: Letter) -> list[Saveable]:
    """The whole message first, then each attachment, decoded from its transfer encoding."""
    subject = safe_filename(letter.header("Subject"), "message")
    found = [Saveable(f"The whole message (.eml, {len(letter.raw):,} bytes)",
                      f"{subject[:MAX_NAME - 4]}.eml", letter.raw)]
    for number, part in enumerate(letter.message.iter_attachments(), 1):
        data = _content(part)
        name = safe_filename(part.get_filename() or "", f"attachment-{number}")
        found.append(Saveable(f"{name} ({part.get_content_type()}, {len(data):,} bytes)",
                              name, data))
    return found


def _content(part: EmailMessage) -> bytes:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload
    # A message/rfc822 attachment: its payload is the message itself.
    inner = part.get_payload()
    if isinstance(inner, list) and inner and isinstance(inner[0], EmailMessage):
        return inner[0].as_bytes()
    return b""


def safe_filename(name: str, fallback: str) -> str:
    """A name that stays in its folder: no directories, no control characters, no leading
    dots (no hidden files, no "..")."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = " ".join(_UNSAFE.sub(" ", base).split()).lstrip(".").strip()
    return cleaned[-MAX_NAME:] if cleaned else fallback


def default_folder(home: Path | None = None, cwd: Path | None = None) -> Path:
    """~/Downloads when it exists (where browsers put files), else the current folder."""
    downloads = (home or Path.home()) / "Downloads"
    return downloads if downloads.is_dir() else (cwd or Path.cwd())


def free_path(folder: Path, filename: str) -> Path:
    """``folder/filename``, or "name (1).ext", "name (2).ext"... when that is taken."""
    candidate = folder / filename
    stem, suffix = Path(filename).stem, Path(filename).suffix
    number = 1
    while candidate.exists():
        candidate = folder / f"{stem} ({number}){suffix}"
        number += 1
    return candidate


def write_file(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Writes ``data`` to ``path``: FileExistsError when it exists and ``overwrite`` is
    False; an overwrite goes through a temporary file renamed over the old one, so a failure
    midway leaves the old file whole. OSError for a folder that does not exist and the like.
    """
    if not overwrite:
        with open(path, "xb") as out:
            out.write(data)
        return
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
