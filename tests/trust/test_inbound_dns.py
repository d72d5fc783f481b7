"""Inbound checks work out of the box: with outbound mail off (the default) and no resolvers
configured, SPF/DKIM/DMARC still look names up through the system's resolvers (here a
resolv.conf naming the DNS world's unbound), so a fresh install enforces DMARC. With lookups
turned off, ``dns --check`` says so in one line instead of listing every record as missing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from mailstead.cli.main import cli
from mailstead.config import Config
from tests import dnsworld
from tests.delivery.conftest import Node
from tests.delivery.helpers import make_message
from tests.trust.test_trust_e2e import _publish_domain, _send_to_mx

ALPHA, EPSILON = "alpha-i.test", "epsilon-i.test"


def test_defaults_look_up_through_the_system() -> None:
    cfg = Config()
    assert cfg.delivery.internet is False and cfg.delivery.resolvers == []
    assert cfg.trust.dns == "system" and cfg.trust.verify_inbound and cfg.trust.enforce_dmarc


def test_fresh_install_enforces_dmarc_with_outbound_off(
        make_node: Callable[..., Node], dns_world: dnsworld.DnsWorld, mx_port: int,
        tmp_path: Path) -> None:
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text(f"nameserver {dns_world.resolver}\n")
    alpha = make_node("127.0.0.2", f"mx.{ALPHA}", ALPHA, users=("alice",))
    _publish_domain(dns_world, alpha, "v=DMARC1; p=reject")
    # As installed: no resolvers configured, outbound mail off, lookups by the system's.
    epsilon = make_node("127.0.0.6", f"mx.{EPSILON}", EPSILON, users=("erin",),
                        delivery={"resolvers": [], "internet": False},
                        trust={"dns": "system", "resolv_conf": str(resolv_conf)})
    forged = make_message(f"ceo@{ALPHA}", [f"erin@{EPSILON}"], "wire the money")
    code, reply = _send_to_mx(epsilon, mx_port, "mallory@elsewhere.test", f"erin@{EPSILON}",
                              forged)
    assert (code, reply[:5]) == (550, b"5.7.1"), reply

    checked = CliRunner().invoke(cli, ["dns", "--check", EPSILON,
                                       "--data", str(epsilon.data_dir)])
    assert "MX    epsilon-i.test: missing" in checked.output  # looked up, not published
    assert "lookups are off" not in checked.output

    # The same install with lookups turned off cannot judge the forgery: it is let in.
    zeta = make_node("127.0.0.7", "mx.zeta-i.test", "zeta-i.test", users=("zed",),
                     delivery={"resolvers": [], "internet": False}, trust={"dns": "off"})
    code, _ = _send_to_mx(zeta, mx_port, "mallory@elsewhere.test", "zed@zeta-i.test",
                          make_message(f"ceo@{ALPHA}", ["zed@zeta-i.test"], "wire it"))
    assert code == 250


def test_dns_check_with_lookups_off_says_so(mail_server: object) -> None:
    from tests.conftest import RunningServer

    assert isinstance(mail_server, RunningServer)
    result = CliRunner().invoke(cli, ["dns", "--check", "example.test",
                                      "--data", str(mail_server.data_dir)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        'mailstead: nothing checked: inbound DNS lookups are off ([trust] dns = "off" and no '
        '[delivery] resolvers)']
