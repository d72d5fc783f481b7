"""ACME against Debian's pebble on loopback: the first certificate is ordered over HTTP-01 and
served by every TLS listener; a renewal replaces it without dropping an open connection; the
certificate lives in the store, so another node serves it without ordering its own."""

from __future__ import annotations

import imaplib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from mailstead.config import Config
from mailstead.services.acme_alpn import TLS_ALPN_01, challenge_method
from mailstead.services.certificates import CERT_CHAIN, cert_names, certificate_service
from tests.conftest import PASSWORD, RunningServer, require_binary

NAMES = {"mail.example.test", "mta-sts.example.test", "autoconfig.example.test"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the ACME test server stopped"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


@dataclass
class Pebble:
    directory: str
    ca_file: Path
    http_port: int  # where pebble validates HTTP-01: our http listener
    tls_port: int  # where pebble validates TLS-ALPN-01: a TLS listener of ours


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[Pebble]:
    binary = require_binary("pebble")
    challtest = require_binary("pebble-challtestsrv")
    ca = trustme.CA()
    api_cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file, ca_file = (tmp_path / n for n in ("pebble.pem", "pebble.key", "ca.pem"))
    api_cert.cert_chain_pems[0].write_to_path(str(cert_file))
    api_cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    dns_port, api_port, http_port, tls_port = free_port(), free_port(), free_port(), free_port()
    config = tmp_path / "pebble.json"
    config.write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{api_port}",
        "managementListenAddress": f"127.0.0.1:{free_port()}",
        "certificate": str(cert_file), "privateKey": str(key_file),
        "httpPort": http_port, "tlsPort": tls_port,
        "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
    # Every name resolves to 127.0.0.1 through the mock DNS server; nothing else listens.
    dns = subprocess.Popen(
        [challtest, "-dns01", f"127.0.0.1:{dns_port}", "-http01", "", "-https01", "",
         "-tlsalpn01", "", "-management", f"127.0.0.1:{free_port()}",
         "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    server = subprocess.Popen(
        [binary, "-config", str(config), "-dnsserver", f"127.0.0.1:{dns_port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(api_port, server)
        yield Pebble(f"https://127.0.0.1:{api_port}/dir", ca_file, http_port, tls_port)
    finally:
        for proc in (server, dns):
            proc.terminate()
            proc.wait(10)


def served_certificate(port: int) -> x509.Certificate:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="mail.example.test") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def names_of(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName))


def wait_for_cert(port: int, ok: Callable[[x509.Certificate], bool]) -> x509.Certificate:
    deadline = time.monotonic() + 90
    while True:
        cert = served_certificate(port)
        if ok(cert):
            return cert
        assert time.monotonic() < deadline, f"still serving {cert.subject} {cert.serial_number}"
        time.sleep(0.5)


def acme_overrides(pebble: Pebble, renew_days: float = 30) -> dict[str, object]:
    return {
        "listeners": {"http": {"port": pebble.http_port}},
        "acme": {"enabled": True, "directory": pebble.directory, "ca_bundle": str(pebble.ca_file),
                 "check_interval": 0.5, "renew_before_days": renew_days},
    }


def test_certificate_is_issued_served_and_renewed_without_dropping_connections(
        make_server: Callable[..., RunningServer], pebble: Pebble) -> None:
    # Renew at every look: the lifetime pebble gives is shorter than this many days.
    server = make_server(**acme_overrides(pebble, renew_days=100_000))
    imaps = server.ports["imaps"]
    first = wait_for_cert(imaps, lambda c: names_of(c) == NAMES)
    assert "Pebble" in first.issuer.rfc4514_string()
    # The same certificate on every TLS listener (one shared context), and on disk.
    assert served_certificate(server.ports["submissions"]).serial_number == first.serial_number
    assert names_of(x509.load_pem_x509_certificate(server.cert_file.read_bytes())) == NAMES
    stored = server.run(server.services.store.get_secret(CERT_CHAIN))
    assert stored is not None and cert_names(stored) == NAMES

    # An IMAP session open across the renewal goes on; new handshakes get the new one.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with imaplib.IMAP4_SSL("127.0.0.1", imaps, ssl_context=context, timeout=30) as imap:
        imap.login("alice@example.test", PASSWORD)
        renewed = wait_for_cert(imaps, lambda c: c.serial_number != first.serial_number)
        assert names_of(renewed) == NAMES
        assert imap.noop()[0] == "OK"
        assert imap.select("INBOX")[0] == "OK"


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_another_node_serves_the_store_s_certificate(
        make_server: Callable[..., RunningServer], pebble: Pebble,
        store_overrides: dict[str, object], tmp_path: Path) -> None:
    first = make_server(**acme_overrides(pebble))
    issued = wait_for_cert(first.ports["imaps"], lambda c: names_of(c) == NAMES)
    service = certificate_service(first.services)
    assert service is not None
    # Within the renewal margin: nothing more is ordered however often it looks.
    for _ in range(3):
        first.run(service.check())
    assert served_certificate(first.ports["imaps"]).serial_number == issued.serial_number

    # A second node on the same store, with its own data directory (and, until it looks,
    # its own self-signed certificate): it serves the store's certificate, orders nothing.
    second_dir = tmp_path / "node-two"
    shutil.copytree(first.data_dir / "tls", second_dir / "tls")
    overrides = {**acme_overrides(pebble), "listeners": {"http": {"port": 0}}}
    second = make_server(data_dir=second_dir, **store_overrides, **overrides)
    served = wait_for_cert(second.ports["imaps"], lambda c: names_of(c) == NAMES)
    assert served.serial_number == issued.serial_number


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_certificate_over_tls_alpn_01_on_the_tls_listener(
        make_server: Callable[..., RunningServer], pebble: Pebble) -> None:
    """RFC 8737: no http listener answers (port 0), the names are proved on the implicit-TLS
    listener pebble validates at (standing in for 443)."""
    overrides = acme_overrides(pebble)
    overrides["listeners"] = {"http": {"port": 0}, "imaps": {"port": pebble.tls_port}}
    overrides["acme"] = {**overrides["acme"], "challenge": "tls-alpn-01"}  # type: ignore[dict-item]
    server = make_server(**overrides)
    issued = wait_for_cert(pebble.tls_port, lambda c: names_of(c) == NAMES)
    assert "Pebble" in issued.issuer.rfc4514_string()
    assert served_certificate(server.ports["submissions"]).serial_number == issued.serial_number
    service = certificate_service(server.services)
    assert service is not None and service.alpn is not None and not service.alpn.pending


def test_auto_challenge_is_tls_alpn_only_where_443_is_bound_and_80_is_not() -> None:
    cfg = Config()
    assert challenge_method(cfg, True) == "http-01"  # neither bound: HTTP-01 as before
    cfg.listeners["imaps"].port = 443
    assert challenge_method(cfg, True) == TLS_ALPN_01
    assert challenge_method(cfg, False) == "http-01"  # no certificate to hand out at all
    cfg.listeners["http"].port = 80
    assert challenge_method(cfg, True) == "http-01"  # any node answers HTTP-01
    cfg.acme.challenge = "tls-alpn-01"
    assert challenge_method(cfg, True) == TLS_ALPN_01
