"""Modified UTF-7 (RFC 3501 5.1.3): known vectors, round trips, strictness."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstead.proto import mutf7


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("INBOX", "INBOX"),
        ("A & B", "A &- B"),
        ("Résumé", "R&AOk-sum&AOk-"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        ("☺!", "&Jjo-!"),
        ("😀", "&2D3eAA-"),  # outside the BMP: a surrogate pair
    ],
)
def test_vectors(text: str, encoded: str) -> None:
    assert mutf7.encode(text) == encoded
    assert mutf7.decode(encoded) == text


@given(st.text())
def test_round_trip(text: str) -> None:
    encoded = mutf7.encode(text)
    assert all(0x20 <= ord(c) <= 0x7E for c in encoded)
    assert mutf7.decode(encoded) == text


@pytest.mark.parametrize(
    "bad",
    # The last two, found by bench/fuzz.py, are other spellings of "éé" and "é": a null shift
    # between two base64 runs (RFC 3501 5.1.3), and unused low bits set in the last character.
    ["a&b", "&AOk", "Ré", "&AEE-", "&A/k-", "tab\there", "&AOk&-", "&AOk-&AOk-", "&AOl-"],
)
def test_strict_decoding(bad: str) -> None:
    with pytest.raises(mutf7.MUTF7Error):
        mutf7.decode(bad)
