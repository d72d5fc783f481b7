"""Sieve at delivery, as users see it: real messages over SMTP (smtplib) through each user's
active script, on both stores: fileinto a new folder, flags, redirect to another local user,
reject in the SMTP reply, vacation once per period and never to a list or the null sender,
and a broken script that keeps mail in INBOX."""

from __future__ import annotations

import shutil
import smtplib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime, make_msgid
from pathlib import Path

import pytest

from mailstead.sieve.service import SieveService
from tests.conftest import RunningServer
from tests.smtp.helpers import ALICE, BOB, inbox, queue

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)


def mail(subject: str, body: str = "Hello.", *, to: str = ALICE, extra: str = "",
         sender: str = "carol@remote.test") -> bytes:
    return (f"From: Carol <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: {format_datetime(datetime.now(UTC))}\r\nMessage-ID: {make_msgid()}\r\n"
            f"{extra}\r\n{body}\r\n").encode()


def send(server: RunningServer, raw: bytes, *rcpts: str, sender: str = "carol@remote.test"
         ) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as client:
        client.ehlo("client.remote.test")
        client.sendmail(sender, list(rcpts) or [ALICE], raw)


def sieve(server: RunningServer) -> SieveService:
    found = server.services.extra["sieve"]
    assert isinstance(found, SieveService)
    return found


def activate(server: RunningServer, address: str, text: str, name: str = "main") -> None:
    async def go() -> None:
        account = await server.services.store.get_account(address)
        assert account is not None
        await sieve(server).put(account, name, text)
        await sieve(server).activate(account, name)

    server.run(go())


def subjects(server: RunningServer, address: str, box: str = "INBOX") -> list[str]:
    found = []
    for stored in inbox(server, address, box):
        for line in stored.headers.split("\r\n"):
            if line.startswith("Subject: "):
                found.append(line[9:])
    return found


@BOTH
def test_fileinto_new_folder_with_flags(mail_server: RunningServer) -> None:
    activate(mail_server, ALICE, r'''
require ["fileinto", "mailbox", "imap4flags", "variables"];
if header :matches "List-Id" "*<*.lists.test>" {
    fileinto :create :flags ["\\Seen", "$List"] "Lists/${2}";
    stop;
}
if header :contains "subject" "urgent" { addflag "\\Flagged"; }
''')
    send(mail_server, mail("weekly digest", extra="List-Id: Devs <devs.lists.test>\r\n"))
    send(mail_server, mail("URGENT: call me"))
    [listed] = inbox(mail_server, ALICE, "Lists/devs")
    assert listed.meta.flags & 1  # \Seen
    assert "$List" in listed.meta.keywords
    [urgent] = inbox(mail_server, ALICE)
    assert urgent.meta.flags & 4  # \Flagged
    assert "URGENT" in urgent.headers


@BOTH
def test_rule_mailbox_renamed_or_deleted_counts_at_once(mail_server: RunningServer) -> None:
    """The mailboxes rules file into are remembered (a minute), but a mailbox renamed or
    deleted drops its account's at once (the change feed's account channel): the next
    message goes to the mailbox of that name, created again by :create."""
    activate(mail_server, ALICE, 'require ["fileinto", "mailbox"];\n'
                                 'fileinto :create "Rules";')
    send(mail_server, mail("one"))  # (creates it)
    send(mail_server, mail("one again"))  # (finds it, and remembers it)

    async def rename() -> None:
        account = await mail_server.services.store.get_account(ALICE)
        assert account is not None
        await mail_server.services.store.rename_mailbox(account.id, "Rules", "Old")

    mail_server.run(rename())
    send(mail_server, mail("two"))
    assert subjects(mail_server, ALICE, "Old") == ["one", "one again"]
    assert subjects(mail_server, ALICE, "Rules") == ["two"]

    async def delete() -> None:
        account = await mail_server.services.store.get_account(ALICE)
        assert account is not None
        await mail_server.services.store.delete_mailbox(account.id, "Rules")

    mail_server.run(delete())
    send(mail_server, mail("three"))
    assert subjects(mail_server, ALICE, "Rules") == ["three"]
    assert subjects(mail_server, ALICE) == []


@BOTH
def test_redirect_to_another_local_user(mail_server: RunningServer) -> None:
    activate(mail_server, ALICE, 'if address :domain "from" "remote.test" '
                                 '{ redirect "bob@example.test"; }')
    activate(mail_server, BOB, 'require "fileinto"; fileinto "INBOX";')
    send(mail_server, mail("for bob"))
    assert subjects(mail_server, ALICE) == []  # redirected, no implicit keep
    [copy] = inbox(mail_server, BOB)
    assert "Return-Path: <carol@remote.test>" in copy.headers  # the envelope sender stays


@BOTH
def test_broken_script_keeps_mail_in_inbox(mail_server: RunningServer) -> None:
    # Passes the check but fails at run time: a missing included script.
    activate(mail_server, ALICE, 'require ["include", "fileinto"]; include "missing"; '
                                 'fileinto "Elsewhere";')
    send(mail_server, mail("still here"))
    assert subjects(mail_server, ALICE) == ["still here"]


def test_reject_in_the_smtp_reply_and_by_notice(mail_server: RunningServer) -> None:
    activate(mail_server, ALICE, 'require "reject"; if header :contains "subject" "offer" '
                                 '{ reject "No offers, thanks."; }')
    with pytest.raises(smtplib.SMTPDataError) as caught:
        send(mail_server, mail("special offer"))
    assert caught.value.smtp_code == 550
    assert b"No offers" in caught.value.smtp_error
    assert subjects(mail_server, ALICE) == []
    # Two recipients: bob gets it, carol (remote) is told by a notice in the queue.
    send(mail_server, mail("another offer"), ALICE, BOB)
    assert subjects(mail_server, BOB) == ["another offer"]
    assert subjects(mail_server, ALICE) == []
    assert [e.recipients[0].address for e in queue(mail_server)] == ["carol@remote.test"]


VACATION = '''require ["vacation"];
vacation :days 1 :subject "Away" :addresses ["alice@example.test"] "Back on Monday.";
'''


@BOTH
def test_vacation_once_per_period_never_to_lists_or_null(mail_server: RunningServer) -> None:
    activate(mail_server, ALICE, VACATION)
    send(mail_server, mail("one"))
    send(mail_server, mail("two"))  # same sender within the period: no second reply
    send(mail_server, mail("list", extra="List-Id: <x.lists.test>\r\n"), sender="dan@remote.test")
    send(mail_server, mail("bulk", extra="Precedence: bulk\r\n"), sender="erin@remote.test")
    send(mail_server, mail("auto", extra="Auto-Submitted: auto-generated\r\n"),
         sender="fay@remote.test")
    send(mail_server, mail("bounce"), sender="")
    send(mail_server, mail("bcc", to="someone@else.test"), sender="gil@remote.test")
    assert len(subjects(mail_server, ALICE)) == 7  # every message kept
    replies = queue(mail_server)
    assert [e.recipients[0].address for e in replies] == ["carol@remote.test"]
    [reply] = replies
    assert reply.sender == ""  # RFC 3834 3.3: the null reverse-path
    data = mail_server.services.blobs.get(reply.blob_id)
    assert b"Auto-Submitted: auto-replied" in data
    assert b"Subject: Away" in data
    assert b"Back on Monday." in data


@BOTH
def test_spamtest_and_numeric_compare(mail_server: RunningServer) -> None:
    activate(mail_server, ALICE, """
require ["fileinto", "mailbox", "spamtest", "relational", "comparator-i;ascii-numeric"];
if spamtest :value "le" :comparator "i;ascii-numeric" "3" { fileinto :create "Clean"; }
""")
    send(mail_server, mail("lunch", "Shall we meet at noon?"))
    assert subjects(mail_server, ALICE, "Clean") == ["lunch"]


@BOTH
def test_currentdate_reads_the_clock_at_delivery(mail_server: RunningServer) -> None:
    # RFC 5260 5: currentdate is the time of the evaluation (the service reads the clock only
    # for a script with a date test).
    year = datetime.now(UTC).year
    activate(mail_server, ALICE, f"""
require ["fileinto", "mailbox", "date", "relational", "comparator-i;ascii-numeric"];
if currentdate :value "ge" :comparator "i;ascii-numeric" "year" "{year}" {{
    fileinto :create "Now";
}}
""")
    send(mail_server, mail("dated"))
    assert subjects(mail_server, ALICE, "Now") == ["dated"]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_script_change_on_one_node_counts_at_once_on_another(
        mail_server: RunningServer, make_server: Callable[..., RunningServer],
        store_overrides: dict[str, object], tmp_path: Path) -> None:
    """Both nodes on one PostgreSQL store: node two has just cached that Alice has no
    script; node one activates one, and node two's next delivery runs it (the change feed
    tells it; the cache alone would keep the old answer for SCRIPT_CACHE_SECONDS)."""
    shutil.copytree(mail_server.data_dir / "tls", tmp_path / "two" / "tls")
    second = make_server(data_dir=tmp_path / "two", **store_overrides)
    send(second, mail("before"))
    activate(mail_server, ALICE, 'require ["fileinto", "mailbox"];\nfileinto :create "Now";\n')
    time.sleep(0.3)  # LISTEN/NOTIFY's own delay, far below the cache's two seconds
    send(second, mail("after"))
    assert subjects(second, ALICE, "Now") == ["after"]  # (its message files)
    assert subjects(second, ALICE) == ["before"]
