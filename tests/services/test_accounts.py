"""Accounts service: login with rate limits, recipient routing, sender ownership (both stores)."""

from __future__ import annotations

import pytest

from mailstead.core.addresses import parse_address
from mailstead.services.accounts import AuthFailed
from tests.conftest import PASSWORD, RunningServer

both = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)


def route(server: RunningServer, address: str) -> tuple[list[str], list[str]]:
    r = server.run(server.services.accounts.route(parse_address(address)))
    return sorted(a.address for a in r.local), sorted(r.remote)


@both
def test_routing(mail_server: RunningServer) -> None:
    s = mail_server
    s.add_alias("team@example.test", "alice@example.test")
    s.add_alias("team@example.test", "bob@example.test")
    s.add_alias("team@example.test", "carol@remote.test")
    s.add_alias("loop1@example.test", "loop2@example.test")
    s.add_alias("loop2@example.test", "loop1@example.test")
    s.add_alias("nested@example.test", "team@example.test")

    assert route(s, "alice@example.test") == (["alice@example.test"], [])
    assert route(s, "Alice@EXAMPLE.test") == (["alice@example.test"], [])
    assert route(s, "alice+news@example.test") == (["alice@example.test"], [])
    assert route(s, "team@example.test") == (
        ["alice@example.test", "bob@example.test"], ["carol@remote.test"],
    )
    assert route(s, "nested@example.test")[0] == ["alice@example.test", "bob@example.test"]
    assert route(s, "nobody@example.test") == ([], [])
    assert route(s, "loop1@example.test") == ([], [])
    assert route(s, "someone@remote.test") == ([], ["someone@remote.test"])

    s.add_alias("@example.test", "bob@example.test")
    assert route(s, "nobody@example.test") == (["bob@example.test"], [])
    assert route(s, "alice@example.test") == (["alice@example.test"], [])


@both
def test_sender_ownership(mail_server: RunningServer) -> None:
    s = mail_server
    s.add_alias("sales@example.test", "alice@example.test")
    alice = s.run(s.services.store.get_account("alice@example.test"))
    assert alice is not None

    def owns(address: str) -> bool:
        return s.run(s.services.accounts.owns_address(alice, parse_address(address)))

    assert owns("alice@example.test")
    assert owns("ALICE+tag@example.test")
    assert owns("sales@example.test")
    assert not owns("bob@example.test")
    assert not owns("alice@other.test")


def test_login_success_failure_and_lockout(make_server: object) -> None:
    s = make_server(auth={"max_failures": 3, "lockout_seconds": 60})  # type: ignore[operator]
    accounts = s.services.accounts
    assert s.run(accounts.authenticate("alice@example.test", PASSWORD, "127.0.0.9")).address == (
        "alice@example.test"
    )
    # The cached credential still checks the password.
    with pytest.raises(AuthFailed) as failed:
        s.run(accounts.authenticate("alice@example.test", "wrong", "127.0.0.9"))
    assert not failed.value.temporary
    with pytest.raises(AuthFailed):
        s.run(accounts.authenticate("nobody@example.test", PASSWORD, "127.0.0.9"))
    with pytest.raises(AuthFailed):
        s.run(accounts.authenticate("bob@example.test", "wrong", "127.0.0.9"))
    # Three failures from this IP: locked out, even with the right password.
    with pytest.raises(AuthFailed) as locked:
        s.run(accounts.authenticate("alice@example.test", PASSWORD, "127.0.0.9"))
    assert locked.value.temporary
    # Another IP is not locked, and bob's account has one failure only.
    assert s.run(accounts.authenticate("bob@example.test", PASSWORD, "127.0.0.10"))


def test_logins_share_and_cache_the_password_hash(
        make_server: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client opening many connections at once pays the slow hash once, and a reconnect
    within auth.cache_seconds pays nothing; a wrong password is always hashed."""
    import asyncio

    from mailstead.services import accounts as module

    s: RunningServer = make_server()  # type: ignore[operator]
    hashed: list[str] = []
    real = module.verify_password

    def counting(password_hash: str, password: str) -> bool:
        hashed.append(password)
        return real(password_hash, password)

    monkeypatch.setattr(module, "verify_password", counting)
    accounts = s.services.accounts

    async def logins(password: str, n: int) -> list[object]:
        return await asyncio.gather(
            *(accounts.authenticate("alice@example.test", password, "127.0.0.9")
              for _ in range(n)), return_exceptions=True)

    assert all(getattr(a, "address", "") == "alice@example.test"
               for a in s.run(logins(PASSWORD, 10)))
    assert hashed == [PASSWORD]
    s.run(logins(PASSWORD, 3))
    assert hashed == [PASSWORD]  # cached
    for _ in range(2):  # failures are never cached: each attempt pays the hash
        [refused] = s.run(logins("not-the-password", 1))
        assert isinstance(refused, AuthFailed)
    assert hashed[1:] == ["not-the-password"] * 2


def test_failures_from_many_addresses_never_lock_the_account(make_server: object) -> None:
    """A guesser spreading attempts over many networks puts the account under attack: its
    addresses are refused, but the real user from an address that never failed still gets in
    (at worst after a short wait), and other accounts are untouched."""
    s: RunningServer = make_server(  # type: ignore[operator]
        auth={"max_failures": 3, "lockout_seconds": 60, "account_max_failures_per_minute": 3})
    accounts = s.services.accounts
    for n in range(3):
        with pytest.raises(AuthFailed) as failed:
            s.run(accounts.authenticate("alice@example.test", "guess", f"127.0.{n}.9"))
        assert not failed.value.temporary
    with pytest.raises(AuthFailed) as refused:  # a failed source, under attack: try later
        s.run(accounts.authenticate("alice@example.test", "guess2", "127.0.0.9"))
    assert refused.value.temporary and refused.value.retry_after > 0
    assert s.run(accounts.authenticate("alice@example.test", PASSWORD, "127.0.9.1"))
    assert s.run(accounts.authenticate("bob@example.test", PASSWORD, "127.0.1.9"))
