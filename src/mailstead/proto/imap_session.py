"""IMAP session: the state machine (RFC 9051 / RFC 3501 section 3), dispatch, login, ENABLE,
SELECT and the reporting of mailbox changes. Command families live in imap_cmd_*.py.

Pure code: the connection is a ``ClientIO`` and mail a ``MailboxBackend`` (imap_backend.py).
One call of ``execute`` runs one complete command (literals already read by the framing layer)
and writes its responses.

IMAP4rev1 and IMAP4rev2 side by side: a session is rev1 until the client sends
``ENABLE IMAP4rev2``; then \\Recent disappears, SEARCH answers in ESEARCH form, mailbox names
are UTF-8 instead of modified UTF-7, and SELECT sends a LIST response (RFC 9051 appendix E).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailstead.core.errors import (
    Conflict,
    CorruptBlob,
    InvalidInput,
    NotFound,
    QuotaExceeded,
)
from mailstead.core.models import Account
from mailstead.obs import log_event
from mailstead.proto import imap_format as fmt
from mailstead.proto import imap_uidonly, imap_urlauth, mutf7
from mailstead.proto.imap_args import (
    AuthenticateArgs,
    Command,
    CompressArgs,
    EnableArgs,
    IdArgs,
    LoginArgs,
    SelectArgs,
    SequenceSet,
)
from mailstead.proto.imap_backend import (
    Authenticator,
    ClientGone,
    ClientIO,
    ClientTimeout,
    FeedWatch,
    LoginRefused,
    MailboxBackend,
    SelectedView,
    TooManySessions,
)
from mailstead.proto.imap_format import CommandError, Reply
from mailstead.proto.imap_parse import parse_command
from mailstead.proto.imap_reader import ParseError

if TYPE_CHECKING:
    from mailstead.proto.imap_context import Contexts
    from mailstead.proto.imap_notify import Notifier
    from mailstead.proto.imap_urlauth import UrlAuthBackend

SERVER_NAME = "mailstead"
SERVER_VERSION = "0.1.0"


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


@dataclass(frozen=True, slots=True)
class SessionSettings:
    hostname: str
    starttls_available: bool  # listener speaks plain text with STARTTLS and has a certificate
    plaintext_login_ok: bool  # loopback client and config allows passwords without TLS
    max_message_size: int
    max_errors: int
    max_commands: int
    command_seconds: float = 30.0  # work one command may cost (cfg.limits.imap_command_seconds)


class WorkBudget:
    """The work one command may cost, and its turns on the shared event loop (issue 16).

    Work is the CPU time of the thread running the session (``time.thread_time``) while the
    command runs, so waiting for the client, for the store or for the other sessions is not
    counted (``waiting`` marks such waits; a yield at ``due`` is one too). Long loops call
    ``ImapSession.checkpoint`` per message: every ``SLICE`` seconds it yields to the other
    sessions, and past ``limit`` the command fails with NO [LIMIT] (RFC 5530)."""

    SLICE = 0.005  # longest run between two turns of the other sessions
    # Below this much running time, the wall clock stands in for the CPU time: a thread's CPU
    # time never exceeds the wall time it ran, so the budget is never undercounted, and most
    # commands end before reading the thread's CPU clock once (a system call, where
    # perf_counter is not). Past it every run is measured with time.thread_time.
    EXACT_AFTER = 0.02

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.used = 0.0
        self._exact = False  # running time measured with thread_time from the next resume
        self._cpu = 0.0
        self._wall = time.perf_counter()

    def due(self) -> bool:
        return time.perf_counter() - self._wall >= self.SLICE

    def stop(self) -> bool:
        """Adds the work since the last resume; True when the budget is spent."""
        if self._exact:
            self.used += time.thread_time() - self._cpu
        else:
            self.used += time.perf_counter() - self._wall
            self._exact = self.used >= self.EXACT_AFTER
        return self.used > self.limit

    def resume(self) -> None:
        if self._exact:
            self._cpu = time.thread_time()
        self._wall = time.perf_counter()

    def waiting(self) -> WorkBudget:
        """``with budget.waiting():`` around an await that waits: not counted as work. The
        budget is its own context manager (no generator object per wait)."""
        return self

    def __enter__(self) -> None:
        self.stop()

    def __exit__(self, *_exc: object) -> None:
        self.resume()


class BudgetSpent(CommandError):
    def __init__(self) -> None:
        super().__init__("NO", "Command used up its share of server time", "LIMIT")


_AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
_Handler = Callable[["ImapSession", Command], Awaitable[Reply]]
_HANDLERS: dict[str, tuple[frozenset[State], _Handler]] | None = None  # imap_commands.HANDLERS

# RFC 9051 7.5.1: no EXPUNGE while answering these (sequence numbers must not shift).
_NO_EXPUNGE = frozenset({"FETCH", "STORE", "SEARCH", "COPY"})
ENABLEABLE = frozenset({"CONDSTORE", "QRESYNC", "IMAP4REV2", "UIDONLY"})


class ImapSession:
    def __init__(
        self,
        auth: Authenticator,
        mailboxes: MailboxBackend,
        io: ClientIO,
        settings: SessionSettings,
    ) -> None:
        self.auth = auth
        self.mailboxes = mailboxes
        self.io = io
        self.settings = settings
        self.state = State.NOT_AUTHENTICATED
        self.account: Account | None = None
        self.view: SelectedView | None = None
        # ENABLEd extensions: the shared empty frozenset until one is (216 bytes less per
        # session than a set of its own).
        self.enabled: frozenset[str] = frozenset()
        self.condstore = False  # CONDSTORE-aware (RFC 7162 3.1): MODSEQ in FETCH responses
        self.errors = 0
        self.commands = 0
        self.current: Command | None = None
        self.force_refresh = False
        self.saved_uids: list[int] = []  # SEARCHRES "$" (RFC 5182)
        self.compressed = False  # COMPRESS=DEFLATE (RFC 4978) is on
        self.work: WorkBudget | None = None  # the running command's budget
        self.contexts: Contexts | None = None  # SEARCH/SORT RETURN (UPDATE), imap_context.py
        self.notify: Notifier | None = None  # NOTIFY (RFC 5465) is on
        self.urlauth: UrlAuthBackend | None = None  # URLAUTH (RFC 4467), set by the server
        self.key_resets: FeedWatch | None = None  # RESETKEY of the selected mailbox's keys

    # -- modes --

    @property
    def rev2(self) -> bool:
        return "IMAP4REV2" in self.enabled

    @property
    def qresync(self) -> bool:
        return "QRESYNC" in self.enabled

    @property
    def uidonly(self) -> bool:
        """UIDONLY (RFC 9586) is enabled: messages are named by UID alone (imap_uidonly.py)."""
        return "UIDONLY" in self.enabled

    @property
    def utf8(self) -> bool:
        """Mailbox names and quoted strings in UTF-8 (RFC 9051 5.1 / 4.3)."""
        return self.rev2

    @property
    def logged_out(self) -> bool:
        return self.state is State.LOGOUT

    def literal_limit(self, command: str) -> int:
        """Largest literal accepted for a command before login/after (the framing layer checks
        it before reading; the APPEND limit is announced as APPENDLIMIT, RFC 7889)."""
        if command == "APPEND" and self.state in _AUTH:
            return self.settings.max_message_size
        return 64 * 1024

    # -- capabilities --

    def _plaintext_ok(self) -> bool:
        return self.io.is_tls or self.settings.plaintext_login_ok

    def capabilities(self) -> str:
        caps = ["IMAP4rev1", "IMAP4rev2", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE"]
        if self.state is State.NOT_AUTHENTICATED:
            if self.settings.starttls_available and not self.io.is_tls:
                caps.append("STARTTLS")
            if self._plaintext_ok():
                caps.append("AUTH=PLAIN")
            else:
                caps.append("LOGINDISABLED")
            return " ".join(caps)
        caps += [
            "NAMESPACE", "UNSELECT", "UIDPLUS", "MOVE", "CONDSTORE", "QRESYNC", "ESEARCH",
            "SEARCHRES", "WITHIN", "SPECIAL-USE", "CREATE-SPECIAL-USE", "CHILDREN",
            "LIST-EXTENDED", "LIST-STATUS", "QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE",
            f"APPENDLIMIT={self.settings.max_message_size}", "MULTIAPPEND", "BINARY", "CATENATE",
            "COMPRESS=DEFLATE", "STATUS=SIZE", "SORT", "SORT=DISPLAY", "ESORT",
            "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES", "UNAUTHENTICATE", "PREVIEW",
            "NOTIFY", "CONTEXT=SEARCH", "CONTEXT=SORT", "UIDONLY",
        ]
        if self.urlauth is not None:
            caps.append("URLAUTH")
        return " ".join(caps)

    def greeting(self) -> bytes:
        return fmt.untagged(
            f"OK [CAPABILITY {self.capabilities()}] {self.settings.hostname} "
            f"{SERVER_NAME} ready"
        )

    # -- the command loop's entry points --

    async def execute(self, data: bytes) -> None:
        """Runs one whole command (without its final CRLF) and writes every response."""
        self.commands += 1
        if self.commands > self.settings.max_commands:
            self.io.write(fmt.untagged("BYE Too many commands in one session"))
            self.state = State.LOGOUT
            return
        try:
            cmd = parse_command(data)
        except ParseError as exc:
            await self.reject(exc.tag, f"Error in IMAP command: {exc}", exc.code)
            return
        self.current = cmd
        self.work = WorkBudget(self.settings.command_seconds)
        try:
            reply = await self._run(cmd)
        finally:
            self.current = None
            self.work = None
        if not reply.status:  # answered already (STARTTLS)
            return
        if self.state is not State.LOGOUT:
            await self._report_after(cmd)
        if reply.status == "BAD":
            await self.reject(cmd.tag, reply.text, reply.code)
            return
        self.io.write(fmt.tagged(cmd.tag, reply.status, reply.text, reply.code))
        await self.io.drain()

    async def reject(self, tag: str, text: str, code: str = "") -> None:
        """Answers BAD; too many of them end the session (cfg.limits.max_errors)."""
        self.errors += 1
        self.io.write(fmt.tagged(tag, "BAD", text, code))
        if self.errors >= self.settings.max_errors:
            self.io.write(fmt.untagged("BYE Too many invalid commands"))
            self.state = State.LOGOUT
        await self.io.drain()

    async def refuse_literal(self, tag: str, command: str, size: int) -> None:
        """A synchronising literal above the limit: refused before the client sends it."""
        if command == "APPEND" and self.state in _AUTH:
            self.io.write(fmt.tagged(tag, "NO", "Message too big", "TOOBIG"))
            await self.io.drain()
            return
        await self.reject(tag, f"Literal of {size} octets is too big")

    async def _run(self, cmd: Command) -> Reply:
        global _HANDLERS
        if _HANDLERS is None:  # imap_commands imports this module: look it up once, late
            from mailstead.proto.imap_commands import HANDLERS

            _HANDLERS = HANDLERS
        states, handler = _HANDLERS[cmd.name]
        if self.state not in states:
            return Reply("BAD", f"{cmd.name} is not allowed in the {self.state.value} state")
        if self.uidonly:
            refused = imap_uidonly.refusal(cmd)
            if refused is not None:
                return refused
        try:
            return await handler(self, cmd)
        except CommandError as exc:
            return Reply(exc.status, exc.text, exc.code)
        except NotFound as exc:
            return Reply("NO", _clean(exc), "NONEXISTENT")
        except Conflict as exc:
            return Reply("NO", _clean(exc), "ALREADYEXISTS")
        except QuotaExceeded:
            return Reply("NO", "Quota exceeded", "OVERQUOTA")
        except InvalidInput as exc:
            return Reply("NO", _clean(exc), "CANNOT")
        except CorruptBlob as exc:
            # RFC 5530 3: CORRUPTION says stored data is damaged (the details go to the log);
            # the bytes that fail their hash are never sent.
            log_event("imap.corrupt", logging.ERROR, command=cmd.name, blob=exc.blob_id,
                      reason=exc.reason)
            return Reply("NO", "A message file is damaged; it was not sent", "CORRUPTION")
        except (ClientGone, ClientTimeout):
            raise  # the connection's business, not the command's
        except Exception as exc:  # a bug must cost one command, not the session
            log_event("imap.error", logging.ERROR, command=cmd.name, error=repr(exc))
            return Reply("NO", "Internal server error", "SERVERBUG")

    # -- mailbox change reporting (RFC 9051 7.5.1) --

    async def _report_after(self, cmd: Command) -> None:
        base = cmd.name.removeprefix("UID ") if cmd.uid else cmd.name
        allow = cmd.uid or base not in _NO_EXPUNGE
        await self.report_updates(allow)

    async def report_updates(self, allow_expunge: bool, allow_flags: bool = True) -> None:
        view = self.view
        if view is None:
            return
        force, self.force_refresh = self.force_refresh, False
        try:
            await view.refresh(force)
        except NotFound:
            self.io.write(fmt.untagged("BYE Selected mailbox was deleted"))
            self.close_view()
            self.state = State.LOGOUT
            return
        except Exception as exc:  # the store hiccuped: report next time
            log_event("imap.error", logging.ERROR, command="(updates)", error=repr(exc))
            return
        updates = view.take_updates(allow_expunge, allow_flags)
        self.announce_keywords([updates.keywords])
        out = self.io.write
        if self.key_resets is not None:
            imap_urlauth.report_key_resets(self)
        contexts = self.contexts  # RFC 5267 4.3: results kept up to date (imap_context.py)
        if contexts is not None:
            out(contexts.expunged(view, updates.expunged))
        if updates.expunged:
            # RFC 7162 3.2.10 and RFC 9586 3.4: VANISHED replaces EXPUNGE
            if self.qresync or self.uidonly:
                uids = sorted(uid for _seq, uid in updates.expunged)
                out(fmt.untagged(f"VANISHED {fmt.sequence_set(uids)}"))
            else:
                out(b"".join(b"* %d EXPUNGE\r\n" % seq for seq, _uid in updates.expunged))
        if updates.exists is not None:
            out(b"* %d EXISTS\r\n" % updates.exists)
        if updates.recent is not None and not self.rev2:
            out(b"* %d RECENT\r\n" % updates.recent)
        for seq, state in updates.flags:
            out(self.flags_fetch_line(seq, state.uid, state.flags, state.keywords, state.modseq))
        if contexts is not None:
            await contexts.report(self, updates, allow_expunge)

    def announce_keywords(self, keyword_sets: Iterable[AbstractSet[str]]) -> None:
        """Sends FLAGS (and PERMANENTFLAGS) again when keywords the client was not told of
        are about to be shown: RFC 3501 7.2.6 / RFC 9051 7.3.5, the FLAGS response lists the
        flags in use, and clients refuse a keyword in a FETCH that FLAGS did not name."""
        view = self.view
        if view is None:
            return
        known = view.keywords
        new: set[str] = set()
        for keywords in keyword_sets:
            if keywords and not keywords <= known:
                new.update(keywords)
        new -= known
        if new:
            known.update(new)
            self.io.write(self.flags_responses(view))

    def flags_responses(self, view: SelectedView) -> bytes:
        """``* FLAGS (...)`` and ``* OK [PERMANENTFLAGS (...)]`` for the selected mailbox."""
        keywords = " ".join(sorted(view.keywords))
        flags = fmt.SYSTEM_FLAGS.decode() + (" " + keywords if keywords else "")
        if view.readonly:
            permanent = fmt.untagged("OK [PERMANENTFLAGS ()] Read-only mailbox")
        else:
            permanent = fmt.untagged(f"OK [PERMANENTFLAGS ({flags} \\*)] Flags permitted")
        return fmt.untagged(f"FLAGS ({flags})") + permanent

    def flags_fetch_line(
        self, seq: int, uid: int, flags: int, keywords: frozenset[str], modseq: int,
        with_uid: bool = True,
    ) -> bytes:
        """``* seq FETCH (UID n FLAGS (...) MODSEQ (m))`` for changes and STORE replies."""
        assert self.view is not None
        recent = not self.rev2 and self.view.is_recent(uid)
        uidonly = self.uidonly  # RFC 9586 3.3: the UID leads the UIDFETCH line instead
        parts = [b"UID %d" % uid] if with_uid and not uidonly else []
        parts.append(b"FLAGS " + fmt.flag_list(flags, keywords, recent))
        if self.condstore:
            parts.append(b"MODSEQ (%d)" % modseq)
        return imap_uidonly.fetch_head(uidonly, seq, uid) + b" ".join(parts) + b")\r\n"

    # -- helpers for command handlers --

    async def checkpoint(self) -> None:
        """Called often (per message) by long commands: gives the other sessions their turn
        every few milliseconds and ends the command once its budget is spent (BudgetSpent,
        answered NO [LIMIT]). Cheap when nothing is due."""
        work = self.work
        if work is None or not work.due():
            return
        if work.stop():
            name = self.current.name if self.current is not None else "?"
            log_event("imap.command_limit", command=name, seconds=round(work.used, 3),
                      client=self.io.peer_ip)
            raise BudgetSpent()
        await self.io.pause()
        work.resume()

    def waiting(self) -> contextlib.AbstractContextManager[None]:
        """Wraps an await that waits (store, slow client): not counted as work."""
        work = self.work
        return contextlib.nullcontext() if work is None else work.waiting()

    def require_view(self) -> SelectedView:
        if self.view is None:
            raise CommandError("BAD", "No mailbox selected")
        return self.view

    def require_account(self) -> Account:
        if self.account is None:
            raise CommandError("BAD", "Not logged in")
        return self.account

    def resolve(self, numbers: SequenceSet, uid: bool) -> list[int]:
        """UIDs named by a sequence set (message numbers or UIDs), ascending."""
        view = self.require_view()
        if numbers.saved:
            return [u for u in self.saved_uids if view.seq_of(u) is not None]
        if uid:
            largest = view.last_uid
            if largest == 0:
                return []
            return view.uids_in_uid_ranges(numbers.bounds(largest))
        exists = view.exists
        if exists == 0 and numbers.uses_star():
            return []  # "1:*" in an empty mailbox: nothing, as clients expect
        bounds = numbers.bounds(exists)
        for lo, hi in bounds:
            if lo < 1 or hi > exists:  # RFC 9051 9 (seq-number): only existing numbers
                raise CommandError("BAD", "Invalid message sequence number")
        return view.uids_in_seq_ranges(bounds)

    def mailbox_in(self, raw: str) -> str:
        """A mailbox name from the client -> the stored UTF-8 form."""
        if self.utf8 or raw == "INBOX":
            return raw
        try:
            return mutf7.decode(raw)
        except mutf7.MUTF7Error:
            raise CommandError("NO", "Mailbox name is not valid modified UTF-7", "CANNOT") from None

    def mailbox_out(self, name: str) -> bytes:
        return fmt.string(name if self.utf8 else mutf7.encode(name), self.utf8)

    def enable_condstore(self) -> None:
        """A CONDSTORE-enabling command (RFC 7162 3.1): from now on FETCH carries MODSEQ; if a
        mailbox is open the client learns its HIGHESTMODSEQ now."""
        if self.condstore:
            return
        self.condstore = True
        if self.view is not None:
            self.io.write(fmt.untagged(f"OK [HIGHESTMODSEQ {self.view.modseq}] Highest"))

    def end_notify(self) -> None:
        """NOTIFY NONE, a new NOTIFY SET, or the end of the session."""
        if self.notify is not None:
            self.notify.close()
            self.notify = None

    def close_view(self) -> None:
        self.saved_uids = []
        self.contexts = None  # contexts belong to the selected mailbox (RFC 5267 4.3)
        if self.view is not None:
            self.view.close()
            self.view = None
        if self.key_resets is not None:
            imap_urlauth.end_key_watch(self)
        if self.state is State.SELECTED:
            self.state = State.AUTHENTICATED

    # -- connection-level commands --

    async def cmd_capability(self, cmd: Command) -> Reply:
        self.io.write(fmt.untagged(f"CAPABILITY {self.capabilities()}"))
        return Reply("OK", "Capability completed")

    async def cmd_noop(self, cmd: Command) -> Reply:
        self.force_refresh = True  # ask the store even if no change was announced
        return Reply("OK", f"{cmd.name.capitalize()} completed")

    async def cmd_logout(self, cmd: Command) -> Reply:
        self.io.write(fmt.untagged("BYE Logging out"))
        self.end_notify()
        self.close_view()
        self.state = State.LOGOUT
        return Reply("OK", "Logout completed")

    async def cmd_id(self, cmd: Command) -> Reply:
        assert isinstance(cmd.args, IdArgs)
        self.io.write(
            fmt.untagged(f'ID ("name" "{SERVER_NAME}" "version" "{SERVER_VERSION}")')
        )
        return Reply("OK", "ID completed")

    async def cmd_starttls(self, cmd: Command) -> Reply:
        if self.io.is_tls or not self.settings.starttls_available:
            return Reply("BAD", "TLS is not available here")
        self.io.write(fmt.tagged(cmd.tag, "OK", "Begin TLS negotiation now"))
        await self.io.drain()
        await self.io.start_tls()
        return Reply("", "")

    async def cmd_compress(self, cmd: Command) -> Reply:
        """RFC 4978 3: after the tagged OK both sides speak raw DEFLATE; once per session."""
        assert isinstance(cmd.args, CompressArgs)
        if self.compressed:
            return Reply("NO", "Compression is already on", "COMPRESSIONACTIVE")
        if cmd.args.mechanism.upper() != "DEFLATE":
            return Reply("BAD", "Unknown compression mechanism")
        self.io.write(fmt.tagged(cmd.tag, "OK", "DEFLATE active"))
        await self.io.drain()
        self.io.start_compression()
        self.compressed = True
        log_event("imap.compress", user=self.account.address if self.account else "")
        return Reply("", "")

    async def cmd_login(self, cmd: Command) -> Reply:
        assert isinstance(cmd.args, LoginArgs)
        if not self._plaintext_ok():  # RFC 9051 6.2.3: LOGINDISABLED
            return Reply("NO", "Use STARTTLS first", "PRIVACYREQUIRED")
        return await self._login(cmd.args.user, cmd.args.password)

    async def cmd_authenticate(self, cmd: Command) -> Reply:
        assert isinstance(cmd.args, AuthenticateArgs)
        if cmd.args.mechanism != "PLAIN":
            return Reply("NO", "Unsupported authentication mechanism", "CANNOT")
        if not self._plaintext_ok():
            return Reply("NO", "Use STARTTLS first", "PRIVACYREQUIRED")
        response = cmd.args.initial
        if response is None:  # no SASL-IR: ask for it
            self.io.write(fmt.continuation())
            await self.io.drain()
            response = (await self.io.read_line()).rstrip(b"\r\n").decode("ascii", "replace")
            if response == "*":
                return Reply("BAD", "Authentication cancelled")
        try:
            decoded = base64.b64decode(response, validate=True)
            authzid, authcid, password = decoded.split(b"\x00")
        except (binascii.Error, ValueError):
            return Reply("BAD", "Invalid SASL PLAIN response")
        if authzid and authzid != authcid:
            return Reply("NO", "Authorization identity must match", "AUTHORIZATIONFAILED")
        return await self._login(
            authcid.decode("utf-8", "replace"), password.decode("utf-8", "replace")
        )

    async def _login(self, user: str, password: str) -> Reply:
        try:
            self.account = await self.auth.login(user, password, self.io.peer_ip)
        except LoginRefused as exc:
            if exc.temporary:
                return Reply("NO", "Too many failed logins, try later", "UNAVAILABLE")
            return Reply("NO", "Invalid credentials", "AUTHENTICATIONFAILED")
        except TooManySessions:  # RFC 5530 3: LIMIT, an implementation limit was reached
            return Reply("NO", "Too many sessions", "LIMIT")
        self.state = State.AUTHENTICATED
        return Reply("OK", "Logged in", f"CAPABILITY {self.capabilities()}")

    async def cmd_enable(self, cmd: Command) -> Reply:
        assert isinstance(cmd.args, EnableArgs)
        if self.state is not State.AUTHENTICATED:  # RFC 5161 3.1
            return Reply("BAD", "ENABLE is only valid before SELECT")
        newly: list[str] = []
        for cap in cmd.args.capabilities:
            if cap in ENABLEABLE and cap not in self.enabled:
                self.enabled = self.enabled | {cap}
                newly.append("IMAP4rev2" if cap == "IMAP4REV2" else cap)
                if cap == "QRESYNC" and "CONDSTORE" not in self.enabled:
                    # RFC 7162 3.2.3: QRESYNC implies it
                    self.enabled = self.enabled | {"CONDSTORE"}
                if cap in ("CONDSTORE", "QRESYNC"):
                    self.condstore = True
        self.io.write(fmt.untagged(" ".join(["ENABLED", *newly])))
        return Reply("OK", "Enabled")

    # -- SELECT / EXAMINE / CLOSE / UNSELECT --

    async def cmd_select(self, cmd: Command) -> Reply:
        args = cmd.args
        assert isinstance(args, SelectArgs)
        account = self.require_account()
        if args.qresync is not None and not self.qresync:
            return Reply("BAD", "QRESYNC is not enabled")  # RFC 7162 3.2.5
        had_view = self.view is not None
        self.close_view()
        if had_view and (self.rev2 or self.qresync):
            self.io.write(fmt.untagged("OK [CLOSED] Previous mailbox closed"))
        if args.condstore:
            self.condstore = True
        name = self.mailbox_in(args.mailbox)
        readonly = cmd.name == "EXAMINE"
        try:
            view = await self.mailboxes.open(
                account.id, name, readonly=readonly, track_recent=not self.rev2
            )
        except (NotFound, InvalidInput):
            return Reply("NO", "Mailbox does not exist", "NONEXISTENT")
        out = self.io.write
        out(self.flags_responses(view))
        out(b"* %d EXISTS\r\n" % view.exists)
        if not self.rev2:
            out(b"* %d RECENT\r\n" % view.recent_count())
            if view.first_unseen and not self.uidonly:  # RFC 9586 3: no sequence numbers
                out(fmt.untagged(f"OK [UNSEEN {view.first_unseen}] First unseen"))
        out(fmt.untagged(f"OK [UIDVALIDITY {view.mailbox.uidvalidity}] UIDs valid"))
        out(fmt.untagged(f"OK [UIDNEXT {view.uidnext}] Predicted next UID"))
        out(fmt.untagged(f"OK [HIGHESTMODSEQ {view.modseq}] Highest"))
        if self.urlauth is not None and self.io.is_tls:
            # RFC 4467 8: URLMECH in SELECT/EXAMINE, only where the session is not snooped.
            out(fmt.untagged("OK [URLMECH INTERNAL] URLAUTH mechanisms"))
        if self.rev2:  # RFC 9051 6.3.2: the mailbox's LIST response
            out(b'* LIST () "/" ' + self.mailbox_out(view.mailbox.name) + b"\r\n")
        self.view = view
        self.state = State.SELECTED
        imap_urlauth.watch_key_resets(self, view.mailbox)
        if args.qresync is not None:
            from mailstead.proto.imap_cmd_fetch import qresync_select

            await qresync_select(self, args.qresync)
        return Reply(
            "OK", f"{cmd.name.capitalize()} completed", "READ-ONLY" if readonly else "READ-WRITE"
        )

    async def cmd_close(self, cmd: Command) -> Reply:
        view = self.require_view()
        if not view.readonly:  # RFC 9051 6.4.1: silent expunge
            await view.expunge()
        self.close_view()
        return Reply("OK", "Close completed")

    async def cmd_unauthenticate(self, cmd: Command) -> Reply:
        """RFC 8437: back to the not-authenticated state as if newly connected, but TLS and
        COMPRESS stay; the mailbox is closed without expunging, ENABLEd extensions end."""
        self.end_notify()  # NOTIFY belongs to the user who set it
        self.close_view()
        self.auth.release()
        self.account = None
        self.enabled = frozenset()
        self.condstore = False
        self.state = State.NOT_AUTHENTICATED
        return Reply("OK", "Not authenticated any more")

    async def cmd_unselect(self, cmd: Command) -> Reply:
        self.require_view()
        self.close_view()
        return Reply("OK", "Unselect completed")

    async def cmd_idle(self, cmd: Command) -> Reply:
        """RFC 2177: updates flow until the client sends DONE."""
        self.io.write(fmt.continuation("idling"))
        await self.io.drain()
        while True:
            await self.report_updates(allow_expunge=True)
            await self.io.drain()
            if self.state is State.LOGOUT:  # the selected mailbox went away
                return Reply("", "")
            notifier = self.notify
            if notifier is not None:  # RFC 5465: NOTIFY's news flow during IDLE too
                wait: Callable[[], Awaitable[bool]] | None = _notify_waiter(notifier)
            else:
                wait = None if self.view is None else self.view.change_waiter
            line = await self.io.idle_wait(wait)
            if line is None:
                if notifier is not None and self.notify is notifier:
                    await notifier.deliver()
                continue
            if line.rstrip(b"\r\n").upper() == b"DONE":
                return Reply("OK", "Idle completed")
            return Reply("BAD", "Expected DONE")


def _notify_waiter(notifier: Notifier) -> Callable[[], Awaitable[bool]]:
    async def wait() -> bool:
        await notifier.wait()
        return True

    return wait


def _clean(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:1].upper() + text[1:]
