"""The per-message-file FETCH cache: what it keeps, and that it stays within its bounds."""

from __future__ import annotations

import pytest

from mailstead.proto import imap_fetch_cache as cache
from mailstead.proto import mime


def test_kept_per_file_item_and_mode() -> None:
    cache.remember("blob-a", "ENVELOPE", False, b"(NIL)")
    assert cache.encoded("blob-a", "ENVELOPE", False) == b"(NIL)"
    assert cache.encoded("blob-a", "ENVELOPE", True) is None  # UTF-8 sessions apart
    assert cache.encoded("blob-a", "BODYSTRUCTURE", False) is None
    assert cache.encoded("blob-b", "ENVELOPE", False) is None


def test_bounded_by_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "ENCODED_BYTES", 1000)
    for n in range(50):
        cache.remember(f"bound-{n}", "BODY", False, b"x" * 100)
    kept = [n for n in range(50) if cache.encoded(f"bound-{n}", "BODY", False) is not None]
    assert kept == list(range(40, 50))  # the most recent ten, the older ones dropped


def test_trees_reused_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "TREES", 3)
    data = b"Subject: x\r\n\r\nbody\r\n"
    first = cache.tree("tree-0", data)
    assert cache.tree("tree-0", data) is first
    assert first.get("Subject") == "x"
    for n in range(1, 5):
        cache.tree(f"tree-{n}", data)
    assert cache.tree("tree-0", data) is not first  # dropped, parsed again
    assert isinstance(cache.tree("tree-4", data), mime.Part)
