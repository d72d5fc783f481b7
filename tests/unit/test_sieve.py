"""The Sieve language, pure: the grammar, the checks, and what a script decides for a message
(RFC 5228 and the extensions we run), with hostile input kept cheap."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailstead.sieve.check import compile_script
from mailstead.sieve.grammar import SieveSyntaxError
from mailstead.sieve.interp import Context, Outcome, SieveRuntimeError, evaluate
from mailstead.sieve.match import glob_match

MSG = (b"From: Carol <carol@remote.test>\r\nTo: alice@example.test\r\n"
       b"Subject: =?utf-8?q?caf=C3=A9?= [dev] release\r\nReceived: from a\r\nReceived: from b\r\n"
       b"Date: Tue, 1 Dec 2026 10:30:00 +0100\r\nX-Count: 42\r\n"
       b"Content-Type: text/plain; charset=utf-8\r\n\r\nThe build is green.\r\n")


def run(text: str, message: bytes = MSG, **kw: object) -> Outcome:
    ctx = Context(message=message, envelope_from="carol@remote.test",
                  envelope_to="alice+tag@example.test", now=datetime(2026, 12, 6, tzinfo=UTC),
                  **kw)  # type: ignore[arg-type]
    return evaluate(compile_script(text), ctx)


def boxes(out: Outcome) -> list[str]:
    return [box for box, _flags, _create in out.targets()]


def test_no_actions_is_implicit_keep() -> None:
    assert boxes(run("")) == ["INBOX"]
    assert boxes(run("discard;")) == []


def test_header_decoding_and_matches_variables() -> None:
    out = run('require ["fileinto", "variables"];\n'
              'if header :matches "subject" "café [*] *" { fileinto "lists/${1}/${2}"; }')
    assert boxes(out) == ["lists/dev/release"]


def test_header_of_several_fields_decodes_encoded_words() -> None:
    out = run('require "fileinto";\n'
              'if header :contains ["x-none", "subject"] "caf\u00e9 [dev]" { fileinto "A"; }')
    assert boxes(out) == ["A"]


def test_address_envelope_parts() -> None:
    out = run('require ["envelope", "fileinto"];\n'
              'if allof (address :domain "from" "REMOTE.test", '
              'envelope :localpart "to" "alice+tag") { fileinto "A"; }')
    assert boxes(out) == ["A"]


def test_relational_numeric_and_count() -> None:
    out = run('require ["relational", "comparator-i;ascii-numeric", "fileinto"];\n'
              'if header :value "gt" :comparator "i;ascii-numeric" "x-count" "9" '
              '{ fileinto "N"; }\n'
              'if header :count "eq" :comparator "i;ascii-numeric" "received" "2" '
              '{ fileinto "C"; }')
    assert sorted(boxes(out)) == ["C", "N"]


def test_date_index_body_string() -> None:
    out = run('require ["date", "index", "body", "variables", "fileinto", "relational"];\n'
              'if date :zone "+0000" "date" "hour" "09" { fileinto "D"; }\n'
              'if header :index 2 "received" "from b" { fileinto "I"; }\n'
              'if body :text :contains "green" { fileinto "B"; }\n'
              'if currentdate :value "ge" "date" "2026-01-01" { fileinto "T"; }\n'
              'set :upperfirst "who" "carol"; if string "${who}" "Carol" { fileinto "S"; }')
    assert sorted(boxes(out)) == ["B", "D", "I", "S", "T"]


def test_imap4flags_and_copy() -> None:
    out = run('require ["imap4flags", "fileinto", "copy"];\n'
              'setflag "\\\\Seen"; addflag ["$A $B"]; removeflag "$b";\n'
              'fileinto :copy "Kept"; if hasflag "$a" { addflag "\\\\Flagged"; }')
    targets = {box: flags for box, flags, _c in out.targets()}
    assert targets["Kept"] == {"\\Seen", "$A"}
    assert targets["INBOX"] == {"\\Seen", "$A", "\\Flagged"}


def test_include_global_and_return() -> None:
    shared = compile_script('require ["fileinto", "include"]; fileinto "Shared"; return; '
                            'fileinto "Never";')
    out = run('require ["include"]; include :global "common"; include :optional "gone";',
              scripts={("global", "common"): shared})
    assert boxes(out) == ["Shared"]


def test_spamtest_scale() -> None:
    script = ('require ["spamtest", "relational", "comparator-i;ascii-numeric", "fileinto"];\n'
              'if spamtest :value "ge" :comparator "i;ascii-numeric" "8" { fileinto "S"; }')
    assert boxes(run(script, spam_score=9.0, spam_required=5.0)) == ["S"]
    assert boxes(run(script, spam_score=1.0, spam_required=5.0)) == ["INBOX"]
    assert boxes(run(script)) == ["INBOX"]  # untested: "0"


def test_reject_with_fileinto_is_a_runtime_error() -> None:
    with pytest.raises(SieveRuntimeError):
        run('require ["reject", "fileinto"]; fileinto "X"; reject "no";')
    assert run('require "ereject"; ereject "go away";').reject == "go away"


def test_vacation_parameters() -> None:
    out = run('require ["vacation", "vacation-seconds"];\n'
              'vacation :seconds 60 :subject "Away" :from "me@example.test" "Gone.";')
    assert out.vacation is not None
    assert (out.vacation.seconds, out.vacation.subject, out.vacation.reason) == \
        (60, "Away", "Gone.")
    assert boxes(out) == ["INBOX"]  # vacation keeps


@pytest.mark.parametrize("text, fault", [
    ('fileinto "x";', 'needs require "fileinto"'),
    ('require "fileinto"; if true { fileinto; }', "wrong arguments"),
    ('keep', "expected ';'"),
    ('if true { keep; ', "expected '}'"),
    ('"str";', "expected a command"),
    ('require "nope";', "unsupported extension"),
    ('keep; require "fileinto";', "require must come before"),
    ('elsif true { keep; }', "elsif without if"),
    ('if header :is :contains "a" "b" { keep; }', "exclude each other"),
    ('if header :comparator "i;nope" "a" "b" { keep; }', "unknown comparator"),
    ('if size 10 { keep; }', "size needs :over or :under"),
    ('/* never closed', "unterminated"),
])
def test_syntax_errors_name_the_fault(text: str, fault: str) -> None:
    with pytest.raises(SieveSyntaxError) as caught:
        compile_script(text)
    assert fault in str(caught.value)


def test_multiline_and_escapes() -> None:
    script = compile_script('require "vacation";\nvacation text:\n..dot\nline "q" \\x\n.\n;')
    out = evaluate(script, Context(MSG, "a@b.test", "c@d.test", datetime.now(UTC)))
    assert out.vacation is not None and out.vacation.reason == '.dot\r\nline "q" \\x\r\n'


def test_hostile_matches_is_cheap() -> None:
    value = "a" * 60_000
    pattern = "*a" * 40 + "*b"
    assert glob_match(value, pattern, "i;octet") is None
    assert glob_match("x" * 60_000 + "yz", "*?Z", "i;ascii-casemap") == ["x" * 60_000, "y"]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_parser_never_crashes(text: str) -> None:
    try:
        compile_script(text)
    except SieveSyntaxError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab*?\\", max_size=12), st.text(alphabet="ab", max_size=20))
def test_glob_agrees_with_fnmatch(pattern: str, value: str) -> None:
    import re

    regex = ""
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            regex += re.escape(pattern[i + 1])
            i += 2
            continue
        regex += ".*" if ch == "*" else "." if ch == "?" else re.escape(ch)
        i += 1
    expected = re.fullmatch(regex, value, re.S) is not None
    assert (glob_match(value, pattern, "i;octet") is not None) == expected


_SAME_MESSAGES = [
    MSG,
    b"To: Bob <bob@example.test>,\r\n\tcarol@remote.test\r\nCC: \"A, B\" <ab@x.test>\r\n"
    b"cc: d@EXAMPLE.test\r\nSubject: Caf\xc3\xa9 CAF\xc3\x89\r\nFrom: <>\r\n\r\nbody\r\n",
    b"Subject: bare LF header\nTo: alice@example.test\nX-Stray\n\nbody\n",
    b"From: no-at-sign\r\nSubject:\r\n\r\n",
]
_SAME_TESTS = [
    'header :contains "subject" "CAF\u00c9"', 'header :contains "subject" "caf\u00e9"',
    'header :contains "subject" ""', 'header :is "subject" ""',
    'header :is "to" "alice@example.test"', 'header :is :comparator "i;octet" "Subject" '
    '"caf\u00e9 [dev] release"', 'header :contains ["to", "cc"] "BOB"',
    'header :contains ["TO", "x-none"] ["zz", "ALICE"]', 'header :is "x-count" "42"',
    'address :localpart "from" "carol"', 'address :domain ["to", "cc"] "EXAMPLE.test"',
    'address :all :comparator "i;octet" "from" "carol@remote.test"',
    'address :is "from" "Carol"', 'address :contains :domain "from" "remote"',
    'address :localpart "from" "no-at-sign"', 'address :domain "from" ""',
    'envelope :domain "to" "example.test"', 'envelope :all ["from", "to"] "carol@remote.test"',
    'envelope :localpart :contains "to" "+TAG"', 'envelope :is ["to", "bogus"] "x"',
    'exists ["subject", "x-count"]', 'exists "x-none"', 'exists "SUBJECT"',
    'header :matches "subject" "*[*]*"', 'header :matches "subject" ["x*", "CAF? *"]',
    'header :matches :comparator "i;octet" "subject" "CAF? *"',
    'header :matches ["to", "cc"] "*@*"', 'address :matches :domain "from" "*.test"',
    'address :matches :localpart ["to", "cc"] "?*"', 'envelope :matches "to" "*+*@*"',
    'header :matches "subject" ["*zz*", "*\\\\[*"]', 'header :matches "subject" "caf?*"',
    'header :matches "subject" ["*", "nothing"]', 'header :contains "x-none" ""',
    'header :contains "subject" ["", "zz"]', 'address :contains ["to", "cc"] ["zz", ".TEST"]',
    'envelope :contains ["to", "from"] "remote"', 'exists ["to", "TO", "cc"]',
    'header :is "x-none" ["", "a"]', 'not header :contains "subject" "caf"',
]


@pytest.mark.parametrize("test", _SAME_TESTS)
def test_specialised_tests_answer_as_the_general_path(test: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """compiled.fast_form's answers, and those of the generated function's inline forms,
    equal those of Interpreter.test's general path."""
    from mailstead.sieve import codegen, compiled

    text = (f'require ["envelope", "imap4flags", "variables"];\n'
            f'if {test} {{ addflag "yes:${{0}}|${{1}}|${{2}}"; }}')
    generated = [run(text, m).keep_flags for m in _SAME_MESSAGES]  # (sieve/codegen.py)
    monkeypatch.setattr(codegen, "generated_program", lambda _s: None)
    fast = [run(text, m).keep_flags for m in _SAME_MESSAGES]
    assert fast == generated
    monkeypatch.setattr(compiled, "fast_form", lambda _t: None)
    monkeypatch.setattr(compiled, "compiled_program", lambda _s: None)
    assert [run(text, m).keep_flags for m in _SAME_MESSAGES] == fast


_BODY_MESSAGES = [
    MSG,
    b"Subject: plain\r\n\r\nThe Build is GREEN.\r\n",
    b"Content-Type: text/html; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable"
    b"\r\n\r\n<p>caf=E9 green</p>\r\n",
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"Y2Fmw6kgZ3JlZW4=\r\n",
    b"Content-Type: application/octet-stream\r\n\r\ngreen\r\n",
    b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n\r\ngreen one\r\n--zz\r\n"
    b"Content-Type: text/html\r\n\r\n<b>green</b>\r\n--zz--\r\n",
    b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ngreen\r\n",
    b"Subject: bare LF\n\ngreen\n",
    # Searched as octets where the body is plain ASCII (interp.ascii_text_body), else decoded:
    b"Subject: empty\r\n\r\n",
    b"Content-Type: text/plain; charset=\"US-ASCII\"\r\nContent-Transfer-Encoding: 7BIT\r\n"
    b"\r\nGreen Light\r\n",
    b"Content-Type: text/plain; charset=utf-16-le\r\n\r\ng\x00r\x00e\x00e\x00n\x00",
    b"Content-Type: TEXT/plain\r\nContent-Transfer-Encoding: BASE64\r\n\r\nZ3JlZW4=\r\n",
    b"Subject: long\r\n\r\n" + b"a" * (64 * 1024 - 3) + b"GREEN green\r\n",
]
_BODY_TESTS = [
    'body :contains "green"', 'body :text :contains "GREEN"', 'body :raw :contains "=E9"',
    'body :content "text/html" :contains "green"', 'body :content "text" :contains "caf\u00e9"',
    'body :content ["application", "image"] :contains "green"', 'body :content "" :is ""',
    'body :matches "*green*"', 'body :contains :comparator "i;octet" "GREEN"',
    'body :contains ["zz", "caf\u00e9"]', 'body :contains ""', 'body :contains "N GREEN"',
    'body :contains "aagr"', 'body :contains :comparator "i;octet" ["Gree", "nope"]',
]


@pytest.mark.parametrize("test", _BODY_TESTS)
def test_body_of_a_scanned_message_is_that_of_its_parsed_tree(test: str) -> None:
    """The body test reads a one-part message from its scanned header (interp.body_values)
    as from the message's parsed part tree (RFC 5173 5: :raw, :content, :text)."""
    from mailstead.proto import mime

    text = f'require ["body", "imap4flags"];\nif {test} {{ addflag "yes"; }}'
    scanned = [run(text, m).keep_flags for m in _BODY_MESSAGES]
    assert [run(text, m, _root=mime.parse(m)).keep_flags for m in _BODY_MESSAGES] == scanned


_PROGRAM_SCRIPTS = [
    'if header :contains "subject" "release" { fileinto :create "Rel"; stop; }\n'
    'addflag "late";',
    'if header :is "x-none" "a" { addflag "a"; } elsif exists "x-count" { addflag "b"; }\n'
    'elsif true { addflag "c"; } else { addflag "d"; }\naddflag "after";',
    'if false { addflag "a"; } elsif false { addflag "b"; } else { discard; }',
    'if anyof (false, not true, allof (true, size :under 10K)) { addflag "x"; }\n'
    'if allof (true, not anyof (false, size :over 1)) { addflag "y"; } else { keep; }',
    'if header :value "ge" :comparator "i;ascii-numeric" "x-count" "40" { addflag "$High"; }\n'
    'if header :count "eq" :comparator "i;ascii-numeric" "received" "2" { addflag "two"; }',
    'if spamtest :percent :value "lt" :comparator "i;ascii-numeric" "50" { addflag "low"; }\n'
    'if spamtest :value "eq" :comparator "i;ascii-numeric" "8" { addflag "eight"; }\n'
    'if spamtest :value "lt" :comparator "i;ascii-numeric" "x" { addflag "below-x"; }\n'
    'if anyof (false, false, spamtest :count "eq" :comparator "i;ascii-numeric" "1")'
    ' { addflag "one"; }\n'
    'if spamtest :value "ge" :comparator "i;ascii-numeric" "3" { fileinto "Junk"; }',
    'if body :contains "GREEN" { fileinto :copy "Green"; }\n'
    'if body :contains :comparator "i;octet" ["GREEN", "caf\u00e9"] { addflag "o"; }\n'
    'if body :raw :contains ["=E9", "zz"] { addflag "r"; }\n'
    'if body :content "text/html" :contains "green" { addflag "h"; }\n'
    'if body :content "text" :matches "*build*" { addflag "b"; }',
    'if header :matches "subject" "* [*] *" { set "tag" "${2}"; addflag "${tag}"; }\n'
    'fileinto "Lists/${tag}"; setflag "only"; addflag ["x y", "X"]; removeflag "y";',
    'addflag "\\\\Seen"; fileinto :flags "\\\\Flagged" "F"; keep :flags "k";\n'
    'if true { return; } addflag "never";',
    'if address :domain "from" "remote.test" { redirect "bob@example.test"; }\n'
    'vacation :days 3 :subject "away" "Gone";',
    'fileinto "A"; fileinto "a"; fileinto "INBOX"; addflag "f"; fileinto :create "B";',
    'if envelope :domain "to" "example.test" { reject "no"; }',
    'if header :contains "subject" "caf\u00e9" { stop; } addflag "not stopped";',
    'fileinto "";',
    'if anyof (header :contains "subject" "zz", not exists "x-count") { addflag "a"; }\n'
    'elsif allof (size :over 1, header :matches "subject" "*re?ease*") {\n'
    '  if address :is "from" "carol@remote.test" { addflag "b"; stop; } else { discard; } }\n'
    'addflag "not stopped";',
    'if header :matches "subject" "* [*] *" { if header :contains "subject" "dev" {\n'
    '  addflag "${1}"; } } if true {} elsif false { addflag "no"; }',
    'if address :matches ["to", "cc"] "*" { set "a" "${1}"; }\n'
    'if address :matches ["cc", "to"] "*" { set "b" "${1}"; }\n'
    'if address :domain :is "from" "remote.test" { addflag "d"; }\n'
    'if address :localpart :is "from" "carol" { addflag "l"; }\n'
    'if address :localpart :contains ["from", "to"] "AL" { addflag "c"; }\n'
    'if header :matches ["cc", "to"] "*@*" { set "c" "${2}"; }\n'
    'if header :is ["to", "subject"] "body" { addflag "s"; } addflag "${a}|${b}|${c}";',
]


@pytest.mark.parametrize("script", _PROGRAM_SCRIPTS)
def test_whole_script_closures_act_as_the_general_path(script: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """codegen.generated_program (a script run as one generated function) and
    compiled.compiled_program's closures (a tree, with the specialised tests) give the
    Outcome, or the runtime error, that Interpreter.block's general path gives."""
    from mailstead.sieve import codegen
    from mailstead.sieve import compiled as compiled_forms

    text = ('require ["fileinto", "imap4flags", "envelope", "relational", "body", "copy",'
            ' "comparator-i;ascii-numeric", "spamtest", "spamtestplus", "variables",'
            ' "mailbox", "include", "vacation", "reject"];\n' + script)

    def outcomes() -> list[Outcome | str]:
        found: list[Outcome | str] = []
        for m in [*_SAME_MESSAGES, *_BODY_MESSAGES]:
            try:
                found.append(run(text, m, spam_score=4.0))
            except SieveRuntimeError as exc:
                found.append(f"error: {exc}")
        return found

    compiled = compile_script(text)
    assert compiled_forms.compiled_program(compiled) is not None
    assert codegen.generated_program(compiled) is not None
    generated = outcomes()
    monkeypatch.setattr(codegen, "generated_program", lambda _s: None)
    closures = outcomes()
    assert closures == generated
    monkeypatch.setattr(compiled_forms, "compiled_program", lambda _s: None)
    monkeypatch.setattr(compiled_forms, "fast_form", lambda _t: None)
    assert outcomes() == closures


def test_a_large_script_runs_as_closures_with_the_same_outcome() -> None:
    """Past codegen.MAX_NODES a script is not made into one function; it still runs (as
    compiled.py's closures) with the outcome of the general path."""
    from mailstead.sieve import codegen

    rules = "".join(f'if header :contains "subject" "word{n}" {{ addflag "f{n}"; }}\n'
                    for n in range(codegen.MAX_NODES))
    text = 'require ["imap4flags"];\n' + rules + 'if header :contains "subject" "caf" ' \
        '{ addflag "hit"; }'
    assert codegen.generated_program(compile_script(text)) is None
    assert run(text).keep_flags == frozenset({"hit"})
