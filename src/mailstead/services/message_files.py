"""Message files written and parsed by a helper process, made durable by one syncfs per batch.

Why a process and not a thread: a thread of ours takes the interpreter lock back after every
system call (open, write, rename, close, syncfs), and while the event loop is busy each of
those waits its turn. Measured with bench/smtp_ingest.py, a writer thread spent nine tenths of
its time waiting so, and a message spent most of its time between DATA and 250 in that queue.
The helper has an interpreter of its own: it writes the files, parses their envelope fields
and flushes them while the event loop goes on, and the event loop pays one pipe write per
message and one read per batch of answers.

Both pipes carry the same frames: a tag byte, a 4-byte big-endian length, then the payload.
To the helper: ``m`` and the message. From the helper, one per message and in the same order:
``+`` with the SHA-256 (64 hex digits) and the envelope fields (``marshal``: both ends run the
same interpreter, and it costs a tenth of JSON) once the file is durable, or ``-`` with the
reason.
The helper answers a batch only after the one flush that covers it (``FsBlobStore.flush``), so
a ``+`` means what ``FsBlobStore.put`` returning means. While it flushes, the next messages
gather in the pipe: that is the batching.

The helper ends when its input closes. If this process dies, even by SIGKILL, the kernel
closes the pipe: the helper finishes the batch in hand and exits. Files written for messages
nobody acknowledged are unreferenced, and the sweeper removes them like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import marshal
import os
import signal
import struct
import sys
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import cast

from mailstead.obs import log_event
from mailstead.proto.mime import parse_envelope_fields
from mailstead.store.blob_fs import FsBlobStore
from mailstead.store.interfaces import Envelope

_FRAME = struct.Struct(">cI")  # tag, then the length of the payload that follows
READ_SIZE = 1 << 20
STOP_TIMEOUT = 30.0  # seconds the helper gets to finish its batch when we stop


class WriterStopped(OSError):
    """The helper process went away before it answered: the file is not known to be durable."""


class MessageFileWriter:
    """``submit(data)`` returns (blob id, envelope fields) once the file is durable.

    The helper starts at the first submit, and again at the next submit after it died. (Two
    helpers, so that one writes while the other flushes, measured slower: the CPU they add
    costs more on two cores than the overlap gains.)"""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._helper: _Helper | None = None
        self._starting: asyncio.Future[_Helper] | None = None

    async def submit(self, data: bytes) -> tuple[str, Envelope]:
        helper = self._helper
        if helper is None:
            helper = await self._start()
        future: asyncio.Future[tuple[str, Envelope]] = asyncio.get_running_loop().create_future()
        helper.send(_FRAME.pack(b"m", len(data)) + data, future)
        return await future

    async def _start(self) -> _Helper:
        starting = self._starting
        if starting is None:
            starting = self._starting = asyncio.ensure_future(self._spawn())
        try:
            return await asyncio.shield(starting)
        finally:
            if starting.done() and self._starting is starting:
                self._starting = None

    async def _spawn(self) -> _Helper:
        loop = asyncio.get_running_loop()
        _transport, helper = await loop.subprocess_exec(
            lambda: _Helper(self), sys.executable, "-m", __name__, str(self.root),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None)
        self._helper = helper
        return helper

    def _lost(self, helper: _Helper) -> None:
        if self._helper is helper:
            self._helper = None

    async def close(self) -> None:
        """Lets the helper finish what it was sent, then waits for it to exit."""
        helper, self._helper = self._helper, None
        if helper is not None:
            await helper.stop()


class _Helper(asyncio.SubprocessProtocol):
    """Our end of one helper process: sends messages, settles their futures in order."""

    def __init__(self, owner: MessageFileWriter) -> None:
        self.owner = owner
        self.transport: asyncio.SubprocessTransport | None = None
        self.stdin: asyncio.WriteTransport | None = None
        self.unread = bytearray()
        self.waiting: deque[asyncio.Future[tuple[str, Envelope]]] = deque()
        self.stopping = False  # stop() was called: its exit is expected
        self.exited = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do the same as asyncio's but are not their subclasses: cast.
        self.transport = cast(asyncio.SubprocessTransport, transport)
        self.stdin = cast(asyncio.WriteTransport, self.transport.get_pipe_transport(0))

    def send(self, frame: bytes, future: asyncio.Future[tuple[str, Envelope]]) -> None:
        if self.stdin is None or self.stdin.is_closing():
            raise WriterStopped("the message file writer is stopping")
        self.waiting.append(future)
        self.stdin.write(frame)

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.unread += data
        for tag, payload in _take_frames(self.unread):
            self._answer(tag == b"+", payload)

    def _answer(self, ok: bool, payload: bytes) -> None:
        future = self.waiting.popleft()
        if future.done():
            return  # its caller was cancelled; the unreferenced file is swept later
        if not ok:
            future.set_exception(OSError(payload.decode("utf-8", "replace")))
            return
        blob_id = payload[:64].decode("ascii")
        future.set_result((blob_id, _envelope_from_bytes(payload[64:])))

    def connection_lost(self, exc: Exception | None) -> None:
        # Called once the process has exited and both pipes are read to the end, so every
        # answer it wrote has been taken before the futures still waiting are failed.
        self.owner._lost(self)
        if not self.stopping:
            code = self.transport.get_returncode() if self.transport is not None else None
            log_event("blobs.writer_exited", logging.ERROR, code=code, waiting=len(self.waiting))
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(WriterStopped("the message file writer stopped"))
        if not self.exited.done():
            self.exited.set_result(None)

    async def stop(self) -> None:
        self.stopping = True
        if self.stdin is not None:
            self.stdin.close()  # the helper reads the end of its input and exits
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), STOP_TIMEOUT)
        except TimeoutError:
            if self.transport is not None:
                with contextlib.suppress(ProcessLookupError):
                    self.transport.kill()
        if self.transport is not None:
            self.transport.close()


def _envelope_to_bytes(env: Envelope) -> bytes:
    date = None if env.date is None else env.date.isoformat()
    return marshal.dumps((env.subject, env.from_, env.to, env.cc, date, env.message_id,
                          env.in_reply_to))


def _envelope_from_bytes(data: bytes) -> Envelope:
    subject, from_, to, cc, date, message_id, in_reply_to = marshal.loads(data)
    return Envelope(subject, from_, to, cc, None if date is None else datetime.fromisoformat(date),
                    message_id, in_reply_to)


# -- the helper process ----------------------------------------------------------------------


def _take_frames(buffer: bytearray) -> list[tuple[bytes, bytes]]:
    """The complete (tag, payload) frames at the start of ``buffer``, removed from it (both
    ends read with this)."""
    frames = []
    pos = 0
    while len(buffer) - pos >= _FRAME.size:
        tag, length = _FRAME.unpack_from(buffer, pos)
        start = pos + _FRAME.size
        if len(buffer) - start < length:
            break
        frames.append((tag, bytes(buffer[start : start + length])))
        pos = start + length
    del buffer[:pos]
    return frames


def _failure(text: str) -> bytes:
    payload = text.encode("utf-8", "replace")
    return _FRAME.pack(b"-", len(payload)) + payload


def write_batch(blobs: FsBlobStore, batch: list[bytes]) -> bytes:
    """The answers for ``batch``, once its files are durable."""
    answers = []
    for data in batch:
        try:
            payload = blobs.write(data).encode() + _envelope_to_bytes(parse_envelope_fields(data))
            answers.append(_FRAME.pack(b"+", len(payload)) + payload)
        except Exception as exc:  # this file failed; the others of the batch go on
            answers.append(_failure(f"writing the message file: {exc}"))
    try:
        blobs.flush()
    except OSError as exc:  # nothing in this batch is known to be durable
        answers = [_failure(f"flushing message files: {exc}")] * len(answers)
    return b"".join(answers)


def serve(root: Path, stdin: int = 0, stdout: int = 1) -> None:
    # Ctrl-C and a service manager's SIGTERM reach the whole process group: the helper
    # leaves the stopping to its parent, which closes the pipe once nothing is in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    blobs = FsBlobStore(root)
    buffer = bytearray()
    while chunk := os.read(stdin, READ_SIZE):
        buffer += chunk
        batch = [message for _tag, message in _take_frames(buffer)]
        if batch:
            answer = memoryview(write_batch(blobs, batch))
            while answer:
                answer = answer[os.write(stdout, answer) :]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m mailstead.services.message_files BLOB_DIR (the server starts "
                 "this itself)")
    serve(Path(sys.argv[1]))
