"""SPF (RFC 7208): check_host() over an injected DNS interface.

Written here because no maintained asynchronous SPF library exists. The whole record is parsed
before any mechanism is evaluated, so a syntax error anywhere is a permerror (4.6). Lookups are
counted across includes and redirects (10 DNS-querying terms, 4.6.4), as are void lookups (2).
"""

from __future__ import annotations

import ipaddress
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, Protocol

from mailstead.dns import DnsNotFound, DnsTemporaryError, Resolver

SpfResultCode = Literal["none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"]
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOKUP_LIMIT = 10  # 4.6.4
VOID_LIMIT = 2  # 4.6.4
MX_LIMIT = 10  # 4.6.4: more MX names than this is a permerror
PTR_LIMIT = 10  # 4.6.4: only the first ten PTR names are looked at

QUALIFIERS: dict[str, SpfResultCode] = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


class SpfDns(Protocol):
    """The lookups check_host() makes. NXDOMAIN raises DnsNotFound, a failure
    DnsTemporaryError; a name without records of the type gives []."""

    async def txt(self, name: str) -> list[str]: ...

    async def a(self, name: str) -> list[str]: ...

    async def aaaa(self, name: str) -> list[str]: ...

    async def mx(self, name: str) -> list[str]: ...

    async def ptr(self, ip: str) -> list[str]: ...


class ResolverSpfDns:
    """SpfDns over mailstead's Resolver (A/AAAA split from ``addresses``; PTR when the
    resolver offers it, else none: the ptr mechanism is discouraged anyway, 5.5)."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    async def txt(self, name: str) -> list[str]:
        return await self.resolver.txt(name)

    async def a(self, name: str) -> list[str]:
        return [ip for ip in await self.resolver.addresses(name) if ":" not in ip]

    async def aaaa(self, name: str) -> list[str]:
        return [ip for ip in await self.resolver.addresses(name) if ":" in ip]

    async def mx(self, name: str) -> list[str]:
        return [r.exchange for r in await self.resolver.mx(name)]

    async def ptr(self, ip: str) -> list[str]:
        lookup = getattr(self.resolver, "ptr", None)
        if lookup is None:
            return []
        names: list[str] = await lookup(ip)
        return names


@dataclass(frozen=True, slots=True)
class SpfResult:
    result: SpfResultCode
    domain: str  # the domain whose policy was checked
    explanation: str = ""  # from exp= on fail (6.2)
    problem: str = ""  # why permerror/temperror, for logs and headers


@lru_cache(maxsize=1024)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An ip4/ip6 mechanism's network, parsed once: the same records come with every message
    of a sender (checked at parse time, so this does not raise)."""
    return ipaddress.ip_network(text, strict=False)


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


# -- record syntax (section 4.6, 12) -------------------------------------------------------------

_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9\-_.]*)=(.*)", re.S)
_MECHANISM = re.compile(r"([+\-~?]?)([A-Za-z][A-Za-z0-9\-_.]*)(.*)", re.S)
_DUAL_CIDR = re.compile(r"(?:/(0|[1-9][0-9]*))?(?://(0|[1-9][0-9]*))?")
_TOPLABEL = re.compile(
    r"(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9\-]*[A-Za-z0-9])")
MACRO_LETTERS = "slodipvh"
EXP_LETTERS = MACRO_LETTERS + "crt"


@dataclass(slots=True)
class _Mechanism:
    qualifier: SpfResultCode
    name: str  # all include a mx ptr ip4 ip6 exists
    domain_spec: str = ""
    network: str = ""  # ip4/ip6 address text
    cidr4: int | None = None
    cidr6: int | None = None


@dataclass(slots=True)
class _Record:
    mechanisms: list[_Mechanism] = field(default_factory=list)
    redirect: str | None = None
    exp: str | None = None


def _check_macro_string(text: str, letters: str) -> None:
    """Syntax of a macro-string (7.1); raises _PermError."""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "%":
            nxt = text[i + 1:i + 2]
            if nxt in ("%", "_", "-"):
                i += 2
                continue
            if nxt != "{":
                raise _PermError(f"bad macro at {text[i:]!r}")
            end = text.find("}", i)
            if end < 0:
                raise _PermError(f"unterminated macro in {text!r}")
            if not re.fullmatch(r"[A-Za-z][0-9]*[rR]?[.\-+,/_=]*", text[i + 2:end]) or \
                    text[i + 2].lower() not in letters:
                raise _PermError(f"bad macro {text[i:end + 1]!r}")
            i = end + 1
        elif 0x21 <= ord(ch) <= 0x7E:
            i += 1
        else:
            raise _PermError(f"bad character {ch!r} in {text!r}")


def _check_domain_spec(spec: str, letters: str = MACRO_LETTERS) -> None:
    """domain-spec = macro-string domain-end (7.1): ends in a macro or "." toplabel ["."]."""
    if not spec:
        raise _PermError("empty domain-spec")
    _check_macro_string(spec, letters)
    if spec.endswith("}"):
        return
    body = spec[:-1] if spec.endswith(".") else spec
    head, dot, top = body.rpartition(".")
    if not dot or not head or not _TOPLABEL.fullmatch(top):
        raise _PermError(f"invalid domain-spec {spec!r}")


def _parse_cidr(text: str) -> tuple[int | None, int | None]:
    match = _DUAL_CIDR.fullmatch(text)
    if match is None:
        raise _PermError(f"bad CIDR {text!r}")
    c4 = int(match[1]) if match[1] is not None else None
    c6 = int(match[2]) if match[2] is not None else None
    if (c4 is not None and c4 > 32) or (c6 is not None and c6 > 128):
        raise _PermError(f"CIDR out of range {text!r}")
    return c4, c6


def _split_domain_cidr(rest: str) -> tuple[str, str]:
    """":domain/24//64" -> ("domain", "/24//64"); the CIDR part is the trailing /digits."""
    match = re.search(r"(?:/[0-9]+)?(?://[0-9]+)?\Z", rest)
    assert match is not None
    return rest[:match.start()], rest[match.start():]


def _parse_mechanism(term: str) -> _Mechanism:
    match = _MECHANISM.fullmatch(term)
    if match is None:
        raise _PermError(f"unknown term {term!r}")
    qualifier = QUALIFIERS[match[1] or "+"]
    name, rest = match[2].lower(), match[3]
    mech = _Mechanism(qualifier, name)
    if name == "all":
        if rest:
            raise _PermError(f"'all' takes no argument: {term!r}")
    elif name in ("include", "exists"):
        if not rest.startswith(":"):
            raise _PermError(f"{name} needs a domain: {term!r}")
        mech.domain_spec = rest[1:]
        _check_domain_spec(mech.domain_spec)
    elif name in ("a", "mx"):
        spec, cidr = _split_domain_cidr(rest)
        mech.cidr4, mech.cidr6 = _parse_cidr(cidr)
        if spec:
            if not spec.startswith(":"):
                raise _PermError(f"bad {name} mechanism {term!r}")
            mech.domain_spec = spec[1:]
            _check_domain_spec(mech.domain_spec)
    elif name == "ptr":
        if rest:
            if not rest.startswith(":"):
                raise _PermError(f"bad ptr mechanism {term!r}")
            mech.domain_spec = rest[1:]
            _check_domain_spec(mech.domain_spec)
    elif name == "ip4":
        network, _, cidr = rest.removeprefix(":").partition("/")
        if not rest.startswith(":") or not re.fullmatch(r"[0-9.]+", network):
            raise _PermError(f"bad ip4 mechanism {term!r}")
        try:
            ipaddress.IPv4Address(network)
        except ValueError:
            raise _PermError(f"bad ip4 address {term!r}") from None
        mech.network = network
        if cidr:
            if not re.fullmatch(r"0|[1-9][0-9]?", cidr) or int(cidr) > 32:
                raise _PermError(f"bad ip4 CIDR {term!r}")
            mech.cidr4 = int(cidr)
    elif name == "ip6":
        network, _, cidr = rest.removeprefix(":").partition("/")
        try:
            ipaddress.IPv6Address(network)
        except ValueError:
            raise _PermError(f"bad ip6 address {term!r}") from None
        if not rest.startswith(":"):
            raise _PermError(f"bad ip6 mechanism {term!r}")
        mech.network = network
        if cidr:
            if not re.fullmatch(r"0|[1-9][0-9]{0,2}", cidr) or int(cidr) > 128:
                raise _PermError(f"bad ip6 CIDR {term!r}")
            mech.cidr6 = int(cidr)
    else:
        raise _PermError(f"unknown mechanism {term!r}")
    return mech


# The same few records come with every message of a sender: parsed once (the result is
# only read after parsing).
@lru_cache(maxsize=1024)
def parse_record(text: str) -> _Record:
    """A "v=spf1 ..." record (version already checked) -> its terms; raises _PermError."""
    if not text.isascii():
        raise _PermError("non-ASCII record")  # 3.1
    record = _Record()
    for term in text.split(" ")[1:]:
        if not term:
            continue  # 4.6.1: terms are separated by one or more spaces
        modifier = _MODIFIER.fullmatch(term)
        if modifier is not None:
            name, value = modifier[1].lower(), modifier[2]
            if name in ("redirect", "exp"):
                if getattr(record, name) is not None:
                    raise _PermError(f"{name}= given twice")  # 6
                _check_domain_spec(value)
                setattr(record, name, value)
            else:
                _check_macro_string(value, MACRO_LETTERS)  # unknown modifiers are ignored
            continue
        record.mechanisms.append(_parse_mechanism(term))
    return record


def is_spf_record(text: str) -> bool:
    """4.5: "v=spf1" (any case) alone or followed by a space."""
    return text[:6].lower() == "v=spf1" and (len(text) == 6 or text[6] == " ")


def _valid_domain(name: str) -> bool:
    """A name a DNS query can be made for (RFC 1035 label rules; 4.3)."""
    name = name.removesuffix(".")
    if not name or len(name) > 253:
        return False
    return all(0 < len(label) <= 63 for label in name.split("."))


# -- evaluation -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Budget:
    lookups: int = 0
    voids: int = 0

    def lookup(self) -> None:
        self.lookups += 1
        if self.lookups > LOOKUP_LIMIT:
            raise _PermError("too many DNS lookups (RFC 7208 4.6.4)")

    def void(self) -> None:
        self.voids += 1
        if self.voids > VOID_LIMIT:
            raise _PermError("too many void DNS lookups (RFC 7208 4.6.4)")


@lru_cache(maxsize=1024)  # clients send many messages; parsing the address is not cheap
def _ip_of(text: str) -> IpAddress:
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # 5 (ip): IPv4-mapped addresses are IPv4
    return ip


class SpfChecker:
    """One check_host() evaluation context: the client, the identities, the lookup budget."""

    def __init__(self, dns: SpfDns, ip: str, sender: str, helo: str,
                 receiver: str = "unknown") -> None:
        self.dns = dns
        self.ip = _ip_of(ip)
        local, _, domain = sender.rpartition("@")
        self.sender_local = local or "postmaster"  # 4.3
        self.sender_domain = domain
        self.helo = helo
        self.receiver = receiver
        self.budget = _Budget()
        self._validated_name: str | None = None

    # -- DNS with error mapping

    async def _query(self, kind: str, name: str, *, count_void: bool = True) -> list[str]:
        if not _valid_domain(name):
            return []  # undefined by the RFC: an impossible name matches nothing
        try:
            answer: list[str] = await getattr(self.dns, kind)(name.removesuffix("."))
        except DnsNotFound:
            answer = []
        except DnsTemporaryError as exc:
            raise _TempError(str(exc)) from None
        if not answer and count_void:
            self.budget.void()
        return answer

    async def _addresses(self, name: str, *, count_void: bool = True) -> list[IpAddress]:
        kind = "a" if self.ip.version == 4 else "aaaa"
        found: list[IpAddress] = []
        for text in await self._query(kind, name, count_void=count_void):
            try:
                found.append(ipaddress.ip_address(text))
            except ValueError:
                continue
        return found

    def _in_network(self, addresses: list[IpAddress], mech: _Mechanism) -> bool:
        bits = mech.cidr4 if self.ip.version == 4 else mech.cidr6
        for address in addresses:
            if address.version != self.ip.version:
                continue
            prefix = bits if bits is not None else address.max_prefixlen
            if self.ip in _network(f"{address}/{prefix}"):
                return True
        return False

    # -- check_host (4)

    async def check(self, domain: str) -> SpfResult:
        """check_host(<ip>, <domain>, <sender>) with the limits of this checker."""
        domain = domain.removesuffix(".")
        if "." not in domain or not _valid_domain(domain):
            return SpfResult("none", domain, problem="not a valid domain")  # 4.3
        try:
            return await self._check_host(domain)
        except _PermError as exc:
            return SpfResult("permerror", domain, problem=str(exc))
        except _TempError as exc:
            return SpfResult("temperror", domain, problem=str(exc))

    async def _fetch_record(self, domain: str) -> _Record | None:
        try:
            texts = await self.dns.txt(domain)
        except DnsNotFound:
            return None
        except DnsTemporaryError as exc:
            raise _TempError(str(exc)) from None
        records = [t for t in texts if is_spf_record(t)]
        if not records:
            return None  # 4.5
        if len(records) > 1:
            raise _PermError(f"{domain} publishes more than one SPF record")  # 4.5
        return parse_record(records[0])

    async def _check_host(self, domain: str) -> SpfResult:
        record = await self._fetch_record(domain)
        if record is None:
            return SpfResult("none", domain)
        for mech in record.mechanisms:
            if await self._matches(mech, domain):
                explanation = ""
                if mech.qualifier == "fail" and record.exp is not None:
                    explanation = await self._explain(record.exp, domain)
                return SpfResult(mech.qualifier, domain, explanation)
        if record.redirect is not None:  # 6.1: only when no mechanism matched
            self.budget.lookup()
            target = await self.expand(record.redirect, domain)
            if not _valid_domain(target):
                raise _PermError(f"redirect to an invalid name {target!r}")
            result = await self._check_host(target)
            if result.result == "none":
                raise _PermError(f"redirect target {target} has no SPF record")
            return result
        return SpfResult("neutral", domain)  # 4.7

    async def _matches(self, mech: _Mechanism, domain: str) -> bool:
        if mech.name == "all":
            return True
        if mech.name == "ip4":
            return self.ip.version == 4 and self.ip in _network(
                f"{mech.network}/{32 if mech.cidr4 is None else mech.cidr4}")
        if mech.name == "ip6":
            return self.ip.version == 6 and self.ip in _network(
                f"{mech.network}/{128 if mech.cidr6 is None else mech.cidr6}")
        self.budget.lookup()  # every other mechanism queries DNS (4.6.4)
        target = await self.expand(mech.domain_spec, domain) if mech.domain_spec else domain
        if mech.name == "include":
            result = await self._check_host_checked(target)
            if result.result == "pass":
                return True
            if result.result in ("fail", "softfail", "neutral"):
                return False
            if result.result == "temperror":
                raise _TempError(result.problem)
            raise _PermError(f"include:{target} gave {result.result}")  # none -> permerror
        if mech.name == "a":
            return self._in_network(await self._addresses(target), mech)
        if mech.name == "mx":
            names = [n for n in await self._query("mx", target) if n]
            if len(names) > MX_LIMIT:
                raise _PermError(f"{target} has more than {MX_LIMIT} MX records")
            for name in names:
                if self._in_network(await self._addresses(name, count_void=False), mech):
                    return True
            return False
        if mech.name == "ptr":
            return any(_is_within(name, target) for name in await self._validated_names())
        if mech.name == "exists":
            return bool(await self._query("a", target))  # 5.7: always an A query
        raise _PermError(f"unknown mechanism {mech.name}")

    async def _check_host_checked(self, target: str) -> SpfResult:
        if not _valid_domain(target):
            return SpfResult("none", target)
        return await self._check_host(target)

    async def _validated_names(self) -> list[str]:
        """PTR names of the client that resolve back to it (5.5), at most ten tried."""
        try:
            names = await self.dns.ptr(str(self.ip))
        except DnsNotFound:
            names = []
        except DnsTemporaryError:
            names = []  # 5.5: a PTR failure means no match, not an error
        valid: list[str] = []
        for name in names[:PTR_LIMIT]:
            name = name.removesuffix(".")
            try:
                if self.ip in await self._addresses(name, count_void=False):
                    valid.append(name)
            except _TempError:
                continue
        return valid

    async def _explain(self, exp: str, domain: str) -> str:
        """6.2: any problem here means no explanation, never a different result."""
        try:
            name = await self.expand(exp, domain)
            texts = await self.dns.txt(name)
            if len(texts) != 1:
                return ""
            _check_macro_string(texts[0].replace(" ", "%_"), EXP_LETTERS)
            return await self.expand(texts[0], domain, explanation=True)
        except (_PermError, _TempError, DnsNotFound, DnsTemporaryError, ValueError):
            return ""

    # -- macros (7)

    async def _macro_value(self, letter: str, domain: str) -> str:
        if letter == "s":
            return f"{self.sender_local}@{self.sender_domain}"
        if letter == "l":
            return self.sender_local
        if letter == "o":
            return self.sender_domain
        if letter == "d":
            return domain
        if letter == "i":
            if self.ip.version == 4:
                return str(self.ip)
            return ".".join(self.ip.exploded.replace(":", ""))
        if letter == "v":
            return "in-addr" if self.ip.version == 4 else "ip6"
        if letter == "h":
            return self.helo
        if letter == "c":
            return str(self.ip)
        if letter == "r":
            return self.receiver
        if letter == "t":
            return str(int(time.time()))
        if letter == "p":
            return await self._p_macro(domain)
        raise _PermError(f"unknown macro letter {letter!r}")

    async def _p_macro(self, domain: str) -> str:
        if self._validated_name is None:
            names = await self._validated_names()
            exact = [n for n in names if n.lower() == domain.lower()]
            inside = [n for n in names if _is_within(n, domain)]
            self._validated_name = (exact or inside or names or ["unknown"])[0]
        return self._validated_name

    async def expand(self, spec: str, domain: str, *, explanation: bool = False) -> str:
        """Macro expansion (7.3, 7.4); a domain result is cut to 253 octets from the left."""
        out: list[str] = []
        i = 0
        while i < len(spec):
            ch = spec[i]
            if ch != "%":
                out.append(ch)
                i += 1
                continue
            nxt = spec[i + 1:i + 2]
            if nxt == "%":
                out.append("%")
            elif nxt == "_":
                out.append(" ")
            elif nxt == "-":
                out.append("%20")
            elif nxt == "{":
                end = spec.find("}", i)
                if end < 0:
                    raise _PermError("unterminated macro")
                out.append(await self._expand_one(spec[i + 2:end], domain, explanation))
                i = end + 1
                continue
            else:
                raise _PermError(f"bad macro {spec[i:]!r}")
            i += 2
        text = "".join(out)
        if explanation:
            return text
        text = text.removesuffix(".")
        while len(text) > 253 and "." in text:  # 7.3
            text = text.split(".", 1)[1]
        return text

    async def _expand_one(self, body: str, domain: str, explanation: bool) -> str:
        match = re.fullmatch(r"([A-Za-z])([0-9]*)([rR]?)([.\-+,/_=]*)", body)
        letters = EXP_LETTERS if explanation else MACRO_LETTERS
        if match is None or match[1].lower() not in letters:
            raise _PermError(f"bad macro %{{{body}}}")
        letter = match[1]
        value = await self._macro_value(letter.lower(), domain)
        parts = re.split("[" + re.escape(match[4] or ".") + "]", value)
        if match[3]:
            parts.reverse()
        if match[2]:
            keep = int(match[2])
            if keep == 0:
                raise _PermError("macro transformer 0")  # 7.3: zero is not allowed
            parts = parts[-keep:]
        value = ".".join(parts)
        if letter.isupper():
            value = urllib.parse.quote(value, safe="-._~")  # 7.3: URL-escaped
        return value


def _is_within(name: str, domain: str) -> bool:
    name, domain = name.lower().removesuffix("."), domain.lower().removesuffix(".")
    return name == domain or name.endswith("." + domain)


async def check_host(dns: SpfDns, ip: str, domain: str, sender: str, helo: str = "",
                     receiver: str = "unknown") -> SpfResult:
    """RFC 7208 4: the SPF result for ``ip`` sending as ``sender`` from ``domain``."""
    return await SpfChecker(dns, ip, sender, helo, receiver).check(domain)


async def check_sender(dns: SpfDns, ip: str, mail_from: str, helo: str,
                       receiver: str = "unknown") -> tuple[SpfResult, str]:
    """The MAIL FROM identity, or the HELO one for the null sender (2.4); returns the result
    and the identity checked ("mailfrom" or "helo")."""
    if mail_from and "@" in mail_from:
        domain = mail_from.rpartition("@")[2]
        return await check_host(dns, ip, domain, mail_from, helo, receiver), "mailfrom"
    return await check_host(dns, ip, helo, f"postmaster@{helo}", helo, receiver), "helo"
