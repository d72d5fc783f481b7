"""HTML from messages, made safe to show: nh3 (the Rust ammonia sanitiser) keeps a list of
harmless tags, attributes and CSS properties and drops everything else (scripts, event
handlers, forms, frames, javascript: URLs). Remote images are dropped unless the reader asked
for them (they tell the sender when and where a message was read); ``cid:`` images point at
the message's own parts. The page showing the result also sends a Content-Security-Policy
that forbids scripts and, by default, remote loads: two independent locks.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass

import nh3

TAGS = set(nh3.ALLOWED_TAGS) | {"font", "tfoot", "u", "center"}
_COMMON_ATTRS = {"style", "title", "dir", "lang", "align", "valign", "width", "height",
                 "bgcolor", "border", "cellpadding", "cellspacing", "class"}
ATTRIBUTES: dict[str, set[str]] = {tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()}
ATTRIBUTES["*"] = _COMMON_ATTRS
ATTRIBUTES["font"] = {"color", "face", "size"}
# CSS properties that only change how things look; nothing here can load a URL.
STYLE_PROPERTIES = {
    "color", "background-color", "font", "font-family", "font-size", "font-style",
    "font-weight", "text-align", "text-decoration", "text-transform", "line-height",
    "letter-spacing", "white-space", "vertical-align", "margin", "margin-top", "margin-right",
    "margin-bottom", "margin-left", "padding", "padding-top", "padding-right",
    "padding-bottom", "padding-left", "border", "border-top", "border-right", "border-bottom",
    "border-left", "border-color", "border-style", "border-width", "border-collapse",
    "border-radius", "width", "max-width", "min-width", "height", "max-height", "min-height",
    "display", "text-indent", "list-style-type", "table-layout", "word-break",
    "overflow-wrap",
}
URL_SCHEMES = {"http", "https", "mailto", "cid", "data", "tel"}
_REMOTE = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)
_DATA_IMAGE = re.compile(r"^\s*data:image/(png|gif|jpe?g|webp);", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class CleanHtml:
    html: str
    blocked_images: int  # remote images left out because the reader did not ask for them


def clean_html(
    source: str,
    *,
    allow_remote_images: bool = False,
    cid_url: Callable[[str], str | None] = lambda _cid: None,
) -> CleanHtml:
    """Sanitised HTML. ``cid_url`` maps a Content-ID to the URL of that part (or None)."""
    blocked = 0

    def filter_attribute(tag: str, attr: str, value: str) -> str | None:
        nonlocal blocked
        if tag == "img" and attr == "src":
            if value.lower().startswith("cid:"):
                return cid_url(value[4:].strip().strip("<>"))
            if _REMOTE.match(value):
                if allow_remote_images:
                    return value
                blocked += 1
                return None
            return value if _DATA_IMAGE.match(value) else None
        if attr in ("href",) and value.lower().startswith("data:"):
            return None  # data: links can carry whole HTML documents
        if attr == "class":
            return None  # the message's classes must not pick up our styles
        return value

    cleaned = nh3.clean(
        source,
        tags=TAGS,
        clean_content_tags={"script", "style", "title", "head", "template", "textarea",
                            "select", "noscript", "iframe", "object", "svg", "math"},
        attributes=ATTRIBUTES,
        attribute_filter=filter_attribute,
        strip_comments=True,
        link_rel="noopener noreferrer nofollow",
        url_schemes=URL_SCHEMES,
        filter_style_properties=STYLE_PROPERTIES,
        set_tag_attribute_values={"a": {"target": "_blank"}},
    )
    return CleanHtml(cleaned, blocked)


_BLOCK_END = re.compile(r"<\s*(br|/p|/div|/li|/tr|/h[1-6]|/blockquote|/table)\b[^>]*>",
                        re.IGNORECASE)


def html_to_text(source: str) -> str:
    """Readable plain text from HTML (reply quotes, the text part of an HTML message)."""
    with_breaks = _BLOCK_END.sub("\n", source)
    stripped = nh3.clean(with_breaks, tags=set(), clean_content_tags={"script", "style",
                                                                       "head", "title"})
    text = html.unescape(stripped)
    lines = [line.rstrip() for line in text.replace("\r", "").split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip() + "\n"


_URL = re.compile(r"\bhttps?://[^\s<>\"']+[^\s<>\"'.,;:!?)\]]", re.IGNORECASE)


def text_to_html(text: str) -> str:
    """Plain text as escaped HTML with its web links clickable (for showing text bodies)."""
    out: list[str] = []
    pos = 0
    for m in _URL.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        url = html.escape(m.group(0))
        out.append(f'<a href="{url}" target="_blank" rel="noopener noreferrer nofollow">'
                   f"{url}</a>")
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)
