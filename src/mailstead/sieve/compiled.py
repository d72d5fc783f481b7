"""Sieve scripts in their compiled form: the common test shapes as one function each, and a
whole script without ``include`` as a tree of closures, made once per compiled script and
run by Interpreter (sieve/interp.py) instead of its general path. Same answers as the general
path: tests/unit compare the two on many scripts and messages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

from mailstead.proto import mime
from mailstead.sieve import match
from mailstead.sieve.check import Script
from mailstead.sieve.grammar import Command, StringList, Test
from mailstead.sieve.interp import (
    MAX_FILEINTO,
    MAX_HEADER_VALUES,
    MAX_STEPS,
    MAX_VARIABLE,
    Interpreter,
    SieveRuntimeError,
    _domain,
    _flag_set,
    _int,
    _localpart,
    _Stop,
)

# -- tests in their specialised form ----------------------------------------------------------
# The common shapes (header, address, envelope with :is, :contains or :matches and
# i;ascii-casemap or i;octet, exists; every string literal, no :index) answer as the general path of
# Interpreter.test does, with the keys folded once per script rather than once per message
# and without its dispatch: a script runs its tests for every message it is delivered.

_FastTest = Callable[[Interpreter], bool]
_FAST_TAGS = frozenset({"is", "contains", "matches", "comparator", "localpart", "domain",
                        "all"})
_FOLDS: dict[str, Callable[[str], str]] = {"i;ascii-casemap": match.casefold_ascii,
                                           "i;octet": str}


def fast_form(t: Test) -> _FastTest | None:
    """``t`` as one function of the interpreter, or None when it has no such form."""
    args = t.positional
    if not all(isinstance(a, StringList) and a.plain for a in args):
        return None  # a string may name a variable (RFC 5229): the general path expands it
    strings = [cast(StringList, a).items for a in args]
    if t.name == "exists":
        wanted = frozenset(n.lower() for n in strings[0])

        def exists(interp: Interpreter) -> bool:
            found = interp.fields()
            return all(n in found for n in wanted)
        return exists
    fold = _FOLDS.get(t.comparator)
    if (t.name not in ("header", "address", "envelope") or t.tags.keys() - _FAST_TAGS
            or t.match not in ("is", "contains", "matches") or fold is None):
        return None
    values = _fast_values(t, strings[0])
    if t.match == "matches":
        patterns = [match.glob_runs(k, t.comparator) for k in strings[1]]

        def matches(interp: Interpreter) -> bool:
            for value in values(interp):
                value = value[: match.MAX_VALUE]
                folded = fold(value)
                for runs in patterns:
                    found = match.glob_match_runs(value, folded, runs)
                    if found is not None:
                        if interp.frames[-1].variables:  # RFC 5229 3.2
                            interp.matched = [c[:MAX_VARIABLE] for c in (value, *found)]
                        return True
            return False
        return matches
    folded_values = _fast_folded(t, strings[0], values, fold)
    if t.match == "contains":
        keys = tuple(fold(k) for k in strings[1])
        if t.name == "header" and len(strings[0]) == 1 and t.comparator == "i;ascii-casemap":
            field = strings[0][0].lower()  # the most common test of all, with one call less

            def contains_field(interp: Interpreter) -> bool:
                values = interp._folded.get(field)
                for folded in values if values is not None else interp.folded(field):
                    for key in keys:
                        if key in folded:
                            return True
                return False
            return contains_field

        def contains(interp: Interpreter) -> bool:
            for folded in folded_values(interp):
                for key in keys:
                    if key in folded:
                        return True
            return False
        return contains
    equal = frozenset(fold(k) for k in strings[1])

    def is_(interp: Interpreter) -> bool:
        return not equal.isdisjoint(folded_values(interp))
    return is_


def _fast_folded(t: Test, names: Sequence[str], values: Callable[[Interpreter], Sequence[str]],
                 fold: Callable[[str], str]) -> Callable[[Interpreter], Sequence[str]]:
    """``values``, each cut at match.MAX_VALUE and folded by the comparator; a header's
    read from the interpreter's folded fields (one field is often tested many times), the
    others kept for the evaluation under what they read (several tests read the same)."""
    if t.name == "header" and len(names) == 1 and t.comparator == "i;ascii-casemap":
        name = names[0].lower()

        def header(interp: Interpreter) -> Sequence[str]:
            found = interp._folded.get(name)
            return found if found is not None else interp.folded(name)
        return header
    key = ("folded", t.comparator, *_values_key(t, names))

    def folded(interp: Interpreter) -> Sequence[str]:
        found = interp._kept.get(key)
        if found is None:
            found = interp._kept[key] = [fold(v[: match.MAX_VALUE]) for v in values(interp)]
        return found
    return folded


def _values_key(t: Test, names: Sequence[str]) -> tuple[str, ...]:
    """What ``_fast_values`` reads for ``t``: tests with the same key get the same values."""
    part = "localpart" if "localpart" in t.tags else "domain" if "domain" in t.tags else "all"
    return (t.name, part if t.name != "header" else "", *(n.lower() for n in names))


def _fast_values(t: Test, names: Sequence[str]) -> Callable[[Interpreter], Sequence[str]]:
    """What Interpreter.values_and_keys gives ``t`` (without :index) as its values."""
    if t.name == "header":
        if len(names) == 1:
            name = names[0].lower()
            return lambda interp: interp.decoded(name)
        wanted = frozenset(n.lower() for n in names)

        def fields(interp: Interpreter) -> list[str]:
            # as header_values: a value comes unfolded, so only "=?" needs decoding
            values = [f.value for f in interp.scanned() if f.name.lower() in wanted]
            return [mime.decoded_header(v) if "=?" in v else v
                    for v in values[:MAX_HEADER_VALUES]]
        return fields
    part: Callable[[str], str] = (_localpart if "localpart" in t.tags
                                  else _domain if "domain" in t.tags else str)
    if t.name == "address":
        lowered = [n.lower() for n in names]
        key = ("values", *_values_key(t, names))

        def address(interp: Interpreter) -> list[str]:
            found = interp._kept.get(key)
            if found is None:
                found = interp._kept[key] = [part(a) for n in lowered
                                             for a in interp.addresses(n)]
            return found
        return address
    parts = {n.lower() for n in names}
    which = [w for w in ("from", "to") if w in parts]

    def envelope(interp: Interpreter) -> list[str]:
        ctx = interp.ctx
        return [part(ctx.envelope_from if w == "from" else ctx.envelope_to) for w in which]
    return envelope


# -- the whole script as closures -------------------------------------------------------------
# A script without include runs each of its commands and tests at most once (Sieve has no
# loops), so one of at most MAX_STEPS nodes can never run too long: it runs as a tree of
# closures made once per compiled script, without Interpreter.block's dispatch and step count.
# Each node does what the general path does for it; the shapes not written out here call
# that path (Interpreter.test, Interpreter.action) for the node.

_Step = Callable[[Interpreter], None]


def compiled_program(script: Script) -> _Step | None:
    """``script`` as one function of the interpreter, or None when it includes others (or is
    too large to be sure of the step limit): the general path runs it."""
    if script.includes or _nodes(script.commands) > MAX_STEPS:
        return None
    from mailstead.sieve import codegen  # it builds on this module

    return codegen.generated_program(script) or _block_form(script.commands)


def _nodes(commands: Sequence[Command]) -> int:
    def tests(t: Test) -> int:
        return 1 + sum(tests(sub) for sub in t.tests)
    return sum(1 + sum(tests(t) for t in c.tests) + _nodes(c.block or []) for c in commands)


def _nothing(_interp: Interpreter) -> None:
    return None


def _block_form(commands: Sequence[Command]) -> _Step:
    # (test, step): the step runs when the test holds (None: always). A lone if (no elsif,
    # no else) is its test and its block here, not a closure of its own: one call less for
    # each of a script's rules on every message.
    steps: list[tuple[_FastTest | None, _Step]] = []
    i = 0
    while i < len(commands):
        c = commands[i]
        i += 1
        if c.name == "require":
            continue  # (Interpreter.action does nothing for it)
        if c.name != "if":
            steps.append((None, _action_form(c)))
            continue
        # RFC 5228 3.1: an if with its elsif and else (check.py: these follow an if).
        branches = [(_test_form(c.tests[0]), _block_form(c.block or []))]
        while i < len(commands) and commands[i].name == "elsif":
            branches.append((_test_form(commands[i].tests[0]),
                             _block_form(commands[i].block or [])))
            i += 1
        otherwise = None
        if i < len(commands) and commands[i].name == "else":
            otherwise = _block_form(commands[i].block or [])
            i += 1
        if len(branches) == 1 and otherwise is None:
            steps.append(branches[0])
        else:
            steps.append((None, _if_form(branches, otherwise)))
    if not steps:
        return _nothing
    if len(steps) == 1:
        test, step = steps[0]
        return step if test is None else _if_form([(test, step)], None)
    run = tuple(steps)

    def block(interp: Interpreter) -> None:
        for test, step in run:
            if test is None or test(interp):
                step(interp)
    return block


def _if_form(branches: list[tuple[_FastTest, _Step]], otherwise: _Step | None) -> _Step:
    if len(branches) == 1 and otherwise is None:
        test, then = branches[0]

        def if_(interp: Interpreter) -> None:
            if test(interp):
                then(interp)
        return if_
    chain = tuple(branches)

    def if_chain(interp: Interpreter) -> None:
        for test, then in chain:
            if test(interp):
                then(interp)
                return
        if otherwise is not None:
            otherwise(interp)
    return if_chain


def _test_form(t: Test) -> _FastTest:
    name = t.name
    if name == "true":
        return lambda _interp: True
    if name == "false":
        return lambda _interp: False
    if name == "not":
        sub = _test_form(t.tests[0])
        return lambda interp: not sub(interp)
    if name in ("anyof", "allof"):
        # A chain of two-test closures, first to last, each stopping where the answer is
        # known (RFC 5228 5.2, 5.3: as any() and all(), without a generator).
        subs = [_test_form(sub) for sub in t.tests]
        chained = subs[0]
        for sub in subs[1:]:
            chained = _either(chained, sub) if name == "anyof" else _both(chained, sub)
        return chained
    if name == "size":
        limit = _int(t.positional[0])
        if "over" in t.tags:
            return lambda interp: len(interp.ctx.message) > limit
        return lambda interp: len(interp.ctx.message) < limit
    fast = fast_form(t)
    if fast is not None:
        return fast
    args = t.positional
    if all(isinstance(a, StringList) and a.plain for a in args):
        strings = [cast(StringList, a).items for a in args]
        if name == "spamtest":  # (RFC 5235) values_and_keys and compare, less the dispatch
            percent = "percent" in t.tags
            if (t.match == "value" and t.comparator == "i;ascii-numeric"
                    and len(strings[0]) == 1):  # the usual form: one number to compare with
                holds = match.relation(t.relation)
                key = match.numeric_key(strings[0][0])
                return lambda interp: holds(match.compare_numbers(
                    match.numeric_key(interp.spam_value(percent)), key))
            return lambda interp: interp.compare(t, [interp.spam_value(percent)], strings[0])
        if name == "header":
            return lambda interp: interp.compare(t, interp.header_values(t, strings[0]),
                                                 strings[1])
        if name == "body" and (t.tags.get("content") is None
                               or cast(StringList, t.tags["content"]).plain):
            fold = _FOLDS.get(t.comparator)
            if t.match == "contains" and fold is not None:
                keys = tuple(fold(k) for k in strings[0])
                # For a plain ASCII body (Interpreter.ascii_text_body): the keys that can be
                # in it (a key with other characters cannot) as octets, searched in place.
                octets = tuple(k.encode("ascii") for k in keys if k.isascii())
                text_only = "content" not in t.tags and "raw" not in t.tags
                lower = t.comparator == "i;ascii-casemap"

                def body_contains(interp: Interpreter) -> bool:
                    found = interp.ascii_text_body(lower) if text_only else None
                    if found is not None:
                        data, start = found
                        end = start + match.MAX_VALUE  # as the cut below, in octets
                        return any(data.find(key, start, end) >= 0 for key in octets)
                    # match.test_values for :contains, with the keys folded once
                    for text in interp.body_values(t):
                        folded = fold(text[: match.MAX_VALUE])
                        for key in keys:
                            if key in folded:
                                return True
                    return False
                return body_contains
            return lambda interp: interp.compare(t, interp.body_values(t), strings[0])
    return lambda interp: interp.test(t)


def _either(first: _FastTest, second: _FastTest) -> _FastTest:
    return lambda interp: first(interp) or second(interp)


def _both(first: _FastTest, second: _FastTest) -> _FastTest:
    return lambda interp: first(interp) and second(interp)


def _action_form(c: Command) -> _Step:
    name = c.name
    if name == "stop":
        def stop(_interp: Interpreter) -> None:
            raise _Stop
        return stop
    if name == "discard":
        def discard(interp: Interpreter) -> None:
            interp.out.implicit_keep = False
        return discard
    args = c.positional
    if not all(isinstance(a, StringList) and a.plain for a in args):
        return lambda interp: interp.action(c)  # a string may name a variable
    strings = [cast(StringList, a).items for a in args]
    if name == "addflag" and len(strings) == 1:  # RFC 5232 3.2, on the internal variable
        given = frozenset(_flag_set(strings[0]))
        return lambda interp: interp.flags.update(given)
    if (name == "fileinto" and "flags" not in c.tags and strings[0]
            and 0 < len(strings[0][0]) <= 512):
        box, create, copy = strings[0][0], "create" in c.tags, "copy" in c.tags

        def fileinto(interp: Interpreter) -> None:
            out = interp.out
            if len(out.fileinto) >= MAX_FILEINTO:
                raise SieveRuntimeError("too many fileinto actions")
            out.fileinto.append((box, frozenset(interp.flags), create))
            if not copy:
                out.implicit_keep = False
        return fileinto
    return lambda interp: interp.action(c)
