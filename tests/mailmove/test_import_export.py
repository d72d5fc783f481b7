"""`mailstead import` and `mailstead export` as a user runs them (real CLI subprocesses against a
running server's data dir), checked over IMAP: flags, keywords, internal dates, folders."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from mailstead.mailmove.sources import read_mbox
from tests.conftest import DOMAIN, PASSWORD, RunningServer, require_binary
from tests.mailmove.helpers import imap, ms, ok, private_dovecot, read_account

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"

FIRST = (b"Message-ID: <one@example.org>\n"
         b"Date: Sat, 05 Dec 2026 10:00:00 +0000\n"
         b"From: alice@example.org\n"
         b"Subject: one\n")
FIRST_FLAGS = b"Status: RO\nX-Status: AF\nX-Keywords: $Label1 work\n"
FIRST_BODY = b"\nBody line\n>From the start\n>>From quoted twice\n"
MBOX = (
    b"From alice@example.org Sat Dec  5 10:00:00 2026\n" + FIRST + FIRST_FLAGS + FIRST_BODY
    + b"\nFrom bob@example.org Sat Dec  5 11:00:00 2026\n"
    b"Message-ID: <two@example.org>\nSubject: two\n\nhello\n"
    b"\nFrom x Sat Dec  5 12:00:00 2026\n"
    b"this line has no colon and no header\nso it cannot be parsed\n"
    # the first message again: a duplicate, skipped
    b"\nFrom alice@example.org Sat Dec  5 10:00:00 2026\n" + FIRST + FIRST_FLAGS + FIRST_BODY
)


def crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_mbox_import_dry_run_then_real(mail_server: RunningServer, tmp_path: Path) -> None:
    mbox = tmp_path / "old.mbox"
    mbox.write_bytes(MBOX)
    data = mail_server.data_dir
    out = ok(data, "import", "mbox", ALICE, str(mbox), "--dry-run")
    assert "would store 3, skipped 1 duplicates, 1 unparsable" in out
    assert read_account(imap(mail_server, ALICE)) == {}

    out = ok(data, "import", "mbox", ALICE, str(mbox))
    assert "stored 3, skipped 1 duplicates, 1 unparsable (stored as they are)" in out
    assert "old.mbox #3: no header fields" in out
    inbox = read_account(imap(mail_server, ALICE))["INBOX"]
    assert [body for _f, _d, body in inbox] == [
        crlf(FIRST + b"\nBody line\nFrom the start\n>From quoted twice\n"),
        crlf(b"Message-ID: <two@example.org>\nSubject: two\n\nhello\n"),
        crlf(b"this line has no colon and no header\nso it cannot be parsed\n"),
    ]
    flags, when, _body = inbox[0]
    assert flags == ("$Label1", "\\Answered", "\\Flagged", "\\Seen", "work")
    assert when == datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    assert inbox[1][0] == () and inbox[1][1] == datetime(2026, 12, 5, 11, 0, tzinfo=UTC)

    again = ok(data, "import", "mbox", ALICE, str(mbox))  # a rerun stores nothing twice
    assert "stored 0, skipped 4 duplicates" in again


def test_mboxo_unescapes_one_level_only(tmp_path: Path) -> None:
    mbox = tmp_path / "o.mbox"
    mbox.write_bytes(b"From a Sat Dec  5 10:00:00 2026\nSubject: x\n\n>From a\n>>From b\n")
    [rd] = read_mbox(mbox, variant="mboxrd")
    [o] = read_mbox(mbox, variant="mboxo")
    assert rd.data.endswith(b"\r\nFrom a\r\n>From b\r\n")
    assert o.data.endswith(b"\r\nFrom a\r\n>>From b\r\n")


def make_maildir(root: Path) -> None:
    stamp = datetime(2025, 3, 1, 8, 30, tzinfo=UTC).timestamp()

    def put(folder: str, sub: str, name: str, subject: str) -> None:
        d = root / folder / sub
        d.mkdir(parents=True, exist_ok=True)
        for other in ("cur", "new", "tmp"):
            (root / folder / other).mkdir(exist_ok=True)
        f = d / name
        f.write_bytes(f"Message-ID: <{subject}@example.org>\nSubject: {subject}\n\nbody\n".encode())
        os.utime(f, (stamp, stamp))

    put("", "cur", "1001.a.host:2,S", "seen")
    put("", "new", "1002.b.host", "new")
    put(".Sent", "cur", "1003.c.host:2,RS", "sent")
    put(".Lists.python", "cur", "1004.d.host:2,FTa", "listmail")
    (root / ".Lists.python" / "dovecot-keywords").write_text("0 $Important\n")
    put(".Caf&AOk-", "cur", "1005.e.host:2,D", "utf7")
    put("Projects/2026", "cur", "1006.f.host:2,", "plain")


def test_maildir_tree_import(mail_server: RunningServer, tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    make_maildir(root)
    out = ok(mail_server.data_dir, "import", "maildir", ALICE, str(root))
    assert "stored 6, skipped 0 duplicates" in out
    account = read_account(imap(mail_server, ALICE))
    when = datetime(2025, 3, 1, 8, 30, tzinfo=UTC)
    summary = {name: [(flags, date == when) for flags, date, _b in rows]
               for name, rows in account.items()}
    assert summary == {
        "INBOX": [(("\\Seen",), True), ((), True)],
        "Sent": [(("\\Answered", "\\Seen"), True)],
        "Lists/python": [(("$Important", "\\Deleted", "\\Flagged"), True)],
        "Café": [(("\\Draft",), True)],
        "Projects/2026": [((), True)],
    }
    assert account["Sent"][0][2] == crlf(b"Message-ID: <sent@example.org>\nSubject: sent\n\nbody\n")


def populate(server: RunningServer, user: str) -> None:
    """Messages in several folders with flags, keywords and internal dates, over IMAP."""
    client = imap(server, user)
    client.create_folder("Projects/2026")
    zone = timezone(timedelta(hours=2))
    for i in range(5):
        client.append("INBOX", f"Message-ID: <in{i}@x>\r\nSubject: in {i}\r\n\r\nhi {i}\r\n"
                      .encode(), flags=[b"\\Seen"] if i % 2 else [],
                      msg_time=datetime(2024, 1, 1 + i, 9, 0, tzinfo=zone))
    client.append("Sent", b"Message-ID: <s@x>\r\nSubject: sent\r\n\r\nsent\r\n",
                  flags=[b"\\Seen", b"\\Answered"], msg_time=datetime(2023, 5, 5, tzinfo=UTC))
    client.append("Projects/2026", b"Subject: no id\r\n\r\nkeyworded\r\n",
                  flags=[b"\\Flagged", b"$Work"], msg_time=datetime(2022, 2, 2, tzinfo=UTC))
    client.logout()


def test_imap_pull_from_second_mailstead(make_server: Callable[..., RunningServer]) -> None:
    source = make_server(auth={"allow_plaintext_on_loopback": True})
    populate(source, ALICE)
    target = make_server()
    args = ("import", "imap", BOB, "--host", "127.0.0.1", "--port", str(source.ports["imap"]),
            "--security", "none", "--login", ALICE, "--password-stdin")
    out = ok(target.data_dir, *args, stdin=PASSWORD + "\n")
    assert "stored 7, skipped 0 duplicates" in out
    want = read_account(imap(source, ALICE))
    assert read_account(imap(target, BOB)) == want

    again = ok(target.data_dir, *args, stdin=PASSWORD + "\n")  # resumable: nothing twice
    assert "stored 0, skipped 7 duplicates" in again
    client = imap(target, BOB)  # lose two, as an interrupted pull would not have them
    client.select_folder("INBOX")
    client.delete_messages([2, 4])
    client.expunge()
    client.logout()
    out = ok(target.data_dir, *args, stdin=PASSWORD + "\n")
    assert "stored 2, skipped 5 duplicates" in out
    assert sorted(b for _f, _d, b in read_account(imap(target, BOB))["INBOX"]) == \
        sorted(b for _f, _d, b in want["INBOX"])

    proc = ms(target.data_dir, *args, stdin="wrong-password\n")
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()[-1:]
    assert line.startswith("mailstead: IMAP server 127.0.0.1: "), proc.stderr


def test_imap_pull_refuses_plain_text_to_a_remote_host(mail_server: RunningServer) -> None:
    proc = ms(mail_server.data_dir, "import", "imap", BOB, "--host", "192.0.2.1",
              "--security", "none", "--login", "x", "--password-stdin", stdin="pw\n")
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("mailstead: 192.0.2.1 is not a loopback host: use TLS (ssl "
                                   "or starttls) or --insecure")


def test_imap_pull_from_dovecot(mail_server: RunningServer) -> None:
    binary = "/usr/sbin/dovecot"
    if not os.path.exists(binary):
        require_binary("dovecot")
    with private_dovecot(binary) as dovecot:
        client = dovecot.client()
        for name in ("Sent Messages", "Spam", "Lists/rust"):
            client.create_folder(name)
        client.append("INBOX", b"Message-ID: <d1@x>\r\nSubject: d1\r\n\r\none\r\n",
                      flags=[b"\\Seen", b"$Label1"], msg_time=datetime(2021, 6, 1, 12, tzinfo=UTC))
        client.append("INBOX", b"Message-ID: <d2@x>\r\nSubject: d2\r\n\r\ntwo\r\n",
                      flags=[b"\\Flagged"], msg_time=datetime(2021, 6, 2, 12, tzinfo=UTC))
        client.append("Sent Messages", b"Message-ID: <d3@x>\r\nSubject: d3\r\n\r\nthree\r\n",
                      flags=[b"\\Seen", b"\\Answered"],
                      msg_time=datetime(2021, 6, 3, tzinfo=UTC))
        client.append("Spam", b"Message-ID: <d4@x>\r\nSubject: d4\r\n\r\nfour\r\n",
                      msg_time=datetime(2021, 6, 4, tzinfo=UTC))
        client.append("Lists/rust", b"Message-ID: <d5@x>\r\nSubject: d5\r\n\r\nfive\r\n",
                      flags=[b"\\Draft", b"\\Deleted"], msg_time=datetime(2021, 6, 5, tzinfo=UTC))
        client.logout()
        args = ("import", "imap", ALICE, "--host", "127.0.0.1", "--port", str(dovecot.port),
                "--security", "none", "--login", dovecot.user, "--password-stdin")
        out = ok(mail_server.data_dir, *args, stdin=dovecot.password + "\n")
        assert "stored 5, skipped 0 duplicates" in out
        again = ok(mail_server.data_dir, *args, stdin=dovecot.password + "\n")
        assert "stored 0, skipped 5 duplicates" in again
    account = read_account(imap(mail_server, ALICE))
    summary = {name: [(flags, date) for flags, date, _b in rows]
               for name, rows in account.items()}
    assert summary == {  # SPECIAL-USE: "Sent Messages" is our Sent, "Spam" our Junk
        "INBOX": [(("$Label1", "\\Seen"), datetime(2021, 6, 1, 12, tzinfo=UTC)),
                  (("\\Flagged",), datetime(2021, 6, 2, 12, tzinfo=UTC))],
        "Sent": [(("\\Answered", "\\Seen"), datetime(2021, 6, 3, tzinfo=UTC))],
        "Junk": [((), datetime(2021, 6, 4, tzinfo=UTC))],
        "Lists/rust": [(("\\Deleted", "\\Draft"), datetime(2021, 6, 5, tzinfo=UTC))],
    }
    assert account["Sent"][0][2] == b"Message-ID: <d3@x>\r\nSubject: d3\r\n\r\nthree\r\n"


@pytest.mark.parametrize("fmt", ["maildir", "mbox", "tar.gz"])
def test_export_then_import_round_trips_byte_for_byte(
    mail_server: RunningServer, tmp_path: Path, fmt: str
) -> None:
    root = tmp_path / "Maildir"
    make_maildir(root)
    data = mail_server.data_dir
    ok(data, "import", "maildir", ALICE, str(root))
    mbox = tmp_path / "in.mbox"
    mbox.write_bytes(MBOX)
    ok(data, "import", "mbox", ALICE, str(mbox), "--folder", "Old")
    dest = tmp_path / f"export.{fmt}"
    out = ok(data, "export", ALICE, str(dest), "--format", fmt)
    assert "exported 9 messages" in out
    if fmt == "mbox":  # a directory of .mbox files: each its folder
        ok(data, "import", "mbox", BOB, str(dest))
    else:
        tree = dest
        if fmt == "tar.gz":
            with tarfile.open(dest) as archive:
                archive.extractall(tmp_path / "unpacked", filter="data")
            tree = tmp_path / "unpacked" / "Maildir"
        ok(data, "import", "maildir", BOB, str(tree))
    assert read_account(imap(mail_server, BOB)) == read_account(imap(mail_server, ALICE))


def test_mbox_separators_without_blank_lines(tmp_path: Path) -> None:
    """A writer that left no blank line: a real From_ line still separates, and an unquoted
    "From " line of a body (no date) does not."""
    mbox = tmp_path / "tight.mbox"
    mbox.write_bytes(b"From a@x Sat Dec  5 10:00:00 2026\nSubject: 1\n\nhi\nFrom me, hello\n"
                     b"From b@x Sun Dec  6 11:00:00 2026\nSubject: 2\n\ntwo\n")
    first, second = read_mbox(mbox)
    assert first.data == b"Subject: 1\r\n\r\nhi\r\nFrom me, hello\r\n"
    assert second.data == b"Subject: 2\r\n\r\ntwo\r\n"
    assert second.internal_date == datetime(2026, 12, 6, 11, 0, tzinfo=UTC)
