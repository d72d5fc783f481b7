"""mailsec/integrity.py: the state a reader is told, from the DMTP hash or from our own
Authentication-Results (RFC 8601), never from a field someone else wrote."""

from __future__ import annotations

import pytest

from mailstead.core.models import INTEGRITY_KEYWORDS, integrity_of_keywords
from mailstead.mailsec.integrity import DMTP_HEADER_VALUES, dkim_integrity, dmtp_integrity
from mailstead.proto.dmtp import DmtpMessage, compute_hash

SECRET = "course secret"
US = "mx.beta-t.test"


def _dmtp(hash_value: str | None) -> DmtpMessage:
    return DmtpMessage("carol@example.org", ["alice@example.test"], "hi", "pay 10 euros",
                       hash_value)


def test_dmtp_states() -> None:
    good = compute_hash(SECRET, "carol@example.org", ["alice@example.test"], "hi",
                        "pay 10 euros")
    assert dmtp_integrity(SECRET, _dmtp(good)) == "verified"
    assert dmtp_integrity(SECRET, _dmtp(f"  {good} ")) == "verified"
    assert dmtp_integrity(SECRET, _dmtp(None)) == "unsigned"
    assert dmtp_integrity(SECRET, _dmtp("   ")) == "unsigned"
    assert dmtp_integrity(SECRET, _dmtp("d3JvbmcgaGFzaA==")) == "failed"
    tampered = _dmtp(good)
    tampered.data = "pay 1000 euros"
    assert dmtp_integrity(SECRET, tampered) == "failed"
    assert dmtp_integrity("another secret", _dmtp(good)) == "failed"
    # No secret: a hash cannot be checked (unknown), but a message without one is unsigned.
    assert dmtp_integrity("", _dmtp(good)) is None
    assert dmtp_integrity("", _dmtp(None)) == "unsigned"
    assert DMTP_HEADER_VALUES == {"verified": "pass", "unsigned": "none", "failed": "fail"}


def _ar(authserv: str, *methods: str) -> bytes:
    return (f"Authentication-Results: {authserv};\r\n\t" + ";\r\n\t".join(methods)
            + "\r\n").encode()


SPF = "spf=pass smtp.mailfrom=alpha-t.test"
DMARC = "dmarc=pass (p=reject dis=none) header.from=alpha-t.test"


@pytest.mark.parametrize(("methods", "expected"), [
    ((SPF, "dkim=pass header.d=alpha-t.test header.s=s1 header.a=rsa-sha256", DMARC),
     "verified"),
    # relaxed alignment: a subdomain's From under the signing organisation
    ((SPF, "dkim=pass header.d=alpha-t.test header.s=s1",
      "dmarc=pass header.from=news.alpha-t.test"), "verified"),
    # one good signature of the author's domain is enough, a broken third one aside
    ((SPF, "dkim=fail header.d=list.example header.s=x",
      "dkim=pass header.d=alpha-t.test header.s=s1", DMARC), "verified"),
    ((SPF, "dkim=fail header.d=alpha-t.test header.s=s1", "dmarc=fail header.from=alpha-t.test"),
     "failed"),
    ((SPF, "dkim=permerror header.d=alpha-t.test", DMARC), "failed"),
    ((SPF, "dkim=none", "dmarc=none header.from=alpha-t.test"), "unsigned"),
    # signed, but by someone else than the author (a mailing list): not the author's word
    ((SPF, "dkim=pass header.d=list.example header.s=x", DMARC), "unsigned"),
    ((SPF, "dkim=neutral header.d=alpha-t.test", DMARC), "unsigned"),
    # signed, but the key could not be looked up (DNS down or off): unknown, not "unsigned"
    ((SPF, "dkim=temperror header.d=alpha-t.test", DMARC), None),
    # no From domain known: a pass cannot be aligned
    ((SPF, "dkim=pass header.d=alpha-t.test", "dmarc=none"), "unsigned"),
])
def test_outside_mail_states(methods: tuple[str, ...], expected: str | None) -> None:
    assert dkim_integrity(_ar(US, *methods), US) == expected
    assert dkim_integrity(_ar(US.upper() + " 1", *methods), US) == expected  # version, case


def test_only_our_own_field_counts() -> None:
    forged = _ar("mx.beta-t.test.evil", "dkim=pass header.d=alpha-t.test", DMARC)
    theirs = _ar("mx.elsewhere.example", "dkim=pass header.d=alpha-t.test", DMARC)
    ours = _ar(US, SPF, "dkim=fail header.d=alpha-t.test", DMARC)
    assert dkim_integrity(forged + theirs, US) is None  # we did not judge it
    assert dkim_integrity(theirs + ours + forged, US) == "failed"
    assert dkim_integrity(b"", US) is None
    assert dkim_integrity(b"Received-SPF: pass\r\n", US) is None


def test_from_domain_given_and_comments_and_lf_lines() -> None:
    field = (b"Authentication-Results: mx.beta-t.test (our verifier);\n"
             b" dkim=pass (good signature) header.d=Alpha-T.test;\n dmarc=none\n")
    assert dkim_integrity(field, US, "alpha-t.test") == "verified"
    assert dkim_integrity(field, US, "other.example") == "unsigned"
    assert dkim_integrity(field, US) == "unsigned"


def test_keywords_name_the_state() -> None:
    for state, keyword in INTEGRITY_KEYWORDS.items():
        assert integrity_of_keywords(frozenset({keyword, "$Junk"})) == state
    assert integrity_of_keywords(frozenset({"\\Seen"})) is None
    both = {INTEGRITY_KEYWORDS["verified"], INTEGRITY_KEYWORDS["failed"]}
    assert integrity_of_keywords(both) == "failed"
