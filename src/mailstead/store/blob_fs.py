"""Message files on disk: ``root/ab/<sha256>.eml``, one per distinct content.

A file is written once (temp file in the same directory, rename, then made durable) and never
changed, so a reader either finds the whole file or none. Reads check the SHA-256 against the
name: a file changed or truncated on disk is reported as corrupt, never served as good.
Synchronous: callers run these in a thread (``asyncio.to_thread``).

One level of 256 directories: they all exist after the first few hundred messages, so a put
never pays a directory creation (git's object store has the same shape; ext4's hashed
directories keep tens of thousands of entries cheap to look up). Stores written with the
earlier ``ab/cd/`` layout are moved over once, by ``upgrade_layout``.

Durability is a group commit: on Linux one ``syncfs`` makes every file (and new directory)
written before it durable, so puts running at the same time share one flush of the filesystem
instead of paying a file fsync and a directory fsync each. Elsewhere each put fsyncs its file
and directory. Either way ``put`` returns only once the file survives a power cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import fcntl
import hashlib
import itertools
import os
import re
import secrets
import struct
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from mailstead.core.errors import CorruptBlob, InvalidInput, NotFound

BLOB_ID = re.compile(r"^[0-9a-f]{64}$")
SUFFIX = ".eml"
LAYOUT_FILE = "LAYOUT"  # in the root: names the layout, so the upgrade check is one stat
LAYOUT = "ab/<sha256>.eml\n"
# Up to this size a file is written or read on the event loop: less than a thread hop costs;
# a larger one goes to a thread, so one big message never stalls the other sessions.
SMALL_BLOB = 128 * 1024
T = TypeVar("T")


async def by_size(size: int, work: Callable[..., T], *args: Any) -> T:
    """``work(*args)`` on a message file of ``size`` bytes (or several, in all): right here
    up to ``SMALL_BLOB``, in a thread beyond it."""
    if size <= SMALL_BLOB:
        return work(*args)
    return await asyncio.to_thread(work, *args)


_temp_numbers = itertools.count()  # next() on it is atomic under the GIL: safe across threads
# Random once per process: nodes sharing a blob directory may run under the same pid.
_TEMP_TAG = f"{os.getpid()}-{secrets.token_hex(4)}"


def _new_temp_tag() -> None:
    """A forked worker (supervisor.py) names its temp files apart from its siblings'."""
    global _TEMP_TAG
    _TEMP_TAG = f"{os.getpid()}-{secrets.token_hex(4)}"


os.register_at_fork(after_in_child=_new_temp_tag)


# Linux's per-file flags (chattr(1)): FS_IOC_GETFLAGS / FS_IOC_SETFLAGS, and 'T', the top of
# a directory hierarchy for the Orlov allocator of ext2/3/4.
_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_TOPDIR_FL = 0x00020000


def spread_subdirectories(directory: str | Path) -> bool:
    """Marks ``directory`` as the top of a hierarchy (``chattr +T``), so that ext4 places each
    directory made in it in a block group of its own choosing, with free inodes and blocks,
    rather than in its parent's; True if it took. Why for the message files: ext4 places a
    new file's inode in its directory's block group, and without a journal it scans past
    every inode deleted there in the last minute before it takes one (``recently_deleted``
    in ext4's ialloc.c). With the store in a busy group (a shared /tmp, a spool deleting its
    files), creating the file was 45% of the message-file helper's CPU with 100 KiB messages
    (issue 24, perf); in groups of their own, 35 us a file instead of 110-390. Nothing else
    changes: elsewhere (another filesystem, not our directory) the call fails, and nothing
    is spread."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        flags = struct.unpack("i", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, struct.pack("i", 0)))[0]
        if not flags & _FS_TOPDIR_FL:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", flags | _FS_TOPDIR_FL))
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def blob_id_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _syncfs_call() -> Callable[[int], int] | None:
    """libc's syncfs(2) (Linux), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call: Callable[[int], int] = libc.syncfs
    except (OSError, AttributeError):
        return None
    return call


class GroupSync:
    """Flushes a filesystem for many waiting threads at once (leader and followers).

    A thread that has written its file calls ``wait``; if no flush is running it runs one, and
    every thread that arrived before that flush began is covered by it. Threads arriving
    during a flush wait for the next, which one of them leads."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush
        self._cond = threading.Condition()
        self._arrived = 0  # tickets handed out
        self._durable = 0  # every ticket up to this one is durable
        # (first ticket, last ticket, error) of recent flushes that failed
        self._failed: deque[tuple[int, int, OSError]] = deque(maxlen=100)
        self._running = False

    def wait(self) -> None:
        with self._cond:
            self._arrived += 1
            ticket = self._arrived
            while self._durable < ticket:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                first, covers = self._durable + 1, self._arrived
                self._cond.release()
                error: OSError | None = None
                try:
                    self._flush()
                except OSError as exc:
                    error = exc
                finally:
                    self._cond.acquire()
                    self._running = False
                if error is not None:
                    self._failed.append((first, covers, error))
                self._durable = covers
                self._cond.notify_all()
            for start, end, failure in self._failed:
                if start <= ticket <= end:
                    raise OSError(failure.errno, f"flushing message files: {failure.strerror}")


class FsBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._root = str(self.root)
        self._spread = False  # spread_subdirectories was called on the root
        self._root_fd: int | None = None  # kept open for syncfs
        syncfs = _syncfs_call()
        self._group: GroupSync | None = None
        if syncfs is not None:
            self._group = GroupSync(lambda: self._syncfs(syncfs))

    def _syncfs(self, syncfs: Callable[[int], int]) -> None:
        # The root's descriptor is opened once and kept (a flush runs for every batch of
        # messages: a mkdir, an open and a close less each time).
        fd = self._root_fd
        if fd is None:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            weakref.finalize(self, os.close, fd)
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def path(self, blob_id: str) -> Path:
        return Path(self._path_text(blob_id))

    def _path_text(self, blob_id: str) -> str:
        if not BLOB_ID.match(blob_id):
            raise InvalidInput(f"not a blob id: {blob_id!r}")
        return f"{self._root}/{blob_id[:2]}/{blob_id}{SUFFIX}"

    def put(self, data: bytes) -> str:
        """Writes the message file; returns once it is durable."""
        blob_id = self.write(data)
        self.flush()
        return blob_id

    def flush(self) -> None:
        """Makes every file ``write`` returned before this call durable (one syncfs, shared
        with other threads flushing now); nothing to do where each write fsyncs itself."""
        if self._group is not None:
            self._group.wait()

    def write(self, data: bytes) -> str:
        """Puts the file in place; durable only after ``flush`` (at once without syncfs)."""
        # Plain strings and os calls on this path, not pathlib: a put runs thousands of times a
        # second, and every system call it saves is one less GIL hand-over among the threads.
        blob_id = blob_id_of(data)
        directory = f"{self._root}/{blob_id[:2]}"
        target = f"{directory}/{blob_id}{SUFFIX}"
        # No look for an existing copy first: renaming the same bytes over it costs less than
        # the failed open almost every put would make, repairs a torn copy left by a crash,
        # and gives the file a new time, which tells the sweeper of unreferenced files
        # (discard_unused) to spare it while the caller commits the rows that reference it.
        # A per-process tag and a counter make the name unique without asking the kernel for
        # random bytes on every put; O_EXCL still refuses any name that exists.
        temp = f"{directory}/.{blob_id}.{_TEMP_TAG}-{next(_temp_numbers)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(temp, flags, 0o600)  # 0600: mail is private
        except FileNotFoundError:  # first blob under this ab/: make the directories
            self._make_dirs(Path(directory))
            fd = os.open(temp, flags, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            # Rename first, then fsync: on ext4 the file's fsync then commits the rename in the
            # same journal transaction, so the directory fsync after it is cheap. Until put
            # returns nothing references the blob.
            os.replace(temp, target)
            if self._group is None:
                os.fsync(fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        finally:
            os.close(fd)
        if self._group is None:
            _fsync_dir(directory)  # POSIX: the directory entry is durable only after this
        return blob_id

    def get(self, blob_id: str) -> bytes:
        try:
            # os calls on a str path: pathlib and a buffered file object cost more than the
            # read of a small message file itself (FETCH reads thousands in one command).
            fd = os.open(self._path_text(blob_id), os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                data = os.read(fd, size + 1)
                if len(data) != size:  # a short read: on to the end (the hash decides)
                    chunks = [data]
                    while chunk := os.read(fd, 1 << 20):
                        chunks.append(chunk)
                    data = b"".join(chunks)
            finally:
                os.close(fd)
        except FileNotFoundError:
            raise NotFound(f"message blob {blob_id} is missing") from None
        reason = _mismatch(data, blob_id)
        if reason is not None:
            raise CorruptBlob(blob_id, reason)
        return data

    def verify(self, blob_id: str) -> str | None:
        try:
            self.get(blob_id)
        except NotFound:
            return "missing"
        except CorruptBlob as exc:
            return exc.reason
        return None

    def delete(self, blob_id: str) -> None:
        path = self.path(blob_id)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)

    def discard_unused(self, blob_id: str, grace_seconds: float) -> bool:
        """Deletes the file of a blob the metadata store no longer references, unless a put
        touched it within ``grace_seconds`` (a delivery of the same bytes about to commit).

        The file is first renamed aside, so a concurrent put either ran before (fresh time:
        the file is put back) or runs after (it finds no file and writes its own). Content is
        addressed by hash, so putting back over a newly written copy changes nothing."""
        path = self.path(blob_id)
        aside = path.with_name(f".{blob_id}.{secrets.token_hex(4)}.reap")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        if time.time() - aside.stat().st_mtime < grace_seconds:
            os.replace(aside, path)
            return False
        aside.unlink()
        _fsync_dir(path.parent)
        return True

    def exists(self, blob_id: str) -> bool:
        return self.path(blob_id).is_file()

    def iter_ids(self) -> Iterator[str]:
        for first in self._fan_dirs(self.root):
            for file in sorted(first.iterdir()):
                blob_id = _blob_id_named(file)
                if blob_id is not None:
                    yield blob_id

    def upgrade_layout(self) -> int:
        """Moves files of the earlier ``ab/cd/<sha256>.eml`` layout to ``ab/``, once; returns
        how many moved. A rename within one filesystem is atomic: a crash midway leaves every
        file in one place or the other, and the next run finishes the move."""
        marker = self.root / LAYOUT_FILE
        if marker.exists():
            return 0
        moved = 0
        self.root.mkdir(parents=True, exist_ok=True)
        for first in self._fan_dirs(self.root):
            for second in self._fan_dirs(first):
                # FileNotFoundError: another node sharing the directory moved it first.
                for file in second.iterdir():
                    with contextlib.suppress(FileNotFoundError):
                        if _blob_id_named(file) is not None:
                            os.replace(file, first / file.name)
                            moved += 1
                        else:  # a temp file of an interrupted put: nothing references it
                            file.unlink()
                _fsync_dir(first)
                with contextlib.suppress(FileNotFoundError):
                    second.rmdir()
            _fsync_dir(first)
        temp = self.root / f".{LAYOUT_FILE}.{_TEMP_TAG}.tmp"
        temp.write_text(LAYOUT)
        _fsync_path(temp)
        os.replace(temp, marker)
        _fsync_dir(self.root)
        return moved

    # -- helpers --

    @staticmethod
    def _fan_dirs(parent: Path) -> Iterator[Path]:
        """The two-hex-digit directories in ``parent``, sorted."""
        if not parent.is_dir():
            return
        for entry in sorted(parent.iterdir()):
            if entry.is_dir() and len(entry.name) == 2:
                yield entry

    def _make_dirs(self, directory: Path) -> None:
        """Creates missing directories, fsyncing each parent so the new entries survive."""
        missing = []
        d = directory
        while not d.is_dir():
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            if d.parent == self.root and not self._spread:
                self._spread = True  # once per process: the flag stays on the directory
                spread_subdirectories(self.root)
            try:
                d.mkdir()
            except FileExistsError:
                continue
            if self._group is None:  # else the put's filesystem flush covers it
                _fsync_dir(d.parent)


def _blob_id_named(file: Path) -> str | None:
    """The blob id a message file's name gives, None for any other file (temp files...)."""
    blob_id = file.name.removesuffix(SUFFIX)
    return blob_id if file.name.endswith(SUFFIX) and BLOB_ID.match(blob_id) else None


def _mismatch(data: bytes, blob_id: str) -> str | None:
    if blob_id_of(data) == blob_id:
        return None
    return f"SHA-256 mismatch ({len(data)} bytes on disk)"


def _fsync_path(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: str | Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
