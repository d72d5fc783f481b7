"""Bounded work per IMAP command (issue 16): one hostile session must not take the process.

Too many literals, search keys, FETCH items or ranges in one command are refused at once
(BAD [LIMIT] or BYE); SEARCH and FETCH give the other sessions their turn every few
milliseconds and stop at the command's work budget (NO [LIMIT], the session goes on); and
SIGTERM stops a real ``mailstead serve`` while such a command runs. Every test checks that a
second client (an SMTP greeting, an IMAP NOOP on another session) is served promptly meanwhile.
"""

from __future__ import annotations

import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import RunningServer, ServeProcess
from tests.imap.helpers import Raw, deliver, status_of

both_backends = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
PROMPT = 2.0  # seconds a second client may wait while the hostile one runs (loaded machine)


def received_message(lines: int = 100_000) -> bytes:
    """About 7 MB: 100,000 Received: lines, then a short body."""
    hops = b"".join(
        b"Received: from relay%d.example.org ([192.0.2.%d]) by mx.example.test\r\n"
        % (i, i % 250)
        for i in range(lines)
    )
    return (hops + b"From: carol@example.org\r\nTo: alice@example.test\r\n"
            b"Subject: many hops\r\n\r\nThe body says hello.\r\n")


BODY_LINE = b"plain words of a very long body, nothing to find in it at all\r\n"
# The last line: keys taken from it match, but only after a scan of the whole body.
LAST_LINE = "zebra quixotic jumbled fjord nymph vexing gawky sphinx of black quartz judge my vow"


def big_body_message(size: int = 7_000_000) -> bytes:
    line = BODY_LINE
    return (b"From: carol@example.org\r\nTo: alice@example.test\r\nSubject: big body\r\n\r\n"
            + line * (size // len(line)) + LAST_LINE.encode() + b"\r\n")


def greeting_latency(port: int) -> float:
    """Seconds until an SMTP client gets its 220 greeting."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(1024)
            assert chunk, "SMTP connection closed before the greeting"
            data += chunk
    assert data.startswith(b"220"), data
    return time.monotonic() - start


def noop_latency(raw: Raw) -> float:
    start = time.monotonic()
    assert status_of(raw.cmd("NOOP")) == b"OK"
    return time.monotonic() - start


class Probe:
    """A second, ordinary user: SMTP greetings and IMAP NOOPs timed while ``busy`` runs."""

    def __init__(self, smtp_port: int, other: Raw) -> None:
        self.smtp_port = smtp_port
        self.other = other
        self.greetings: list[float] = []
        self.noops: list[float] = []

    def during(self, busy: threading.Thread, at_least: int = 3) -> None:
        while busy.is_alive() or len(self.greetings) < at_least:
            self.greetings.append(greeting_latency(self.smtp_port))
            self.noops.append(noop_latency(self.other))
            time.sleep(0.05)

    def check(self) -> None:
        assert self.greetings and self.noops
        assert max(self.greetings) < PROMPT, self.greetings
        assert max(self.noops) < PROMPT, self.noops


def selected(server: RunningServer) -> Raw:
    raw = Raw(server)
    raw.login()
    assert status_of(raw.cmd("SELECT INBOX")) == b"OK [READ-WRITE]"
    return raw


def run_in_thread(fn: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, errors


# -- refused while framing or parsing -----------------------------------------------------------


def test_100k_literal_plus_search_is_refused(mail_server: RunningServer) -> None:
    hostile = selected(mail_server)
    probe = Probe(mail_server.ports["smtp"], selected(mail_server))
    command = b"a1 SEARCH TEXT {1+}\r\nx" + b" TEXT {1+}\r\nx" * 99_999 + b"\r\n"

    def attack() -> None:
        try:
            hostile.send(command)
        except OSError:
            pass  # the server may hang up before it has read everything

    thread, errors = run_in_thread(attack)
    probe.during(thread)
    thread.join(60)
    assert not errors, errors
    line = hostile.readline()
    while line.startswith(b"* ") and not line.startswith(b"* BYE"):
        line = hostile.readline()
    # Too many literals: BAD once the command ends, or BYE when its bytes run past the
    # command size limit (they cannot be told apart from the next command otherwise).
    assert line.startswith((b"a1 BAD [LIMIT]", b"* BYE")), line
    probe.check()
    # Nothing else was harmed: the other session still works, stored mail is intact.
    assert status_of(probe.other.cmd("SEARCH ALL")) == b"OK"


def test_100k_synchronising_literal_search_stops_at_the_limit(mail_server: RunningServer) -> None:
    hostile = selected(mail_server)
    probe = Probe(mail_server.ports["smtp"], selected(mail_server))
    sent: list[int] = []
    last: list[bytes] = []

    def attack() -> None:
        hostile.send(b"a1 SEARCH TEXT {1}\r\n")
        for _ in range(100_000):
            line = hostile.readline()
            if not line.startswith(b"+"):
                last.append(line)
                return
            hostile.send(b"x TEXT {1}\r\n")
            sent.append(1)

    thread, errors = run_in_thread(attack)
    probe.during(thread)
    thread.join(60)
    assert not errors, errors
    # The server stops inviting literals at its cap and answers BAD instead of "+".
    assert last and last[0].startswith(b"a1 BAD [LIMIT]"), last
    assert len(sent) == 1000
    assert status_of(hostile.cmd("NOOP")) == b"OK"  # the session goes on
    probe.check()


def test_too_many_search_keys_in_one_line(mail_server: RunningServer) -> None:
    raw = selected(mail_server)
    keys = " ".join(f'TEXT "k{i}"' for i in range(1500))
    assert status_of(raw.cmd("SEARCH " + keys)) == b"BAD [LIMIT]"
    nested = "NOT " * 60 + "ALL"
    assert status_of(raw.cmd("SEARCH " + nested)) == b"BAD [LIMIT]"
    assert status_of(raw.cmd("SEARCH " + " ".join(f'TEXT "k{i}"' for i in range(500)))) == b"OK"


def test_too_many_fetch_items_and_flags(mail_server: RunningServer) -> None:
    deliver(mail_server, b"Subject: one\r\n\r\nbody\r\n")
    raw = selected(mail_server)
    assert status_of(raw.cmd("FETCH 1 (" + " ".join(["FLAGS"] * 150) + ")")) == b"BAD [LIMIT]"
    flags = " ".join(f"kw{i}" for i in range(1200))
    assert status_of(raw.cmd(f"STORE 1 +FLAGS ({flags})")) == b"BAD [LIMIT]"
    # The same item asked twice is answered once.
    lines = raw.cmd("FETCH 1 (BODY.PEEK[] BODY.PEEK[])")
    assert status_of(lines) == b"OK"
    assert lines[0].count(b"BODY[]") == 1


def test_fetch_asking_for_many_copies_of_a_message(mail_server: RunningServer) -> None:
    deliver(mail_server, b"Subject: big\r\n\r\n" + b"x" * 1_000_000 + b"\r\n")
    raw = selected(mail_server)
    partials = " ".join(f"BODY.PEEK[]<{i}.1000000>" for i in range(12))
    assert status_of(raw.cmd(f"FETCH 1 ({partials})")) == b"NO [LIMIT]"
    lines = raw.cmd("FETCH 1 (BODY.PEEK[] RFC822.HEADER BODY.PEEK[TEXT])")  # a sane request
    assert status_of(lines) == b"OK"


def test_too_many_ranges_in_one_command(mail_server: RunningServer) -> None:
    deliver(mail_server, b"Subject: one\r\n\r\nbody\r\n")
    raw = selected(mail_server)
    ranges = ",".join(str(n) for n in range(1, 20_000, 2))  # 10,000 ranges in one line
    line = "UID SEARCH UID " + ranges
    assert len(line) < 64 * 1024
    lines = raw.cmd(line)
    assert status_of(lines) == b"OK"
    assert lines[0] == b"* SEARCH 1"
    # Past the cap (ranges over several lines joined by literals): BAD [LIMIT].
    raw.send(b"a1 UID SEARCH UID " + ranges.encode() + b" TEXT {1+}\r\nx UID "
             + ranges.encode() + b",7,9\r\n")
    assert status_of(raw.until("a1")) == b"BAD [LIMIT]"
    assert status_of(raw.cmd("NOOP")) == b"OK"


# -- big messages: SEARCH stays bounded and the loop stays responsive ---------------------------


def hostile_search_keys(count: int = 36) -> str:
    """Distinct keys that all match the big message, so each is really evaluated (an AND
    stops at its first failing key)."""
    phrase = "the body says hello"
    keys = []
    for i in range(count // 3):
        keys += [f'TEXT "relay{i}."', f'HEADER Received "relay{i}.example"',
                 f'BODY "{phrase[i % 10:]}"']
    return " ".join(keys)


def matching_body_keys(count: int) -> str:
    """``count`` distinct BODY keys that all match big_body_message(), each only at its end."""
    line = LAST_LINE
    words = {line[i : i + n] for n in range(8, 60) for i in range(len(line) - n)}
    chosen = sorted(w for w in words if w.casefold() not in BODY_LINE.decode())[:count]
    assert len(chosen) == count
    return " ".join(f'BODY "{w}"' for w in chosen)


@both_backends
def test_search_on_a_100k_received_message(mail_server: RunningServer) -> None:
    deliver(mail_server, received_message())
    deliver(mail_server, b"Subject: small\r\n\r\nThe body says hello.\r\n")
    hostile = selected(mail_server)
    probe = Probe(mail_server.ports["smtp"], selected(mail_server))
    result: list[list[bytes]] = []
    thread, errors = run_in_thread(
        lambda: result.append(hostile.cmd("SEARCH " + hostile_search_keys()))
    )
    probe.during(thread)
    thread.join(120)
    assert not errors, errors
    assert status_of(result[0]) in (b"OK", b"NO [LIMIT]")
    if status_of(result[0]) == b"OK":
        assert result[0][0] == b"* SEARCH 1"  # every key matches the big message only
    probe.check()
    # Matches are still found: a header early in the message, the body, the last headers.
    assert hostile.cmd('SEARCH HEADER Received "relay12.example.org"')[0] == b"* SEARCH 1"
    assert hostile.cmd('SEARCH TEXT "says hello"')[0] == b"* SEARCH 1 2"
    assert hostile.cmd('SEARCH SUBJECT "many hops"')[0] == b"* SEARCH 1"


@both_backends
def test_budget_ends_a_long_search_with_no_limit(
    make_server: Callable[..., RunningServer],
) -> None:
    server = make_server(limits={"imap_command_seconds": 0.01})
    deliver(server, received_message())
    deliver(server, big_body_message())
    hostile = selected(server)
    probe = Probe(server.ports["smtp"], selected(server))
    result: list[list[bytes]] = []
    thread, errors = run_in_thread(
        lambda: result.append(hostile.cmd("SEARCH " + hostile_search_keys()))
    )
    probe.during(thread)
    thread.join(120)
    assert not errors, errors
    assert status_of(result[0]) == b"NO [LIMIT]", result[0]
    assert status_of(hostile.cmd("NOOP")) == b"OK"  # the session survives
    # Cheap commands stay well inside the budget.
    assert status_of(hostile.cmd("SEARCH UNSEEN")) == b"OK"
    assert status_of(hostile.cmd("FETCH 1:* (FLAGS UID)")) == b"OK"
    probe.check()


def test_long_fetch_lets_others_in(mail_server: RunningServer) -> None:
    for _ in range(3):
        deliver(mail_server, big_body_message())
    hostile = selected(mail_server)
    probe = Probe(mail_server.ports["smtp"], selected(mail_server))
    result: list[list[bytes]] = []
    thread, errors = run_in_thread(
        lambda: result.append(hostile.cmd("FETCH 1:* (BODYSTRUCTURE BODY.PEEK[TEXT] RFC822)"))
    )
    probe.during(thread)
    thread.join(120)
    assert not errors, errors
    assert status_of(result[0]) == b"OK"
    probe.check()


# -- SIGTERM while a hostile command runs ---------------------------------------------------


class _Ports:
    """Enough of RunningServer for Raw: the serve process's ports and the TLS trust."""

    def __init__(self, sp: ServeProcess, server: RunningServer) -> None:
        self.ports = sp.ports
        self._server = server

    def ssl_context(self) -> ssl.SSLContext:
        return self._server.ssl_context()


@both_backends
def test_sigterm_stops_serve_during_a_hostile_search(
    make_server: Callable[..., RunningServer],
    serve_process: Callable[..., ServeProcess],
) -> None:
    server = make_server()
    for _ in range(3):
        deliver(server, big_body_message())
    data_dir: Path = server.data_dir
    server.stop()
    sp = serve_process(data_dir)
    target = _Ports(sp, server)
    hostile = Raw(target)  # type: ignore[arg-type]
    hostile.login()
    assert status_of(hostile.cmd("SELECT INBOX")) == b"OK [READ-WRITE]"
    # A thousand distinct BODY keys, all matching, over three 7 MB bodies: seconds of work.
    keys = matching_body_keys(999)
    hostile.send(b"h1 SEARCH " + keys.encode() + b"\r\n")
    time.sleep(1.0)
    assert greeting_latency(sp.ports["smtp"]) < PROMPT  # the loop still turns
    start = time.monotonic()
    sp.proc.send_signal(signal.SIGTERM)
    code = sp.proc.wait(20)
    took = time.monotonic() - start
    assert code == 0
    assert took < 10, took  # within seconds, not after the search
    assert hostile.closed()


def test_list_pattern_that_would_backtrack(mail_server: RunningServer) -> None:
    """A LIST pattern of many wildcards ran as a regex backtracks exponentially; matched
    linearly it answers at once, and a second client is served meanwhile."""
    raw = Raw(mail_server)
    raw.login()
    assert status_of(raw.cmd('CREATE "' + "a" * 200 + '"')) == b"OK"
    probe = Probe(mail_server.ports["smtp"], selected(mail_server))
    result: list[list[bytes]] = []
    pattern = "*a" * 3000 + "b"
    thread, errors = run_in_thread(lambda: result.append(raw.cmd(f'LIST "" "{pattern}"')))
    probe.during(thread)
    thread.join(60)
    assert not errors, errors
    assert result[0] == [result[0][-1]] and status_of(result[0]) == b"OK"  # no match
    lines = raw.cmd('LIST "" "*a*a%a"')
    assert any(b"aaaa" in line for line in lines[:-1])
    probe.check()
