"""The IMAP session without sockets: byte transcripts of ImapSession driven through a
recording ClientIO, over the real mailbox service on a SQLite store in a temp directory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from mailstead import bootstrap
from mailstead.proto import imap_cmd_fetch
from mailstead.proto.imap_backend import LoginRefused
from mailstead.proto.imap_session import ImapSession, SessionSettings
from mailstead.services.mailbox import MailboxService
from mailstead.store.changes import ChangeBus
from mailstead.store.factory import make_blob_store, make_metadata_store
from mailstead.store.interfaces import Account, MetadataStore

USER = "alice@example.test"


class RecordingIO:
    def __init__(self, tls: bool = True) -> None:
        self.is_tls = tls
        self.peer_ip = "192.0.2.7"
        self.out = bytearray()
        self.lines: list[bytes] = []  # what the client "sends" when asked for a line

    def write(self, data: bytes) -> None:
        self.out += data

    async def drain(self) -> None:
        pass

    async def read_line(self) -> bytes:
        return self.lines.pop(0)

    async def start_tls(self) -> None:
        self.is_tls = True

    async def pause(self) -> None:
        pass

    async def idle_wait(self, wait_change: Callable[[], Awaitable[bool]] | None) -> bytes | None:
        return self.lines.pop(0)

    def take(self) -> bytes:
        data, self.out = bytes(self.out), bytearray()
        return data


class StoreAuth:
    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    async def login(self, user: str, password: str, ip: str) -> Account:
        account = await self.store.get_account(user)
        if account is None or password != "right":
            raise LoginRefused()
        return account


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[MetadataStore, MailboxService]]:
    cfg = bootstrap.build_config(tmp_path, {})
    bus = ChangeBus()
    store = make_metadata_store(cfg, bus)
    await store.open()
    await store.add_domain("example.test")
    await bootstrap.add_user(store, USER, "irrelevant-here")
    yield store, MailboxService(store, make_blob_store(cfg), bus, 1_000_000)
    await store.close()


def session(parts: tuple[MetadataStore, MailboxService], io: RecordingIO,
            plaintext_ok: bool = False, starttls: bool = False) -> ImapSession:
    store, mailboxes = parts
    settings = SessionSettings("mail.example.test", starttls, plaintext_ok, 1_000_000, 5, 1000)
    return ImapSession(StoreAuth(store), mailboxes, io, settings)


async def test_not_authenticated_transcript(parts: tuple[MetadataStore, MailboxService]) -> None:
    io = RecordingIO(tls=False)
    s = session(parts, io, starttls=True)
    assert s.greeting().startswith(b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ID ")
    assert b"STARTTLS LOGINDISABLED]" in s.greeting()
    await s.execute(b"a LOGIN alice@example.test right")
    assert io.take() == b"a NO [PRIVACYREQUIRED] Use STARTTLS first\r\n"
    await s.execute(b"b STARTTLS")
    assert io.take() == b"b OK Begin TLS negotiation now\r\n" and io.is_tls
    await s.execute(b"c LOGIN alice@example.test wrong")
    assert io.take() == b"c NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"
    await s.execute(b"d SELECT INBOX")
    assert io.take() == b"d BAD SELECT is not allowed in the not authenticated state\r\n"
    await s.execute(b"e LOGIN alice@example.test right")
    assert io.take().startswith(b"e OK [CAPABILITY IMAP4rev1 IMAP4rev2 ")


async def test_select_append_fetch_transcript(
    parts: tuple[MetadataStore, MailboxService],
) -> None:
    io = RecordingIO()
    s = session(parts, io)
    await s.execute(b"a LOGIN alice@example.test right")
    io.take()
    await s.execute(b"b APPEND INBOX (\\Flagged) {19}\r\nSubject: hi\r\n\r\nyo\r\n")
    assert io.take().startswith(b"b OK [APPENDUID ")
    await s.execute(b"c SELECT INBOX")
    lines = io.take().split(b"\r\n")
    assert lines[0] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)"
    assert lines[2:5] == [b"* 1 EXISTS", b"* 1 RECENT", b"* OK [UNSEEN 1] First unseen"]
    assert lines[-2] == b"c OK [READ-WRITE] Select completed"
    await s.execute(b"d FETCH 1 (FLAGS BODY[TEXT])")
    assert io.take() == (
        b"* 1 FETCH (FLAGS (\\Flagged \\Seen \\Recent) BODY[TEXT] {4}\r\nyo\r\n)\r\n"
        b"d OK Fetch completed\r\n"
    )
    io.lines = [b"DONE\r\n"]
    await s.execute(b"e IDLE")
    assert io.take() == b"+ idling\r\ne OK Idle completed\r\n"
    await s.execute(b"f LOGOUT")
    assert io.take() == b"* BYE Logging out\r\nf OK Logout completed\r\n" and s.logged_out


async def test_errors_count_towards_bye(parts: tuple[MetadataStore, MailboxService]) -> None:
    io = RecordingIO()
    s = session(parts, io)
    for n in range(4):
        await s.execute(b"x%d FROB" % n)
    assert not s.logged_out
    await s.execute(b"\x00\x01")
    assert io.take().endswith(b"* BAD Error in IMAP command: missing or invalid tag\r\n"
                              b"* BYE Too many invalid commands\r\n")
    assert s.logged_out


async def test_fetch_lines_kept_follow_flags_recent_and_items(
    parts: tuple[MetadataStore, MailboxService],
) -> None:
    """FETCH lines answered from the row are kept per row (imap_cmd_fetch._LINES): a second
    session without \\Recent, a flag change and other items each get their own line."""
    imap_cmd_fetch._LINES.clear()
    one, two = RecordingIO(), RecordingIO()
    a, b = session(parts, one), session(parts, two)
    for s, io in ((a, one), (b, two)):
        await s.execute(b"l LOGIN alice@example.test right")
        io.take()
    await a.execute(b"p APPEND INBOX () {19}\r\nSubject: hi\r\n\r\nyo\r\n")
    one.take()
    await a.execute(b"s SELECT INBOX")  # takes \Recent
    await b.execute(b"s SELECT INBOX")
    one.take(), two.take()
    answers = []
    for s, io in ((a, one), (a, one), (a, one), (b, two), (b, two)):
        await s.execute(b"f UID FETCH 1 (FLAGS RFC822.SIZE ENVELOPE)")
        answers.append(io.take())
    assert answers[0] == answers[1] == answers[2]  # the last from the kept line
    assert answers[0].startswith(b"* 1 FETCH (UID 1 FLAGS (\\Recent) RFC822.SIZE 19 ENVELOPE (")
    assert answers[3] == answers[4] == answers[0].replace(b"FLAGS (\\Recent)", b"FLAGS ()")
    kept = list(imap_cmd_fetch._LINES.values())
    assert [entry[2] for entry in kept] == [False]  # b's, in place of a's
    await b.execute(b"t UID STORE 1 +FLAGS.SILENT (\\Flagged)")
    two.take()
    await b.execute(b"f UID FETCH 1 (FLAGS RFC822.SIZE ENVELOPE)")
    assert two.take().startswith(b"* 1 FETCH (UID 1 FLAGS (\\Flagged) RFC822.SIZE 19 ")
    await a.execute(b"f UID FETCH 1 (FLAGS RFC822.SIZE ENVELOPE)")
    assert b"FLAGS (\\Flagged \\Recent) RFC822.SIZE 19 " in one.take()
    await a.execute(b"g UID FETCH 1 (RFC822.SIZE FLAGS)")
    assert one.take() == (b"* 1 FETCH (UID 1 RFC822.SIZE 19 FLAGS (\\Flagged \\Recent))\r\n"
                          b"g OK Fetch completed\r\n")
