"""Sieve scripts to a syntax tree (RFC 5228 section 8): the lexer and the parser.

Written here rather than taken from sievelib: sievelib keeps one global command registry, has
no ``string`` test, ``include``/``return``/``global``, ``spamtest``, ``ereject`` or
encoded-character, and its tree loses the order of positional arguments we need to run the
script. This file only knows the grammar; ``check.py`` knows the commands.

Pure code: no I/O. Every bound is here so a hostile script costs little to parse.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAX_SCRIPT_BYTES = 256 * 1024
MAX_NESTING = 32  # blocks and tests inside tests
MAX_STRING_LIST = 1024


class SieveSyntaxError(ValueError):
    """A script that does not parse or does not validate; ``line`` is 1-based (0: unknown)."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line
        self.detail = message


@dataclass(frozen=True, slots=True)
class Tag:
    name: str  # lower-case, without the colon


@dataclass(frozen=True, slots=True)
class StringList:
    items: tuple[str, ...]
    single: bool  # written as one string rather than a [list]
    plain: bool = True  # no "${" in any item: nothing for the variables extension to expand


Arg = Tag | int | StringList


@dataclass(slots=True)
class Test:
    name: str  # lower-case
    args: list[Arg]
    tests: list[Test]
    line: int
    tags: dict[str, Arg | None] = field(default_factory=dict)
    positional: list[Arg] = field(default_factory=list)
    # Filled by check.py: the match type, its relation (RFC 5231) and the comparator.
    match: str = "is"
    relation: str = ""
    comparator: str = "i;ascii-casemap"
    # Set by interp.py the first time the test runs: its specialised form, or a marker that
    # it has none (the node belongs to a compiled script, which is reused for every message).
    fast: Callable[[Any], bool] | None = None


@dataclass(slots=True)
class Command:
    name: str  # lower-case
    args: list[Arg]
    tests: list[Test]
    block: list[Command] | None
    line: int
    # Filled by check.py: tagged arguments by name, positional ones in order.
    tags: dict[str, Arg | None] = field(default_factory=dict)
    positional: list[Arg] = field(default_factory=list)


# -- lexer --------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<hash>\#[^\n]*)
  | (?P<bracket>/\*)
  | (?P<multiline>text:[ \t]*(?:\#[^\n]*)?\r?\n)
  | (?P<tag>:[A-Za-z_][A-Za-z0-9_]*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>[0-9]+[KkMmGg]?)
  | (?P<quoted>")
  | (?P<punct>[;,()\[\]{}])
    """,
    re.X,
)
_QUANTIFIER = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_MAX_NUMBER = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # ident, tag, number, string, punct, end
    value: str | int
    line: int


def tokenize(text: str) -> list[_Tok]:
    if len(text.encode("utf-8", "surrogateescape")) > MAX_SCRIPT_BYTES:
        raise SieveSyntaxError(f"the script is larger than {MAX_SCRIPT_BYTES} octets")
    toks: list[_Tok] = []
    pos, line, end = 0, 1, len(text)
    while pos < end:
        m = _TOKEN.match(text, pos)
        if m is None:
            raise SieveSyntaxError(f"unexpected character {text[pos]!r}", line)
        kind = m.lastgroup or ""
        start_line = line
        if kind == "bracket":
            close = text.find("*/", m.end())
            if close < 0:
                raise SieveSyntaxError("unterminated /* comment", line)
            line += text.count("\n", pos, close)
            pos = close + 2
            continue
        if kind == "quoted":
            value, pos = _quoted(text, m.end(), line)
            line += text.count("\n", m.start(), pos)
            toks.append(_Tok("string", value, start_line))
            continue
        if kind == "multiline":
            value, pos = _multiline(text, m.end(), line)
            line += text.count("\n", m.start(), pos)
            toks.append(_Tok("string", value, start_line))
            continue
        word = m.group()
        line += word.count("\n")
        pos = m.end()
        if kind in ("ws", "hash"):
            continue
        if kind == "number":
            number = int(word.rstrip("KkMmGg")) * _QUANTIFIER.get(word[-1].lower(), 1)
            if number > _MAX_NUMBER:
                raise SieveSyntaxError("number too large", line)
            toks.append(_Tok("number", number, start_line))
        elif kind == "tag":
            toks.append(_Tok("tag", word[1:].lower(), start_line))
        elif kind == "ident":
            toks.append(_Tok("ident", word.lower(), start_line))
        else:
            toks.append(_Tok("punct", word, start_line))
    toks.append(_Tok("end", "", line))
    return toks


def _quoted(text: str, pos: int, line: int) -> tuple[str, int]:
    """A quoted string from after its opening quote; RFC 5228 2.4.2: backslash escapes only
    backslash and quote, any other backslash is dropped."""
    out: list[str] = []
    while True:
        stop = _next_special(text, pos)
        if stop < 0:
            raise SieveSyntaxError("unterminated string", line)
        out.append(text[pos:stop])
        if text[stop] == '"':
            return _crlf("".join(out)), stop + 1
        if stop + 1 >= len(text):
            raise SieveSyntaxError("unterminated string", line)
        out.append(text[stop + 1])
        pos = stop + 2


def _next_special(text: str, pos: int) -> int:
    quote, backslash = text.find('"', pos), text.find("\\", pos)
    if quote < 0:
        return -1
    return quote if backslash < 0 or quote < backslash else backslash


def _multiline(text: str, pos: int, line: int) -> tuple[str, int]:
    """A text: block up to a line holding only '.', dot-stuffing undone (RFC 5228 2.4.2)."""
    out: list[str] = []
    while True:
        nl = text.find("\n", pos)
        if nl < 0:
            raise SieveSyntaxError("unterminated text: block", line)
        row = text[pos:nl].rstrip("\r")
        pos = nl + 1
        if row == ".":
            return "".join(out), pos
        out.append((row[1:] if row.startswith("..") else row) + "\r\n")


def _crlf(value: str) -> str:
    return value.replace("\r\n", "\n").replace("\n", "\r\n") if "\n" in value else value


# -- parser -------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, toks: list[_Tok]) -> None:
        self.toks = toks
        self.pos = 0

    def peek(self) -> _Tok:
        return self.toks[self.pos]

    def take(self) -> _Tok:
        tok = self.toks[self.pos]
        self.pos += 1
        return tok

    def expect(self, value: str) -> None:
        tok = self.take()
        if tok.kind != "punct" or tok.value != value:
            raise SieveSyntaxError(f"expected {value!r}, found {_shown(tok)}", tok.line)

    def commands(self, depth: int) -> list[Command]:
        if depth > MAX_NESTING:
            raise SieveSyntaxError("blocks nested too deeply", self.peek().line)
        found: list[Command] = []
        while True:
            tok = self.peek()
            if tok.kind == "end" or (tok.kind == "punct" and tok.value == "}"):
                return found
            found.append(self.command(depth))

    def command(self, depth: int) -> Command:
        tok = self.take()
        if tok.kind != "ident":
            raise SieveSyntaxError(f"expected a command, found {_shown(tok)}", tok.line)
        args, tests = self.arguments(depth)
        after = self.take()
        block = None
        if after.kind == "punct" and after.value == "{":
            block = self.commands(depth + 1)
            self.expect("}")
        elif not (after.kind == "punct" and after.value == ";"):
            raise SieveSyntaxError(f"expected ';' or a block after {tok.value}, found "
                                   f"{_shown(after)}", after.line)
        return Command(str(tok.value), args, tests, block, tok.line)

    def arguments(self, depth: int) -> tuple[list[Arg], list[Test]]:
        args: list[Arg] = []
        while True:
            tok = self.peek()
            if tok.kind == "tag":
                self.take()
                args.append(Tag(str(tok.value)))
            elif tok.kind == "number":
                self.take()
                args.append(int(tok.value))
            elif tok.kind == "string":
                self.take()
                args.append(StringList((str(tok.value),), True, "${" not in str(tok.value)))
            elif tok.kind == "punct" and tok.value == "[":
                args.append(self.string_list())
            else:
                break
        tok = self.peek()
        if tok.kind == "ident":
            return args, [self.test(depth + 1)]
        if tok.kind == "punct" and tok.value == "(":
            self.take()
            tests = [self.test(depth + 1)]
            while self.peek().kind == "punct" and self.peek().value == ",":
                self.take()
                tests.append(self.test(depth + 1))
            self.expect(")")
            return args, tests
        return args, []

    def string_list(self) -> StringList:
        self.expect("[")
        items: list[str] = []
        while True:
            tok = self.take()
            if tok.kind != "string":
                raise SieveSyntaxError(f"expected a string in the list, found {_shown(tok)}",
                                       tok.line)
            items.append(str(tok.value))
            if len(items) > MAX_STRING_LIST:
                raise SieveSyntaxError("string list too long", tok.line)
            sep = self.take()
            if sep.kind == "punct" and sep.value == "]":
                return StringList(tuple(items), False, not any("${" in i for i in items))
            if not (sep.kind == "punct" and sep.value == ","):
                raise SieveSyntaxError(f"expected ',' or ']', found {_shown(sep)}", sep.line)

    def test(self, depth: int) -> Test:
        if depth > MAX_NESTING:
            raise SieveSyntaxError("tests nested too deeply", self.peek().line)
        tok = self.take()
        if tok.kind != "ident":
            raise SieveSyntaxError(f"expected a test, found {_shown(tok)}", tok.line)
        args, tests = self.arguments(depth)
        return Test(str(tok.value), args, tests, tok.line)


def _shown(tok: _Tok) -> str:
    if tok.kind == "end":
        return "the end of the script"
    if tok.kind == "string":
        return "a string"
    return repr(f":{tok.value}" if tok.kind == "tag" else str(tok.value))


def parse(text: str) -> list[Command]:
    """The commands of a script; raises SieveSyntaxError. Does not check what they mean."""
    parser = _Parser(tokenize(text))
    found = parser.commands(0)
    tok = parser.peek()
    if tok.kind != "end":
        raise SieveSyntaxError(f"unexpected {_shown(tok)}", tok.line)
    return found
