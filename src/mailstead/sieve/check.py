"""What each Sieve command and test takes, and the check of a parsed script against it.

``compile_script`` parses and validates: every command and test is known, its extension was
named in ``require`` (RFC 5228 3.2: using one that was not is an error), its tagged arguments
are known and carry their values, its positional arguments have the right kinds. It fills
``tags`` and ``positional`` on every node so the interpreter reads them by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mailstead.proto import mime_scan
from mailstead.sieve.grammar import (
    Arg,
    Command,
    SieveSyntaxError,
    StringList,
    Tag,
    Test,
    parse,
)

# The extensions we run (what ManageSieve's SIEVE capability lists).
EXTENSIONS = (
    "fileinto", "reject", "ereject", "envelope", "body", "variables", "relational",
    "comparator-i;ascii-numeric", "comparator-i;octet", "comparator-i;ascii-casemap",
    "imap4flags", "copy", "mailbox", "date", "index", "include", "vacation",
    "vacation-seconds", "spamtest", "spamtestplus",
)
COMPARATORS = ("i;octet", "i;ascii-casemap", "i;ascii-numeric")

# Tag name -> (kind of its value or "", extension needed or "")
_MATCH = {"is": ("", ""), "contains": ("", ""), "matches": ("", ""),
          "count": ("str", "relational"), "value": ("str", "relational")}
_COMPARATOR = {"comparator": ("str", "")}
_ADDRESS_PART = {"localpart": ("", ""), "domain": ("", ""), "all": ("", "")}
_INDEX = {"index": ("num", "index"), "last": ("", "index")}
_ZONE = {"zone": ("str", ""), "originalzone": ("", "")}
_FLAGS = {"flags": ("strlist", "imap4flags")}
_COPY = {"copy": ("", "copy")}


@dataclass(frozen=True, slots=True)
class Spec:
    positional: tuple[tuple[str, ...], ...]  # accepted kind sequences
    tags: dict[str, tuple[str, str]] = field(default_factory=dict)
    extension: str = ""  # "" for the base language
    tests: str = "none"  # none, one, many
    block: bool = False


_TEST_SPECS: dict[str, Spec] = {
    "address": Spec((("strlist", "strlist"),), _MATCH | _COMPARATOR | _ADDRESS_PART | _INDEX),
    "envelope": Spec((("strlist", "strlist"),), _MATCH | _COMPARATOR | _ADDRESS_PART,
                     "envelope"),
    "header": Spec((("strlist", "strlist"),), _MATCH | _COMPARATOR | _INDEX),
    "exists": Spec((("strlist",),)),
    "size": Spec((("num",),), {"over": ("", ""), "under": ("", "")}),
    "true": Spec(((),)),
    "false": Spec(((),)),
    "not": Spec(((),), tests="one"),
    "allof": Spec(((),), tests="many"),
    "anyof": Spec(((),), tests="many"),
    "body": Spec((("strlist",),), _MATCH | _COMPARATOR
                 | {"raw": ("", ""), "content": ("strlist", ""), "text": ("", "")}, "body"),
    "string": Spec((("strlist", "strlist"),), _MATCH | _COMPARATOR, "variables"),
    "date": Spec((("str", "str", "strlist"),), _MATCH | _COMPARATOR | _ZONE | _INDEX, "date"),
    "currentdate": Spec((("str", "strlist"),), _MATCH | _COMPARATOR | {"zone": ("str", "")},
                        "date"),
    "hasflag": Spec((("strlist",), ("strlist", "strlist")), _MATCH | _COMPARATOR,
                    "imap4flags"),
    "spamtest": Spec((("str",),), _MATCH | _COMPARATOR | {"percent": ("", "spamtestplus")},
                     "spamtest"),
    "mailboxexists": Spec((("strlist",),), {}, "mailbox"),
}

_FLAG_ACTION = Spec((("strlist",), ("str", "strlist")), {}, "imap4flags")
_SET_MODIFIERS = {m: ("", "") for m in ("lower", "upper", "lowerfirst", "upperfirst",
                                          "quotewildcard", "length")}

_COMMAND_SPECS: dict[str, Spec] = {
    "require": Spec((("strlist",),)),
    "if": Spec(((),), tests="one", block=True),
    "elsif": Spec(((),), tests="one", block=True),
    "else": Spec(((),), block=True),
    "stop": Spec(((),)),
    "keep": Spec(((),), _FLAGS),
    "discard": Spec(((),)),
    "fileinto": Spec((("str",),), _FLAGS | _COPY | {"create": ("", "mailbox")}, "fileinto"),
    "redirect": Spec((("str",),), _COPY),
    "reject": Spec((("str",),), {}, "reject"),
    "ereject": Spec((("str",),), {}, "ereject"),
    "vacation": Spec((("str",),), {
        "days": ("num", ""), "seconds": ("num", "vacation-seconds"), "subject": ("str", ""),
        "from": ("str", ""), "addresses": ("strlist", ""), "mime": ("", ""),
        "handle": ("str", "")}, "vacation"),
    "setflag": _FLAG_ACTION,
    "addflag": _FLAG_ACTION,
    "removeflag": _FLAG_ACTION,
    "set": Spec((("str", "str"),), _SET_MODIFIERS, "variables"),
    "include": Spec((("str",),), {"personal": ("", ""), "global": ("", ""), "once": ("", ""),
                                  "optional": ("", "")}, "include"),
    "return": Spec(((),), {}, "include"),
    "global": Spec((("strlist",),), {}, "include"),
}

# Tags of one group that exclude each other.
_EXCLUSIVE = (
    {"is", "contains", "matches", "count", "value"},
    {"localpart", "domain", "all"},
    {"over", "under"},
    {"raw", "content", "text"},
    {"days", "seconds"},
    {"personal", "global"},
    {"zone", "originalzone"},
)


@dataclass(slots=True)
class Script:
    commands: list[Command]
    requires: frozenset[str]
    includes: list[tuple[str, str, bool]]  # (scope, name, optional) named by include
    tests: frozenset[str] = frozenset()  # the names of the tests it uses
    # The header fields its tests can read (lower-case), None when a name comes from a
    # variable; what the interpreter scans the header for (mime_scan.field_finder).
    header_names: frozenset[str] | None = None
    finder: re.Pattern[bytes] = field(default_factory=lambda: mime_scan.field_finder(None))
    # The whole script as one function of the interpreter (sieve/compiled.py ``compiled_program``),
    # made at its first run; the compiled script is cached by text, so once per script.
    program: Callable[[Any], None] | None = field(default=None, compare=False, repr=False)


def compile_script(text: str) -> Script:
    """Parses and checks ``text``; raises SieveSyntaxError with the line of the fault."""
    commands = parse(text)
    checker = _Checker()
    checker.block(commands, top=True)
    names = None if checker.header_names is None else frozenset(checker.header_names)
    return Script(commands, frozenset(checker.requires), checker.includes,
                  frozenset(checker.tests), names, mime_scan.field_finder(names))


class _Checker:
    def __init__(self) -> None:
        self.requires: set[str] = set()
        self.includes: list[tuple[str, str, bool]] = []
        self.tests: set[str] = set()
        self.header_names: set[str] | None = set()
        self.requires_open = True  # RFC 5228 3.2: require comes before any other command

    def block(self, commands: list[Command], top: bool = False) -> None:
        previous = ""
        for command in commands:
            name = command.name
            if name == "require":
                if not (top and self.requires_open):
                    raise SieveSyntaxError("require must come before other commands",
                                           command.line)
            else:
                self.requires_open = False
            if name in ("elsif", "else") and previous not in ("if", "elsif"):
                raise SieveSyntaxError(f"{name} without if", command.line)
            spec = _COMMAND_SPECS.get(name)
            if spec is None:
                raise SieveSyntaxError(f"unknown command {name!r}", command.line)
            self.node(command, spec, "command")
            if spec.block != (command.block is not None):
                raise SieveSyntaxError(f"{name} {'needs' if spec.block else 'takes no'} block",
                                       command.line)
            if name == "require":
                self.require(command)
            elif name == "include":
                self.include(command)
            if command.block is not None:
                self.block(command.block)
            previous = name

    def require(self, command: Command) -> None:
        names = _strings(command.positional[0])
        for extension in names:
            if extension.lower() not in EXTENSIONS:
                raise SieveSyntaxError(f"unsupported extension {extension!r}", command.line)
            self.requires.add(extension.lower())

    def include(self, command: Command) -> None:
        name = _strings(command.positional[0])[0]
        if not name or "/" in name or len(name) > 128:
            raise SieveSyntaxError(f"bad script name {name!r} in include", command.line)
        scope = "global" if "global" in command.tags else "personal"
        self.includes.append((scope, name, "optional" in command.tags))

    def node(self, node: Command | Test, spec: Spec, what: str) -> None:
        if spec.extension and spec.extension not in self.requires:
            raise SieveSyntaxError(f"{what} {node.name!r} needs require \"{spec.extension}\"",
                                   node.line)
        self.arguments(node, spec)
        count = len(node.tests)
        if spec.tests == "none" and count:
            raise SieveSyntaxError(f"{node.name} takes no test", node.line)
        if spec.tests == "one" and count != 1:
            raise SieveSyntaxError(f"{node.name} takes exactly one test", node.line)
        if spec.tests == "many" and count == 0:
            raise SieveSyntaxError(f"{node.name} takes a test list", node.line)
        for test in node.tests:
            self.tests.add(test.name)
            test_spec = _TEST_SPECS.get(test.name)
            if test_spec is None:
                raise SieveSyntaxError(f"unknown test {test.name!r}", test.line)
            self.node(test, test_spec, "test")
            _settle_match(test)
            self.note_header_names(test)

    def note_header_names(self, test: Test) -> None:
        """Adds the header fields ``test`` reads to ``header_names`` (None: any may be)."""
        if self.header_names is None:
            return
        if test.name == "body":
            self.header_names.update(mime_scan.CONTENT_FIELDS)  # to find the parts
        if test.name not in ("header", "address", "exists", "date"):
            return
        names = test.positional[0] if test.positional else None
        if not isinstance(names, StringList) or not names.plain:
            self.header_names = None  # named by a variable (RFC 5229): known at run time
            return
        self.header_names.update(n.lower() for n in names.items)

    def arguments(self, node: Command | Test, spec: Spec) -> None:
        args = node.args
        i = 0
        while i < len(args):
            arg = args[i]
            if not isinstance(arg, Tag):
                node.positional.append(arg)
                i += 1
                continue
            known = spec.tags.get(arg.name)
            if known is None:
                raise SieveSyntaxError(f"{node.name} has no :{arg.name}", node.line)
            kind, extension = known
            if extension and extension not in self.requires:
                raise SieveSyntaxError(f":{arg.name} needs require \"{extension}\"", node.line)
            if arg.name in node.tags:
                raise SieveSyntaxError(f":{arg.name} given twice", node.line)
            value: Arg | None = None
            if kind:
                if i + 1 >= len(args) or not _is_kind(args[i + 1], kind):
                    raise SieveSyntaxError(f":{arg.name} needs a {_KIND_NAMES[kind]}",
                                           node.line)
                value = args[i + 1]
                i += 1
            node.tags[arg.name] = value
            i += 1
        for group in _EXCLUSIVE:
            both = sorted(group & node.tags.keys())
            if len(both) > 1:
                raise SieveSyntaxError(f"{node.name}: :{' and :'.join(both)} exclude each other",
                                       node.line)
        if node.name == "size" and len(node.tags) != 1:
            raise SieveSyntaxError("size needs :over or :under", node.line)
        kinds = [_kind_of(a) for a in node.positional]
        if not any(_fits(kinds, allowed) for allowed in spec.positional):
            raise SieveSyntaxError(f"wrong arguments for {node.name}", node.line)
        comparator = node.tags.get("comparator")
        if isinstance(comparator, StringList):
            name = comparator.items[0].lower()
            if name not in COMPARATORS:
                raise SieveSyntaxError(f"unknown comparator {name!r}", node.line)
            if name == "i;ascii-numeric" and "comparator-i;ascii-numeric" not in self.requires:
                raise SieveSyntaxError('i;ascii-numeric needs require '
                                       '"comparator-i;ascii-numeric"', node.line)
        for relation in ("count", "value"):
            rel = node.tags.get(relation)
            if isinstance(rel, StringList) and rel.items[0].lower() not in _RELATIONS:
                raise SieveSyntaxError(f"unknown relation {rel.items[0]!r}", node.line)


_RELATIONS = ("gt", "ge", "lt", "le", "eq", "ne")
_MATCH_TYPES = ("is", "contains", "matches", "count", "value")


def _settle_match(test: Test) -> None:
    """The match type, relation and comparator, read once rather than per message."""
    test.match = next((m for m in _MATCH_TYPES if m in test.tags), "is")
    relation = test.tags.get(test.match)
    if isinstance(relation, StringList):
        test.relation = relation.items[0].lower()
    comparator = test.tags.get("comparator")
    if isinstance(comparator, StringList):
        test.comparator = comparator.items[0].lower()
    if test.comparator == "i;ascii-numeric" and test.match in ("contains", "matches"):
        raise SieveSyntaxError(f"i;ascii-numeric cannot do :{test.match}", test.line)
_KIND_NAMES = {"str": "string", "strlist": "string list", "num": "number"}


def _is_kind(arg: Arg, kind: str) -> bool:
    return _fits([_kind_of(arg)], (kind,))


def _kind_of(arg: Arg) -> str:
    if isinstance(arg, int):
        return "num"
    if isinstance(arg, StringList):
        return "str" if len(arg.items) == 1 else "strlist"
    return "tag"


def _fits(kinds: list[str], allowed: tuple[str, ...]) -> bool:
    if len(kinds) != len(allowed):
        return False
    return all(k == a or (a == "strlist" and k == "str") for k, a in zip(kinds, allowed,
                                                                              strict=True))


def _strings(arg: Arg | None) -> tuple[str, ...]:
    return arg.items if isinstance(arg, StringList) else ()
