"""The tokens a message is judged by: words of its subject and text, where it comes from and
where its links go. Pure: bytes in, tokens out.

Tokens carry a prefix naming where they were found ("subject:free" is not "free"), as the
filters that do well on real mail do (Graham's "A Plan for Spam", SpamBayes). HTML is read
for its text and its link hosts, not its markup. Each token is hashed to a signed 64-bit
integer, the form the store keeps: fixed size, and no user's words in plain text on disk.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import hashlib
import re
from email.message import Message

MAX_TEXT = 200_000  # characters of text read per message: enough to judge, bounded work
MAX_TOKENS = 3_000
_WORD = re.compile(r"[^\W\d_][\w'$€£%-]{1,24}", re.UNICODE)
_URL_HOST = re.compile(r"(?i)\bhttps?://([a-z0-9.\-\[\]:]+)")
_TAG = re.compile(r"(?s)<(script|style)\b.*?</\1\s*>|<!--.*?-->|<[^>]*>")
_ENTITY = re.compile(r"&(nbsp|amp|lt|gt|quot|#\d+);")
_ENTITIES = {"nbsp": " ", "amp": "&", "lt": "<", "gt": ">", "quot": '"'}
# Header fields whose words say something about the sender's software and habits.
_HEADER_WORDS = ("x-mailer", "user-agent", "content-type", "reply-to")


def tokens(message: bytes) -> set[str]:
    """The distinct tokens of ``message`` (at most MAX_TOKENS)."""
    parsed = email.message_from_bytes(message, policy=email.policy.compat32)
    found: set[str] = set()
    subject = _header(parsed, "subject")
    found.update("subject:" + w for w in _words(subject))
    for name in ("from", "reply-to"):
        address = _header(parsed, name).lower()
        _, _, domain = address.rpartition("@")
        domain = domain.strip(" >\t\"'")
        if domain:
            found.add(f"{name}-domain:{domain}")
    for name in _HEADER_WORDS:
        value = _header(parsed, name).lower()
        for word in re.findall(r"[a-z][a-z0-9./-]{1,30}", value)[:8]:
            found.add(f"{name}:{word}")
    text = _text_of(parsed)
    for host in _URL_HOST.findall(text):
        found.add("url:" + host.lower().rstrip("."))
    found.update(_words(text))
    if len(found) > MAX_TOKENS:
        found = set(sorted(found)[:MAX_TOKENS])
    return found


def hashed(words: set[str]) -> list[int]:
    """Each token as the signed 64-bit integer the store keeps."""
    return [int.from_bytes(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest(), "big",
                           signed=True) for w in words]


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _header(parsed: Message, name: str) -> str:
    value = parsed.get(name)
    if value is None:
        return ""
    try:
        parts = email.header.decode_header(str(value))
        return "".join(p.decode(c or "utf-8", "replace") if isinstance(p, bytes) else p
                       for p, c in parts)
    except (LookupError, ValueError):  # an unknown charset or broken encoded word
        return str(value)


def _text_of(parsed: Message) -> str:
    """The decoded text of the text/plain and text/html parts, HTML turned into text with
    its link targets kept, up to MAX_TEXT characters."""
    pieces: list[str] = []
    size = 0
    for part in parsed.walk():
        if part.get_content_maintype() != "text" or part.get_filename():
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            text = payload.decode(charset, "replace")
        except LookupError:
            text = payload.decode("utf-8", "replace")
        if part.get_content_subtype() == "html":
            text = html_to_text(text)
        pieces.append(text[: MAX_TEXT - size])
        size += len(pieces[-1])
        if size >= MAX_TEXT:
            break
    return "\n".join(pieces)


def html_to_text(html: str) -> str:
    """The words of an HTML document, with each link's target written beside its text."""
    html = re.sub(r"(?i)<a\b[^>]*\bhref\s*=\s*[\"']?([^\"'\s>]+)[^>]*>", r" \1 ", html)
    text = _TAG.sub(" ", html)
    return _ENTITY.sub(lambda m: _ENTITIES.get(m.group(1), " "), text)

