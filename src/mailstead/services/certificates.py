"""Real certificates over ACME (RFC 8555), shared by every node through the store.

The protocol is the ``acme`` package's (certbot's client library) with ``josepy``; this module
only decides when to order, answers HTTP-01, and hands the result to the listeners:

- One node orders at a time: the right to order is a per-interval row in the store that only the
  first node can write. The account key, the certificate chain and its key are kept in the store
  (``shared_secrets``), so every node serves the same certificate and none orders its own.
- HTTP-01 (RFC 8555 8.3): the key authorization is put in the store under the token, and every
  node's http listener answers ``/.well-known/acme-challenge/<token>`` from there, whichever
  node the ACME server's validation reaches.
- TLS-ALPN-01 (RFC 8737, services/acme_alpn.py) instead, by ``[acme] challenge`` or, on
  "auto", where no http listener answers port 80 but a TLS listener is bound to 443: the node
  that orders answers it on its own TLS listeners.
- Each node looks every ``[acme] check_interval`` seconds: a certificate in the store newer than
  the one it serves is written to ``[tls] cert``/``key`` and loaded into the SSL context every
  listener shares. Handshakes from then on get it; open connections are not dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mailstead.config import Config
from mailstead.obs import log_event
from mailstead.services import acme_alpn
from mailstead.services.acme_alpn import AlpnResponder
from mailstead.store.interfaces import MetadataStore

ACCOUNT_KEY = "acme.account_key"
CERT_CHAIN = "tls.cert_chain"
CERT_KEY = "tls.cert_key"
CHALLENGE_PREFIX = "acme.http-01."
ORDER_LEASE_PREFIX = "acme.order."
ORDER_SECONDS = 120  # how long one order may take
LEASE_SECONDS = 3600  # a failed order is tried again after this


def default_names(hostname: str, domains: list[str]) -> list[str]:
    names = [hostname.lower()]
    for domain in domains:
        names += [f"mta-sts.{domain}", f"autoconfig.{domain}"]
    return list(dict.fromkeys(names))


def days_left(chain_pem: str, now: datetime | None = None) -> float:
    cert = x509.load_pem_x509_certificate(chain_pem.encode("ascii"))
    end = cert.not_valid_after_utc
    return (end - (now or datetime.now(UTC))) / timedelta(days=1)


def cert_names(chain_pem: str) -> set[str]:
    cert = x509.load_pem_x509_certificate(chain_pem.encode("ascii"))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {name.lower() for name in san.get_values_for_type(x509.DNSName)}


def _order(directory: str, ca_bundle: str, email: str, account_pem: str, names: list[str],
           publish: Any, withdraw: Any, alpn: AlpnResponder | None = None) -> tuple[str, str]:
    """Runs one order to the end (blocking: the acme package is synchronous; called in a
    thread). ``publish(token, validation)`` / ``withdraw(token)`` put the HTTP-01 answers where
    every node serves them; with ``alpn`` the names are proved over TLS-ALPN-01 instead (RFC
    8737, on this node's TLS listener). Returns (full chain PEM, private key PEM)."""
    from acme import challenges, client, crypto_util, errors, messages
    from josepy.jwk import JWKRSA

    acme_alpn.register()  # before the authorizations are read

    account_key = serialization.load_pem_private_key(account_pem.encode("ascii"), None)
    assert isinstance(account_key, rsa.RSAPrivateKey)
    jwk = JWKRSA(key=account_key)
    net = client.ClientNetwork(jwk, user_agent="mailstead")
    if ca_bundle:  # requests takes a CA file where the acme package passes verify_ssl
        setattr(net, "verify_ssl", ca_bundle)  # noqa: B010
    acme = client.ClientV2(client.ClientV2.get_directory(directory, net), net=net)
    registration = messages.NewRegistration.from_data(
        email=email or None, terms_of_service_agreed=True)
    try:
        acme.new_account(registration)
    except errors.ConflictError as exc:  # the account exists: carry on with it
        net.account = acme.query_registration(
            messages.RegistrationResource(uri=exc.location, body=messages.Registration()))
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    order = acme.new_order(crypto_util.make_csr(key_pem, names))
    answered: list[str] = []
    proving: list[str] = []
    method = "http-01" if alpn is None else acme_alpn.TLS_ALPN_01
    try:
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue  # validated lately (RFC 8555 7.1.4): the server reuses it
            for challenge in authz.body.challenges:
                kind = getattr(challenge.chall, "typ", "")
                if alpn is not None and kind == acme_alpn.TLS_ALPN_01:
                    domain = authz.body.identifier.value
                    alpn.add(domain, challenge.chall.key_authorization(jwk))
                    proving.append(domain)
                    acme.answer_challenge(challenge, challenge.chall.response(jwk))
                    break
                if alpn is None and isinstance(challenge.chall, challenges.HTTP01):
                    response, validation = challenge.response_and_validation(jwk)
                    token = challenge.chall.encode("token")
                    publish(token, validation)
                    answered.append(token)
                    acme.answer_challenge(challenge, response)
                    break
            else:
                raise RuntimeError(f"{authz.body.identifier.value}: the ACME server offers no "
                                   f"{method} challenge")
        deadline = datetime.now() + timedelta(seconds=ORDER_SECONDS)
        done = acme.poll_and_finalize(order, deadline=deadline)
    finally:
        for token in answered:
            withdraw(token)
        for domain in proving:
            assert alpn is not None
            alpn.remove(domain)
    return done.fullchain_pem, key_pem.decode("ascii")


class CertificateService:
    def __init__(self, cfg: Config, store: MetadataStore, context: ssl.SSLContext | None
                 ) -> None:
        self.cfg = cfg
        self.store = store
        self.context = context
        self.serving = ""  # the chain this node has loaded
        # TLS-ALPN-01 (RFC 8737) where chosen (acme_alpn.challenge_method): this node's
        # listeners answer it through the shared context's SNI callback.
        self.alpn: AlpnResponder | None = None
        if context is not None and \
                acme_alpn.challenge_method(cfg, True) == acme_alpn.TLS_ALPN_01:
            self.alpn = AlpnResponder()
            self.alpn.install(context)

    async def names(self) -> list[str]:
        if self.cfg.acme.names:
            return [n.lower() for n in self.cfg.acme.names]
        domains = [d.name for d in await self.store.list_domains()]
        return default_names(self.cfg.hostname, domains)

    async def challenge(self, token: str) -> str | None:
        """The HTTP-01 answer for ``token``, if an order of ours is waiting for it."""
        if not token or len(token) > 200:
            return None
        return await self.store.get_secret(CHALLENGE_PREFIX + token)

    async def check(self) -> None:
        """One look: order when due (and when this node wins the right to), then serve the
        newest certificate of the store."""
        chain = await self.store.get_secret(CERT_CHAIN)
        names = await self.names()
        due = chain is None or days_left(chain) < self.cfg.acme.renew_before_days or \
            not set(names) <= cert_names(chain)
        if due and await self._may_order(chain or ""):
            await self._order(names)
        await self.serve_newest()

    async def _may_order(self, chain: str) -> bool:
        """Whether this node is the one to replace ``chain`` now: the first to claim it (per
        hour, so a failed order is tried again later) orders; the others wait for its result."""
        state = hashlib.sha256(chain.encode("ascii")).hexdigest()[:16]
        slot = int(time.time() // max(self.cfg.acme.check_interval, LEASE_SECONDS))
        mine = secrets.token_hex(8)
        return await self.store.put_secret(f"{ORDER_LEASE_PREFIX}{state}.{slot}", mine) == mine

    async def _order(self, names: list[str]) -> None:
        from mailstead.services.secrets import shared_secret

        loop = asyncio.get_running_loop()
        account = await shared_secret(self.store, ACCOUNT_KEY, _new_account_key)

        def publish(token: str, validation: str) -> None:
            asyncio.run_coroutine_threadsafe(
                self.store.put_secret(CHALLENGE_PREFIX + token, validation, replace=True),
                loop).result(30)

        def withdraw(token: str) -> None:
            asyncio.run_coroutine_threadsafe(
                self.store.delete_secret(CHALLENGE_PREFIX + token), loop).result(30)

        acme = self.cfg.acme
        ca_bundle = str(self.cfg.path(acme.ca_bundle)) if acme.ca_bundle else ""
        log_event("acme.ordering", names=",".join(names), directory=acme.directory,
                  challenge="http-01" if self.alpn is None else acme_alpn.TLS_ALPN_01)
        try:
            chain, key = await asyncio.to_thread(
                _order, acme.directory, ca_bundle, acme.email, account, names, publish,
                withdraw, self.alpn)
        except Exception as exc:  # the next check tries again; the old certificate serves on
            log_event("acme.failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}")
            return
        await self.store.put_secret(CERT_KEY, key, replace=True)
        await self.store.put_secret(CERT_CHAIN, chain, replace=True)
        log_event("acme.issued", names=",".join(names), days=f"{days_left(chain):.0f}")

    async def serve_newest(self) -> None:
        chain = await self.store.get_secret(CERT_CHAIN)
        key = await self.store.get_secret(CERT_KEY)
        if chain is None or key is None or chain == self.serving:
            return
        cert_path = self.cfg.path(self.cfg.tls.cert)
        key_path = self.cfg.path(self.cfg.tls.key)
        await asyncio.to_thread(_write_pair, cert_path, chain, key_path, key)
        if self.context is not None:
            # The same context object every listener holds: new handshakes get the new chain.
            await asyncio.to_thread(self.context.load_cert_chain, cert_path, key_path)
        self.serving = chain
        log_event("tls.certificate_loaded", names=",".join(sorted(cert_names(chain))),
                  days=f"{days_left(chain):.0f}")

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception as exc:  # the store is away for now: the next look catches up
                log_event("acme.check_failed", logging.WARNING, error=str(exc))
            await asyncio.sleep(self.cfg.acme.check_interval)


def _new_account_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def _write_pair(cert_path: Path, chain: str, key_path: Path, key: str) -> None:
    """Key first, then the chain, each replaced atomically (mode 0600 for the key)."""
    for path, text, mode in ((key_path, key, 0o600), (cert_path, chain, 0o644)):
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(path.suffix + ".new")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)


def certificate_service(services: object) -> CertificateService | None:
    """The process's CertificateService (None unless [acme] enabled)."""
    extra: dict[str, object] = getattr(services, "extra")  # noqa: B009
    found = extra.get("certificates")
    return found if isinstance(found, CertificateService) else None
