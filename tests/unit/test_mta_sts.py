"""MTA-STS records and policies (RFC 8461 3.1, 3.2, 4.1), parsed as bytes from DNS and HTTPS."""

from __future__ import annotations

import pytest

from mailstead.mailsec.mta_sts import (
    PolicyError,
    parse_policy,
    parse_txt,
    policy_id,
    policy_text,
)

RFC_EXAMPLE = "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\n" \
              "mx: backupmx.example.com\nmax_age: 604800\n"


def test_txt_record_gives_the_policy_id() -> None:
    assert parse_txt(["v=STSv1; id=20160831085700Z;"]) == "20160831085700Z"
    assert parse_txt(["v=STSv1;id=abc", "v=spf1 -all"]) == "abc"


@pytest.mark.parametrize("records", [
    [], ["v=spf1 -all"], ["v=STSv1; id=1", "v=STSv1; id=2"],  # none, or more than one
    ["v=STSv1;"], ["v=STSv1; id=not-alnum"], ["v=STSv1; id=" + "a" * 33],
])
def test_txt_records_that_announce_no_policy(records: list[str]) -> None:
    assert parse_txt(records) is None


def test_rfc_example_policy() -> None:
    policy = parse_policy(RFC_EXAMPLE, "example.com", "id1", 1000.0)
    assert policy.mode == "enforce" and policy.max_age == 604800
    assert policy.mx == ("mail.example.com", "*.example.net", "backupmx.example.com")
    assert policy.allows("mail.example.com") and policy.allows("MAIL.example.com.")
    assert policy.allows("mx1.example.net")
    # A wildcard matches exactly one leftmost label (RFC 8461 4.1).
    assert not policy.allows("example.net")
    assert not policy.allows("a.b.example.net")
    assert not policy.allows("evil.example.com")
    assert not policy.expired(1000.0 + 604799) and policy.expired(1000.0 + 604800)


def test_crlf_unknown_keys_and_spacing_are_fine() -> None:
    text = "version: STSv1\r\nmode:testing\r\nmx:  mx.example.org \r\nfoo: bar\r\nmax_age: 86400"
    policy = parse_policy(text, "example.org", "x", 0.0)
    assert (policy.mode, policy.mx, policy.max_age) == ("testing", ("mx.example.org",), 86400)


@pytest.mark.parametrize("text", [
    "mode: enforce\nmx: a.example\nmax_age: 1",  # no version
    "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1",
    "version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1",
    "version: STSv1\nmode: enforce\nmax_age: 1",  # no mx
    "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1",
    "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601",  # over a year
    "<html>not a policy</html>",
])
def test_bad_policies_are_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(text, "example.org", "x", 0.0)


def test_mode_none_needs_no_mx() -> None:
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 0", "d", "x", 0.0).mode == "none"


def test_served_policy_parses_back_and_its_id_follows_it() -> None:
    text = policy_text("enforce", ["mail.example.org"])
    policy = parse_policy(text, "example.org", policy_id(text), 0.0)
    assert policy.allows("mail.example.org") and policy.mode == "enforce"
    assert policy_id(text) != policy_id(policy_text("testing", ["mail.example.org"]))
    assert parse_txt([f"v=STSv1; id={policy_id(text)}"]) == policy_id(text)
