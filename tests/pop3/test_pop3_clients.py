"""Debian's own POP3 clients against mailstead: fetchmail, getmail6 and curl, over STLS and
995, with the server certificate verified."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, RunningServer, require_binary
from tests.pop3.helpers import deliver, inbox, message

ALICE = "alice@example.test"


def run_fetchmail(server: RunningServer, home: Path, *, implicit: bool, keep: bool) -> Path:
    """Runs fetchmail once; returns the mbox file its MDA appended to."""
    fetchmail = require_binary("fetchmail")
    home.mkdir(exist_ok=True)
    mbox = home / "mbox"
    port = server.ports["pop3s" if implicit else "pop3"]
    rc = home / "fetchmailrc"
    rc.write_text(
        f'poll localhost via 127.0.0.1 with proto POP3 port {port}\n'
        f'  user "{ALICE}" there with password "{PASSWORD}" is "{os.environ.get("USER", "root")}"'
        f' here\n'
        f'  {"ssl " if implicit else ""}sslproto "tls1.2+" sslcertck'
        f' sslcertfile "{server.cert_file}" sslcommonname "localhost"\n'
        f'  mda "/bin/sh -c \'cat >> {mbox}\'"\n'
        f'  fetchall {"keep" if keep else "nokeep"}\n'
    )
    rc.chmod(0o600)
    env = {**os.environ, "HOME": str(home), "FETCHMAILHOME": str(home)}
    result = subprocess.run(
        [fetchmail, "--nosyslog", "-v", "-f", str(rc), "--pidfile", str(home / "pid")],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return mbox


@pytest.mark.parametrize("implicit", [False, True], ids=["stls", "pop3s"])
def test_fetchmail_retrieves_and_deletes(
    mail_server: RunningServer, tmp_path: Path, implicit: bool
) -> None:
    raws = [message(f"fetch {i}", body=f".dotted {i}\r\nplain\r\n") for i in range(3)]
    for raw in raws:
        deliver(mail_server, ALICE, raw)
    mbox = run_fetchmail(mail_server, tmp_path / "home", implicit=implicit, keep=False)
    text = mbox.read_bytes()
    for i in range(3):
        assert f"Subject: fetch {i}".encode() in text
        assert f"\n.dotted {i}\n".encode() in text  # dot-stuffing undone by the client
    assert inbox(mail_server, ALICE) == {}  # deleted on the server, for IMAP too


def test_fetchmail_keep_leaves_mail(mail_server: RunningServer, tmp_path: Path) -> None:
    uid = deliver(mail_server, ALICE, message("kept"))
    mbox = run_fetchmail(mail_server, tmp_path / "home", implicit=False, keep=True)
    assert b"Subject: kept" in mbox.read_bytes()
    assert list(inbox(mail_server, ALICE)) == [uid]


def curl(server: RunningServer, url: str, *extra: str) -> bytes:
    binary = require_binary("curl")
    result = subprocess.run(
        [binary, "-sS", "--cacert", str(server.cert_file), "-u", f"{ALICE}:{PASSWORD}",
         *extra, url],
        capture_output=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


@pytest.mark.parametrize("scheme", ["pop3", "pop3s"])
def test_curl_lists_retrieves_and_deletes(mail_server: RunningServer, scheme: str) -> None:
    raws = [message("curl one"), message("curl two", body="..x\r\n")]
    for raw in raws:
        deliver(mail_server, ALICE, raw)
    port = mail_server.ports[scheme]
    base = f"{scheme}://127.0.0.1:{port}"
    tls = ["--ssl-reqd"] if scheme == "pop3" else []
    listing = curl(mail_server, f"{base}/", *tls)
    assert listing == f"1 {len(raws[0])}\r\n2 {len(raws[1])}\r\n".encode()
    assert curl(mail_server, f"{base}/2", *tls) == raws[1]
    curl(mail_server, f"{base}/1", *tls, "-X", "DELE", "-I")
    assert len(inbox(mail_server, ALICE)) == 1


def test_getmail_retrieves_and_deletes_over_pop3s(
        mail_server: RunningServer, tmp_path: Path) -> None:
    """Debian's getmail6 over 995 with the certificate checked, each message handed to a
    command that writes it to a file of its own (getmail refuses Maildirs as root)."""
    getmail = require_binary("getmail")
    for i in range(2):
        deliver(mail_server, ALICE, message(f"getmail {i}", body=f"..two dots {i}\r\n"))
    out = tmp_path / "got"
    out.mkdir()
    rc = tmp_path / "getmailrc"
    rc.write_text(
        "[retriever]\ntype = SimplePOP3SSLRetriever\nserver = 127.0.0.1\n"
        f"port = {mail_server.ports['pop3s']}\nusername = {ALICE}\npassword = {PASSWORD}\n"
        f"ca_certs = {mail_server.cert_file}\nssl_cert_hostname = localhost\n\n"
        "[destination]\ntype = MDA_external\npath = /bin/sh\n"
        f"arguments = (\"-c\", \"cat > $(mktemp -p {out} msg.XXXXXX)\")\n"
        "allow_root_commands = true\n\n"
        "[options]\nread_all = true\ndelete = true\n"
    )
    result = subprocess.run(
        [getmail, "--rcfile", str(rc), "--getmaildir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    texts = sorted(p.read_bytes().replace(b"\r\n", b"\n") for p in out.iterdir())
    assert len(texts) == 2
    assert all(b"Subject: getmail " in t for t in texts)
    assert any(b"\n..two dots 0\n" in t for t in texts)  # stuffed on the wire, undone
    assert inbox(mail_server, ALICE) == {}  # deleted on the server
