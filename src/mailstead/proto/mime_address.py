"""Addresses in header fields (RFC 5322 section 3.4), kept raw as IMAP's ENVELOPE wants them
(names, routes, mailboxes, hosts; groups as start and end markers). Pure code."""

from __future__ import annotations

import re

__all__ = [
    "Address",
    "parse_addresses",
]

# Limits that keep hostile messages from exhausting the stack or memory. Deeper or further
# parts are kept as opaque leaves, so their bytes are still reachable through their parent.
MAX_DEPTH = 40
MAX_PARTS = 10_000
# Header fields kept per header: past this many the rest of the header is skipped at C speed
# (its bytes stay in BODY[HEADER]); 100,000 one-line fields would otherwise cost seconds of
# CPU on the event loop for every reader of the message (issue 16).
MAX_FIELDS = 10_000
MAX_TOTAL_FIELDS = 20_000  # the same over all the headers of one message (its parts')

IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})
KNOWN_ENCODINGS = IDENTITY_ENCODINGS | {"base64", "quoted-printable"}


def _skip_comment(s: str, i: int) -> int:
    """Index after the (possibly nested) comment starting at s[i] == '('."""
    depth = 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


# ---------------------------------------------------------------------------------------------
# Addresses (RFC 5322 section 3.4), kept raw for ENVELOPE

# One address for ENVELOPE: (name, adl, mailbox, host); group start is (None, None, name, None)
# and group end (None, None, None, None) (RFC 3501 section 7.4.2).
Address = tuple[str | None, str | None, str | None, str | None]

_SPECIALS = '<>@,;:.[]"()\\'


def _tokenize(value: str) -> list[tuple[str, str, bool]]:
    """(kind, text, preceded_by_space) tokens: 'atom', 'qs', 'comment', 'dlit' or a special."""
    tokens: list[tuple[str, str, bool]] = []
    i, n = 0, len(value)
    space = False
    while i < n:
        c = value[i]
        if c in " \t\r\n":
            space = True
            i += 1
            continue
        if c == '"':
            i += 1
            chars: list[str] = []
            while i < n and value[i] != '"':
                if value[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(value[i])
                i += 1
            tokens.append(("qs", "".join(chars), space))
            i += 1
        elif c == "(":
            end = _skip_comment(value, i)
            tokens.append(("comment", value[i + 1 : end - 1].strip(), space))
            i = end
        elif c == "[":
            end = value.find("]", i)
            end = n if end < 0 else end + 1
            tokens.append(("dlit", value[i:end], space))
            i = end
        elif c in _SPECIALS:
            tokens.append((c, c, space))
            i += 1
        else:
            j = i
            while j < n and value[j] not in _SPECIALS and value[j] not in " \t\r\n":
                j += 1
            tokens.append(("atom", value[i:j], space))
            i = j
        space = False
    return tokens


def _phrase(tokens: list[tuple[str, str, bool]]) -> str | None:
    words: list[str] = []
    for kind, text, space in tokens:
        if kind == "comment":
            continue
        if words and space:
            words.append(" ")
        words.append(text)
    joined = "".join(words).strip()
    return joined or None


def _addr_spec(tokens: list[tuple[str, str, bool]]) -> tuple[str, str]:
    """(mailbox, host) from addr-spec tokens; white space and comments ignored."""
    local: list[str] = []
    domain: list[str] = []
    target = local
    for kind, text, _space in tokens:
        if kind == "comment":
            continue
        if kind == "@" and target is local:
            target = domain
            continue
        if kind == "qs":
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        target.append(text)
    return "".join(local), "".join(domain)


def _mailbox(tokens: list[tuple[str, str, bool]]) -> Address | None:
    """One mailbox: ``phrase <route:addr-spec>`` or ``addr-spec (comment)``."""
    if not [t for t in tokens if t[0] != "comment"]:
        return None
    angle = next((i for i, t in enumerate(tokens) if t[0] == "<"), None)
    if angle is not None:
        name = _phrase(tokens[:angle])
        inner = tokens[angle + 1 :]
        close = next((i for i, t in enumerate(inner) if t[0] == ">"), len(inner))
        inner = inner[:close]
        adl: str | None = None
        colon = next((i for i, t in enumerate(inner) if t[0] == ":"), None)
        if colon is not None:  # obsolete source route, RFC 5322 section 4.4
            adl = "".join(t[1] for t in inner[:colon] if t[0] != "comment") or None
            inner = inner[colon + 1 :]
        mailbox, host = _addr_spec(inner)
        return (name, adl, mailbox, host)
    comments = [t[1] for t in tokens if t[0] == "comment" and t[1]]
    mailbox, host = _addr_spec(tokens)
    if not host and "@" not in [t[0] for t in tokens]:
        # Not an address at all ("To: friends of mine"): keep the words as the mailbox.
        mailbox = _phrase(tokens) or mailbox
    return (comments[0] if comments else None, None, mailbox, host)


# One plain address, as most fields hold: "Name <local@host>", "<local@host>", "local@host",
# with the name made of atoms only. Read by one regex; anything else goes to the tokenizer,
# which gives the same answer for these (tests/unit/test_mime_addresses.py checks that).
_ATOM = r'[^ \t\r\n<>@,;:.\[\]"()\\]+'
_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
_FWS = r"[ \t\r\n]"
_PLAIN_ADDRESS = re.compile(
    rf"{_FWS}*(?:((?:{_ATOM}{_FWS}+)*{_ATOM})?{_FWS}*<({_DOT_ATOM})@({_DOT_ATOM})>"
    rf"|({_DOT_ATOM})@({_DOT_ATOM})){_FWS}*")
_FWS_RUN = re.compile(rf"{_FWS}+")


def parse_addresses(value: str) -> list[Address]:
    """An address-list header value as ENVELOPE addresses. Lenient, never raises."""
    plain = _PLAIN_ADDRESS.fullmatch(value)
    if plain is not None:
        name, local, host, bare_local, bare_host = plain.groups()
        if local is None:
            return [(None, None, bare_local, bare_host)]
        return [(_FWS_RUN.sub(" ", name) if name else None, None, local, host)]
    return _parse_address_list(value)


def _parse_address_list(value: str) -> list[Address]:
    result: list[Address] = []
    current: list[tuple[str, str, bool]] = []
    in_angle = False
    in_group = False

    def finish() -> None:
        addr = _mailbox(current)
        if addr is not None:
            result.append(addr)
        current.clear()

    for token in _tokenize(value):
        kind = token[0]
        if in_angle:
            current.append(token)
            in_angle = kind != ">"
        elif kind == "<":
            current.append(token)
            in_angle = True
        elif kind == ",":
            finish()
        elif kind == ":" and not in_group:
            result.append((None, None, _phrase(current) or "", None))
            current.clear()
            in_group = True
        elif kind == ";" and in_group:
            finish()
            result.append((None, None, None, None))
            in_group = False
        else:
            current.append(token)
    finish()
    if in_group:  # unterminated group
        result.append((None, None, None, None))
    return result
