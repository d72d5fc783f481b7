"""The imapclient package against mailstead: the commands and extensions a typical
application uses, through a well-known client library."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.conftest import PASSWORD, RunningServer
from tests.imap.helpers import ALICE, deliver, message

imapclient = pytest.importorskip("imapclient")


def _client(server: RunningServer) -> imapclient.IMAPClient:
    client = imapclient.IMAPClient(
        "127.0.0.1", port=server.ports["imaps"], ssl=True, ssl_context=server.ssl_context(),
        timeout=30,
    )
    client.login(ALICE, PASSWORD)
    return client


def test_imapclient_tour(mail_server: RunningServer) -> None:
    deliver(mail_server, message("hello"))
    c = _client(mail_server)
    caps = c.capabilities()
    for cap in (b"IMAP4REV1", b"IDLE", b"UIDPLUS", b"MOVE", b"CONDSTORE", b"QRESYNC",
                b"SPECIAL-USE", b"NAMESPACE", b"QUOTA", b"ESEARCH", b"LIST-STATUS"):
        assert cap in caps, cap
    server_id = c.id_({"name": "imapclient"})[0]
    assert dict(zip(server_id[::2], server_id[1::2], strict=True))[b"name"] == b"mailstead"
    assert c.namespace().personal == (("", "/"),)
    folders = {name: flags for flags, _sep, name in c.list_folders()}
    assert b"\\Sent" in folders["Sent"]
    assert c.find_special_folder(imapclient.imapclient.SENT) == "Sent"
    c.create_folder("Projects/Ünïcode")  # imapclient encodes modified UTF-7
    assert "Projects/Ünïcode" in [name for _f, _s, name in c.list_folders()]
    c.rename_folder("Projects/Ünïcode", "Projects/Renamed")
    c.subscribe_folder("Projects/Renamed")
    assert "Projects/Renamed" in [n for _f, _s, n in c.list_sub_folders()]
    status = c.folder_status("INBOX", ["MESSAGES", "UIDNEXT", "UNSEEN"])
    assert status[b"MESSAGES"] == 1 and status[b"UIDNEXT"] == 2

    info = c.select_folder("INBOX")
    assert info[b"EXISTS"] == 1 and info[b"UIDNEXT"] == 2
    uid = c.append("INBOX", message("appended"), flags=[imapclient.SEEN],
                   msg_time=datetime(2024, 3, 4, 5, 6, 7))
    assert b"APPENDUID" in uid
    c.noop()
    uids = c.search(["ALL"])
    assert uids == [1, 2]
    assert c.search(["SEEN"]) == [2]
    assert c.search(["SUBJECT", "hello"]) == [1]
    data = c.fetch(uids, ["FLAGS", "RFC822.SIZE", "ENVELOPE", "BODY.PEEK[HEADER]",
                          "INTERNALDATE", "BODYSTRUCTURE"])
    assert data[1][b"ENVELOPE"].subject == b"hello"
    assert b"Subject: appended" in data[2][b"BODY[HEADER]"]
    assert data[2][b"INTERNALDATE"].year == 2024

    c.add_flags([1], [imapclient.FLAGGED, b"$Label1"])
    assert set(c.get_flags([1])[1]) >= {b"\\Flagged", b"$Label1"}
    c.remove_flags([1], [b"$Label1"])
    c.copy([1], "Archive")
    c.move([2], "Trash")
    assert c.search(["ALL"]) == [1]
    c.delete_messages([1])
    c.uid_expunge([1])
    assert c.search(["ALL"]) == []
    c.unselect_folder()
    assert c.folder_status("Archive", ["MESSAGES"])[b"MESSAGES"] == 1
    assert c.folder_status("Trash", ["MESSAGES"])[b"MESSAGES"] == 1
    c.delete_folder("Projects/Renamed")
    quota_roots = c.get_quota_root("INBOX")
    assert quota_roots[0].mailbox == "INBOX"
    c.logout()


def test_imapclient_condstore_and_enable(mail_server: RunningServer) -> None:
    deliver(mail_server, message("x"))
    c = _client(mail_server)
    assert c.enable("CONDSTORE") == [b"CONDSTORE"]
    info = c.select_folder("INBOX")
    modseq = info[b"HIGHESTMODSEQ"]
    c.add_flags([1], [imapclient.SEEN])
    changed = c.fetch([1], ["FLAGS"], modifiers=[f"CHANGEDSINCE {modseq}"])
    assert changed[1][b"MODSEQ"][0] > modseq
    c.logout()
