"""A Sieve script as one generated Python function: what sieve/compiled.py's tree of closures
does, with the script's ifs as Python ifs and its common tests as inline expressions over
values read once per message into the function's local variables.

Safe by construction: the generated source holds only names made here (``c0``, ``v1``, ``j2``,
``interp``...), keywords and operators. Every string, number and set the script gives is a
constant bound in the function's namespace, never written into the source; the namespace has
no builtins but ``len``. Scripts past a few hundred nodes, or nested deeper than a few
levels, are left to the closures (the source, and its compile time, stay small).

Each test answers as the general path (Interpreter.test) does: tests/unit/test_sieve.py runs
scripts three ways (generated, closures, general) and compares the outcomes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from mailstead.proto import mime
from mailstead.sieve import match
from mailstead.sieve.check import Script
from mailstead.sieve.compiled import (
    _FAST_TAGS,
    _FOLDS,
    _action_form,
    _fast_folded,
    _fast_values,
    _test_form,
    _values_key,
    fast_form,
)
from mailstead.sieve.grammar import Command, StringList, Test
from mailstead.sieve.interp import (
    Interpreter,
    _addresses_in,
    _domain,
    _flag_set,
    _int,
    _localpart,
)

MAX_NODES = 600  # commands and tests of a script made into one function
MAX_DEPTH = 12  # nested blocks, and nested tests, of such a script

_Program = Callable[[Interpreter], None]
_JOIN = "\x00".join  # values joined for :contains (a key holding no NUL cannot span two)


class _TooLarge(Exception):
    pass


def generated_program(script: Script) -> _Program | None:
    """``script`` (without include) as one Python function of the interpreter, or None when
    it is too large or deep for one (the closures of compiled.py run it)."""
    if script.includes:
        return None
    gen = _Gen()
    try:
        gen.block(script.commands, 1)
    except _TooLarge:
        return None
    return gen.function()


class _Gen:
    def __init__(self) -> None:
        self.consts: dict[str, object] = {}
        self.lines: list[str] = []
        self.locals: list[str] = []  # per-message values, None until first read
        self.sources: dict[tuple[str, ...], str] = {}  # what a local holds -> its name
        self.nodes = 0

    # -- names --------------------------------------------------------------------------

    def const(self, value: object) -> str:
        name = f"c{len(self.consts)}"
        self.consts[name] = value
        return name

    def cached(self, key: tuple[str, ...], make: Callable[[], str]) -> str:
        """An expression reading the local that holds ``key``, computed by ``make()``'s
        expression at its first read in a run (later reads are a local's)."""
        var = self.sources.get(key)
        if var is None:
            var = self.sources[key] = f"v{len(self.sources)}"
            self.locals.append(var)
        # (the same expression at every read: whichever runs first computes it)
        return f"({var} if {var} is not None else ({var} := {make()}))"

    def fields(self) -> str:
        """The message's header fields the script reads (Interpreter.fields), by name."""
        return self.cached(("fields",), lambda: "interp.fields()")

    def count(self, depth: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES or depth > MAX_DEPTH:
            raise _TooLarge

    # -- commands -----------------------------------------------------------------------

    def emit(self, depth: int, text: str) -> None:
        self.lines.append("    " * depth + text)

    def block(self, commands: Sequence[Command], depth: int) -> None:
        start = len(self.lines)
        i = 0
        while i < len(commands):
            c = commands[i]
            i += 1
            self.count(depth)
            if c.name == "require":
                continue
            if c.name in ("elsif", "else"):
                raise _TooLarge  # (check.py allows them only after an if)
            if c.name != "if":
                self.action(c, depth)
                continue
            self.emit(depth, f"if {self.test(c.tests[0], 1)}:")
            self.block(c.block or [], depth + 1)
            while i < len(commands) and commands[i].name == "elsif":
                self.count(depth)
                self.emit(depth, f"elif {self.test(commands[i].tests[0], 1)}:")
                self.block(commands[i].block or [], depth + 1)
                i += 1
            if i < len(commands) and commands[i].name == "else":
                self.count(depth)
                self.emit(depth, "else:")
                self.block(commands[i].block or [], depth + 1)
                i += 1
        if len(self.lines) == start:
            self.emit(depth, "pass")

    def action(self, c: Command, depth: int) -> None:
        name = c.name
        if name == "stop":
            # RFC 5228 3.3: the end of the script (no include: this function is all of it)
            self.emit(depth, "return")
            return
        if name == "discard":
            self.emit(depth, "out.implicit_keep = False")
            return
        args = c.positional
        if (name == "addflag" and len(args) == 1 and isinstance(args[0], StringList)
                and args[0].plain):  # RFC 5232 3.2, on the internal variable
            given = self.const(frozenset(_flag_set(args[0].items)))
            self.emit(depth, f"interp.flags.update({given})")
            return
        self.emit(depth, f"{self.const(_action_form(c))}(interp)")

    # -- tests --------------------------------------------------------------------------

    def test(self, t: Test, depth: int) -> str:
        self.count(depth)
        name = t.name
        if name == "true":
            return "True"
        if name == "false":
            return "False"
        if name == "not":
            return f"(not {self.test(t.tests[0], depth + 1)})"
        if name in ("anyof", "allof"):  # RFC 5228 5.2, 5.3: stops where the answer is known
            op = " or " if name == "anyof" else " and "
            return "(" + op.join(self.test(sub, depth + 1) for sub in t.tests) + ")"
        if name == "size":
            limit = self.const(_int(t.positional[0]))
            return f"(len(interp.ctx.message) {'>' if 'over' in t.tags else '<'} {limit})"
        inline = self.inline(t)
        if inline is not None:
            return inline
        call = f"{self.const(_test_form(t))}(interp)"
        names = t.positional[0] if t.positional else None
        if (t.name in ("header", "address") and t.match != "count"
                and isinstance(names, StringList) and names.plain):
            # A message without any of the fields gives the test no value to match (every
            # match type but :count, RFC 5231, then answers no): the closure runs only when
            # one is there.
            present = " or ".join(f"{self.const(n.lower())} in {self.fields()}"
                                  for n in names.items)
            return f"(({present or 'False'}) and {call})"
        return call

    def inline(self, t: Test) -> str | None:
        """``t`` as an expression over the message's values, for the shapes of
        compiled.fast_form (every string literal); None for the others."""
        args = t.positional
        if not all(isinstance(a, StringList) and a.plain for a in args):
            return None
        strings = [cast(StringList, a).items for a in args]
        if t.name == "exists":
            found = self.fields()
            wanted = sorted({n.lower() for n in strings[0]})
            return "(" + " and ".join(f"{self.const(n)} in {found}" for n in wanted) + ")" \
                if wanted else "True"
        fold = _FOLDS.get(t.comparator)
        if (t.name not in ("header", "address", "envelope") or t.tags.keys() - _FAST_TAGS
                or t.match not in ("is", "contains", "matches") or fold is None):
            return None
        names = strings[0]
        key = ("folded", t.comparator, *_values_key(t, names))
        values = self.cached(key, lambda: self.values(t, names, fold))

        def joined() -> str:
            return self.cached(("joined", *key), lambda: f"join({values})")
        if t.match == "is":
            equal = frozenset(fold(k) for k in strings[1])
            return f"(not {self.const(equal)}.isdisjoint({values}))"
        if t.match == "contains":
            keys = [fold(k) for k in strings[1]]
            if not keys or any(not k or "\x00" in k for k in keys):
                return None  # ("" is in any value there is: the closure says if there is one)
            return "(" + " or ".join(f"{self.const(k)} in {joined()}" for k in keys) + ")"
        # :matches: the closure matches (and sets ${1}...), once every key's longest literal
        # run is found among the folded values (a value that matches holds all its runs).
        closure = fast_form(t)
        if closure is None:
            return None
        needed = [_longest_literal(match.glob_runs(k, t.comparator)) for k in strings[1]]
        call = f"{self.const(closure)}(interp)"
        if not needed or any(not n or "\x00" in n for n in needed):
            return call
        return "((" + " or ".join(f"{self.const(n)} in {joined()}" for n in needed) + \
            f") and {call})"

    def values(self, t: Test, names: Sequence[str], fold: Callable[[str], str]) -> str:
        """An expression for the values ``t`` compares, each cut at match.MAX_VALUE and
        folded by its comparator: a header or address test on one field straight from the
        message's fields (Interpreter.fields, read once a run), the others through
        compiled.py's getter."""
        if len(names) == 1 and t.name in ("header", "address"):
            name = names[0].lower()
            raw = f"{self.fields()}.get({self.const(name)})"
            if t.name == "header":
                return f"{self.const(_header_values)}({raw}, {self.const(fold)})"
            part = (_localpart if "localpart" in t.tags else _domain if "domain" in t.tags
                    else str)
            # (the field's addresses parsed once a run, for every part a test takes of them)
            found = self.cached(("addresses", name),
                                lambda: f"{self.const(_addresses_of)}({raw})")
            return f"{self.const(_address_values)}({found}, {self.const(part)}, " \
                f"{self.const(fold)})"
        getter = _fast_folded(t, names, _fast_values(t, names), fold)
        return f"{self.const(getter)}(interp)"

    # -- the function -------------------------------------------------------------------

    def function(self) -> _Program | None:
        head = ["def program(interp):", "    out = interp.out"]
        if self.locals:
            head.append("    " + " = ".join(self.locals) + " = None")
        source = "\n".join(head + self.lines) + "\n"
        namespace: dict[str, Any] = {"__builtins__": {}, "len": len, "join": _JOIN,
                                     **self.consts}
        try:
            code = compile(source, "<sieve script>", "exec")
            exec(code, namespace)  # our names only: the script's data are constants
        except (SyntaxError, RecursionError, MemoryError, ValueError):
            return None  # (the limits above keep it from happening: the closures run it)
        program = cast(_Program, namespace["program"])
        program.__doc__ = source  # what runs, for a reader in a debugger
        return program


def _header_values(raw: list[str] | None, fold: Callable[[str], str]) -> Sequence[str]:
    """Interpreter.folded for one field's raw values (Interpreter.fields), with ``fold``."""
    if not raw:
        return ()
    # A value comes unfolded, so only one with "=?" needs decoding (Interpreter.decoded).
    return [fold((mime.decoded_header(v) if "=?" in v else v)[: match.MAX_VALUE])
            for v in raw]


def _addresses_of(raw: list[str] | None) -> Sequence[str]:
    """Interpreter.addresses for one field's raw values."""
    if not raw:
        return ()
    return [a for v in raw for a in _addresses_in(v)]


def _address_values(addresses: Sequence[str], part: Callable[[str], str],
                    fold: Callable[[str], str]) -> Sequence[str]:
    """What compiled.py's address test folds for one field's addresses."""
    return [fold(part(a)[: match.MAX_VALUE]) for a in addresses]


def _longest_literal(runs: Sequence[tuple[str, object, int]]) -> str:
    """The longest literal run of a glob (glob_runs): a value it matches holds it."""
    return max((text for text, regex, _n in runs if regex is None), key=len, default="")
