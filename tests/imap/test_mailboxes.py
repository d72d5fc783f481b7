"""Mailbox commands: CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST (LIST-EXTENDED,
LIST-STATUS, SPECIAL-USE, CHILDREN), LSUB, NAMESPACE, STATUS, QUOTA, and mailbox names
(modified UTF-7 for IMAP4rev1, UTF-8 after ENABLE IMAP4rev2, names that try to escape)."""

from __future__ import annotations

import pytest

from tests.conftest import RunningServer
from tests.imap.helpers import ALICE, Raw, connect, deliver, message, ok, status_of


def _names(lines: list[bytes]) -> list[bytes]:
    return [line.rsplit(b' "/" ', 1)[1] for line in lines if line.startswith(b"* LIST")]


def test_default_mailboxes_with_special_use_and_children(mail_server: RunningServer) -> None:
    raw = Raw(mail_server)
    raw.login()
    lines = raw.cmd('LIST "" "*"')
    assert lines[0] == b'* LIST (\\HasNoChildren) "/" "INBOX"'
    assert b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"' in lines
    assert b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"' in lines
    assert set(_names(lines)) == {
        b'"INBOX"', b'"Sent"', b'"Drafts"', b'"Trash"', b'"Junk"', b'"Archive"'
    }
    # The hierarchy separator query.
    assert raw.cmd('LIST "" ""')[0] == b'* LIST (\\Noselect) "/" ""'


def test_create_hierarchy_list_patterns(mail_server: RunningServer) -> None:
    raw = Raw(mail_server)
    raw.login()
    assert status_of(raw.cmd("CREATE Work/Projects/2024")) == b"OK"  # parents made too
    assert status_of(raw.cmd("CREATE Work")) == b"NO [ALREADYEXISTS]"
    assert status_of(raw.cmd("CREATE inbox")) == b"NO [ALREADYEXISTS]"
    assert status_of(raw.cmd("CREATE Lists/")) == b"OK"  # trailing separator dropped
    lines = raw.cmd('LIST "" "Work/%"')
    assert lines[:-1] == [b'* LIST (\\HasChildren) "/" "Work/Projects"']
    lines = raw.cmd('LIST "Work/" "*"')
    assert _names(lines) == [b'"Work/Projects"', b'"Work/Projects/2024"']
    assert _names(raw.cmd('LIST "" "%"')).count(b'"Work"') == 1
    assert b"Work/Projects" not in b"".join(raw.cmd('LIST "" "%"'))
    assert _names(raw.cmd('LIST "" "inBOX"')) == [b'"INBOX"']
    assert _names(raw.cmd('LIST "" "Lists"')) == [b'"Lists"']


def test_delete_rename_subscribe(mail_server: RunningServer) -> None:
    deliver(mail_server, message("keep me"))
    raw = Raw(mail_server)
    raw.login()
    raw.cmd("CREATE A/B")
    assert status_of(raw.cmd("DELETE A")) == b"NO [CANNOT]"  # has children
    assert status_of(raw.cmd("DELETE INBOX")) == b"NO [CANNOT]"
    assert status_of(raw.cmd("DELETE Nope")) == b"NO [NONEXISTENT]"
    assert status_of(raw.cmd("RENAME A C/D")) == b"OK"  # children follow, parents made
    assert _names(raw.cmd('LIST "" "C*"')) == [b'"C"', b'"C/D"', b'"C/D/B"']
    assert status_of(raw.cmd("RENAME C/D Sent")) == b"NO [ALREADYEXISTS]"
    assert status_of(raw.cmd("RENAME C C/X")) == b"NO [CANNOT]"
    assert status_of(raw.cmd("RENAME Missing Z")) == b"NO [NONEXISTENT]"
    assert status_of(raw.cmd("DELETE C/D/B")) == b"OK"
    # RENAME INBOX moves the messages and leaves INBOX empty (RFC 9051 6.3.6).
    assert status_of(raw.cmd("RENAME INBOX Old")) == b"OK"
    assert raw.cmd("STATUS INBOX (MESSAGES)")[0] == b'* STATUS "INBOX" (MESSAGES 0)'
    assert raw.cmd("STATUS Old (MESSAGES)")[0] == b'* STATUS "Old" (MESSAGES 1)'
    # Subscriptions.
    assert status_of(raw.cmd("SUBSCRIBE Old")) == b"OK"
    assert status_of(raw.cmd("SUBSCRIBE Nope")) == b"NO [NONEXISTENT]"
    lsub = raw.cmd('LSUB "" "*"')
    assert b'* LSUB () "/" "Old"' in lsub
    assert status_of(raw.cmd("UNSUBSCRIBE Old")) == b"OK"
    assert b'"Old"' not in b"".join(raw.cmd('LSUB "" "*"'))
    # RFC 3501 6.3.9: "%" stops at the unsubscribed parent of a subscribed child, \Noselect.
    raw.cmd("CREATE Lists/Python")
    raw.cmd("SUBSCRIBE Lists/Python")
    raw.cmd("UNSUBSCRIBE Lists")
    top = raw.cmd('LSUB "" "%"')
    assert b'* LSUB (\\Noselect) "/" "Lists"' in top
    assert b'"Lists/Python"' not in b"".join(top)
    every = b"".join(raw.cmd('LSUB "" "*"'))
    assert b'* LSUB () "/" "Lists/Python"' in every and b'"Lists"\r\n' not in every


def test_subscription_outlives_delete_and_follows_rename(mail_server: RunningServer) -> None:
    """RFC 9051 6.3.7: DELETE must not drop the name from the subscription list; LIST
    (SUBSCRIBED) shows it \\NonExistent (RFC 5258 5.3), UNSUBSCRIBE still removes it. A
    renamed mailbox keeps its subscription under the new name."""
    raw = Raw(mail_server)
    raw.login()
    raw.cmd("CREATE Projects/Old")
    raw.cmd("SUBSCRIBE Projects/Old")
    assert status_of(raw.cmd("DELETE Projects/Old")) == b"OK"
    lines = raw.cmd('LIST (SUBSCRIBED) "" "Projects/*"')
    assert lines[0] == b'* LIST (\\NonExistent \\Subscribed) "/" "Projects/Old"'
    assert b'* LSUB () "/" "Projects/Old"' in raw.cmd('LSUB "" "*"')
    assert b"Projects/Old" not in b"".join(raw.cmd('LIST "" "*"'))  # not a mailbox
    raw.cmd("CREATE Projects/Old")  # back again: subscribed as before
    assert b'\\Subscribed' in raw.cmd('LIST "" "Projects/Old" RETURN (SUBSCRIBED)')[0]
    raw.cmd("DELETE Projects/Old")
    assert status_of(raw.cmd("UNSUBSCRIBE Projects/Old")) == b"OK"
    assert b"Projects/Old" not in b"".join(raw.cmd('LSUB "" "*"'))
    raw.cmd("CREATE Work/Plans")
    raw.cmd("SUBSCRIBE Work")
    raw.cmd("SUBSCRIBE Work/Plans")
    assert status_of(raw.cmd("RENAME Work Job")) == b"OK"
    subscribed = b"".join(raw.cmd('LSUB "" "*"'))
    assert b'"Job"' in subscribed and b'"Job/Plans"' in subscribed
    assert b'"Work' not in subscribed


def test_list_extended_and_status(mail_server: RunningServer) -> None:
    deliver(mail_server, message("one"))
    deliver(mail_server, message("two"))
    raw = Raw(mail_server)
    raw.login()
    raw.cmd("CREATE Parent/Child")
    raw.cmd("SUBSCRIBE Parent/Child")
    raw.cmd("UNSUBSCRIBE Archive")  # mailboxes start subscribed
    raw.cmd("UNSUBSCRIBE Parent")
    lines = raw.cmd('LIST (SUBSCRIBED) "" "*"')
    assert _names(lines) == [
        b'"INBOX"', b'"Drafts"', b'"Junk"', b'"Parent/Child"', b'"Sent"', b'"Trash"'
    ]
    assert all(b"\\Subscribed" in line for line in lines[:-1])
    lines = raw.cmd('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
    assert b'* LIST (\\HasChildren) "/" "Parent" ("CHILDINFO" ("SUBSCRIBED"))' in lines
    lines = raw.cmd('LIST (SPECIAL-USE) "" "*"')
    assert set(_names(lines)) == {b'"Sent"', b'"Drafts"', b'"Trash"', b'"Junk"', b'"Archive"'}
    lines = raw.cmd(
        'LIST "" ("INBOX" "Junk") RETURN (SUBSCRIBED CHILDREN STATUS (MESSAGES UNSEEN))'
    )
    assert lines[0] == b'* LIST (\\HasNoChildren \\Subscribed) "/" "INBOX"'
    assert lines[1] == b'* STATUS "INBOX" (MESSAGES 2 UNSEEN 2)'
    assert lines[2] == b'* LIST (\\HasNoChildren \\Junk \\Subscribed) "/" "Junk"'
    assert status_of(raw.cmd('LIST (BOGUS) "" "*"')) == b"BAD"
    lines = raw.cmd(
        "STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN DELETED SIZE HIGHESTMODSEQ "
        "APPENDLIMIT)"
    )
    assert lines[0].startswith(b'* STATUS "INBOX" (MESSAGES 2 RECENT 2 UIDNEXT 3 UIDVALIDITY ')
    assert b" UNSEEN 2 DELETED 0 SIZE " in lines[0] and b"APPENDLIMIT 26214400)" in lines[0]
    assert status_of(raw.cmd("STATUS Nope (MESSAGES)")) == b"NO [NONEXISTENT]"
    assert status_of(raw.cmd("STATUS INBOX (BOGUS)")) == b"BAD"


def test_namespace(mail_server: RunningServer) -> None:
    client = connect(mail_server)
    assert ok(client.namespace()) == [b'(("" "/")) NIL NIL']


def test_modified_utf7_names_for_rev1(mail_server: RunningServer) -> None:
    raw = Raw(mail_server)
    raw.login()
    assert status_of(raw.cmd('CREATE "R&AOk-sum&AOk-"')) == b"OK"  # "Résumé"
    assert b'"R&AOk-sum&AOk-"' in b"".join(raw.cmd('LIST "" "R*"'))
    assert status_of(raw.cmd('CREATE "Bad&Name"')) == b"NO [CANNOT]"  # not valid mUTF-7
    assert status_of(raw.cmd('CREATE "A &- B"')) == b"OK"
    assert b'"A &- B"' in b"".join(raw.cmd('LIST "" "A*"'))
    # A rev2 session sees (and uses) the same mailbox in UTF-8.
    rev2 = Raw(mail_server)
    rev2.login()
    assert rev2.cmd("ENABLE IMAP4rev2")[0] == b"* ENABLED IMAP4rev2"
    names = b"".join(rev2.cmd('LIST "" "*"'))
    assert '"Résumé"'.encode() in names and b'"A & B"' in names
    assert status_of(rev2.cmd('CREATE "Ünïcode/日本"'.encode())) == b"OK"
    assert b'"&ANw-n&AO8-code/&ZeVnLA-"' in b"".join(raw.cmd('LIST "" "*"'))


@pytest.mark.parametrize(
    "name",
    ["../escape", "a/../b", "/absolute", "a//b", "./x", '"tab\there"', "{3}\r\na\0b", "x*", "y%z"],
)
def test_mailbox_names_that_escape_are_refused(mail_server: RunningServer, name: str) -> None:
    raw = Raw(mail_server)
    raw.login()
    if name.startswith("{3}"):
        raw.send(b"a1 CREATE {3}\r\n")
        line = raw.readline()
        if line.startswith(b"+"):
            raw.send(b"a\0b\r\n")
            lines = raw.until("a1")
        else:
            lines = [line]
        assert status_of(lines) in (b"NO [CANNOT]", b"BAD")
        return
    lines = raw.cmd(f"CREATE {name}")
    assert status_of(lines) in (b"NO [CANNOT]", b"BAD"), lines
    assert b"escape" not in b"".join(raw.cmd('LIST "" "*"'))


def test_quota(mail_server: RunningServer) -> None:
    raw = Raw(mail_server)
    raw.login()
    assert raw.cmd("GETQUOTAROOT INBOX")[0] == b'* QUOTAROOT "INBOX"'
    mail_server.run(mail_server.services.store.set_quota(ALICE, 10 * 1024 * 1024, 100))
    deliver(mail_server, message("q", body="x" * 3000))
    lines = raw.cmd("GETQUOTAROOT INBOX")
    assert lines[0] == b'* QUOTAROOT "INBOX" ""'
    assert lines[1] == b'* QUOTA "" (STORAGE 4 10240 MESSAGE 1 100)'
    assert raw.cmd('GETQUOTA ""')[0] == b'* QUOTA "" (STORAGE 4 10240 MESSAGE 1 100)'
    assert status_of(raw.cmd('GETQUOTA "other"')) == b"NO [NONEXISTENT]"
    assert status_of(raw.cmd('SETQUOTA "" (STORAGE 1)')) == b"NO [NOPERM]"
    # Over quota: APPEND and COPY are refused with OVERQUOTA, nothing stored.
    mail_server.run(mail_server.services.store.set_quota(ALICE, 0, 1))
    lines = raw.cmd(b"APPEND INBOX {5+}\r\nhello")
    assert status_of(lines) == b"NO [OVERQUOTA]"
    raw.cmd("SELECT INBOX")
    assert status_of(raw.cmd("COPY 1 Archive")) == b"NO [OVERQUOTA]"
    # RFC 9208 4.2.2: what an EXPUNGE would give back, in the units of STORAGE.
    assert raw.cmd("STATUS INBOX (DELETED DELETED-STORAGE)")[0] == \
        b'* STATUS "INBOX" (DELETED 0 DELETED-STORAGE 0)'
    raw.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert raw.cmd("STATUS INBOX (DELETED DELETED-STORAGE)")[0] == \
        b'* STATUS "INBOX" (DELETED 1 DELETED-STORAGE 4)'
