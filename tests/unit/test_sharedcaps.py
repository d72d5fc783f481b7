"""The connection caps the worker processes share (net/sharedcaps.py), two workers' views of
one mapping in one process: what one counts, the other sees."""

from __future__ import annotations

from mailstead.net.sharedcaps import SLOTS, SharedConnectionCaps, make_mapping


def pair(total: int = 100, per_ip: int = 3) -> tuple[SharedConnectionCaps, SharedConnectionCaps]:
    mapping = make_mapping(2)
    return (SharedConnectionCaps(total, per_ip, mapping, 2, 0),
            SharedConnectionCaps(total, per_ip, mapping, 2, 1))


def test_per_ip_cap_spans_workers() -> None:
    a, b = pair(per_ip=3)
    assert a.acquire("192.0.2.1", "imap")
    assert b.acquire("192.0.2.1", "imap")
    assert a.acquire("192.0.2.1", "smtp")
    assert not b.acquire("192.0.2.1", "imap")
    assert not a.acquire("192.0.2.1", "imap")
    assert b.acquire("192.0.2.2", "imap")  # another address has its own count
    a.release("192.0.2.1", "smtp")
    assert b.acquire("192.0.2.1", "imap")
    assert a.open_counts()["imap"] == b.open_counts()["imap"] == 4


def test_total_cap_spans_workers() -> None:
    a, b = pair(total=2, per_ip=10)
    assert a.acquire("192.0.2.1", "imap")
    assert b.acquire("192.0.2.2", "imap")
    assert not a.acquire("192.0.2.3", "imap")
    b.release("192.0.2.2", "imap")
    assert a.acquire("192.0.2.3", "imap")


def test_sessions_per_user_span_workers() -> None:
    a, b = pair()
    assert a.acquire_session("imap", "Alice@example.test", "192.0.2.1", 2)
    assert b.acquire_session("imap", "alice@example.test", "192.0.2.1", 2)
    assert not a.acquire_session("imap", "alice@example.test", "192.0.2.1", 2)
    assert b.acquire_session("imap", "alice@example.test", "192.0.2.9", 2)
    a.release_session("imap", "alice@example.test", "192.0.2.1")
    assert b.acquire_session("imap", "alice@example.test", "192.0.2.1", 2)


def test_a_restarted_worker_forgets_its_dead_predecessors_counts() -> None:
    mapping = make_mapping(2)
    a = SharedConnectionCaps(100, 2, mapping, 2, 0)
    dead = SharedConnectionCaps(100, 2, mapping, 2, 1)
    assert dead.acquire("192.0.2.1", "imap")
    assert dead.acquire("192.0.2.1", "imap")
    assert not a.acquire("192.0.2.1", "imap")
    SharedConnectionCaps(100, 2, mapping, 2, 1)  # its successor clears the region
    assert a.acquire("192.0.2.1", "imap")


def test_counts_survive_the_table_rebuild() -> None:
    a, b = pair(total=10 * SLOTS, per_ip=2)
    for n in range(SLOTS // 2 + 10):  # one key per address: passes half the slots
        address = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
        assert a.acquire(address, "smtp")
        if n % 2:
            a.release(address, "smtp")
    assert a.mine.header[2] < SLOTS // 2  # rebuilt: the released keys are gone
    assert a.acquire("10.0.0.0", "smtp")  # counted once before the rebuild, now twice
    assert not b.acquire("10.0.0.0", "smtp")
    assert b.acquire("10.0.0.1", "smtp")  # released before the rebuild
