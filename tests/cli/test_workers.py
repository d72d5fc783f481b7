"""``mailstead serve`` with two worker processes (supervisor.py): what one worker does, the
other hears (IDLE across workers on both stores), caps hold across them, a worker killed by
SIGKILL loses no acknowledged message and is replaced while the other keeps serving, and
SIGTERM stops them all.

Which worker holds a connection is read the way an administrator would: from /proc (the
server-side socket of the connection in /proc/net/tcp, and the worker whose descriptors
include that socket).
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import signal
import smtplib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailstead.config import Config, deep_merge
from tests.conftest import DOMAIN, PASSWORD, ServeProcess
from tests.smtp.helpers import stored_messages
from tests.smtp.test_crash import prepare as prepare_smtp_only

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
SERVED = ("smtp", "imap", "pop3")


def prepare(data_dir: Path, store: dict[str, Any], tls_files: tuple[Path, Path],
            **overrides: Any) -> Config:
    """The crash test's data directory (alice and bob), with SMTP, IMAP and POP3 served by
    two workers."""
    listeners = {name: {"enabled": name in SERVED} for name in Config().listeners}
    ours = {"listeners": listeners, "server": {"workers": 2},
            "auth": {"allow_plaintext_on_loopback": True}}
    return prepare_smtp_only(data_dir, deep_merge(deep_merge(ours, store), overrides), tls_files)


# -- which worker holds a connection --


def workers_of(server: ServeProcess) -> list[int]:
    """The supervisor's children but its shared message-file helper."""
    pid = server.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children
            if b"message_file" not in Path(f"/proc/{c}/cmdline").read_bytes()]


def _server_socket_inode(client: socket.socket) -> str:
    """The inode of the server's end of ``client``'s TCP connection."""
    host, port = client.getsockname()[:2]
    wanted = f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        # rem_address of the server's socket is our local address; an earlier connection
        # from the same port may linger in TIME_WAIT (state 06, no inode): not that one.
        if fields[2] == wanted and fields[3] == "01" and fields[9] != "0":
            return fields[9]
    raise AssertionError(f"no server socket for {wanted}")


def worker_holding(server: ServeProcess, client: socket.socket) -> int:
    target = f"socket:[{_server_socket_inode(client)}]"
    for _ in range(50):
        for pid in workers_of(server):
            with_fds = Path(f"/proc/{pid}/fd")
            try:
                links = [os.readlink(fd) for fd in with_fds.iterdir()]
            except OSError:
                continue
            if target in links:
                return pid
        time.sleep(0.05)  # accepted but not yet handed to the worker's loop
    raise AssertionError("no worker holds the connection")


def imap_login(port: int, user: str = ALICE) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", port)
    client.login(user, PASSWORD)
    return client


def connections_in_each_worker(
    server: ServeProcess, connect: Callable[[], imaplib.IMAP4], tries: int = 40
) -> dict[int, imaplib.IMAP4]:
    """Opens connections until each worker holds one (closing the spare ones at once)."""
    found: dict[int, imaplib.IMAP4] = {}
    for _ in range(tries):
        client = connect()
        pid = worker_holding(server, client.sock)
        if pid in found:
            client.logout()
        else:
            found[pid] = client
        if len(found) == 2:
            break
    assert len(found) == 2, "every connection went to one worker"
    return found


def send_mail(port: int, subject: str, rcpt: str = ALICE) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.sendmail("carol@remote.test", [rcpt],
                      f"From: carol@remote.test\r\nSubject: {subject}\r\n\r\nhi\r\n")


def idle_until_exists(client: imaplib.IMAP4, heard: dict[int, float], pid: int,
                      ready: threading.Event) -> None:
    tag = client._new_tag().decode()  # type: ignore[attr-defined]
    client.send(f"{tag} IDLE\r\n".encode())
    assert client.readline().startswith(b"+")
    ready.set()
    client.sock.settimeout(20)
    while True:
        line = client.readline()
        if b"EXISTS" in line:
            heard[pid] = time.monotonic()
            break
    client.send(b"DONE\r\n")
    while not client.readline().startswith(tag.encode()):
        pass


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_long_sessions_are_shared_out_evenly_between_the_workers(
    tmp_path: Path, tls_files: tuple[Path, Path], serve_process: Callable[..., ServeProcess],
) -> None:
    """Ten IMAP clients connecting one after the other on a quiet machine: five in each worker
    (the kernel alone would wake whichever worker ran last, net/balance.py), and an eleventh
    client is still served at once."""
    cfg = prepare(tmp_path / "data", {}, tls_files, limits={"imap_sessions_per_user_ip": 20})
    server = serve_process(cfg.data_dir)
    port = server.ports["imap"]
    clients = [imap_login(port) for _ in range(10)]
    held: dict[int, int] = {}
    for client in clients:
        pid = worker_holding(server, client.sock)
        held[pid] = held.get(pid, 0) + 1
    assert sorted(held.values()) == [5, 5]
    late = imap_login(port)
    assert late.noop()[0] == "OK"
    for client in [*clients, late]:
        client.logout()


def test_idle_in_one_worker_hears_delivery_in_the_other(
    tmp_path: Path, store_overrides: dict[str, Any], tls_files: tuple[Path, Path],
    serve_process: Callable[..., ServeProcess],
) -> None:
    cfg = prepare(tmp_path / "data", store_overrides, tls_files)
    server = serve_process(cfg.data_dir)
    assert len(workers_of(server)) == 2
    idlers = connections_in_each_worker(server, lambda: imap_login(server.ports["imap"]))
    heard: dict[int, float] = {}
    threads = []
    for pid, client in idlers.items():
        client.select("INBOX")
        ready = threading.Event()
        thread = threading.Thread(target=idle_until_exists, args=(client, heard, pid, ready))
        thread.start()
        assert ready.wait(10)
        threads.append(thread)
    send_mail(server.ports["smtp"], "across workers")
    for thread in threads:
        thread.join(30)
    assert set(heard) == set(idlers), "an IDLE session in one worker was not told"
    for client in idlers.values():
        client.logout()


def test_a_message_appended_in_one_worker_is_recent_there_only(
    tmp_path: Path, store_overrides: dict[str, Any], tls_files: tuple[Path, Path],
    serve_process: Callable[..., ServeProcess],
) -> None:
    """RFC 3501 2.3.2 across workers: the session that APPENDs to its selected mailbox has
    the message as \\Recent (claimed with the APPEND); a session of the other worker is told
    of it (EXISTS) without \\Recent, and no third session gets it either."""
    cfg = prepare(tmp_path / "data", store_overrides, tls_files)
    server = serve_process(cfg.data_dir)
    port = server.ports["imap"]
    sessions = list(connections_in_each_worker(server, lambda: imap_login(port)).values())
    for client in sessions:
        assert client.select("INBOX")[0] == "OK"
    appender, other = sessions
    message = b"From: carol@remote.test\r\nSubject: appended\r\n\r\nhi\r\n"
    assert appender.append("INBOX", "", None, message)[0] == "OK"
    appender.noop()
    assert appender.fetch("1", "(FLAGS)")[1] == [b"1 (FLAGS (\\Recent))"]
    deadline = time.monotonic() + 10
    while True:
        assert other.noop()[0] == "OK"
        if b"1" in (other.response("EXISTS")[1] or []):
            break
        assert time.monotonic() < deadline, "the other worker's session was not told"
        time.sleep(0.05)
    assert other.fetch("1", "(FLAGS)")[1] == [b"1 (FLAGS ())"]
    third = imap_login(port)
    assert third.status("INBOX", "(MESSAGES RECENT)")[1] == [b'"INBOX" (MESSAGES 1 RECENT 0)']
    for client in [*sessions, third]:
        client.logout()


def _status_numbers(client: imaplib.IMAP4, items: str) -> dict[str, int]:
    typ, data = client.status("INBOX", f"({items})")
    assert typ == "OK", data
    raw = data[0]
    assert isinstance(raw, bytes)
    words = raw[raw.index(b"(") + 1:raw.rindex(b")")].split()
    return {words[i].decode(): int(words[i + 1]) for i in range(0, len(words), 2)}


def _flags_told(response: tuple[str, list[Any]]) -> bytes:
    """The last FETCH of message 1 in a STORE's answer (imaplib also hands back the changes
    reported earlier)."""
    typ, data = response
    assert typ == "OK", data
    told = [d for d in data if isinstance(d, bytes) and d.startswith(b"1 (")]
    return told[-1]


def test_status_in_one_worker_is_current_right_after_changes_in_the_other(
    tmp_path: Path, store_overrides: dict[str, Any], tls_files: tuple[Path, Path],
    serve_process: Callable[..., ServeProcess],
) -> None:
    """RFC 9051 6.3.11 across workers: STATUS in a worker where INBOX is selected (its counts
    may come from memory) tells each APPEND, STORE and EXPUNGE the other worker answered OK
    for just before, without waiting for the change feed, and agrees with SIZE (the store)."""
    cfg = prepare(tmp_path / "data", store_overrides, tls_files)
    server = serve_process(cfg.data_dir)
    port = server.ports["imap"]
    asker, changer = connections_in_each_worker(server, lambda: imap_login(port)).values()
    assert asker.select("INBOX")[0] == "OK"
    assert changer.select("INBOX")[0] == "OK"
    items = "MESSAGES UNSEEN UIDNEXT RECENT DELETED HIGHESTMODSEQ"
    before = _status_numbers(asker, items)
    message = b"From: carol@remote.test\r\nSubject: appended\r\n\r\nhi\r\n"
    for _ in range(5):
        assert changer.append("INBOX", "", None, message)[0] == "OK"
        appended = _status_numbers(asker, items)
        assert appended["MESSAGES"] == before["MESSAGES"] + 1
        assert appended["UNSEEN"] == before["UNSEEN"] + 1
        assert appended["UIDNEXT"] > before["UIDNEXT"]
        assert appended["HIGHESTMODSEQ"] > before["HIGHESTMODSEQ"]
        assert _status_numbers(asker, "MESSAGES SIZE")["MESSAGES"] == appended["MESSAGES"]
        assert changer.store("1:*", "+FLAGS", "(\\Seen \\Deleted)")[0] == "OK"
        stored = _status_numbers(asker, items)
        assert (stored["UNSEEN"], stored["DELETED"]) == (0, appended["MESSAGES"])
        assert stored["HIGHESTMODSEQ"] > appended["HIGHESTMODSEQ"]
        assert changer.expunge()[0] == "OK"
        expunged = _status_numbers(asker, items)
        assert (expunged["MESSAGES"], expunged["DELETED"]) == (0, 0)
        assert expunged["UIDNEXT"] == appended["UIDNEXT"]
        before = expunged
    # A STORE that would change nothing is decided on a read of what is committed now: the
    # other worker's change just before it always counts.
    assert changer.append("INBOX", "", None, message)[0] == "OK"
    assert asker.noop()[0] == "OK" and changer.noop()[0] == "OK"  # NOOP asks the store
    for _ in range(5):
        assert changer.store("1", "-FLAGS.SILENT", "(\\Seen)")[0] == "OK"
        assert b"\\Seen" in _flags_told(asker.store("1", "+FLAGS", "(\\Seen)"))
        assert _status_numbers(changer, "UNSEEN MESSAGES SIZE")["UNSEEN"] == 0
        assert changer.store("1", "+FLAGS.SILENT", "(\\Seen)")[0] == "OK"
        assert b"\\Seen" not in _flags_told(asker.store("1", "-FLAGS", "(\\Seen)"))
        assert _status_numbers(changer, "UNSEEN MESSAGES SIZE")["UNSEEN"] == 1
    for client in (asker, changer):
        client.logout()


def test_per_ip_and_per_user_caps_hold_across_workers(
    tmp_path: Path, tls_files: tuple[Path, Path], serve_process: Callable[..., ServeProcess],
) -> None:
    cfg = prepare(tmp_path / "data", {}, tls_files,
                  limits={"max_connections_per_ip": 6, "imap_sessions_per_user_ip": 3})
    server = serve_process(cfg.data_dir)
    port = server.ports["imap"]
    sessions = connections_in_each_worker(server, lambda: imap_login(port))
    # Two logged in already, one per worker: one more is allowed, the fourth is refused
    # whichever worker takes it.
    holders = set(sessions)
    extra = [imap_login(port)]
    for _ in range(4):
        client = imaplib.IMAP4("127.0.0.1", port)
        with pytest.raises(imaplib.IMAP4.error, match=r"\[LIMIT\]"):
            client.login(ALICE, PASSWORD)
        holders.add(worker_holding(server, client.sock))
        client.logout()
    assert len(holders) == 2
    time.sleep(0.5)  # the refused connections' ends reach the server
    # The per-IP cap: 3 connections are open; 3 more fill it, the 7th is turned away.
    more = [imaplib.IMAP4("127.0.0.1", port) for _ in range(3)]
    with pytest.raises((imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError, EOFError)):
        refused = imaplib.IMAP4("127.0.0.1", port)
        refused.noop()
    for client in [*sessions.values(), *extra, *more]:
        client.logout()
    # Released everywhere: sessions can log in again.
    again = [imap_login(port) for _ in range(3)]
    for client in again:
        client.logout()


def sender(port: int, acked: list[str], stop: threading.Event, name: str) -> None:
    number = 0
    while not stop.is_set():
        subject = f"{name}-{number}"
        number += 1
        try:
            send_mail(port, subject, BOB)
        except (smtplib.SMTPException, OSError):
            continue  # its worker was killed mid-message: not acknowledged, may be retried
        acked.append(subject)


def stored_subjects(cfg: Config) -> set[str]:
    found = set()
    for data in stored_messages(cfg, BOB):
        subject = re.search(rb"Subject: (\S+)", data)
        assert subject is not None
        found.add(subject.group(1).decode())
    return found


def test_sigkill_of_a_worker_loses_no_acknowledged_message(
    tmp_path: Path, tls_files: tuple[Path, Path], serve_process: Callable[..., ServeProcess],
) -> None:
    cfg = prepare(tmp_path / "data", {}, tls_files)
    server = serve_process(cfg.data_dir)
    port = server.ports["smtp"]
    acked: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=sender, args=(port, acked, stop, f"s{i}"))
               for i in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    victim = workers_of(server)[0]
    os.kill(victim, signal.SIGKILL)
    time.sleep(1.0)
    # The other worker kept serving, and a new one took the victim's place.
    count = len(acked)
    time.sleep(1.0)
    assert len(acked) > count
    stop.set()
    for thread in threads:
        thread.join(30)
    replaced = workers_of(server)
    assert victim not in replaced
    assert len(replaced) == 2
    stored = stored_subjects(cfg)
    missing = [s for s in acked if s not in stored]
    assert not missing, f"acknowledged but lost: {missing[:5]}"
    assert server.terminate() == 0


def test_sigterm_stops_every_worker(
    tmp_path: Path, tls_files: tuple[Path, Path], serve_process: Callable[..., ServeProcess],
) -> None:
    cfg = prepare(tmp_path / "data", {}, tls_files)
    server = serve_process(cfg.data_dir)
    workers = workers_of(server)
    client = imap_login(server.ports["imap"])
    assert server.terminate() == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie_gone(pid)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.ports["imap"]), timeout=2)
    client.shutdown()


def _is_zombie_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return True
    return state in ("Z", "X")



def test_a_lockout_earned_in_one_worker_holds_in_the_other(
    tmp_path: Path, tls_files: tuple[Path, Path], serve_process: Callable[..., ServeProcess],
) -> None:
    cfg = prepare(tmp_path / "data", {}, tls_files, auth={"max_failures": 3,
                                                          "failure_delay": 0.01})
    server = serve_process(cfg.data_dir)
    port = server.ports["imap"]
    by_worker: dict[int, list[imaplib.IMAP4]] = {}
    for _ in range(40):
        client = imaplib.IMAP4("127.0.0.1", port)
        by_worker.setdefault(worker_holding(server, client.sock), []).append(client)
        if len(by_worker) == 2 and all(len(c) >= 3 for c in by_worker.values()):
            break
    first, second = (clients for clients in by_worker.values())
    for n, client in enumerate(first[:3]):  # three different guesses (a repeat counts once)
        with pytest.raises(imaplib.IMAP4.error):
            client.login(ALICE, f"wrong-password-{n}")
    # The right password, on the other worker: refused without being checked.
    with pytest.raises(imaplib.IMAP4.error, match=r"UNAVAILABLE|try again later"):
        second[0].login(ALICE, PASSWORD)
    for clients in by_worker.values():
        for client in clients:
            client.shutdown()


def test_the_pop3_maildrop_lock_holds_across_workers(
    tmp_path: Path, tls_files: tuple[Path, Path], serve_process: Callable[..., ServeProcess],
) -> None:
    cfg = prepare(tmp_path / "data", {}, tls_files)
    server = serve_process(cfg.data_dir)
    port = server.ports["pop3"]
    by_worker: dict[int, poplib.POP3] = {}
    spare = []
    for _ in range(40):
        client = poplib.POP3("127.0.0.1", port, timeout=30)
        pid = worker_holding(server, client.sock)
        if pid in by_worker:
            spare.append(client)
        else:
            by_worker[pid] = client
        if len(by_worker) == 2:
            break
    first, second = by_worker.values()
    first.user(ALICE)
    first.pass_(PASSWORD)
    second.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"IN-USE"):
        second.pass_(PASSWORD)
    first.quit()
    for client in spare:
        client.quit()


def _kill_everything(server: ServeProcess) -> None:
    """SIGKILL of the supervisor and of every process it started, nothing shut down."""
    pid = server.proc.pid
    children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for victim in [pid, *children]:
        os.kill(victim, signal.SIGKILL)
    server.proc.wait(10)
    for child in children:
        for _ in range(100):
            if _is_zombie_gone(child):
                break
            time.sleep(0.05)


def test_a_flag_change_is_seen_in_the_other_worker_and_survives_sigkill(
    tmp_path: Path, store_overrides: dict[str, Any], tls_files: tuple[Path, Path],
    serve_process: Callable[..., ServeProcess],
) -> None:
    """STORE commits without waiting for the disk (SqlStore._write_flags): still, a session in
    the other worker is told the change at its next command, and a SIGKILL of every server
    process right after the OK loses none of it."""
    cfg = prepare(tmp_path / "data", store_overrides, tls_files)
    server = serve_process(cfg.data_dir)
    port = server.ports["imap"]
    changer, watcher = connections_in_each_worker(server, lambda: imap_login(port)).values()
    message = b"From: carol@remote.test\r\nSubject: flags\r\n\r\nhi\r\n"
    for _ in range(3):
        assert changer.append("INBOX", "", None, message)[0] == "OK"
    assert changer.select("INBOX")[0] == "OK"
    assert watcher.select("INBOX")[0] == "OK"
    assert changer.store("1", "+FLAGS.SILENT", "(\\Flagged)")[0] == "OK"
    assert changer.store("2", "+FLAGS.SILENT", "(\\Seen $Label1)")[0] == "OK"
    typ, _data = watcher.noop()
    assert typ == "OK"
    told = b" ".join(d for d in watcher.untagged_responses.get("FETCH", [])
                     if isinstance(d, bytes))
    assert b"\\Flagged" in told and b"$Label1" in told, told
    assert changer.store("3", "+FLAGS.SILENT", "(\\Answered)")[0] == "OK"
    _kill_everything(server)
    again = serve_process(cfg.data_dir)
    client = imap_login(again.ports["imap"])
    assert client.select("INBOX")[0] == "OK"
    typ, data = client.fetch("1:3", "(FLAGS)")
    assert typ == "OK", data
    flags = [d for d in data if isinstance(d, bytes)]
    assert b"\\Flagged" in flags[0]
    assert b"\\Seen" in flags[1] and b"$Label1" in flags[1]
    assert b"\\Answered" in flags[2]
    client.logout()
    assert again.terminate() == 0
