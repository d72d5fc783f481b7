"""The SMTP client's wire behaviour, against scripted servers on 127.0.0.1 (byte transcripts).

The end-to-end tests use real servers; these pin down what is hard to see there: PIPELINING
really sends MAIL/RCPT/DATA before any reply, extension parameters, dot-stuffing, RSET after a
refused DATA, a 421 in the middle, and the STARTTLS injection guard.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from mailstead.queue.client import (
    OutgoingEnvelope,
    OutgoingRecipient,
    SmtpClient,
    SmtpConnectionError,
    orcpt_parameter,
    xtext,
)

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(script: Script) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def connect(port: int) -> SmtpClient:
    client = await SmtpClient.connect("mx.test", "127.0.0.1", port, connect_timeout=5)
    await client.hello("client.test")
    return client


async def read_lines(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    return [await asyncio.wait_for(reader.readline(), 5) for _ in range(count)]


EHLO = (b"250-mx.test hello\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250-8BITMIME\r\n"
        b"250-SMTPUTF8\r\n250 DSN\r\n")


def envelope(*recipients: OutgoingRecipient, **kwargs: object) -> OutgoingEnvelope:
    return OutgoingEnvelope(sender="a@alpha.test", recipients=list(recipients), size=42,
                            **kwargs)  # type: ignore[arg-type]


async def test_pipelining_sends_the_whole_envelope_before_reading_a_reply() -> None:
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx.test ESMTP\r\n")
        assert (await reader.readline()).startswith(b"EHLO client.test")
        writer.write(EHLO)
        # No reply is written until MAIL, both RCPTs and DATA have all arrived.
        seen.extend(await read_lines(reader, 4))
        writer.write(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n354 go\r\n")
        data = b""
        while not data.endswith(b"\r\n.\r\n"):
            data += await asyncio.wait_for(reader.readline(), 5)
        seen.append(data)
        writer.write(b"250 2.0.0 queued as X\r\n")
        assert await reader.readline() == b"QUIT\r\n"
        writer.write(b"221 bye\r\n")

    server, port = await serve(script)
    async with server:
        client = await connect(port)
        replies = await client.send(
            envelope(OutgoingRecipient("b@beta.test", "SUCCESS,FAILURE", "rfc822;b+x@beta.test"),
                     OutgoingRecipient("c@beta.test"),
                     body_8bit=True, smtputf8=True, envid="id=1", ret="HDRS"),
            b".hidden dot line\r\nbody\r\n..two dots\r\n")
        await client.quit()
    assert seen[0] == b"MAIL FROM:<a@alpha.test> SIZE=42 BODY=8BITMIME SMTPUTF8 RET=HDRS " \
                      b"ENVID=id+3D1\r\n"
    assert seen[1] == b"RCPT TO:<b@beta.test> NOTIFY=SUCCESS,FAILURE " \
                      b"ORCPT=rfc822;b+2Bx@beta.test\r\n"
    assert seen[2] == b"RCPT TO:<c@beta.test>\r\n"
    assert seen[3] == b"DATA\r\n"
    assert seen[4] == b"..hidden dot line\r\nbody\r\n...two dots\r\n.\r\n"  # RFC 5321 4.5.2
    assert str(replies["b@beta.test"]) == "250 2.0.0 queued as X"
    assert replies["c@beta.test"].status == "5.1.1" and replies["c@beta.test"].permanent


async def test_without_pipelining_each_command_waits_and_refused_data_is_reset() -> None:
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220-mx.test\r\n220 ESMTP\r\n")
        await reader.readline()
        writer.write(b"250 mx.test\r\n")  # no extensions at all
        for reply in (b"250 ok\r\n", b"250 ok\r\n", b"451 4.3.0 try later\r\n", b"250 reset\r\n"):
            seen.append(await asyncio.wait_for(reader.readline(), 5))
            writer.write(reply)
        await reader.readline()
        writer.write(b"221 bye\r\n")

    server, port = await serve(script)
    async with server:
        client = await connect(port)
        replies = await client.send(
            envelope(OutgoingRecipient("b@beta.test", "NEVER"), envid="x", body_8bit=False),
            b"hi\r\n")
        await client.quit()
    # No DSN at the server: NOTIFY, ENVID and SIZE are not sent.
    assert seen == [b"MAIL FROM:<a@alpha.test>\r\n", b"RCPT TO:<b@beta.test>\r\n",
                    b"DATA\r\n", b"RSET\r\n"]
    reply = replies["b@beta.test"]
    assert reply.code == 451 and not reply.permanent and reply.status == "4.3.0"


async def test_a_421_in_the_middle_is_a_connection_failure() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx.test\r\n")
        await reader.readline()
        writer.write(EHLO)
        await read_lines(reader, 3)
        writer.write(b"250 ok\r\n421 4.3.2 shutting down\r\n")

    server, port = await serve(script)
    async with server:
        client = await connect(port)
        with pytest.raises(SmtpConnectionError) as caught:
            await client.send(envelope(OutgoingRecipient("b@beta.test")), b"x\r\n")
        client.close()
    assert caught.value.reply is not None and caught.value.reply.code == 421


@pytest.mark.parametrize("greeting", [b"554 no service\r\n", b"hello there\r\n", b""])
async def test_refused_or_broken_greetings(greeting: bytes) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await writer.drain()

    server, port = await serve(script)
    async with server:
        with pytest.raises(SmtpConnectionError):
            await SmtpClient.connect("mx.test", "127.0.0.1", port, connect_timeout=5)


async def test_plain_text_after_the_starttls_reply_is_refused() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx.test\r\n")
        await reader.readline()
        writer.write(b"250-mx.test\r\n250 STARTTLS\r\n")
        await reader.readline()
        # RFC 3207 4.2 / CVE-2011-0411: a man in the middle appends a reply in plain text.
        writer.write(b"220 go ahead\r\n250 injected\r\n")
        await writer.drain()
        await reader.read()

    server, port = await serve(script)
    async with server:
        client = await connect(port)
        import ssl

        with pytest.raises(SmtpConnectionError, match="after its STARTTLS reply"):
            await client.starttls(ssl.create_default_context(), "client.test")
        client.close()


async def test_connection_refused_is_reported_plainly() -> None:
    server, port = await serve(lambda r, w: asyncio.sleep(0))
    server.close()
    await server.wait_closed()
    with pytest.raises(SmtpConnectionError, match="Connection refused"):
        await SmtpClient.connect("mx.test", "127.0.0.1", port, connect_timeout=5)


def test_xtext_and_orcpt_encodings() -> None:
    assert xtext("a+b=c d") == "a+2Bb+3Dc+20d"  # RFC 3461 4
    assert orcpt_parameter("rfc822;bob@example.test", False) == "rfc822;bob@example.test"
    # RFC 6533 3: UTF-8 addresses as utf-8-addr-unitext (SMTPUTF8) or -xtext (without).
    assert orcpt_parameter("rfc822;jörg@example.test", True) == "utf-8;jörg@example.test"
    assert orcpt_parameter("rfc822;jörg@example.test", False) == "utf-8;j\\x{F6}rg@example.test"
