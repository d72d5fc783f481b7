"""The trust service: signs what our users send, judges what arrives on the MX.

``TrustService`` is created by wiring.py with the process's Resolver and reached by
DeliveryService (signing, before the blob is written, so every copy carries the same
signature and the queued blob stays as stored) and by the SMTP backend (verification at end
of data, before the message is acknowledged).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from mailstead.config import Config
from mailstead.dns import Resolver
from mailstead.mailsec import arc, authresults, dkim, dmarc
from mailstead.mailsec.dkim_keys import DkimKeyring
from mailstead.mailsec.spf import ResolverSpfDns, SpfResult, check_sender
from mailstead.obs import log_event

Action = Literal["accept", "junk", "reject"]


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    headers: bytes  # Authentication-Results and Received-SPF to prepend
    message: bytes  # the message with forged Authentication-Results removed
    reason: str = ""
    trusted_forward: bool = False  # a sealer we trust vouches for it (ARC, RFC 8617)


class TrustService:
    def __init__(self, cfg: Config, resolver: Resolver,
                 is_local_domain: Callable[[str], Awaitable[bool]],
                 keyring: DkimKeyring) -> None:
        self.cfg = cfg
        self.resolver = resolver
        self.is_local_domain = is_local_domain
        self.hostname = cfg.hostname
        self.keyring = keyring

    # -- outbound ----------------------------------------------------------------------------

    async def sign_outbound(self, message: bytes) -> bytes:
        """The message with DKIM signatures of its From domain when that domain is ours."""
        if not self.cfg.trust.sign_outbound:
            return message
        domain = dmarc.from_domain(message)
        if domain is None or not await self.is_local_domain(domain):
            return message
        key = await self.keyring.signing_key(domain)
        fields = await asyncio.to_thread(dkim.sign_message, key, domain, message)
        return fields + message

    async def sign_notice(self, message: bytes) -> bytes:
        """A notice we wrote (vacation reply, Sieve refusal, DSN, recall report) signed as
        our domain: its From domain when ours, else the nearest of our domains above it
        (MAILER-DAEMON@mx.example.com signed d=example.com, aligned under DMARC's relaxed
        mode, RFC 7489 3.1.1). Unsigned when no domain of ours fits."""
        if not self.cfg.trust.sign_outbound:
            return message
        from_domain = dmarc.from_domain(message) or self.hostname
        for domain in [*_and_parents(from_domain), *_and_parents(self.hostname)]:
            if await self.is_local_domain(domain):
                key = await self.keyring.signing_key(domain)
                fields = await asyncio.to_thread(dkim.sign_message, key, domain, message)
                return fields + message
        log_event("trust.notice_unsigned", logging.INFO, domain=from_domain)
        return message

    async def seal_forwarded(self, message: bytes, auth_results: bytes) -> bytes:
        """ARC set for a message we forward (RFC 8617), signed with our hostname's domain."""
        if not self.cfg.trust.arc_seal:
            return message
        domain = self.cfg.trust.arc_domain or self.cfg.hostname.partition(".")[2]
        if not domain:
            return message
        try:
            key = await self.keyring.signing_key(domain)
            return await asyncio.to_thread(arc.seal, key, domain, self.hostname,
                                           message, auth_results)
        except Exception as exc:  # an unsealed forward is still better than none
            log_event("trust.arc_seal_failed", logging.WARNING, error=str(exc))
            return message

    # -- inbound -----------------------------------------------------------------------------

    async def verify_inbound(self, client_ip: str, helo: str, mail_from: str,
                             message: bytes) -> Verdict:
        message = authresults.remove_forged(message, self.hostname)
        if not self.cfg.trust.verify_inbound or not client_ip:
            return Verdict("accept", b"", message)
        try:
            async with asyncio.timeout(self.cfg.trust.verify_timeout):
                return await self._verify(client_ip, helo, mail_from, message)
        except TimeoutError:
            log_event("trust.verify_timeout", logging.WARNING, client=client_ip)
            return Verdict("accept", b"", message, "verification timed out")

    async def _verify(self, client_ip: str, helo: str, mail_from: str,
                      message: bytes) -> Verdict:
        spf_task = check_sender(ResolverSpfDns(self.resolver), client_ip, mail_from, helo,
                                self.hostname)
        if dkim.may_be_signed(message) or arc.has_seal(message):
            (spf, identity), dkim_results, arc_result = await asyncio.gather(
                spf_task, dkim.verify_message(self.resolver, message),
                arc.verify(self.resolver, message))
        else:  # only SPF has lookups to make: no tasks to run side by side
            (spf, identity), dkim_results, arc_result = await spf_task, [], "none"
        spf_subject = mail_from if identity == "mailfrom" else helo
        dmarc_result = await dmarc.evaluate(self.resolver, message, spf.result,
                                            _spf_domain(spf), dkim_results)
        fields = authresults.authentication_results(
            self.hostname, spf, identity, spf_subject, dkim_results, dmarc_result, arc_result)
        if spf.result != "none":  # nothing to record beyond Authentication-Results
            fields += authresults.received_spf(spf, self.hostname, client_ip, mail_from, helo,
                                               identity)
        action: Action = "accept"
        reason = ""
        trusted = False
        if dmarc_result.result == "fail" and self.cfg.trust.enforce_dmarc:
            # RFC 7489 6.7 lets a receiver override the policy, RFC 8617 7.2 says how: a
            # valid ARC chain proves only who sealed it, so the override needs a sealer we
            # trust whose own checks found DMARC passing (anyone can seal a forgery).
            sealer, sealed_dmarc = arc.newest_set(message) if arc_result == "pass" else ("", "")
            if (self.cfg.trust.trust_arc and sealed_dmarc == "pass"
                    and sealer in {d.lower() for d in self.cfg.trust.arc_trusted_sealers}):
                reason = f"DMARC failed but the ARC chain passes, sealed by {sealer}"
                trusted = True
            elif dmarc_result.disposition == "reject":
                action, reason = "reject", f"DMARC policy of {dmarc_result.from_domain} " \
                                           "rejects this message"
            elif dmarc_result.disposition == "quarantine":
                action, reason = "junk", f"DMARC policy of {dmarc_result.from_domain}: quarantine"
        return Verdict(action, fields.encode("utf-8"), message, reason, trusted)


def _and_parents(name: str) -> list[str]:
    """``name`` and the domains above it, short of the top-level one."""
    labels = name.lower().rstrip(".").split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)]


def _spf_domain(result: SpfResult) -> str:
    return result.domain


def trust_service(services: object) -> TrustService | None:
    """The process's TrustService from ``services.extra`` (None when not started)."""
    extra: dict[str, object] = getattr(services, "extra")  # noqa: B009
    found = extra.get("trust")
    return found if isinstance(found, TrustService) else None
