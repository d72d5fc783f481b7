"""PostgreSQL restarted (a fast shutdown, then an immediate one, which is a crash) while SMTP
clients deliver: no acknowledged message is lost or stored twice, and mailstead recovers by
itself (new deliveries work after the restart, without restarting mailstead).

The test runs its own PostgreSQL cluster (initdb into a temporary directory, its own port), so
restarting it disturbs neither the shared server on 5432 nor other tests.
"""

from __future__ import annotations

import contextlib
import email
import imaplib
import os
import pwd
import shutil
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from mailstead import bootstrap
from mailstead.config import deep_merge
from tests.conftest import (
    DOMAIN,
    PASSWORD,
    RunningServer,
    run_outside_loop,
)
from tests.conftest import (
    test_config_overrides as server_overrides,
)
from tests.smtp.helpers import ALICE, BOB

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

CLIENTS = 4


def _pg_bin(name: str) -> str:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    for directory in reversed(versions):
        if (directory / name).exists():
            return str(directory / name)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrivateCluster:
    """A PostgreSQL cluster of the test's own. PostgreSQL refuses to run as root, so under
    root (CI) it runs as the ``postgres`` user."""

    directory: Path
    port: int
    as_user: list[str] = field(default_factory=list)

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.as_user, _pg_bin("pg_ctl"), "-D", str(self.directory / "data"), *args],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
                   # A restart kills processes, not the machine: WAL written before COMMIT
                   # returned is in the kernel's cache either way, so fsync only costs time.
                   "-c fsync=off -c max_connections=50")
        self._pg_ctl("-w", "-t", "30", "-l", str(self.directory / "log"), "-o", options, "start")

    def restart(self, mode: str) -> None:
        """``pg_ctl restart -m fast`` (clients disconnected cleanly) or ``-m immediate`` (every
        server process killed at once, crash recovery at the next start)."""
        self._pg_ctl("-w", "-t", "30", "-m", mode, "restart")

    def stop(self) -> None:
        self._pg_ctl("-w", "-t", "30", "-m", "immediate", "stop")


@pytest.fixture
def private_cluster() -> Iterator[PrivateCluster]:
    directory = Path(tempfile.mkdtemp(prefix="mailstead-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            pg_user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root and there is no postgres user to run PostgreSQL as")
        os.chown(directory, pg_user.pw_uid, pg_user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    cluster = PrivateCluster(directory, _free_port(), as_user)
    subprocess.run(
        [*as_user, _pg_bin("initdb"), "-D", str(directory / "data"), "-U", "postgres",
         "-A", "trust", "--no-sync", "-E", "UTF8"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    cluster.start()
    try:
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


def subject_of(client: int, number: int) -> str:
    return f"pg{client}-m{number}"


def raw_message(client: int, number: int) -> bytes:
    subject = subject_of(client, number)
    return (f"From: carol@remote.test\r\nTo: {ALICE}, {BOB}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@remote.test>\r\n\r\n"
            + f"message {number} of client {client}\r\n" * (1 + number % 20)).encode()


@dataclass
class Sender:
    """One client delivering in a loop, reconnecting when the server hangs up; remembers
    every message the server answered 250 to, and what else it saw."""

    port: int
    client: int
    acked: list[str] = field(default_factory=list)
    acked_at: list[float] = field(default_factory=list)
    refused: int = 0
    disconnects: int = 0
    unexpected: list[int] = field(default_factory=list)  # replies other than 250 and 4xx
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        number = 0
        deadline = time.monotonic() + 120  # bounded whatever happens
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
                    smtp.ehlo("client.test")
                    while not self.stop.is_set() and time.monotonic() < deadline:
                        number += 1
                        if self._one(smtp, number):
                            continue
                        smtp.rset()
            except (smtplib.SMTPException, OSError):
                self.disconnects += 1
                time.sleep(0.05)

    def _one(self, smtp: smtplib.SMTP, number: int) -> bool:
        steps: list[Callable[[], tuple[int, bytes]]] = [
            lambda: smtp.mail("carol@remote.test"), lambda: smtp.rcpt(ALICE),
            lambda: smtp.rcpt(BOB)]
        for step in steps:
            code = step()[0]
            if code != 250:
                if not 400 <= code < 500:
                    self.unexpected.append(code)
                self.refused += 1
                return False
        code, _ = smtp.data(raw_message(self.client, number))
        if code != 250:
            # A 4xx is allowed (the message was not acknowledged; the client tries later).
            if not 400 <= code < 500:
                self.unexpected.append(code)
            self.refused += 1
            return True
        self.acked.append(subject_of(self.client, number))
        self.acked_at.append(time.monotonic())
        return True


def imap_subjects(server: RunningServer, user: str) -> list[str]:
    """Subjects of every message in the user's INBOX, read over IMAP."""
    with imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=server.ssl_context(),
                           timeout=30) as client:
        client.login(user, PASSWORD)
        client.select("INBOX", readonly=True)
        typ, data = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
        subjects = []
        for item in data:
            if isinstance(item, tuple):
                subjects.append(str(email.message_from_bytes(item[1])["Subject"]))
        return subjects


def wait_for_acks(senders: list[Sender], after: float, count: int, timeout: float) -> bool:
    """True once ``count`` messages were acknowledged after ``after`` (monotonic time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(t > after for s in senders for t in s.acked_at) >= count:
            return True
        time.sleep(0.05)
    return False


def test_postgres_restart_under_smtp_load_loses_no_acknowledged_message(
    tmp_path: Path, tls_files: tuple[Path, Path], private_cluster: PrivateCluster
) -> None:
    overrides = deep_merge(server_overrides(), {
        "store": {"url": private_cluster.dsn, "pg_schema": "restart_test"},
    })
    cfg = bootstrap.build_config(tmp_path / "data", overrides)
    run_outside_loop(bootstrap.initialise(cfg, demo_domain=None, cert_from=tls_files))
    server = RunningServer(cfg).start()
    try:
        server.add_domain(DOMAIN)
        server.add_user(ALICE)
        server.add_user(BOB)
        senders = [Sender(server.ports["smtp"], i) for i in range(CLIENTS)]
        threads = [threading.Thread(target=s.run, daemon=True) for s in senders]
        for thread in threads:
            thread.start()
        try:
            assert wait_for_acks(senders, 0, 20, 30), "no delivery before the restart"
            for mode in ("fast", "immediate"):
                private_cluster.restart(mode)
                restarted = time.monotonic()
                # Recovery without restarting mailstead: deliveries are acknowledged again.
                assert wait_for_acks(senders, restarted, 20, 30), \
                    f"no delivery acknowledged within 30 s of the {mode} restart"
        finally:
            for s in senders:
                s.stop.set()
            for thread in threads:
                thread.join(60)
        acked = [subject for s in senders for subject in s.acked]
        refused = sum(s.refused for s in senders)
        disconnects = sum(s.disconnects for s in senders)
        print(f"acknowledged {len(acked)}, refused {refused}, disconnects {disconnects}")
        # Mail is never refused for good because the database was away.
        assert not [code for s in senders for code in s.unexpected]

        # A fresh client after everything: served at once.
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as smtp:
            assert smtp.sendmail("carol@remote.test", [ALICE, BOB], raw_message(99, 1)) == {}
        acked.append(subject_of(99, 1))

        for user in (ALICE, BOB):
            subjects = imap_subjects(server, user)
            counts: dict[str, int] = {}
            for subject in subjects:
                counts[subject] = counts.get(subject, 0) + 1
            lost = [subject for subject in acked if subject not in counts]
            assert not lost, f"{user}: acknowledged messages lost: {lost[:10]}"
            twice = [subject for subject, n in counts.items() if n > 1]
            assert not twice, f"{user}: messages stored more than once: {twice[:10]}"
    finally:
        server.stop()
    # The cluster really went through both restarts (the test tested something).
    with psycopg.connect(private_cluster.dsn, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM restart_test.messages").fetchone()
        assert row is not None and row[0] >= len(acked) * 2
