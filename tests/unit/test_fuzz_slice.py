"""A short slice of bench/fuzz.py in CI: a few thousand mutated inputs per protocol parser, with
the same harness and a fixed seed, so a change that makes a parser crash on hostile input (or
spin on it) fails here. The full run (a million inputs per parser) is ``bench/fuzz.py``.

Also the inputs the fuzzer found, kept as regression tests, and property tests (hypothesis) of
the parsers' contracts on arbitrary bytes.
"""

from __future__ import annotations

import pytest
from bench.fuzzlib import Report, Target, fuzz, run_one, targets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailstead.proto import imap_parse, imap_reader, mime, mime_address, mutf7

SLICE = {"smtp": 3000, "imap": 3000, "pop3": 3000, "mime": 1500, "dmtp": 3000, "dmap": 2000,
         "lines": 3000}
SEED = 20240601


def describe(report: Report) -> str:
    lines = [f"{report.name}: {len(report.findings)} finding(s) in {report.inputs} inputs"]
    for finding in report.findings[:3]:
        lines += [f"{finding.kind}: {finding.summary}", f"input: {finding.input[:300]!r}",
                  finding.detail[-2000:]]
    return "\n".join(lines)


@pytest.mark.parametrize("name", sorted(SLICE))
def test_fuzz_slice_finds_no_crash_and_no_slow_input(name: str) -> None:
    report = fuzz(targets()[name](), inputs=SLICE[name], seed=SEED, save_dir=None)
    assert report.inputs == SLICE[name]
    assert not report.findings, describe(report)


def test_the_harness_reports_a_crash_and_an_input_over_the_bound() -> None:
    """The fuzzer would notice: an unexpected exception is a crash, a spinning input is
    stopped at the CPU bound and reported, an allowed exception is neither."""

    def run(data: bytes) -> object:
        if data.startswith(b"spin"):
            while True:
                pass
        if data.startswith(b"boom"):
            raise KeyError(data)
        if data.startswith(b"bad"):
            raise ValueError("documented")
        return None

    target = Target("toy", [b"spin", b"boom", b"bad", b"ok"], [], run, allowed=(ValueError,))
    report = fuzz(target, inputs=4, bound=0.2, save_dir=None)
    assert [f.kind for f in report.findings] == ["slow", "crash"]
    assert report.findings[1].summary.startswith("KeyError")
    assert report.exceptions["ValueError"] == 1


# -- inputs the fuzzer found ----------------------------------------------------------------

FOUND: list[tuple[str, bytes]] = [
    # RFC 2231 sections were sorted again for each section: quadratic (10,000 sections of a
    # Content-Type took a second of CPU, 30,000 about ten). ``bench/fuzz.py --scaling`` found it.
    ("mime", b"Content-Type: text/plain; " + b"".join(b"name*%d*=%%41; " % i for i in range(30000))
     + b"\r\n\r\nx"),
    # SEARCH CHARSET with a name that is not UTF-8 (kept as surrogates) made the codec lookup
    # raise UnicodeEncodeError; "IDNA" passed the check, then its decoder raised UnicodeError.
    ("imap", b"d UID SEARCH CHARSET \xacg'' OR (FROM \"x\" SINCE 1-Feb-2024) SUBJECT x\r\n"),
    ("imap", b"d SEARCH CHARSET IDNA TEXT xn--zz\r\ne SEARCH CHARSET undefined TEXT x\r\n"),
    # Mailbox names the mUTF-7 decoder took although they are not canonical: "&AOk-&AOk-" (a
    # null shift, RFC 3501 5.1.3) opened the mailbox "&AOkA6Q-" names, under a second name.
    ("imap", b"a SELECT INB&AOk-&AOk-x\r\nb CREATE &AOl-\r\n"),
    # Numbers: str.isdigit() takes "²", which int() refuses (SMTP SIZE and BDAT, POP3 message
    # numbers, DMAP ids); int() refuses more than 4300 digits (IMAP numbers, DMAP ids, MIME
    # RFC 2231 section numbers in an APPENDed message).
    ("smtp", b"EHLO c\r\nMAIL FROM:<a@b.test> SIZE=\xc2\xb2\r\nMAIL FROM:<a@b.test>\r\n"
             b"RCPT TO:<alice@example.test>\r\nBDAT \xc2\xb2 LAST\r\n"),
    ("pop3", b"USER alice\r\nPASS secret\r\nRETR \xc2\xb2\r\nTOP 1 \xc2\xb2\r\n\r\n"),
    ("pop3", b"USER alice\r\nPASS secret\r\nRETR \xc2\xb2\r\nTOP 1 \xc2\xb2\r\n"),
    ("imap", b"a FETCH 1 (BODY[]<0." + b"9" * 4400 + b">)\r\nb FETCH " + b"1" * 4400
             + b" FLAGS\r\n"),
    ("mime", b"Content-Type: text/plain; name*" + b"9" * 5000 + b"*=x\r\n\r\nbody"),
    ("dmap", b"login alice@example.test secret\r\nshow \xc2\xb2\r\ndelete " + b"1" * 4400
             + b"\r\n"),
    # A charset name sent as a literal holding CR LF was echoed in the BAD response, splitting
    # it into two lines (a response of the client's making).
    ("imap", b"d SEARCH CHARSET {5}\r\na\r\nbc TEXT x\r\n"),
    # A vertical tab (a line break to str.splitlines) in DMTP's "hash" made the email package
    # refuse the header when the message was converted: the session crashed on "send".
    ("dmtp", b"begin\r\nfrom alice@example.test\r\nto bob@example.test\r\nsubject hi\r\n"
             b"data text\r\nhash Ed\x0bUu\r\nsend\r\n"),
    ("dmtp", b"begin\r\nfrom a@example.test\r\nto b@example.test\r\nsubject a\x1cb\x85c\r\n"
             b"data \xe2\x80\xa8x\x00\r\nsend\r\n"),
]


@pytest.mark.parametrize(("name", "data"), FOUND)
def test_inputs_the_fuzzer_found_are_handled(name: str, data: bytes) -> None:
    target = targets()[name]()
    cpu, _outcome = run_one(target, data)
    assert cpu < 2.0


# -- properties ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_mime_parse_and_views_never_raise(data: bytes) -> None:
    targets()["mime"]().run(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([
    b"a ", b"UID ", b"FETCH ", b"SEARCH ", b"APPEND ", b"LOGIN ", b"1:*", b"(", b")", b"{3}\r\n",
    b"~{2}\r\n", b"\"", b"\\", b"BODY[", b"]", b"HEADER.FIELDS (", b"<1.2>", b"NOT ", b"OR ",
    b"x", b" ", b"\x00", b"\xff", b"9999999999999999999999",
]), max_size=40).map(b"".join))
def test_imap_parse_command_raises_only_parse_error(data: bytes) -> None:
    try:
        imap_parse.parse_command(data)
    except imap_reader.ParseError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_decoded_header_and_address_lists_never_raise(value: str) -> None:
    mime.decoded_header(value)
    mime_address.parse_addresses(value)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["&AOk-", "&AOl-", "&AOkA6Q-", "&2D3eAA-", "&-", "a", "-", "&",
                                  ",", "AOk"]), max_size=8).map("".join))
def test_mutf7_accepts_only_the_canonical_spelling(name: str) -> None:
    """One mailbox, one name on the wire: what decodes re-encodes to the same text."""
    try:
        decoded = mutf7.decode(name)
    except mutf7.MUTF7Error:
        return
    assert mutf7.encode(decoded) == name
