"""The TLS-ALPN-01 challenge of ACME (RFC 8737), answered on the TLS listener bound to 443.

The ``acme`` package (5.x) no longer carries this challenge type, so its two JSON objects are
declared here on the package's own base classes; the rest (the answer, the polling) is the
package's. While an order waits for a name's validation, ``AlpnResponder`` holds a
self-signed certificate for it, and the SNI callback of the SSL context every listener shares
hands that certificate (with the ``acme-tls/1`` protocol) to handshakes for that name. Once
validated, the name is served the real certificate again. A client that asks for the name in
those few seconds gets the challenge certificate and fails its handshake, as with any
TLS-ALPN-01 responder (RFC 8737 5 asks the validation to be quick for this reason).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
import tempfile
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailstead.config import Config

TLS_ALPN_01 = "tls-alpn-01"
ACME_TLS_PROTOCOL = "acme-tls/1"  # RFC 8737 6.2: the ALPN protocol of the validation
ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # RFC 8737 6.1: id-pe-acmeIdentifier


def challenge_method(cfg: Config, have_tls: bool) -> str:
    """The challenge to answer: ``[acme] challenge``, or on "auto" HTTP-01 where an http
    listener answers port 80 (any node can answer it, through the store), else TLS-ALPN-01
    where a TLS listener is bound to 443, else HTTP-01."""
    chosen = cfg.acme.challenge
    if chosen != "auto":
        return chosen
    listeners = [lc for lc in cfg.listeners.values() if lc.enabled]
    if any(lc.protocol == "http" and lc.tls == "none" and lc.port == 80 for lc in listeners):
        return "http-01"
    if have_tls and any(lc.tls == "implicit" and lc.port == 443 for lc in listeners):
        return TLS_ALPN_01
    return "http-01"


def _challenge_types() -> type[Any]:
    """The TLS-ALPN-01 challenge class, declared once on the acme package's registry."""
    from acme import challenges

    known = challenges.Challenge.TYPES.get(TLS_ALPN_01)
    if known is not None and known is not challenges.UnrecognizedChallenge:
        return known  # type: ignore[no-any-return]

    @challenges.ChallengeResponse.register
    class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):  # type: ignore[misc]
        typ = TLS_ALPN_01

    @challenges.Challenge.register
    class TLSALPN01(challenges.KeyAuthorizationChallenge):  # type: ignore[misc]
        response_cls = TLSALPN01Response
        typ = TLS_ALPN_01

        def validation(self, account_key: Any, **unused: Any) -> str:
            return str(self.key_authorization(account_key))

    return TLSALPN01


def register() -> None:
    """Makes the acme package parse "tls-alpn-01" challenges (before an order is read)."""
    _challenge_types()


def challenge_certificate(domain: str, key_authorization: str) -> tuple[bytes, bytes]:
    """The self-signed certificate of RFC 8737 3: the name as its only dNSName, and the
    critical acmeIdentifier extension holding the SHA-256 of the key authorization as a DER
    OCTET STRING. Returns (certificate PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ACME TLS-ALPN-01 challenge")])
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
            .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER,
                                                      b"\x04\x20" + digest), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8737 4: TLS 1.2 or later
    context.set_alpn_protocols([ACME_TLS_PROTOCOL])
    # ssl loads a certificate only from a file: a private one, removed at once.
    fd, path = tempfile.mkstemp(prefix="acme-alpn-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_pem + cert_pem)
        context.load_cert_chain(path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return context


class AlpnResponder:
    """Challenge certificates by name, handed out by the shared context's SNI callback."""

    def __init__(self) -> None:
        self.pending: dict[str, ssl.SSLContext] = {}

    def install(self, context: ssl.SSLContext) -> None:
        context.sni_callback = self._sni

    def add(self, domain: str, key_authorization: str) -> None:
        self.pending[domain.lower()] = _context(*challenge_certificate(domain, key_authorization))

    def remove(self, domain: str) -> None:
        self.pending.pop(domain.lower(), None)

    def _sni(self, connection: Any, server_name: str | None, _context: ssl.SSLContext
             ) -> None:
        if server_name and self.pending:
            found = self.pending.get(server_name.lower())
            if found is not None:
                connection.context = found  # RFC 8737 3: the challenge certificate
