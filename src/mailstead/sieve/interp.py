"""Running a checked Sieve script against one message for one recipient: the actions to take.

Pure: the message, the envelope, the spam verdict, the mailboxes that exist and the scripts an
``include`` may name are given; the result (``Outcome``) says where copies go, with which
flags, what to redirect, reject or answer. The delivery service carries it out. A runtime
error raises SieveRuntimeError, and the caller keeps the message in INBOX (RFC 5228 2.10.6).
"""

from __future__ import annotations

import email.utils
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

from mailstead.proto import mime, mime_scan
from mailstead.proto.headers import header_section
from mailstead.sieve import match
from mailstead.sieve.check import Script
from mailstead.sieve.grammar import Arg, Command, StringList, Test

MAX_STEPS = 20_000  # commands and tests run, over all included scripts
MAX_INCLUDE_DEPTH = 5
MAX_REDIRECTS = 5
MAX_FILEINTO = 32
MAX_BODY = 1024 * 1024  # characters of a body part that the body test looks at
MAX_VARIABLE = 16 * 1024  # characters a variable holds (RFC 5229 3: the limit is ours)
MAX_VARIABLES = 256
MAX_HEADER_VALUES = 200  # fields of one name that a test looks at


class SieveRuntimeError(Exception):
    pass


# Tests that compare values against keys (the others answer by themselves).
_VALUE_TESTS = frozenset({"header", "address", "envelope", "body", "string", "date",
                          "currentdate", "hasflag", "spamtest"})


@dataclass(slots=True)
class Vacation:
    reason: str
    subject: str | None
    sender: str | None  # :from
    addresses: tuple[str, ...]
    mime: bool
    handle: str
    seconds: int


@dataclass(slots=True)
class Outcome:
    fileinto: list[tuple[str, frozenset[str], bool]] = field(default_factory=list)
    redirects: list[str] = field(default_factory=list)
    reject: str | None = None
    vacation: Vacation | None = None
    implicit_keep: bool = True
    keep_flags: frozenset[str] = frozenset()  # the flags of the implicit keep

    def targets(self) -> list[tuple[str, frozenset[str], bool]]:
        """(mailbox, flags, create) for every copy to store, the implicit keep included."""
        found = list(self.fileinto)
        if self.implicit_keep and self.reject is None:
            if not found:  # the most common outcome: the implicit keep alone
                return [("INBOX", self.keep_flags, False)]
            found.append(("INBOX", self.keep_flags, False))
        seen: dict[str, tuple[str, frozenset[str], bool]] = {}
        for box, flags, create in found:  # one copy per mailbox (RFC 5228 4.1)
            key = "INBOX" if box.upper() == "INBOX" else box
            old = seen.get(key)
            seen[key] = (key, flags | (old[1] if old else frozenset()), create or bool(old
                                                                                   and old[2]))
        return list(seen.values())


@dataclass(slots=True)
class Context:
    message: bytes
    envelope_from: str
    envelope_to: str
    now: datetime
    mailboxes: frozenset[str] = frozenset()
    spam_score: float | None = None  # None: not tested
    spam_required: float = 5.0
    # (scope, name) -> script, for include (loaded before the run: this code does no I/O)
    scripts: Mapping[tuple[str, str], Script] = field(default_factory=dict)
    _root: mime.Part | None = None
    _head: mime.Part | None = None

    @property
    def root(self) -> mime.Part:
        """The whole part tree (for the body test)."""
        if self._root is None:
            self._root = mime.parse(self.message)
        return self._root

    @property
    def head(self) -> mime.Part:
        """The top-level header fields only: what most tests read, parsed without the body."""
        if self._head is None:
            self._head = self._root if self._root is not None else \
                mime.parse(header_section(self.message))
        return self._head


class _Stop(Exception):
    pass


class _Return(Exception):
    pass


_VAR_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*|[0-9]+)\}")
_HAS_REF = "${"


class _Frame:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.vars: dict[str, str] = {}
        self.globals: set[str] = set()
        self.variables = "variables" in script.requires


class Interpreter:
    def __init__(self, ctx: Context, finder: re.Pattern[bytes] | None = None) -> None:
        self.ctx = ctx
        self.out = Outcome()
        self.flags: set[str] = set()  # the internal variable of imap4flags (RFC 5232 3)
        self.globals: dict[str, str] = {}
        self.matched: list[str] = []
        self.steps = 0
        self.included_once: set[tuple[str, str]] = set()
        self.frames: list[_Frame] = []
        self.explicit_keep = False
        # The header fields the scripts read, scanned for once (mime_scan.scan_header) rather than
        # parsing the whole header; the fields of ctx.head when the scan cannot say.
        self.finder = finder
        self._scanned: list[mime.HeaderField] | None = None
        self._header_end = -1  # where the scanned header ends (-1: it was parsed instead)
        self._body_root: mime.Part | None = None
        self._fields: dict[str, list[str]] | None = None  # lower-case name -> raw values
        self._decoded: dict[str, list[str]] = {}
        self._folded: dict[str, list[str]] = {}
        self._addresses: dict[str, list[str]] = {}
        # Values (and folded values) of the specialised tests, by what they read.
        self._kept: dict[tuple[str, ...], list[str]] = {}
        self._lowered: bytes | None = None  # the message, A-Z lowered (ascii_text_body)

    # -- running ------------------------------------------------------------------------

    def run(self, script: Script) -> Outcome:
        program = script.program
        if program is None:
            from mailstead.sieve.compiled import compiled_program  # it builds on this module

            program = script.program = compiled_program(script) or _no_program
        try:
            if program is _no_program:
                self.run_script(script)
            else:  # as run_script, without counting steps (compiled_program says why it need not)
                self.frames.append(_Frame(script))
                try:
                    program(self)
                except _Return:
                    pass
        except _Stop:
            pass
        out = self.out
        if out.reject is not None and (out.fileinto or out.redirects or self.explicit_keep
                                       or out.vacation is not None):
            # RFC 5429 2.2: reject cannot be combined with other delivering actions.
            raise SieveRuntimeError("reject together with keep, fileinto, redirect or "
                                    "vacation")
        if out.implicit_keep:
            out.keep_flags = frozenset(self.flags)
        return out

    def run_script(self, script: Script) -> None:
        if len(self.frames) >= MAX_INCLUDE_DEPTH:
            raise SieveRuntimeError("include nested too deeply")
        self.frames.append(_Frame(script))
        try:
            self.block(script.commands)
        except _Return:
            pass
        finally:
            self.frames.pop()

    def block(self, commands: Sequence[Command]) -> None:
        taken = False  # the last if/elsif chose its branch
        for command in commands:
            self.steps += 1
            if self.steps > MAX_STEPS:
                raise SieveRuntimeError("the script ran too long")
            name = command.name
            if name == "if":
                t = command.tests[0]
                fast = t.fast
                if fast is None or fast is _no_fast_form:
                    taken = self.test(t)
                else:  # Interpreter.test, less a call: most commands are such ifs
                    self.steps += 1
                    if self.steps > MAX_STEPS:
                        raise SieveRuntimeError("the script ran too long")
                    taken = fast(self)
                if taken:
                    self.block(command.block or [])
            elif name == "elsif":
                if not taken:
                    taken = self.test(command.tests[0])
                    if taken:
                        self.block(command.block or [])
            elif name == "else":
                if not taken:
                    self.block(command.block or [])
                taken = True
            else:
                self.action(command)

    def action(self, c: Command) -> None:
        name = c.name
        out = self.out
        if name == "require":
            return
        if name == "stop":
            raise _Stop
        if name == "return":
            raise _Return
        if name == "keep":
            self.explicit_keep = True
            out.fileinto.append(("INBOX", self.flags_of(c), False))
            out.implicit_keep = False
        elif name == "discard":
            out.implicit_keep = False
        elif name == "fileinto":
            if len(out.fileinto) >= MAX_FILEINTO:
                raise SieveRuntimeError("too many fileinto actions")
            box = self.string(c.positional[0])
            if not box or len(box) > 512:
                raise SieveRuntimeError(f"bad mailbox name {box!r}")
            out.fileinto.append((box, self.flags_of(c), "create" in c.tags))
            if "copy" not in c.tags:
                out.implicit_keep = False
        elif name == "redirect":
            address = self.string(c.positional[0]).strip()
            if "@" not in address or any(ch in address for ch in " <>\r\n,"):
                raise SieveRuntimeError(f"bad redirect address {address!r}")
            if address.lower() not in (a.lower() for a in out.redirects):
                if len(out.redirects) >= MAX_REDIRECTS:
                    raise SieveRuntimeError("too many redirects")
                out.redirects.append(address)
            if "copy" not in c.tags:
                out.implicit_keep = False
        elif name in ("reject", "ereject"):
            out.reject = self.string(c.positional[0])
            out.implicit_keep = False
        elif name == "vacation":
            self.vacation(c)
        elif name in ("setflag", "addflag", "removeflag"):
            self.flag_action(c)
        elif name == "set":
            self.set_variable(c)
        elif name == "include":
            self.include(c)
        elif name == "global":
            for var in self.strings(c.positional[0]):
                self.frames[-1].globals.add(var.lower())

    def include(self, c: Command) -> None:
        scope = "global" if "global" in c.tags else "personal"
        name = self.string(c.positional[0])
        key = (scope, name)
        if "once" in c.tags:
            if key in self.included_once:
                return
            self.included_once.add(key)
        script = self.ctx.scripts.get(key)
        if script is None:
            if "optional" in c.tags:
                return
            raise SieveRuntimeError(f"included script {scope}:{name} does not exist")
        self.run_script(script)

    def vacation(self, c: Command) -> None:
        if self.out.vacation is not None:
            raise SieveRuntimeError("vacation used twice")  # RFC 5230 4.7
        if "seconds" in c.tags:
            seconds = _int(c.tags["seconds"])
        else:
            # :days 0 is taken as 1 (RFC 5230 4.1 leaves the minimum to the site); at most 90.
            seconds = max(1, min(_int(c.tags.get("days"), 7), 90)) * 86400
        reason = self.string(c.positional[0])
        handle = self.tag_string(c, "handle")
        self.out.vacation = Vacation(
            reason=reason,
            subject=self.tag_string(c, "subject"),
            sender=self.tag_string(c, "from"),
            addresses=tuple(self.tag_strings(c, "addresses")),
            mime="mime" in c.tags,
            # RFC 5230 4.2: without :handle, replies differ by their reason and parameters.
            handle=(handle if handle is not None
                    else _digest(reason, self.tag_string(c, "subject"))),
            seconds=max(0, min(seconds, 90 * 86400)),
        )

    def flags_of(self, c: Command) -> frozenset[str]:
        given = c.tags.get("flags")
        if given is None:
            return frozenset(self.flags)
        return frozenset(_flag_set(self.strings(given)))

    def flag_action(self, c: Command) -> None:
        if len(c.positional) == 2:
            var = self.string(c.positional[0]).lower()
            target = set(_flag_set(self.get_var(var).split()))
        else:
            var, target = "", self.flags
        given = _flag_set(self.strings(c.positional[-1]))
        if c.name == "setflag":
            target.clear()
            target.update(given)
        elif c.name == "addflag":
            target.update(given)
        else:
            lowered = {f.lower() for f in given}
            for flag in [f for f in target if f.lower() in lowered]:
                target.discard(flag)
        if var:
            self.set_var(var, " ".join(sorted(target)))

    def set_variable(self, c: Command) -> None:
        name = self.strings(c.positional[0])[0].lower()
        if not re.fullmatch(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?", name):
            raise SieveRuntimeError(f"bad variable name {name!r}")
        value = self.string(c.positional[1])
        tags = c.tags
        # RFC 5229 4.1: modifiers apply by precedence, :length last.
        if "lower" in tags:
            value = value.lower()
        if "upper" in tags:
            value = value.upper()
        if "lowerfirst" in tags:
            value = value[:1].lower() + value[1:]
        if "upperfirst" in tags:
            value = value[:1].upper() + value[1:]
        if "quotewildcard" in tags:
            value = re.sub(r"([*?\\])", r"\\\1", value)
        if "length" in tags:
            value = str(len(value))
        self.set_var(name, value)

    # -- variables ----------------------------------------------------------------------

    def set_var(self, name: str, value: str) -> None:
        value = value[:MAX_VARIABLE]
        frame = self.frames[-1]
        if name.startswith("global.") or name in frame.globals:
            store = self.globals
            name = name.removeprefix("global.")
        else:
            store = frame.vars
        if name not in store and len(store) >= MAX_VARIABLES:
            raise SieveRuntimeError("too many variables")
        store[name] = value

    def get_var(self, name: str) -> str:
        name = name.lower()
        if name.isdigit():
            index = int(name)
            return self.matched[index] if index < len(self.matched) else ""
        frame = self.frames[-1]
        if name.startswith("global."):
            return self.globals.get(name[7:], "")
        if name in frame.globals:
            return self.globals.get(name, "")
        return frame.vars.get(name, "")

    def expand(self, text: str) -> str:
        if _HAS_REF not in text or not self.frames[-1].variables:
            return text
        out = _VAR_REF.sub(lambda m: self.get_var(m.group(1)), text)
        return out[: MAX_VARIABLE * 4]

    def string(self, arg: Arg | None) -> str:
        items = self.strings(arg)
        return items[0] if items else ""

    def strings(self, arg: Arg | None) -> Sequence[str]:
        if not isinstance(arg, StringList):
            return ()
        if arg.plain or not self.frames[-1].variables:
            return arg.items
        return [self.expand(s) for s in arg.items]

    def tag_string(self, node: Command | Test, tag: str) -> str | None:
        return self.string(node.tags[tag]) if tag in node.tags else None

    def tag_strings(self, node: Command | Test, tag: str) -> Sequence[str]:
        return self.strings(node.tags.get(tag))

    # -- tests --------------------------------------------------------------------------

    def test(self, t: Test) -> bool:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise SieveRuntimeError("the script ran too long")
        fast = t.fast
        if fast is None:
            from mailstead.sieve.compiled import fast_form  # it builds on this module

            fast = t.fast = fast_form(t) or _no_fast_form
        if fast is not _no_fast_form:
            return fast(self)
        name = t.name
        if name in _VALUE_TESTS:
            values, keys = self.values_and_keys(t)
            return self.compare(t, values, keys)
        if name == "true":
            return True
        if name == "false":
            return False
        if name == "not":
            return not self.test(t.tests[0])
        if name == "allof":
            return all(self.test(sub) for sub in t.tests)
        if name == "anyof":
            return any(self.test(sub) for sub in t.tests)
        if name == "exists":
            names = {n.lower() for n in self.strings(t.positional[0])}
            return all(name in self.fields() for name in names)
        if name == "size":
            limit = _int(t.positional[0])
            size = len(self.ctx.message)
            return size > limit if "over" in t.tags else size < limit
        if name == "mailboxexists":
            return all(_box_key(b) in self.ctx.mailboxes for b in self.strings(t.positional[0]))
        values, keys = self.values_and_keys(t)
        return self.compare(t, values, keys)

    def compare(self, t: Test, values: Sequence[str], keys: Sequence[str]) -> bool:
        ok, captured = match.test_values(values, keys, t.match, t.relation, t.comparator)
        if ok and captured is not None and self.frames[-1].variables:
            self.matched = [c[:MAX_VARIABLE] for c in captured]  # RFC 5229 3.2
        return ok

    def values_and_keys(self, t: Test) -> tuple[Sequence[str], Sequence[str]]:
        name = t.name
        pos = t.positional
        if name == "header":
            return self.header_values(t, self.strings(pos[0])), self.strings(pos[1])
        if name == "address":
            found = []
            if "index" in t.tags:
                for value in self.header_values(t, self.strings(pos[0]), decode=False):
                    found += _addresses_in(value)
            else:
                for header in self.strings(pos[0]):
                    found += self.addresses(header.lower())
            return [_address_part(a, t) for a in found], self.strings(pos[1])
        if name == "envelope":
            parts = {p.lower() for p in self.strings(pos[0])}
            addresses = []
            if "from" in parts:
                addresses.append(self.ctx.envelope_from)
            if "to" in parts:
                addresses.append(self.ctx.envelope_to)
            return [_address_part(a, t) for a in addresses], self.strings(pos[1])
        if name == "body":
            return self.body_values(t), self.strings(pos[0])
        if name == "string":
            values = [v for v in self.strings(pos[0]) if v or "count" not in t.tags]
            return values, self.strings(pos[1])
        if name == "date":
            header = self.string(pos[0])
            values = []
            for raw in self.header_values(t, [header], decode=False):
                when = _parse_date(raw)
                if when is not None:
                    values.append(date_part(self.zoned(t, when), self.string(pos[1])))
            return values, self.strings(pos[2])
        if name == "currentdate":
            return [date_part(self.zoned(t, self.ctx.now), self.string(pos[0]))], \
                self.strings(pos[1])
        if name == "hasflag":
            if len(pos) == 2:
                flags: list[str] = []
                for var in self.strings(pos[0]):
                    flags += self.get_var(var).split()
            else:
                flags = sorted(self.flags)
            return flags, self.strings(pos[-1])
        if name == "spamtest":
            return [self.spam_value("percent" in t.tags)], self.strings(pos[0])
        raise SieveRuntimeError(f"test {name} cannot run")

    def scanned(self) -> list[mime.HeaderField]:
        """The top-level header fields the scripts may read (at least those), in order."""
        if self._scanned is None:
            ctx = self.ctx
            found = None
            if ctx._head is None and self.finder is not None:
                found = mime_scan.scan_header(ctx.message, self.finder)
            if found is None:
                self._scanned = ctx.head.fields
            else:
                self._scanned, self._header_end = found
        return self._scanned

    def fields(self) -> dict[str, list[str]]:
        if self._fields is None:
            self._fields = {}
            for f in self.scanned():
                found = self._fields.setdefault(f.name.lower(), [])
                if len(found) < MAX_HEADER_VALUES:
                    found.append(f.value)
        return self._fields

    def decoded(self, name: str) -> list[str]:
        found = self._decoded.get(name)
        if found is None:
            fields = self._fields if self._fields is not None else self.fields()
            # Field values come unfolded; only those with an encoded word need decoding.
            found = self._decoded[name] = [mime.decoded_header(v) if "=?" in v else v
                                           for v in fields.get(name, ())]
        return found

    def folded(self, name: str) -> list[str]:
        """decoded(name), each value cut at match.MAX_VALUE and folded (i;ascii-casemap)."""
        found = self._folded.get(name)
        if found is None:
            found = self._folded[name] = [match.casefold_ascii(v[: match.MAX_VALUE])
                                          for v in self.decoded(name)]
        return found

    def addresses(self, name: str) -> list[str]:
        found = self._addresses.get(name)
        if found is None:
            found = self._addresses[name] = [a for v in self.fields().get(name, ())
                                             for a in _addresses_in(v)]
        return found

    def header_values(self, t: Test, names: Sequence[str], decode: bool = True
                      ) -> Sequence[str]:
        if len(names) == 1:
            name = names[0].lower()
            values = self.decoded(name) if decode else self.fields().get(name, [])
        else:
            wanted = {n.lower() for n in names}
            values = [f.value for f in self.scanned() if f.name.lower() in wanted]
            if decode:  # as decoded(): a value comes unfolded, so only "=?" needs decoding
                values = [mime.decoded_header(v) if "=?" in v else v for v in values]
        if "index" in t.tags:  # RFC 5260 6: count from the top, or with :last from the end
            index = _int(t.tags["index"])
            position = len(values) - index if "last" in t.tags else index - 1
            values = [values[position]] if 0 <= position < len(values) and index > 0 else []
        return values[:MAX_HEADER_VALUES]

    def body_values(self, t: Test) -> list[str]:
        data = self.ctx.message
        kinds = [k.lower() for k in self.strings(t.tags["content"])] if "content" in t.tags \
            else ["text"]
        if "raw" not in t.tags and self.ctx._root is None:
            fields = self.scanned()
            model = mime_scan.leaf_model(fields) if self._header_end >= 0 else None
            if model is not None:
                # One part, whose header was scanned: what text_parts finds in it, read
                # without building its tree (body_root).
                if model.content_type[0] != "text" or not _type_matches(model.mime_type, kinds):
                    return []
                return [mime_scan.leaf_text(data, self._header_end, model)[:MAX_BODY]]
        root = self.body_root()
        if "raw" in t.tags:
            return [data[root.body_start : root.body_end][:MAX_BODY].decode("utf-8", "replace")]
        found = []
        for part, text in mime.text_parts(data, root):
            if _type_matches(part.mime_type, kinds):
                found.append(text[:MAX_BODY])
        return found

    def ascii_text_body(self, lower: bool) -> tuple[bytes, int] | None:
        """The message (A-Z lowered when ``lower``) and where its body starts, when the
        body is, octet for octet, the one text that ``body_values`` gives ``body :text``
        (RFC 5173 5.3): a one-part text/* message whose header was scanned, not in base64
        or quoted-printable, in an ASCII charset, with only ASCII octets. A test can then
        search the octets, without decoding and folding a copy of them; None otherwise."""
        data = self.ctx.message
        if self.ctx._root is not None or not data.isascii():
            return None
        fields = self.scanned()
        if self._header_end < 0:
            return None
        model = mime_scan.leaf_model(fields)
        if (model is None or model.content_type[0] != "text"
                or model.transfer_encoding in ("base64", "quoted-printable")
                or (model.charset or "").strip().strip('"').lower() not in _ASCII_CHARSETS):
            return None
        if lower:
            if self._lowered is None:
                self._lowered = data.lower()  # bytes.lower folds A-Z only: i;ascii-casemap
            data = self._lowered
        return data, self._header_end

    def body_root(self) -> mime.Part:
        """The message's part tree; for a message of one part whose header was scanned, that
        part made from the scanned fields (the header is not parsed twice)."""
        ctx = self.ctx
        if ctx._root is not None:
            return ctx._root
        if self._body_root is None:
            fields = self.scanned()
            if self._header_end >= 0:
                self._body_root = mime_scan.single_part(ctx.message, self._header_end, fields)
            if self._body_root is None:
                self._body_root = ctx.root
        return self._body_root

    def zoned(self, t: Test, when: datetime) -> datetime:
        if "originalzone" in t.tags:
            return when
        zone = self.tag_string(t, "zone")
        if zone is None:
            return when.astimezone(self.ctx.now.tzinfo)
        offset = _zone_offset(zone)
        if offset is None:
            raise SieveRuntimeError(f"bad time zone {zone!r}")
        return when.astimezone(offset)

    def spam_value(self, percent: bool) -> str:
        """RFC 5235 3.2: "0" untested, else 1 (surely good) to 10 (surely spam); with
        :percent (RFC 5235 3.3) 0 to 100."""
        score = self.ctx.spam_score
        if score is None:
            return "0"
        share = max(0.0, min(score / max(self.ctx.spam_required, 0.1), 1.0))
        if percent:
            return str(round(share * 100))
        return str(1 + round(share * 9))


# Markers: a test or script that has no compiled form (sieve/compiled.py); never called.
def _no_fast_form(_interp: Interpreter) -> bool:
    raise AssertionError("a marker, never called")


def _no_program(_interp: Interpreter) -> None:
    raise AssertionError("a marker, never called")


# -- helpers ----------------------------------------------------------------------------------


def _digest(*parts: str | None) -> str:
    return hashlib.sha256(repr(parts).encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _int(arg: Arg | None, default: int = 0) -> int:
    return arg if isinstance(arg, int) else default


def _localpart(address: str) -> str:
    return address.rpartition("@")[0] if "@" in address else address


def _domain(address: str) -> str:
    return address.rpartition("@")[2] if "@" in address else ""


def _flag_set(items: Sequence[str]) -> set[str]:
    """RFC 5232 3: each string may hold several flags separated by spaces; case-insensitive."""
    found: dict[str, str] = {}
    for item in items:
        for flag in item.split():
            found.setdefault(flag.lower(), flag)
    return set(found.values())


def _box_key(name: str) -> str:
    return "INBOX" if name.upper() == "INBOX" else name


_SIMPLE_FIELD = re.compile(r'(?:[^<>@,;:"()\\]*<(?P<a>[^<>\s]+)>'
                           r'|(?P<b>[^\s<>@,;:"()\\]+@[^\s<>,;:"()\\]+))\s*')


def _addresses_in(value: str) -> list[str]:
    """The addresses of an address-list field: the common one-address forms by one regex,
    anything else by email.utils (quoted names, groups, comments)."""
    m = _SIMPLE_FIELD.fullmatch(value.strip())
    if m is not None:
        return [m.group("a") or m.group("b")]
    return [addr for _n, addr in email.utils.getaddresses([value])]


def _address_part(address: str, t: Test) -> str:
    if "localpart" in t.tags:
        return _localpart(address)
    if "domain" in t.tags:
        return _domain(address)
    return address


# Charsets whose decoding of ASCII octets gives the same characters (mime._decode_charset).
_ASCII_CHARSETS = frozenset({"", "us-ascii", "ascii", "utf-8"})


def _type_matches(mime_type: str, kinds: list[str]) -> bool:
    main = mime_type.split("/")[0]
    return any(k in ("", mime_type, main) for k in kinds)


def _parse_date(raw: str) -> datetime | None:
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _zone_offset(zone: str) -> timezone | None:
    m = re.fullmatch(r"([+-])([0-9]{2})([0-9]{2})", zone)
    if m is None:
        return None
    minutes = int(m.group(2)) * 60 + int(m.group(3))
    return timezone(timedelta(minutes=-minutes if m.group(1) == "-" else minutes))


_DATE_PARTS: dict[str, Callable[[datetime], str]] = {
    "year": lambda d: f"{d.year:04d}",
    "month": lambda d: f"{d.month:02d}",
    "day": lambda d: f"{d.day:02d}",
    "date": lambda d: f"{d.year:04d}-{d.month:02d}-{d.day:02d}",
    "julian": lambda d: str((d.date() - datetime(1858, 11, 17).date()).days),
    "hour": lambda d: f"{d.hour:02d}",
    "minute": lambda d: f"{d.minute:02d}",
    "second": lambda d: f"{d.second:02d}",
    "time": lambda d: f"{d.hour:02d}:{d.minute:02d}:{d.second:02d}",
    "iso8601": lambda d: d.isoformat(),
    "std11": lambda d: email.utils.format_datetime(d),
    "zone": lambda d: d.strftime("%z") or "+0000",
    "weekday": lambda d: str((d.weekday() + 1) % 7),  # 0 is Sunday (RFC 5260 4.2)
}


def date_part(when: datetime, part: str) -> str:
    """One date-part of RFC 5260 4.2."""
    found = _DATE_PARTS.get(part.lower())
    if found is None:
        raise SieveRuntimeError(f"unknown date part {part!r}")
    return found(when)


def evaluate(script: Script, ctx: Context) -> Outcome:
    """The actions ``script`` asks for ``ctx``; raises SieveRuntimeError."""
    # The fields the scripts name are scanned for; any field when an included script runs
    # too (its names are not known here).
    finder = script.finder if not ctx.scripts else mime_scan.field_finder(None)
    return Interpreter(ctx, finder).run(script)
