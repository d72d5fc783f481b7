"""The preview of a message (RFC 8970 PREVIEW): a short plain-text taste of what it says, for
a client's message list. Pure code."""

from __future__ import annotations

import re

from mailstead.proto import mime

MAX_CHARS = 200  # RFC 8970 3.1: at most 256 characters; 200 is what clients show
SCANNED = 16 * 1024  # the text looked at: a preview needs the first lines only
_BLANKS = re.compile(r"\s+")


def preview(data: bytes, root: mime.Part | None = None) -> str:
    """The first words of the message's first text part (HTML made text), quoted lines
    (``>``) and the signature left out, white space collapsed (RFC 8970 3.1: no more than
    256 characters, UTF-8, not cut inside a character). "" when there is no text."""
    # The message's own text: not a text file attached to it, nor a forwarded message's.
    parts = [(part, text) for part, text in mime.text_parts(data, root)
             if part.disposition != "attachment" and not part.filename]
    if not parts:
        return ""
    plain = [text for part, text in parts if part.content_type[1] == "plain"]
    text = plain[0][:SCANNED] if plain else mime.html_to_text(parts[0][1][:SCANNED])
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
