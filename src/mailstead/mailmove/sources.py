"""Reading mail to import: mbox files (mboxo and mboxrd) and Maildir trees (Maildir++ and plain
directories). Each source yields ``SourceMessage``s: the bytes (CRLF line ends), the folder they
belong in, flags and the internal date. Pure file reading: no store, no asyncio.
"""

from __future__ import annotations

import mmap
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

from mailstead.core.models import SystemFlag
from mailstead.proto import mutf7

# Maildir info letters (https://cr.yp.to/proto/maildir.html) -> our system flags.
MAILDIR_FLAGS: dict[str, int] = {
    "S": SystemFlag.SEEN,
    "R": SystemFlag.ANSWERED,
    "F": SystemFlag.FLAGGED,
    "T": SystemFlag.DELETED,
    "D": SystemFlag.DRAFT,
}
# mbox Status / X-Status letters (the convention of mutt, Dovecot and Thunderbird).
STATUS_FLAGS: dict[str, int] = {"R": SystemFlag.SEEN}
X_STATUS_FLAGS: dict[str, int] = {
    "A": SystemFlag.ANSWERED,
    "F": SystemFlag.FLAGGED,
    "T": SystemFlag.DRAFT,
    "D": SystemFlag.DELETED,
}
FLAG_HEADERS = (b"status", b"x-status", b"x-keywords")
KEYWORDS_FILE = "dovecot-keywords"  # Dovecot's map of Maildir letters a..z to keywords

# Folder names other programs give the roles our default mailboxes have (RFC 6154).
ROLE_NAMES: dict[str, str] = {
    "\\Sent": "sent|sent items|sent messages|sent mail|[gmail]/sent mail|gesendet|envoyés",
    "\\Drafts": "drafts|draft|[gmail]/drafts|entwürfe|brouillons",
    "\\Trash": "trash|deleted items|deleted messages|bin|[gmail]/trash|papierkorb|corbeille",
    "\\Junk": "junk|spam|junk e-mail|junk email|bulk mail|[gmail]/spam",
    "\\Archive": "archive|archives|[gmail]/all mail",
}
_ROLE_OF = {name: role for role, names in ROLE_NAMES.items() for name in names.split("|")}


@dataclass(slots=True)
class SourceMessage:
    folder: str  # our mailbox name, levels separated by "/" ("INBOX", "Lists/python")
    data: bytes
    flags: int = 0
    keywords: frozenset[str] = frozenset()
    internal_date: datetime | None = None
    origin: str = ""  # where it came from, for the report ("old.mbox #12")
    special_use: str | None = None  # the role the source gave the folder (IMAP SPECIAL-USE)


def role_of(folder: str) -> str | None:
    """The special use a folder name stands for ("Sent Items" -> \\Sent), if any. A leading
    "INBOX/" (Dovecot's and Courier's namespace prefix) is looked through."""
    name = folder.casefold()
    if name.startswith("inbox/"):
        name = name[6:]
    return _ROLE_OF.get(name)


_BARE_LF = re.compile(rb"(?<!\r)\n")


def to_crlf(data: bytes) -> bytes:
    """Line ends as RFC 5322 2.1 has them (CRLF); a message already in CRLF is unchanged."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return _BARE_LF.sub(b"\r\n", data)


def header_end(data: bytes) -> int:
    """Offset just past the blank line ending the header (len(data) when there is none)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        at = data.find(sep)
        if at >= 0:
            return at + len(sep)
    return len(data)


def strip_flag_headers(data: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """Removes the mbox flag fields (Status, X-Status, X-Keywords) from the header and returns
    them by lower-cased name, so an exported-then-imported message comes back byte for byte."""
    end = header_end(data)
    head = data[:end]
    if not any(h in head.lower() for h in FLAG_HEADERS):
        return data, {}
    found: dict[bytes, bytes] = {}
    kept: list[bytes] = []
    skipping = False
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and skipping:
            found[list(found)[-1]] += b" " + line.strip()
            continue
        name, colon, value = line.partition(b":")
        skipping = bool(colon) and name.strip().lower() in FLAG_HEADERS
        if skipping:
            found[name.strip().lower()] = value.strip()
        else:
            kept.append(line)
    return b"".join(kept) + data[end:], found


def flags_from_headers(fields: dict[bytes, bytes]) -> tuple[int, frozenset[str]]:
    flags = 0
    for letter in fields.get(b"status", b"").decode("ascii", "replace"):
        flags |= STATUS_FLAGS.get(letter, 0)
    for letter in fields.get(b"x-status", b"").decode("ascii", "replace"):
        flags |= X_STATUS_FLAGS.get(letter, 0)
    words = fields.get(b"x-keywords", b"").decode("utf-8", "replace").replace(",", " ").split()
    return flags, frozenset(words)


# ---------------------------------------------------------------------------------------------
# mbox

_ASCTIME = re.compile(
    rb"(\w{3}) +(\w{3}) +(\d{1,2}) +(\d{1,2}):(\d{2}):(\d{2})(?: +([+-]\d{4}|[A-Z]{3}))? +(\d{4})"
)
_MONTHS = {m: i for i, m in enumerate(
    (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
     b"Dec"), 1)}


def from_line_date(line: bytes) -> datetime | None:
    """The date of an mbox "From " separator line (asctime form, taken as UTC)."""
    m = _ASCTIME.search(line)
    if m is None or m.group(2) not in _MONTHS:
        return None
    try:
        return datetime(int(m.group(8)), _MONTHS[m.group(2)], int(m.group(3)), int(m.group(4)),
                        int(m.group(5)), int(m.group(6)), tzinfo=UTC)
    except ValueError:
        return None


def from_line(when: datetime, sender: str = "MAILER-DAEMON") -> bytes:
    """An mbox separator line for a message received at ``when``."""
    stamp = when.astimezone(UTC).strftime("%a %b %d %H:%M:%S %Y")
    return f"From {sender or 'MAILER-DAEMON'} {stamp}\n".encode()


def count_mbox(path: Path) -> int:
    """How many messages an mbox holds, counted fast (for a progress bar's total)."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mem:
        count = int(mem[:5] == b"From ")
        at = mem.find(b"\n\nFrom ")
        while at >= 0:
            count += 1
            at = mem.find(b"\n\nFrom ", at + 7)
        return count


def read_mbox(path: Path, folder: str = "INBOX", variant: str = "mboxrd",
              label: str | None = None) -> Iterator[SourceMessage]:
    """The messages of an mbox file, separated by "From " lines; the blank line before one is
    the separator's, not the message's.
    mboxrd takes one ">" off every ">...>From " line; mboxo only turns ">From " back into
    "From " (RFC 4155 describes both)."""
    quoted = re.compile(rb"^>(>*From )" if variant == "mboxrd" else rb"^>(From )")
    number = 0
    label = label or path.name
    with path.open("rb") as fh:
        separator: bytes | None = None
        lines: list[bytes] = []
        previous_blank = True
        for line in fh:
            # RFC 4155: writers quote every "From " line of a body, so one at the start of a
            # line separates; for files whose writer did not, it must follow a blank line or
            # look like a real separator (a sender and an asctime date).
            if line.startswith(b"From ") and (previous_blank or from_line_date(line)):
                if separator is not None or lines:
                    number += 1
                    yield _mbox_message(label, number, folder, separator, lines)
                separator, lines = line, []
                previous_blank = False
                continue
            previous_blank = line in (b"\n", b"\r\n")
            if line.startswith(b">"):
                line = quoted.sub(rb"\1", line)
            lines.append(line)
        if separator is not None or lines:
            number += 1
            yield _mbox_message(label, number, folder, separator, lines)


def _mbox_message(label: str, number: int, folder: str, separator: bytes | None,
                  lines: list[bytes]) -> SourceMessage:
    if lines and lines[-1] in (b"\n", b"\r\n"):
        lines.pop()  # the blank line before the next separator
    data, fields = strip_flag_headers(b"".join(lines))
    flags, keywords = flags_from_headers(fields)
    when = from_line_date(separator) if separator else None
    return SourceMessage(folder, to_crlf(data), flags, keywords, when,
                         origin=f"{label} #{number}")


# ---------------------------------------------------------------------------------------------
# Maildir


def is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() or (path / "new").is_dir()


def maildir_folders(root: Path) -> list[tuple[str, Path]]:
    """(our folder name, directory) of every maildir in the tree: the root is INBOX; Maildir++
    folders (".Lists.python", names in modified UTF-7) and plain subdirectories (Lists/python)
    become "Lists/python"."""
    found: list[tuple[str, Path]] = []
    if is_maildir(root):
        found.append(("INBOX", root))
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.name in ("cur", "new", "tmp"):
            continue
        if entry.name.startswith("."):
            if entry.name not in (".", "..") and is_maildir(entry):
                levels = [_decode_level(level) for level in entry.name[1:].split(".")]
                found.append(("/".join(levels), entry))
        else:
            found += _plain_folders(entry, entry.name)
    return found


def _plain_folders(directory: Path, name: str) -> list[tuple[str, Path]]:
    found = [(name, directory)] if is_maildir(directory) else []
    for entry in sorted(directory.iterdir()):
        if entry.is_dir() and entry.name not in ("cur", "new", "tmp") and \
                not entry.name.startswith("."):
            found += _plain_folders(entry, f"{name}/{entry.name}")
    return found


def _decode_level(level: str) -> str:
    try:
        return mutf7.decode(level)
    except Exception:  # not modified UTF-7: take the name as it is
        return level


def read_keyword_map(directory: Path) -> dict[str, str]:
    """Dovecot's dovecot-keywords file: "0 $Label1" maps the letter a to $Label1."""
    mapping: dict[str, str] = {}
    try:
        text = (directory / KEYWORDS_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return mapping
    for line in text.splitlines():
        index, _, word = line.strip().partition(" ")
        if index.isdigit() and int(index) < 26 and word:
            mapping[chr(ord("a") + int(index))] = word
    return mapping


def maildir_info(name: str, keyword_map: dict[str, str]) -> tuple[int, frozenset[str]]:
    """Flags and keywords from a file name's ":2," info suffix."""
    _base, sep, info = name.rpartition(":2,")
    if not sep:
        return 0, frozenset()
    flags = 0
    words = set()
    for letter in info:
        if letter in MAILDIR_FLAGS:
            flags |= MAILDIR_FLAGS[letter]
        elif letter in keyword_map:
            words.add(keyword_map[letter])
    return flags, frozenset(words)


def count_maildir(root: Path) -> int:
    return sum(len(_message_files(d)) for _name, d in maildir_folders(root))


def _message_files(directory: Path) -> list[Path]:
    """The files of cur/ and new/, in the order of their names (which start with the time of
    delivery)."""
    files: list[Path] = []
    for sub in ("cur", "new"):
        part = directory / sub
        if part.is_dir():
            files += [p for p in part.iterdir() if p.is_file() and not p.name.startswith(".")]
    return sorted(files, key=lambda p: p.name)


def read_maildir(root: Path) -> Iterator[SourceMessage]:
    for folder, directory in maildir_folders(root):
        keyword_map = read_keyword_map(directory)
        for file in _message_files(directory):
            flags, keywords = maildir_info(file.name, keyword_map)
            if file.parent.name == "new":
                flags, keywords = 0, frozenset()
            when = datetime.fromtimestamp(os.stat(file).st_mtime, UTC)
            yield SourceMessage(folder, to_crlf(file.read_bytes()), flags, keywords, when,
                                origin=str(file.relative_to(root)))


def header_date(data: bytes) -> datetime | None:
    """The Date: field of a message, for an internal date when the source has none."""
    match = re.search(rb"(?im)^date:[ \t]*(.+(?:\r?\n[ \t].+)*)", data[: header_end(data)])
    if match is None:
        return None
    try:
        when = parsedate_to_datetime(match.group(1).decode("ascii", "replace").strip())
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
