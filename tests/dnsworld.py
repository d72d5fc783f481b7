"""A small DNS hierarchy on loopback for delivery tests and benchmarks.

- 127.53.N.1:53 — authoritative for the root "." and for "test." (our own root: nothing here
  knows the real one). "test." delegates "sub.gamma.test." to the next server.
- 127.53.N.2:53 — authoritative for "sub.gamma.test." (the child zone).
- 127.53.N.53:53 — Debian's ``unbound`` as the recursive resolver mailstead instances use, with
  root hints naming only 127.53.N.1, so it resolves by walking the delegations like a real one.

N is picked at random among free ones, so two test runs on one machine do not collide.

The two authoritative servers are written here on dnspython (asyncio UDP and TCP, in a thread).
Every address in every zone is in 127.0.0.0/8 and unbound is told to send from 127.0.53.53, so
no query or message ever leaves loopback. Port 53 is needed because a resolver follows a
delegation to port 53; binding it needs root (CI runs as root).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
import dns.zone

TTL = 5  # short, so a test can rely on fresh answers soon after the world changes

ROOT_ZONE = """
$TTL {TTL}
.            SOA ns.test. hostmaster.test. 1 3600 600 86400 {TTL}
.            NS  ns.test.
test.        NS  ns.test.
ns.test.     A   {root}
"""

TEST_ZONE = """
$TTL {TTL}
test.               SOA ns.test. hostmaster.test. 1 3600 600 86400 {TTL}
test.               NS  ns.test.
ns.test.            A   {root}
; the three mail domains of the end-to-end test
alpha.test.         MX  10 mx.alpha.test.
mx.alpha.test.      A   127.0.0.2
beta.test.          MX  10 mx.beta.test.
mx.beta.test.       A   127.0.0.3
sub.gamma.test.     NS  ns.sub.gamma.test.
ns.sub.gamma.test.  A   {child}
; a domain whose server starts late (recall)
delta.test.         MX  10 mx.delta.test.
mx.delta.test.      A   127.0.0.5
; a third-party server without STARTTLS, SMTPUTF8 or DSN (aiosmtpd)
plain.test.         MX  10 mx.plain.test.
mx.plain.test.      A   127.0.0.6
; a backup MX: the best one has no server listening
multi.test.         MX  10 dead.multi.test.
multi.test.         MX  20 mx.beta.test.
dead.multi.test.    A   127.0.0.9
; a smart host (relay) run by aiosmtpd
smart.test.         A   127.0.0.8
; RFC 7505 null MX, and a name with neither MX nor address
null.test.          MX  0 .
nomail.test.        TXT "no mail here"
"""

CHILD_ZONE = """
$TTL {TTL}
sub.gamma.test.       SOA ns.sub.gamma.test. hostmaster.gamma.test. 1 3600 600 86400 {TTL}
sub.gamma.test.       NS  ns.sub.gamma.test.
ns.sub.gamma.test.    A   {child}
; no MX: mail goes to the address of the domain itself (implicit MX, RFC 5321 5.1)
mail.sub.gamma.test.  A   127.0.0.4
"""


def _zone(template: str, origin: str, **addresses: str) -> dns.zone.Zone:
    text = template.format(TTL=TTL, **addresses)
    return dns.zone.from_text(text, origin=origin, relativize=False, check_origin=True)


class Authority:
    """Answers from a set of zones like an authoritative server: answers with AA, referrals at
    zone cuts (NS in authority, glue in additional), NXDOMAIN/NODATA with the SOA."""

    def __init__(self, zones: list[dns.zone.Zone]) -> None:
        self.zones = zones
        self.asked: list[tuple[str, str]] = []  # (name, type) of every question, for tests

    def _zone_for(self, qname: dns.name.Name) -> dns.zone.Zone | None:
        best = None
        for zone in self.zones:
            assert zone.origin is not None
            if qname.is_subdomain(zone.origin) and (
                best is None or len(zone.origin) > len(best.origin)  # type: ignore[arg-type]
            ):
                best = zone
        return best

    def respond(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        self.asked.append((qname.to_text(), dns.rdatatype.to_text(qtype)))
        zone = self._zone_for(qname)
        if zone is None or question.rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        origin = zone.origin
        assert origin is not None
        # A zone cut between the apex and the name: refer to the child's servers.
        labels = qname.relativize(origin).labels if qname != origin else ()
        for depth in range(1, len(labels) + 1):
            cut = dns.name.Name(labels[-depth:]).derelativize(origin)
            ns = zone.get_rdataset(cut, dns.rdatatype.NS)
            if ns is not None:
                response.authority.append(dns.rrset.from_rdata_list(cut, ns.ttl, list(ns)))
                for rdata in ns:
                    glue = zone.get_rdataset(rdata.target, dns.rdatatype.A)
                    if glue is not None:
                        response.additional.append(
                            dns.rrset.from_rdata_list(rdata.target, glue.ttl, list(glue)))
                return response
        response.flags |= dns.flags.AA
        node = zone.get_node(qname)
        if node is not None:
            found = node.get_rdataset(dns.rdataclass.IN, qtype)
            if found is None and qtype != dns.rdatatype.CNAME:
                found = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if found is not None:
                response.answer.append(dns.rrset.from_rdata_list(qname, found.ttl, list(found)))
                return response
        elif not any(name.is_subdomain(qname) for name in zone.nodes):
            response.set_rcode(dns.rcode.NXDOMAIN)
        soa = zone.get_rdataset(origin, dns.rdatatype.SOA)
        assert soa is not None
        response.authority.append(dns.rrset.from_rdata_list(origin, soa.ttl, list(soa)))
        return response

    def handle(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None  # not DNS: no answer
        return self.respond(query).to_wire()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, authority: Authority) -> None:
        self.authority = authority
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        answer = self.authority.handle(data)
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)


async def _serve_tcp(authority: Authority, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            size = int.from_bytes(await reader.readexactly(2), "big")
            answer = authority.handle(await reader.readexactly(size))
            if answer is None:
                break
            writer.write(len(answer).to_bytes(2, "big") + answer)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


class AuthServers:
    """The authoritative servers, on one event loop in a daemon thread."""

    def __init__(self, servers: dict[str, Authority]) -> None:
        self.servers = servers
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._closers: list[asyncio.BaseTransport | asyncio.Server] = []

    async def _start(self) -> None:
        for address, authority in self.servers.items():
            transport, _ = await self.loop.create_datagram_endpoint(
                lambda a=authority: _Udp(a), local_addr=(address, 53))  # type: ignore[misc]
            self._closers.append(transport)
            server = await asyncio.start_server(
                lambda r, w, a=authority: _serve_tcp(a, r, w), address, 53)
            self._closers.append(server)

    async def _stop(self) -> None:
        for item in self._closers:
            item.close()

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def find_unbound() -> str | None:
    return shutil.which("unbound") or shutil.which("unbound", path="/usr/sbin:/usr/local/sbin")


UNBOUND_CONF = """
server:
    interface: {resolver}
    port: 53
    outgoing-interface: {resolver}
    do-ip6: no
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{directory}"
    pidfile: "{directory}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    root-hints: "{directory}/root.hints"
    # our servers live on loopback, which unbound refuses to ask by default
    do-not-query-localhost: no
    # no DNSSEC: our zones are unsigned and there is no trust anchor
    module-config: "iterator"
    # "test." is a locally served zone by default (RFC 6761); here it is real
    local-zone: "test." nodefault
    access-control: 127.0.0.0/8 allow
    cache-max-ttl: {ttl}
    cache-max-negative-ttl: {ttl}
remote-control:
    control-enable: no
"""


def _port_53_free(addresses: list[str]) -> bool:
    for address in addresses:
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind((address, 53))
                except OSError:
                    return False
    return True


def _pick_network() -> str:
    """A 127.53.N prefix whose .1, .2 and .53 have port 53 free."""
    for n in random.sample(range(256), 256):
        prefix = f"127.53.{n}"
        if _port_53_free([f"{prefix}.1", f"{prefix}.2", f"{prefix}.53"]):
            return prefix
    raise RuntimeError("no free 127.53.N.x addresses for the test DNS servers")


class DnsWorld:
    """Starts the authoritative servers and unbound; ``resolver`` is what mailstead uses."""

    def __init__(self) -> None:
        prefix = _pick_network()
        self.root_server = f"{prefix}.1"
        self.child_server = f"{prefix}.2"
        self.resolver = f"{prefix}.53"
        self.directory = Path(tempfile.mkdtemp(prefix="mailstead-dns-"))
        addresses = {"root": self.root_server, "child": self.child_server}
        self.root = Authority([_zone(ROOT_ZONE, ".", **addresses),
                               _zone(TEST_ZONE, "test.", **addresses)])
        self.child = Authority([_zone(CHILD_ZONE, "sub.gamma.test.", **addresses)])
        self.auth = AuthServers({self.root_server: self.root, self.child_server: self.child})
        self.unbound: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, unbound: str, timeout: float = 15.0) -> DnsWorld:
        try:
            self._start(unbound, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, unbound: str, timeout: float) -> None:
        self.auth.start()
        (self.directory / "root.hints").write_text(
            f".  3600000  NS  ns.test.\nns.test.  3600000  A  {self.root_server}\n")
        conf = self.directory / "unbound.conf"
        conf.write_text(UNBOUND_CONF.format(
            resolver=self.resolver, directory=self.directory, ttl=TTL))
        self._log = open(self.directory / "unbound.log", "wb")  # noqa: SIM115 - see stop()
        self.unbound = subprocess.Popen([unbound, "-d", "-c", str(conf)], stdout=self._log,
                                        stderr=subprocess.STDOUT)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        probe = self.stub()
        deadline = time.monotonic() + timeout
        while True:
            assert self.unbound is not None
            if self.unbound.poll() is not None:
                raise RuntimeError(f"unbound exited: {self.log_text()}")
            try:
                probe.resolve("mx.alpha.test", "A", lifetime=1)
                return
            except dns.exception.DNSException:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"unbound did not answer: {self.log_text()}") from None
                time.sleep(0.1)

    def stub(self) -> dns.resolver.Resolver:
        """A dnspython stub resolver asking our unbound (for checks in tests)."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.resolver]
        return resolver

    def log_text(self) -> str:
        path = self.directory / "unbound.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        if self.unbound is not None and self.unbound.poll() is None:
            self.unbound.send_signal(signal.SIGTERM)
            try:
                self.unbound.wait(10)
            except subprocess.TimeoutExpired:
                self.unbound.kill()
                self.unbound.wait(5)
        if self._log is not None:
            self._log.close()
        if self.auth.thread.is_alive():
            self.auth.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def can_run() -> str | None:
    """Why the world cannot run here, or None when it can."""
    if find_unbound() is None:
        return "unbound is not installed (apt-get install unbound; .ci/run does)"
    if os.geteuid() != 0:
        return "the test DNS servers need port 53 on 127.53.N.x (run as root, as CI does)"
    return None
