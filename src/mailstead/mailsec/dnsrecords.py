"""The DNS records a mail domain served by mailstead must publish, and checking them.

Used by ``mailstead dns <domain>`` (zone-file form) and ``mailstead dns --check <domain>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailstead.config import Config
from mailstead.dns import DnsError, DnsNotFound, Resolver
from mailstead.mailsec import mta_sts


@dataclass(frozen=True, slots=True)
class Record:
    name: str  # absolute, without the trailing dot
    rdtype: str
    value: str  # as it appears in a zone file (TXT values unquoted here)
    why: str

    def zone_line(self) -> str:
        value = self.value
        if self.rdtype == "TXT":
            chunks = [value[i:i + 250] for i in range(0, len(value), 250)] or [""]
            value = " ".join(f'"{c}"' for c in chunks)
        return f"{self.name}.\t3600\tIN\t{self.rdtype}\t{value}"


def served_mta_sts_policy(cfg: Config) -> str:
    """The MTA-STS policy the web listener serves for each of our domains: our MX host."""
    return mta_sts.policy_text(cfg.trust.mta_sts_mode, [cfg.hostname])


# RFC 6186 / RFC 8314 service labels by (protocol, TLS mode) of a listener; SRV priority.
_SERVICES = {
    ("submission", "implicit"): ("_submissions._tcp", 0),
    ("submission", "starttls"): ("_submission._tcp", 0),
    ("imap", "implicit"): ("_imaps._tcp", 0),
    ("imap", "starttls"): ("_imap._tcp", 0),
    ("pop3", "implicit"): ("_pop3s._tcp", 10),  # IMAP first: clients that can, should
    ("pop3", "starttls"): ("_pop3._tcp", 10),
}


def configured_listeners(cfg: Config) -> list[tuple[str, int, str]]:
    """(protocol, port, TLS mode) of each enabled listener as the config says."""
    return [(li.protocol, li.port, li.tls) for li in cfg.listeners.values() if li.enabled]


def expected_records(cfg: Config, domain: str, dkim_records: list[tuple[str, str]],
                     listeners: list[tuple[str, int, str]] | None = None) -> list[Record]:
    """Every record ``domain`` should publish, with its DKIM keys' ``dkim_records`` (name,
    value: ``DkimKeyring.published``). ``listeners`` (protocol, port, TLS mode) give the SRV
    ports: the running ones when known, else those of the config."""
    host = cfg.hostname
    sts_id = mta_sts.policy_id(served_mta_sts_policy(cfg))
    records = [
        Record(domain, "MX", f"10 {host}.", "mail for the domain goes to this server"),
        Record(domain, "TXT", "v=spf1 mx -all", "SPF (RFC 7208): only our MX sends for it"),
    ]
    for name, value in dkim_records:
        records.append(Record(name, "TXT", value, "DKIM public key (RFC 6376, RFC 8463)"))
    records += [
        Record(f"_dmarc.{domain}", "TXT", f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}",
               "DMARC policy (RFC 7489)"),
        Record(f"_mta-sts.{domain}", "TXT", f"v=STSv1; id={sts_id}",
               "MTA-STS policy announcement (RFC 8461)"),
        Record(f"mta-sts.{domain}", "CNAME", f"{host}.",
               "MTA-STS policy host: the http listener on 443 with tls = implicit"),
        Record(f"_smtp._tls.{domain}", "TXT", f"v=TLSRPTv1; rua=mailto:postmaster@{domain}",
               "TLS reporting (RFC 8460)"),
    ]
    seen: set[str] = set()
    for protocol, port, tls in configured_listeners(cfg) if listeners is None else listeners:
        label, priority = _SERVICES.get((protocol, tls), ("", 0))
        if label and label not in seen and port:
            seen.add(label)
            records.append(Record(f"{label}.{domain}", "SRV", f"{priority} 1 {port} {host}.",
                                  "mail client service discovery (RFC 6186, RFC 8314)"))
    records.append(Record(f"autoconfig.{domain}", "CNAME", f"{host}.",
                          "Thunderbird autoconfig (the http listener)"))
    return records


def zone_text(cfg: Config, domain: str, dkim_records: list[tuple[str, str]]) -> str:
    lines = [f"; DNS records for {domain} (served by {cfg.hostname})"]
    for record in expected_records(cfg, domain, dkim_records):
        lines.append(f"; {record.why}")
        lines.append(record.zone_line())
    return "\n".join(lines) + "\n"


async def check(resolver: Resolver, cfg: Config, domain: str,
                dkim_records: list[tuple[str, str]]) -> list[tuple[Record, str]]:
    """(record, problem) for each expected record; problem "" when it is published as
    expected."""
    out: list[tuple[Record, str]] = []
    for record in expected_records(cfg, domain, dkim_records):
        try:
            if record.rdtype == "MX":
                found = [f"{m.preference} {m.exchange}." for m in await resolver.mx(record.name)]
                problem = "" if record.value.lower() in [f.lower() for f in found] else \
                    f"missing (found: {', '.join(found) or 'nothing'})"
            elif record.rdtype == "TXT":
                found = await resolver.txt(record.name)
                problem = _txt_problem(record, found)
            elif record.rdtype == "CNAME":
                problem = await _alias_problem(resolver, record)
            else:
                found = await resolver.records(record.name, record.rdtype)
                problem = "" if _same(record.value, found) else \
                    f"missing (found: {', '.join(found) or 'nothing'})"
        except DnsNotFound:
            problem = "missing"
        except DnsError as exc:
            problem = f"lookup failed: {exc}"
        out.append((record, problem))
    return out


def _same(value: str, found: list[str]) -> bool:
    return value.lower().rstrip(".") in [f.lower().rstrip(".") for f in found]


async def _alias_problem(resolver: Resolver, record: Record) -> str:
    """A CNAME to our host, or address records equal to our host's, both do."""
    try:
        if _same(record.value, await resolver.records(record.name, "CNAME")):
            return ""
    except DnsNotFound:
        return "missing"
    ours = set(await resolver.addresses(record.value.rstrip(".")))
    theirs = set(await resolver.addresses(record.name))
    if ours and theirs == ours:
        return ""
    return "missing" if not theirs else f"points elsewhere ({', '.join(sorted(theirs))})"


def _txt_problem(record: Record, found: list[str]) -> str:
    prefix = record.value.split(";", 1)[0].split(" ", 1)[0].lower()  # v=spf1, v=DKIM1...
    same_kind = [f for f in found if f.lower().startswith(prefix)]
    if not same_kind:
        return "missing"
    if record.name.startswith(("_dmarc.", "_smtp._tls.", "_mta-sts.")):
        return ""  # any valid policy of the domain's own choosing is fine
    if record.value in same_kind:
        return ""
    return f"different value published: {same_kind[0][:80]}"
