"""DKIM: the RFC 8463 Appendix A vector verifies; our own signatures verify and break when the
message is altered; keys are stored 0600 and rotated under new selectors."""

from __future__ import annotations

import stat
from pathlib import Path

from mailstead.core.models import DkimKeySet
from mailstead.dns import DnsNotFound, MxRecord
from mailstead.mailsec import dkim as ours

RFC8463_MESSAGE = "\r\n".join([
    "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;",
    " d=football.example.com; i=@football.example.com;",
    " q=dns/txt; s=brisbane; t=1528637909; h=from : to :",
    " subject : date : message-id : from : subject : date;",
    " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;",
    " b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus",
    " Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==",
    "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;",
    " d=football.example.com; i=@football.example.com;",
    " q=dns/txt; s=test; t=1528637909; h=from : to : subject :",
    " date : message-id : from : subject : date;",
    " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;",
    " b=F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3",
    " DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz",
    " dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=",
    "From: Joe SixPack <joe@football.example.com>",
    "To: Suzie Q <suzie@shopping.example.net>",
    "Subject: Is dinner ready?",
    "Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)",
    "Message-ID: <20030712040037.46341.5F8J@football.example.com>",
    "",
    "Hi.",
    "",
    "We lost the game.  Are you hungry yet?",
    "",
    "Joe.",
    "",
]).encode()

RFC8463_KEYS = {
    "brisbane._domainkey.football.example.com":
        "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
    "test._domainkey.football.example.com":
        "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWRiGs5V6NpP3id"
        "Y6Wk08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+"
        "PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB",
}


class TxtOnly:
    """A resolver that knows some TXT records (DKIM needs nothing else)."""

    def __init__(self, records: dict[str, str]) -> None:
        self.records = records

    async def mx(self, domain: str) -> list[MxRecord]:
        return []

    async def addresses(self, host: str) -> list[str]:
        return []

    async def txt(self, name: str) -> list[str]:
        if name not in self.records:
            raise DnsNotFound(name)
        return [self.records[name]]


async def test_rfc8463_vector_verifies_both_algorithms() -> None:
    results = await ours.verify_message(TxtOnly(RFC8463_KEYS), RFC8463_MESSAGE)
    assert [(r.result, r.algorithm, r.selector) for r in results] == [
        ("pass", "ed25519-sha256", "brisbane"), ("pass", "rsa-sha256", "test")]


async def test_rfc8463_vector_altered_body_fails() -> None:
    altered = RFC8463_MESSAGE.replace(b"hungry", b"thirsty")
    results = await ours.verify_message(TxtOnly(RFC8463_KEYS), altered)
    assert [r.result for r in results] == ["fail", "fail"]


async def test_missing_key_is_permerror() -> None:
    results = await ours.verify_message(TxtOnly({}), RFC8463_MESSAGE)
    assert [r.result for r in results] == ["permerror", "permerror"]


MESSAGE = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: hi\r\n"
           b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\n"
           b"Hello.\r\n")


async def test_own_signatures_verify_and_oversign() -> None:
    key = ours.generate_keys()
    fields = ours.sign_message(key, "example.org", MESSAGE)
    signed = fields + MESSAGE
    keyset = DkimKeySet("example.org", key.selector, (key,))
    resolver = TxtOnly(dict(ours.published_records(keyset)))
    results = await ours.verify_message(resolver, signed)
    assert [(r.result, r.algorithm) for r in results] == [
        ("pass", "rsa-sha256"), ("pass", "ed25519-sha256")]
    tags = ours.signature_tags(ours.header_fields(signed, "DKIM-Signature")[0])
    signed_headers = tags["h"].lower().split(":")
    assert signed_headers.count("from") == 2 and signed_headers.count("subject") == 2
    assert tags["c"] == "relaxed/relaxed"
    # A second From added in transit breaks the signature (the oversigning).
    added = fields + b"From: mallory@evil.test\r\n" + MESSAGE
    assert {r.result for r in await ours.verify_message(resolver, added)} == {"fail"}
    altered = signed.replace(b"Hello.", b"Hello!")
    assert {r.result for r in await ours.verify_message(resolver, altered)} == {"fail"}


def test_key_files_of_earlier_versions_read_back(tmp_path: Path) -> None:
    first, second = ours.generate_keys(), ours.generate_keys()
    ours.write_key_files(tmp_path, "example.org", second.selector, [first, second])
    for algorithm in ("rsa", "ed25519"):
        mode = (tmp_path / "example.org" / f"{first.selector}.{algorithm}.pem").stat().st_mode
        assert stat.S_IMODE(mode) == 0o600
    assert ours.read_key_files(tmp_path, "example.org") == (second.selector, [first, second])
    assert ours.read_key_files(tmp_path, "example.net") is None
