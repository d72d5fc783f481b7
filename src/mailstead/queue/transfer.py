"""Moving queued messages to one destination: which server, which TLS, what each reply means.

``Transfer.deliver`` takes every job for one domain (or for the smart host), finds the hosts to
try (``routing``), and sends the jobs one after another over one connection (reused for several
messages), moving on to the next address or MX host when a connection fails. Each recipient ends
with an ``Outcome``: delivered, temporary (retry later) or permanent (bounce).

TLS: STARTTLS whenever offered (opportunistic, RFC 3207; a failed handshake falls back to a new
plain-text connection unless the policy requires TLS). A message with REQUIRETLS (RFC 8689
4.2.1) goes only over TLS with a certificate valid for the MX host name, to a server that
advertises REQUIRETLS; when no host qualifies it bounces with 5.7.30. A domain whose MTA-STS
policy (RFC 8461) says ``enforce`` gets mail only through the MX hosts the policy names, over
TLS with a verified certificate; when none qualifies the mail waits (4.7.10) and is retried.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from mailstead.config import Config
from mailstead.dns import DnsNotFound, DnsTemporaryError, Resolver, is_loopback
from mailstead.mailsec.mta_sts import MtaStsPolicies, Policy
from mailstead.obs import log_event
from mailstead.queue.client import (
    OutgoingEnvelope,
    OutgoingRecipient,
    Reply,
    SmtpAuthError,
    SmtpClient,
    SmtpConnectionError,
)
from mailstead.queue.routing import RoutingFailure, mx_hosts
from mailstead.store.interfaces import QueueEntry, QueueRecipient

OutcomeKind = Literal["delivered", "temporary", "permanent"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one recipient in one attempt."""

    kind: OutcomeKind
    status: str  # enhanced status code (RFC 3463), e.g. "5.1.1"
    text: str  # the server's reply, or what went wrong
    remote: str = ""  # "mx.example.org[192.0.2.1]" when a server was reached
    tls: str = ""  # the TLS version and cipher used, "" for plain text
    smtp_reply: str = ""  # the SMTP reply as received (DSN Diagnostic-Code)
    relayed: bool = False  # accepted by a server without DSN although NOTIFY had SUCCESS

    @property
    def remote_host(self) -> str:
        return self.remote.partition("[")[0]

    def summary(self) -> str:
        """The text kept as the recipient's ``last_reply`` (shown by ``mailstead queue show``)."""
        if not self.remote:
            return self.text
        return f"{self.text} (via {self.remote}, {self.tls or 'no TLS'})"


@dataclass(slots=True)
class Job:
    """One queue entry's recipients at one destination, with the bytes to send."""

    entry: QueueEntry
    recipients: list[QueueRecipient]
    data: bytes


# (queue id, recipient address) -> its outcome
Results = dict[tuple[str, str], Outcome]
PendingCheck = Callable[[Job], Awaitable[list[QueueRecipient]]]


class TlsPolicyError(Exception):
    """A connection that cannot carry the job under its TLS policy (try another host)."""


@dataclass(frozen=True, slots=True)
class _Policy:
    context: ssl.SSLContext | None  # None: never TLS
    required: bool  # no TLS, no delivery
    requiretls: bool  # RFC 8689: verified TLS and a server that advertises REQUIRETLS
    implicit: bool = False  # TLS from the first byte (smart host on port 465)
    auth: tuple[str, str] | None = None  # smart host credentials


@dataclass
class _HostErrors:
    texts: list[str] = field(default_factory=list)
    policy: int = 0  # hosts refused by the TLS policy
    temporary: int = 0  # connection or DNS failures
    no_address: int = 0

    def add(self, text: str, kind: Literal["policy", "temporary", "no_address"]) -> None:
        self.texts.append(text)
        if kind == "policy":
            self.policy += 1
        elif kind == "temporary":
            self.temporary += 1
        else:
            self.no_address += 1


def _has_8bit(data: bytes) -> bool:
    return not data.isascii()


def header_section(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[:end + 2]


def make_client_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """A client TLS context: checking certificate and host name, or accepting any certificate
    (opportunistic TLS still encrypts against passive listeners)."""
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _no_recheck(job: Job) -> list[QueueRecipient]:
    return job.recipients


class Transfer:
    def __init__(
        self,
        cfg: Config,
        resolver: Resolver,
        still_pending: PendingCheck = _no_recheck,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.delivery = cfg.delivery
        self.resolver = resolver
        self.still_pending = still_pending
        self.rng = rng or random.Random()
        ca_file = str(cfg.path(self.delivery.tls_ca_file)) if self.delivery.tls_ca_file else None
        self._opportunistic = make_client_context(self.delivery.tls_verify, ca_file)
        self._verifying = make_client_context(True, ca_file)
        smart = self.delivery.smart_host
        self._smart_context = make_client_context(smart.verify, ca_file)
        self.mta_sts: MtaStsPolicies | None = None
        if cfg.trust.mta_sts:
            self.mta_sts = MtaStsPolicies(
                resolver, self._verifying, port=cfg.trust.mta_sts_port,
                timeout=self.delivery.connect_timeout,
                cache_file=cfg.path("mta-sts/policies.json"), may_connect=self._may_connect)

    @property
    def smart_host(self) -> str:
        return self.delivery.smart_host.host

    # -- policies --

    def _may_connect(self, address: str) -> bool:
        return self.delivery.internet or is_loopback(address)

    def _policy(self, requiretls: bool, sts_enforced: bool = False) -> _Policy:
        smart = self.delivery.smart_host
        auth = (smart.username, smart.password) if smart.host and smart.username else None
        if requiretls:
            context = self._smart_context if smart.host and smart.verify else self._verifying
            return _Policy(context, True, True, smart.host != "" and smart.tls == "implicit",
                           auth)
        if smart.host:
            if smart.tls == "none":
                return _Policy(None, False, False, False, auth)
            return _Policy(self._smart_context, True, False, smart.tls == "implicit", auth)
        if sts_enforced:  # RFC 8461 4.2: a certificate valid for the MX host, or no delivery
            return _Policy(self._verifying, True, False)
        required = self.delivery.tls_policy == "required"
        return _Policy(self._opportunistic, required, False)

    async def _apply_mta_sts(self, domain: str, hosts: list[str]) -> tuple[list[str], bool]:
        """The MX hosts we may use under the domain's MTA-STS policy, and whether it is
        enforced. Under 'testing' nothing changes; what would have been refused is logged."""
        policy: Policy | None = None
        if self.mta_sts is not None:
            policy = await self.mta_sts.policy_for(domain)
        if policy is None or policy.mode == "none":
            return hosts, False
        allowed = [h for h in hosts if policy.allows(h)]
        refused = [h for h in hosts if h not in allowed]
        if refused:
            log_event("queue.mta_sts_mismatch", logging.WARNING, domain=domain,
                      mode=policy.mode, hosts=",".join(refused), policy_mx=",".join(policy.mx))
        if policy.mode == "testing":
            return hosts, False
        return allowed, True

    # -- the delivery of one destination's jobs --

    async def deliver(self, domain: str, jobs: list[Job], results: Results) -> None:
        """Delivers ``jobs`` (all for ``domain``, or all for the smart host) and records every
        recipient's outcome in ``results`` as soon as it is known."""
        sts_enforced = False
        if self.smart_host:  # MTA-STS is about MX hosts; the smart host has its own TLS rules
            hosts = [self.smart_host]
            port = self.delivery.smart_host.port
        else:
            port = self.delivery.mx_port
            try:
                hosts = await mx_hosts(self.resolver, domain, self.rng, [self.cfg.hostname])
            except RoutingFailure as failure:
                kind: OutcomeKind = "permanent" if failure.permanent else "temporary"
                self._record_all(jobs, Outcome(kind, failure.status, failure.text), results)
                return
            hosts, sts_enforced = await self._apply_mta_sts(domain, hosts)
            if not hosts:
                # RFC 8461 5.1: never a permanent failure before the policy could be refreshed.
                self._record_all(jobs, Outcome(
                    "temporary", "4.7.10",
                    f"the MTA-STS policy of {domain} names none of its MX hosts"), results)
                return
        plain = [j for j in jobs if not j.entry.requiretls]
        strict = [j for j in jobs if j.entry.requiretls]
        # The messages are spread over a few connections opened at once; each connection
        # carries its share one message after another.
        width = self.delivery.connections_per_destination
        plain_policy = self._policy(False, sts_enforced)
        runs = [(plain[i::width], plain_policy) for i in range(width)]
        runs += [(strict[i::width], self._policy(True)) for i in range(width)]
        await asyncio.gather(*(self._deliver_with(hosts, port, share, policy, results)
                               for share, policy in runs if share))

    async def _deliver_with(
        self, hosts: list[str], port: int, jobs: list[Job], policy: _Policy, results: Results
    ) -> None:
        remaining = list(jobs)
        errors = _HostErrors()
        for host in hosts:
            if not remaining:
                break
            try:
                addresses = await self._addresses(host)
            except DnsTemporaryError as exc:
                errors.add(f"{host}: DNS lookup failed: {exc}", "temporary")
                continue
            if not addresses:
                errors.add(f"{host}: no address (A/AAAA) records", "no_address")
                continue
            for address in addresses:
                if not remaining:
                    break
                try:
                    client = await self._open(host, address, port, policy)
                except TlsPolicyError as exc:
                    errors.add(str(exc), "policy")
                    continue
                except SmtpConnectionError as exc:
                    errors.add(f"{host}[{address}]: {exc.text}", "temporary")
                    continue
                try:
                    while remaining:
                        await self._send_job(client, remaining[0], results)
                        remaining.pop(0)
                except SmtpConnectionError as exc:
                    # The outcome of the job in flight is unknown: it stays pending and goes to
                    # the next address (RFC 5321 6.1: better twice than never).
                    errors.add(f"{client.peer}: {exc.text}", "temporary")
                    client.close()
                    continue
                except BaseException:  # cancelled (the server stops): no polite QUIT
                    client.close()
                    raise
                await client.quit()
        if remaining:
            self._record_all(remaining, self._failure(hosts, policy, errors), results)

    def _failure(self, hosts: list[str], policy: _Policy, errors: _HostErrors) -> Outcome:
        detail = "; ".join(errors.texts[-3:]) or "no host to try"
        if policy.requiretls and errors.policy and not errors.temporary:
            # RFC 8689 4.2.1 / 5: no host qualified; the message is returned (5.7.30).
            return Outcome("permanent", "5.7.30",
                           f"REQUIRETLS: no server offered verified TLS and REQUIRETLS: {detail}")
        if policy.required and errors.policy and not errors.temporary:
            return Outcome("temporary", "4.7.10", f"TLS is required and not available: {detail}")
        if errors.no_address and not errors.temporary and not errors.policy:
            return Outcome("permanent", "5.4.4",
                           f"no address for {', '.join(hosts)}: {detail}")
        return Outcome("temporary", "4.4.1", f"no server could take the message: {detail}")

    async def _addresses(self, host: str) -> list[str]:
        try:
            ipaddress.ip_address(host)
            return [host]  # a smart host given as an IP address
        except ValueError:
            pass
        try:
            return await self.resolver.addresses(host)
        except DnsNotFound:
            return []

    async def _connect(
        self, host: str, address: str, port: int, implicit: ssl.SSLContext | None
    ) -> SmtpClient:
        if not self._may_connect(address):
            raise SmtpConnectionError(
                f"{address} is not on loopback and outbound mail to the internet is off "
                "([delivery] internet = false)"
            )
        client = await SmtpClient.connect(
            host, address, port,
            connect_timeout=self.delivery.connect_timeout,
            bind_address=self.delivery.bind_address,
            implicit_tls=implicit,
        )
        try:
            await client.hello(self.cfg.hostname)
        except BaseException:
            client.close()
            raise
        return client

    async def _open(self, host: str, address: str, port: int, policy: _Policy) -> SmtpClient:
        """A connection ready for MAIL under ``policy``, or TlsPolicyError/SmtpConnectionError."""
        implicit = policy.context if policy.implicit else None
        client = await self._connect(host, address, port, implicit)
        try:
            if not policy.implicit and policy.context is not None:
                if "STARTTLS" in client.extensions:
                    try:
                        await client.starttls(policy.context, self.cfg.hostname)
                    except SmtpConnectionError as exc:
                        client.close()
                        if policy.required:
                            raise TlsPolicyError(f"{host}[{address}]: {exc.text}") from None
                        # Opportunistic: a failed handshake leaves the session unusable;
                        # start again without TLS (RFC 3207 4.1 leaves the choice to us).
                        log_event("queue.tls_fallback", remote=f"{host}[{address}]",
                                  error=exc.text)
                        client = await self._connect(host, address, port, None)
                elif policy.required:
                    raise TlsPolicyError(f"{host}[{address}] does not offer STARTTLS")
            if policy.requiretls and not client.verified:
                raise TlsPolicyError(f"{host}[{address}]: no TLS with a verified certificate")
            if policy.requiretls and "REQUIRETLS" not in client.extensions:
                raise TlsPolicyError(f"{host}[{address}] does not advertise REQUIRETLS")
            if policy.auth is not None:
                if not client.tls and policy.context is not None:
                    raise TlsPolicyError(f"{host}[{address}]: no TLS to log in over")
                try:
                    await client.authenticate(*policy.auth)
                except SmtpAuthError as exc:
                    raise SmtpConnectionError(str(exc), exc.reply) from None
        except BaseException:
            client.close()
            raise
        return client

    # -- one job over an open connection --

    def _refusals(self, client: SmtpClient, job: Job, recipients: list[QueueRecipient]
                  ) -> dict[str, Outcome]:
        """Recipients this server cannot take the message for, decided before sending."""
        ext = client.extensions

        def refuse(status: str, text: str) -> Outcome:
            return Outcome("permanent", status, text, client.peer, client.tls)

        limit = ext.get("SIZE", "")
        if limit.isdigit() and int(limit) > 0 and len(job.data) > int(limit):
            # RFC 1870 6: do not send what the server said it will not take.
            out = refuse("5.3.4", f"the message ({len(job.data)} bytes) is larger than "
                                  f"{client.host} accepts ({limit} bytes)")
            return {r.address: out for r in recipients}
        if _has_8bit(job.data) and "8BITMIME" not in ext:
            # RFC 6152 3: 8-bit content only to servers that take it; we do not convert.
            out = refuse("5.6.3", f"the message has 8-bit content and {client.host} does not "
                                  "support 8BITMIME")
            return {r.address: out for r in recipients}
        if "SMTPUTF8" in ext:
            return {}
        # RFC 6531 3.2: without SMTPUTF8 at the server, a message that needs it cannot go.
        whole = not job.entry.sender.isascii() or not header_section(job.data).isascii()
        reason = (f"the message needs SMTPUTF8 (non-ASCII addresses or header fields) and "
                  f"{client.host} does not support it")
        return {r.address: refuse("5.6.7", reason) for r in recipients
                if whole or not r.address.isascii()}

    async def _send_job(self, client: SmtpClient, job: Job, results: Results) -> None:
        recipients = await self.still_pending(job)  # a recall may have taken some away
        if not recipients:
            return
        outcomes = self._refusals(client, job, recipients)
        sendable = [r for r in recipients if r.address not in outcomes]
        if sendable:
            entry = job.entry
            envelope = OutgoingEnvelope(
                sender=entry.sender,
                recipients=[OutgoingRecipient(r.address, r.notify, r.orcpt) for r in sendable],
                size=len(job.data),
                body_8bit=entry.body_8bit or _has_8bit(job.data),
                smtputf8=entry.smtputf8 or not header_section(job.data).isascii() or not all(
                    a.isascii() for a in [entry.sender, *(r.address for r in sendable)]),
                requiretls=entry.requiretls,
                envid=entry.envid,
                ret=entry.ret,
            )
            replies = await client.send(envelope, job.data)
            for recipient in sendable:
                outcomes[recipient.address] = self._from_reply(
                    client, replies[recipient.address], recipient)
        for address, outcome in outcomes.items():
            results[(job.entry.id, address)] = outcome
            log_event("queue.attempt", logging.INFO if outcome.kind == "delivered"
                      else logging.WARNING, queue_id=job.entry.id, recipient=address,
                      remote=outcome.remote, tls=outcome.tls or "no", result=outcome.kind,
                      reply=outcome.text)

    @staticmethod
    def _from_reply(client: SmtpClient, reply: Reply, recipient: QueueRecipient) -> Outcome:
        if reply.ok:
            notify = recipient.notify.upper().split(",")
            relayed = "SUCCESS" in notify and "DSN" not in client.extensions
            return Outcome("delivered", reply.status, str(reply), client.peer, client.tls,
                           str(reply), relayed)
        kind: OutcomeKind = "permanent" if reply.permanent else "temporary"
        return Outcome(kind, reply.status, str(reply), client.peer, client.tls, str(reply))

    @staticmethod
    def _record_all(jobs: list[Job], outcome: Outcome, results: Results) -> None:
        for job in jobs:
            for recipient in job.recipients:
                results[(job.entry.id, recipient.address)] = outcome
                log_event("queue.attempt", logging.WARNING, queue_id=job.entry.id,
                          recipient=recipient.address, result=outcome.kind, reply=outcome.text)
