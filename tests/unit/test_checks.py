"""The check chain on its own: how verdicts merge, what a failing or slow plug-in costs, what
loading refuses, the verdict helpers' rules, and the DNSBL query names (RFC 5782)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from mailstead.checks import (
    Check,
    CheckContext,
    CheckSetup,
    Filing,
    FilterContext,
    HookResult,
    Verdict,
    add_header,
    reject,
    score,
    tempfail,
)
from mailstead.checks.chain import FilterChain, load_checks, load_filters
from mailstead.checks.dnsbl import DnsblCheck, is_listing, query_name
from mailstead.config import ChecksConfig, Config
from mailstead.core.errors import ConfigError
from mailstead.dns import DnsNotFound, DnsTemporaryError, MxRecord, OfflineResolver

SAMPLES = "tests.smtp.check_samples"


class Says(Check):
    def __init__(self, name: str, *verdicts: Verdict) -> None:
        self.name = name
        self.verdicts = list(verdicts)
        self.calls = 0

    async def data(self, ctx: CheckContext, message: bytes) -> HookResult:
        self.calls += 1
        return self.verdicts


def ctx(**fields: Any) -> CheckContext:
    return CheckContext(client_ip="192.0.2.1", listener="smtp", session_id="s1", **fields)


def chain(*checks: Check, after: tuple[Check, ...] = (), **cfg: Any) -> Any:
    config = ChecksConfig(entry_points=False, **cfg)
    return load_checks(config, "mx.test", OfflineResolver(),
                       before=[(c.name, c) for c in checks],
                       after=[(c.name, c) for c in after])


async def test_first_refusal_wins_headers_and_scores_accumulate() -> None:
    first = Says("first", add_header("X-One", "1"), score(2.5, "ONE"))
    second = Says("second", score(1.0, "TWO"), reject(554, "5.7.0", "no"),
                  tempfail(451, "4.7.1", "later"))
    third = Says("third", add_header("X-Three", "3"))
    context = ctx()
    outcome = await chain(first, second, third).run("data", context)
    assert (outcome.action, outcome.code, outcome.status, outcome.text, outcome.by) == (
        "reject", 554, "5.7.0", "no", "second")
    assert outcome.headers == [("X-One", "1")] and outcome.points == 3.5
    assert outcome.tests == ["ONE", "TWO"]
    assert third.calls == 0  # nothing runs after a refusal
    assert context.points == 3.5 and context.headers == [("X-One", "1")]


async def test_later_checks_see_earlier_points() -> None:
    seen: list[float] = []

    class Reader(Check):
        name = "reader"

        async def data(self, ctx: CheckContext, message: bytes) -> HookResult:
            seen.append(ctx.points)
            return None

    context = ctx(points=1.0)  # from the connect phase
    await chain(Says("a", score(4, "A")), after=(Reader(),)).run("data", context)
    assert seen == [5.0]


async def test_plug_in_errors_count_as_accept_or_tempfail(
        caplog: pytest.LogCaptureFixture) -> None:
    modules = [f"broken={SAMPLES}:broken"]
    lenient = chain(modules=modules, timeout=0.2, broken={"sleep": 5})
    caplog.set_level(logging.WARNING, logger="mailstead")
    assert not (await lenient.run("rcpt", ctx(), "a@b.test")).refused
    assert "checks.error" in caplog.text and "RuntimeError" in caplog.text
    started = asyncio.get_running_loop().time()
    assert not (await lenient.run("data", ctx(message=b"x"))).refused
    assert asyncio.get_running_loop().time() - started < 2
    assert "timed out" in caplog.text

    strict = chain(modules=modules, timeout=0.2, on_error="tempfail", broken={"sleep": 5})
    outcome = await strict.run("rcpt", ctx(), "a@b.test")
    assert (outcome.action, outcome.code, outcome.status) == ("tempfail", 451, "4.3.0")


async def test_wrong_return_type_is_an_error_of_the_plug_in() -> None:
    class Wrong(Check):
        name = "wrong"

        async def data(self, ctx: CheckContext, message: bytes) -> HookResult:
            return "reject"  # type: ignore[return-value]

    import sys
    import types

    module = types.ModuleType("wrong_check_module")
    module.factory = lambda setup: Wrong()  # type: ignore[attr-defined]
    sys.modules["wrong_check_module"] = module
    try:
        loaded = chain(modules=["wrong=wrong_check_module:factory"], on_error="tempfail")
        assert (await loaded.run("data", ctx())).action == "tempfail"
    finally:
        del sys.modules["wrong_check_module"]


async def test_plug_ins_skip_submissions_unless_configured() -> None:
    modules = [f"phase={SAMPLES}:phase"]
    options = {"phase": {"refuse_rcpts": ["x@y.test"]}}
    mx_only = chain(modules=modules, **options)
    assert not (await mx_only.run("rcpt", ctx(submission=True), "x@y.test")).refused
    assert (await mx_only.run("rcpt", ctx(), "x@y.test")).refused
    both = chain(modules=modules, submission=True, **options)
    assert (await both.run("rcpt", ctx(submission=True), "x@y.test")).refused


def test_loading_refuses_what_cannot_work() -> None:
    with pytest.raises(ConfigError, match="no check named 'nothere'"):
        chain(enabled=["nothere"])
    with pytest.raises(ConfigError, match="cannot load"):
        chain(modules=["tests.no_such_module:factory"])
    with pytest.raises(ConfigError, match="none of the hooks"):
        chain(modules=[f"hl={SAMPLES}:hookless"])  # its check overrides no hook
    with pytest.raises(ValueError, match=r"package\.module:factory"):
        ChecksConfig(modules=["no_colon_here"])
    with pytest.raises(ConfigError, match="its factory failed"):
        chain(modules=[f"bf={SAMPLES}:broken_factory"])


def test_enabled_orders_and_selects() -> None:
    loaded = chain(modules=[f"phase={SAMPLES}:phase", f"broken={SAMPLES}:broken"],
                   enabled=["broken", "phase"])
    assert loaded.plugins == ["broken", "phase"]
    only = chain(modules=[f"phase={SAMPLES}:phase", f"broken={SAMPLES}:broken"],
                 enabled=["phase"])
    assert only.plugins == ["phase"]
    # dnsbl joins on its own once it has zones.
    assert chain(dnsbl={"zones": ["z.test"]}).plugins == ["dnsbl"]
    assert chain().plugins == []


def test_plugin_options_round_trip_through_the_config_file() -> None:
    from mailstead.config import render_toml

    cfg = Config.model_validate({"checks": {"mine": {"word": "x", "limit": 3, "on": True,
                                                     "zones": ["a", "b"]}}})
    text = render_toml(cfg)
    assert '[checks.mine]\nword = "x"\nlimit = 3\non = true\nzones = ["a", "b"]' in text
    import tomllib

    again = Config.model_validate(tomllib.loads(text))
    assert again.checks.model_extra == cfg.checks.model_extra
    with pytest.raises(ValueError, match="table of plain values"):
        Config.model_validate({"checks": {"mine": 3}})


def test_verdict_helpers_keep_the_protocol_sane() -> None:
    assert reject().code == 550 and tempfail().status == "4.7.1"
    for bad in ((450, "5.7.1"), (550, "4.7.1"), (550, "5.7"), (600, "5.7.1")):
        with pytest.raises(ValueError):
            reject(*bad)
    with pytest.raises(ValueError):
        tempfail(550, "5.7.1")
    with pytest.raises(ValueError):
        add_header("Bad Name", "x")
    with pytest.raises(ValueError):
        add_header("X-Ok", "line\r\nInjected: yes")
    with pytest.raises(ValueError):
        score(1, "has space")
    assert reject(text="a\r\nb").text == "ab"  # no reply line breaks
    with pytest.raises(ValueError):
        Filing(headers=(("X-Ok", "a\nb"),))


async def test_filter_chain_merges_and_survives_errors() -> None:
    class Named(Check):
        def __init__(self, filing: Filing | None, fail: bool = False) -> None:
            self.filing, self.fail = filing, fail

        async def deliver(self, ctx: FilterContext, message: bytes) -> Filing | None:
            if self.fail:
                raise RuntimeError("filter bug")
            return self.filing

    filters = FilterChain([
        ("a", Named(Filing("Work", frozenset({"$A"}), (("X-A", "1"),)))),
        ("b", Named(None, fail=True)),
        ("c", Named(Filing(None, frozenset({"\\Seen"}), (("X-C", "3"),)))),
    ], timeout=1.0)
    context = FilterContext("u@test", "s@test", ["u@test"], "192.0.2.1", False, None, False)
    filing = await filters.run(context, b"msg")
    assert filing == Filing("Work", frozenset({"$A", "\\Seen"}), (("X-A", "1"), ("X-C", "3")))
    empty = load_filters(ChecksConfig(entry_points=False), "mx.test", OfflineResolver())
    assert not empty


def test_dnsbl_query_names() -> None:
    # RFC 5782 2.1 (IPv4: octets reversed) and 2.4 (IPv6: 32 nibbles reversed).
    assert query_name("192.0.2.99", "zen.example.") == "99.2.0.192.zen.example"
    assert query_name("2001:db8:1:2:3:4:567:89ab", "bl.test") == (
        "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.test")
    assert query_name("::ffff:192.0.2.1", "bl.test") == "1.2.0.192.bl.test"
    assert query_name("not-an-ip", "bl.test") is None
    assert is_listing("127.0.0.2") and is_listing("127.0.0.11")
    assert not is_listing("127.255.255.254")  # the list refusing to answer
    assert not is_listing("192.0.2.1") and not is_listing("garbage")


class ZoneResolver(OfflineResolver):
    def __init__(self, answers: dict[str, list[str] | Exception]) -> None:
        super().__init__()
        self.answers = answers
        self.asked: list[str] = []

    async def records(self, name: str, rdtype: str) -> list[str]:
        self.asked.append(name)
        found = self.answers.get(name, DnsNotFound(name))
        if isinstance(found, Exception):
            raise found
        return found

    async def mx(self, domain: str) -> list[MxRecord]:
        raise AssertionError("not used")


async def test_dnsbl_asks_each_zone_and_exempts_networks() -> None:
    resolver = ZoneResolver({"1.2.0.192.one.test": ["127.0.0.2"],
                             "1.2.0.192.two.test": DnsTemporaryError("timeout")})
    setup = CheckSetup("dnsbl", {"zones": ["one.test", "two.test", "three.test"],
                                 "exempt": ["10.0.0.0/8"]}, "mx.test", resolver,
                       lambda event, **f: None)
    check = DnsblCheck(setup)
    assert await check.listed_at("192.0.2.1") == ["one.test"]  # a failing list: not listed
    assert await check.listed_at("10.1.2.3") == [] and "3.2.1.10.one.test" not in resolver.asked
    refusal = await check.connect(ctx())
    assert isinstance(refusal, Verdict) and refusal.code == 554
    assert refusal.text.endswith("listed at one.test")
