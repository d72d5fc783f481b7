"""Helpers for the import/export/backup tests: the CLI as a subprocess, reading an account over
IMAP, and a private Dovecot on a loopback port."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from imapclient import IMAPClient

from tests.conftest import PASSWORD, RunningServer, mailstead_cmd

# folder -> list of (flags as a sorted tuple of str, internal date, bytes), in UID order
Account = dict[str, list[tuple[tuple[str, ...], datetime, bytes]]]


def ms(data: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
       ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(mailstead_cmd(*args, "--data", str(data)), input=stdin,
                          capture_output=True, text=True, timeout=120,
                          env=None if env is None else {**os.environ, **env})


def ok(data: Path, *args: str, stdin: str | None = None) -> str:
    proc = ms(data, *args, stdin=stdin)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return proc.stdout


def imap(server: RunningServer, user: str, password: str = PASSWORD) -> IMAPClient:
    client = IMAPClient("127.0.0.1", port=server.ports["imaps"], ssl=True,
                        ssl_context=server.ssl_context(), timeout=30)
    client.normalise_times = False
    client.login(user, password)
    return client


def read_account(client: IMAPClient, skip_empty: bool = True) -> Account:
    """Every folder's messages with their flags (\\Recent left out) and internal dates."""
    found: Account = {}
    for _flags, _sep, name in client.list_folders():
        info = client.select_folder(name, readonly=True)
        if not info[b"EXISTS"]:
            if not skip_empty:
                found[name] = []
            continue
        rows = client.fetch(client.search("ALL"), ["FLAGS", "INTERNALDATE", "BODY.PEEK[]"])
        found[name] = [
            (tuple(sorted(f.decode() for f in row[b"FLAGS"] if f != b"\\Recent")),
             row[b"INTERNALDATE"], row[b"BODY[]"])
            for _uid, row in sorted(rows.items())
        ]
    client.logout()
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Dovecot:
    port: int
    user: str
    password: str

    def client(self) -> IMAPClient:
        client = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=30)
        client.normalise_times = False
        client.login(self.user, self.password)
        return client


DOVECOT_CONF = """\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
instance_name = mailstead-test-{port}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{base}/mail/%u
first_valid_uid = 1
default_internal_user = {internal}
default_login_user = {login}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={base}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  chroot =
}}
service anvil {{
  chroot =
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox "Sent Messages" {{
    special_use = \\Sent
  }}
  mailbox Spam {{
    special_use = \\Junk
  }}
}}
"""


@contextmanager
def private_dovecot(binary: str) -> Iterator[Dovecot]:
    """Debian's Dovecot with its own config, base_dir and Maildir store, on a loopback port.
    As root, mail belongs to the ``dovecot`` user and logins run as ``dovenull`` (Dovecot
    refuses root for both)."""
    base = Path(tempfile.mkdtemp(prefix="mailstead-dovecot-"))
    base.chmod(0o755)
    port = free_port()
    if os.geteuid() == 0:
        mail_user, internal, login = pwd.getpwnam("dovecot"), "dovecot", "dovenull"
    else:
        mail_user = pwd.getpwuid(os.geteuid())
        internal = login = mail_user.pw_name
    (base / "mail").mkdir()
    (base / "home").mkdir()
    for d in ("mail", "home"):
        os.chown(base / d, mail_user.pw_uid, mail_user.pw_gid)
    (base / "passwd").write_text("old@example.org:{PLAIN}old-Passw0rd\n")
    conf = base / "dovecot.conf"
    conf.write_text(DOVECOT_CONF.format(base=base, port=port, internal=internal, login=login,
                                        uid=mail_user.pw_uid, gid=mail_user.pw_gid))
    proc = subprocess.Popen([binary, "-F", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    log = base / "dovecot.log"
                    raise RuntimeError("dovecot did not start: " +
                                       (log.read_text() if log.exists() else "")) from None
                time.sleep(0.1)
        yield Dovecot(port, "old@example.org", "old-Passw0rd")
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(base, ignore_errors=True)
