"""An HTML message as text a terminal can show: inscriptis lays out the page (paragraphs,
lists, tables in columns, preformatted blocks); scripts, styles and the document head never
reach the text. Links keep their target as text beside what they say ("our site
<https://example.test/>"), so a reader sees where a link would take them before copying it;
targets other than web, mail and telephone links (``javascript:``, ``data:``) are dropped.
"""

from __future__ import annotations

import lxml.etree
import lxml.html
from inscriptis import Inscriptis
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.model.config import ParserConfig

_SHOWN_SCHEMES = ("http://", "https://", "mailto:", "tel:")
_DROPPED = ("script", "style", "head", "title", "template", "noscript", "iframe", "object",
            "svg", "math")
_CONFIG = ParserConfig(css=CSS_PROFILES["strict"], display_images=True)


def html_to_text(source: str) -> str:
    """Readable text from an HTML body; "" for an empty or unparseable one."""
    tree = _parse(source)
    if tree is None:
        return ""
    for element in list(tree.iter(*_DROPPED)):
        _remove(element)
    for link in list(tree.iter("a")):
        _link_as_text(link)
    try:
        text = Inscriptis(tree, _CONFIG).get_text()
    except RecursionError:  # absurdly deep nesting: the words without the layout
        text = " ".join(tree.itertext())
    lines = [line.rstrip() for line in text.replace("\r", "").split("\n")]
    out: list[str] = []
    for line in lines:  # at most one empty line in a row
        if line or (out and out[-1]):
            out.append(line)
    text = "\n".join(out).strip("\n")
    return text + "\n" if text else ""


def _parse(source: str) -> lxml.html.HtmlElement | None:
    if not source.strip():
        return None
    try:
        return lxml.html.fromstring(source)
    except ValueError:  # a str with an XML encoding declaration: lxml wants bytes then
        try:
            return lxml.html.fromstring(source.encode("utf-8"))
        except (ValueError, lxml.etree.ParserError):
            return None
    except lxml.etree.ParserError:
        return None


def _remove(element: lxml.html.HtmlElement) -> None:
    """Drops the element and what it holds, keeping the text that follows it."""
    parent = element.getparent()
    if parent is None:
        element.clear()
        return
    tail = element.tail or ""
    previous = element.getprevious()
    if previous is not None:
        previous.tail = (previous.tail or "") + tail
    else:
        parent.text = (parent.text or "") + tail
    parent.remove(element)


def _link_as_text(link: lxml.html.HtmlElement) -> None:
    href = (link.get("href") or "").strip()
    if not href.lower().startswith(_SHOWN_SCHEMES):
        return
    said = " ".join(link.text_content().split())
    shown = href[7:] if href.lower().startswith("mailto:") else href
    if said in (href, shown):
        return  # the text is the address already
    link.tail = f" <{shown}>" + (link.tail or "")
