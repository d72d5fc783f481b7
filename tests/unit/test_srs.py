"""SRS rewriting and reversal (mailsec/srs.py): the shapes of the common scheme, the hash, the
timestamp window, SRS1 for re-forwarding, and forged or malformed addresses refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstead.core.addresses import parse_address
from mailstead.mailsec import srs

KEY = b"k" * 32
DAY = 20_000


def test_srs0_round_trip() -> None:
    rewritten = srs.forward("sender@orig.example", "a.test", KEY, DAY)
    local, _, domain = rewritten.rpartition("@")
    assert domain == "a.test"
    tag, hash_, stamp, orig_domain, orig_local = local.split("=")
    assert (tag, orig_domain, orig_local) == ("SRS0", "orig.example", "sender")
    assert len(hash_) == srs.HASH_LENGTH and len(stamp) == 2
    assert srs.reverse(local, [KEY], 21, DAY + 21) == "sender@orig.example"
    # a relay that folds the case of the address does not break it
    assert srs.reverse(local.lower(), [KEY], 21, DAY) == "sender@orig.example"
    parse_address(rewritten)  # our own MX takes it


def test_expired_and_forged_refused() -> None:
    local = srs.forward("sender@orig.example", "a.test", KEY, DAY).rpartition("@")[0]
    with pytest.raises(srs.SrsError, match="expired"):
        srs.reverse(local, [KEY], 21, DAY + 22)
    with pytest.raises(srs.SrsError, match="forged"):
        srs.reverse(local, [b"other key"], 21, DAY)
    forged = local.replace("=sender", "=victim")
    with pytest.raises(srs.SrsError, match="forged"):
        srs.reverse(forged, [KEY], 21, DAY)
    for bad in ("SRS0=x", "SRS0==AB=d=l", "SRS1=abc=d", "SRS0=AAAAAA=!!=d=l", "alice"):
        with pytest.raises(srs.SrsError):
            srs.reverse(bad, [KEY], 21, DAY)


def test_srs1_when_reforwarding() -> None:
    first = srs.forward("sender@orig.example", "hop1.test", b"one", DAY)
    second = srs.forward(first, "hop2.test", b"two", DAY)
    local, _, domain = second.rpartition("@")
    assert local.startswith("SRS1=") and "=hop1.test==" in local and domain == "hop2.test"
    # a third forwarder keeps hop1 named and hashes again
    third = srs.forward(second, "hop3.test", b"three", DAY)
    assert "=hop1.test==" in third and third.endswith("@hop3.test")
    back = srs.reverse(third.rpartition("@")[0], [b"three"], 21, DAY)
    assert back == first
    assert srs.reverse(back.rpartition("@")[0], [b"one"], 21, DAY) == "sender@orig.example"
    with pytest.raises(srs.SrsError):
        srs.reverse(local, [b"one"], 21, DAY)


def test_null_sender_stays_null() -> None:
    assert srs.forward("", "a.test", KEY, DAY) == ""


@given(st.from_regex(r"[a-z0-9][a-z0-9.+_-]{0,20}", fullmatch=True),
       st.from_regex(r"[a-z][a-z0-9-]{0,10}\.[a-z]{2,6}", fullmatch=True),
       st.integers(0, 100_000), st.integers(0, 21))
def test_any_sender_round_trips(local: str, domain: str, day: int, age: int) -> None:
    rewritten = srs.forward(f"{local}@{domain}", "fwd.test", KEY, day)
    assert srs.reverse(rewritten.rpartition("@")[0], [KEY], 21, day + age) \
        == f"{local}@{domain}"
