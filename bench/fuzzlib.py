"""A structure-aware mutation fuzzer for mailstead's protocol parsers.

Shared by ``bench/fuzz.py`` (a million inputs per parser) and ``tests/unit/test_fuzz_slice.py``
(a few thousand per parser in CI). Each target drives a pure entry point of ``proto/`` with one
input: a whole client transcript for the line protocols (SMTP, POP3, DMTP, DMAP), a command
stream with literals for IMAP, a message for MIME. "No crash" means the input raised nothing,
or only the parser's documented errors (``Target.allowed``); anything else is a bug and is
saved under ``bench/out/``.

Inputs come from seeds (valid transcripts and messages) mutated by byte flips, splices, grammar
tokens (``{5}\\r\\n``, ``(``, ``"``, ``~{0}``, ``=?utf-8?b?``...), long runs, deep nesting and
huge numbers. The random generator has a fixed seed, so a run is reproducible. A mutant whose
outcome (the replies it drew) has not been seen before joins the corpus and is mutated further:
cheap feedback that walks the sessions into deeper states.

Every input runs under a CPU bound: ``setitimer(ITIMER_PROF)`` interrupts an input that spins
(the bound, in CPU seconds), and each input's ``process_time`` is measured so the slowest are
reported.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
import random
import re
import signal
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from mailstead.core.errors import QuotaExceeded
from mailstead.mailsec.integrity import DMTP_HEADER_VALUES, dmtp_integrity
from mailstead.proto import (
    dmap,
    dmtp,
    imap_args,
    imap_format,
    imap_parse,
    imap_reader,
    imap_sexpr,
    lines,
    mime,
    mime_address,
    mime_imap,
    mutf7,
    pop3,
    smtp,
)
from mailstead.store.interfaces import Account

OUT_DIR = Path(__file__).resolve().parent / "out"
MAX_INPUT = 16 * 1024
CPU_BOUND = 2.0  # seconds of CPU one input may cost

T = TypeVar("T")


class CpuBoundExceeded(BaseException):
    """Raised from the ITIMER_PROF handler inside an input that ran past the bound. A
    BaseException, so a parser's ``except Exception`` cannot swallow it."""


class Suspended(Exception):
    """A session coroutine awaited something that does not complete at once (fuzz backends
    never block, so this is a harness bug)."""


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine whose awaits all complete at once, without an event loop (fast)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise Suspended("coroutine suspended")


@dataclass
class Target:
    name: str
    seeds: list[bytes]
    tokens: list[bytes]
    # Runs one input; returns what it reached (a frozenset of features: pairs of replies,
    # command kinds, part types...). An input reaching a feature not seen before is kept.
    run: Callable[[bytes], object]
    allowed: tuple[type[BaseException], ...] = ()


# -- mutations -------------------------------------------------------------------------------

COMMON_TOKENS = [
    b"\r\n", b"\n", b"\r", b"\x00", b" ", b"\t", b"\xff", b"\xc3\xa9", b"\xed\xa0\x80",
    b"\xf0\x9f\x98\x80", b"(", b")", b"[", b"]", b"<", b">", b"{", b"}", b'"', b"\\", b"=",
    b":", b";", b",", b"@", b".", b"*", b"%", b"~", b"+", b"-", b"0", b"1",
    b"4294967295", b"4294967296", b"9223372036854775807", b"9223372036854775808",
    b"18446744073709551616", b"99999999999999999999999999999999999999", b"-1",
    b"\xc2\xb2", b"\xd9\xa1", b"\xef\xbc\x91",  # digits to str.isdigit(): "²", "١", "１"
]
HUGE_NUMBERS = [b"0", b"1", b"2", b"255", b"256", b"65536", b"4294967295", b"4294967296",
                b"2147483648", b"9223372036854775807", b"9223372036854775808",
                b"99999999999999999999999999999999999999", b"1" * 200,
                b"9" * 4400,  # past what int() converts (4300 digits)
                b"\xc2\xb2"]
INTERESTING_BYTES = b"\x00\x09\x0a\x0d\x20\x22\x28\x29\x2a\x2e\x3a\x3c\x3e\x5b\x5c\x5d\x7b\x7d" \
                    b"\x7e\x7f\x80\xc0\xff"
_DIGITS = re.compile(rb"[0-9]+")
RUN_LENGTHS = (2, 10, 100, 1000, 4000)


class Mutator:
    def __init__(self, rng: random.Random, seeds: Sequence[bytes], tokens: Sequence[bytes]) -> None:
        self.rng = rng
        self.seeds = list(seeds)
        self.tokens = [*tokens, *COMMON_TOKENS]
        self.ops: list[Callable[[bytes], bytes]] = [
            self.flip_bit, self.set_byte, self.insert_bytes, self.delete_range,
            self.duplicate_range, self.insert_token, self.insert_token, self.replace_with_token,
            self.splice, self.long_run, self.nest, self.number, self.swap_case, self.truncate,
            self.insert_line_end, self.swap_lines,
        ]

    def _pos(self, data: bytes) -> int:
        return self.rng.randint(0, len(data))

    def flip_bit(self, data: bytes) -> bytes:
        if not data:
            return bytes([self.rng.randrange(256)])
        i = self.rng.randrange(len(data))
        return data[:i] + bytes([data[i] ^ (1 << self.rng.randrange(8))]) + data[i + 1:]

    def set_byte(self, data: bytes) -> bytes:
        if not data:
            return data
        i = self.rng.randrange(len(data))
        b = self.rng.choice(INTERESTING_BYTES) if self.rng.random() < 0.6 else \
            self.rng.randrange(256)
        return data[:i] + bytes([b]) + data[i + 1:]

    def insert_bytes(self, data: bytes) -> bytes:
        i = self._pos(data)
        return data[:i] + self.rng.randbytes(self.rng.randint(1, 8)) + data[i:]

    def delete_range(self, data: bytes) -> bytes:
        if not data:
            return data
        i = self.rng.randrange(len(data))
        n = self.rng.choice((1, 1, 2, 4, 16, 64, len(data)))
        return data[:i] + data[i + n:]

    def duplicate_range(self, data: bytes) -> bytes:
        if not data:
            return data
        i = self.rng.randrange(len(data))
        n = self.rng.choice((1, 4, 16, 64, 256))
        j = self._pos(data)
        return data[:j] + data[i:i + n] + data[j:]

    def insert_token(self, data: bytes) -> bytes:
        i = self._pos(data)
        return data[:i] + self.rng.choice(self.tokens) + data[i:]

    def replace_with_token(self, data: bytes) -> bytes:
        i = self._pos(data)
        n = self.rng.choice((1, 2, 4, 8, 32))
        return data[:i] + self.rng.choice(self.tokens) + data[i + n:]

    def splice(self, data: bytes) -> bytes:
        other = self.rng.choice(self.seeds)
        return data[:self._pos(data)] + other[self._pos(other):]

    def long_run(self, data: bytes) -> bytes:
        i = self._pos(data)
        unit = self.rng.choice(self.tokens) if self.rng.random() < 0.7 else \
            bytes([self.rng.randrange(256)])
        count = self.rng.choice(RUN_LENGTHS)
        return data[:i] + unit * max(1, count // max(1, len(unit))) + data[i:]

    def nest(self, data: bytes) -> bytes:
        i = self._pos(data)
        depth = self.rng.choice((3, 30, 60, 500, 2000))
        opener, closer = self.rng.choice(
            ((b"(", b")"), (b"((", b"))"), (b"NOT ", b""), (b"OR ALL ", b" ALL"), (b"<", b">"),
             (b"[", b"]"), (b"\"", b"\""), (b"(a ", b")"), (b"=?utf-8?q?", b"?=")))
        return data[:i] + opener * depth + closer * depth + data[i:]

    def number(self, data: bytes) -> bytes:
        runs = [m.span() for m in _DIGITS.finditer(data)]
        if not runs:
            return self.insert_token(data)
        i, j = self.rng.choice(runs)
        return data[:i] + self.rng.choice(HUGE_NUMBERS) + data[j:]

    def swap_case(self, data: bytes) -> bytes:
        i = self._pos(data)
        n = self.rng.choice((1, 8, 64))
        return data[:i] + data[i:i + n].swapcase() + data[i + n:]

    def truncate(self, data: bytes) -> bytes:
        return data[:self._pos(data)]

    def insert_line_end(self, data: bytes) -> bytes:
        i = self._pos(data)
        return data[:i] + self.rng.choice((b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"\r\n.\r\n")) \
            + data[i:]

    def swap_lines(self, data: bytes) -> bytes:
        parts = data.split(b"\n")
        if len(parts) < 3:
            return self.duplicate_range(data)
        i, j = self.rng.randrange(len(parts)), self.rng.randrange(len(parts))
        if self.rng.random() < 0.5:
            parts[i], parts[j] = parts[j], parts[i]
        else:
            parts.insert(j, parts[i])
        return b"\n".join(parts)

    def mutate(self, data: bytes) -> bytes:
        for _ in range(self.rng.choice((1, 1, 1, 2, 2, 3, 4, 8))):
            data = self.rng.choice(self.ops)(data)
        return data[:MAX_INPUT]


# -- the runner ------------------------------------------------------------------------------


@dataclass
class Finding:
    kind: str  # "crash" or "slow"
    summary: str  # exception type and where, or the CPU time
    input: bytes
    detail: str = ""  # traceback
    saved: Path | None = None


@dataclass
class Report:
    name: str
    inputs: int = 0
    seconds: float = 0.0
    corpus: int = 0
    exceptions: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    slowest: list[tuple[float, bytes]] = field(default_factory=list)  # (CPU s, input)

    @property
    def crashes(self) -> list[Finding]:
        return [f for f in self.findings if f.kind == "crash"]

    @property
    def slow(self) -> list[Finding]:
        return [f for f in self.findings if f.kind == "slow"]

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0


def _on_prof(signum: int, frame: object) -> None:
    raise CpuBoundExceeded()


def _where(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return "?"
    last = tb[-1]
    return f"{Path(last.filename).name}:{last.lineno}"


def run_one(target: Target, data: bytes, bound: float = CPU_BOUND) -> tuple[float, object]:
    """Runs one input under the CPU bound; returns (CPU seconds, outcome). Raises what the
    target raised, CpuBoundExceeded past the bound."""
    use_timer = threading.current_thread() is threading.main_thread()
    if use_timer:
        previous = signal.signal(signal.SIGPROF, _on_prof)
    start = time.process_time()
    try:
        if use_timer:
            signal.setitimer(signal.ITIMER_PROF, bound)
        try:
            outcome = target.run(data)
        finally:
            if use_timer:
                signal.setitimer(signal.ITIMER_PROF, 0)
    finally:
        if use_timer:
            signal.signal(signal.SIGPROF, previous)
    return time.process_time() - start, outcome


def fuzz(
    target: Target,
    *,
    inputs: int,
    seed: int = 1,
    seconds: float | None = None,
    bound: float = CPU_BOUND,
    save_dir: Path | None = OUT_DIR,
    progress: Callable[[Report], None] | None = None,
) -> Report:
    """Runs up to ``inputs`` inputs (or until ``seconds`` of wall time) against ``target``."""
    rng = random.Random(f"{target.name}:{seed}")
    mutator = Mutator(rng, target.seeds, target.tokens)
    corpus = list(target.seeds)
    seen_outcomes: set[object] = set()
    seen_crashes: set[str] = set()
    report = Report(target.name)
    slow_floor = 0.0
    use_timer = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGPROF, _on_prof) if use_timer else None
    started = time.monotonic()
    deadline = started + seconds if seconds else None
    try:
        for n in range(inputs):
            data = target.seeds[n] if n < len(target.seeds) else mutator.mutate(rng.choice(corpus))
            cpu_start = time.process_time()
            outcome: object = None
            try:
                if use_timer:
                    signal.setitimer(signal.ITIMER_PROF, bound)
                try:
                    outcome = target.run(data)
                finally:
                    if use_timer:
                        signal.setitimer(signal.ITIMER_PROF, 0)
            except CpuBoundExceeded:
                report.findings.append(Finding("slow", f"over {bound} s of CPU", data))
            except target.allowed as exc:
                name = type(exc).__name__
                report.exceptions[name] += 1
                outcome = name
            except Exception as exc:  # a crash: the finding this fuzzer exists for
                key = f"{type(exc).__name__} at {_where(exc)}"
                report.exceptions[type(exc).__name__] += 1
                if key not in seen_crashes:
                    seen_crashes.add(key)
                    report.findings.append(Finding(
                        "crash", f"{key}: {str(exc)[:200]}", data,
                        "".join(traceback.format_exception(exc))))
            cpu = time.process_time() - cpu_start
            if cpu > slow_floor or len(report.slowest) < 5:
                report.slowest.append((cpu, data))
                report.slowest.sort(key=lambda item: -item[0])
                del report.slowest[5:]
                slow_floor = report.slowest[-1][0]
            if isinstance(outcome, frozenset):
                new = outcome - seen_outcomes
            else:
                new = {outcome} - seen_outcomes
            if new and len(seen_outcomes) < 200_000:
                seen_outcomes |= new
                if len(corpus) < 4000:
                    corpus.append(data)
                else:
                    corpus[rng.randrange(len(target.seeds), len(corpus))] = data
            report.inputs = n + 1
            if n % 1000 == 999:
                now = time.monotonic()
                report.seconds = now - started
                if progress is not None and n % 100_000 == 99_999:
                    progress(report)
                if deadline is not None and now >= deadline:
                    break
    finally:
        if use_timer:
            signal.setitimer(signal.ITIMER_PROF, 0)
            signal.signal(signal.SIGPROF, previous)
    report.seconds = time.monotonic() - started
    report.corpus = len(corpus)
    if save_dir is not None:
        _save(report, save_dir)
    return report


def _save(report: Report, save_dir: Path) -> None:
    findings = report.findings
    if not findings and not report.slowest:
        return
    save_dir.mkdir(parents=True, exist_ok=True)
    for i, finding in enumerate(findings):
        digest = hashlib.sha1(finding.input).hexdigest()[:10]
        path = save_dir / f"fuzz-{report.name}-{finding.kind}-{i}-{digest}.bin"
        path.write_bytes(finding.input)
        if finding.detail:
            path.with_suffix(".txt").write_text(finding.summary + "\n\n" + finding.detail)
        finding.saved = path
    if report.slowest:
        (save_dir / f"fuzz-{report.name}-slowest.bin").write_bytes(report.slowest[0][1])


# -- fake backends: answer at once, never block ----------------------------------------------

LOCAL_DOMAIN = "example.test"
PASSWORD = "secret"
_CREATED = datetime(2024, 1, 1, tzinfo=UTC)


def _account(address: str) -> Account:
    return Account(1 if address.startswith("alice") else 2, address, LOCAL_DOMAIN, "", 0, 0,
                   False, _CREATED)


@dataclass(frozen=True)
class _Route:
    local: tuple[Account, ...] = ()
    remote: tuple[str, ...] = ()


class SmtpFuzzBackend:
    def __init__(self) -> None:
        self.delivered = 0

    async def is_local_domain(self, domain: str) -> bool:
        return domain == LOCAL_DOMAIN

    async def route(self, address: Any) -> _Route:
        text = str(address)
        if address.domain == LOCAL_DOMAIN:
            if address.local in ("alice", "bob", "full", "huge"):
                return _Route(local=(_account(text.lower()),))
            if address.local == "list":
                return _Route(remote=("x@remote.test",))
            return _Route()
        return _Route(remote=(text,))

    async def check_recipient(self, txn: smtp.Transaction, route: Any) -> smtp.Reply | None:
        return None

    async def quota_state(self, account: Account, size: int) -> smtp.QuotaState:
        if account.address.startswith("full"):
            return "full"
        if account.address.startswith("huge") or size > 10_000_000:
            return "too_big"
        return "ok"

    async def authenticate(self, username: str, password: str) -> Account:
        if password == PASSWORD and username.lower().startswith(("alice", "bob")):
            return _account(username.lower())
        raise smtp.AuthRefused(temporary=password == "locked")

    async def owns_address(self, account: Account, address: Any) -> bool:
        return str(address).lower() == account.address

    def postmaster(self) -> Any:
        return None

    async def deliver(self, txn: smtp.Transaction, message: bytes) -> str:
        self.delivered += 1
        if b"quota" in message:
            raise QuotaExceeded("full")
        if b"refuse" in message:
            raise smtp.MessageRefused("refused\r\nInjected: header")
        if b"defer" in message:
            raise smtp.MessageDeferred("deferred")
        if b"fail" in message:
            raise RuntimeError("backend failure")  # the session answers 451
        return f"Q{self.delivered}"

    def transaction_done(self, txn: smtp.Transaction, size: int, result: smtp.Reply) -> None:
        pass


def _kind(wire: bytes) -> bytes:
    """A reply's first words without numbers: an outcome feature for the line protocols."""
    return b" ".join(_DIGITS.sub(b"", wire.split(b"\r\n", 1)[0]).split(b" ")[:3])[:24]


def _check_lines(wire: bytes) -> None:
    """A reply is whole CRLF lines: a bare CR or LF (say, echoed from the client's input)
    would make the client read a line the server did not mean (Java's readLine, which the
    DMTP/DMAP seed clients use, ends a line at a lone CR too)."""
    if not wire.endswith(b"\r\n") or lines.has_bare_cr_or_lf(wire):
        raise AssertionError(f"reply breaks the line framing: {wire[:200]!r}")


def _check_reply(r: smtp.Reply) -> None:
    """A reply that would break the wire protocol is a crash too."""
    if r.action is smtp.Action.READ_CHUNK:
        return
    if not 200 <= r.code <= 599 or not r.lines:
        raise AssertionError(f"bad SMTP reply {r}")
    wire = r.encode()
    if wire.count(b"\r\n") != len(r.lines) or b"\n" in wire.replace(b"\r\n", b""):
        raise AssertionError(f"reply breaks the line framing: {wire!r}")


def smtp_run(data: bytes) -> object:
    """A whole client transcript through the session, framed as the network driver does."""
    policy = smtp.SessionPolicy(
        hostname="mx.example.test", submission=bool(len(data) & 1), max_message_size=100_000,
        max_recipients=20, max_errors=30, starttls_offered=True, plaintext_auth_allowed=True,
        client_ip="127.0.0.1")
    session = smtp.SmtpSession(policy, SmtpFuzzBackend(), tls_active=False)
    buffer = lines.InputBuffer()
    buffer.append(data)
    codes: list[int] = []
    while True:
        line = buffer.take_line(smtp.LONGEST_LINE + 2)
        if line is None:
            break
        if isinstance(line, lines.LineTooLong):
            answer = session.on_line_too_long()
        else:
            answer = drive(session.on_line(line))
        _check_reply(answer)
        codes.append(answer.code)
        if answer.action is smtp.Action.READ_DATA:
            reader = lines.DotReader(policy.max_message_size,
                                     bare_newlines=policy.bare_newlines, max_line=policy.max_line)
            rest = reader.feed(buffer.take_all())
            if not reader.done:
                break
            buffer.append(rest)
            answer = drive(session.on_data(reader.finish()))
            _check_reply(answer)
            codes.append(answer.code)
        elif answer.action is smtp.Action.READ_CHUNK:
            chunk = buffer.take(answer.chunk_size)
            session.on_chunk(chunk)
            if len(chunk) < answer.chunk_size:
                break
            answer = drive(session.on_chunk_end())
            _check_reply(answer)
            codes.append(answer.code)
        elif answer.action.value == "discard_chunk":  # refused BDAT: its octets are dropped
            if len(buffer.take(answer.chunk_size)) < answer.chunk_size:
                break
        elif answer.action is smtp.Action.START_TLS:
            session.tls_started()
        if answer.action is smtp.Action.CLOSE:
            break
    return frozenset(itertools.pairwise(codes))


def _b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


SMTP_SEEDS = [
    b"EHLO client.test\r\nMAIL FROM:<carol@remote.test> SIZE=120 BODY=8BITMIME\r\n"
    b"RCPT TO:<alice@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice+2B1@example.test\r\n"
    b"RCPT TO:<bob@example.test>\r\nDATA\r\nFrom: carol@remote.test\r\nSubject: hi\r\n\r\n"
    b"body\r\n..leading dot\r\n.\r\nQUIT\r\n",
    b"EHLO c\r\nMAIL FROM:<> BODY=BINARYMIME RET=HDRS ENVID=abc+2Bdef\r\n"
    b"RCPT TO:<bob@example.test>\r\nBDAT 5\r\nhelloBDAT 4 LAST\r\n\nab\rRSET\r\nNOOP\r\n",
    b"EHLO c\r\nAUTH PLAIN " + _b64("\x00alice@example.test\x00secret") + b"\r\n"
    b"MAIL FROM:<alice@example.test> AUTH=<>\r\nRCPT TO:<x@remote.test>\r\nDATA\r\n"
    b"Subject: out\r\n\r\nhello\r\n.\r\nQUIT\r\n",
    b"EHLO c\r\nAUTH LOGIN\r\n" + _b64("bob@example.test") + b"\r\n" + _b64("secret") + b"\r\n"
    b"MAIL FROM:<bob@example.test>\r\nRCPT TO:<list@example.test>\r\nBDAT 0 LAST\r\n",
    b"HELO old\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<full@example.test>\r\n"
    b"RCPT TO:<@route:x@example.test>\r\nRCPT TO:<\"q\"@example.test>\r\nDATA\r\nVRFY x\r\n"
    b"EXPN y\r\nHELP\r\nSTARTTLS\r\n",
    b"EHLO c\r\nSTARTTLS\r\nEHLO c\r\nMAIL FROM:<j\xc3\xb6rg@example.test> SMTPUTF8 REQUIRETLS\r\n"
    b"RCPT TO:<\xc3\xa5sa@\xc3\xa9xample.test>\r\nDATA\r\nSubject: quota\r\n\r\nx\r\n.\r\n",
    b"EHLO c\r\nMAIL FROM:<a@b.c> SIZE=99999999999\r\nAUTH XOAUTH2 abc\r\nAUTH PLAIN\r\n*\r\n"
    b"MAIL FROM:<a@b.c>\r\nRCPT TO:<huge@example.test>\r\nRCPT TO:<alice@example.test>\r\n"
    b"DATA\r\nrefuse\r\n.\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
    b"fail\r\nbare\nlf\r\n.\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
]
SMTP_TOKENS = [
    b"EHLO ", b"HELO ", b"MAIL FROM:", b"RCPT TO:", b"DATA\r\n", b"BDAT ", b" LAST", b"RSET\r\n",
    b"AUTH PLAIN ", b"AUTH LOGIN", b"STARTTLS\r\n", b"<alice@example.test>", b"<>", b"<@",
    b" SIZE=", b" BODY=", b"BINARYMIME", b" SMTPUTF8", b" NOTIFY=", b" ORCPT=", b"rfc822;",
    b" ENVID=", b" RET=", b" AUTH=", b"+2B", b"+ZZ", b"\r\n.\r\n", b"\r\n..", b"=", b"*\r\n",
    b"QUIT\r\n", b"NEVER", b"SUCCESS,DELAY", b"xn--", b"\xc3\xa9", b"postmaster",
]


# -- IMAP ------------------------------------------------------------------------------------

IMAP_MAX_LINE = 64 * 1024
IMAP_LITERAL_LIMIT = 1 << 20


def imap_commands(stream: bytes) -> Iterable[bytes]:
    """Splits a client stream into whole commands, literals inline, the way the IMAP listener
    frames them (``net.imap_server._read_command``)."""
    pos = 0
    n = len(stream)
    while pos < n:
        end = stream.find(b"\n", pos)
        if end < 0 or end + 1 - pos > IMAP_MAX_LINE:
            return
        line = stream[pos:end + 1]
        pos = end + 1
        imap_reader.peek_tag_command(line)
        chunks = [line]
        marker = imap_reader.literal_marker(line)
        while marker is not None:
            if marker.size > IMAP_LITERAL_LIMIT or pos + marker.size > n:
                return
            chunks.append(stream[pos:pos + marker.size])
            pos += marker.size
            end = stream.find(b"\n", pos)
            if end < 0 or end + 1 - pos > IMAP_MAX_LINE:
                return
            line = stream[pos:end + 1]
            pos = end + 1
            chunks.append(line)
            marker = imap_reader.literal_marker(line)
        data = b"".join(chunks)
        if data.endswith(b"\r\n"):
            yield data[:-2]
        else:
            yield data[:-1]


def vars_of(args: object) -> list[object]:
    """The field values of a command's arguments dataclass."""
    if not dataclasses.is_dataclass(args):
        return []
    return [getattr(args, f.name) for f in dataclasses.fields(args)]


def imap_run(data: bytes) -> object:
    outcome: list[str] = []
    for command in imap_commands(data):
        try:
            parsed = imap_parse.parse_command(command)
        except imap_reader.ParseError as exc:
            outcome.append(" ".join(str(exc).split()[:2]))  # the kind, not the quoted text
            # The BAD answer the session sends must stay one line (no response injection).
            wire = imap_format.tagged(exc.tag, "BAD", f"Error in IMAP command: {exc}", exc.code)
            if wire.count(b"\n") != 1 or wire.count(b"\r") != 1:
                raise AssertionError(f"BAD response breaks the line: {wire[:200]!r}") from exc
            continue
        outcome.append(f"{parsed.name} {type(parsed.args).__name__}")
        args = parsed.args
        for value in vars_of(args):
            if isinstance(value, str):  # mailbox names: what the session does with them
                try:
                    decoded = mutf7.decode(value)
                except mutf7.MUTF7Error:
                    continue
                if mutf7.encode(decoded) != value:
                    raise AssertionError(f"mUTF-7 does not round-trip: {value!r}")
                imap_format.astring(decoded, utf8=False)
        if isinstance(args, imap_args.FetchArgs):
            for item in args.items:  # the section specs FETCH hands to mime_imap.section
                if isinstance(item.section, imap_args.Section):
                    _ = item.section.spec
    return frozenset(itertools.pairwise(outcome))


IMAP_SEEDS = [
    b"a1 CAPABILITY\r\na2 LOGIN alice@example.test secret\r\na3 SELECT INBOX (CONDSTORE)\r\n"
    b"a4 FETCH 1:* (FLAGS UID BODY.PEEK[HEADER.FIELDS (FROM TO \"Subject\")] BODYSTRUCTURE "
    b"BINARY.PEEK[1.2]<0.100> RFC822.SIZE ENVELOPE MODSEQ)\r\n",
    b"a LOGIN {5}\r\nalice {6+}\r\nsecret\r\nb APPEND Drafts (\\Seen $Junk) "
    b"\"05-Jan-2024 10:00:00 +0100\" {11}\r\nhello world\r\n",
    b"c APPEND INBOX ~{5}\r\nab\x00cd CATENATE\r\nd UID SEARCH CHARSET UTF-8 OR (FROM \"x\" "
    b"SINCE 1-Feb-2024) NOT (LARGER 100 UNKEYWORD $x) SUBJECT {3+}\r\nabc MODSEQ 5 1:3,7,*\r\n",
    b"e LIST (SUBSCRIBED) \"\" (\"%\" \"Sent/*\") RETURN (CHILDREN STATUS (MESSAGES UNSEEN))\r\n"
    b"f STATUS \"Sent\" (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ SIZE)\r\n"
    b"g SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))\r\n",
    b"h UID STORE 1:5 +FLAGS.SILENT (UNCHANGEDSINCE 12) (\\Deleted)\r\ni UID EXPUNGE 3:4\r\n"
    b"j UID MOVE 2 Trash\r\nk COPY $ Archive\r\nl SEARCH RETURN (SAVE MIN COUNT) ALL\r\n"
    b"m ENABLE IMAP4rev2 UTF8=ACCEPT\r\nn ID (\"name\" \"x\" \"version\" NIL)\r\n",
    b"o AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\np RENAME a b\r\nq CREATE x (USE (\\Sent))\r\n"
    b"r GETQUOTAROOT INBOX\r\ns IDLE\r\nt LSUB \"\" *\r\nu NOOP\r\nv LOGOUT\r\n",
    b"w FETCH 1 (BODY[1.2.MIME] BODY[TEXT]<5.10> BINARY.SIZE[1] RFC822.HEADER FAST ALL FULL)\r\n"
    b"x UID FETCH 1:* (FLAGS) (CHANGEDSINCE 5 VANISHED)\r\ny SEARCH SENTBEFORE \"1-Jan-2020\" "
    b"HEADER X-Spam yes BEFORE 2-Mar-2021 UID 1:* YOUNGER 5 OLDER 10 SMALLER 99 KEYWORD a\r\n",
]
IMAP_TOKENS = [
    b"{5}\r\n", b"{0}\r\n", b"{3+}\r\n", b"~{0}\r\n", b"~{4}\r\n", b"{4294967295}\r\n",
    b"{99999999999}\r\n", b"NIL", b"\"\"", b"\"a\\\"b\"", b"\\\\", b"BODY[", b"BINARY[",
    b"HEADER.FIELDS (", b"HEADER.FIELDS.NOT (", b".MIME", b"<0.5>", b"<4294967296.1>", b"1:*",
    b"*:1", b"$", b"UID ", b"FETCH ", b"SEARCH ", b"STORE ", b"APPEND ", b"SELECT ",
    b"CHARSET ", b"OR ", b"NOT ", b"ALL", b"\\Seen", b"\\*", b"(\\Deleted)",
    b"\"01-Jan-2024 00:00:00 +0000\"", b"\"31-Feb-2024 25:61:61 -9999\"", b"1-Jan-0000",
    b"MODSEQ ", b"CHANGEDSINCE ", b"QRESYNC (", b"RETURN (", b"SAVE", b"&AOk-", b"&-", b"&Jjo",
]


# -- POP3 ------------------------------------------------------------------------------------


class _FuzzMaildrop:
    def __init__(self) -> None:
        self.messages = [pop3.Pop3Message("uid-1", 40), pop3.Pop3Message("uid-2", 30),
                         pop3.Pop3Message("uid-3", 10)]

    async def fetch(self, index: int) -> bytes:
        if index == 2:
            raise pop3.Refused("SYS/TEMP", "message gone")  # deleted by another client
        return (b"Subject: m\r\n\r\n.dot line\r\nline 2\r\n\r\n.\r\nlast" if index == 0
                else b"no header\r\n")

    async def commit(self, deleted: Sequence[int], retrieved: Sequence[int]) -> int:
        return len(deleted)

    def release(self) -> None:
        pass


class _FuzzPop3Backend:
    async def open_maildrop(self, username: str, password: str) -> pop3.Maildrop:
        if password != PASSWORD:
            raise pop3.Refused("AUTH", "invalid login")
        if username == "busy":
            raise pop3.Refused("IN-USE", "maildrop locked")
        return _FuzzMaildrop()


def pop3_run(data: bytes) -> object:
    session = pop3.Pop3Session(_FuzzPop3Backend(), tls_active=False, tls_available=True,
                               plaintext_allowed=bool(len(data) & 1), max_errors=30)
    buffer = lines.InputBuffer()
    buffer.append(data)
    outcome: list[bytes] = []
    while not session.closed:
        line = buffer.take_line(pop3.MAX_LINE)
        if line is None:
            break
        if isinstance(line, lines.LineTooLong):
            answer = session.line_too_long()
        else:
            answer = drive(session.receive(line))
        _check_lines(answer.data)
        outcome.append(_kind(answer.data))
        if answer.start_tls:
            session.tls_started()
        if answer.close:
            break
    session.abort()
    return frozenset(itertools.pairwise(outcome))


POP3_SEEDS = [
    b"CAPA\r\nUSER alice\r\nPASS secret\r\nSTAT\r\nLIST\r\nLIST 1\r\nUIDL\r\nUIDL 2\r\nRETR 1\r\n"
    b"TOP 1 0\r\nTOP 2 3\r\nRETR 3\r\nDELE 1\r\nDELE 1\r\nRSET\r\nNOOP\r\nDELE 2\r\nQUIT\r\n",
    b"AUTH PLAIN\r\n" + _b64("\x00alice\x00secret") + b"\r\nLIST 3\r\nQUIT\r\n",
    b"AUTH PLAIN " + _b64("\x00alice\x00secret") + b"\r\nSTAT\r\nRETR 0\r\nRETR 99999999999\r\n",
    b"AUTH LOGIN\r\n" + _b64("alice") + b"\r\n" + _b64("secret") + b"\r\nUIDL\r\nQUIT\r\n",
    b"STLS\r\nCAPA\r\nUSER busy\r\nPASS secret\r\nAUTH\r\nAUTH X\r\nAPOP a b\r\n"
    b"AUTH PLAIN\r\n*\r\n",
]
POP3_TOKENS = [b"USER ", b"PASS ", b"STAT", b"LIST ", b"UIDL ", b"RETR ", b"TOP ", b"DELE ",
               b"RSET", b"NOOP", b"QUIT", b"CAPA", b"STLS", b"AUTH PLAIN", b"AUTH LOGIN", b"*",
               b"=", b"secret", b"alice"]


# -- MIME ------------------------------------------------------------------------------------


def mime_run(data: bytes) -> object:
    """Everything IMAP FETCH, SEARCH and delivery build from a message."""
    root = mime.parse(data)
    imap_sexpr.encode(mime_imap.bodystructure(data, root, extended=True, imap4rev2=True))
    mime_imap.bodystructure(data, root, extended=False)
    imap_sexpr.encode(mime_imap.envelope(data, root), utf8_ok=True)
    mime.text_for_search(data, root)
    mime.parse_envelope_fields(data)
    mime.has_attachment(root)
    for name in ("from", "to", "subject"):
        value = root.get(name)
        if value is not None:
            mime.decoded_header(value)
            mime_address.parse_addresses(value)
    parts = 0
    for spec in ("", "HEADER", "TEXT", "1", "1.MIME", "2", "1.1", "2.HEADER",
                 "1.2.TEXT", "HEADER.FIELDS (From Subject)", "1.HEADER.FIELDS.NOT (To)"):
        mime_imap.section(data, root, spec)
    for part_spec in ("1", "2", "1.1", "1.2", "3"):
        try:
            body = mime_imap.binary_section(data, root, part_spec)
        except mime.UnknownEncoding:
            body = None
        parts += body is not None
    return frozenset((p.content_type, p.transfer_encoding, parts) for p in root.walk())


MIME_SEEDS = [
    b"From: Alice <alice@example.test>\r\nTo: bob@example.test, \"Smith, J\" <j@x.test>\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?= and =?iso-8859-1?b?b+k=?=\r\nDate: Mon, 1 Jan 2024 "
    b"10:00:00 +0100\r\nMessage-ID: <a@b>\r\n\r\nplain body\r\n",
    b"From: a@b.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n"
    b"\r\npreamble\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9 =\r\nsoft\r\n--XX\r\n"
    b"Content-Type: application/pdf; name*=utf-8''r%C3%A9sum%C3%A9.pdf\r\n"
    b"Content-Disposition: attachment; filename*0=\"a\"; filename*1=\"b.pdf\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--XX--\r\nepilogue\r\n",
    b"Subject: fwd\r\nContent-Type: multipart/alternative; boundary=b1\r\n\r\n--b1\r\n"
    b"Content-Type: text/html; charset=\"iso-8859-1\"\r\n\r\n<p>hi<script>x</script>&amp;</p>\r\n"
    b"--b1\r\nContent-Type: message/rfc822\r\n\r\nFrom: inner@x.test\r\nSubject: inner\r\n"
    b"Content-Type: multipart/mixed; boundary=b2\r\n\r\n--b2\r\n\r\ninner text\r\n--b2--\r\n"
    b"--b1\r\nContent-Type: message/global\r\n\r\nSubject: g\r\n\r\nglobal\r\n--b1--\r\n",
    b"To: undisclosed-recipients:;, group: a@b.test, \"q\\\"x\" <c@d.test>;\r\n"
    b"Cc: (comment) x@y.test (another), <@route:z@w.test>\r\nFrom: =?UTF-8?B?w6k=?= <e@f>\r\n"
    b"Content-Type: text/plain; charset=x-unknown; format=flowed (comment)\r\n"
    b"Content-Transfer-Encoding: x-uuencode\r\nContent-Language: en, fr\r\n"
    b"Content-Location: http://x\r\nContent-MD5: abc\r\n\r\nbody\r\n",
    b"From:\r\n folded\r\n\tvalue\r\nX: y\nbare: lf\n\nbody with bare lf\n",
]
MIME_TOKENS = [
    b"Content-Type: multipart/mixed; boundary=", b"--XX\r\n", b"--XX--\r\n", b"--b1\r\n",
    b"Content-Type: message/rfc822\r\n", b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n", b"=?utf-8?b?", b"=?utf-8?q?", b"?=",
    b"=?", b"=C3", b"=\r\n", b"charset=", b"name*0*=", b"*=utf-8''", b"%C3%A9", b"%",
    b"boundary=\"", b"\r\n\r\n", b"\r\n ", b"<", b">", b"<script>", b"</script>", b"&#x",
    b"&amp;", b"(comment", b"\\(", b"group:", b";", b"From: ", b"To: ", b"Subject: ",
    b"Date: ", b"Mon, 32 Foo 99999 99:99:99 +9999",
]


# -- DMTP and DMAP ---------------------------------------------------------------------------

DMTP_SECRET = "fuzz-secret"


class _FuzzDmtpBackend:
    async def check_recipient(self, address: str) -> None:
        if not address.endswith("@" + LOCAL_DOMAIN):
            raise dmtp.DmtpRefused(f"unknown recipient {address}")

    async def send(self, message: dmtp.DmtpMessage) -> None:
        # What the DMTP service does with a message it accepts.
        state = dmtp_integrity(DMTP_SECRET, message)
        dmtp.to_rfc5322(message, date=_CREATED, message_id="<fuzz@example.test>",
                        integrity=None if state is None else DMTP_HEADER_VALUES[state])


def dmtp_run(data: bytes) -> object:
    session = dmtp.DmtpSession(_FuzzDmtpBackend(), max_errors=30)
    buffer = lines.InputBuffer()
    buffer.append(data)
    outcome: list[str] = []
    while True:
        line = buffer.take_line(dmtp.MAX_LINE)
        if line is None:
            break
        if isinstance(line, lines.LineTooLong):
            answer = session.line_too_long()
        else:
            answer = drive(session.receive(line))
        _check_lines(answer.wire)
        outcome.append(_kind(answer.wire))
        if answer.close:
            break
    return frozenset(itertools.pairwise(outcome))


def _dmtp_seed() -> bytes:
    sender, recipients, subject, text = "alice@example.test", ["bob@example.test"], "hi", "text"
    digest = dmtp.compute_hash(DMTP_SECRET, sender, recipients, subject, text)
    return (f"begin\r\nfrom {sender}\r\nto {','.join(recipients)}\r\nsubject {subject}\r\n"
            f"data {text}\r\nhash {digest}\r\nsend\r\nquit\r\n").encode()


DMTP_SEEDS = [
    _dmtp_seed(),
    b"begin\r\nfrom a@example.test\r\nto b@example.test, c@example.test,,b@example.test\r\n"
    b"subject s\xc3\xa9\r\ndata line\r\nsend\r\nsend\r\nbegin\r\nto x@remote.test\r\nquit\r\n",
    b"from x\r\nbegin\r\nfrom no-at\r\nto \r\nsubject \r\ndata \r\nhash \r\nsend\r\nnope\r\n\r\n",
]
DMTP_TOKENS = [b"begin\r\n", b"from ", b"to ", b"subject ", b"data ", b"hash ", b"send\r\n",
               b"quit\r\n", b"@example.test", b",", b"\r", b"=?utf-8?q?", b"\xc3\xa9"]


@dataclass
class _FuzzDmapMailbox:
    async def list(self) -> list[dmap.ListedMessage]:
        return [dmap.ListedMessage(1, "a@example.test", "line\r\nbreak"),
                dmap.ListedMessage(2, "b@example.test", "s")]

    async def show(self, message_id: int) -> dmap.ShownMessage:
        if message_id not in (1, 2):
            raise dmap.DmapRefused("unknown message id")
        return dmap.ShownMessage("a@example.test", ["b@example.test"], "s\n", "d\r\nx", "")

    async def delete(self, message_id: int) -> None:
        if message_id not in (1, 2):
            raise dmap.DmapRefused("unknown message id")


class _FuzzDmapBackend:
    component_id = "mailbox-fuzz"

    def __init__(self, key: Any) -> None:
        self._key = key

    async def login(self, username: str, password: str) -> dmap.DmapMailbox:
        if password != PASSWORD:
            raise dmap.DmapRefused("wrong username or password")
        return _FuzzDmapMailbox()

    def server_key(self) -> Any:
        return self._key


_DMAP_KEY: list[Any] = []


def _dmap_key() -> Any:
    if not _DMAP_KEY:
        from cryptography.hazmat.primitives.asymmetric import rsa
        _DMAP_KEY.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _DMAP_KEY[0]


def dmap_run(data: bytes) -> object:
    session = dmap.DmapSession(_FuzzDmapBackend(_dmap_key()), max_errors=30)
    buffer = lines.InputBuffer()
    buffer.append(data)
    outcome: list[bytes] = []
    while True:
        line = buffer.take_line(dmap.MAX_LINE)
        if line is None:
            break
        if isinstance(line, lines.LineTooLong):
            answer = session.line_too_long()
        else:
            answer = drive(session.receive(line))
        if answer.data:  # empty after the startsecure confirmation
            _check_lines(answer.data)
        outcome.append(_kind(answer.data))
        if answer.close:
            break
    return frozenset(itertools.pairwise(outcome))


def _dmap_hellos() -> list[bytes]:
    """startsecure hellos the server key opens (RSA-OAEP of the client's first message), with
    good and bad contents, so mutations reach the handshake past the RSA layer."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    public = _dmap_key().public_key()
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    k = base64.b64encode(b"k" * 32).decode()
    iv = base64.b64encode(b"i" * 16).decode()
    out = []
    for text in (f"ok Y2hhbA== {k} {iv}", f"ok notb64! {k} {iv}", "ok a b", f"no x {k} {iv}",
                 f"ok Y2hhbA== {k} aXY=", "\xff\xfe"):
        blob = public.encrypt(text.encode("utf-8", "surrogateescape"), oaep)
        out.append(b"startsecure\r\n" + base64.b64encode(blob) + b"\r\nok\r\nlist\r\n")
    return out


def dmap_seeds() -> list[bytes]:
    return [
        b"login alice@example.test secret\r\nlist\r\nshow 1\r\nshow 9\r\ndelete 2\r\n"
        b"delete x\r\nlogout\r\nquit\r\n",
        b"list\r\nlogin a\r\nlogin a wrong\r\nshow\r\n\r\nfoo\r\nstartsecure\r\nnot-base64\r\n"
        b"startsecure\r\nAAAA\r\nstartsecure\r\n" + b"QUJD" * 50 + b"\r\n",
        *_dmap_hellos(),
    ]


DMAP_TOKENS = [b"login ", b"list\r\n", b"show ", b"delete ", b"logout\r\n", b"quit\r\n",
               b"startsecure\r\n", b"ok\r\n", b"secret", b"=", b"AAAA", b"////", b"++++"]


# -- the line framing itself -----------------------------------------------------------------


def lines_run(data: bytes) -> object:
    """The framing helpers on their own: line splitting under a limit and the DATA reader with
    its smuggling guard, fed in uneven pieces (a message split across reads must be read the
    same as one whole)."""
    buffer = lines.InputBuffer()
    taken = 0
    step = 1 + (len(data) % 97)
    for i in range(0, len(data), step):
        buffer.append(data[i:i + step])
        while buffer.take_line(64) is not None:
            taken += 1
    # Both settings of [smtp] bare_line_feeds: the end of data must be found at the same
    # place, and neither may keep a bare CR or LF in what it accepts.
    mode = "normalize" if len(data) % 2 else "reject"
    whole = lines.DotReader(4096, bare_newlines=mode)
    rest_whole = whole.feed(data)
    split = lines.DotReader(4096, bare_newlines=mode)
    rest_split = b""
    for i in range(0, len(data), step):
        piece = data[i:i + step]
        rest_split += split.feed(piece) if not split.done else piece
    if whole.done != split.done or (whole.done and rest_whole != rest_split):
        raise AssertionError("DotReader depends on how the input is split")
    if whole.done:
        a, b = whole.finish(), split.finish()
        if a != b:
            raise AssertionError("DotReader outcome depends on how the input is split")
        if a.problem is None:
            if lines.has_bare_cr_or_lf(a.content):
                raise AssertionError("a message with a bare CR or LF was accepted")
            if lines.dot_unstuff(lines.dot_stuff(a.content)) != a.content:
                raise AssertionError("dot stuffing does not round-trip")
        return (a.problem, taken > 0)
    return taken > 0


LINES_SEEDS = [
    b"Subject: x\r\n\r\nbody\r\n..dot\r\n.\r\nQUIT\r\n",
    b".\r\nafter",
    b"a\nb\r\n.\n.\r\n\r\n.\r\n",
    b"x" * 70 + b"\r\n" + b"y" * 1001 + b"\r\n.\r\n",
]
LINES_TOKENS = [b"\r\n.\r\n", b"\n.\n", b"\r.\r", b"..", b"\r\n..\r\n"]


def targets() -> dict[str, Callable[[], Target]]:
    """Parser name -> a function building its target (DMAP's makes an RSA key)."""
    return {
        "smtp": lambda: Target("smtp", SMTP_SEEDS, SMTP_TOKENS, smtp_run),
        "imap": lambda: Target("imap", IMAP_SEEDS, IMAP_TOKENS, imap_run),
        "pop3": lambda: Target("pop3", POP3_SEEDS, POP3_TOKENS, pop3_run),
        "mime": lambda: Target("mime", MIME_SEEDS, MIME_TOKENS, mime_run),
        "dmtp": lambda: Target("dmtp", DMTP_SEEDS, DMTP_TOKENS, dmtp_run),
        "dmap": lambda: Target("dmap", dmap_seeds(), DMAP_TOKENS, dmap_run),
        "lines": lambda: Target("lines", LINES_SEEDS, LINES_TOKENS, lines_run),
    }


__all__ = ["CPU_BOUND", "Finding", "Report", "Target", "fuzz", "run_one", "targets"]


# -- large hostile inputs: does the cost grow in proportion? ---------------------------------
# The mutation fuzzer keeps inputs under MAX_INPUT, where a quadratic loop still looks cheap.
# These build one pathological input of size n per shape; ``scaling`` times n and 4n: a cost
# that grows 16-fold (quadratic) rather than 4-fold shows up as the ratio.

LARGE: dict[str, tuple[str, Callable[[int], bytes]]] = {
    "mime rfc2231 sections": ("mime", lambda n: b"Content-Type: text/plain; " + b"".join(
        b"name*%d*=%%41; " % i for i in range(n)) + b"\r\n\r\nx"),
    "mime address list": ("mime", lambda n: b"To: " + b"a@b.test, " * n + b"\r\n\r\nx"),
    "mime nested comments": ("mime", lambda n: b"From: " + b"(" * n + b"a@b\r\n\r\nx"),
    "mime encoded words": ("mime", lambda n: b"Subject: " + b"=?utf-8?b?w6k=?= " * n + b"\r\n"
                           b"\r\nx"),
    "mime parts": ("mime", lambda n: b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
                   + b"--b\r\n\r\nx\r\n" * n),
    "mime folded header": ("mime", lambda n: b"X: a\r\n" + b" b\r\n" * n + b"\r\nx"),
    "mime many fields": ("mime", lambda n: b"X: a\r\n" * n + b"\r\nx"),
    "imap sequence set": ("imap", lambda n: b"a FETCH " + b"1:2," * n + b"3 FLAGS\r\n"),
    "imap literals": ("imap", lambda n: b"a LOGIN {1}\r\na {1}\r\nb\r\n" * n),
    "imap flags": ("imap", lambda n: b"a STORE 1 FLAGS (" + b"\\Seen " * n + b")\r\n"),
    "imap search keys": ("imap", lambda n: b"a SEARCH " + b"NOT ALL " * min(n, 40)
                         + b"FROM x " * n + b"\r\n"),
    "imap quoted": ("imap", lambda n: b"a LOGIN \"" + b"\\\\" * n + b"\" x\r\n"),
    "smtp commands": ("smtp", lambda n: b"EHLO c\r\n" + b"NOOP\r\n" * n),
    "smtp recipients": ("smtp", lambda n: b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n"
                        + b"RCPT TO:<alice@example.test>\r\nRSET\r\nMAIL FROM:<a@b.test>\r\n" * n),
    "smtp message": ("smtp", lambda n: b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@example"
                     b".test>\r\nDATA\r\n" + b"..x\r\n" * n + b".\r\n"),
    "pop3 commands": ("pop3", lambda n: b"USER alice\r\nPASS secret\r\n" + b"LIST\r\n" * n),
    "dmtp recipients": ("dmtp", lambda n: b"begin\r\nto " + b"b@example.test," * n + b"\r\n"),
    "dmtp data": ("dmtp", lambda n: b"begin\r\nfrom a@example.test\r\nto b@example.test\r\n"
                  b"subject s\r\ndata " + b"x " * n + b"\r\nsend\r\n"),
    "dmap lines": ("dmap", lambda n: b"show x\r\n" * n),
    "lines data": ("lines", lambda n: b"a\r\n" * n + b".\r\n"),
}


@dataclass
class Scaling:
    name: str
    n: int
    size: int  # bytes of the 4n input
    cpu_n: float
    cpu_4n: float

    @property
    def ratio(self) -> float:
        return self.cpu_4n / self.cpu_n if self.cpu_n > 0 else 0.0


def scaling(n: int = 5000, bound: float = 30.0) -> list[Scaling]:
    """CPU time of each LARGE shape at n and 4n (best of three, to damp a shared machine)."""
    built = {name: factory() for name, factory in targets().items()}
    out = []
    for shape, (parser, make) in LARGE.items():
        target = built[parser]
        small, large = make(n), make(4 * n)
        cpu_small = min(run_one(target, small, bound)[0] for _ in range(3))
        cpu_large = min(run_one(target, large, bound)[0] for _ in range(3))
        out.append(Scaling(shape, n, len(large), cpu_small, cpu_large))
    return out
