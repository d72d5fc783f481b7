"""A new install sends nothing off this machine: with ``[delivery] internet`` off (the default)
no DNS query goes to the system's resolvers and no SMTP connection to a non-loopback address."""

from __future__ import annotations

import asyncio

import pytest

from mailstead.config import Config, DeliveryConfig
from mailstead.core.errors import ConfigError
from mailstead.dns import DnsTemporaryError, OfflineResolver, make_resolver


def test_default_is_off_and_resolves_nothing() -> None:
    assert Config().delivery.internet is False
    resolver = make_resolver(DeliveryConfig())
    assert isinstance(resolver, OfflineResolver)
    with pytest.raises(DnsTemporaryError, match="internet = false"):
        asyncio.run(resolver.mx("example.org"))


def test_only_loopback_resolvers_while_off() -> None:
    make_resolver(DeliveryConfig(resolvers=["127.0.0.53", "[::1]:5353"]))
    with pytest.raises(ConfigError, match="is not on loopback"):
        make_resolver(DeliveryConfig(resolvers=["192.0.2.1"]))
    # Turned on, the operator's choice stands (nothing is queried when building it).
    make_resolver(DeliveryConfig(internet=True, resolvers=["192.0.2.1"]))
