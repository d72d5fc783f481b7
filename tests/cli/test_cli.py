"""The admin CLI as a user runs it: real subprocesses, real data directory, exit codes, output."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from mailstead.config import load_config
from mailstead.store.factory import make_blob_store, make_metadata_store
from mailstead.store.interfaces import Delivery, NewMessage, QueueEntry, QueueRecipient
from tests.conftest import mailstead_cmd, start_serve_process

GOOD_PW = "a-long-Passw0rd"


def ms(data: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        mailstead_cmd(*args, "--data", str(data)),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(data: Path, *args: str, stdin: str | None = None) -> str:
    proc = ms(data, *args, stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def err(data: Path, *args: str, stdin: str | None = None, code: int = 1) -> str:
    proc = ms(data, *args, stdin=stdin)
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "var"
    out = ok(d, "init", "--hostname", "mx.example.test", "--domain", "example.test")
    assert "demo account: demo@example.test  password: " in out
    return d


def test_init_creates_everything(data: Path) -> None:
    assert (data / "mailstead.toml").exists()
    assert (data / "tls" / "cert.pem").exists()
    assert (data / "tls" / "key.pem").stat().st_mode & 0o077 == 0
    address, password = (data / "demo-password.txt").read_text().split()
    assert address == "demo@example.test" and len(password) >= 12
    users = json.loads(ok(data, "user", "list", "--json"))
    assert [u["address"] for u in users] == ["demo@example.test"]
    assert load_config(data).hostname == "mx.example.test"
    assert "exists already" in err(data, "init")


def test_domain_user_alias_lifecycle(data: Path) -> None:
    assert "added domain example.org" in ok(data, "domain", "add", "Example.ORG")
    names = [d["name"] for d in json.loads(ok(data, "domain", "list", "--json"))]
    assert names == ["example.org", "example.test"] or sorted(names) == names
    assert "example.org" in names

    ok(data, "user", "add", "Alice@example.org", "--password-stdin", "--quota", "10M",
       stdin=GOOD_PW + "\n")
    ok(data, "user", "add", "bob@example.org", "--password-stdin", stdin=GOOD_PW + "\n")
    users = {u["address"]: u for u in json.loads(ok(data, "user", "list", "--json"))}
    assert users["alice@example.org"]["quota_bytes"] == 10 * 1024 * 1024
    assert users["bob@example.org"]["quota_bytes"] == 0
    table = ok(data, "user", "list")
    assert table.splitlines()[0].startswith("ADDRESS") and "alice@example.org" in table

    assert "quota 1 GiB, 500 messages" in ok(
        data, "user", "quota", "alice@example.org", "--bytes", "1G", "--messages", "500"
    )
    ok(data, "user", "passwd", "alice@example.org", "--password-stdin", stdin="an0ther-Passw0rd\n")

    ok(data, "alias", "add", "team@example.org", "alice@example.org", "bob@example.org")
    ok(data, "alias", "add", "@example.org", "alice@example.org")
    aliases = json.loads(ok(data, "alias", "list", "--json", "--domain", "example.org"))
    assert {(a["source"], a["destination"]) for a in aliases} == {
        ("team@example.org", "alice@example.org"),
        ("team@example.org", "bob@example.org"),
        ("@example.org", "alice@example.org"),
    }
    assert "removed 1" in ok(data, "alias", "remove", "team@example.org", "bob@example.org")
    assert "removed 1" in ok(data, "alias", "remove", "@example.org")

    assert "example.org" in err(data, "domain", "remove", "example.org")
    assert "example.org" in ok(data, "domain", "list")
    ok(data, "alias", "remove", "team@example.org")
    ok(data, "user", "remove", "alice@example.org")
    ok(data, "user", "remove", "bob@example.org")
    ok(data, "domain", "remove", "example.org")
    assert "example.org" not in ok(data, "domain", "list")


ERROR_CASES = [
    (("user", "add", "x@nowhere.test", "--password-stdin"), GOOD_PW, "unknown domain"),
    (("user", "add", "demo@example.test", "--password-stdin"), GOOD_PW, "exists"),
    (("user", "add", "new@example.test", "--password-stdin"), "", "empty"),
    (("user", "add", "new@example.test", "--password-stdin"), "short", "shorter"),
    (("user", "add", "new@example.test", "--password-stdin"), "aaaaaaaaaaaa", "weak"),
    (("user", "add", "not-an-address", "--password-stdin"), GOOD_PW, "no @domain"),
    (("user", "add", "a b@example.test", "--password-stdin"), GOOD_PW, "invalid"),
    (("user", "passwd", "nobody@example.test", "--password-stdin"), GOOD_PW, "no such user"),
    (("user", "remove", "nobody@example.test"), None, "nobody@example.test"),
    (("domain", "add", "not_a_domain"), None, "invalid domain"),
    (("domain", "add", "example.test"), None, "example.test"),
    (("alias", "add", "x@nowhere.test", "demo@example.test"), None, "unknown domain"),
    (("alias", "add", "demo@example.test", "x@example.test"), None, "is an account"),
    (("alias", "remove", "none@example.test"), None, "no alias"),
]


def test_errors_are_one_line_and_change_nothing(data: Path) -> None:
    before = ok(data, "user", "list", "--json"), ok(data, "alias", "list", "--json")
    for args, stdin, needle in ERROR_CASES:
        line = err(data, *args, stdin=None if stdin is None else stdin + "\n")
        assert needle in line, (args, line)
        assert line.startswith("mailstead: "), line
    assert (ok(data, "user", "list", "--json"), ok(data, "alias", "list", "--json")) == before


def test_bad_size_is_a_usage_error(data: Path) -> None:
    proc = ms(data, "user", "add", "q@example.test", "--password-stdin", "--quota", "lots",
              stdin=GOOD_PW + "\n")
    assert proc.returncode == 2 and "not a size" in proc.stderr


def test_data_from_environment(data: Path) -> None:
    import os

    proc = subprocess.run(
        mailstead_cmd("domain", "list"),
        capture_output=True, text=True, env={**os.environ, "MAILSTEAD_DATA": str(data)},
    )
    assert proc.returncode == 0 and "example.test" in proc.stdout


def test_config_command_prints_commented_effective_config(data: Path) -> None:
    out = ok(data, "config")
    assert 'hostname = "mx.example.test"' in out
    assert "# this server's name" in out


def _store_message(data: Path, body: bytes) -> str:
    async def go() -> str:
        cfg = load_config(data)
        store, blobs = make_metadata_store(cfg), make_blob_store(cfg)
        await store.open()
        try:
            account = await store.get_account("demo@example.test")
            assert account is not None
            inbox = await store.get_mailbox(account.id, "INBOX")
            assert inbox is not None
            blob_id = blobs.put(body)
            now = dt.datetime.now(dt.UTC)
            await store.store_message([Delivery(inbox.id, NewMessage(blob_id, len(body), now))])
            return blob_id
        finally:
            await store.close()

    return asyncio.run(go())


def test_check_reports_corrupt_and_truncated_messages(data: Path) -> None:
    good = _store_message(data, b"Subject: one\r\n\r\nfirst\r\n")
    bad = _store_message(data, b"Subject: two\r\n\r\nsecond message body\r\n")
    short = _store_message(data, b"Subject: three\r\n\r\nthird message body\r\n")
    assert "3 good, 0 corrupt" in ok(data, "check")

    def path_of(blob_id: str) -> Path:
        return next((data / "blobs").rglob(f"{blob_id}*"))

    p = path_of(bad)
    p.write_bytes(p.read_bytes().replace(b"second", b"SECOND"))
    q = path_of(short)
    q.write_bytes(q.read_bytes()[:10])
    proc = ms(data, "check")
    assert proc.returncode == 1
    assert f"corrupt: {bad}" in proc.stdout and f"corrupt: {short}" in proc.stdout
    assert "1 good, 2 corrupt, 0 missing" in proc.stdout
    assert good not in proc.stdout.replace("1 good", "")


def test_serve_prints_listeners_and_stops_cleanly(data: Path) -> None:
    sp = start_serve_process(data, "imap=127.0.0.1:0", "smtp=127.0.0.1:0")
    assert sp.proc.poll() is None
    assert sp.terminate() == 0


def _queue(data: Path, entry: QueueEntry | None = None) -> list[QueueEntry]:
    """Adds ``entry`` to the outbound queue (if given); returns the queue as stored."""
    async def go() -> list[QueueEntry]:
        cfg = load_config(data)
        store, blobs = make_metadata_store(cfg), make_blob_store(cfg)
        await store.open()
        try:
            if entry is not None:
                body = b"Subject: waiting\r\n\r\nfor the queue\r\n"
                entry.blob_id, entry.size = blobs.put(body), len(body)
                await store.enqueue(entry)
            return await store.list_queue(True)
        finally:
            await store.close()

    return asyncio.run(go())


def test_second_serve_on_busy_ports_fails_at_once_and_leaves_the_queue(data: Path) -> None:
    """Issue 22.4: every listener is bound before the queue workers start, so a second serve
    (its ports taken) fails with one line and claims nothing, not even a due message."""
    now = dt.datetime.now(dt.UTC)
    _queue(data, QueueEntry(
        id="Q-busy-ports", sender="demo@example.test",
        recipients=[QueueRecipient("someone@remote.test")], blob_id="", size=0,
        created=now, next_attempt=now - dt.timedelta(minutes=1),
    ))
    before = _queue(data)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    try:
        listen = [f"{name}=127.0.0.1:0" for name in
                  ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s")]
        started = time.monotonic()
        proc = ms(data, "serve", *(a for spec in listen for a in ("--listen", spec)),
                  "--listen", f"http=127.0.0.1:{taken}")
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.strip().startswith("mailstead: cannot listen"), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert time.monotonic() - started < 30
    finally:
        holder.close()
    after = _queue(data)
    assert [(e.id, e.attempts, e.lease_owner, e.lease_until, e.next_attempt, e.state)
            for e in after] == [(e.id, e.attempts, e.lease_owner, e.lease_until,
                                 e.next_attempt, e.state) for e in before]
    assert after[0].attempts == 0 and not after[0].lease_owner


def test_dkim_rotate_list_and_remove_a_retired_selector(data: Path) -> None:
    first = json.loads(ok(data, "dkim", "list", "example.test", "--json"))
    assert [row["active"] for row in first] == [True]
    old = first[0]["selector"]
    out = ok(data, "dkim", "rotate", "example.test")
    new = out.split()[2]
    assert new != old and f"{new}-rsa._domainkey.example.test." in out
    listed = ok(data, "dkim", "list", "example.test")
    assert listed.split("\n")[1:3] == [f"{old}  False", f"{new}  True"]
    # Both selectors are published until the old one is removed; the active one cannot go.
    assert f"{old}-ed._domainkey" in ok(data, "dns", "example.test")
    assert "is the active selector" in err(data, "dkim", "remove", "example.test", new)
    assert "no DKIM selector 'nope'" in err(data, "dkim", "remove", "example.test", "nope")
    assert "removed selector" in ok(data, "dkim", "remove", "example.test", old)
    assert old not in ok(data, "dns", "example.test")
    assert [r["selector"] for r in json.loads(
        ok(data, "dkim", "list", "example.test", "--json"))] == [new]
