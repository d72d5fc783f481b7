"""Connection caps that hold across the worker processes of one ``mailstead serve``.

Where the counts live and why: in one anonymous shared memory mapping made by the supervisor
before it forks the workers (so every worker, and every worker restarted later, maps the same
pages). A connection costs a few memory reads and writes there -- no system call, no message
to another process, which matters on the path every SMTP connection takes (issue 24 counts
each connection's CPU). The store was the other candidate; a round trip to it per connection
costs far more, and the counts need no durability: they describe open sockets of this machine.

The mapping holds one region per worker, and each worker writes only its own region: its total
of open connections in the header, and a hash table of counters (per client address, per
protocol, per logged-in user and address). Nobody takes a lock. A count is the sum of the
workers' regions; a worker that takes a connection adds itself first, then reads the sums, and
takes its addition back if a sum passes the limit. Two workers racing for the last place may
both refuse (never both admit): a cap never lets more in than its limit.

A worker that dies (even by SIGKILL) leaves counts of connections that no longer exist: its
successor, started with the same region, clears it before it serves anything.

The table: open addressing with linear probing on 64-bit keys (a BLAKE2b digest of the name;
key 0 means an empty slot). A count that drops to zero leaves its key as a tombstone, reused
by the next key that probes past it. When more than half the slots hold a key, the owner
rebuilds the table; readers notice by the generation number in the header (odd while the
rebuild runs, then moved on: a seqlock) and read again.
"""

from __future__ import annotations

import functools
import hashlib
import mmap
import socket
import weakref
from collections import Counter

from mailstead.net.listener import ConnectionCaps

SLOTS = 1 << 17  # keys per worker: open addresses + protocols + logged-in (user, address) pairs
_HEADER = 8  # 64-bit words: generation, total open connections, keys in use, accepted sockets
_GEN, _TOTAL, _USED, _LOAD = 0, 1, 2, 3
REGION = 8 * (_HEADER + 2 * SLOTS)  # header, keys, counts
PROTOCOLS = ("smtp", "submission", "imap", "pop3", "dmtp", "dmap", "http")


def make_mapping(workers: int) -> mmap.mmap:
    """The shared pages for ``workers`` regions; made before fork, inherited by each worker."""
    return mmap.mmap(-1, REGION * workers, flags=mmap.MAP_SHARED)


@functools.lru_cache(maxsize=65536)
def _key(name: str) -> int:
    key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")
    return key or 1


class _Region:
    """One worker's counters inside the mapping."""

    def __init__(self, mapping: mmap.mmap, index: int) -> None:
        view = memoryview(mapping)[index * REGION:(index + 1) * REGION]
        self.header = view[: 8 * _HEADER].cast("Q")
        self.keys = view[8 * _HEADER: 8 * (_HEADER + SLOTS)].cast("Q")
        self.counts = view[8 * (_HEADER + SLOTS):].cast("Q")

    def clear(self) -> None:
        self.header[_GEN] += 2  # stays even: readers just read again
        for words in (self.keys, self.counts):
            memoryview(words).cast("B")[:] = bytes(len(words) * 8)
        self.header[_TOTAL] = 0
        self.header[_USED] = 0
        self.header[_LOAD] = 0

    def _find(self, key: int) -> int:
        mask = SLOTS - 1
        i = key & mask
        keys = self.keys
        while True:
            k = keys[i]
            if k == key:
                return i
            if k == 0:
                return -1
            i = (i + 1) & mask

    def count(self, key: int) -> int:
        """This region's count for ``key``, read consistently while its owner may write."""
        header = self.header
        for _ in range(1000):
            generation = header[_GEN]
            if generation & 1:
                continue  # a rebuild is under way
            i = self._find(key)
            value = self.counts[i] if i >= 0 else 0
            if header[_GEN] == generation:
                return value
        return 0

    # -- the owner's writes --

    def add(self, key: int, delta: int) -> None:
        mask = SLOTS - 1
        i = key & mask
        keys, counts = self.keys, self.counts
        reusable = -1
        while True:
            k = keys[i]
            if k == key:
                counts[i] += delta
                return
            if k == 0:
                break
            if reusable < 0 and counts[i] == 0:
                reusable = i
            i = (i + 1) & mask
        if delta <= 0:
            return  # nothing counted under this key
        if reusable >= 0:
            keys[reusable] = key
            counts[reusable] = delta
            return
        keys[i] = key
        counts[i] = delta
        self.header[_USED] += 1
        if self.header[_USED] * 2 > SLOTS:
            self._rebuild()

    def _rebuild(self) -> None:
        live = [(k, c) for k, c in zip(self.keys.tolist(), self.counts.tolist(), strict=True)
                if k and c]
        header = self.header
        header[_GEN] += 1  # odd: readers wait
        memoryview(self.keys).cast("B")[:] = bytes(SLOTS * 8)
        memoryview(self.counts).cast("B")[:] = bytes(SLOTS * 8)
        header[_USED] = 0
        for key, value in live:
            i = key & (SLOTS - 1)
            while self.keys[i]:
                i = (i + 1) & (SLOTS - 1)
            self.keys[i] = key
            self.counts[i] = value
        header[_USED] = len(live)
        header[_GEN] += 1


class SharedConnectionCaps(ConnectionCaps):
    """``ConnectionCaps`` whose counts span every worker (the module docstring says how),
    and each worker's open sockets, so new connections go to the least busy one."""

    def __init__(self, total: int, per_ip: int, mapping: mmap.mmap, workers: int,
                 index: int) -> None:
        super().__init__(total, per_ip)
        self.regions = [_Region(mapping, i) for i in range(workers)]
        self.mine = self.regions[index]
        self.siblings = [region for i, region in enumerate(self.regions) if i != index]
        self.mine.clear()  # a predecessor's counts died with it
        # Sockets this worker accepted that are still open (a transport drops its socket when
        # the connection ends, TLS handshake failures included): the load it shows siblings.
        self.accepted: weakref.WeakSet[socket.socket] = weakref.WeakSet()

    # -- sharing out new connections (net/balance.py) --

    def load_board(self) -> SharedConnectionCaps:
        return self

    def note_accepted(self, sock: socket.socket) -> None:
        self.accepted.add(sock)
        self.mine.header[_LOAD] = len(self.accepted)

    def busier_than_a_sibling(self) -> bool:
        """Whether another worker holds fewer open connections than this one (so it should
        take the next one). Siblings' figures may be a little high, never low: each refreshes
        its own whenever it accepts or is offered a connection."""
        load = len(self.accepted)
        self.mine.header[_LOAD] = load
        return any(region.header[_LOAD] < load for region in self.siblings)

    def _sum(self, key: int) -> int:
        return sum(region.count(key) for region in self.regions)

    def _total(self) -> int:
        return sum(region.header[_TOTAL] for region in self.regions)

    def acquire(self, ip: str, protocol: str) -> bool:
        ip_key = _key(f"ip:{ip}")
        mine = self.mine
        mine.add(ip_key, 1)
        mine.header[_TOTAL] += 1
        if self._total() > self.total_limit or self._sum(ip_key) > self.per_ip_limit:
            mine.add(ip_key, -1)
            mine.header[_TOTAL] -= 1
            return False
        mine.add(_key(f"proto:{protocol}"), 1)
        return True

    def release(self, ip: str, protocol: str) -> None:
        mine = self.mine
        mine.add(_key(f"ip:{ip}"), -1)
        mine.header[_TOTAL] -= 1
        mine.add(_key(f"proto:{protocol}"), -1)

    def acquire_session(self, protocol: str, user: str, ip: str, limit: int) -> bool:
        key = _key(f"session:{protocol}|{user.lower()}|{ip}")
        self.mine.add(key, 1)
        if self._sum(key) > limit:
            self.mine.add(key, -1)
            return False
        return True

    def release_session(self, protocol: str, user: str, ip: str) -> None:
        self.mine.add(_key(f"session:{protocol}|{user.lower()}|{ip}"), -1)

    def open_counts(self) -> Counter[str]:
        """Open connections per protocol, summed over every worker (for /metrics)."""
        return Counter({p: self._sum(_key(f"proto:{p}")) for p in PROTOCOLS})
