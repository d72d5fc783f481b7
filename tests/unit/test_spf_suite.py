"""The openspf RFC 7208 test suite (tests/unit/data/spf_rfc7208_suite.yml) against our SPF."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from mailstead.dns import DnsNotFound, DnsTemporaryError
from mailstead.mailsec.spf import check_sender

SUITE = Path(__file__).parent / "data" / "spf_rfc7208_suite.yml"


class SuiteDns:
    """The DNS a suite section describes: names not listed do not exist."""

    def __init__(self, zone: dict[str, dict[str, Any]]) -> None:
        self.zone = {name.lower(): records for name, records in zone.items()}

    def _records(self, name: str, kind: str) -> list[str]:
        entry = self.zone.get(name.lower().removesuffix("."))
        if entry is None:
            raise DnsNotFound(name)
        values = entry.get(kind)
        if values is None:
            if entry.get("timeout"):
                raise DnsTemporaryError(f"{name} {kind}: timeout")
            return []
        return [str(v) for v in values]

    async def txt(self, name: str) -> list[str]:
        return self._records(name, "TXT")

    async def a(self, name: str) -> list[str]:
        return self._records(name, "A")

    async def aaaa(self, name: str) -> list[str]:
        return self._records(name, "AAAA")

    async def mx(self, name: str) -> list[str]:
        return self._records(name, "MX")

    async def ptr(self, ip: str) -> list[str]:
        return self._records(ipaddress.ip_address(ip).reverse_pointer, "PTR")


def _cases() -> list[Any]:
    sections = yaml.safe_load(SUITE.read_text(encoding="utf-8"))
    cases = []
    for section in sections:
        for name, case in section["tests"].items():
            cases.append(pytest.param(section["zone"], case, id=name))
    return cases


@pytest.mark.parametrize(("zone", "case"), _cases())
async def test_rfc7208_suite(zone: dict[str, dict[str, Any]], case: list[Any]) -> None:
    helo, ip, mail_from, expected = case[:4]
    result, _ = await check_sender(SuiteDns(zone), str(ip), mail_from, helo)
    accepted = expected if isinstance(expected, list) else [expected]
    assert result.result in accepted, result
    if len(case) > 4:
        assert result.explanation.lower() == case[4].lower()
