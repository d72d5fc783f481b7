"""URLAUTH (RFC 4467): IMAP URLs that carry their own authorisation. Pure code.

A user asks ``GENURLAUTH "imap://alice@host/INBOX;UIDVALIDITY=7/;UID=20;URLAUTH=user+bob"
INTERNAL`` and gets the same URL with ``:INTERNAL:<token>`` appended; whoever the access
identifier allows may then read that message (or part) with ``URLFETCH url``, or hand the URL
to CATENATE (RFC 4469) or to the submission server's BURL (RFC 4468) instead of the bytes.

The token (RFC 4467 2.4.1, the INTERNAL mechanism) is HMAC-SHA256 of the "rump" URL (the URL
up to and including the access identifier) keyed with the mailbox's access key, a random
256-bit secret the store keeps per mailbox (RFC 4467 2.2). ``RESETKEY`` forgets keys: every
URL made with them stops working. Access identifiers (RFC 4467 3):
- ``anonymous``: anyone; ``authuser``: any logged-in user of this server;
- ``user+<userid>``: only a session logged in as that user;
- ``submit+<userid>``: only the submission server acting for that user (BURL), never an IMAP
  session.

Everything that makes a URL unusable (bad syntax, expired, another host, wrong key, no such
message) gives NIL in URLFETCH and no data to CATENATE / BURL: RFC 4467 7 has URLFETCH answer
NIL, not NO, so that a caller learns nothing about what exists.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote

from mailstead.core.feed_ids import access_key_channel, access_keys_channel
from mailstead.core.models import Mailbox
from mailstead.proto import imap_format as fmt
from mailstead.proto import imap_sexpr, imap_url
from mailstead.proto.imap_format import CommandError, Reply

if TYPE_CHECKING:
    from mailstead.proto.imap_args import Command
    from mailstead.proto.imap_reader import _Reader
    from mailstead.proto.imap_session import ImapSession

MECHANISMS = ("INTERNAL",)  # RFC 4467 2.4.1: the one every URLAUTH server has
MAX_URLS = 100  # URLs in one GENURLAUTH / URLFETCH command

# The userid should have its "@" percent-encoded (RFC 5092 enc-user); a bare one is taken too:
# the host is what follows the last "@" of the server part.
_SERVER = re.compile(
    r"imap://(?P<user>[^/;]+?)(?:;AUTH=[^@/]*)?@(?P<host>[^/@:]+)(?::[0-9]{1,5})?(?=/)",
    re.IGNORECASE,
)
# RFC 4467 9: iurlauth-rump = [expire] ";URLAUTH=" access; iua-verifier = ":" mechanism ":"
# enc-urlauth (32 or more hex digits).
_TAIL = re.compile(
    r"(?:;EXPIRE=(?P<expire>[0-9A-Za-z:.+\-]+))?"
    r";URLAUTH=(?P<access>(?:submit\+|user\+)[^:;/]+|authuser|anonymous)"
    r"(?::(?P<mech>[A-Za-z0-9\-.]+):(?P<token>[0-9A-Fa-f]{32,}))?",
    re.IGNORECASE,
)
_TAIL_START = re.compile(r";EXPIRE=|;URLAUTH=", re.IGNORECASE)


class UrlAuthBackend(Protocol):
    """What URLAUTH needs of the mail store (services/urlauth.py)."""

    async def account_id(self, address: str) -> int | None: ...
    async def find(self, account_id: int, name: str) -> Mailbox | None: ...
    async def message_bytes(self, mailbox: Mailbox, uid: int) -> bytes | None: ...
    async def access_key(self, mailbox: Mailbox, create: bool) -> bytes | None:
        """The mailbox's access key; made now when ``create`` and it has none."""
    async def reset_access_keys(self, account_id: int, mailbox: Mailbox | None) -> None: ...


@dataclass(frozen=True, slots=True)
class AuthorizedUrl:
    rump: str  # the URL up to and including the access identifier (what the token signs)
    owner: str  # the userid of the server part (percent-decoded): whose mailbox it names
    host: str
    message: imap_url.MessageUrl
    expire: datetime | None
    access: str  # "anonymous", "authuser", "user+<userid>", "submit+<userid>" (decoded)
    mechanism: str | None  # upper case; None in a rump URL
    token: str | None  # lower-case hex


def is_authorized(url: str) -> bool:
    """True when the URL carries a URLAUTH part (for CATENATE, which takes both kinds)."""
    return _TAIL_START.search(url) is not None


def parse(url: str) -> AuthorizedUrl:
    """Reads a URLAUTH URL, rump or full; raises imap_url.BadUrl for anything else. RFC 4467
    7 (GENURLAUTH): the server part must name the user (iuserauth is mandatory); RFC 4467 3:
    URLAUTH applies to a message or part only, so the URL must hold a UID."""
    server = _SERVER.match(url)
    if server is None:
        raise imap_url.BadUrl("a URLAUTH URL needs imap://user@host/")
    start = _TAIL_START.search(url, server.end())
    if start is None:
        raise imap_url.BadUrl("no URLAUTH part")
    tail = _TAIL.fullmatch(url, start.start())
    if tail is None:
        raise imap_url.BadUrl("malformed URLAUTH part")
    message = imap_url.parse_message_url(url[: start.start()])
    expire = None
    if tail.group("expire"):
        try:
            expire = datetime.fromisoformat(tail.group("expire").upper().replace("Z", "+00:00"))
        except ValueError:
            raise imap_url.BadUrl("EXPIRE is not a date-time") from None
        if expire.tzinfo is None:
            raise imap_url.BadUrl("EXPIRE needs a time zone")  # RFC 3339 date-time
    access = tail.group("access")
    kind, plus, who = access.partition("+")
    access = kind.lower() + plus + unquote(who)
    mech = tail.group("mech")
    return AuthorizedUrl(
        rump=url[: tail.start("mech") - 1] if mech else url,
        owner=unquote(server.group("user")),
        host=server.group("host"),
        message=message,
        expire=expire,
        access=access,
        mechanism=mech.upper() if mech else None,
        token=tail.group("token").lower() if mech else None,
    )


def token(key: bytes, rump: str) -> str:
    """The INTERNAL mechanism's token: HMAC-SHA256 of the rump URL under the access key."""
    return hmac.new(key, rump.encode("utf-8"), hashlib.sha256).hexdigest()


def _allowed(access: str, user: str | None, submitter: str | None) -> bool:
    """RFC 4467 3: may this requester use a URL with this access identifier?"""
    if access == "anonymous":
        return True
    if access == "authuser":  # the submission server is an authorised user too
        return user is not None or submitter is not None
    kind, _plus, who = access.partition("+")
    who = who.lower()
    if kind == "user":
        return user is not None and user.lower() == who
    return submitter is not None and submitter.lower() == who  # submit+


async def fetch_authorized(
    backend: UrlAuthBackend, hostname: str, url: str, *, user: str | None = None,
    submitter: str | None = None,
) -> bytes | None:
    """The data a full URLAUTH URL names, for ``user`` (the logged-in IMAP user) or
    ``submitter`` (the user the submission server sends for), or None when the URL is not
    usable by them (RFC 4467 6: every check passes or nothing is given)."""
    try:
        ref = parse(url)
    except imap_url.BadUrl:
        return None
    if ref.mechanism not in MECHANISMS or ref.token is None:
        return None
    if ref.host.lower() != hostname.lower():
        return None  # a URL of another server
    if ref.expire is not None and ref.expire <= datetime.now(UTC):
        return None  # RFC 4467 3: not valid after EXPIRE
    if not _allowed(ref.access, user, submitter):
        return None
    # RFC 4467 7: URLFETCH runs with the access of the URL's user (the mailbox owner).
    owner = await backend.account_id(ref.owner)
    if owner is None:
        return None

    async def find(name: str) -> Mailbox | None:
        assert owner is not None
        return await backend.find(owner, name)

    box = await imap_url.find_mailbox(find, ref.message.mailbox)
    if box is None or ref.message.uidvalidity not in (None, box.uidvalidity):
        return None
    key = await backend.access_key(box, create=False)
    if key is None:
        return None  # never generated, or RESETKEY since
    # RFC 4467 10: compared in constant time, so the token cannot be guessed byte by byte.
    if not hmac.compare_digest(token(key, ref.rump), ref.token):
        return None
    data = await backend.message_bytes(box, ref.message.uid)
    return None if data is None else imap_url.named_part(data, ref.message)


# ---------------------------------------------------------------------------------------------
# Parsing (RFC 4467 9)


@dataclass(frozen=True, slots=True)
class GenUrlAuthArgs:
    pairs: tuple[tuple[str, str], ...]  # (rump URL, mechanism)


@dataclass(frozen=True, slots=True)
class UrlFetchArgs:
    urls: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ResetKeyArgs:
    mailbox: str | None = None
    mechanisms: tuple[str, ...] = ()


def parse_genurlauth(r: _Reader) -> GenUrlAuthArgs:
    """genurlauth = "GENURLAUTH" 1*(SP url-rump SP mechanism)."""
    pairs: list[tuple[str, str]] = []
    while r.maybe_sp():
        if len(pairs) >= MAX_URLS:
            raise r.error(f"too many URLs (at most {MAX_URLS})", "LIMIT")
        url = r.astring()
        r.sp()
        pairs.append((url, r.atom()))
    if not pairs:
        raise r.error("GENURLAUTH needs a URL and a mechanism")
    return GenUrlAuthArgs(tuple(pairs))


def parse_urlfetch(r: _Reader) -> UrlFetchArgs:
    """urlfetch = "URLFETCH" 1*(SP url-full)."""
    urls: list[str] = []
    while r.maybe_sp():
        if len(urls) >= MAX_URLS:
            raise r.error(f"too many URLs (at most {MAX_URLS})", "LIMIT")
        urls.append(r.astring())
    if not urls:
        raise r.error("URLFETCH needs a URL")
    return UrlFetchArgs(tuple(urls))


def parse_resetkey(r: _Reader) -> ResetKeyArgs:
    """resetkey = "RESETKEY" [SP mailbox *(SP mechanism)]."""
    if not r.maybe_sp():
        return ResetKeyArgs()
    mailbox = r.mailbox()
    mechanisms: list[str] = []
    while r.maybe_sp():
        mechanisms.append(r.atom())
    return ResetKeyArgs(mailbox, tuple(mechanisms))


# ---------------------------------------------------------------------------------------------
# The commands


def _backend(s: ImapSession) -> UrlAuthBackend:
    if s.urlauth is None:
        raise CommandError("BAD", "URLAUTH is not offered here")
    return s.urlauth


async def cmd_genurlauth(s: ImapSession, cmd: Command) -> Reply:
    """RFC 4467 7: each rump URL comes back with ``:INTERNAL:<token>``. A URL that fails a
    check (not a rump URL of this server, another user's, no such mailbox) or an unknown
    mechanism makes the whole command BAD, as RFC 4467 7 asks."""
    args = cmd.args
    assert isinstance(args, GenUrlAuthArgs)
    backend = _backend(s)
    account = s.require_account()
    made: list[str] = []
    for url, mechanism in args.pairs:
        if mechanism.upper() not in MECHANISMS:
            return Reply("BAD", f"Unsupported URLAUTH mechanism {mechanism}")
        try:
            ref = parse(url)
        except imap_url.BadUrl as exc:
            return Reply("BAD", f"Invalid URL: {exc}")
        if ref.mechanism is not None:
            return Reply("BAD", "Give the rump URL, without a mechanism and token")
        if ref.host.lower() != s.settings.hostname.lower():
            return Reply("BAD", "The URL names another server")
        if ref.owner.lower() != account.address.lower():  # RFC 4467 7 (2)
            return Reply("BAD", "The URL must name your own user")
        kind, _plus, who = ref.access.partition("+")
        if kind in ("user", "submit") and await backend.account_id(who) is None:
            return Reply("BAD", f"No such user {who}")  # RFC 4467 7 (3): a valid userid

        async def find(name: str) -> Mailbox | None:
            return await backend.find(account.id, name)

        box = await imap_url.find_mailbox(find, ref.message.mailbox)
        if box is None:  # RFC 4467 7 (1): an existing mailbox
            return Reply("BAD", "The URL names no mailbox of yours")
        if ref.message.uidvalidity not in (None, box.uidvalidity):
            return Reply("BAD", "UIDVALIDITY does not match the mailbox")
        key = await backend.access_key(box, create=True)  # RFC 4467 7: made when missing
        assert key is not None
        made.append(f"{ref.rump}:INTERNAL:{token(key, ref.rump)}")
    s.io.write(b"* GENURLAUTH " + b" ".join(fmt.string(u, s.utf8) for u in made) + b"\r\n")
    return Reply("OK", "Genurlauth completed")


async def cmd_urlfetch(s: ImapSession, cmd: Command) -> Reply:
    """RFC 4467 7: ``* URLFETCH url data`` for each URL, NIL for one that cannot be used."""
    args = cmd.args
    assert isinstance(args, UrlFetchArgs)
    backend = _backend(s)
    account = s.require_account()
    out = [b"* URLFETCH"]
    size = 0
    for url in args.urls:
        data = await fetch_authorized(backend, s.settings.hostname, url, user=account.address)
        await s.checkpoint()
        out.append(fmt.string(url, s.utf8))
        if data is None:
            out.append(b"NIL")
            continue
        size += len(data)
        if size > 4 * s.settings.max_message_size:
            return Reply("NO", "Too much data asked at once", "LIMIT")
        # RFC 3516 4.3 spirit: NUL only ever inside a binary literal.
        out.append(imap_sexpr.literal8(data) if b"\x00" in data else imap_sexpr.literal(data))
    s.io.write(b" ".join(out) + b"\r\n")
    return Reply("OK", "Urlfetch completed")


async def cmd_resetkey(s: ImapSession, cmd: Command) -> Reply:
    """RFC 4467 7: without arguments every access key of the user goes; with a mailbox that
    mailbox's (for the mechanisms named, which can only be INTERNAL here)."""
    args = cmd.args
    assert isinstance(args, ResetKeyArgs)
    backend = _backend(s)
    account = s.require_account()
    unknown = [m for m in args.mechanisms if m.upper() not in MECHANISMS]
    if unknown:
        return Reply("BAD", f"Unsupported URLAUTH mechanism {unknown[0]}")
    if args.mailbox is None:
        await backend.reset_access_keys(account.id, None)
        return Reply("OK", "All keys removed")
    box = await backend.find(account.id, s.mailbox_in(args.mailbox))
    if box is None:
        return Reply("NO", "Mailbox does not exist", "NONEXISTENT")
    await backend.reset_access_keys(account.id, box)
    # RFC 4467 8.1: URLMECH may come in RESETKEY's tagged OK instead of an untagged OK; RFC
    # 4467 10: only over TLS. So this session's own notice of the reset (watch_key_resets)
    # is dropped: the tagged OK carries it.
    if not s.io.is_tls:
        return Reply("OK", "Key reset")
    if s.key_resets is not None:
        s.key_resets.take()
    return Reply("OK", "Key reset", URLMECH)


URLMECH = "URLMECH " + " ".join(MECHANISMS)


def watch_key_resets(s: ImapSession, mailbox: Mailbox) -> None:
    """At SELECT / EXAMINE: listen for RESETKEY of this mailbox's keys, from any session of
    any worker or node (the change feed), for ``report_key_resets``. Only where URLMECH is
    told at all (over TLS, RFC 4467 10)."""
    end_key_watch(s)
    if s.urlauth is None or not s.io.is_tls:
        return
    s.key_resets = s.mailboxes.watch_account(mailbox.account_id)
    s.key_resets.set_ids([access_key_channel(mailbox.id),
                          access_keys_channel(mailbox.account_id)])


def end_key_watch(s: ImapSession) -> None:
    if s.key_resets is not None:
        s.key_resets.close()
        s.key_resets = None


def report_key_resets(s: ImapSession) -> None:
    """RFC 4467 7.1: after a RESETKEY of the selected mailbox's keys (or of all the user's),
    the session gets an untagged OK with the URLMECH response code (8.1), with the other
    updates it is told about. 0 is the watch's "mailbox list changed", not a reset."""
    if s.key_resets is not None and s.key_resets.take() - {0}:
        s.io.write(fmt.untagged(f"OK [{URLMECH}] URLAUTH access key reset"))
