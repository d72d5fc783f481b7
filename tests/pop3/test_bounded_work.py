"""Bounded work in POP3 (issue 16): RETR and TOP of a huge message of tiny lines answer in
linear time without holding the event loop, pipelined commands let other sessions in, and a
second client is served promptly meanwhile."""

from __future__ import annotations

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
    sock = mail_server.ssl_context().wrap_socket(
        socket.create_connection(("127.0.0.1", mail_server.ports["pop3s"]), timeout=60))
    sock.recv(1024)
    sock.sendall(f"USER {ALICE}\r\nPASS {PASSWORD}\r\n".encode())
    answers = b""
    while answers.count(b"\r\n") < 2:
        answers += sock.recv(1024)
    assert answers.startswith(b"+OK") and b"\r\n+OK" in answers, answers
    count = 50_000
    received = [0]

    def reader() -> None:
        data = b""
        while data.count(b"\r\n") < count:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
        received[0] = data.count(b"\r\n")

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    sock.sendall(b"NOOP\r\n" * count)
    latencies = probe_while(mail_server, thread)
    thread.join(120)
    assert received[0] >= count  # every command answered
    assert max(latencies) < PROMPT, latencies
    sock.close()
