"""Bounded work in POP3 (issue 16): RETR and TOP of a huge message of tiny lines answer in
linear time without holding the event loop, pipelined commands let other sessions in, and a
second client is served promptly meanwhile."""

from __future__ import annotations

import asyncio
import poplib
import socket
import threading
import time

import pytest

from tests.conftest import PASSWORD, RunningServer
from tests.pop3.helpers import deliver

ALICE = "alice@example.test"
PROMPT = 2.0


def greeting_latency(port: int) -> float:
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(1024)
            assert chunk
            data += chunk
    assert data.startswith(b"220"), data
    return time.monotonic() - start


def ssl_client(server: RunningServer) -> poplib.POP3_SSL:
    client = poplib.POP3_SSL(
        "127.0.0.1", server.ports["pop3s"], context=server.ssl_context(), timeout=60
    )
    client.user(ALICE)
    client.pass_(PASSWORD)
    return client


def probe_while(server: RunningServer, busy: threading.Thread) -> list[float]:
    latencies = []
    while busy.is_alive() or len(latencies) < 3:
        latencies.append(greeting_latency(server.ports["smtp"]))
        time.sleep(0.05)
    return latencies


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_retr_and_top_of_a_message_of_tiny_lines(mail_server: RunningServer) -> None:
    # ~12 MB: 3 million short lines, bare LFs and lines that need dot-stuffing among them.
    body = b"a\r\n.b\n" * 1_500_000
    raw = b"From: carol@example.org\r\nSubject: tiny lines\r\n\r\n" + body
    deliver(mail_server, ALICE, raw)
    client = ssl_client(mail_server)
    results: dict[str, object] = {}

    def fetch() -> None:
        results["retr"] = client.retr(1)
        results["top"] = client.top(1, 4)

    thread = threading.Thread(target=fetch, daemon=True)
    thread.start()
    latencies = probe_while(mail_server, thread)
    thread.join(120)
    retr = results["retr"]
    assert isinstance(retr, tuple)
    lines = retr[1]
    assert len(lines) == 3 + 3_000_000
    assert lines[3:7] == [b"a", b".b", b"a", b".b"]  # poplib undoes the dot-stuffing
    top = results["top"]
    assert isinstance(top, tuple)
    assert top[1] == [b"From: carol@example.org", b"Subject: tiny lines", b"", b"a", b".b",
                      b"a", b".b"]
    assert max(latencies) < PROMPT, latencies
    client.quit()


def test_pipelined_commands_let_others_in(mail_server: RunningServer) -> None:
    # One TLS session pipelines 50,000 NOOPs. Its sending and reading run in one asyncio loop
    # of their own (a thread): an ssl.SSLSocket read in one thread while another writes it is
    # not safe (OpenSSL's SSL object is not) and once read a spurious EOF here.
    count = 50_000
    received = [0]

    async def pipeline() -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", mail_server.ports["pop3s"], ssl=mail_server.ssl_context())
        await reader.readline()
        writer.write(f"USER {ALICE}\r\nPASS {PASSWORD}\r\n".encode())
        answers = [await reader.readline() for _ in range(2)]
        assert all(a.startswith(b"+OK") for a in answers), answers

        async def send() -> None:
            writer.write(b"NOOP\r\n" * count)
            await writer.drain()

        sending = asyncio.create_task(send())
        while received[0] < count:
            line = await asyncio.wait_for(reader.readline(), 60)
            if not line:
                break
            received[0] += 1
        await sending
        writer.close()

    thread = threading.Thread(target=lambda: asyncio.run(pipeline()), daemon=True)
    thread.start()
    latencies = probe_while(mail_server, thread)
    thread.join(120)
    assert received[0] >= count  # every command answered
    assert max(latencies) < PROMPT, latencies
