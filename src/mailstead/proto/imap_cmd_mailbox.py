"""IMAP mailbox commands: CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST (with
LIST-EXTENDED, LIST-STATUS, SPECIAL-USE, CHILDREN), LSUB, NAMESPACE, STATUS, APPEND (UIDPLUS,
MULTIAPPEND, APPENDLIMIT) and QUOTA (RFC 9208). Pure code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailstead.core.errors import InvalidInput, NotFound
from mailstead.core.models import SPECIAL_USES, Mailbox, MailboxStatus
from mailstead.proto import imap_format as fmt
from mailstead.proto import imap_url, imap_urlauth, mime, mime_encoding, mutf7
from mailstead.proto.imap_args import (
    AppendArgs,
    CatenatePart,
    Command,
    CreateArgs,
    ListArgs,
    MailboxArgs,
    QuotaRootArgs,
    RenameArgs,
    StatusArgs,
)
from mailstead.proto.imap_format import CommandError, Reply
from mailstead.proto.lines import normalize_line_ends

if TYPE_CHECKING:
    from mailstead.proto.imap_session import ImapSession

_reply = Reply
_error = CommandError


async def _existing(s: ImapSession, raw_name: str) -> Mailbox:
    account = s.require_account()
    box = await s.mailboxes.find(account.id, s.mailbox_in(raw_name))
    if box is None:
        raise _error("NO", "Mailbox does not exist", "NONEXISTENT")
    return box


# ---------------------------------------------------------------------------------------------
# CREATE / DELETE / RENAME / (UN)SUBSCRIBE


async def cmd_create(s: ImapSession, cmd: Command) -> Reply:
    args = cmd.args
    assert isinstance(args, CreateArgs)
    account = s.require_account()
    special_use = None
    if args.special_use:  # CREATE-SPECIAL-USE (RFC 6154 3)
        wanted = {u.lower(): u for u in SPECIAL_USES}
        if len(args.special_use) > 1 or args.special_use[0].lower() not in wanted:
            return _reply("NO", "Unsupported special-use attribute", "USEATTR")
        special_use = wanted[args.special_use[0].lower()]
    name = s.mailbox_in(args.mailbox)
    if name.rstrip("/").upper() == "INBOX":
        return _reply("NO", "INBOX exists already", "ALREADYEXISTS")
    await s.mailboxes.create(account.id, name, special_use)
    return _reply("OK", "Create completed")


async def cmd_delete(s: ImapSession, cmd: Command) -> Reply:
    args = cmd.args
    assert isinstance(args, MailboxArgs)
    account = s.require_account()
    box = await _existing(s, args.mailbox)
    if box.name == "INBOX":
        return _reply("NO", "INBOX cannot be deleted", "CANNOT")
    if s.view is not None and s.view.mailbox.id == box.id:
        s.close_view()
    await s.mailboxes.delete(account.id, box.name)
    return _reply("OK", "Delete completed")


async def cmd_rename(s: ImapSession, cmd: Command) -> Reply:
    args = cmd.args
    assert isinstance(args, RenameArgs)
    account = s.require_account()
    box = await _existing(s, args.old)
    new = s.mailbox_in(args.new)
    if new.upper() == "INBOX":
        return _reply("NO", "INBOX exists already", "ALREADYEXISTS")
    await s.mailboxes.rename(account.id, box.name, new)
    return _reply("OK", "Rename completed")


async def cmd_subscribe(s: ImapSession, cmd: Command) -> Reply:
    args = cmd.args
    assert isinstance(args, MailboxArgs)
    account = s.require_account()
    if cmd.name == "SUBSCRIBE":
        box = await _existing(s, args.mailbox)
        await s.mailboxes.subscribe(account.id, box.name, True)
    else:  # the name may outlive its mailbox (RFC 9051 6.3.7), so it must be removable
        name = s.mailbox_in(args.mailbox)
        found = await s.mailboxes.find(account.id, name)
        await s.mailboxes.subscribe(account.id, found.name if found else name, False)
    return _reply("OK", f"{cmd.name.capitalize()} completed")


# ---------------------------------------------------------------------------------------------
# LIST / LSUB


def _pattern_regex(pattern: str) -> _Glob:
    """'*' matches anything, '%' anything but the separator (RFC 9051 6.3.9); INBOX matches
    in any case."""
    if pattern[:5].upper() == "INBOX" and (len(pattern) == 5 or pattern[5] in "/*%"):
        pattern = "INBOX" + pattern[5:]
    return _Glob(pattern)


class _Glob:
    """A LIST pattern matched in time linear in the name (issue 16): a regex of ".*a.*a.*a..."
    backtracks exponentially, so the pattern runs as a bit-parallel automaton instead (bit i
    set: the first i tokens of the pattern match what was read so far)."""

    def __init__(self, pattern: str) -> None:
        tokens: list[str] = []
        for ch in pattern:  # a run of wildcards is one: "*" if it holds a "*", else "%"
            if ch in "*%" and tokens and tokens[-1] in "*%":
                tokens[-1] = "*" if "*" in (ch, tokens[-1]) else "%"
            else:
                tokens.append(ch)
        self.size = len(tokens)
        self.literals: dict[str, int] = {}
        self.star = self.pct = 0
        for i, token in enumerate(tokens):
            if token == "*":
                self.star |= 1 << i
            elif token == "%":
                self.pct |= 1 << i
            else:
                self.literals[token] = self.literals.get(token, 0) | 1 << i
        self.wild = self.star | self.pct

    def fullmatch(self, name: str) -> bool:
        state = 1 | (1 & self.wild) << 1  # nothing read: token 0, or past a leading wildcard
        for ch in name:
            stay = self.star if ch == "/" else self.wild
            state = (state & self.literals.get(ch, 0)) << 1 | (state & stay)
            state |= (state & self.wild) << 1
            if not state:
                return False
        return bool(state >> self.size & 1)


def _sort_key(box: Mailbox) -> tuple[int, str]:
    return (0 if box.name == "INBOX" else 1, box.name)


async def cmd_list(s: ImapSession, cmd: Command) -> Reply:
    args = cmd.args
    assert isinstance(args, ListArgs)
    account = s.require_account()
    verb = "LSUB" if args.lsub else "LIST"
    if "RECURSIVEMATCH" in args.select_options and not (
            set(args.select_options) - {"RECURSIVEMATCH", "REMOTE"}):
        # RFC 5258 3.1: RECURSIVEMATCH alone (or with REMOTE only) MUST get a tagged BAD.
        return _reply("BAD", "RECURSIVEMATCH needs another selection option")
    patterns = [p for p in args.patterns if p != ""]
    if not patterns:
        # RFC 9051 6.3.9: an empty pattern asks for the hierarchy separator.
        if not args.extended or not args.patterns:
            s.io.write(f'* {verb} (\\Noselect) "/" ""\r\n'.encode())
        return _reply("OK", f"{verb} completed")
    regexes = [_pattern_regex(args.reference + p) for p in patterns]
    boxes = sorted(await s.mailboxes.list_mailboxes(account.id), key=_sort_key)
    subscribed = set(await s.mailboxes.subscriptions(account.id))
    parents = {name for b in boxes for name in _parents(b.name)}
    subscribed_parents = {name for sub in subscribed for name in _parents(sub)}
    only_subscribed = args.lsub or "SUBSCRIBED" in args.select_options
    only_special = "SPECIAL-USE" in args.select_options
    recursive = "RECURSIVEMATCH" in args.select_options
    show_subscribed = "SUBSCRIBED" in args.return_options or only_subscribed
    status_items = args.status_items if "STATUS" in args.return_options else ()
    if "HIGHESTMODSEQ" in status_items:
        s.enable_condstore()
    for box in boxes:
        await s.checkpoint()  # patterns x mailboxes is bounded work, shared with the others
        client_name = box.name if s.utf8 else mutf7.encode(box.name)
        if not any(r.fullmatch(client_name) for r in regexes):
            continue
        childinfo = noselect = False
        if only_subscribed and box.name not in subscribed:
            if args.lsub and box.name in subscribed_parents and not any(
                    r.fullmatch(name) for r in regexes
                    for name in _subscribed_below(subscribed, box.name, s.utf8)):
                # RFC 3501 6.3.9: LSUB "%" shows the unsubscribed parent of a subscribed
                # child the pattern does not reach, marked \Noselect.
                noselect = True
            elif not (recursive and box.name in subscribed_parents):
                continue
        if recursive and only_subscribed and not args.lsub and box.name in subscribed_parents:
            # RFC 5258 3.1/3.5: a child matches the selection (listed for it, if the mailbox
            # itself is not subscribed; as in the RFC's example 8, also when it is).
            childinfo = True
        if only_special and box.special_use is None:
            continue
        attrs: list[str] = ["\\Noselect"] if noselect else []
        if not args.lsub:
            attrs.append("\\HasChildren" if box.name in parents else "\\HasNoChildren")
            if box.special_use:
                attrs.append(box.special_use)
            if show_subscribed and box.name in subscribed:
                attrs.append("\\Subscribed")
        line = f"* {verb} ({' '.join(attrs)}) \"/\" ".encode() + s.mailbox_out(box.name)
        if childinfo:
            line += b' ("CHILDINFO" ("SUBSCRIBED"))'
        s.io.write(line + b"\r\n")
        if status_items:
            await _write_status(s, box, status_items)
    if only_subscribed:
        # Subscribed names whose mailbox is gone (RFC 9051 6.3.7, RFC 5258 example 5.3).
        attrs_text = "" if args.lsub else "\\NonExistent \\Subscribed"
        for name in sorted(subscribed - {b.name for b in boxes}):
            client_name = name if s.utf8 else mutf7.encode(name)
            if any(r.fullmatch(client_name) for r in regexes):
                s.io.write(f"* {verb} ({attrs_text}) \"/\" ".encode() + s.mailbox_out(name)
                           + b"\r\n")
    return _reply("OK", f"{verb} completed")


def _subscribed_below(subscribed: set[str], name: str, utf8: bool) -> list[str]:
    """Client names of the subscribed names under ``name``."""
    return [sub if utf8 else mutf7.encode(sub) for sub in subscribed
            if sub.startswith(name + "/")]


def _parents(name: str) -> list[str]:
    levels = name.split("/")
    return ["/".join(levels[:i]) for i in range(1, len(levels))]


async def cmd_lsub(s: ImapSession, cmd: Command) -> Reply:
    return await cmd_list(s, cmd)


async def cmd_namespace(s: ImapSession, cmd: Command) -> Reply:
    s.io.write(b'* NAMESPACE (("" "/")) NIL NIL\r\n')  # RFC 2342: one personal namespace
    return _reply("OK", "Namespace completed")


# ---------------------------------------------------------------------------------------------
# STATUS


def _status_value(s: ImapSession, item: str, st: MailboxStatus) -> int:
    values = {
        "MESSAGES": st.messages,
        "RECENT": st.recent,
        "UIDNEXT": st.uidnext,
        "UIDVALIDITY": st.uidvalidity,
        "UNSEEN": st.unseen,
        "DELETED": st.deleted,
        "SIZE": st.size,
        # RFC 9208 4.2.2: what EXPUNGE would give back, in units of 1024 octets like STORAGE.
        "DELETED-STORAGE": (st.deleted_size + 1023) // 1024,
        "HIGHESTMODSEQ": st.highestmodseq,
        "APPENDLIMIT": s.settings.max_message_size,
    }
    return values[item]


async def _write_status(s: ImapSession, box: Mailbox, items: tuple[str, ...]) -> None:
    """``box`` was read from the store by this command (STATUS, LIST-STATUS)."""
    sizes = "SIZE" in items or "DELETED-STORAGE" in items
    st = await s.mailboxes.fresh_status(box, sizes)
    pairs = " ".join(f"{item} {_status_value(s, item, st)}" for item in items)
    s.io.write(b"* STATUS " + s.mailbox_out(box.name) + f" ({pairs})\r\n".encode())


async def cmd_status(s: ImapSession, cmd: Command) -> Reply:
    args = cmd.args
    assert isinstance(args, StatusArgs)
    box = await _existing(s, args.mailbox)
    if "HIGHESTMODSEQ" in args.items:  # a CONDSTORE-enabling command (RFC 7162 3.1)
        s.enable_condstore()
    await _write_status(s, box, args.items)
    return _reply("OK", "Status completed")


# ---------------------------------------------------------------------------------------------
# APPEND


async def cmd_append(s: ImapSession, cmd: Command) -> Reply:
    args = cmd.args
    assert isinstance(args, AppendArgs)
    account = s.require_account()
    try:
        box = await s.mailboxes.find(account.id, s.mailbox_in(args.mailbox))
    except InvalidInput:
        box = None
    if box is None:  # RFC 9051 6.3.12: the client may CREATE and retry
        return _reply("NO", "Mailbox does not exist", "TRYCREATE")
    parsed = []
    for message in args.messages:
        try:
            bits, keywords = fmt.parse_flags(message.flags)
        except fmt.FlagError as exc:
            return _reply("BAD", str(exc))
        data = message.data
        if message.parts is not None:
            data = await _catenate(s, account.id, message.parts)
        if message.binary and len(data) <= s.settings.max_message_size:
            # RFC 3516 4.3: binary parts are kept as base64
            data = mime_encoding.base64_binary_parts(data, mime.parse(data))
        # RFC 9051 2.3.1 and 4.3: message text is CRLF-ended. A message written by a tool that
        # ends lines with a bare LF (or CR) is kept with CRLF, as Dovecot serves such mail, so
        # FETCH, RFC822.SIZE and POP3 agree; long lines are kept as they are.
        data = normalize_line_ends(data)
        if len(data) > s.settings.max_message_size:
            return _reply("NO", "Message too big", "TOOBIG")  # RFC 7889, RFC 4469 6
        if not data:
            return _reply("NO", "Empty message", "CANNOT")
        parsed.append((message, data, bits, keywords))
    uids: list[int] = []
    view = s.view if s.view is not None and s.view.mailbox.id == box.id else None
    try:
        for message, data, bits, keywords in parsed:
            if view is not None:  # the selected mailbox: \Recent for this session
                meta = await view.append(data, bits, keywords, message.date)
            else:
                meta = await s.mailboxes.append(box, data, bits, keywords, message.date)
            uids.append(meta.uid)
    except BaseException:
        # RFC 3502 3: MULTIAPPEND is all or nothing.
        try:
            await s.mailboxes.remove(box, uids)
        except (NotFound, OSError):
            pass
        raise
    code = f"APPENDUID {box.uidvalidity} {fmt.sequence_set(uids)}"  # RFC 4315 3
    return _reply("OK", "Append completed", code)


async def _catenate(s: ImapSession, account_id: int, parts: tuple[CatenatePart, ...]) -> bytes:
    """The message a CATENATE describes (RFC 4469 3): its TEXT parts and the data its URLs name
    joined in order. A URL's data is what ``FETCH BODY.PEEK[section]<partial>`` of that message
    gives; a URL that names nothing of this user's is refused with NO [BADURL url] (RFC 4469 6).
    """
    out: list[bytes] = []
    total = 0
    for part in parts:
        if part.url is None:
            piece = part.text
        else:
            piece = await _url_data(s, account_id, part.url)
        total += len(piece)
        if total > s.settings.max_message_size:  # stop reading before it all adds up
            raise CommandError("NO", "Message too big", "TOOBIG")
        out.append(piece)
    return b"".join(out)


async def _url_data(s: ImapSession, account_id: int, url: str) -> bytes:
    bad = CommandError("NO", "The URL names no message of yours", f"BADURL {fmt.quoted(url)}")
    if s.urlauth is not None and imap_urlauth.is_authorized(url):
        # RFC 4469 5 with RFC 4467: a URLAUTH URL may name another user's message.
        data = await imap_urlauth.fetch_authorized(
            s.urlauth, s.settings.hostname, url, user=s.require_account().address)
        if data is None:
            raise bad
        return data
    try:
        ref = imap_url.parse_message_url(url)
    except imap_url.BadUrl:
        raise bad from None
    account = s.require_account()
    if ref.user is not None and ref.user.lower() != account.address.lower():
        raise bad

    async def find(name: str) -> Mailbox | None:
        return await s.mailboxes.find(account_id, name)

    box = await imap_url.find_mailbox(find, ref.mailbox)
    if box is None or ref.uidvalidity not in (None, box.uidvalidity):
        raise bad
    data = await s.mailboxes.message_bytes(box, ref.uid)
    content = None if data is None else imap_url.named_part(data, ref)
    if content is None:
        raise bad
    return content


# ---------------------------------------------------------------------------------------------
# QUOTA (RFC 9208): one quota root "" per account, resources STORAGE (KiB) and MESSAGE


async def _quota_line(s: ImapSession) -> bytes | None:
    account = s.require_account()
    quota = await s.mailboxes.quota(account.id)
    resources = []
    if quota.limit_bytes:
        used_kib = (quota.used_bytes + 1023) // 1024
        resources.append(f"STORAGE {used_kib} {quota.limit_bytes // 1024}")
    if quota.limit_messages:
        resources.append(f"MESSAGE {quota.used_messages} {quota.limit_messages}")
    if not resources:
        return None
    return f'* QUOTA "" ({" ".join(resources)})\r\n'.encode()


async def cmd_getquotaroot(s: ImapSession, cmd: Command) -> Reply:
    args = cmd.args
    assert isinstance(args, MailboxArgs)
    box = await _existing(s, args.mailbox)
    line = await _quota_line(s)
    root = b' ""' if line is not None else b""
    s.io.write(b"* QUOTAROOT " + s.mailbox_out(box.name) + root + b"\r\n")
    if line is not None:
        s.io.write(line)
    return _reply("OK", "Getquotaroot completed")


async def cmd_getquota(s: ImapSession, cmd: Command) -> Reply:
    args = cmd.args
    assert isinstance(args, QuotaRootArgs)
    line = await _quota_line(s)
    if args.root != "" or line is None:
        return _reply("NO", "No such quota root", "NONEXISTENT")
    s.io.write(line)
    return _reply("OK", "Getquota completed")


async def cmd_setquota(s: ImapSession, cmd: Command) -> Reply:
    return _reply("NO", "Quotas are set by the administrator", "NOPERM")
