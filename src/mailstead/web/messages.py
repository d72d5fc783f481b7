"""A stored message as the webmail shows it: decoded headers, the text and/or HTML body,
and the attachments with their part paths (IMAP numbering, so ``1.2`` names the same part as
``BODY[1.2]``)."""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field

from mailstead.proto import mime, mime_imap
from mailstead.web.sanitize import html_to_text


@dataclass(frozen=True, slots=True)
class Attachment:
    path: str
    filename: str
    mime_type: str
    size: int  # decoded size, estimated from the encoded one
    content_id: str  # without angle brackets; "" when none
    inline: bool  # shown inside the HTML body (cid: image) rather than attached


@dataclass(slots=True)
class ReadMessage:
    subject: str = ""
    from_: str = ""
    to: str = ""
    cc: str = ""
    reply_to: str = ""
    date: str = ""
    message_id: str = ""
    references: str = ""
    text: str | None = None  # the plain text body, or None when there is only HTML
    html: str | None = None  # the HTML body, NOT sanitised (clean it before showing)
    attachments: list[Attachment] = field(default_factory=list)

    @property
    def quote_text(self) -> str:
        """The body as plain text, for quoting in replies and forwards."""
        if self.text is not None:
            return self.text
        return html_to_text(self.html or "")


def decode_text(data: bytes, charset: str | None) -> str:
    name = (charset or "utf-8").strip().strip('"').lower()
    if name in ("us-ascii", "ascii", ""):
        name = "utf-8"
    try:
        return data.decode(name, "replace")
    except LookupError:  # an unknown charset: UTF-8, then Windows-1252 as the usual suspect
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("windows-1252", "replace")


def _decoded_body(data: bytes, part: mime.Part) -> bytes:
    body = data[part.body_start:part.body_end]
    try:
        return mime.decode_transfer_encoding(body, part.transfer_encoding)
    except (mime.UnknownEncoding, binascii.Error, ValueError):
        return body


def _estimated_size(part: mime.Part) -> int:
    return part.size * 3 // 4 if part.transfer_encoding == "base64" else part.size


def _filename(part: mime.Part, path: str) -> str:
    if part.filename:
        return mime.decoded_header(part.filename).replace("/", "_").replace("\\", "_")
    name = part.params.get("name")
    if name:
        return mime.decoded_header(name).replace("/", "_").replace("\\", "_")
    if part.mime_type == "message/rfc822":
        return f"message-{path}.eml"
    return f"part-{path}"


def _is_body(part: mime.Part) -> bool:
    return (part.content_type in (("text", "plain"), ("text", "html"))
            and part.disposition != "attachment" and not part.filename)


@dataclass
class _Collector:
    data: bytes
    texts: list[str] = field(default_factory=list)
    htmls: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)

    def leaf(self, part: mime.Part, path: str) -> None:
        if _is_body(part):
            text = decode_text(_decoded_body(self.data, part), part.charset)
            (self.htmls if part.content_type[1] == "html" else self.texts).append(text)
            return
        cid = (part.get("Content-ID") or "").strip().strip("<>")
        self.attachments.append(Attachment(
            path=path, filename=_filename(part, path), mime_type=part.mime_type,
            size=_estimated_size(part), content_id=cid,
            inline=bool(cid) and part.disposition != "attachment"
            and part.content_type[0] == "image",
        ))

    def walk(self, part: mime.Part, path: str) -> None:
        if not part.is_multipart:
            self.leaf(part, path or "1")
            return
        prefix = f"{path}." if path else ""
        children = [(c, f"{prefix}{i}") for i, c in enumerate(part.children, 1)]
        if part.content_type[1] == "alternative" and children:
            self._alternative(children)
            return
        for child, child_path in children:
            self.walk(child, child_path)

    def _alternative(self, children: list[tuple[mime.Part, str]]) -> None:
        """multipart/alternative: the richest HTML version, and the plain one for quoting;
        other alternatives (calendar, AMP...) are neither shown nor listed."""
        plain = [c for c in children if c[0].content_type == ("text", "plain")]
        richer = [c for c in children if c[0].content_type != ("text", "plain")]
        for child, child_path in reversed(richer):
            if child.content_type == ("text", "html") or child.is_multipart:
                self.walk(child, child_path)
                break
        else:
            if not plain:
                self.walk(*children[-1])
        if plain:
            part, _ = plain[0]
            self.texts.append(decode_text(_decoded_body(self.data, part), part.charset))


def read_message(data: bytes) -> ReadMessage:
    root = mime.parse(data)
    collector = _Collector(data)
    collector.walk(root, "")

    def header(name: str) -> str:
        return mime.decoded_header(root.get(name) or "")

    envelope = mime.parse_envelope_fields(data)
    out = ReadMessage(
        subject=envelope.subject,
        from_=envelope.from_,
        to=envelope.to,
        cc=envelope.cc,
        reply_to=header("Reply-To"),
        date=root.get("Date") or "",
        message_id=envelope.message_id,
        references=root.get("References") or "",
        attachments=collector.attachments,
    )
    if collector.htmls:
        out.html = "\n<hr>\n".join(collector.htmls)
    if collector.texts:
        out.text = "\n\n".join(collector.texts)
    elif not collector.htmls:
        out.text = ""
    return out


@dataclass(frozen=True, slots=True)
class PartContent:
    data: bytes
    mime_type: str
    filename: str


def part_content(data: bytes, path: str) -> PartContent | None:
    """The decoded bytes of the part at ``path`` (e.g. "2" or "1.3"), or None."""
    if not path or any(not n.isdigit() for n in path.split(".")) or len(path) > 64:
        return None
    root = mime.parse(data)
    numbers = tuple(int(n) for n in path.split("."))
    part = mime_imap.find_part(root, numbers)
    if part is None or part.is_multipart:
        return None
    return PartContent(_decoded_body(data, part), part.mime_type, _filename(part, path))
