"""Message files: content-addressed, durable writes, corruption always detected."""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import time
from pathlib import Path

import pytest

from mailstead.core.errors import CorruptBlob, InvalidInput, NotFound
from mailstead.store import blob_fs
from mailstead.store.blob_fs import FsBlobStore

MESSAGE = b"From: a@example.test\r\nSubject: hi\r\n\r\nHello.\r\n"


@pytest.fixture
def blobs(tmp_path: Path) -> FsBlobStore:
    return FsBlobStore(tmp_path / "blobs")


def test_put_get_round_trip(blobs: FsBlobStore) -> None:
    blob_id = blobs.put(MESSAGE)
    assert blob_id == hashlib.sha256(MESSAGE).hexdigest()
    path = blobs.root / blob_id[:2] / f"{blob_id}.eml"
    assert path.read_bytes() == MESSAGE
    assert blobs.get(blob_id) == MESSAGE
    assert blobs.exists(blob_id)
    assert blobs.verify(blob_id) is None


def test_put_is_idempotent_and_leaves_no_temp_files(blobs: FsBlobStore) -> None:
    first = blobs.put(MESSAGE)
    assert blobs.put(MESSAGE) == first
    assert blobs.put(b"") != first  # the empty message is a blob like any other
    files = [p for p in blobs.root.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == sorted(
        f"{h}.eml" for h in (first, hashlib.sha256(b"").hexdigest())
    )


def test_changed_bytes_are_reported_corrupt(blobs: FsBlobStore) -> None:
    blob_id = blobs.put(MESSAGE)
    path = blobs.path(blob_id)
    path.write_bytes(MESSAGE.replace(b"Hello", b"Jello"))  # same length, one byte changed
    with pytest.raises(CorruptBlob) as caught:
        blobs.get(blob_id)
    assert caught.value.blob_id == blob_id
    assert "mismatch" in (blobs.verify(blob_id) or "")


def test_truncated_file_is_reported_corrupt(blobs: FsBlobStore) -> None:
    blob_id = blobs.put(MESSAGE)
    with open(blobs.path(blob_id), "r+b") as f:
        f.truncate(10)
    with pytest.raises(CorruptBlob):
        blobs.get(blob_id)
    assert blobs.verify(blob_id) is not None


def test_put_repairs_a_corrupt_file(blobs: FsBlobStore) -> None:
    blob_id = blobs.put(MESSAGE)
    blobs.path(blob_id).write_bytes(b"garbage")
    assert blobs.put(MESSAGE) == blob_id
    assert blobs.get(blob_id) == MESSAGE


def test_put_of_existing_content_refreshes_its_time(blobs: FsBlobStore) -> None:
    blob_id = blobs.put(MESSAGE)
    old = time.time() - 3600
    os.utime(blobs.path(blob_id), (old, old))
    blobs.put(MESSAGE)
    assert blobs.path(blob_id).stat().st_mtime > old + 1800


def test_missing_and_deleted(blobs: FsBlobStore) -> None:
    missing = hashlib.sha256(b"never stored").hexdigest()
    with pytest.raises(NotFound):
        blobs.get(missing)
    assert blobs.verify(missing) == "missing"
    assert not blobs.exists(missing)
    blob_id = blobs.put(MESSAGE)
    blobs.delete(blob_id)
    blobs.delete(blob_id)  # deleting twice is fine
    assert not blobs.exists(blob_id)
    with pytest.raises(NotFound):
        blobs.get(blob_id)


def test_bad_ids_never_reach_the_filesystem(blobs: FsBlobStore) -> None:
    for bad in ("../../etc/passwd", "ABCDEF" * 10 + "abcd", "", "a" * 63):
        with pytest.raises(InvalidInput):
            blobs.get(bad)


def test_iter_ids(blobs: FsBlobStore) -> None:
    assert list(blobs.iter_ids()) == []
    ids = {blobs.put(f"message {n}".encode()) for n in range(20)}
    (blobs.root / "stray.txt").write_text("not a blob")
    assert sorted(blobs.iter_ids()) == sorted(ids)


def test_concurrent_puts_share_filesystem_flushes(tmp_path: Path) -> None:
    """Puts running together are made durable by a few flushes (syncfs on Linux), and each put
    returns only after a flush that began once its file was in place."""
    import threading

    from mailstead.store.blob_fs import GroupSync

    blobs = FsBlobStore(tmp_path / "blobs")
    if blobs._group is None:
        pytest.skip("no syncfs here: every put fsyncs its own file")
    flushes: list[int] = []
    real = blobs._group._flush

    def counted() -> None:
        flushes.append(len(list(blobs.iter_ids())))  # files in place when the flush began
        time.sleep(0.005)
        real()

    blobs._group = GroupSync(counted)
    made: list[str] = []

    def put(n: int) -> None:
        blob_id = blobs.put(MESSAGE + str(n).encode())
        assert len(flushes) >= 1 and flushes[-1] >= 1
        made.append(blob_id)

    threads = [threading.Thread(target=put, args=(n,)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 40 and all(blobs.get(b) for b in made)
    assert 1 <= len(flushes) < 40


def test_a_failed_flush_fails_the_puts_it_covered() -> None:
    from mailstead.store.blob_fs import GroupSync

    outcomes = iter([OSError(5, "Input/output error"), None])

    def flush() -> None:
        error = next(outcomes)
        if error is not None:
            raise error

    group = GroupSync(flush)
    with pytest.raises(OSError, match="flushing message files: Input/output error"):
        group.wait()
    group.wait()  # the next flush works: so does the next put


def test_earlier_two_level_layout_is_moved_over_once(tmp_path: Path) -> None:
    """A store written as ab/cd/<sha256>.eml is served after the upgrade, every file whole,
    and a temp file an interrupted put left behind is gone."""
    root = tmp_path / "blobs"
    datas = [MESSAGE + str(n).encode() for n in range(5)]
    for data in datas:
        blob_id = hashlib.sha256(data).hexdigest()
        old = root / blob_id[:2] / blob_id[2:4]
        old.mkdir(parents=True, exist_ok=True)
        (old / f"{blob_id}.eml").write_bytes(data)
    (old / f".{blob_id}.1-0.tmp").write_bytes(b"torn")
    blobs = FsBlobStore(root)
    assert blobs.upgrade_layout() == 5
    assert [blobs.get(hashlib.sha256(d).hexdigest()) for d in datas] == datas
    assert sorted(blobs.iter_ids()) == sorted(hashlib.sha256(d).hexdigest() for d in datas)
    assert not [p for p in root.rglob("*") if p.is_dir() and p.parent != root]
    assert blobs.upgrade_layout() == 0  # done once: the marker says so
    fresh = FsBlobStore(tmp_path / "new")
    assert fresh.upgrade_layout() == 0 and blobs.put(b"x") and fresh.put(b"x")


def test_root_spreads_its_directories_where_the_filesystem_can(blobs: FsBlobStore,
                                                                tmp_path: Path) -> None:
    """The first put marks the root as the top of a hierarchy (chattr +T) where the
    filesystem has the flag (ext2/3/4); elsewhere the put works all the same."""
    if not blob_fs.spread_subdirectories(tmp_path):
        pytest.skip("this filesystem has no per-directory allocator flags")
    blob_id = blobs.put(MESSAGE)
    fd = os.open(blobs.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = struct.unpack("i", fcntl.ioctl(fd, blob_fs._FS_IOC_GETFLAGS,
                                               struct.pack("i", 0)))[0]
    finally:
        os.close(fd)
    assert flags & blob_fs._FS_TOPDIR_FL
    assert blobs.get(blob_id) == MESSAGE
    assert not blob_fs.spread_subdirectories(tmp_path / "missing")
