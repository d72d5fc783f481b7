"""Bounded work in SMTP (issue 16): one client pipelining a long stream of commands does not
hold the event loop; a second client gets its greeting promptly meanwhile."""

from __future__ import annotations

import socket
import threading
import time

from tests.conftest import RunningServer

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


def test_pipelined_stream_of_commands_lets_others_in(mail_server: RunningServer) -> None:
    port = mail_server.ports["smtp"]
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.recv(1024)
    count = 50_000
    received = [b""]

    def reader() -> None:
        data = b""
        while data.count(b"\r\n") < count + 1:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
        received[0] = data

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    sock.sendall(b"EHLO client.test\r\n" + b"NOOP\r\n" * count)
    latencies = []
    while thread.is_alive() or len(latencies) < 3:
        latencies.append(greeting_latency(port))
        time.sleep(0.05)
    thread.join(120)
    answers = received[0].split(b"\r\n")
    assert sum(a.startswith(b"250 ") for a in answers) == count + 1  # EHLO, then each NOOP
    assert max(latencies) < PROMPT, latencies
    sock.close()
