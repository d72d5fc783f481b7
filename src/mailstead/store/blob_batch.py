"""Message files written in batches by one thread, made durable by one flush per batch.

Many SMTP sessions finish their DATA at the same moment. Handing each file to a thread pool
costs a thread hop, a wake-up of the event loop and GIL hand-overs per message, and those
cost more CPU than writing a 4 KiB file. Here every file waiting when the writer thread is
free goes into the next batch: the thread writes them all, flushes once (``FsBlobStore.flush``:
one syncfs), and the event loop is woken once for the whole batch. A caller's ``submit``
returns only after the flush that covers its file, so the durability contract of
``FsBlobStore.put`` holds for every file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from mailstead.store.interfaces import BlobStore

T = TypeVar("T")

MAX_BATCH = 256  # files in one batch: bounds the wait of the last one in it


class BlobBatcher(Generic[T]):
    """``submit(data)`` runs ``write(data)`` (which puts a file with ``blobs.write`` and may do
    more work on the bytes, such as parsing) in the writer thread, then waits for the flush."""

    def __init__(self, blobs: BlobStore, write: Callable[[bytes], T]) -> None:
        self.blobs = blobs
        self._write = write
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="blob-batch")
        self._waiting: list[tuple[bytes, asyncio.Future[T]]] = []
        self._runner: asyncio.Task[None] | None = None

    def close(self) -> None:
        self._thread.shutdown(wait=False)

    async def submit(self, data: bytes) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._waiting.append((data, future))
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run())
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                outcomes = await loop.run_in_executor(
                    self._thread, self._write_batch, [data for data, _ in batch])
            except BaseException as exc:  # the thread pool is gone (the server stops)
                outcomes = [exc] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue  # its caller was cancelled; an unreferenced file is swept later
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    def _write_batch(self, items: list[bytes]) -> list[T | BaseException]:
        outcomes: list[T | BaseException] = []
        for data in items:
            try:
                outcomes.append(self._write(data))
            except Exception as exc:  # this file failed; the others of the batch go on
                outcomes.append(exc)
        try:
            self.blobs.flush()
        except OSError as exc:  # nothing in this batch is known to be durable
            return [o if isinstance(o, BaseException) else exc for o in outcomes]
        return outcomes
