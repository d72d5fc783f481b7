"""The SMTP server session (RFC 5321) as a pure state machine: lines in, replies out.

No sockets and no store: the session asks an ``SmtpBackend`` (routing, login, quota, delivery)
and tells its driver what to do next through ``Reply.action`` (read a message, read a BDAT chunk,
start TLS, hang up). The same class serves MX (port 25) and submission (RFC 6409); the policy says
which.

Extensions: PIPELINING (RFC 2920), SIZE (1870), 8BITMIME (6152), BINARYMIME and CHUNKING (3030),
SMTPUTF8 (6531), ENHANCEDSTATUSCODES (2034, codes from 3463), DSN (3461), STARTTLS (3207), AUTH
PLAIN/LOGIN (4954, 4616), REQUIRETLS (8689).
"""


from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mailstead.core.addresses import parse_address
from mailstead.core.errors import InvalidInput, QuotaExceeded
from mailstead.core.models import Account
from mailstead.proto.headers import (
    count_received,
    from_fields,
    header_section,
    parse_mailbox_list,
)
from mailstead.proto.lines import (
    COMMAND_LINE_MAX,
    OFF_LOOP_SIZE,
    DataOutcome,
    DataProblem,
    chunked_message,
    strip_eol,
)
from mailstead.proto.smtp_parse import (
    _after_keyword,
    _ascii_digits,
    _discard_chunk,
    _mailbox,
    _printable,
    _rcpt_params,
    _Refusal,
    _split_path,
    _xtext,
)
from mailstead.proto.smtp_types import (
    LONGEST_LINE,
    MAX_FROM_MAILBOXES,
    MAX_RECEIVED,
    TOO_MANY_RECIPIENTS,
    Action,
    AuthRefused,
    BodyType,
    MessageDeferred,
    MessageRefused,
    QuotaState,
    Recipient,
    Reply,
    RouteLike,
    SessionChecks,
    SessionPolicy,
    SmtpBackend,
    Transaction,
    reply,
)

if TYPE_CHECKING:
    from mailstead.proto.smtp_burl import UrlFetcher

__all__ = [
    "LONGEST_LINE", "MAX_FROM_MAILBOXES", "MAX_RECEIVED", "TOO_MANY_RECIPIENTS", "Action",
    "AuthRefused", "BodyType", "MessageDeferred", "MessageRefused", "QuotaState", "Recipient",
    "Reply", "RouteLike", "SessionChecks", "SessionPolicy", "SmtpBackend", "SmtpSession",
    "Transaction", "reply",
]

_LINE_LIMITS = {"MAIL": 2048, "RCPT": 1024, "AUTH": LONGEST_LINE}
_HTTP_VERBS = {"GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS"}


@dataclass(slots=True)
class _Chunk:
    """A BDAT chunk being read (one the session takes; refused ones are discarded)."""

    last: bool


@dataclass(slots=True)
class _SaslState:
    mechanism: Literal["PLAIN", "LOGIN"]
    username: str | None = None


@functools.lru_cache(maxsize=64)
def _extensions(max_size: int, starttls: bool, auth: bool, tls: bool, burl_host: str
                ) -> tuple[str, ...]:
    """The EHLO keywords (RFC 5321 4.1.1.1), made once for each combination a session can be
    in rather than for every EHLO of every connection."""
    ext = [
        "PIPELINING",
        f"SIZE {max_size}",
        "8BITMIME",
        "BINARYMIME",
        "CHUNKING",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "DSN",
    ]
    if starttls:
        ext.append("STARTTLS")
    if auth:
        ext.append("AUTH PLAIN LOGIN")
    if tls:
        ext.append("REQUIRETLS")  # RFC 8689 4.1: only over TLS
    if burl_host:
        from mailstead.proto.smtp_burl import ehlo_keyword

        ext.append(ehlo_keyword(burl_host))
    ext.append("HELP")
    return tuple(ext)


LOGIN_USERNAME = base64.b64encode(b"Username:").decode()
LOGIN_PASSWORD = base64.b64encode(b"Password:").decode()


class SmtpSession:
    def __init__(self, policy: SessionPolicy, backend: SmtpBackend, *, tls_active: bool) -> None:
        self.policy = policy
        self.backend = backend
        self.tls_active = tls_active
        self.helo: str | None = None
        self.esmtp = False
        self.account: Account | None = None
        self.txn: Transaction | None = None
        self.errors = 0
        self._sasl: _SaslState | None = None
        self._chunk: _Chunk | None = None
        self._chunking = False  # a BDAT was accepted in this transaction
        self._chunk_parts: list[bytes] = []
        self._chunk_size = 0
        self.url_fetcher: UrlFetcher | None = None  # BURL (RFC 4468, smtp_burl.py), if offered
        self.checks: SessionChecks | None = None  # inbound checks per phase, if any
        self._refused_at_connect = False

    # -- replies the driver asks for ----------------------------------------------------------

    def greeting(self) -> Reply:
        return Reply(220, (f"{self.policy.hostname} ESMTP mailstead",))

    async def start(self) -> Reply:
        """The first reply: the greeting, unless a connect check refuses the client. RFC 5321
        3.1: a refusal is 554 (and the server waits for QUIT, answering 503 meanwhile), or 421
        and the connection closed for a refusal for now (RFC 5321 3.8)."""
        if self.checks is None:
            return self.greeting()
        refused = await self.checks.at_connect()
        if refused is None:
            return self.greeting()
        if refused.code < 500:
            return Reply(421, refused.lines, Action.CLOSE)
        self._refused_at_connect = True
        return Reply(554, refused.lines)

    def timeout_reply(self) -> Reply:
        return reply(421, "4.4.2", f"{self.policy.hostname} Idle timeout, closing connection",
                     Action.CLOSE)

    def internal_error_reply(self) -> Reply:
        return reply(421, "4.3.0", f"{self.policy.hostname} Internal error, try again later",
                     Action.CLOSE)

    def shutdown_reply(self) -> Reply:
        return reply(421, "4.3.2", f"{self.policy.hostname} Service shutting down",
                     Action.CLOSE)

    @property
    def in_auth_exchange(self) -> bool:
        return self._sasl is not None

    # -- input --------------------------------------------------------------------------------

    async def on_line(self, line: bytes) -> Reply:
        """One line from the client (with its CRLF): a command, or an AUTH response."""
        if not line.endswith(b"\r\n"):
            # RFC 5321 2.3.8: lines end with CRLF only. A bare LF (or CR, below) is refused,
            # never taken as a line end, as the DATA reader does (lines.py).
            self._sasl = None
            return self._counted(reply(500, "5.5.2", "Line must end with CRLF"))
        if self._sasl is not None:
            return self._counted(await self._sasl_step(strip_eol(line)))
        if self._refused_at_connect and strip_eol(line).upper() != b"QUIT":
            return self._counted(reply(503, "5.5.1", "Bad sequence of commands: this client "
                                       "was refused, send QUIT"))
        return self._counted(await self._command(line))

    def on_line_too_long(self) -> Reply:
        """The driver read and dropped a line longer than LONGEST_LINE."""
        self._sasl = None
        return self._counted(reply(500, "5.5.2", "Line too long"))

    async def _command(self, line: bytes) -> Reply:
        raw = strip_eol(line)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return reply(500, "5.5.2", "Syntax error: command is not valid UTF-8")
        if "\r" in text or "\n" in text or "\x00" in text:
            return reply(500, "5.5.2", "Syntax error: control character in command")
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        if len(line) > _LINE_LIMITS.get(verb, COMMAND_LINE_MAX):
            return reply(500, "5.5.2", "Line too long")
        handler = _HANDLERS.get(verb)
        if handler is None:
            if verb in _HTTP_VERBS:
                # Browsers tricked into posting to port 25 (cross-protocol attacks): hang up.
                return reply(554, "5.7.0", "This is a mail server", Action.CLOSE)
            return reply(500, "5.5.1", "Command not recognized")
        try:
            return await handler(self, arg)
        except _Refusal as refusal:
            return refusal.reply

    def _counted(self, answer: Reply) -> Reply:
        """Counts error replies; too many end the session (defence against probing)."""
        if answer.code >= 400 and answer.action is not Action.CLOSE \
                and answer is not TOO_MANY_RECIPIENTS:
            self.errors += 1
            if self.errors >= self.policy.max_errors:
                return reply(421, "4.7.0", f"{self.policy.hostname} Too many errors",
                             Action.CLOSE)
        return answer

    # -- session commands ---------------------------------------------------------------------

    async def _ehlo(self, arg: str) -> Reply:
        return self._greet(arg, extended=True)

    async def _helo(self, arg: str) -> Reply:
        return self._greet(arg, extended=False)

    def _greet(self, arg: str, *, extended: bool) -> Reply:
        words = arg.split()
        if not words:
            word = "EHLO" if extended else "HELO"
            return reply(501, "5.5.4", f"Syntax: {word} hostname")
        self._reset_transaction()  # RFC 5321 4.1.4: EHLO/HELO ends any transaction
        self.helo = _printable(words[0])[:255]
        self.esmtp = extended
        greeting = f"{self.policy.hostname} Hello {self.helo}"
        if not extended:
            return Reply(250, (greeting,))
        return Reply(250, (greeting, *self.extensions()))

    def extensions(self) -> tuple[str, ...]:
        policy = self.policy
        return _extensions(
            policy.max_message_size,
            policy.starttls_offered and not self.tls_active,
            policy.submission and self._auth_allowed() and self.account is None,
            self.tls_active,
            policy.hostname if policy.submission and self.url_fetcher is not None else "",
        )

    async def _rset(self, arg: str) -> Reply:
        if arg.strip():
            return reply(501, "5.5.4", "Syntax: RSET")
        self._reset_transaction()
        return reply(250, "2.0.0", "Ok")

    async def _noop(self, arg: str) -> Reply:
        return reply(250, "2.0.0", "Ok")

    async def _quit(self, arg: str) -> Reply:
        self._reset_transaction()
        return reply(221, "2.0.0", f"{self.policy.hostname} Bye", Action.CLOSE)

    async def _vrfy(self, arg: str) -> Reply:
        if not arg.strip():
            return reply(501, "5.5.4", "Syntax: VRFY address")
        # RFC 5321 3.5.3: 252 says neither yes nor no, so VRFY cannot harvest addresses.
        return reply(252, "2.1.5", "Cannot VRFY user, but will accept message and attempt delivery")

    async def _expn(self, arg: str) -> Reply:
        return reply(502, "5.5.1", "EXPN not available")

    async def _help(self, arg: str) -> Reply:
        commands = "EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH"
        return Reply(214, (f"2.0.0 Commands: {commands}", "2.0.0 See RFC 5321"))

    async def _starttls(self, arg: str) -> Reply:
        if arg.strip():
            return reply(501, "5.5.4", "Syntax: STARTTLS")
        if self.tls_active:
            return reply(503, "5.5.1", "TLS already active")
        if not self.policy.starttls_offered:
            return reply(454, "4.7.0", "TLS not available")
        if self.txn is not None:
            return reply(503, "5.5.1", "STARTTLS not allowed during a mail transaction")
        return reply(220, "2.0.0", "Ready to start TLS", Action.START_TLS)

    def tls_started(self) -> None:
        """RFC 3207 4.2: after the handshake the server forgets everything it learnt from the
        client in plain text; the client must EHLO again."""
        self.tls_active = True
        self.helo = None
        self.esmtp = False
        self.account = None
        self._sasl = None
        self._reset_transaction()

    def _reset_transaction(self) -> None:
        self.txn = None
        self._chunk = None
        self._chunking = False
        self._chunk_parts = []
        self._chunk_size = 0

    # -- AUTH (RFC 4954) ----------------------------------------------------------------------

    def _auth_allowed(self) -> bool:
        return self.tls_active or self.policy.plaintext_auth_allowed

    async def _auth(self, arg: str) -> Reply:
        if not self.policy.submission:
            return reply(502, "5.5.1", "AUTH not available on this port")
        if not self.esmtp:
            return reply(503, "5.5.1", "Send EHLO first")
        if self.account is not None:
            return reply(503, "5.5.1", "Already authenticated")
        if self.txn is not None:
            return reply(503, "5.5.1", "AUTH not allowed during a mail transaction")
        if not self._auth_allowed():
            # RFC 4954 6: plain-text passwords only over TLS.
            return reply(538, "5.7.11", "Encryption required for requested authentication "
                         "mechanism")
        mechanism, _, initial = arg.strip().partition(" ")
        mechanism = mechanism.upper()
        initial = initial.strip()
        if not mechanism:
            return reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
        if mechanism == "PLAIN":
            self._sasl = _SaslState("PLAIN")
            if not initial:
                return Reply(334, ("",))
            return await self._sasl_step(initial.encode("ascii", "replace"))
        if mechanism == "LOGIN":
            self._sasl = _SaslState("LOGIN")
            if not initial:
                return Reply(334, (LOGIN_USERNAME,))
            return await self._sasl_step(initial.encode("ascii", "replace"))
        return reply(504, "5.5.4", "Unrecognized authentication type")

    async def _sasl_step(self, response: bytes) -> Reply:
        state = self._sasl
        assert state is not None
        if response == b"*":
            self._sasl = None
            return reply(501, "5.0.0", "Authentication cancelled")
        try:
            decoded = base64.b64decode(response, validate=True) if response != b"=" else b""
            text = decoded.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            self._sasl = None
            return reply(501, "5.5.2", "Invalid base64 in authentication response")
        if state.mechanism == "LOGIN" and state.username is None:
            state.username = text
            return Reply(334, (LOGIN_PASSWORD,))
        self._sasl = None
        if state.mechanism == "LOGIN":
            assert state.username is not None
            return await self._login(state.username, text)
        # RFC 4616 2: [authzid] NUL authcid NUL passwd
        parts = text.split("\x00")
        if len(parts) != 3:
            return reply(501, "5.5.2", "Malformed PLAIN response")
        authzid, username, password = parts
        if authzid and authzid.lower() != username.lower():
            return reply(535, "5.7.8", "Authentication credentials invalid")
        return await self._login(username, password)

    async def _login(self, username: str, password: str) -> Reply:
        try:
            self.account = await self.backend.authenticate(username, password)
        except AuthRefused as refused:
            if refused.temporary:
                return reply(454, "4.7.0", "Too many failed logins, try again later")
            return reply(535, "5.7.8", "Authentication credentials invalid")
        return reply(235, "2.7.0", "Authentication successful")

    # -- mail transaction -------------------------------------------------------------------

    async def _mail(self, arg: str) -> Reply:
        if self.helo is None:
            return reply(503, "5.5.1", "Send EHLO or HELO first")
        if self.txn is not None:
            return reply(503, "5.5.1", "Sender already given (nested MAIL)")
        if self.policy.submission and self.account is None:
            return reply(530, "5.7.0", "Authentication required")  # RFC 4954 6
        rest = _after_keyword(arg, "FROM:")
        if rest is None:
            return reply(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
        path, params = _split_path(rest, "5.1.7")
        if params and not self.esmtp:
            return reply(555, "5.5.4", "Parameters need EHLO")  # RFC 5321 4.1.1.11
        txn = Transaction(sender="")
        self._mail_params(params, txn)
        if path:
            address = _mailbox(path, "5.1.7", "sender")
            if not address.is_ascii and not txn.smtputf8:
                return reply(553, "5.6.7", "Non-ASCII sender requires SMTPUTF8")  # RFC 6531 3.4
            txn.sender = str(address)
            if self.account is not None and self.policy.submission and \
                    not await self.backend.owns_address(self.account, address):
                return reply(553, "5.7.1", f"Sender address <{txn.sender}> not owned by "
                             f"{self.account.address}")
        if txn.declared_size > self.policy.max_message_size:
            return reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
        if self.checks is not None:
            txn.helo, txn.account, txn.client_ip = self.helo or "", self.account, \
                self.policy.client_ip
            if (refused := await self.checks.at_mail(txn)) is not None:
                return refused
        self.txn = txn
        return reply(250, "2.1.0", "Sender ok")

    def _mail_params(self, params: list[tuple[str, str | None]], txn: Transaction) -> None:
        for key, value in params:
            if key == "SIZE":  # RFC 1870
                # isascii: str.isdigit() also takes "²", which int() refuses.
                if value is None or not (value.isascii() and value.isdigit()) or len(value) > 20:
                    raise _Refusal(reply(501, "5.5.4", "Invalid SIZE value"))
                txn.declared_size = int(value)
            elif key == "BODY":  # RFC 6152, RFC 3030 3
                body = (value or "").upper()
                if body not in ("7BIT", "8BITMIME", "BINARYMIME"):
                    raise _Refusal(reply(501, "5.5.4", "Invalid BODY value"))
                txn.body = body  # type: ignore[assignment]
            elif key == "SMTPUTF8" and value is None:  # RFC 6531 3.4
                txn.smtputf8 = True
            elif key == "RET":  # RFC 3461 4.3
                ret = (value or "").upper()
                if ret not in ("FULL", "HDRS"):
                    raise _Refusal(reply(501, "5.5.4", "Invalid RET value"))
                txn.ret = ret
            elif key == "ENVID":  # RFC 3461 4.4
                txn.envid = _xtext(value, 100)
            elif key == "AUTH":  # RFC 4954 5: accepted; we never trust it from a client
                if value != "<>":
                    _xtext(value, 500)
            elif key == "REQUIRETLS" and value is None and self.tls_active:  # RFC 8689 4.1
                txn.requiretls = True
            else:
                raise _Refusal(reply(555, "5.5.4", f"Unsupported parameter {key}"))

    async def _rcpt(self, arg: str) -> Reply:
        txn = self.txn
        if txn is None:
            return reply(503, "5.5.1", "Need MAIL command first")
        if self._chunking:
            return reply(503, "5.5.1", "RCPT not allowed after BDAT")
        rest = _after_keyword(arg, "TO:")
        if rest is None:
            return reply(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]")
        if len(txn.recipients) >= self.policy.max_recipients:
            return TOO_MANY_RECIPIENTS
        path, params = _split_path(rest, "5.1.3")
        if params and not self.esmtp:
            return reply(555, "5.5.4", "Parameters need EHLO")
        notify, orcpt = _rcpt_params(params)
        if not path:
            return self._refuse_rcpt(txn, reply(501, "5.1.3", "Null recipient not allowed"))
        if path.lower() == "postmaster":
            postmaster = self.backend.postmaster()
            if postmaster is None:
                return self._refuse_rcpt(txn, reply(550, "5.1.1", "No postmaster here"))
            address = postmaster
        else:
            try:
                address = _mailbox(path, "5.1.3", "recipient")
            except _Refusal as refusal:
                return self._refuse_rcpt(txn, refusal.reply)
        if not address.is_ascii and not txn.smtputf8:
            return self._refuse_rcpt(
                txn, reply(553, "5.6.7", "Non-ASCII recipient requires SMTPUTF8"))
        route = await self.backend.route(address)
        # MX never relays: only our domains' addresses (an alias of ours may forward elsewhere).
        # An address with local accounts is ours, which spares the domain lookup.
        if not route.local and not self.policy.submission \
                and not await self.backend.is_local_domain(address.domain):
            return self._refuse_rcpt(txn, reply(550, "5.7.1", "Relay access denied"))
        if (refused := await self.backend.check_recipient(txn, route)) is not None:
            return self._refuse_rcpt(txn, refused)
        if not route.local and not route.remote:
            return self._refuse_rcpt(txn, reply(550, "5.1.1", f"<{address}>: user unknown"))
        for account in route.local:
            state = await self.backend.quota_state(account, txn.declared_size)
            if state == "too_big":
                return self._refuse_rcpt(
                    txn, reply(552, "5.2.2", f"<{address}>: message exceeds mailbox quota"))
            if state == "full":
                return self._refuse_rcpt(
                    txn, reply(452, "4.2.2", f"<{address}>: mailbox full, try later"))
        if self.checks is not None and \
                (refused := await self.checks.at_rcpt(txn, str(address), route)) is not None:
            return self._refuse_rcpt(txn, refused)
        txn.recipients.append(
            Recipient(str(address), list(route.local), list(route.remote), notify, orcpt))
        return reply(250, "2.1.5", "Recipient ok")

    @staticmethod
    def _refuse_rcpt(txn: Transaction, answer: Reply) -> Reply:
        txn.rcpt_refused += 1
        return answer

    def _ready_for_message(self) -> Reply | None:
        """None when the transaction can take its message, else the refusal (RFC 5321 3.3)."""
        txn = self.txn
        if txn is None:
            return reply(503, "5.5.1", "Need MAIL command first")
        if not txn.recipients:
            if txn.rcpt_refused:
                return reply(554, "5.5.1", "No valid recipients")
            return reply(503, "5.5.1", "Need RCPT command first")
        return None

    async def _data(self, arg: str) -> Reply:
        if arg.strip():
            return reply(501, "5.5.4", "Syntax: DATA")
        refusal = self._ready_for_message()
        if refusal is not None:
            return refusal
        assert self.txn is not None
        if self._chunking:
            return reply(503, "5.5.1", "DATA not allowed after BDAT")  # RFC 3030 2
        if self.txn.body == "BINARYMIME":
            return reply(503, "5.5.1", "BODY=BINARYMIME requires BDAT")  # RFC 3030 3
        return Reply(354, ("End data with <CR><LF>.<CR><LF>",), Action.READ_DATA)

    async def on_data(self, outcome: DataOutcome) -> Reply:
        """The message after DATA, as read by the driver with ``lines.DotReader``."""
        txn = self.txn
        assert txn is not None
        self._reset_transaction()
        return await self._settle(txn, outcome)

    async def _settle(self, txn: Transaction, outcome: DataOutcome) -> Reply:
        """The message of a transaction delivered, or the reply refusing it."""
        if outcome.problem is DataProblem.TOO_BIG:
            answer = reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
        elif outcome.problem is DataProblem.BARE_NEWLINE:
            # The reply Postfix gives (smtpd_forbid_bare_newline); RFC 5321 2.3.8.
            answer = reply(550, "5.5.2", "Message refused: bare <CR> or <LF> received")
        elif outcome.problem is DataProblem.LINE_TOO_LONG:
            answer = self._line_too_long()
        else:
            return self._counted(await self._deliver(txn, outcome.content))
        self.backend.transaction_done(txn, outcome.size, answer)
        return self._counted(answer)

    # -- CHUNKING (RFC 3030) ----------------------------------------------------------------

    async def _bdat(self, arg: str) -> Reply:
        parts = arg.split()
        if not 1 <= len(parts) <= 2 or not _ascii_digits(parts[0]) or len(parts[0]) > 20 or (
            len(parts) == 2 and parts[1].upper() != "LAST"
        ):
            # Without a size we cannot tell where the chunk ends: the rest would be read as
            # commands, so hang up rather than interpret message bytes.
            return reply(501, "5.5.4", "Syntax: BDAT size [LAST]", Action.CLOSE)
        size = int(parts[0])
        refusal = self._ready_for_message()
        if refusal is not None:
            # RFC 3030 2: the octets are on their way and are read and thrown away; chunks
            # pipelined after a failed one land here too, as they find no transaction.
            return _discard_chunk(refusal, size)
        txn = self.txn
        assert txn is not None
        if self._chunk_size + size > self.policy.max_message_size:
            # Known from the size alone: answer at once, keep none of the octets (RFC 3030 2:
            # a failed chunk fails the transaction).
            too_big = reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
            self.backend.transaction_done(txn, self._chunk_size + size, too_big)
            self._reset_transaction()
            if size > self.policy.max_message_size:
                # More than any message may hold: rather than read it all, hang up after the
                # reply (its 552 tells the client not to retry as is).
                return reply(552, "5.3.4", "Message size exceeds fixed maximum message size; "
                             "closing connection", Action.CLOSE)
            return _discard_chunk(too_big, size)
        self.start_chunk(last=len(parts) == 2)
        return Reply(0, (), Action.READ_CHUNK, size)

    def start_chunk(self, last: bool) -> None:
        """A chunk of the message begins (BDAT, or BURL's data)."""
        self._chunk = _Chunk(last=last)
        self._chunking = True

    async def _burl(self, arg: str) -> Reply:
        if self.url_fetcher is None or not self.policy.submission:
            return reply(500, "5.5.1", "Command not recognized")
        from mailstead.proto.smtp_burl import burl

        return await burl(self, self.url_fetcher, arg)

    def on_chunk(self, piece: bytes) -> None:
        """Octets of the current BDAT chunk (any number of pieces)."""
        chunk = self._chunk
        if chunk is None:
            return
        self._chunk_size += len(piece)
        self._chunk_parts.append(piece)

    async def on_chunk_end(self) -> Reply:
        chunk = self._chunk
        assert chunk is not None
        self._chunk = None
        txn = self.txn
        assert txn is not None
        if not chunk.last:
            return reply(250, "2.0.0", f"{self._chunk_size} octets received so far")
        parts, size = self._chunk_parts, self._chunk_size
        self._reset_transaction()
        policy = self.policy
        check = functools.partial(chunked_message, parts, txn.body == "BINARYMIME",
                                  policy.max_message_size, policy.bare_newlines, policy.max_line)
        # Joining and checking pass over the whole message: off the loop for a large one.
        outcome = await self.backend.off_loop(check) if size > OFF_LOOP_SIZE else check()
        return await self._settle(txn, outcome)

    def _line_too_long(self) -> Reply:
        # RFC 5321 4.5.3.1.6 lets a server take lines longer than 1000 octets; past our own
        # bound the message is refused for good, as too big a message is (RFC 3463 5.3.4).
        return reply(552, "5.3.4",
                     f"Message refused: a line is longer than {self.policy.max_line} octets")

    # -- handing the message over -----------------------------------------------------------

    def _protocol_name(self, txn: Transaction) -> str:
        """The Received header's "with" keyword (RFC 3848; UTF8SMTP* from RFC 6531 3.7.3)."""
        if not self.esmtp:
            return "SMTP"
        name = "UTF8SMTP" if txn.smtputf8 else "ESMTP"
        if self.tls_active:
            name += "S"
        if self.account is not None:
            name += "A"
        return name

    async def _deliver(self, txn: Transaction, content: bytes) -> Reply:
        txn.helo = self.helo or ""
        txn.protocol = self._protocol_name(txn)
        txn.account = self.account
        txn.client_ip = self.policy.client_ip
        refusal = await self._check_header(content)
        if refusal is not None:
            self.backend.transaction_done(txn, len(content), refusal)
            return refusal
        try:
            queue_id = await self.backend.deliver(txn, content)
        except QuotaExceeded:
            answer = reply(452, "4.2.2", "Mailbox full, try again later")
        except MessageRefused as refused:
            answer = reply(refused.code, refused.status, _printable(refused.text))
        except MessageDeferred as deferred:  # a policy limit, not a fault: RFC 3463 4.7.x
            answer = reply(deferred.code, deferred.status, _printable(deferred.text))
        except Exception:  # the backend logged it; the client may retry
            answer = reply(451, "4.3.0", "Local error in processing, try again later")
        else:
            answer = reply(250, "2.0.0", f"Ok: queued as {queue_id}")
        self.backend.transaction_done(txn, len(content), answer)
        return answer

    async def _check_header(self, content: bytes) -> Reply | None:
        """The refusal of a looping message, or of a submitted one whose From: the user does
        not own; None when the header section is fine. Reads the header section only."""
        header = header_section(content)
        if count_received(header, MAX_RECEIVED) > MAX_RECEIVED:
            # RFC 5321 6.3: a loop-detection limit on Received fields, 554 5.4.6 (RFC 3463).
            return reply(554, "5.4.6", f"Routing loop detected: more than {MAX_RECEIVED} "
                         "Received header fields")
        if self.policy.submission and self.account is not None:
            return await self._check_from(header, self.account)
        return None

    async def _check_from(self, header: bytes, account: Account) -> Reply | None:
        """RFC 6409 8.1 lets a submission server check the message's author. Every mailbox of
        the From: field (RFC 5322 3.6.2) must be one the user may send as, by the rule MAIL FROM
        follows; a field that is missing, repeated (RFC 5322 3.6: exactly one) or not a strict
        mailbox-list is refused, so that no reader can be shown an author we did not check."""
        fields = from_fields(header)
        if not fields:
            return reply(550, "5.7.1", "Message has no From: header field")
        if len(fields) > 1:
            return reply(550, "5.7.1", "Message has more than one From: header field")
        try:
            written = parse_mailbox_list(fields[0])
        except InvalidInput as exc:
            return reply(550, "5.7.1", _printable(f"Cannot read the From: header field: {exc}"))
        unique = list(dict.fromkeys(written))
        if len(unique) > MAX_FROM_MAILBOXES:
            return reply(550, "5.7.1", f"More than {MAX_FROM_MAILBOXES} addresses in From:")
        for text in unique:
            try:
                address = parse_address(text)
            except InvalidInput:
                address = None
            if address is None or not await self.backend.owns_address(account, address):
                shown = _printable(text)[:300]
                return reply(550, "5.7.1", f"From: header address <{shown}> not owned by "
                             f"{account.address}")
        return None


# The command handlers, made once rather than as bound methods for every session.
_HANDLERS: dict[str, Callable[[SmtpSession, str], Awaitable[Reply]]] = {
    "EHLO": SmtpSession._ehlo, "HELO": SmtpSession._helo, "MAIL": SmtpSession._mail,
    "RCPT": SmtpSession._rcpt, "DATA": SmtpSession._data, "BDAT": SmtpSession._bdat,
    "BURL": SmtpSession._burl,
    "RSET": SmtpSession._rset, "NOOP": SmtpSession._noop, "QUIT": SmtpSession._quit,
    "VRFY": SmtpSession._vrfy, "EXPN": SmtpSession._expn, "HELP": SmtpSession._help,
    "STARTTLS": SmtpSession._starttls, "AUTH": SmtpSession._auth,
}
