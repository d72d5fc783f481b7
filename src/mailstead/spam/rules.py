"""Fixed rules that score a message, SpamAssassin-style: each that matches adds its score. Pure.

The rules read the header and the raw body (no MIME decoding: they run on every message the
MX takes, so they must be cheap) and the Authentication-Results our own checks wrote. The
learning filter (bayes.py) does the reading of words; these catch what needs no training.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

# The Generic Test for Unsolicited Bulk Email: a message holding it is spam by definition, so
# anyone can check that the filter is on (https://spamassassin.apache.org/gtube/).
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

_PHRASES = (
    b"viagra", b"cialis", b"you have won", b"lottery", b"wire transfer", b"100% free",
    b"click here to claim", b"act now", b"risk-free", b"cheap meds", b"bitcoin investment",
    b"unclaimed funds", b"dear beneficiary", b"limited time offer",
)
PHRASE_SCAN = 2048  # bytes of body searched for the phrases
# Bytes of body searched for links, as SpamAssassin's body rules see the first 50,000 bytes
# of a part (body_part_scan_size): the search for "://" over all of a 100 KiB message was half
# of this module's time per message (issue 24), and a link that counts comes early.
URL_SCAN = 50_000
LINK_HOPS = 8  # colons visited one by one before the search for "://" goes on in bulk
_IP_URL = re.compile(rb"(?i)https?://\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b")
_ADDRESS_IN_NAME = re.compile(r"[\w.+-]+@([\w-]+(?:\.[\w-]+)+)")
_AUTH = re.compile(rb"\b(spf|dkim|dmarc)=([a-z]+)")
HitSink = Callable[[str, float, str], None]  # records one rule that matched


@dataclass(frozen=True, slots=True)
class Hit:
    name: str
    score: float
    description: str


_WANTED = ("date", "from", "message-id", "subject", "to", "content-type")


def headers_of(message: bytes) -> tuple[dict[str, str], int]:
    """The fields the rules read (lower-case name -> first value, unfolded) and where the body
    starts (the body is searched in place, not copied: it is most of a large message).
    Looked up by name rather than parsing every field: this runs on every message."""
    end = message.find(b"\r\n\r\n")
    head, body = (message, len(message)) if end < 0 else (message[:end], end + 4)
    head = b"\r\n" + head + b"\r\n"
    lowered = head.lower()
    fields: dict[str, str] = {}
    for name in _WANTED:
        start = lowered.find(b"\r\n" + name.encode() + b":")
        if start < 0:
            continue
        start += len(name) + 3
        stop = head.find(b"\r\n", start)
        while head[stop + 2 : stop + 3] in (b" ", b"\t"):  # a folded line goes on
            stop = head.find(b"\r\n", stop + 2)
        value = head[start:stop]
        if b"\r\n" in value:
            value = re.sub(rb"\r\n[ \t]+", b" ", value)
        fields[name] = value.strip().decode("utf-8", "replace")
    return fields, body


def score(message: bytes, auth_results: bytes, now: datetime,
          trusted_forward: bool = False) -> list[Hit]:
    """The rules ``message`` matches. ``trusted_forward``: a forwarder we trust vouches for
    it by ARC, so the SPF, DKIM and DMARC failures its forwarding caused do not count."""
    fields, body = headers_of(message)  # body: its offset in message
    hits: list[Hit] = []

    def hit(name: str, points: float, description: str) -> None:
        hits.append(Hit(name, points, description))

    if message.find(GTUBE, body) >= 0:
        hit("GTUBE", 1000.0, "the GTUBE test string")
    for name, rule, points in (("date", "MISSING_DATE", 1.0), ("from", "MISSING_FROM", 2.0),
                               ("message-id", "MISSING_MID", 0.5),
                               ("subject", "MISSING_SUBJECT", 0.5), ("to", "MISSING_TO", 0.5)):
        if name not in fields:
            hit(rule, points, f"no {name.title()} field")
    _date_rules(fields.get("date"), now, hit)
    subject = fields.get("subject", "")
    letters = [c for c in subject if c.isalpha()]
    if len(letters) >= 10 and all(c.isupper() for c in letters):
        hit("SUBJ_ALL_CAPS", 1.5, "the subject is all capitals")
    if "!!" in subject:
        hit("SUBJ_EXCLAIM", 1.0, "the subject shouts")
    _from_rules(fields.get("from", ""), hit)
    content_type = fields.get("content-type", "").lower()
    if content_type.startswith("text/html"):
        hit("HTML_ONLY", 0.7, "HTML without a plain text part")
    url_end = body + URL_SCAN
    # The find first: the regex only for a message with a link in its start.
    if _has_link(message, body, url_end) and _IP_URL.search(message, body, url_end):
        hit("URL_NUMERIC_IP", 1.5, "a link to a bare IP address")
    # Spam says what it sells early; the start of the body keeps this cheap for long mail.
    start = message[body : body + PHRASE_SCAN]
    lowered = (subject.encode("utf-8", "replace") + b"\n" + start).lower()
    phrases = sum(1 for p in _PHRASES if p in lowered)
    if phrases:
        hit("SPAM_PHRASES", min(phrases, 3) * 1.0, f"{phrases} phrase(s) common in spam")
    if trusted_forward:
        hit("ARC_ALLOW", -1.0, "forwarded by a sealer we trust (ARC)")
    else:
        _auth_rules(auth_results, hit)
    return hits


def _has_link(message: bytes, start: int, end: int) -> bool:
    """Whether ``message[start:end]`` holds "://" (a link's scheme separator). The colons are
    visited first (one-octet ``find``, a memchr): a body without any, or with few (base64,
    most text), is done in microseconds, where the search for "://" through 50,000 octets
    took about 30 us. After LINK_HOPS colons that begin no "://", the rest is searched in
    bulk, so a body full of colons costs no more than before."""
    for _ in range(LINK_HOPS):
        colon = message.find(b":", start, end)
        if colon < 0:
            return False
        if message.startswith(b"//", colon + 1, end):
            return True
        start = colon + 1
    return message.find(b"://", start, end) >= 0


def _date_rules(value: str | None, now: datetime, hit: HitSink) -> None:
    if not value:
        return
    try:
        date = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        hit("INVALID_DATE", 1.0, "a Date field that does not parse")
        return
    if date.tzinfo is None:
        return  # RFC 5322 4.3 "-0000": no zone known, so no comparison
    if date > now + timedelta(days=1):
        hit("DATE_IN_FUTURE", 1.5, "dated more than a day ahead")
    elif date < now - timedelta(days=7):
        hit("DATE_IN_PAST", 1.0, "dated more than a week ago")


def _from_rules(value: str, hit: HitSink) -> None:
    """A display name that holds an address of another domain ("paypal.com" <x@evil.test>)."""
    name, _, address = value.rpartition("<")
    if not name:
        return
    domain = address.rstrip("> ").rpartition("@")[2].lower()
    named = _ADDRESS_IN_NAME.search(name)
    if named and named.group(1).lower() != domain:
        hit("FROM_NAME_SPOOF", 2.0, "the From name shows another address")


_AUTH_RULES = {
    (b"spf", b"fail"): ("SPF_FAIL", 2.0, "SPF says the sender may not use this server"),
    (b"spf", b"softfail"): ("SPF_SOFTFAIL", 1.0, "SPF softfail"),
    (b"dkim", b"fail"): ("DKIM_INVALID", 1.0, "a DKIM signature that does not verify"),
    (b"dmarc", b"fail"): ("DMARC_FAIL", 2.5, "DMARC fails"),
    (b"dmarc", b"pass"): ("DMARC_PASS", -0.5, "DMARC passes"),
}


def _auth_rules(auth_results: bytes, hit: HitSink) -> None:
    """Points from our own SPF, DKIM and DMARC results (mailsec), read from the header."""
    if not auth_results:
        return
    found: dict[bytes, bytes] = {}
    for method, result in _AUTH.findall(auth_results.lower()):
        found.setdefault(method, result)
    for key in found.items():
        rule = _AUTH_RULES.get(key)
        if rule is not None:
            hit(*rule)
