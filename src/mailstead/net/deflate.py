"""COMPRESS=DEFLATE (RFC 4978) on a Connection: raw DEFLATE (RFC 1951, no zlib header) both
ways, on top of TLS when TLS is on, from the first octet after the server's tagged OK.

Output: every ``Connection.write`` is one response burst, compressed and ended with a sync
flush (RFC 4978 4: the server flushes whenever it waits for the client), so nothing waits in
the compressor. Input: a task inflates what arrives and feeds a fresh StreamReader that takes
the place of the connection's own, so line framing, literals and IDLE work unchanged. It
inflates at most ``CHUNK`` octets at a time and waits while the session has a full buffer
unread, so a small "bomb" never becomes a huge buffer. Data that does not inflate ends the
input with ``BadCompressedData`` (the IMAP side answers BYE).
"""

from __future__ import annotations

import asyncio
import zlib
from typing import TYPE_CHECKING

from mailstead.net.listener import STREAM_LIMIT, ConnectionClosed

if TYPE_CHECKING:
    from mailstead.net.listener import Connection

CHUNK = 64 * 1024
# Our own compressor: a 8 KiB window and small hash tables keep it near 40 KiB per
# connection (zlib's defaults take about 256 KiB); any inflater reads a smaller window. The
# inflater must take the 32 KiB window a client may use (RFC 1951), so it keeps the default.
WINDOW_BITS = -13
MEM_LEVEL = 5


class BadCompressedData(ConnectionClosed):
    """The client's compressed stream is not valid DEFLATE."""


def start_deflate(conn: Connection) -> None:
    """Switches ``conn`` to compressed I/O. Octets already read past the COMPRESS command
    are compressed ones (the client compresses right after it), so they are inflated first."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, WINDOW_BITS, MEM_LEVEL)

    def compress(data: bytes) -> bytes:
        return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)

    raw = conn.reader
    leftover = bytearray()
    buffer = getattr(raw, "_buffer", None)
    if isinstance(buffer, bytearray):
        leftover += buffer
        buffer.clear()
    inflated = asyncio.StreamReader(limit=STREAM_LIMIT)
    conn.reader = inflated
    conn.compress = compress
    conn.pump = asyncio.ensure_future(_inflate(raw, inflated, bytes(leftover)))


async def _inflate(raw: asyncio.StreamReader, out: asyncio.StreamReader, first: bytes) -> None:
    inflater = zlib.decompressobj(-15)
    pending = first
    try:
        while True:
            while pending:
                data = inflater.decompress(pending, CHUNK)
                pending = inflater.unconsumed_tail
                if inflater.eof:  # a final block: the client may not end the stream so
                    raise zlib.error("compressed stream ended")
                if data:
                    out.feed_data(data)
                while len(getattr(out, "_buffer", b"")) > STREAM_LIMIT:
                    await asyncio.sleep(0.005)  # the session reads on; a bomb waits
            try:
                pending = await raw.read(CHUNK)
            except (ConnectionError, OSError):
                pending = b""
            if not pending:
                out.feed_eof()
                return
    except zlib.error:
        out.set_exception(BadCompressedData())
