"""What FETCH derives from a message file, kept per file: its part tree, its encoded
ENVELOPE / BODY / BODYSTRUCTURE and its header sections (BODY[HEADER.FIELDS (...)]). Pure code.

A message file never changes (its name is the SHA-256 of its bytes, store/blob_fs.py), so
anything computed from its bytes alone stays true for as long as the file exists: a client
that fetches the same message list again (every mail client on every resync of its view) is
answered from here instead of parsing the message and encoding the result once more.
Both caches are bounded (the trees by count, the encoded items by bytes) and drop the least
recently used first; they are per process, like the message file cache of the mailbox service.
"""

from __future__ import annotations

from collections import OrderedDict

from mailstead.proto import mime

TREES = 1024  # part trees (a few KiB each for usual mail)
ENCODED_BYTES = 8 * 1024 * 1024  # encoded ENVELOPE/BODYSTRUCTURE bytes, all sessions together

_trees: OrderedDict[str, mime.Part] = OrderedDict()
_encoded: OrderedDict[tuple[str, str, bool], bytes] = OrderedDict()
_encoded_bytes = 0


def tree(blob_id: str, data: bytes) -> mime.Part:
    """The part tree of ``data``, the bytes of message file ``blob_id``."""
    found = kept_tree(blob_id)
    if found is not None:
        return found
    part = mime.parse(data)
    _trees[blob_id] = part
    while len(_trees) > TREES:
        _trees.popitem(last=False)
    return part


def kept_tree(blob_id: str) -> mime.Part | None:
    """The part tree of message file ``blob_id`` if one is kept, else None."""
    found = _trees.get(blob_id)
    if found is not None:
        _trees.move_to_end(blob_id)
    return found


def encoded(blob_id: str, item: str, utf8: bool) -> bytes | None:
    """The encoded value of FETCH ``item`` (ENVELOPE, BODY, BODYSTRUCTURE, or a section spec
    such as ``HEADER.FIELDS (FROM TO)``) of a message file, as ``remember`` kept it for a
    session in the same ``utf8`` mode; None if not kept."""
    key = (blob_id, item, utf8)
    found = _encoded.get(key)
    if found is not None:
        _encoded.move_to_end(key)
    return found


def remember(blob_id: str, item: str, utf8: bool, value: bytes) -> None:
    global _encoded_bytes
    key = (blob_id, item, utf8)
    old = _encoded.pop(key, None)
    if old is not None:
        _encoded_bytes -= len(old)
    _encoded[key] = value
    _encoded_bytes += len(value)
    while _encoded_bytes > ENCODED_BYTES and _encoded:
        _key, dropped = _encoded.popitem(last=False)
        _encoded_bytes -= len(dropped)
