"""The login limiter's arithmetic on a fake clock: addresses and networks are blocked, accounts
never are; an account under attack queues new sources and refuses the ones that failed on it."""

from __future__ import annotations

import pytest

from mailstead.auth.ratelimit import AuthLimiter, network_of, normal_ip
from mailstead.config import AuthConfig

ALICE = "alice@example.test"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, **kwargs: int) -> AuthLimiter:
    settings: dict[str, int] = {
        "network_max_failures": 20, "account_max_failures_per_minute": 10, **kwargs}
    return AuthLimiter(
        settings.pop("max_failures", 5), 300, 0.5, clock=clock,
        network_max_failures=settings["network_max_failures"],
        account_max_failures_per_minute=settings["account_max_failures_per_minute"],
        max_records=settings.get("max_records", 100_000),
    )


def fail(lim: AuthLimiter, ip: str, account: str = ALICE, guess: str = "g") -> float:
    verdict = lim.admit(ip, account, guess)
    assert not verdict.refused, verdict
    return lim.record_failure(ip, account, guess)


def succeed(lim: AuthLimiter, ip: str, account: str = ALICE) -> float:
    verdict = lim.admit(ip, account, "right")
    assert not verdict.refused, verdict
    lim.record_success(ip, account, "right")
    return verdict.wait


def test_networks_and_spellings() -> None:
    assert network_of("192.0.2.77") == "192.0.2.0/24"
    assert network_of("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert network_of("::ffff:192.0.2.5") == "192.0.2.0/24"
    assert network_of("fe80::1%eth0") == "fe80::/64"
    assert network_of("unknown") == "unknown"
    assert normal_ip("::ffff:192.0.2.5") == "192.0.2.5"
    assert normal_ip("2001:DB8::0:1") == "2001:db8::1"


def test_defaults_come_from_config() -> None:
    lim = AuthLimiter.from_config(AuthConfig())
    assert (lim.max_failures, lim.lockout_seconds, lim.failure_delay) == (5, 300.0, 0.5)
    assert (lim.network_max_failures, lim.account_max_failures) == (20, 10)


def test_an_address_is_slowed_then_blocked_even_with_the_right_password() -> None:
    clock = Clock()
    lim = limiter(clock)
    delays = [fail(lim, "192.0.2.7", guess=f"g{n}") for n in range(4)]
    assert delays == [0.5, 1.0, 2.0, 4.0]
    assert fail(lim, "192.0.2.7", guess="g4") == 8.0  # the fifth: blocked from now on
    verdict = lim.admit("192.0.2.7", ALICE, "right")
    assert verdict.refused and verdict.reason == "address"
    assert verdict.retry_after == pytest.approx(300)
    # The owner next door, and the attacker on another account, are not the address.
    assert succeed(lim, "192.0.2.8") == 0.0
    assert lim.admit("192.0.2.7", "bob@example.test", "x").refused
    # A success does not unblock the address; the block ends after lockout_seconds.
    clock.now += 299
    assert lim.admit("192.0.2.7", ALICE, "right").refused
    clock.now += 2
    assert succeed(lim, "192.0.2.7") == 0.0
    assert lim.failures_from("192.0.2.7") == 0


def test_failures_far_apart_do_not_add_up() -> None:
    clock = Clock()
    lim = limiter(clock)
    for n in range(10):
        fail(lim, "192.0.2.7", guess=f"g{n}")
        clock.now += 301
    assert lim.failures_from("192.0.2.7") == 0
    assert not lim.admit("192.0.2.7", ALICE, "x").refused


def test_parallel_guesses_count_before_their_answers() -> None:
    """After a first failure, distinct passwords being checked at once count as failures;
    one password sent on many connections counts once (mail clients do that)."""
    clock = Clock()
    lim = limiter(clock)
    fail(lim, "192.0.2.7", guess="g0")
    admitted = [lim.admit("192.0.2.7", ALICE, f"p{n}") for n in range(10)]
    assert [v.refused for v in admitted] == [False] * 4 + [True] * 6
    for n in range(4):
        lim.release("192.0.2.7", f"p{n}")
    same = [lim.admit("192.0.2.7", ALICE, "right") for _ in range(10)]
    assert not any(v.refused for v in same)


def test_a_rotating_attacker_in_one_network_is_caught_and_the_neighbour_gets_in() -> None:
    clock = Clock()
    lim = limiter(clock, account_max_failures_per_minute=1000)
    n = 0
    for n in range(20):  # 20 addresses, one failure each: the network is blocked
        fail(lim, f"192.0.2.{10 + n}", guess=f"g{n}")
        clock.now += 0.1
    # Addresses of the network that failed are refused, even with the right password.
    refused = lim.admit("192.0.2.10", ALICE, "right")
    assert refused.refused and refused.reason == "network"
    # A fresh address gets through, one a second for the whole network.
    first = lim.admit("192.0.2.100", ALICE, "a")
    second = lim.admit("192.0.2.101", ALICE, "b")
    assert not first.refused and first.wait == 0.0
    assert not second.refused and second.wait == pytest.approx(1.0)
    lim.record_failure("192.0.2.100", ALICE, "a")
    lim.record_success("192.0.2.101", ALICE, "b")
    assert lim.admit("192.0.2.100", ALICE, "c").refused  # it failed: now it is refused too
    # Past MAX_QUEUE_WAIT of queue, a fresh address is told to try later.
    waits = [lim.admit(f"192.0.2.{150 + k}", ALICE, f"q{k}") for k in range(15)]
    assert all(v.wait <= lim.MAX_QUEUE_WAIT for v in waits if not v.refused)
    assert waits[-1].refused and waits[-1].reason == "network"
    # Another network is not concerned, and the neighbour who logged in before is trusted.
    assert succeed(lim, "198.51.100.1") == 0.0
    assert succeed(lim, "192.0.2.101") == 0.0


def test_ipv6_networks_are_slash_64() -> None:
    clock = Clock()
    lim = limiter(clock, network_max_failures=3)
    for n in range(3):
        fail(lim, f"2001:db8:0:1::{n + 1:x}", guess=f"g{n}")
    assert lim.admit("2001:db8:0:1::1", ALICE, "x").refused
    assert lim.admit("2001:db8:0:1::99", ALICE, "x").wait == 0.0  # fresh: first in queue
    assert lim.admit("2001:db8:0:2::1", ALICE, "x").wait == 0.0  # next /64: not blocked


def test_an_account_under_distributed_attack_is_never_locked() -> None:
    clock = Clock()
    lim = limiter(clock, account_max_failures_per_minute=10)
    for n in range(10):  # ten networks, one failure each, within the minute
        fail(lim, f"10.{n}.0.1", guess=f"g{n}")
    # The sources that failed on alice are refused on alice (not on bob).
    refused = lim.admit("10.3.0.1", ALICE, "right")
    assert refused.refused and refused.reason == "account"
    assert not lim.admit("10.3.0.1", "bob@example.test", "x").refused
    lim.release("10.3.0.1", "x")
    # New sources are never refused outright: queued one a second.
    assert succeed(lim, "203.0.113.5") == 0.0
    assert lim.admit("203.0.113.6", ALICE, "y").wait == pytest.approx(1.0)
    lim.release("203.0.113.6", "y")
    # The address that just logged in is trusted: no queue for it.
    assert succeed(lim, "203.0.113.5") == 0.0
    # A minute after the last failures the attack is over.
    clock.now += 61
    assert succeed(lim, "203.0.113.77") == 0.0


def test_memory_stays_bounded_under_a_spray() -> None:
    """Random addresses and user names cannot grow the records past the cap, and an attacker
    who keeps knocking is not forgotten to make room for them."""
    clock = Clock()
    lim = limiter(clock, max_records=500)
    for n in range(5):
        fail(lim, "192.0.2.1", guess=f"a{n}")
    for n in range(20_000):
        ip = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
        user = f"user{n}@example.test"
        if not lim.admit(ip, user, f"s{n}").refused:
            lim.record_failure(ip, user, f"s{n}")
        if n % 1000 == 0 and not lim.admit(ip, user, "right").refused:
            lim.record_success(ip, user, "right")
        if n % 100 == 0:
            assert lim.admit("192.0.2.1", ALICE, "right").refused
        clock.now += 0.001
        assert len(lim) <= 2 * 500


def test_the_same_wrong_password_again_is_not_counted_again() -> None:
    """A phone still using last month's password retries it: one failure, not a block."""
    clock = Clock()
    lim = limiter(clock)
    for _ in range(20):
        fail(lim, "192.0.2.7", guess="old-password")
        clock.now += 1
    assert lim.failures_from("192.0.2.7") == 1
    assert succeed(lim, "192.0.2.7") == 0.0
    # Distinct guesses still count.
    for n in range(4):
        fail(lim, "192.0.2.7", guess=f"g{n}")
    assert lim.admit("192.0.2.7", ALICE, "right").refused
