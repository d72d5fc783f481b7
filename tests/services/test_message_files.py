"""Message files written by the helper process: durable, parsed, batched, and no answer
without a file behind it when the helper fails or dies."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailstead.services.message_files import MessageFileWriter, WriterStopped, write_batch
from mailstead.store.blob_fs import FsBlobStore

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

    blobs = Failing(tmp_path / "blobs")
    lines = write_batch(blobs, [MESSAGE, b"refused", MESSAGE + b"2"]).splitlines()
    assert [line[:1] for line in lines] == [b"+", b"-", b"+"]
    assert b"No space left on device" in lines[1]
    fail_flush = True
    lines = write_batch(blobs, [MESSAGE + b"3", MESSAGE + b"4"]).splitlines()
    assert lines == [b"-flushing message files: [Errno 5] Input/output error"] * 2


async def test_a_dead_helper_fails_what_it_did_not_answer_and_is_restarted(
        tmp_path: Path) -> None:
    writer = MessageFileWriter(tmp_path / "blobs")
    try:
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
    await writer.close()
    assert helper.exited.done() and helper.transport.get_returncode() == 0
