"""Configuration: one TOML file (``mailstead.toml`` in the data directory), validated by pydantic.

Every option has a default and a description; ``mailstead config`` prints the effective
configuration with those descriptions as comments (``render_toml``). A wrong file raises
``ConfigError`` whose message names the option and what is wrong with it.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticUndefined

from mailstead.core.errors import ConfigError

CONFIG_FILE = "mailstead.toml"
DATA_ENV = "MAILSTEAD_DATA"
DEFAULT_DATA_DIR = "var"

TlsMode = Literal["none", "starttls", "implicit"]
Protocol = Literal["smtp", "submission", "imap", "pop3", "dmtp", "dmap", "http", "managesieve"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ListenerConfig(_Section):
    protocol: Protocol = Field(description="what is spoken on this listener")
    address: str = Field("127.0.0.1", description="IP address to bind (loopback by default)")
    port: int = Field(description="TCP port; 0 picks a free one", ge=0, le=65535)
    tls: TlsMode = Field("none", description="none, starttls (offered in plain text) or implicit")
    enabled: bool = Field(True, description="false to not start this listener")


def _default_listeners() -> dict[str, ListenerConfig]:
    L = ListenerConfig
    return {
        "smtp": L(protocol="smtp", port=2525, tls="starttls"),
        "submission": L(protocol="submission", port=2587, tls="starttls"),
        "submissions": L(protocol="submission", port=2465, tls="implicit"),
        "imap": L(protocol="imap", port=2143, tls="starttls"),
        "imaps": L(protocol="imap", port=2993, tls="implicit"),
        "pop3": L(protocol="pop3", port=2110, tls="starttls"),
        "pop3s": L(protocol="pop3", port=2995, tls="implicit"),
        "dmtp": L(protocol="dmtp", port=2626, enabled=False),
        "dmap": L(protocol="dmap", port=2627, enabled=False),
        "http": L(protocol="http", port=8080),
        "managesieve": L(protocol="managesieve", port=4190, tls="starttls"),  # RFC 5804
    }


class StoreConfig(_Section):
    url: str = Field(
        "sqlite:///mailstead.db",
        description="metadata store: sqlite:///FILE (relative to the data dir) or "
        "postgresql://user@host:port/dbname",
    )
    blob_dir: str = Field("blobs", description="message files (.eml), relative to the data dir")
    pg_schema: str = Field(
        "public", description="PostgreSQL schema holding mailstead's tables (one per site)"
    )
    migration_backups: int = Field(
        3, description="SQLite: copies of the store that `serve` and `migrate` take into "
        "backups/ before a schema upgrade, newest kept (0: take none)", ge=0,
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value


class TlsConfig(_Section):
    cert: str = Field("tls/cert.pem", description="PEM certificate chain, relative to data dir")
    key: str = Field("tls/key.pem", description="PEM private key, relative to the data dir")


class LimitsConfig(_Section):
    max_message_size: int = Field(
        26_214_400, description="largest message accepted, in bytes (SMTP SIZE, IMAP APPENDLIMIT)",
        ge=1024,
    )
    max_recipients: int = Field(100, description="recipients per SMTP message", ge=1)
    max_errors: int = Field(
        10, description="protocol errors in one SMTP, POP3 or DMTP/DMAP session before it is "
        "disconnected (IMAP: imap_max_errors)", ge=1
    )
    smtp_idle_timeout: int = Field(300, description="seconds an SMTP client may stay idle", ge=1)
    imap_idle_timeout: int = Field(
        1800, description="IMAP autologout: seconds without a command (IDLE re-arms it)", ge=1
    )
    pop3_idle_timeout: int = Field(600, description="seconds a POP3 client may stay idle", ge=1)
    managesieve_idle_timeout: int = Field(
        600, description="seconds a ManageSieve client may stay idle", ge=1
    )
    max_connections: int = Field(20_000, description="open connections in total", ge=1)
    max_connections_per_ip: int = Field(
        50, description="open connections from one IP address", ge=1
    )
    imap_max_commands: int = Field(
        1_000_000, description="commands in one IMAP session before BYE", ge=1
    )
    imap_max_errors: int = Field(
        20, description="IMAP commands answered BAD in one session before BYE (clients probe "
        "for extensions more than SMTP/POP3 clients, which max_errors bounds)", ge=1
    )
    imap_sessions_per_user_ip: int = Field(
        10, description="logged-in IMAP sessions of one user from one IP address; one more is "
        "refused at LOGIN with NO [LIMIT]", ge=1
    )
    imap_command_seconds: float = Field(
        30.0,
        description="CPU seconds of work one IMAP command may cost (SEARCH, FETCH...) before "
        "it fails with NO [LIMIT]; waiting for the client or the store is not counted",
        gt=0,
    )


class SmtpConfig(_Section):
    bare_line_feeds: Literal["normalize", "reject"] = Field(
        "normalize",
        description="a bare LF or CR inside a message (DATA or BDAT): normalize stores it as "
        "CRLF (a dot after it never ends the data), reject refuses the message with 550 5.5.2",
    )
    max_line_length: int = Field(
        1_048_576, description="longest line accepted in a message, in octets; a longer one is "
        "refused with 552 5.3.4", ge=1000,
    )


class AuthConfig(_Section):
    allow_plaintext_on_loopback: bool = Field(
        False,
        description="allow passwords without TLS for clients on 127.0.0.0/8 and ::1",
    )
    max_failures: int = Field(
        5, description="failed logins from one IP address before that address is blocked "
        "(the account itself is never locked)", ge=1
    )
    lockout_seconds: int = Field(
        300, description="how long an address or network stays blocked; failures further "
        "apart than this are not added up", ge=1
    )
    failure_delay: float = Field(
        0.5, description="seconds before answering a failed login, doubled per failure from "
        "the same address (at most 8)", ge=0
    )
    network_max_failures: int = Field(
        20, description="failed logins from one network (IPv4 /24, IPv6 /64) before its "
        "failing addresses are blocked and new ones queued one a second", ge=1
    )
    account_max_failures_per_minute: int = Field(
        10, description="failed logins on one account within a minute (from anywhere) before "
        "addresses that failed on it are refused and new ones queued one a second", ge=1
    )
    cache_seconds: int = Field(
        300, description="how long a verified password is remembered in memory", ge=0
    )
    min_password_length: int = Field(8, description="shortest password accepted", ge=1)


class DmtpConfig(_Section):
    hmac_secret: str = Field(
        "", description="shared secret for the DMTP/DMAP 'hash' field (HMAC-SHA256)"
    )


class WebConfig(_Section):
    signup: Literal["off", "open", "invite"] = Field(
        "off", description="self sign-up on the web: off, open to anyone, or invite (needs a code)"
    )
    signup_domains: list[str] = Field(
        default_factory=list,
        description="domains offered at sign-up (empty: every local domain)",
    )
    invite_codes: list[str] = Field(
        default_factory=list, description="invitation codes for signup = invite (each works once)"
    )
    signup_per_ip_per_day: int = Field(
        3, description="sign-ups accepted from one IP address per 24 hours", ge=1
    )
    new_account_days: int = Field(
        7, description="for this many days after creation an account counts as new", ge=0
    )
    new_account_daily_cap: int = Field(
        50, description="recipients a new (non-admin) account may send to per day (0: no cap)",
        ge=0,
    )
    users_manage_aliases: bool = Field(
        False, description="let users add and remove aliases of their own address"
    )
    session_secret_file: str = Field(
        "web/session.key",
        description="where an earlier version kept the key signing web sessions and API "
        "tokens (relative to the data dir); it is moved into the store, which every node "
        "shares, the first time it is needed",
    )
    session_hours: int = Field(12, description="hours a web login lasts", ge=1)
    page_size: int = Field(50, description="messages per page in the webmail list", ge=5, le=500)


class SmartHostConfig(_Section):
    host: str = Field(
        "", description="relay all outbound mail through this host instead of looking up MX "
        "records; empty: deliver directly"
    )
    port: int = Field(587, description="the smart host's port", ge=1, le=65535)
    username: str = Field("", description="AUTH user name at the smart host; empty: no AUTH")
    password: str = Field("", description="AUTH password at the smart host")
    tls: Literal["starttls", "implicit", "none"] = Field(
        "starttls", description="starttls (required), implicit (TLS from the first byte) or none"
    )
    verify: bool = Field(
        True, description="check the smart host's certificate (system CAs and "
        "delivery.tls_ca_file)"
    )


class DeliveryConfig(_Section):
    internet: bool = Field(
        False,
        description="send outbound mail beyond this machine (system resolvers, any MX address); "
        "off by default so a new install sends nothing off loopback until you turn it on",
    )
    workers: int = Field(
        4, description="outbound queue workers in this process; 0 leaves outbound mail queued",
        ge=0,
    )
    poll_interval: float = Field(
        1.0, description="seconds between looks at the queue while nothing is due", gt=0
    )
    batch_size: int = Field(
        20, description="queue entries a worker takes at once (mail for one domain shares a "
        "connection)", ge=1,
    )
    connections_per_destination: int = Field(
        4, description="connections one worker opens at once to one domain (or the smart "
        "host); its messages are spread over them", ge=1,
    )
    lease_seconds: int = Field(
        900, description="how long a claimed entry stays reserved for its worker (another "
        "node takes it over after a crash)", ge=10,
    )
    resolvers: list[str] = Field(
        default_factory=list,
        description='DNS resolvers as "IP" or "IP:PORT"; empty: the system\'s (/etc/resolv.conf)',
    )
    dns_timeout: float = Field(10.0, description="seconds one DNS lookup may take", gt=0)
    mx_port: int = Field(
        25, description="TCP port remote mail exchangers are contacted on", ge=1, le=65535
    )
    bind_address: str = Field(
        "", description="local IP address outbound connections come from; empty: the system's "
        "choice"
    )
    connect_timeout: float = Field(30.0, description="seconds to wait for a TCP connect", gt=0)
    retry_initial: float = Field(
        300.0, description="seconds before the first retry after a temporary failure", gt=0
    )
    retry_factor: float = Field(
        2.0, description="each later retry waits this many times longer", ge=1
    )
    retry_max: float = Field(3600.0, description="longest wait between two attempts", gt=0)
    lifetime: float = Field(
        432_000.0, description="seconds a message may wait in the queue before it bounces "
        "(5 days)", gt=0,
    )
    delay_notice: float = Field(
        14_400.0, description="seconds after which the sender is told a message is delayed "
        "(4 hours); 0: never", ge=0,
    )
    keep_done: float = Field(
        86_400.0, description="seconds a finished entry stays listed (queue show, recall) "
        "before it is removed", ge=0,
    )
    tls_policy: Literal["opportunistic", "required"] = Field(
        "opportunistic", description="opportunistic: STARTTLS when offered, else plain text; "
        "required: never send without TLS",
    )
    tls_verify: bool = Field(
        False, description="check MX certificates against the MX host name (REQUIRETLS "
        "messages are always checked, RFC 8689)"
    )
    tls_ca_file: str = Field(
        "", description="extra CA certificates (PEM) trusted when checking certificates"
    )
    smart_host: SmartHostConfig = Field(
        default_factory=SmartHostConfig, description="relay through another server"
    )


class TrustConfig(_Section):
    sign_outbound: bool = Field(
        True, description="DKIM-sign mail our users send from our domains (RSA and Ed25519)"
    )
    verify_inbound: bool = Field(
        True, description="check SPF, DKIM, ARC and DMARC of mail arriving on the MX and add "
        "Authentication-Results"
    )
    enforce_dmarc: bool = Field(
        True, description="honour DMARC policies: p=reject refused with 550 5.7.1, "
        "p=quarantine delivered to Junk"
    )
    trust_arc: bool = Field(
        True, description="keep a DMARC-failing message whose ARC chain passes and was sealed "
        "by one of arc_trusted_sealers, after DMARC passed there (forwarded mail)"
    )
    arc_trusted_sealers: list[str] = Field(
        default_factory=list, description="domains (ARC-Seal d=) of forwarders and mailing "
        "lists whose ARC verdicts we believe; empty: no ARC chain overrides DMARC"
    )
    arc_seal: bool = Field(
        True, description="add an ARC set to mail forwarded by aliases to remote addresses"
    )
    arc_domain: str = Field(
        "", description="domain whose keys seal ARC sets; empty: the hostname's parent domain"
    )
    dns: Literal["system", "off"] = Field(
        "system", description="where inbound checks (SPF, DKIM, ARC, DMARC) and 'mailstead dns "
        "--check' look names up when delivery.resolvers is empty: 'system' (the resolvers in "
        "resolv_conf, even while delivery.internet is off: lookups only, no mail leaves) or "
        "'off' (no lookups: the checks are not enforced, and serve says so at start)"
    )
    resolv_conf: str = Field(
        "/etc/resolv.conf", description="the system's resolver configuration, read when dns = "
        "'system'"
    )
    verify_timeout: float = Field(
        20.0, description="seconds all checks of one message may take before it is accepted "
        "unjudged", gt=0,
    )
    dkim_dir: str = Field(
        "dkim", description="where an earlier version kept DKIM keys (relative: data dir); "
        "they are moved into the store, which every node shares, when first needed"
    )
    mta_sts: bool = Field(
        True, description="fetch receiving domains' MTA-STS policies (RFC 8461): under "
        "'enforce' deliver only to the MX hosts they name, over TLS with a verified certificate "
        "(CA: delivery.tls_ca_file, else the system's)"
    )
    mta_sts_port: int = Field(
        443, description="HTTPS port MTA-STS policies are fetched from", ge=1, le=65535
    )
    mta_sts_mode: Literal["none", "testing", "enforce"] = Field(
        "testing", description="mode of the MTA-STS policy served for our own domains at "
        "https://mta-sts.<domain>/.well-known/mta-sts.txt (publish the TXT record 'mailstead "
        "dns' prints; 'enforce' once your certificate is a real one)"
    )


class MetricsConfig(_Section):
    prometheus: bool = Field(
        True, description="serve Prometheus metrics at /metrics on the http listeners"
    )
    allow_from: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        description="networks that may read /metrics without the token",
    )
    token: str = Field(
        "", description="a bearer token that may read /metrics from anywhere (empty: none)"
    )
    statsd: str = Field(
        "", description="host:port to send StatsD usage statistics to over UDP (empty: off)"
    )
    statsd_interval: float = Field(
        10.0, description="seconds between two StatsD reports", gt=0
    )
    statsd_prefix: str = Field("mailstead", description="prefix of every StatsD metric name")
    monitor: str = Field(
        "", description="host:port of a 'mailstead monitor' to send usage statistics to over "
        "UDP, tagged with this node's name (empty: off)"
    )
    monitor_interval: float = Field(
        2.0, description="seconds between two reports to the monitor", gt=0
    )
    node_name: str = Field(
        "", description="this node's name in the monitor's per-server counts (empty: hostname)"
    )
    monitor_page: str = Field(
        "", description="address of the monitor's web page (e.g. http://127.0.0.1:9125/), "
        "linked from the admin console's overview (empty: no link)"
    )
    monitor_addresses: Literal["off", "hashed", "plain"] = Field(
        "off", description="per-message events to the monitor name sender and recipient: 'off' "
        "(counts per protocol only), 'hashed' (local part hashed, domain kept) or 'plain'"
    )

    @field_validator("statsd", "monitor")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        if value:
            host_and_port(value)
        return value


def host_and_port(text: str, *, bind: bool = False) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6); ValueError when it is not that. An address to
    ``bind`` may have port 0 (any free port)."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    lowest = 0 if bind else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port")
    return host, int(port)


class SpamConfig(_Section):
    enabled: bool = Field(
        True, description="score mail arriving on the MX (rules plus each recipient's learning "
        "filter), add X-Spam-Flag, X-Spam-Score and X-Spam-Status, file spam in Junk"
    )
    junk_score: float = Field(
        5.0, description="score from which a message is spam: flagged YES and filed in Junk"
    )
    reject_score: float = Field(
        15.0, description="rules score from which the MX refuses a message (550 5.7.1); "
        "0 never refuses", ge=0,
    )
    bayes: bool = Field(
        True, description="each user's learning filter, trained by moving mail into and out "
        "of Junk and by the $Junk / $NotJunk keywords"
    )
    bayes_min_spam: int = Field(
        20, description="spam messages a user must have trained before the filter speaks", ge=1
    )
    bayes_min_ham: int = Field(
        20, description="good messages a user must have trained before the filter speaks", ge=1
    )


class AcmeConfig(_Section):
    enabled: bool = Field(
        False, description="get and renew a real certificate over ACME (RFC 8555, HTTP-01 on "
        "an http listener that answers on port 80 of every name)"
    )
    directory: str = Field(
        "https://acme-v02.api.letsencrypt.org/directory",
        description="the ACME server's directory URL (Let's Encrypt by default)",
    )
    email: str = Field("", description="contact address given to the ACME server (optional)")
    names: list[str] = Field(
        default_factory=list, description="names the certificate is for (empty: the hostname, "
        "and mta-sts.<domain> and autoconfig.<domain> of every mail domain)"
    )
    renew_before_days: float = Field(
        30, description="renew when the certificate has fewer days left than this", gt=0
    )
    check_interval: float = Field(
        3600, description="seconds between two looks at the certificate (renewal due? a newer "
        "one from another node?)", gt=0
    )
    ca_bundle: str = Field(
        "", description="CA file to trust for the ACME server's own HTTPS (a private or test "
        "ACME server); empty: the system's"
    )


class MonitorConfig(_Section):
    listen: str = Field(
        "127.0.0.1:8125", description="UDP host:port where 'mailstead monitor' receives the "
        "nodes' statistics (their metrics.monitor)"
    )
    http: str = Field(
        "127.0.0.1:9125", description="host:port of the monitor's JSON (/stats.json) and "
        "Prometheus (/metrics) pages (empty: none)"
    )

    @field_validator("listen", "http")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        if value:
            host_and_port(value, bind=True)
        return value


class ForwardingConfig(_Section):
    srs: bool = Field(
        True, description="rewrite the envelope sender of mail forwarded to remote addresses "
        "(aliases, Sieve redirect) with SRS (SRS0=hash=time=domain=local@srs_domain), so the "
        "next server's SPF checks pass; bounces to such addresses are reversed to the sender"
    )
    srs_domain: str = Field(
        "", description="domain of the rewritten senders (must be one of ours, with our MX); "
        "empty: the domain of our address that forwards (the alias's), else the first of "
        "'domains', else the first local domain"
    )
    srs_max_age_days: int = Field(
        21, description="days an SRS address stays valid for bounces", ge=1, le=1000
    )


class ListsConfig(_Section):
    max_entries: int = Field(
        1000, description="allow and block list entries a user or a domain may hold", ge=1
    )


class DnsblConfig(_Section):
    zones: list[str] = Field(
        default_factory=list, description="DNS blocklist zones (e.g. zen.spamhaus.org) asked "
        "about each client address (reversed IPv4 octets or IPv6 nibbles under the zone) "
        "through the inbound checks' resolver; empty: the dnsbl check is off"
    )
    phase: Literal["connect", "rcpt"] = Field(
        "connect", description="when a listed client is judged: 'connect' (554 before the "
        "greeting) or 'rcpt' (each RCPT refused, so postmaster@ can still be reached)"
    )
    action: Literal["reject", "score"] = Field(
        "reject", description="'reject' refuses a listed client (554 5.7.1); 'score' adds "
        "'points' to the spam score of its mail instead"
    )
    points: float = Field(5.0, description="spam points a listing adds when action = 'score'")
    exempt: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"], description="client networks "
        "never looked up"
    )


class ChecksConfig(_Section):
    # Extra tables are the plug-ins' own options: [checks.NAME] (plain values and lists).
    model_config = ConfigDict(extra="allow", validate_assignment=True)

    enabled: list[str] = Field(
        default_factory=list, description="plug-in checks to run, in this order (names of "
        "entry points of the group 'mailstead.checks', of 'modules', or 'dnsbl'); empty: every "
        "installed one, then 'modules', then dnsbl when it has zones"
    )
    modules: list[str] = Field(
        default_factory=list, description="checks loaded by module path, 'pkg.mod:factory' or "
        "'name=pkg.mod:factory' (for a plug-in that is not installed as a package)"
    )
    filters: list[str] = Field(
        default_factory=list, description="delivery filters loaded by module path (besides "
        "entry points of the group 'mailstead.filters')"
    )
    entry_points: bool = Field(
        True, description="load the plug-ins installed packages offer as entry points"
    )
    submission: bool = Field(
        False, description="run the plug-ins on the submission listeners too (our users' "
        "mail); the built-in checks never judge it"
    )
    timeout: float = Field(
        10.0, description="seconds one hook of one plug-in may take; longer counts as an "
        "error", gt=0,
    )
    on_error: Literal["accept", "tempfail"] = Field(
        "accept", description="what a plug-in that fails or times out says: 'accept' (logged "
        "and ignored) or 'tempfail' (451 4.3.0: the client tries again later)"
    )
    dnsbl: DnsblConfig = Field(
        default_factory=DnsblConfig, description="the DNS blocklist check shipped with mailstead"
    )

    @field_validator("modules", "filters")
    @classmethod
    def _specs(cls, value: list[str]) -> list[str]:
        for spec in value:
            target = spec.partition("=")[2] if "=" in spec else spec
            if ":" not in target:
                raise ValueError(f"{spec!r} is not 'package.module:factory'")
        return value

    @model_validator(mode="after")
    def _plugin_tables(self) -> ChecksConfig:
        for name, table in (self.model_extra or {}).items():
            if not isinstance(table, dict) or not all(
                    isinstance(v, bool | int | float | str | list) for v in table.values()):
                raise ValueError(f"checks.{name} must be a table of plain values (the options "
                                 "of the check of that name)")
        return self


class ServerConfig(_Section):
    workers: int = Field(
        0, description="processes that serve the listeners (SMTP, IMAP, POP3, DMTP/DMAP, web), "
        "each on its own core; 0 = one per CPU core, 1 = everything in one process (not to be "
        "confused with delivery.workers, the outbound queue workers)", ge=0, le=256,
    )


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")


class Config(_Section):
    hostname: str = Field("mail.example.test", description="this server's name (EHLO, banners)")
    domains: list[str] = Field(
        default_factory=list,
        description="mail domains created at start if missing (more: mailstead domain add)",
    )
    listeners: dict[str, ListenerConfig] = Field(
        default_factory=_default_listeners, description="network listeners by name"
    )
    store: StoreConfig = Field(default_factory=StoreConfig, description="where data is kept")
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS certificate and key")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="limits and timeouts")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="authentication policy")
    smtp: SmtpConfig = Field(default_factory=SmtpConfig, description="SMTP message acceptance")
    dmtp: DmtpConfig = Field(default_factory=DmtpConfig, description="DMTP/DMAP compatibility")
    delivery: DeliveryConfig = Field(
        default_factory=DeliveryConfig, description="outbound delivery: queue, DNS, retries"
    )
    web: WebConfig = Field(
        default_factory=WebConfig, description="webmail, sign-up, admin console and API"
    )
    trust: TrustConfig = Field(
        default_factory=TrustConfig, description="DKIM, SPF, DMARC, ARC and MTA-STS"
    )
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="monitoring: Prometheus and StatsD"
    )
    spam: SpamConfig = Field(
        default_factory=SpamConfig, description="spam scoring and the learning filter"
    )
    forwarding: ForwardingConfig = Field(
        default_factory=ForwardingConfig, description="forwarding to remote addresses (SRS)"
    )
    lists: ListsConfig = Field(
        default_factory=ListsConfig, description="allow and block lists of senders"
    )
    log: LogConfig = Field(default_factory=LogConfig, description="logging")
    acme: AcmeConfig = Field(
        default_factory=AcmeConfig, description="real certificates over ACME (RFC 8555)"
    )
    monitor: MonitorConfig = Field(
        default_factory=MonitorConfig, description="'mailstead monitor': where it listens"
    )
    server: ServerConfig = Field(
        default_factory=ServerConfig, description="processes of mailstead serve"
    )
    checks: ChecksConfig = Field(
        default_factory=ChecksConfig, description="inbound check and delivery filter plug-ins"
    )

    # Not read from the file: where it was loaded from.
    data_dir: Path = Field(default=Path(DEFAULT_DATA_DIR), exclude=True)

    def path(self, relative: str) -> Path:
        """A path from the config, resolved against the data directory."""
        p = Path(relative)
        return p if p.is_absolute() else self.data_dir / p

    @property
    def sqlite_path(self) -> Path | None:
        if not self.store.url.startswith("sqlite:///"):
            return None
        return self.path(self.store.url.removeprefix("sqlite:///"))


def resolve_data_dir(data: str | os.PathLike[str] | None) -> Path:
    """--data, else $MAILSTEAD_DATA, else ./var."""
    chosen = data if data is not None else os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR
    return Path(chosen).absolute()


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def load_config(data_dir: Path, *, must_exist: bool = True) -> Config:
    """Reads ``data_dir/mailstead.toml``. Raises ConfigError with one clear line."""
    file = data_dir / CONFIG_FILE
    raw: dict[str, Any] = {}
    if file.exists():
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    elif must_exist:
        raise ConfigError(f"{file} does not exist (run 'mailstead init' first)")
    # Merged over the defaults, so a file that names one listener keeps the others, and a
    # listener written partially keeps the defaults of the same name.
    defaults = Config().model_dump(exclude={"data_dir"})
    try:
        cfg = Config.model_validate(deep_merge(defaults, raw))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{file}: option {_loc(err['loc'])}: {err['msg']}") from None
    cfg.data_dir = data_dir
    return cfg


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Nested dict update: {"listeners": {"imap": {"port": 0}}} changes only that port."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_listen_override(cfg: Config, spec: str) -> None:
    """``--listen NAME=ADDR:PORT`` (e.g. ``imap=127.0.0.1:0``); enables the listener."""
    name, sep, target = spec.partition("=")
    if not sep or name not in cfg.listeners:
        known = ", ".join(cfg.listeners)
        raise ConfigError(f"--listen {spec!r}: expected NAME=ADDRESS:PORT with NAME one of {known}")
    address, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not address:
        raise ConfigError(f"--listen {spec!r}: expected ADDRESS:PORT after '='")
    listener = cfg.listeners[name]
    listener.address = address.strip("[]")
    listener.port = int(port)
    listener.enabled = True


# ---------------------------------------------------------------------------------------------
# Rendering the effective configuration as commented TOML


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r} as TOML")


def _render_section(model: BaseModel, header: str | None, out: list[str],
                    defaults: BaseModel | None = None) -> None:
    """``defaults``: the model's own defaults where they differ per entry (each listener)."""
    tables: list[tuple[str, BaseModel | dict[str, BaseModel], str]] = []
    if header:
        out.append(f"\n[{header}]")
    for name, info in type(model).model_fields.items():
        if info.exclude:
            continue
        value = getattr(model, name)
        if isinstance(value, BaseModel) or (
            isinstance(value, dict) and all(isinstance(v, BaseModel) for v in value.values())
        ):
            tables.append((name, value, info.description or ""))
            continue
        default = getattr(defaults, name) if defaults is not None else \
            info.get_default(call_default_factory=True)
        if default is PydanticUndefined or value == default:
            note = ""
        else:
            note = f" (default: {_toml_value(default)})"
        out.append(f"# {info.description}{note}")
        out.append(f"{name} = {_toml_value(value)}")
    for name, value, description in tables:
        full = f"{header}.{name}" if header else name
        if isinstance(value, dict):
            out.append(f"\n# {description}")
            entry_defaults = _default_listeners() if name == "listeners" else {}
            for key, sub in value.items():
                _render_section(sub, f"{full}.{key}", out, entry_defaults.get(key))
        else:
            out.append(f"\n# {description}")
            _render_section(value, full, out)
    for name, table in (model.model_extra or {}).items():
        if isinstance(table, dict):  # a plug-in's own options ([checks.NAME])
            out.append(f"\n[{header}.{name}]" if header else f"\n[{name}]")
            out.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())


def render_toml(cfg: Config) -> str:
    """The effective configuration as TOML, each option preceded by its description."""
    out = [f"# mailstead configuration ({cfg.data_dir / CONFIG_FILE})"]
    _render_section(cfg, None, out)
    return "\n".join(out) + "\n"
