"""The tokens a message is judged by: words of its subject and text, where it comes from and
where its links go. Pure: bytes in, tokens out.

Tokens carry a prefix naming where they were found ("subject:free" is not "free"), as the
filters that do well on real mail do (Graham's "A Plan for Spam", SpamBayes). Parts are
decoded by proto/mime.py, as for IMAP SEARCH; HTML is read for its text and its link hosts,
not its markup. Each token is hashed to a signed 64-bit integer, the form the store keeps:
fixed size, and no user's words in plain text on disk.
"""

from __future__ import annotations

import hashlib
import re

from mailstead.proto import mime

MAX_TEXT = 200_000  # characters of text read per message: enough to judge, bounded work
MAX_TOKENS = 3_000
# Encoded octets that can make one character: quoted-printable UTF-8, "=F0=9F=98=80" for one
# character of four octets.
RAW_PER_CHAR = 12
_WORD = re.compile(r"[^\W\d_][\w'$€£%-]{1,24}", re.UNICODE)
_URL_HOST = re.compile(r"(?i)\bhttps?://([a-z0-9.\-\[\]:]+)")
# Header fields whose words say something about the sender's software and habits.
_HEADER_WORDS = ("x-mailer", "user-agent", "content-type", "reply-to")


def tokens(message: bytes) -> set[str]:
    """The distinct tokens of ``message`` (at most MAX_TOKENS)."""
    root = mime.parse(message)
    found: set[str] = set()
    subject = mime.decoded_header(root.get("subject") or "")
    found.update("subject:" + w for w in _words(subject))
    for name in ("from", "reply-to"):
        address = (root.get(name) or "").lower()
        _, _, domain = address.rpartition("@")
        domain = domain.strip(" >\t\"'")
        if domain:
            found.add(f"{name}-domain:{domain}")
    for name in _HEADER_WORDS:
        value = (root.get(name) or "").lower()
        for word in re.findall(r"[a-z][a-z0-9./-]{1,30}", value)[:8]:
            found.add(f"{name}:{word}")
    size = 0
    for part in root.walk():
        if part.is_multipart or part.content_type[0] != "text" or part.filename:
            continue  # an attached file is not what the sender wrote: not even decoded
        text = _text_of(message, part, MAX_TEXT - size)
        size += len(text)
        # Link targets from the text as written, before HTML loses them with its tags.
        found.update("url:" + host.lower().rstrip(".") for host in _URL_HOST.findall(text))
        if part.content_type[1] == "html":
            text = mime.html_to_text(text)
        found.update(_words(text))
        if size >= MAX_TEXT:
            break
    if len(found) > MAX_TOKENS:
        found = set(sorted(found)[:MAX_TOKENS])
    return found


def _text_of(message: bytes, part: mime.Part, chars: int) -> str:
    """The first ``chars`` characters of the part's decoded text. Only the start of a part
    longer than RAW_PER_CHAR octets a character is decoded (cut at a line end, so base64
    quanta stay whole): a 20 MB text attachment without a file name costs what 2.4 MB do.
    Any shorter part reads exactly as before."""
    end = part.body_end
    limit = part.body_start + chars * RAW_PER_CHAR
    if end > limit:
        cut = message.rfind(b"\n", part.body_start, limit)
        end = cut + 1 if cut >= 0 else limit
    raw = message[part.body_start : end]
    return mime.decode_text(raw, part.transfer_encoding, part.charset)[:chars]


def hashed(words: set[str]) -> list[int]:
    """Each token as the signed 64-bit integer the store keeps."""
    return [int.from_bytes(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest(), "big",
                           signed=True) for w in words]


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]
