"""The preview of a message (RFC 8970 PREVIEW): a short plain-text taste of what it says, for
a client's message list. Pure code."""

from __future__ import annotations

import re

from mailstead.proto import mime

MAX_CHARS = 200  # RFC 8970 3.1: at most 256 characters; 200 is what clients show
SCANNED = 16 * 1024  # the text looked at: a preview needs the first lines only
_BLANKS = re.compile(r"\s+")


def body_part(part: mime.Part) -> mime.Part | None:
    """The part that holds the message's own text: the first text part in reading order;
    within a multipart/alternative the text/plain one, else its first HTML (RFC 2046 5.1.4:
    the alternatives say the same thing). Never an attachment, nor a part of a forwarded
    message (message/rfc822), nor text that follows the body in a multipart/mixed."""
    if part.disposition == "attachment" or part.filename:
        return None
    if part.is_multipart:
        found = [p for p in (body_part(child) for child in part.children) if p is not None]
        if part.content_type[1] == "alternative":
            found = [p for p in found if p.content_type[1] == "plain"] or found
        return found[0] if found else None
    major, minor = part.content_type
    return part if major == "text" and minor in ("plain", "html") else None


def preview(data: bytes, root: mime.Part | None = None) -> str:
    """The first words of the message's text (``body_part``: its first text part, HTML made
    text), quoted lines (``>``) and the signature left out, white space collapsed (RFC 8970
    3.1: no more than 256 characters, UTF-8, not cut inside a character). "" when there is
    no text."""
    part = body_part(root if root is not None else mime.parse(data))
    if part is None:
        return ""
    text = mime.part_text(data, part)[:SCANNED]
    if part.content_type[1] == "html":
        text = mime.html_to_text(text)
    kept = []
    for line in text.splitlines():
        if line.rstrip() == "--":  # RFC 3676 4.3: the signature follows
            break
        if not line.lstrip().startswith(">"):
            kept.append(line)
    words = _BLANKS.sub(" ", " ".join(kept)).strip()
    if len(words) <= MAX_CHARS:
        return words
    cut = words[:MAX_CHARS].rsplit(" ", 1)[0]
    return cut or words[:MAX_CHARS]
