"""The wire between a worker and the message-file helper: frames, the envelope fields an
answer carries, and the rows a delivery commits once its file exists (services/message_files.py
describes the frames each side sends; services/message_file_helper.py is the helper)."""

from __future__ import annotations

import dataclasses
import marshal
import struct
from collections.abc import Sequence
from datetime import datetime

from mailstead.store.interfaces import Delivery, Envelope, QueueEntry

FRAME = struct.Struct(">cI")  # tag, then the length of the payload that follows
STOP_TIMEOUT = 30.0  # seconds the helper gets to finish its batch when we stop


def envelope_to_bytes(env: Envelope) -> bytes:
    date = None if env.date is None else env.date.isoformat()
    return marshal.dumps((env.subject, env.from_, env.to, env.cc, date, env.message_id,
                          env.in_reply_to, env.references))


def envelope_from_bytes(data: bytes) -> Envelope:
    subject, from_, to, cc, date, message_id, in_reply_to, references = marshal.loads(data)
    return Envelope(subject, from_, to, cc, None if date is None else datetime.fromisoformat(date),
                    message_id, in_reply_to, references)


def take_frames(buffer: bytearray) -> list[tuple[bytes, bytes]]:
    """The complete (tag, payload) frames at the start of ``buffer``, removed from it (both
    ends read with this)."""
    frames = []
    pos = 0
    while len(buffer) - pos >= FRAME.size:
        tag, length = FRAME.unpack_from(buffer, pos)
        start = pos + FRAME.size
        if len(buffer) - start < length:
            break
        frames.append((tag, bytes(buffer[start : start + length])))
        pos = start + length
    del buffer[:pos]
    return frames


def frame(tag: bytes, payload: bytes) -> bytes:
    return FRAME.pack(tag, len(payload)) + payload


def failure(text: str) -> bytes:
    return frame(b"-", text.encode("utf-8", "replace"))


def with_blob(deliveries: Sequence[Delivery], entry: QueueEntry | None, blob_id: str,
              envelope: Envelope) -> tuple[list[Delivery], QueueEntry | None]:
    """The rows to commit for a message whose file is now ``blob_id`` (here, and in the
    delivery service when the store is not SQLite)."""
    filled = [Delivery(d.mailbox_id, dataclasses.replace(d.message, blob_id=blob_id,
                                                         envelope=envelope)) for d in deliveries]
    return filled, None if entry is None else dataclasses.replace(entry, blob_id=blob_id)
