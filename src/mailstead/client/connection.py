"""A mail user's connection to any IMAP server and SMTP submission server: what the terminal
client and the ``mailstead mail`` commands do, with no user interface.

IMAP goes through IMAPClient (it parses FETCH, LIST and modified UTF-7 folder names, and knows
MOVE and SPECIAL-USE); sending through smtplib, with the sent message appended to the Sent
folder as clients do. Calls block: the terminal client runs them in a worker thread, one at a
time.
"""

from __future__ import annotations

import email
import email.policy
import mimetypes
import re
import shlex
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage, Message
from email.utils import format_datetime, getaddresses, make_msgid, parseaddr
from pathlib import Path
from typing import Any, Literal

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from mailstead.client.html_text import html_to_text
from mailstead.core.models import Integrity, integrity_of_keywords

TlsMode = Literal["implicit", "starttls", "none"]


class ClientError(Exception):
    """What went wrong, in one line a user can act on."""


@dataclass(frozen=True, slots=True)
class Settings:
    user: str
    password: str
    host: str = "127.0.0.1"
    imap_port: int = 993
    imap_tls: TlsMode = "implicit"
    smtp_port: int = 465
    smtp_tls: TlsMode = "implicit"
    cafile: str | None = None  # e.g. the server's self-signed certificate
    verify: bool = True  # False: accept any certificate (never for a server you do not own)
    timeout: float = 30.0
    web_url: str | None = None  # mailstead's web API (recall); None: not offered

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.cafile)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


@dataclass(frozen=True, slots=True)
class Folder:
    name: str
    role: str | None  # special use (RFC 6154): "\\Junk", "\\Trash", "\\Sent"...


@dataclass(frozen=True, slots=True)
class SpamVerdict:
    """What a SpamAssassin-style filter wrote into the header (X-Spam-Flag, X-Spam-Score,
    X-Spam-Status "Yes, score=7.1 required=5.0"): mailstead's spam service does."""
    is_spam: bool
    score: float | None
    required: float | None

    @classmethod
    def from_header(cls, header: Message) -> SpamVerdict | None:
        flag = str(header.get("X-Spam-Flag", "")).strip().upper()
        status = str(header.get("X-Spam-Status", ""))
        if not flag and not status:
            return None
        score = _number(_SCORE.search(status))
        if score is None:
            score = _number(_NUMBER.match(str(header.get("X-Spam-Score", "")).strip()))
        return cls(flag == "YES" or status.strip().lower().startswith("yes"),
                   score, _number(_REQUIRED.search(status)))


@dataclass(frozen=True, slots=True)
class Summary:
    uid: int
    sender: str
    subject: str
    date: datetime | None
    flags: frozenset[str]
    size: int
    depth: int = 0  # in a threaded list: how many replies deep (0 starts a thread)
    spam: SpamVerdict | None = None  # the server's X-Spam-* fields, when it wrote them

    @property
    def seen(self) -> bool:
        return "\\Seen" in self.flags

    @property
    def flagged(self) -> bool:
        return "\\Flagged" in self.flags

    @property
    def integrity(self) -> Integrity | None:
        """The server's integrity decision (keyword set at delivery, core/models)."""
        return integrity_of_keywords(self.flags)


@dataclass(frozen=True, slots=True)
class Letter:
    uid: int
    message: EmailMessage
    text: str  # what to show: the plain text part, or the HTML part as text
    attachments: list[str] = field(default_factory=list)
    raw: bytes = b""  # the message as the server keeps it (for saving it whole)
    integrity: Integrity | None = None  # from the keywords the server set at delivery

    def header(self, name: str) -> str:
        return str(self.message.get(name, ""))


class MailClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._imap: IMAPClient | None = None
        self._selected: str | None = None
        self._folders: list[Folder] = []

    # -- the IMAP session --

    def connect(self) -> None:
        s = self.settings
        try:
            imap = IMAPClient(s.host, port=s.imap_port, ssl=s.imap_tls == "implicit",
                              ssl_context=s.ssl_context(), timeout=s.timeout)
            if s.imap_tls == "starttls":
                imap.starttls(s.ssl_context())
            imap.login(s.user, s.password)
        except IMAPClientError as exc:
            raise ClientError(f"IMAP login to {s.host}:{s.imap_port} failed: "
                              f"{_text(exc)}") from None
        except (OSError, ssl.SSLError) as exc:
            raise ClientError(f"cannot reach IMAP at {s.host}:{s.imap_port}: {exc}") from None
        self._imap = imap

    def close(self) -> None:
        if self._imap is not None:
            try:
                self._imap.logout()
            except (IMAPClientError, OSError):
                pass  # the connection is going anyway
            self._imap = None

    @property
    def imap(self) -> IMAPClient:
        if self._imap is None:
            self.connect()
        assert self._imap is not None
        return self._imap

    def folders(self) -> list[Folder]:
        found = []
        for flags, _delimiter, name in self.imap.list_folders():
            names = {f.decode() if isinstance(f, bytes) else str(f) for f in flags}
            if "\\Noselect" in names or "\\NonExistent" in names:
                continue
            role = next((n for n in names if n in _ROLES), None)
            found.append(Folder(str(name), role))
        found.sort(key=lambda f: (f.name.upper() != "INBOX", f.role is None, f.name.lower()))
        self._folders = found
        return found

    def folder_with(self, role: str) -> str | None:
        """The name of the folder with this special use, if the server has one."""
        for folder in self._folders or self.folders():
            if folder.role == role:
                return folder.name
        return None

    def _select(self, folder: str) -> None:
        if self._selected != folder:
            self.imap.select_folder(folder)
            self._selected = folder

    def can_thread(self) -> bool:
        return bool(self.imap.has_capability("THREAD=REFERENCES"))

    def summaries(self, folder: str, limit: int = 500, threaded: bool = False
                  ) -> list[Summary]:
        """The newest ``limit`` messages of the folder, newest first: by the date they were
        sent when the server can SORT (RFC 5256; it orders them, no header is fetched for
        that), else by arrival. ``threaded``: grouped in conversations by the server's UID
        THREAD REFERENCES (RFC 5256), the thread with the newest arrival first, each reply
        below what it answers (``Summary.depth``); ClientError when the server cannot."""
        self._select(folder)
        depths: dict[int, int] = {}
        if threaded:
            if not self.can_thread():
                raise ClientError("the server cannot thread (no THREAD=REFERENCES)")
            threads = [thread_members(t) for t in self.imap.thread("REFERENCES")]
            threads.sort(key=lambda members: max(uid for uid, _depth in members), reverse=True)
            uids: list[int] = []
            for members in threads:
                if len(uids) >= limit:
                    break
                uids += [uid for uid, _depth in members]
                depths.update(members)
        elif self.imap.has_capability("SORT"):
            uids = self.imap.sort(["REVERSE", "DATE", "REVERSE", "ARRIVAL"])[:limit]
        else:
            uids = sorted(self.imap.search("ALL"), reverse=True)[:limit]
        return self._summaries_of(uids, depths)

    def search(self, folder: str, query: str, limit: int = 500) -> list[Summary]:
        """The messages of the folder that match ``query`` (see ``search_criteria``), found
        by the server's UID SEARCH (RFC 9051 6.4.4), newest first (server-side SORT when it
        can, RFC 5256). Non-ASCII words go with CHARSET UTF-8."""
        criteria = search_criteria(query)
        charset = None if query.isascii() else "UTF-8"
        self._select(folder)
        if self.imap.has_capability("SORT"):
            uids = self.imap.sort(["REVERSE", "DATE", "REVERSE", "ARRIVAL"], criteria,
                                  charset or "UTF-8")[:limit]
        else:
            uids = sorted(self.imap.search(criteria, charset), reverse=True)[:limit]
        return self._summaries_of(uids, {})

    def _summaries_of(self, uids: Sequence[int], depths: dict[int, int]) -> list[Summary]:
        """FLAGS, size and the list's header fields of these messages, in this order."""
        if not uids:
            return []
        order = {uid: i for i, uid in enumerate(uids)}
        fields = " ".join(LIST_FIELDS)
        fetched = self.imap.fetch(list(uids), ["FLAGS", "RFC822.SIZE",
                                               f"BODY.PEEK[HEADER.FIELDS ({fields})]"])
        out = []
        for uid, data in fetched.items():
            head = next((value for key, value in data.items()
                         if key.startswith(b"BODY[HEADER.FIELDS")), b"")
            parsed = email.message_from_bytes(head, policy=email.policy.default)
            name, address = parseaddr(str(parsed.get("From", "")))
            try:
                date = parsed["Date"].datetime if parsed.get("Date") else None
            except (AttributeError, TypeError, ValueError):
                date = None
            out.append(Summary(
                uid=uid, sender=name or address, subject=str(parsed.get("Subject", "")),
                date=date, flags=frozenset(_flag_text(f) for f in data.get(b"FLAGS", ())),
                size=int(data.get(b"RFC822.SIZE", 0)), depth=depths.get(uid, 0),
                spam=SpamVerdict.from_header(parsed)))
        out.sort(key=lambda s: order[s.uid])
        return out

    def read(self, folder: str, uid: int) -> Letter:
        """The whole message; reading it marks it \\Seen, as in any client."""
        self._select(folder)
        fetched = self.imap.fetch([uid], ["BODY[]", "FLAGS"])
        if uid not in fetched:
            raise ClientError(f"no message with UID {uid} in {folder}")
        raw = fetched[uid][b"BODY[]"]
        keywords = frozenset(_flag_text(f) for f in fetched[uid].get(b"FLAGS", ()))
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return Letter(uid, message, readable_text(message), [
            part.get_filename() or "(unnamed)" for part in message.iter_attachments()], raw,
            integrity_of_keywords(keywords))

    def set_flag(self, folder: str, uids: Sequence[int], flag: str, on: bool) -> None:
        self._select(folder)
        if on:
            self.imap.add_flags(list(uids), [flag])
        else:
            self.imap.remove_flags(list(uids), [flag])

    def move(self, folder: str, uids: Sequence[int], target: str) -> None:
        self._select(folder)
        if self.imap.has_capability("MOVE"):
            self.imap.move(list(uids), target)
        else:
            self.imap.copy(list(uids), target)
            self.imap.delete_messages(list(uids))
            self.imap.expunge()

    def delete(self, folder: str, uids: Sequence[int]) -> None:
        """Into Trash; from Trash itself (or with no Trash), for good."""
        trash = self.folder_with("\\Trash")
        if trash is not None and trash != folder:
            self.move(folder, uids, trash)
            return
        self._select(folder)
        self.imap.delete_messages(list(uids))
        self.imap.expunge()

    def junk(self, folder: str, uids: Sequence[int], is_junk: bool) -> str:
        """Marks messages as spam (into Junk, with $Junk) or as good (back to INBOX, with
        $NotJunk): the server's filter learns from both. Returns where they went."""
        target = (self.folder_with("\\Junk") or "Junk") if is_junk else "INBOX"
        self._select(folder)
        keyword, other = ("$Junk", "$NotJunk") if is_junk else ("$NotJunk", "$Junk")
        self.imap.remove_flags(list(uids), [other])
        self.imap.add_flags(list(uids), [keyword])
        if target != folder:
            self.move(folder, uids, target)
        return target

    # -- sending --

    def compose(self, to: str, subject: str, body: str, *, cc: str = "",
                attachments: Sequence[Path] = (), reply_to: Letter | None = None
                ) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.settings.user
        message["To"] = to
        if cc:
            message["Cc"] = cc
        message["Subject"] = subject
        message["Date"] = format_datetime(datetime.now().astimezone())
        message["Message-ID"] = make_msgid(domain=self.settings.user.rpartition("@")[2] or None)
        if reply_to is not None:
            parent = reply_to.header("Message-ID")
            if parent:
                message["In-Reply-To"] = parent
                message["References"] = " ".join(
                    filter(None, [reply_to.header("References"), parent]))
        message.set_content(body)
        for path in attachments:
            kind, _ = mimetypes.guess_type(path.name)
            maintype, _, subtype = (kind or "application/octet-stream").partition("/")
            message.add_attachment(path.read_bytes(), maintype=maintype, subtype=subtype,
                                   filename=path.name)
        return message

    def send(self, message: EmailMessage) -> list[str]:
        """Submits it (AUTH over TLS), files a copy in Sent, returns the recipients."""
        s = self.settings
        recipients = [a for _n, a in getaddresses(
            [str(v) for key in ("To", "Cc", "Bcc") for v in message.get_all(key, [])]) if a]
        if not recipients:
            raise ClientError("the message has no recipient")
        del message["Bcc"]
        try:
            smtp: smtplib.SMTP
            if s.smtp_tls == "implicit":
                smtp = smtplib.SMTP_SSL(s.host, s.smtp_port, timeout=s.timeout,
                                        context=s.ssl_context())
            else:
                smtp = smtplib.SMTP(s.host, s.smtp_port, timeout=s.timeout)
                if s.smtp_tls == "starttls":
                    smtp.starttls(context=s.ssl_context())
            with smtp:
                smtp.login(s.user, s.password)
                smtp.send_message(message, from_addr=s.user, to_addrs=recipients)
        except smtplib.SMTPResponseException as exc:
            raise ClientError(f"the server refused the message: {exc.smtp_code} "
                              f"{_text(exc.smtp_error)}") from None
        except smtplib.SMTPRecipientsRefused as exc:
            refused = ", ".join(exc.recipients)
            raise ClientError(f"the server refused the recipients: {refused}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise ClientError(f"cannot send through {s.host}:{s.smtp_port}: {exc}") from None
        sent = self.folder_with("\\Sent")
        if sent is not None:
            self.imap.append(sent, message.as_bytes(policy=email.policy.SMTP), [b"\\Seen"])
        return recipients


# The header fields the message list shows (and its marks are made from).
LIST_FIELDS = ("FROM", "SUBJECT", "DATE", "X-SPAM-FLAG", "X-SPAM-SCORE", "X-SPAM-STATUS")
_ROLES = {"\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive", "\\All", "\\Flagged"}


def thread_members(thread: Sequence[Any]) -> list[tuple[int, int]]:
    """(uid, depth) of each message of one thread as IMAPClient parses a THREAD response
    (RFC 5256 4: "(3 6 (4 23)(44 7 96))" is (3, 6, (4, 23), (44, 7, 96))): a number
    continues the chain one level deeper, a nested list is a branch from where it stands."""
    found: list[tuple[int, int]] = []
    stack: list[tuple[Sequence[Any], int]] = [(thread, 0)]
    while stack:
        items, depth = stack.pop()
        branches = []
        for item in items:
            if isinstance(item, int):
                found.append((item, depth))
                depth += 1
            else:
                branches.append((item, depth))
        stack += reversed(branches)
    return found


def readable_text(message: EmailMessage) -> str:
    """The part a terminal shows: text/plain if there is one, else the HTML as text."""
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        content: Any = part.get_content()
    except (LookupError, ValueError):  # an unknown charset: show the bytes as best we can
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    text = str(content)
    # The webmail's reading of HTML as text (for its reply quotes): the same job.
    return html_to_text(text) if part.get_content_subtype() == "html" else text


_SEARCH_KEYS = {"from": "FROM", "to": "TO", "cc": "CC", "subject": "SUBJECT",
                "body": "BODY", "text": "TEXT"}
_SEARCH_STATES = {"unread": "UNSEEN", "read": "SEEN", "flagged": "FLAGGED",
                  "unflagged": "UNFLAGGED", "answered": "ANSWERED"}


def search_criteria(query: str) -> list[str]:
    """IMAP SEARCH keys for what a user typed: words match anywhere in the message (TEXT),
    ``from:``, ``to:``, ``cc:``, ``subject:``, ``body:`` narrow a word to that part,
    ``is:unread|read|flagged|unflagged|answered`` to a state; "quoted words" stay
    together. All must match. ClientError for an empty query."""
    try:
        words = shlex.split(query)
    except ValueError:  # an unbalanced quote: take the words as they are
        words = query.split()
    criteria: list[str] = []
    for word in words:
        key, colon, value = word.partition(":")
        key = key.lower()
        if colon and key == "is" and value.lower() in _SEARCH_STATES:
            criteria.append(_SEARCH_STATES[value.lower()])
            continue
        if not (colon and key in _SEARCH_KEYS and value):
            key, value = "text", word
        # IMAPClient quotes a value with a space, quote or backslash, not one with other
        # atom-specials (RFC 9051 9: "(", "{", "%"...): those become spaces.
        value = " ".join(_NOT_ATOM.sub(" ", value).split())
        if value:
            criteria += [_SEARCH_KEYS[key], value]
    if not criteria:
        raise ClientError("nothing to search for")
    return criteria


_SCORE = re.compile(r"\bscore=(-?\d+(?:\.\d+)?)")
_REQUIRED = re.compile(r"\brequired=(-?\d+(?:\.\d+)?)")
_NOT_ATOM = re.compile(r"[(){%*\]\x00-\x1f\x7f]")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _number(match: re.Match[str] | None) -> float | None:
    return float(match.group(match.lastindex or 0)) if match else None


def _flag_text(flag: object) -> str:
    return flag.decode() if isinstance(flag, bytes) else str(flag)


def _text(value: object) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text.strip().splitlines()[0] if text.strip() else "(no reason given)"
