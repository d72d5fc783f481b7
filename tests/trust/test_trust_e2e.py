"""Trust end to end over the DNS world: alpha-t signs, beta-t verifies, gamma-t gets forwards.

Each node is a real mailstead on its own 127.0.0.x; DNS answers come from the loopback
authoritative servers through unbound. Results are read the way a user would: the
Authentication-Results field of the message fetched over IMAP.
"""

from __future__ import annotations

import email.message
import os
import shutil
import smtplib
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from mailstead.mailsec import arc, dkim
from tests import dnsworld
from tests.delivery.conftest import Node
from tests.delivery.helpers import fetch_inbox, inbox_with, make_message, submit, wait_for
from tests.trust.conftest import dkim_records, publish, signing_key

ALPHA, BETA, GAMMA = "alpha-t.test", "beta-t.test", "gamma-t.test"


def _publish_domain(world: dnsworld.DnsWorld, node: Node, dmarc: str) -> None:
    domain = node.domain
    publish(world, domain, "MX", f"10 mx.{domain}.")
    publish(world, f"mx.{domain}", "A", node.ip)
    publish(world, domain, "TXT", f"v=spf1 ip4:{node.ip} -all")
    publish(world, f"_dmarc.{domain}", "TXT", dmarc)
    for name, value in dkim_records(node, domain):
        publish(world, name, "TXT", value)


@pytest.fixture
def nodes(make_node: Callable[..., Node], dns_world: dnsworld.DnsWorld
          ) -> tuple[Node, Node, Node]:
    alpha = make_node("127.0.0.2", f"mx.{ALPHA}", ALPHA, users=("alice",))
    beta = make_node("127.0.0.3", f"mx.{BETA}", BETA, users=("bob",))
    gamma = make_node("127.0.0.4", f"mx.{GAMMA}", GAMMA, users=("carol",),
                      trust={"arc_trusted_sealers": [BETA]})
    _publish_domain(dns_world, alpha, "v=DMARC1; p=reject; sp=quarantine")
    _publish_domain(dns_world, beta, "v=DMARC1; p=reject")
    _publish_domain(dns_world, gamma, "v=DMARC1; p=none")
    beta.server.add_alias(f"fwd@{BETA}", f"carol@{GAMMA}")
    return alpha, beta, gamma


def _results(message: email.message.EmailMessage, host: str) -> dict[str, list[str]]:
    """method -> results, from our Authentication-Results field."""
    fields = [str(v) for v in message.get_all("Authentication-Results", [])]
    ours = [f for f in fields if f.split(";", 1)[0].strip() == host]
    assert len(ours) == 1, fields
    found: dict[str, list[str]] = {}
    for part in ours[0].split(";")[1:]:
        method, _, rest = part.strip().partition("=")
        found.setdefault(method, []).append(rest.split()[0])
    return found


def _send_to_mx(node: Node, mx_port: int, sender: str, recipient: str, message: bytes,
                source: str = "127.0.0.1") -> tuple[int, bytes]:
    with smtplib.SMTP(node.ip, mx_port, timeout=30,
                      source_address=(source, 0)) as smtp:
        smtp.ehlo(f"client.{source}")
        smtp.mail(sender)
        smtp.rcpt(recipient)
        return smtp.data(message)


def test_alpha_to_beta_passes_everything_and_forward_to_gamma_keeps_passing(
        nodes: tuple[Node, Node, Node], dns_world: dnsworld.DnsWorld) -> None:
    alpha, beta, gamma = nodes
    submit(alpha, f"alice@{ALPHA}", [f"bob@{BETA}", f"fwd@{BETA}"],
           make_message(f"alice@{ALPHA}", [f"bob@{BETA}", f"fwd@{BETA}"], "signed"))
    [arrived] = inbox_with(beta, f"bob@{BETA}")
    results = _results(arrived, beta.hostname)
    assert results["spf"] == ["pass"]
    assert results["dkim"] == ["pass", "pass"]  # RSA and Ed25519
    assert results["dmarc"] == ["pass"]
    assert str(arrived["Received-SPF"]).startswith("pass")
    # The alias forwarded it with an SRS sender in beta's own domain (the alias's): SPF passes
    # for beta at gamma, and DMARC passes through alpha's DKIM signature.
    [forwarded] = inbox_with(gamma, f"carol@{GAMMA}")
    at_gamma = _results(forwarded, gamma.hostname)
    assert str(forwarded["Return-Path"]).startswith("<SRS0=")
    assert str(forwarded["Return-Path"]).endswith(f"@{BETA}>")
    assert at_gamma["spf"] == ["pass"]
    assert at_gamma["dmarc"] == ["pass"]
    assert "pass" in at_gamma["dkim"]


def test_signature_verifies_with_an_independent_verifier(
        nodes: tuple[Node, Node, Node], dns_world: dnsworld.DnsWorld, tmp_path: Path) -> None:
    """Perl's Mail::DKIM (Debian libmail-dkim-perl), asking the DNS world for the keys."""
    if shutil.which("perl") is None or subprocess.run(
            ["perl", "-MMail::DKIM::Verifier", "-MNet::DNS", "-e1"]).returncode != 0:
        message = "libmail-dkim-perl is not installed (apt-get install it; .ci/run does)"
        if os.environ.get("MAILSTEAD_REQUIRE_CLIENTS"):
            pytest.fail(message)
        pytest.skip(message)
    alpha, beta, _ = nodes
    submit(alpha, f"alice@{ALPHA}", [f"bob@{BETA}"],
           make_message(f"alice@{ALPHA}", [f"bob@{BETA}"], "independent"))
    [arrived] = inbox_with(beta, f"bob@{BETA}")
    raw = arrived.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    script = (
        "use Mail::DKIM::Verifier; use Mail::DKIM::DNS; use Net::DNS;"
        f"Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(nameservers=>['{dns_world.resolver}'],"
        "recurse=>1));"
        "my $v = Mail::DKIM::Verifier->new; local $/; $v->PRINT(<STDIN>); $v->CLOSE;"
        "print join(' ', map { $_->algorithm . '=' . $_->result . ':'"
        " . ($_->result_detail =~ s{ }{_}gr) } $v->signatures), qq(\\n);"
    )
    out = subprocess.run(["perl", "-e", script], input=raw, capture_output=True, check=True)
    verdicts = dict(v.split("=", 1) for v in out.stdout.decode().split())
    assert verdicts["rsa-sha256"] == "pass:pass", out
    # Debian 12's Mail::DKIM predates Ed25519 (RFC 8463); a newer one must pass it too.
    assert verdicts["ed25519-sha256"] in (
        "pass:pass", "invalid:invalid_(unsupported_algorithm_ed25519-sha256)"), out


def test_forged_from_is_rejected_under_reject_and_junked_under_quarantine(
        nodes: tuple[Node, Node, Node], mx_port: int) -> None:
    _, beta, _ = nodes
    forged = make_message(f"ceo@{ALPHA}", [f"bob@{BETA}"], "wire the money")
    code, reply = _send_to_mx(beta, mx_port, "mallory@elsewhere.test", f"bob@{BETA}", forged)
    assert (code, reply[:5]) == (550, b"5.7.1")
    # A subdomain of alpha: its policy is sp=quarantine, so the message goes to Junk.
    junk = make_message(f"billing@pay.{ALPHA}", [f"bob@{BETA}"], "invoice")
    code, _ = _send_to_mx(beta, mx_port, "mallory@elsewhere.test", f"bob@{BETA}", junk)
    assert code == 250
    box = wait_for(lambda: _mailbox(beta, f"bob@{BETA}", "Junk"), "a message in Junk")
    assert [m["Subject"] for m in box] == ["invoice"]
    assert fetch_inbox(beta, f"bob@{BETA}") == []


def _mailbox(node: Node, user: str, name: str) -> list[email.message.EmailMessage]:
    import imaplib

    from tests.conftest import PASSWORD
    from tests.delivery.helpers import client_context

    with imaplib.IMAP4(node.ip, node.port("imap"), timeout=30) as imap:
        imap.starttls(client_context())
        imap.login(user, PASSWORD)
        imap.select(name, readonly=True)
        _, data = imap.uid("SEARCH", "ALL")
        out = []
        for uid in (data[0].split() if data and data[0] else []):
            _, parts = imap.uid("FETCH", uid, "(BODY.PEEK[])")
            raw = next(p[1] for p in parts if isinstance(p, tuple))
            out.append(email.message_from_bytes(raw, policy=email.policy.default))
        return out


def test_message_altered_in_transit_fails_dkim(
        nodes: tuple[Node, Node, Node], mx_port: int) -> None:
    alpha, beta, _ = nodes
    original = make_message(f"alice@{ALPHA}", [f"bob@{BETA}"], "amount", body="Pay 10 EUR.\r\n")
    signed = dkim.sign_message(signing_key(alpha, ALPHA), ALPHA, original) + original
    altered = signed.replace(b"Pay 10 EUR.", b"Pay 9999 EUR.")
    # Sent from alpha's address, so SPF (and through it DMARC) still passes.
    code, _ = _send_to_mx(beta, mx_port, f"alice@{ALPHA}", f"bob@{BETA}", altered,
                          source=alpha.ip)
    assert code == 250
    [arrived] = inbox_with(beta, f"bob@{BETA}")
    results = _results(arrived, beta.hostname)
    assert results["dkim"] == ["fail", "fail"]
    assert results["spf"] == ["pass"]


def test_incoming_authentication_results_claiming_us_are_removed(
        nodes: tuple[Node, Node, Node], mx_port: int) -> None:
    _, beta, _ = nodes
    spoof = make_message(f"someone@{GAMMA}", [f"bob@{BETA}"], "trust me",
                         extra=f"Authentication-Results: {beta.hostname}; dkim=pass\r\n")
    code, _ = _send_to_mx(beta, mx_port, f"someone@{GAMMA}", f"bob@{BETA}", spoof)
    assert code == 250
    # p=none at gamma: delivered, marked; failing SPF and DMARC, it is filed as spam.
    [arrived] = inbox_with(beta, f"bob@{BETA}", mailbox="Junk")
    results = _results(arrived, beta.hostname)  # exactly one: ours
    assert results["dmarc"] == ["fail"]
    assert arrived["X-Spam-Flag"] == "YES"
    assert "DMARC_FAIL" in arrived["X-Spam-Status"] and "SPF_FAIL" in arrived["X-Spam-Status"]


def test_dns_check_names_missing_records(
        make_node: Callable[..., Node], dns_world: dnsworld.DnsWorld) -> None:
    from click.testing import CliRunner

    from mailstead.cli.main import cli

    with socket.socket() as s:  # a fixed port, so the config names it for the SRV record
        s.bind(("127.0.0.5", 0))
        imaps_port = int(s.getsockname()[1])
    delta = make_node("127.0.0.5", "mx.delta-t.test", "delta-t.test", users=("dave",),
                      listeners={"imaps": {"enabled": True, "port": imaps_port}})
    runner = CliRunner()
    zone = runner.invoke(cli, ["dns", "delta-t.test", "--data", str(delta.data_dir)])
    assert zone.exit_code == 0, zone.output
    publish(dns_world, "delta-t.test", "MX", "10 mx.delta-t.test.")
    publish(dns_world, "delta-t.test", "TXT", "v=spf1 mx -all")
    publish(dns_world, "mx.delta-t.test", "A", delta.ip)
    publish(dns_world, "autoconfig.delta-t.test", "CNAME", "mx.delta-t.test.")
    publish(dns_world, "mta-sts.delta-t.test", "A", delta.ip)  # A records do as well
    publish(dns_world, "_imaps._tcp.delta-t.test", "SRV", f"0 1 {imaps_port} mx.delta-t.test.")
    for name, value in dkim_records(delta, "delta-t.test"):
        assert name in zone.output
        publish(dns_world, name, "TXT", value)
    checked = runner.invoke(cli, ["dns", "--check", "delta-t.test", "--data", str(delta.data_dir)])
    assert checked.exit_code != 0
    lines = dict(line.split(": ", 1) for line in checked.output.splitlines() if ": " in line)
    assert lines["MX    delta-t.test"] == "ok"
    assert lines["TXT   delta-t.test"] == "ok"
    assert all(v == "ok" for k, v in lines.items() if "_domainkey" in k)
    assert lines["TXT   _dmarc.delta-t.test"] == "missing"
    assert lines["CNAME autoconfig.delta-t.test"] == "ok"
    assert lines["CNAME mta-sts.delta-t.test"] == "ok"
    assert lines["SRV   _imaps._tcp.delta-t.test"] == "ok"


def _without_fields(raw: bytes, names: tuple[str, ...]) -> bytes:
    """``raw`` without the header fields called ``names`` (and their continuation lines)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    kept: list[bytes] = []
    dropping = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line.split(b":", 1)[0].strip().lower().decode() in names
        if not dropping:
            kept.append(line)
    return b"\r\n".join(kept) + b"\r\n\r\n" + body


def test_forward_changed_by_beta_passes_dmarc_at_gamma_only_through_arc(
        nodes: tuple[Node, Node, Node], mx_port: int) -> None:
    """Beta adds a footer to what its alias forwards, the way a mailing list does: alpha's
    DKIM signature breaks, SPF names beta, so DMARC fails at gamma under alpha's p=reject;
    beta's ARC set (sealed after the footer) carries beta's verdict and gamma keeps it."""
    alpha, beta, gamma = nodes
    trust = beta.server.services.extra["trust"]
    seal = trust.seal_forwarded

    async def seal_with_footer(message: bytes, auth_results: bytes) -> bytes:
        return await seal(message + b"-- \r\nSent through beta's forwarder\r\n", auth_results)

    trust.seal_forwarded = seal_with_footer
    submit(alpha, f"alice@{ALPHA}", [f"fwd@{BETA}"],
           make_message(f"alice@{ALPHA}", [f"fwd@{BETA}"], "footered"))
    [forwarded] = inbox_with(gamma, f"carol@{GAMMA}")
    assert forwarded.get_content().replace("\r\n", "\n").endswith(
        "Sent through beta's forwarder\n")
    at_gamma = _results(forwarded, gamma.hostname)
    assert at_gamma["dkim"] == ["fail", "fail"]
    assert at_gamma["spf"] == ["pass"]  # for beta's SRS address: not aligned with alpha
    assert at_gamma["dmarc"] == ["fail"]
    assert at_gamma["arc"] == ["pass"]
    # Beta's own verdict travels in its ARC-Authentication-Results (i=1).
    [aar] = [str(v) for v in forwarded.get_all("ARC-Authentication-Results", [])]
    assert aar.startswith(f"i=1; {beta.hostname}")
    assert "dkim=pass" in aar and "dmarc=pass" in aar
    assert [str(v).split(";")[0] for v in forwarded.get_all("ARC-Seal", [])] == ["i=1"]
    # The same bytes without the ARC set, sent again from beta's address: refused.
    raw = forwarded.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    raw = _without_fields(raw, ("authentication-results", "received-spf", "received"))
    code, reply = _send_to_mx(gamma, mx_port, f"fwd@{BETA}", f"carol@{GAMMA}", raw,
                              source=beta.ip)
    assert code == 250, reply
    stripped = _without_fields(raw, ("arc-seal", "arc-message-signature",
                                     "arc-authentication-results"))
    code, reply = _send_to_mx(gamma, mx_port, f"fwd@{BETA}", f"carol@{GAMMA}", stripped,
                              source=beta.ip)
    assert (code, reply[:5]) == (550, b"5.7.1"), reply


def test_an_arc_seal_of_a_sealer_not_trusted_does_not_overrule_dmarc(
        nodes: tuple[Node, Node, Node], mx_port: int) -> None:
    """A forger seals its forgery with keys of its own (gamma's here, which beta can verify):
    the chain is valid, yet beta does not trust gamma as a sealer, so p=reject stands."""
    _, beta, gamma = nodes
    forged = make_message(f"ceo@{ALPHA}", [f"bob@{BETA}"], "sealed forgery")
    claims = f"Authentication-Results: {gamma.hostname}; dkim=pass; dmarc=pass\r\n".encode()
    sealed = arc.seal(signing_key(gamma, GAMMA), GAMMA, gamma.hostname, forged, claims)
    assert b"ARC-Seal:" in sealed
    code, reply = _send_to_mx(beta, mx_port, "mallory@elsewhere.test", f"bob@{BETA}", sealed)
    assert (code, reply[:5]) == (550, b"5.7.1"), reply
