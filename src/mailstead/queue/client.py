"""The SMTP client the queue delivers with: one connection to one server, several transactions.

It speaks the protocol and nothing else; which server to use, whether TLS is good enough and
what a reply means for a recipient are ``transfer``'s business.

Written on asyncio streams rather than on aiosmtplib: aiosmtplib keeps one command in flight
(a second reply arriving in the same read is dropped or left unread), so it cannot pipeline,
and PIPELINING (RFC 2920) is what makes a transaction one round trip: MAIL, every RCPT and DATA
are written together and their replies read in order.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import ssl
from dataclasses import dataclass, field

from mailstead.net.tls import describe
from mailstead.proto.lines import dot_stuff

# RFC 5321 4.5.3.2: how long to wait for each reply.
GREETING_TIMEOUT = 300.0  # 4.5.3.2.1 initial 220
MAIL_TIMEOUT = 300.0  # 4.5.3.2.2
RCPT_TIMEOUT = 300.0  # 4.5.3.2.3
DATA_INIT_TIMEOUT = 120.0  # 4.5.3.2.4 the 354
DATA_BLOCK_TIMEOUT = 180.0  # 4.5.3.2.5 each block of data written
DATA_END_TIMEOUT = 600.0  # 4.5.3.2.6 the reply to the final dot
COMMAND_TIMEOUT = 300.0  # EHLO, STARTTLS, AUTH, RSET, QUIT

READ_LIMIT = 65_536  # longest reply line accepted
MAX_REPLY_LINES = 200
DATA_PIECE = 65_536

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(line.strip() for line in self.lines).strip()

    def __str__(self) -> str:
        return f"{self.code} {self.text}".rstrip()

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    @property
    def status(self) -> str:
        """The enhanced status code (RFC 3463) the server gave, else one from the reply class."""
        m = _ENHANCED.match(self.lines[0] if self.lines else "")
        if m and int(m.group(1)) == self.code // 100:
            return m.group(0)
        return f"{self.code // 100}.0.0"


class SmtpConnectionError(Exception):
    """The connection failed, closed, timed out or spoke nonsense: nothing more can be sent on
    it. ``reply`` is the server's refusal when there was one (a 421, a 554 greeting...)."""

    def __init__(self, text: str, reply: Reply | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.reply = reply


class SmtpAuthError(Exception):
    def __init__(self, text: str, reply: Reply | None = None) -> None:
        super().__init__(text)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class OutgoingRecipient:
    address: str
    notify: str = ""  # DSN NOTIFY as received
    orcpt: str = ""  # DSN ORCPT, decoded: "rfc822;bob@example.org"


@dataclass(slots=True)
class OutgoingEnvelope:
    sender: str
    recipients: list[OutgoingRecipient]
    size: int
    body_8bit: bool = False
    smtputf8: bool = False
    requiretls: bool = False
    envid: str = ""
    ret: str = ""


def xtext(value: str) -> str:
    """RFC 3461 4: printable ASCII except '+' and '=' as is, the rest as +HH."""
    out = []
    for byte in value.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def _unitext(value: str, keep_unicode: bool) -> str:
    """RFC 6533 3: utf-8-addr-unitext (SMTPUTF8 sessions) or utf-8-addr-xtext (others)."""
    out = []
    for ch in value:
        cp = ord(ch)
        if (cp > 127 and keep_unicode) or (33 <= cp <= 126 and ch not in "+=\\"):
            out.append(ch)
        else:
            out.append(f"\\x{{{cp:X}}}")
    return "".join(out)


def orcpt_parameter(orcpt: str, smtputf8: bool) -> str:
    """The ORCPT value to send: "rfc822;" + xtext, or the "utf-8" forms for non-ASCII."""
    kind, _, address = orcpt.partition(";")
    if address.isascii():
        return f"{kind or 'rfc822'};{xtext(address)}"
    return f"utf-8;{_unitext(address, smtputf8)}"


@dataclass
class SmtpClient:
    """One open connection. Create with ``connect``; then ``hello``, maybe ``starttls`` and
    ``authenticate``, then any number of ``send`` calls, then ``quit``."""

    host: str  # the name we looked up (logs, TLS server name)
    address: str
    port: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    extensions: dict[str, str] = field(default_factory=dict)
    tls: str = ""  # e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384"; "" in plain text
    verified: bool = False  # the certificate was checked against ``host``

    @classmethod
    async def connect(
        cls,
        host: str,
        address: str,
        port: int,
        *,
        connect_timeout: float,
        bind_address: str = "",
        implicit_tls: ssl.SSLContext | None = None,
    ) -> SmtpClient:
        """Opens the connection and reads the greeting (refusals raise SmtpConnectionError)."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    address, port, limit=READ_LIMIT,
                    local_addr=(bind_address, 0) if bind_address else None,
                    ssl=implicit_tls, server_hostname=host if implicit_tls else None,
                ),
                connect_timeout,
            )
        except TimeoutError:
            raise SmtpConnectionError(f"connect to {address}:{port} timed out") from None
        except ssl.SSLError as exc:
            raise SmtpConnectionError(f"TLS with {address}:{port} failed: {exc}") from None
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise SmtpConnectionError(f"connect to {address}:{port}: {reason}") from None
        client = cls(host, address, port, reader, writer)
        if implicit_tls is not None:
            client._note_tls(implicit_tls)
        try:
            greeting = await client.read_reply(GREETING_TIMEOUT)
        except SmtpConnectionError:
            client.close()
            raise
        if greeting.code != 220:
            # RFC 5321 3.1: a 554 greeting means "no service here"; try another host.
            client.close()
            raise SmtpConnectionError(f"greeting refused: {greeting}", greeting)
        return client

    def _note_tls(self, context: ssl.SSLContext) -> None:
        ssl_object = self.writer.get_extra_info("ssl_object")
        self.tls = describe(ssl_object)
        self.verified = context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname

    @property
    def peer(self) -> str:
        return f"{self.host}[{self.address}]"

    # -- replies and commands --

    async def read_reply(self, timeout: float) -> Reply:
        code = -1
        lines: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    raw = await self.reader.readline()
                    if not raw.endswith(b"\n"):
                        raise SmtpConnectionError("connection closed by the server")
                    text = raw.rstrip(b"\r\n").decode("utf-8", "replace")
                    if len(text) < 3 or not text[:3].isdigit() or text[3:4] not in ("", " ", "-"):
                        raise SmtpConnectionError(f"malformed reply line: {text[:80]!r}")
                    if code not in (-1, int(text[:3])):
                        raise SmtpConnectionError("reply lines with different codes")
                    code = int(text[:3])
                    lines.append(text[4:])
                    if text[3:4] != "-":
                        return Reply(code, tuple(lines))
                    if len(lines) >= MAX_REPLY_LINES:
                        raise SmtpConnectionError("reply too long")
        except TimeoutError:
            raise SmtpConnectionError(f"no reply within {timeout:.0f} s") from None
        except ValueError:  # a line longer than READ_LIMIT
            raise SmtpConnectionError("reply line too long") from None
        except (ConnectionError, OSError) as exc:
            raise SmtpConnectionError(f"connection lost: {exc}") from None

    async def _write(self, data: bytes, timeout: float) -> None:
        try:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), timeout)
        except TimeoutError:
            raise SmtpConnectionError(f"could not send within {timeout:.0f} s") from None
        except (ConnectionError, OSError) as exc:
            raise SmtpConnectionError(f"connection lost: {exc}") from None

    async def _reply(self, timeout: float) -> Reply:
        reply = await self.read_reply(timeout)
        if reply.code == 421:  # RFC 5321 3.8: the server is closing the channel
            raise SmtpConnectionError(f"server closing: {reply}", reply)
        return reply

    async def command(self, line: str, timeout: float = COMMAND_TIMEOUT) -> Reply:
        await self._write(_command_bytes(line), timeout)
        return await self._reply(timeout)

    # -- session set-up --

    async def hello(self, local_name: str) -> None:
        """EHLO, or HELO for a server that does not know it (RFC 5321 4.1.1.1)."""
        reply = await self.command(f"EHLO {local_name}")
        if reply.ok:
            self.extensions = {}
            for line in reply.lines[1:]:
                keyword, _, params = line.strip().partition(" ")
                if keyword:
                    self.extensions[keyword.upper()] = params.strip()
            return
        if reply.code in (500, 502):
            reply = await self.command(f"HELO {local_name}")
            if reply.ok:
                self.extensions = {}
                return
        raise SmtpConnectionError(f"EHLO refused: {reply}", reply)

    async def starttls(self, context: ssl.SSLContext, local_name: str) -> None:
        """RFC 3207: upgrade, then forget what the server said before and EHLO again."""
        reply = await self.command("STARTTLS")
        if reply.code != 220:
            raise SmtpConnectionError(f"STARTTLS refused: {reply}", reply)
        buffered = getattr(self.reader, "_buffer", None)
        if buffered:
            # RFC 3207 4.2: nothing may follow the 220 in plain text; bytes here were injected.
            raise SmtpConnectionError("the server sent data after its STARTTLS reply")
        try:
            await asyncio.wait_for(
                self.writer.start_tls(context, server_hostname=self.host), COMMAND_TIMEOUT
            )
        except TimeoutError:
            raise SmtpConnectionError("TLS handshake timed out") from None
        except (ssl.SSLError, ssl.CertificateError, ConnectionError, OSError) as exc:
            raise SmtpConnectionError(f"TLS handshake failed: {exc}") from None
        self._note_tls(context)
        await self.hello(local_name)

    async def authenticate(self, username: str, password: str) -> None:
        """AUTH PLAIN (RFC 4616) or LOGIN, whichever the server offers (RFC 4954)."""
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        if "PLAIN" in mechanisms:
            token = base64.b64encode(f"\0{username}\0{password}".encode()).decode("ascii")
            reply = await self.command(f"AUTH PLAIN {token}")
        elif "LOGIN" in mechanisms:
            reply = await self.command("AUTH LOGIN")
            for value in (username, password):
                if reply.code != 334:
                    break
                reply = await self.command(base64.b64encode(value.encode()).decode("ascii"))
        else:
            raise SmtpAuthError(f"{self.peer} offers no AUTH mechanism we know (PLAIN, LOGIN)")
        if reply.code != 235:
            raise SmtpAuthError(f"{self.peer} refused our login: {reply}", reply)

    # -- transactions --

    def _mail_command(self, envelope: OutgoingEnvelope) -> str:
        ext = self.extensions
        params = []
        if "SIZE" in ext:
            params.append(f"SIZE={envelope.size}")  # RFC 1870
        if envelope.body_8bit and "8BITMIME" in ext:
            params.append("BODY=8BITMIME")  # RFC 6152
        if envelope.smtputf8 and "SMTPUTF8" in ext:
            params.append("SMTPUTF8")  # RFC 6531
        if "DSN" in ext:  # RFC 3461 4.3, 4.4: passed on only to servers that know them
            if envelope.ret:
                params.append(f"RET={envelope.ret}")
            if envelope.envid:
                params.append(f"ENVID={xtext(envelope.envid)}")
        if envelope.requiretls:
            params.append("REQUIRETLS")  # RFC 8689 4.2.1
        return " ".join([f"MAIL FROM:<{envelope.sender}>", *params])

    def _rcpt_command(self, recipient: OutgoingRecipient, smtputf8: bool) -> str:
        params = []
        if "DSN" in self.extensions:
            if recipient.notify:
                params.append(f"NOTIFY={recipient.notify}")
            if recipient.orcpt:
                params.append(f"ORCPT={orcpt_parameter(recipient.orcpt, smtputf8)}")
        return " ".join([f"RCPT TO:<{recipient.address}>", *params])

    async def send(self, envelope: OutgoingEnvelope, data: bytes) -> dict[str, Reply]:
        """One transaction. Returns each recipient's final reply: its RCPT refusal, or the
        reply to the end of the data. Raises SmtpConnectionError when the connection fails
        before the outcome is known (nothing can be assumed delivered then)."""
        smtputf8 = envelope.smtputf8 and "SMTPUTF8" in self.extensions
        mail = self._mail_command(envelope)
        rcpts = [self._rcpt_command(r, smtputf8) for r in envelope.recipients]
        if "PIPELINING" in self.extensions:
            # RFC 2920 3.1: MAIL, the RCPTs and DATA go together; DATA is the last one.
            await self._write(b"".join(_command_bytes(c) for c in [mail, *rcpts, "DATA"]),
                              MAIL_TIMEOUT)
            mail_reply = await self._reply(MAIL_TIMEOUT)
            rcpt_replies = [await self._reply(RCPT_TIMEOUT) for _ in rcpts]
            data_reply: Reply | None = await self._reply(DATA_INIT_TIMEOUT)
        else:
            mail_reply = await self.command(mail, MAIL_TIMEOUT)
            rcpt_replies = []
            data_reply = None
            if mail_reply.ok:
                rcpt_replies = [await self.command(c, RCPT_TIMEOUT) for c in rcpts]
                if any(r.ok for r in rcpt_replies):
                    data_reply = await self.command("DATA", DATA_INIT_TIMEOUT)
        results: dict[str, Reply] = {}
        accepted: list[str] = []
        for recipient, reply in zip(envelope.recipients, rcpt_replies, strict=False):
            if reply.ok:
                accepted.append(recipient.address)
            else:
                results[recipient.address] = reply
        if not mail_reply.ok:
            results = {r.address: mail_reply for r in envelope.recipients}
            accepted = []
        if data_reply is None or data_reply.code != 354:
            for address in accepted:
                # DATA refused: recipients that were accepted share its reply.
                results[address] = data_reply or mail_reply
            if accepted:
                await self.reset()
            return results
        final = await self._send_data(data if accepted else b"")
        for address in accepted:
            results[address] = final
        return results

    async def _send_data(self, data: bytes) -> Reply:
        """The content, dot-stuffed (RFC 5321 4.5.2), then the final dot."""
        if data and not data.endswith(b"\r\n"):
            data += b"\r\n"
        stuffed = dot_stuff(data)
        for start in range(0, len(stuffed), DATA_PIECE):
            await self._write(stuffed[start:start + DATA_PIECE], DATA_BLOCK_TIMEOUT)
        await self._write(b".\r\n", DATA_BLOCK_TIMEOUT)
        return await self._reply(DATA_END_TIMEOUT)

    async def reset(self) -> None:
        reply = await self.command("RSET")
        if not reply.ok:
            raise SmtpConnectionError(f"RSET refused: {reply}", reply)

    async def quit(self) -> None:
        """QUIT politely; the connection is closed whatever the server says."""
        try:
            await self.command("QUIT", timeout=10)
        except SmtpConnectionError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


def _command_bytes(line: str) -> bytes:
    if "\r" in line or "\n" in line or "\0" in line:
        raise ValueError("an SMTP command cannot contain CR, LF or NUL")
    return line.encode("utf-8") + b"\r\n"
