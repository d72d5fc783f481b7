"""Message files written by the helper process: durable, parsed, batched, and no answer
without a file behind it when the helper fails or dies."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailstead.core.errors import QuotaExceeded
from mailstead.core.models import Account
from mailstead.obs import EVENT_COUNTS
from mailstead.services.message_file_helper import _Rows, serve, start_shared, write_batch
from mailstead.services.message_file_wire import FRAME, take_frames
from mailstead.services.message_files import (
    MessageFileWriter,
    WriterStopped,
    _Helper,
    _SharedHelperConnection,
)
from mailstead.store.blob_fs import SMALL_BLOB, FsBlobStore
from mailstead.store.changes import ChangeBus
from mailstead.store.interfaces import (
    Delivery,
    NewMessage,
    QueueEntry,
    SpamVerdictRow,
    SystemFlag,
)
from mailstead.store.sqlite import CHECKPOINT_EVERY, SqliteStore

MESSAGE = (b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\n"
           b"Subject: =?utf-8?q?caf=C3=A9?=\r\nDate: Mon, 1 Jan 2024 10:00:00 +0200\r\n"
           b"Message-ID: <1@example.test>\r\n\r\nHello.\r\n")


async def test_files_are_durable_parsed_and_batched(tmp_path: Path) -> None:
    writer = MessageFileWriter(tmp_path / "blobs")
    try:
        datas = [MESSAGE + str(n).encode() for n in range(40)]
        answers = await asyncio.gather(*(writer.submit(d) for d in datas))
        blobs = FsBlobStore(tmp_path / "blobs")
        assert [blobs.get(blob_id) for blob_id, _ in answers] == datas
        _, env = answers[0]
        assert (env.subject, env.from_, env.to) == ("café", "Alice <alice@example.test>",
                                                     "bob@example.test")
        assert env.date == datetime(2024, 1, 1, 8, 0, tzinfo=UTC)
        assert env.message_id == "<1@example.test>"
    finally:
        await writer.close()


def test_a_failed_file_fails_alone_and_a_failed_flush_fails_its_batch(tmp_path: Path) -> None:
    """What the helper answers for one batch (run here, in this process)."""
    fail_flush = False

    class Failing(FsBlobStore):
        def write(self, data: bytes) -> str:
            if data == b"refused":
                raise OSError(28, "No space left on device")
            return super().write(data)

        def flush(self) -> None:
            if fail_flush:
                raise OSError(5, "Input/output error")
            super().flush()

    class Answers(_Helper):
        def __init__(self) -> None:
            self.unread = bytearray()
            self.got: list[tuple[bool, bytes]] = []

        def _answer(self, tag: bytes, payload: bytes) -> None:
            self.got.append((tag == b"+", payload))

    def answers(batch: list[bytes]) -> list[tuple[bool, bytes]]:
        reader = Answers()
        data = write_batch(blobs, [(b"m", message) for message in batch])
        for n in range(0, len(data), 7):  # answers split anywhere by the pipe
            reader.pipe_data_received(1, data[n : n + 7])
        return reader.got

    blobs = Failing(tmp_path / "blobs")
    got = answers([MESSAGE, b"refused", MESSAGE + b"2"])
    assert [ok for ok, _ in got] == [True, False, True]
    assert got[1][1] == b"writing the message file: [Errno 28] No space left on device"
    fail_flush = True
    got = answers([MESSAGE + b"3", MESSAGE + b"4"])
    assert got == [(False, b"flushing message files: [Errno 5] Input/output error")] * 2


async def test_a_dead_helper_fails_what_it_did_not_answer_and_is_restarted(
        tmp_path: Path) -> None:
    writer = MessageFileWriter(tmp_path / "blobs")
    try:
        exits = EVENT_COUNTS["blobs.writer_exited"]
        first_id, _ = await writer.submit(MESSAGE)
        helper = writer._helper
        assert helper is not None and helper.transport is not None
        pid = helper.transport.get_pid()
        os.kill(pid, signal.SIGSTOP)  # it reads nothing more until it is killed
        waiting = asyncio.ensure_future(writer.submit(MESSAGE + b"lost"))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WriterStopped):
            await asyncio.wait_for(waiting, 10)
        assert EVENT_COUNTS["blobs.writer_exited"] == exits + 1  # logged for the operator
        again_id, _ = await writer.submit(MESSAGE + b"again")  # a new helper takes over
        blobs = FsBlobStore(tmp_path / "blobs")
        assert blobs.get(first_id) == MESSAGE and blobs.get(again_id) == MESSAGE + b"again"
    finally:
        await writer.close()


async def test_the_helper_ends_with_its_input(tmp_path: Path) -> None:
    """close() lets the helper finish and exit; it ignores the Ctrl-C its group receives."""
    writer = MessageFileWriter(tmp_path / "blobs")
    await writer.submit(MESSAGE)
    helper = writer._helper
    assert helper is not None and helper.transport is not None
    os.kill(helper.transport.get_pid(), signal.SIGINT)
    await writer.submit(MESSAGE + b"after ctrl-c")
    exits = EVENT_COUNTS["blobs.writer_exited"]
    await writer.close()
    assert helper.exited.done() and helper.transport.get_returncode() == 0
    assert EVENT_COUNTS["blobs.writer_exited"] == exits  # an asked-for exit is no error


def test_messages_waiting_together_share_one_flush(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The helper's loop, run here: 30 messages already in the pipe when it reads are written
    and answered after one flush, every file in place when it runs."""
    flushes: list[int] = []

    def counting_flush(self: FsBlobStore) -> None:
        flushes.append(len(list(self.iter_ids())))

    monkeypatch.setattr(FsBlobStore, "flush", counting_flush)
    to_helper, from_us = os.pipe()
    to_us, from_helper = os.pipe()
    datas = [MESSAGE + str(n).encode() for n in range(30)]
    os.write(from_us, b"".join(FRAME.pack(b"m", len(d)) + d for d in datas))
    os.close(from_us)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        serve(tmp_path / "blobs", to_helper, from_helper)
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
        os.close(to_helper)
        os.close(from_helper)
    answers = bytearray(os.read(to_us, 1 << 20))
    os.close(to_us)
    assert flushes == [30]
    assert [tag for tag, _ in take_frames(answers)] == [b"+"] * 30


@pytest.fixture
async def with_rows(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, MessageFileWriter]]:
    """A SQLite store (domain example.test) and a writer whose helper commits its rows."""
    store = SqliteStore(tmp_path / "meta.db", ChangeBus())
    await store.open()
    writer = MessageFileWriter(tmp_path / "blobs", store.path)
    try:
        await store.add_domain("example.test")
        yield store, writer
    finally:
        await writer.close()
        await store.close()


async def _alice_and_bob_with_room_for_one(store: SqliteStore) -> tuple[Account, int, int]:
    """Two accounts, bob's quota one message: (bob, alice's INBOX id, bob's INBOX id)."""
    alice = await store.add_account("alice@example.test", "x")
    bob = await store.add_account("bob@example.test", "x", quota_messages=1)
    boxes = [await store.get_mailbox(a.id, "INBOX") for a in (alice, bob)]
    alice_inbox, bob_inbox = (box.id for box in boxes if box is not None)
    return bob, alice_inbox, bob_inbox


async def test_deliveries_commit_their_rows_after_the_flush_and_a_refused_one_fails_alone(
        tmp_path: Path, with_rows: tuple[SqliteStore, MessageFileWriter]) -> None:
    """With a SQLite store the helper commits the rows too: every message of the batch lands
    with its file in place, and the one over its quota is refused with QuotaExceeded."""
    store, writer = with_rows
    bob, alice_inbox, bob_inbox = await _alice_and_bob_with_room_for_one(store)
    now = datetime.now(UTC)

    def to(mailbox_id: int, data: bytes) -> list[Delivery]:
        return [Delivery(mailbox_id, NewMessage(blob_id="", size=len(data),
                                                internal_date=now))]

    datas = [MESSAGE + str(n).encode() for n in range(6)]
    outcomes = await asyncio.gather(
        *(writer.deliver(d, to(alice_inbox, d), None) for d in datas[:4]),
        writer.deliver(datas[4], to(bob_inbox, datas[4]), None),
        writer.deliver(datas[5], to(bob_inbox, datas[5]), None),  # bob's second: over quota
        return_exceptions=True)
    assert isinstance(outcomes[5], QuotaExceeded)
    delivered = [o for o in outcomes[:5] if not isinstance(o, BaseException)]
    assert len(delivered) == 5
    blobs = FsBlobStore(tmp_path / "blobs")
    for (blob_id, stored, touched), data in zip(delivered, datas, strict=False):
        assert blobs.get(blob_id) == data
        assert stored[0].blob_id == blob_id and stored[0].envelope.subject == "café"
        assert touched == {stored[0].mailbox_id}
    assert [m.uid for m in await store.get_messages(alice_inbox)] == [1, 2, 3, 4]
    assert len(await store.get_messages(bob_inbox)) == 1
    assert await store.quota_usage(bob.id) == (len(datas[4]), 1)


async def test_spam_log_rows_commit_with_their_message_and_never_fail_it(
        with_rows: tuple[SqliteStore, MessageFileWriter]) -> None:
    """The spam log rows of a delivery commit in the helper's transaction: those of a stored
    message land, those of a refused one do not, and a log that cannot be written costs only
    its rows, never the message."""
    store, writer = with_rows
    _bob, alice_inbox, bob_inbox = await _alice_and_bob_with_room_for_one(store)
    now = datetime.now(UTC)

    def to(mailbox_id: int) -> list[Delivery]:
        return [Delivery(mailbox_id, NewMessage(blob_id="", size=len(MESSAGE),
                                                internal_date=now))]

    def logged(who: str, score: float) -> list[SpamVerdictRow]:
        return [SpamVerdictRow(now, who, score, ("TEST_RULE",), "inbox")]

    outcomes = await asyncio.gather(
        writer.deliver_parts([(MESSAGE + b"1", to(alice_inbox))], None, 0,
                             logged("alice@example.test", 1.0)),
        writer.deliver_parts([(MESSAGE + b"2", to(bob_inbox))], None, 0,
                             logged("bob@example.test", 2.0)),
        writer.deliver_parts([(MESSAGE + b"3", to(bob_inbox))], None, 0,  # over bob's quota
                             logged("bob@example.test", 3.0)),
        return_exceptions=True)
    assert isinstance(outcomes[2], QuotaExceeded)
    recent = await store.recent_spam_verdicts(10)
    assert sorted((r.recipient, r.score) for r in recent) == [
        ("alice@example.test", 1.0), ("bob@example.test", 2.0)]
    assert await store.spam_verdict_counts() == {"inbox": 2}

    # The log's table gone (a stand-in for any failure of its own): the mail still lands.
    await store._write(lambda db: db.run("DROP TABLE spam_verdicts"))
    blob_ids, stored, _touched = await writer.deliver_parts(
        [(MESSAGE + b"4", to(alice_inbox))], None, 0, logged("alice@example.test", 4.0))
    assert stored[0].blob_id == blob_ids[0]
    assert [m.uid for m in await store.get_messages(alice_inbox)] == [1, 2]


async def test_the_helper_and_the_store_writer_take_turns(
        with_rows: tuple[SqliteStore, MessageFileWriter]) -> None:
    """The helper's connection is a second writer beside the store's own: deliveries and flag
    changes made at the same time all commit, none refused as locked."""
    store, writer = with_rows
    alice = await store.add_account("alice@example.test", "x")
    inbox = await store.get_mailbox(alice.id, "INBOX")
    assert inbox is not None
    now = datetime.now(UTC)

    async def deliver(n: int) -> None:
        data = MESSAGE + str(n).encode()
        await writer.deliver(data, [Delivery(inbox.id, NewMessage(
            blob_id="", size=len(data), internal_date=now))], None)

    await asyncio.gather(*(deliver(n) for n in range(20)))
    await asyncio.gather(
        *(deliver(n) for n in range(20, 60)),
        *(store.update_flags(inbox.id, [uid], "add", SystemFlag.SEEN)
          for uid in range(1, 21)))
    messages = await store.get_messages(inbox.id)
    assert [m.uid for m in messages] == list(range(1, 61))
    assert [m.uid for m in messages if m.flags & SystemFlag.SEEN] == list(range(1, 21))


async def test_workers_share_one_helper_that_batches_them_together(
        tmp_path: Path, with_rows: tuple[SqliteStore, MessageFileWriter]) -> None:
    """The supervisor's shared helper (serve_shared): two writers (two workers) each hear their
    own answers, their rows commit, and when the helper dies what it did not answer fails,
    while the next request reaches the helper started again at the same socket."""
    store, _own = with_rows
    alice = await store.add_account("alice@example.test", "x")
    inbox = await store.get_mailbox(alice.id, "INBOX")
    assert inbox is not None
    now = datetime.now(UTC)
    path = tmp_path / "files"
    shared = start_shared(tmp_path / "blobs", store.path, path)
    writers = [MessageFileWriter(tmp_path / "blobs", store.path, path) for _ in range(2)]

    def to(data: bytes) -> list[Delivery]:
        return [Delivery(inbox.id, NewMessage(blob_id="", size=len(data), internal_date=now))]

    try:
        datas = [MESSAGE + str(n).encode() for n in range(40)]
        answers = await asyncio.gather(*(writers[n % 2].deliver(d, to(d), None)
                                         for n, d in enumerate(datas)))
        blobs = FsBlobStore(tmp_path / "blobs")
        for (blob_id, stored, _touched), data in zip(answers, datas, strict=True):
            assert blobs.get(blob_id) == data and stored[0].blob_id == blob_id
        assert len(await store.get_messages(inbox.id)) == 40
        assert all(isinstance(w._helper, _SharedHelperConnection) for w in writers)
        # A message above SMALL_BLOB is written by the worker in a thread, not on its loop.
        big = MESSAGE + b"y" * (2 * SMALL_BLOB)
        blob_id, stored, _touched = await writers[1].deliver(big, to(big), None)
        assert blobs.get(blob_id) == big and stored[0].blob_id == blob_id
        big_id, _envelope = await writers[0].submit(big + b"2")
        assert blobs.get(big_id) == big + b"2"
        assert len(await store.get_messages(inbox.id)) == 41

        os.kill(shared.pid, signal.SIGSTOP)
        waiting = asyncio.ensure_future(writers[0].submit(MESSAGE + b"lost"))
        await asyncio.sleep(0.2)
        os.kill(shared.pid, signal.SIGKILL)
        with pytest.raises(WriterStopped):
            await asyncio.wait_for(waiting, 10)
        assert shared.process is not None
        shared.process.wait()
        shared.start()  # as the supervisor does
        again, _ = await writers[0].submit(MESSAGE + b"again")
        assert blobs.get(again) == MESSAGE + b"again"
    finally:
        for writer in writers:
            await writer.close()
        shared.stop()
    assert shared.process.returncode == 0  # it ended with its control pipe


async def test_the_helper_checkpoints_so_its_log_starts_over(tmp_path: Path) -> None:
    """The helper's connection checkpoints every CHECKPOINT_EVERY commits, between two of
    its transactions: the log then starts over instead of growing with every commit (each
    commit's fsync extending the file cost an ext4 journal commit, issue 24)."""
    store = SqliteStore(tmp_path / "meta.db", ChangeBus())
    await store.open()
    await store.add_domain("example.test")
    alice = await store.add_account("alice@example.test", "x")
    box = await store.get_mailbox(alice.id, "INBOX")
    await store.close()
    assert box is not None
    rows = _Rows(tmp_path / "meta.db")
    now = datetime.now(UTC)
    log = tmp_path / "meta.db-wal"

    def commits(count: int) -> None:
        for n in range(count):
            items: list[tuple[list[Delivery], QueueEntry | None, list[SpamVerdictRow]]] = [
                ([Delivery(box.id, NewMessage(blob_id=f"{n}-{i}", size=10,
                                              internal_date=now))], None, [])
                for i in range(3)]
            assert all(ok for ok, _value in rows.commit(items))
            rows.checkpoint()

    try:
        commits(CHECKPOINT_EVERY)
        first = log.stat().st_size
        commits(2 * CHECKPOINT_EVERY)
        assert log.stat().st_size <= first * 1.25  # not three times as long
    finally:
        rows.close()
