"""Real Debian IMAP clients against a running mailstead, scripted end to end:
mbsync (isync) both ways, offlineimap, fetchmail, and mutt in batch mode (under ``script``
for the terminal it wants). Each skips loudly when its binary is missing (CI installs them).

The server gets a certificate whose names include the literal "127.0.0.1": isync and
fetchmail compare the host string with the certificate's DNS names.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailstead.store.interfaces import SystemFlag
from tests.conftest import PASSWORD, RunningServer, require_binary
from tests.imap.helpers import ALICE, deliver, message

TIMEOUT = 120


@pytest.fixture(scope="module")
def ip_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("ipcert")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("127.0.0.1"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def server(
    make_server: Callable[..., RunningServer], ip_cert: tuple[Path, Path]
) -> RunningServer:
    return make_server(tls={"cert": str(ip_cert[0]), "key": str(ip_cert[1])})


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT,
        env={**os.environ, **(env or {})},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{cmd[0]} exited {result.returncode}:\n{output}"
    return output


def mailbox(server: RunningServer, name: str) -> dict[bytes, int]:
    """Subject line -> flags of each message in one of alice's mailboxes."""

    async def go() -> dict[bytes, int]:
        store = server.services.store
        account = await store.get_account(ALICE)
        assert account is not None
        box = await store.get_mailbox(account.id, name)
        assert box is not None
        out = {}
        for meta in await store.get_messages(box.id):
            data = server.services.blobs.get(meta.blob_id)
            subject = next(
                (ln for ln in data.split(b"\r\n") if ln.startswith(b"Subject: ")), b"?"
            )
            out[subject[9:]] = meta.flags
        return out

    return server.run(go())


def maildir_files(root: Path) -> dict[str, str]:
    """Subject -> maildir info flags ("" for none) of every message under a maildir."""
    out = {}
    for path in list(root.glob("cur/*")) + list(root.glob("new/*")):
        subject = next(
            (ln for ln in path.read_bytes().split(b"\n") if ln.startswith(b"Subject: ")), b"?"
        )
        out[subject[9:].strip().decode()] = path.name.partition(":2,")[2]
    return out


def test_mbsync_syncs_both_ways(server: RunningServer, ip_cert: tuple[Path, Path],
                                tmp_path: Path) -> None:
    mbsync = require_binary("mbsync")
    deliver(server, message("from server one"))
    deliver(server, message("from server two"), flags=SystemFlag.SEEN)
    local = tmp_path / "mail"
    local.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(
        f"IMAPAccount test\nHost 127.0.0.1\nPort {server.ports['imaps']}\nUser {ALICE}\n"
        f"Pass {PASSWORD}\nSSLType IMAPS\nCertificateFile {ip_cert[0]}\nAuthMechs PLAIN\n\n"
        "IMAPStore remote\nAccount test\n\n"
        f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n"
        "Channel sync\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\n"
        "SyncState *\nSync All\nExpunge Both\n"
    )
    run([mbsync, "-c", str(rc), "-a"], tmp_path)
    files = maildir_files(local / "INBOX")
    assert files == {"from server one": "", "from server two": "S"}
    assert (local / "Sent").is_dir() and (local / "Archive").is_dir()

    # Local changes: flag one message, trash the other, write a new one, make a folder.
    for path in (local / "INBOX").glob("*/*"):
        text = path.read_bytes()
        base = path.name.partition(":2,")[0]
        if b"server one" in text:
            path.rename(local / "INBOX" / "cur" / f"{base}:2,FS")
        else:
            path.rename(local / "INBOX" / "cur" / f"{base}:2,ST")
    (local / "INBOX" / "new" / "1700000000.local1.host").write_bytes(message("written locally"))
    project = local / "Project"
    for sub in ("cur", "new", "tmp"):
        (project / sub).mkdir(parents=True)
    (project / "new" / "1700000001.local2.host").write_bytes(message("project note"))
    # A server-side change at the same time.
    deliver(server, message("from server three"))
    run([mbsync, "-c", str(rc), "-a"], tmp_path)

    inbox = mailbox(server, "INBOX")
    assert set(inbox) == {b"from server one", b"written locally", b"from server three"}
    assert inbox[b"from server one"] == SystemFlag.SEEN | SystemFlag.FLAGGED
    assert mailbox(server, "Project") == {b"project note": 0}
    assert maildir_files(local / "INBOX") == {
        "from server one": "FS", "written locally": "", "from server three": "",
    }
    # A third run with nothing changed is a no-op on both sides.
    run([mbsync, "-c", str(rc), "-a"], tmp_path)
    assert set(mailbox(server, "INBOX")) == set(inbox)


def test_offlineimap_syncs(server: RunningServer, ip_cert: tuple[Path, Path],
                           tmp_path: Path) -> None:
    offlineimap = require_binary("offlineimap")
    deliver(server, message("for offlineimap"))
    rc = tmp_path / "offlineimaprc"
    rc.write_text(
        "[general]\naccounts = test\nmetadata = {meta}\nui = basic\n\n"
        "[Account test]\nlocalrepository = local\nremoterepository = remote\n\n"
        "[Repository local]\ntype = Maildir\nlocalfolders = {mail}\n\n"
        "[Repository remote]\ntype = IMAP\nremotehost = 127.0.0.1\nremoteport = {port}\n"
        "remoteuser = {user}\nremotepass = {password}\nssl = yes\nsslcacertfile = {cert}\n"
        .format(meta=tmp_path / "meta", mail=tmp_path / "mail", port=server.ports["imaps"],
                user=ALICE, password=PASSWORD, cert=ip_cert[0])
    )
    command = [offlineimap, "-c", str(rc), "-o"]
    run(command, tmp_path)
    inbox = tmp_path / "mail" / "INBOX"
    assert maildir_files(inbox) == {"for offlineimap": ""}
    # Flag it locally and add a message; mark a server message seen.
    [path] = list(inbox.glob("*/*"))
    path.rename(inbox / "cur" / (path.name.partition(":2,")[0] + ":2,FS"))
    (inbox / "new" / "1700000000.offline.host:2,").write_bytes(message("offline reply"))
    uid = deliver(server, message("server side"))
    assert uid == 2
    run(command, tmp_path)
    state = mailbox(server, "INBOX")
    assert state == {
        b"for offlineimap": SystemFlag.SEEN | SystemFlag.FLAGGED,
        b"server side": 0,
        b"offline reply": 0,
    }
    assert set(maildir_files(inbox)) == {"for offlineimap", "server side", "offline reply"}


def test_fetchmail_retrieves(server: RunningServer, ip_cert: tuple[Path, Path],
                             tmp_path: Path) -> None:
    fetchmail = require_binary("fetchmail")
    first, second = message("fetch me"), message("and me", body="8-bit: gr\xfc\xdfe\r\n")
    deliver(server, first)
    deliver(server, second)
    out = tmp_path / "out"
    out.mkdir()
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        "set no syslog\n"
        f"poll 127.0.0.1 service {server.ports['imaps']} protocol IMAP auth password\n"
        f'  user "{ALICE}" there with password "{PASSWORD}"\n'
        f'  ssl sslcertfile "{ip_cert[0]}" sslcertck\n'
        f"  mda \"/bin/sh -c 'cat > {out}/msg.$$'\"\n"
    )
    rc.chmod(0o600)
    run([fetchmail, "-f", str(rc), "--nodetach"], tmp_path, {"FETCHMAILHOME": str(tmp_path)})
    # fetchmail hands the MDA Unix line ends and adds its Received: line on top.
    fetched = sorted(p.read_bytes() for p in out.iterdir())
    assert len(fetched) == 2
    assert any(f.endswith(first.replace(b"\r\n", b"\n")) for f in fetched)
    assert any(f.endswith(second.replace(b"\r\n", b"\n")) for f in fetched)
    assert mailbox(server, "INBOX") == {}  # fetched and deleted (no "keep")


def test_mutt_reads_and_moves(server: RunningServer, ip_cert: tuple[Path, Path],
                              tmp_path: Path) -> None:
    mutt = require_binary("mutt")
    script = require_binary("script")
    deliver(server, message("read and file me"))
    deliver(server, message("leave me"))
    certs = tmp_path / "certs"
    certs.write_bytes(ip_cert[0].read_bytes())
    rc = tmp_path / "muttrc"
    rc.write_text(
        f'set folder="imaps://{ALICE.replace("@", "%40")}@127.0.0.1:{server.ports["imaps"]}/"\n'
        f'set spoolfile="+INBOX"\nset imap_pass="{PASSWORD}"\n'
        f'set certificate_file="{certs}"\n'
        "set sort=date-sent\nset confirmappend=no\nset confirmcreate=no\nset delete=yes\n"
        'set move=no\nset mark_old=no\nset wait_key=no\nset record=""\nset timeout=5\n'
    )
    # Open the first message (reads it), save it to Archive (moves it), sync, quit.
    keys = "<first-entry><display-message><exit><save-message>=Archive<enter><sync-mailbox><quit>"
    command = f"{mutt} -n -F {rc} -e 'push \"{keys}\"'"
    run([script, "-qec", command, "/dev/null"], tmp_path, {"TERM": "vt100"})
    assert mailbox(server, "Archive") == {b"read and file me": SystemFlag.SEEN}
    assert mailbox(server, "INBOX") == {b"leave me": 0}
