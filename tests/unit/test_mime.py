"""MIME part tree, sections, ENVELOPE and BODYSTRUCTURE against RFC examples and hand-derived
expectations. Expected IMAP bytes are written out in full so a change in what clients see
shows up as a failing test."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imapclient.response_parser import parse_fetch_response

from mailstead.proto import mime, mime_imap, mime_scan
from mailstead.proto.imap_sexpr import encode
from mailstead.proto.mime import Part, SectionSpecError, UnknownEncoding
from mailstead.proto.mime_encoding import decode_quoted_printable
from mailstead.proto.mime_imap import SectionSpec


def crlf(text: str) -> bytes:
    """Test messages are written with '\\n' and stored with CRLF, as on the wire."""
    return text.replace("\n", "\r\n").encode("utf-8")


def bs(data: bytes, extended: bool = True) -> bytes:
    return encode(mime_imap.bodystructure(data, mime.parse(data), extended))


def env(data: bytes) -> bytes:
    return encode(mime_imap.envelope(data, mime.parse(data)))


def sec(data: bytes, spec: str) -> bytes | None:
    return mime_imap.section(data, mime.parse(data), spec)


# --------------------------------------------------------------------------------------------
# RFC 3501 examples, reproduced byte for byte

# The sample message of RFC 3501 section 8: a body of 92 lines in 3028 octets.
RFC3501_HEADER = crlf(
    """Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)
From: Terry Gray <gray@cac.washington.edu>
Subject: IMAP4rev1 WG mtg summary and minutes
To: imap@cac.washington.edu
cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>
Message-Id: <B27397-0100000@cac.washington.edu>
MIME-Version: 1.0
Content-Type: TEXT/PLAIN; CHARSET=US-ASCII

"""
)
RFC3501_BODY = b"".join(b"x" * 31 + b"\r\n" for _ in range(91)) + b"y" * 23 + b"\r\n"
RFC3501_MESSAGE = RFC3501_HEADER + RFC3501_BODY


def test_rfc3501_sample_envelope_and_body() -> None:
    assert len(RFC3501_BODY) == 3028
    assert env(RFC3501_MESSAGE) == (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'((NIL NIL "imap" "cac.washington.edu")) '
        b'((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) '
        b'NIL NIL "<B27397-0100000@cac.washington.edu>")'
    )
    assert bs(RFC3501_MESSAGE, extended=False) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92)'
    )


def rfc3501_multipart() -> bytes:
    """A message giving the BODYSTRUCTURE example of RFC 3501 section 7.4.2."""
    text = b"".join(b"t" * 48 + b"\r\n" for _ in range(22)) + b"u" * 50 + b"\r\n"
    diff = b"".join(b"A" * 60 + b"\r\n" for _ in range(72)) + b"B" * 88 + b"\r\n"
    assert (len(text), len(diff)) == (1152, 4554)
    return (
        crlf(
            """From: someone@example.test
MIME-Version: 1.0
Content-Type: MULTIPART/MIXED; BOUNDARY="rfc-example"

--rfc-example
Content-Type: TEXT/PLAIN; CHARSET=US-ASCII

"""
        )
        + text
        + crlf(
            """
--rfc-example
Content-Type: TEXT/PLAIN; CHARSET=US-ASCII; NAME=cc.diff
Content-ID: <960723163407.20117h@cac.washington.edu>
Content-Description: Compiler diff
Content-Transfer-Encoding: BASE64

"""
        )
        + diff
        + crlf("\n--rfc-example--\n")
    )


def test_rfc3501_bodystructure_example() -> None:
    assert bs(rfc3501_multipart(), extended=False) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152 23)'
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII" "NAME" "cc.diff") '
        b'"<960723163407.20117h@cac.washington.edu>" "Compiler diff" "BASE64" 4554 73) "MIXED")'
    )
    assert bs(rfc3501_multipart()) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152 23 NIL NIL NIL NIL)'
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII" "NAME" "cc.diff") '
        b'"<960723163407.20117h@cac.washington.edu>" "Compiler diff" "BASE64" 4554 73 '
        b'NIL NIL NIL NIL) "MIXED" ("BOUNDARY" "rfc-example") NIL NIL NIL)'
    )


# --------------------------------------------------------------------------------------------
# A simple text message

SIMPLE = crlf(
    """Return-Path: <alice@example.test>
From: Alice Example <alice@example.test>
To: Bob <bob@example.test>
Subject: Lunch tomorrow?
Date: Tue, 04 Mar 2025 10:15:00 +0100
Message-ID: <lunch-1@example.test>
MIME-Version: 1.0
Content-Type: text/plain; charset="UTF-8"
Content-Transfer-Encoding: 8bit

Hi Bob,

shall we meet at noon?

Alice
"""
)
SIMPLE_BODY = crlf("Hi Bob,\n\nshall we meet at noon?\n\nAlice\n")


def test_simple_bodystructure_and_body() -> None:
    assert bs(SIMPLE) == b'("text" "plain" ("charset" "UTF-8") NIL NIL "8bit" 44 5 NIL NIL NIL NIL)'
    assert bs(SIMPLE, extended=False) == b'("text" "plain" ("charset" "UTF-8") NIL NIL "8bit" 44 5)'


def test_simple_envelope_defaults_sender_and_reply_to_to_from() -> None:
    alice = b'(("Alice Example" NIL "alice" "example.test"))'
    assert env(SIMPLE) == (
        b'("Tue, 04 Mar 2025 10:15:00 +0100" "Lunch tomorrow?" '
        + b" ".join([alice, alice, alice])
        + b' (("Bob" NIL "bob" "example.test")) NIL NIL NIL "<lunch-1@example.test>")'
    )


def test_simple_sections() -> None:
    header, body = SIMPLE.split(b"\r\n\r\n", 1)
    assert sec(SIMPLE, "") == SIMPLE
    assert sec(SIMPLE, "HEADER") == header + b"\r\n\r\n"
    assert sec(SIMPLE, "TEXT") == body == SIMPLE_BODY
    # A single-part message has exactly one part, 1, which is its body.
    assert sec(SIMPLE, "1") == SIMPLE_BODY
    assert sec(SIMPLE, "1.MIME") == header + b"\r\n\r\n"
    assert sec(SIMPLE, "2") is None
    assert sec(SIMPLE, "1.2") is None
    assert sec(SIMPLE, "header.fields (subject FROM)") == (
        b"From: Alice Example <alice@example.test>\r\nSubject: Lunch tomorrow?\r\n\r\n"
    )
    assert sec(SIMPLE, "HEADER.FIELDS (X-Absent)") == b"\r\n"
    not_fields = sec(SIMPLE, 'HEADER.FIELDS.NOT (Return-Path "Content-Type" MIME-Version TO)')
    assert not_fields == crlf(
        """From: Alice Example <alice@example.test>
Subject: Lunch tomorrow?
Date: Tue, 04 Mar 2025 10:15:00 +0100
Message-ID: <lunch-1@example.test>
Content-Transfer-Encoding: 8bit

"""
    )


def test_partial_fetch_is_a_slice_of_the_section() -> None:
    # BODY[TEXT]<7.16>: the IMAP layer slices the section octets (RFC 3501 section 6.4.5).
    text = sec(SIMPLE, "TEXT")
    assert text is not None
    assert text[7:23] == b"\r\n\r\nshall we mee"
    assert text[41 : 41 + 100] == b"e\r\n"  # a partial that runs past the end is cut short
    assert text[500:600] == b""


def test_simple_part_attributes() -> None:
    root = mime.parse(SIMPLE)
    assert root.content_type == ("text", "plain")
    assert root.charset == "UTF-8"
    assert root.transfer_encoding == "8bit"
    assert (root.size, root.lines) == (44, 5)
    assert root.header_start == 0
    assert root.body_end == len(SIMPLE)
    assert root.headers[1] == ("From", "Alice Example <alice@example.test>")
    assert mime.header_value(SIMPLE, root, "subject") == "Lunch tomorrow?"
    assert mime.header_value(SIMPLE, root, "X-Nothing") is None
    assert not mime.has_attachment(root)


# --------------------------------------------------------------------------------------------
# multipart/mixed with a nested multipart/alternative and a base64 attachment

PDF = b"%PDF-1.4\n%\xc3\xa4\xc3\xbc\xc3\xb6\xc3\x9f\n"
MIXED = crlf(
    f"""From: Carol <carol@example.test>
To: alice@example.test
Subject: Report
Date: Wed, 05 Mar 2025 09:00:00 +0000
Message-ID: <report@example.test>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

This is a multi-part message in MIME format.
--outer
Content-Type: multipart/alternative; boundary="inner"

--inner
Content-Type: text/plain; charset=us-ascii
Content-Transfer-Encoding: 7bit

See attached.
--inner
Content-Type: text/html; charset=us-ascii
Content-Transfer-Encoding: quoted-printable

<p>See <b>attached</b>.</p>
--inner--

--outer
Content-Type: application/pdf; name="report.pdf"
Content-Disposition: attachment; filename="report.pdf"
Content-Transfer-Encoding: base64

{base64.b64encode(PDF).decode()}
--outer--
"""
)


def test_mixed_bodystructure() -> None:
    assert bs(MIXED) == (
        b'((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 13 1 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "quoted-printable" 27 1 NIL NIL NIL NIL)'
        b' "alternative" ("boundary" "inner") NIL NIL NIL)'
        b'("application" "pdf" ("name" "report.pdf") NIL NIL "base64" 28 NIL'
        b' ("attachment" ("filename" "report.pdf")) NIL NIL)'
        b' "mixed" ("boundary" "outer") NIL NIL NIL)'
    )
    assert bs(MIXED, extended=False) == (
        b'((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 13 1)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "quoted-printable" 27 1) "alternative")'
        b'("application" "pdf" ("name" "report.pdf") NIL NIL "base64" 28) "mixed")'
    )


def test_mixed_sections() -> None:
    assert sec(MIXED, "1.1") == b"See attached."
    assert sec(MIXED, "1.2") == b"<p>See <b>attached</b>.</p>"
    assert sec(MIXED, "1.2.MIME") == crlf(
        "Content-Type: text/html; charset=us-ascii\n"
        "Content-Transfer-Encoding: quoted-printable\n\n"
    )
    assert sec(MIXED, "2") == base64.b64encode(PDF)
    assert sec(MIXED, "1") == crlf(
        """--inner
Content-Type: text/plain; charset=us-ascii
Content-Transfer-Encoding: 7bit

See attached.
--inner
Content-Type: text/html; charset=us-ascii
Content-Transfer-Encoding: quoted-printable

<p>See <b>attached</b>.</p>
--inner--
"""
    )
    assert sec(MIXED, "1.3") is None
    assert sec(MIXED, "3") is None
    # HEADER / TEXT after a part number need a message/rfc822 part.
    assert sec(MIXED, "2.HEADER") is None
    assert sec(MIXED, "2.TEXT") is None


def test_mixed_binary_and_attachment() -> None:
    root = mime.parse(MIXED)
    assert mime_imap.binary_section(MIXED, root, "2") == PDF
    assert mime_imap.binary_section(MIXED, root, "1.2") == b"<p>See <b>attached</b>.</p>"
    assert mime_imap.binary_section(MIXED, root, "") == MIXED
    assert mime_imap.binary_section(MIXED, root, "4") is None
    assert mime.has_attachment(root)
    attachment = root.children[1]
    assert attachment.filename == "report.pdf"
    assert attachment.disposition == "attachment"
    assert attachment.content_type == ("application", "pdf")
    assert root.children[0].children[1].charset == "us-ascii"


def test_mixed_search_text_has_every_text_part_decoded() -> None:
    text = mime.text_for_search(MIXED)
    assert "See attached." in text
    assert "See  attached ." in text  # the html part, tags removed
    assert "PDF" not in text and "This is a multi-part" not in text


# --------------------------------------------------------------------------------------------
# A forwarded message (message/rfc822)

INNER = crlf(
    """From: Carol <carol@example.test>
Subject: Report
Message-ID: <report@example.test>
Content-Type: multipart/alternative; boundary=alt

--alt
Content-Type: text/plain

plain
--alt
Content-Type: text/html

<i>html</i>
--alt--"""
)
FORWARD = (
    crlf(
        """From: Bob <bob@example.test>
To: Alice <alice@example.test>
Subject: Fwd: Report
Date: Thu, 06 Mar 2025 12:00:00 +0000
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=fwd

--fwd
Content-Type: text/plain

Forwarding this.
--fwd
Content-Type: message/rfc822
Content-Disposition: inline

"""
    )
    + INNER
    + crlf("\n--fwd--\n")
)


def test_forward_bodystructure() -> None:
    carol = b'(("Carol" NIL "carol" "example.test"))'
    inner_envelope = (
        b'(NIL "Report" ' + b" ".join([carol] * 3) + b' NIL NIL NIL NIL "<report@example.test>")'
    )
    inner_lines = INNER.count(b"\r\n") + 1
    assert bs(FORWARD) == (
        b'(("text" "plain" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 16 1 NIL NIL NIL NIL)'
        b'("message" "rfc822" NIL NIL NIL "7BIT" %d ' % len(INNER)
        + inner_envelope
        + b' (("text" "plain" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 5 1 NIL NIL NIL NIL)'
        b'("text" "html" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 11 1 NIL NIL NIL NIL)'
        b' "alternative" ("boundary" "alt") NIL NIL NIL)'
        b' %d NIL ("inline" NIL) NIL NIL)' % inner_lines
        + b' "mixed" ("boundary" "fwd") NIL NIL NIL)'
    )
    assert bs(FORWARD, extended=False) == (
        b'(("text" "plain" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 16 1)'
        b'("message" "rfc822" NIL NIL NIL "7BIT" %d ' % len(INNER)
        + inner_envelope
        + b' (("text" "plain" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 5 1)'
        b'("text" "html" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 11 1) "alternative")'
        b" %d)" % inner_lines
        + b' "mixed")'
    )


def test_forward_sections() -> None:
    inner_header, inner_text = INNER.split(b"\r\n\r\n", 1)
    assert sec(FORWARD, "2") == INNER
    assert sec(FORWARD, "2.MIME") == crlf(
        "Content-Type: message/rfc822\nContent-Disposition: inline\n\n"
    )
    assert sec(FORWARD, "2.HEADER") == inner_header + b"\r\n\r\n"
    assert sec(FORWARD, "2.TEXT") == inner_text
    assert sec(FORWARD, "2.HEADER.FIELDS (SUBJECT message-id)") == crlf(
        "Subject: Report\nMessage-ID: <report@example.test>\n\n"
    )
    assert sec(FORWARD, "2.1") == b"plain"
    assert sec(FORWARD, "2.2") == b"<i>html</i>"
    assert sec(FORWARD, "2.2.MIME") == crlf("Content-Type: text/html\n\n")
    assert sec(FORWARD, "2.3") is None
    assert sec(FORWARD, "1") == b"Forwarding this."


def test_single_part_inside_rfc822() -> None:
    message = crlf(
        """Subject: outer
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: message/rfc822

Subject: inner

inner text
--b--
"""
    )
    assert sec(message, "1") == crlf("Subject: inner\n\ninner text")
    assert sec(message, "1.1") == b"inner text"  # the inner message's only part
    assert sec(message, "1.TEXT") == b"inner text"
    assert sec(message, "1.HEADER") == crlf("Subject: inner\n\n")
    assert sec(message, "1.2") is None


def test_top_level_message_rfc822() -> None:
    # The root *is* the message, so its part 1 is its body: the whole encapsulated message.
    message = crlf("Content-Type: message/rfc822\n\nSubject: inner\n\nbody")
    assert sec(message, "1") == crlf("Subject: inner\n\nbody")
    assert sec(message, "1.1") == b"body"
    assert sec(message, "1.HEADER") == crlf("Subject: inner\n\n")


def test_digest_parts_default_to_message_rfc822() -> None:
    digest = crlf(
        """Content-Type: multipart/digest; boundary=d

--d

From: x@y
Subject: one

body one
--d
Content-Type: text/plain

not a message
--d--
"""
    )
    assert bs(digest) == (
        b'(("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 35 (NIL "one" ((NIL NIL "x" "y")) '
        b'((NIL NIL "x" "y")) ((NIL NIL "x" "y")) NIL NIL NIL NIL NIL) '
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 8 1 NIL NIL NIL NIL) 4 '
        b"NIL NIL NIL NIL)"
        b'("text" "plain" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 13 1 NIL NIL NIL NIL)'
        b' "digest" ("boundary" "d") NIL NIL NIL)'
    )
    assert sec(digest, "1.1") == b"body one"


# --------------------------------------------------------------------------------------------
# Headers: RFC 6532 UTF-8, raw 8-bit, RFC 2047 encoded words, groups


UTF8_HEADERS = (
    "From: Jörg Müller <jörg@bücher.example>\n"
    "To: 李 <li@例子.example>\n"
    "Subject: Grüße aus Köln\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: 8bit\n"
    "\n"
    "Schöne Grüße\n"
).replace("\n", "\r\n").encode("utf-8")


def test_utf8_headers_are_kept_as_utf8_strings() -> None:
    subject = "Grüße aus Köln".encode()
    mailbox_host = b" NIL {5}\r\nj\xc3\xb6rg {15}\r\nb\xc3\xbccher.example))"
    jorg = b"((" + encode("Jörg Müller") + mailbox_host
    assert env(UTF8_HEADERS) == (
        b"(NIL {%d}\r\n%s " % (len(subject), subject)
        + b" ".join([jorg, jorg, jorg])
        + b' (({3}\r\n\xe6\x9d\x8e NIL "li" ' + encode("例子.example") + b")) NIL NIL NIL NIL)"
    )
    # A UTF8=ACCEPT session may send them quoted (RFC 9051 / RFC 6855).
    accepted = encode(mime_imap.envelope(UTF8_HEADERS), utf8_ok=True)
    assert b'"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln"' in accepted
    fields = mime.parse_envelope_fields(UTF8_HEADERS)
    assert fields.subject == "Grüße aus Köln"
    assert fields.from_ == "Jörg Müller <jörg@bücher.example>"
    assert fields.to == "李 <li@例子.example>"
    assert "Schöne Grüße" in mime.text_for_search(UTF8_HEADERS)


def test_raw_latin1_header_octets_do_not_break_parsing() -> None:
    message = b"Subject: Caf\xe9 cr\xe8me\r\nFrom: Ren\xe9 <rene@example.test>\r\n\r\nbody\r\n"
    root = mime.parse(message)
    assert root.get("Subject") == "Café crème"
    assert mime_imap.envelope(message, root)[1] == "Café crème"
    assert mime.parse_envelope_fields(message).from_ == "René <rene@example.test>"
    assert sec(message, "HEADER.FIELDS (SUBJECT)") == b"Subject: Caf\xe9 cr\xe8me\r\n\r\n"


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("=?ISO-8859-1?Q?Andr=E9?= Pirard", "André Pirard"),
        ("=?UTF-8?B?SGVsbG8=?= =?UTF-8?B?IFdvcmxk?=", "Hello World"),
        # RFC 2047 section 8 examples.
        ("(=?ISO-8859-1?Q?a?=)", "(a)"),
        ("(=?ISO-8859-1?Q?a?= b)", "(a b)"),
        ("(=?ISO-8859-1?Q?a?= =?ISO-8859-1?Q?b?=)", "(ab)"),
        ("(=?ISO-8859-1?Q?a?=  \r\n    =?ISO-8859-1?Q?b?=)", "(ab)"),
        ("(=?ISO-8859-1?Q?a_b?=)", "(a b)"),
        ("(=?ISO-8859-1?Q?a?= =?ISO-8859-2?Q?_b?=)", "(a b)"),
        # A character split across two words of the same charset.
        ("=?UTF-8?Q?caf=C3?= =?UTF-8?Q?=A9?=", "café"),
        ("=?US-ASCII*EN?Q?Keith_Moore?=", "Keith Moore"),  # RFC 2231 language tag
        ("=?x-no-such-charset?Q?caf=C3=A9?=", "café"),
        ("=?utf-8?X?not-a-word?=", "=?utf-8?X?not-a-word?="),
        ("plain text", "plain text"),
        ("Re: =?utf-8?b?w6k=?=", "Re: é"),
    ],
)
def test_decoded_header(raw: str, decoded: str) -> None:
    assert mime.decoded_header(raw) == decoded


def test_encoded_words_stay_raw_in_envelope_and_decoded_in_store_fields() -> None:
    message = crlf(
        """From: =?UTF-8?Q?Andr=C3=A9?= <andre@example.test>
To: "Doe, Jane" <jane@example.test>, bob@example.test (Bob B.)
Subject: =?UTF-8?B?UsOpc3Vtw6k=?=
Date: Fri, 07 Mar 2025 08:30:00 -0000
In-Reply-To: <a@example.test>

x
"""
    )
    envelope = mime_imap.envelope(message)
    assert envelope[1] == "=?UTF-8?B?UsOpc3Vtw6k=?="
    assert encode(envelope[2]) == b'(("=?UTF-8?Q?Andr=C3=A9?=" NIL "andre" "example.test"))'
    assert encode(envelope[5]) == (
        b'(("Doe, Jane" NIL "jane" "example.test")("Bob B." NIL "bob" "example.test"))'
    )
    assert envelope[8] == "<a@example.test>"
    fields = mime.parse_envelope_fields(message)
    assert fields.subject == "Résumé"
    assert fields.from_ == "André <andre@example.test>"
    assert fields.to == '"Doe, Jane" <jane@example.test>, Bob B. <bob@example.test>'
    assert fields.date == datetime(2025, 3, 7, 8, 30, tzinfo=UTC)
    assert fields.in_reply_to == "<a@example.test>"
    assert fields.message_id == ""


def test_groups_route_and_odd_addresses_in_envelope() -> None:
    message = crlf(
        """From: "Joe Q. Public" <john.q.public@example.com>
Sender: <@relay.test,@hub.test:mary@x.test>
To: A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;
Cc: Undisclosed recipients:;
Bcc: just-a-name, "quoted local"@example.test
Reply-To:

"""
    )
    envelope = mime_imap.envelope(message)
    assert encode(envelope[3]) == b'((NIL "@relay.test,@hub.test" "mary" "x.test"))'
    # Reply-To present but empty: same as From (RFC 3501 section 7.4.2).
    assert encode(envelope[4]) == b'(("Joe Q. Public" NIL "john.q.public" "example.com"))'
    assert encode(envelope[5]) == (
        b'((NIL NIL "A Group" NIL)("Ed Jones" NIL "c" "a.test")(NIL NIL "joe" "where.test")'
        b'("John" NIL "jdoe" "one.test")(NIL NIL NIL NIL))'
    )
    assert encode(envelope[6]) == b'((NIL NIL "Undisclosed recipients" NIL)(NIL NIL NIL NIL))'
    assert encode(envelope[7]) == (
        b'((NIL NIL "just-a-name" "")(NIL NIL "\\"quoted local\\"" "example.test"))'
    )
    assert envelope[0] is None and envelope[1] is None and envelope[9] is None


def test_envelope_dates() -> None:
    def date_of(value: str) -> datetime | None:
        return mime.parse_envelope_fields(crlf(f"Date: {value}\n\n")).date

    assert date_of("Tue, 04 Mar 2025 10:15:00 +0100") == datetime(
        2025, 3, 4, 10, 15, tzinfo=timezone(timedelta(hours=1))
    )
    assert date_of("4 Mar 2025 10:15 -0000") == datetime(2025, 3, 4, 10, 15, tzinfo=UTC)
    assert date_of("yesterday, around noon") is None
    assert date_of("") is None
    assert mime.parse_envelope_fields(b"").date is None


# --------------------------------------------------------------------------------------------
# Robustness: bare LF, no body, no header, missing end boundary, parameters


def test_bare_lf_message() -> None:
    message = (
        b"From: a@example.test\nSubject: lf\nContent-Type: multipart/mixed; boundary=x\n\n"
        b"--x\nContent-Type: text/plain\n\none\ntwo\n--x\n\nsecond\n--x--\n"
    )
    assert sec(message, "HEADER") == (
        b"From: a@example.test\nSubject: lf\nContent-Type: multipart/mixed; boundary=x\n\n"
    )
    assert sec(message, "1") == b"one\ntwo"
    assert sec(message, "1.MIME") == b"Content-Type: text/plain\n\n"
    assert sec(message, "2") == b"second"
    assert sec(message, "2.MIME") == b"\n"
    assert sec(message, "HEADER.FIELDS (subject)") == b"Subject: lf\n\r\n"
    assert bs(message) == (
        b'(("text" "plain" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 7 2 NIL NIL NIL NIL)'
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 6 1 NIL NIL NIL NIL)'
        b' "mixed" ("boundary" "x") NIL NIL NIL)'
    )


def test_message_without_body() -> None:
    message = b"From: a@example.test\r\nSubject: nobody"
    assert sec(message, "HEADER") == message
    assert sec(message, "TEXT") == b""
    assert sec(message, "1") == b""
    assert sec(message, "HEADER.FIELDS (SUBJECT)") == b"Subject: nobody\r\n\r\n"
    assert bs(message) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0 NIL NIL NIL NIL)'
    )
    assert mime_imap.envelope(message)[1] == "nobody"


def test_message_without_header() -> None:
    message = b"just some text\r\nand more\r\n"
    root = mime.parse(message)
    assert root.fields == []
    assert sec(message, "HEADER") == b""
    assert sec(message, "TEXT") == message
    assert sec(message, "HEADER.FIELDS (FROM)") == b"\r\n"
    assert env(message) == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
    assert bs(message, extended=False) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 26 2)'
    )
    assert mime.parse(b"").body_end == 0
    assert sec(b"", "") == b""


def test_missing_end_boundary_keeps_the_last_part_to_the_end() -> None:
    message = crlf(
        """Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/plain

first
--b

second part, cut off"""
    )
    root = mime.parse(message)
    assert len(root.children) == 2
    assert sec(message, "1") == b"first"
    assert sec(message, "2") == b"second part, cut off"
    assert root.children[1].body_end == len(message)


def test_multipart_without_any_boundary_line_still_has_one_part() -> None:
    message = crlf("Content-Type: multipart/mixed; boundary=nowhere\n\nno parts at all\n")
    assert bs(message, extended=False) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 17 1) "mixed")'
    )
    assert sec(message, "1") == crlf("no parts at all\n")


def test_multipart_without_boundary_parameter_is_text() -> None:
    message = crlf("Content-Type: multipart/mixed\n\nhello\n")
    assert bs(message, extended=False) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 7 1)'
    )


def test_boundary_prefix_of_inner_boundary_is_not_a_delimiter() -> None:
    message = crlf(
        """Content-Type: multipart/mixed; boundary=ab

--ab
Content-Type: multipart/alternative; boundary=abc

--abc

one
--abc

two
--abc--
--ab--
"""
    )
    root = mime.parse(message)
    assert len(root.children) == 1
    assert sec(message, "1.1") == b"one"
    assert sec(message, "1.2") == b"two"


def test_invalid_content_type_falls_back_to_text_plain() -> None:
    message = crlf("Content-Type: garbage\nContent-Transfer-Encoding: x-weird\n\nhi\n")
    root = mime.parse(message)
    assert root.content_type == ("text", "plain")
    assert bs(message, extended=False) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "x-weird" 4 1)'
    )
    with pytest.raises(UnknownEncoding) as caught:
        mime_imap.binary_section(message, root, "1")
    assert caught.value.encoding == "x-weird"


def test_parameters_rfc2231_and_lenient_values() -> None:
    message = crlf(
        """Content-Type: multipart/mixed; boundary="b"

--b
Content-Type: application/octet-stream;
 name*0*=UTF-8''%E2%82%AC%20rates;
 name*1=".txt"
Content-Disposition: attachment (comment); filename=my report 2025.xlsx

data
--b
Content-Type: image/png; name="=?UTF-8?Q?b=C3=BCro.png?="
Content-Disposition: inline
Content-Language: en, de
Content-Location: http://example.test/b.png
Content-ID: <img1@example.test>

png
--b--
"""
    )
    root = mime.parse(message)
    first, second = root.children
    assert first.params["name"] == "€ rates.txt"
    assert first.filename == "my report 2025.xlsx"
    assert second.filename == "büro.png"
    assert bs(message) == (
        b'(("application" "octet-stream" ("name*" "UTF-8\'\'%E2%82%AC%20rates.txt")'
        b' NIL NIL "7BIT" 4 NIL ("attachment" ("filename" "my report 2025.xlsx")) NIL NIL)'
        b'("image" "png" ("name" "=?UTF-8?Q?b=C3=BCro.png?=") "<img1@example.test>" NIL "7BIT" 3'
        b' NIL ("inline" NIL) ("en" "de") "http://example.test/b.png")'
        b' "mixed" ("boundary" "b") NIL NIL NIL)'
    )
    assert mime.has_attachment(root)


def test_inline_text_is_not_an_attachment() -> None:
    message = crlf(
        """Content-Type: multipart/alternative; boundary=b

--b
Content-Type: text/plain
Content-Disposition: inline; filename=note.txt

hi
--b--
"""
    )
    assert not mime.has_attachment(mime.parse(message))


def test_binary_decodes_quoted_printable_and_sloppy_base64() -> None:
    message = crlf(
        """Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

Caf=E9 cr=E8me, soft=
 break
--b
Content-Type: application/octet-stream
Content-Transfer-Encoding: base64

AAEC
A/8
--b--
"""
    )
    root = mime.parse(message)
    assert mime_imap.binary_section(message, root, "1") == b"Caf\xe9 cr\xe8me, soft break"
    assert mime_imap.binary_section(message, root, "2") == b"\x00\x01\x02\x03\xff"
    assert "café crème, soft break" in mime.text_for_search(message, root).lower()
    with pytest.raises(SectionSpecError):
        mime_imap.binary_section(message, root, "1.MIME")


def test_search_text_strips_html_and_decodes_charsets() -> None:
    message = crlf(
        """Content-Type: text/html; charset=windows-1252
Content-Transfer-Encoding: base64

"""
    ) + base64.b64encode(
        b"<html><style>p {color: red}</style><p>Price: 5&nbsp;&euro; \x93quoted\x94</p></html>"
    )
    text = mime.text_for_search(message)
    assert "Price: 5\xa0€ “quoted”" in text
    assert "color" not in text


def test_hostile_nesting_is_bounded() -> None:
    depth = 500
    level = b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n"
    message = b"".join(level % (i, i) for i in range(depth)) + b"\r\nleaf\r\n"
    root = mime.parse(message)
    encode(mime_imap.bodystructure(message, root))  # no RecursionError
    levels = 0
    part: Part | None = root
    while part is not None and part.children:
        part = part.children[0]
        levels += 1
    assert levels <= mime.MAX_DEPTH + 1


def test_many_parts_are_bounded() -> None:
    message = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\nx\r\n" * 30000
    root = mime.parse(message)
    assert sum(1 for _ in root.walk()) <= mime.MAX_PARTS + 1
    assert root.children[-1].body_end == len(message)  # the rest stays in the last part


# --------------------------------------------------------------------------------------------
# Section specs


@pytest.mark.parametrize(
    ("text", "parsed", "echo"),
    [
        ("", SectionSpec(), ""),
        ("HEADER", SectionSpec((), "HEADER"), "HEADER"),
        ("text", SectionSpec((), "TEXT"), "TEXT"),
        ("1", SectionSpec((1,)), "1"),
        ("1.2", SectionSpec((1, 2)), "1.2"),
        ("1.2.MIME", SectionSpec((1, 2), "MIME"), "1.2.MIME"),
        ("3.header", SectionSpec((3,), "HEADER"), "3.HEADER"),
        ("2.TEXT", SectionSpec((2,), "TEXT"), "2.TEXT"),
        (
            "HEADER.FIELDS (FROM To)",
            SectionSpec((), "HEADER.FIELDS", ("FROM", "To")),
            "HEADER.FIELDS (FROM To)",
        ),
        (
            '4.1.header.fields.not ("Subject" X-Y)',
            SectionSpec((4, 1), "HEADER.FIELDS.NOT", ("Subject", "X-Y")),
            "4.1.HEADER.FIELDS.NOT (Subject X-Y)",
        ),
        (
            'HEADER.FIELDS ("a b")',
            SectionSpec((), "HEADER.FIELDS", ("a b",)),
            'HEADER.FIELDS ("a b")',
        ),
    ],
)
def test_parse_section_spec(text: str, parsed: SectionSpec, echo: str) -> None:
    assert mime_imap.parse_section_spec(text) == parsed
    assert str(parsed) == echo


@pytest.mark.parametrize(
    "text",
    [
        "0",
        "1.0",
        "01",
        "1.",
        ".1",
        "MIME",
        "HEADER.FIELDS",
        "HEADER.FIELDS ()",
        "HEADER.FIELDS (FROM",
        "HEADERS",
        "1.BODY",
        "TEXT ",
        'HEADER.FIELDS ("unterminated)',
    ],
)
def test_bad_section_specs(text: str) -> None:
    with pytest.raises(SectionSpecError):
        mime_imap.parse_section_spec(text)


def test_section_accepts_a_parsed_spec() -> None:
    spec = mime_imap.parse_section_spec("HEADER.FIELDS (SUBJECT)")
    expected = b"Subject: Lunch tomorrow?\r\n\r\n"
    assert mime_imap.section(SIMPLE, mime.parse(SIMPLE), spec) == expected


# --------------------------------------------------------------------------------------------
# Properties over arbitrary and message-shaped input


def check_offsets(part: Part, lo: int, hi: int) -> None:
    assert lo <= part.header_start <= part.header_end == part.body_start <= part.body_end <= hi
    for f in part.fields:
        assert part.header_start <= f.start < f.end <= part.header_end
    previous = part.body_start
    for child in part.children:
        assert child.header_start >= previous  # in order, never overlapping
        check_offsets(child, part.body_start, part.body_end)
        previous = child.body_end
    if part.encapsulated is not None:
        assert part.encapsulated.header_start == part.body_start
        check_offsets(part.encapsulated, part.body_start, part.body_end)


def exercise(data: bytes) -> None:
    root = mime.parse(data)
    check_offsets(root, 0, len(data))
    assert mime_imap.section(data, root, "") == data
    header = mime_imap.section(data, root, "HEADER")
    text = mime_imap.section(data, root, "TEXT")
    assert header is not None and text is not None and header + text == data
    encode(mime_imap.bodystructure(data, root))
    encode(mime_imap.bodystructure(data, root, extended=False))
    encode(mime_imap.envelope(data, root))
    mime.text_for_search(data, root)
    mime.parse_envelope_fields(data)
    mime.has_attachment(root)
    for spec in ("1", "1.MIME", "2.1", "1.HEADER", "2.TEXT", "HEADER.FIELDS (FROM SUBJECT)"):
        mime_imap.section(data, root, spec)
    for numbers in ("1", "2", "1.1", "2.2"):
        try:
            mime_imap.binary_section(data, root, numbers)
        except UnknownEncoding:
            pass


@given(st.binary(max_size=3000))
def test_arbitrary_bytes_parse(data: bytes) -> None:
    exercise(data)


LINE_END = st.sampled_from(["\r\n", "\n"])
FRAGMENTS = st.sampled_from(
    [
        "Content-Type: multipart/mixed; boundary=a",
        "Content-Type: multipart/alternative; boundary=b",
        'Content-Type: multipart/digest; boundary="a"',
        "Content-Type: message/rfc822",
        "Content-Type: message/global",
        "Content-Type: text/html; charset=x-unknown",
        "Content-Type: text/plain; charset*=utf-8''%FF%FE",
        "Content-Transfer-Encoding: base64",
        "Content-Transfer-Encoding: quoted-printable",
        "Content-Disposition: attachment; filename*0*=x; filename*1=y",
        "From: =?utf-8?q?J=C3=B6rg?= <j@x>, grp: a@b, <c@d>;",
        "To: (comment) <@route:x@y>, \"q\\\"\" <>, ,",
        "Subject: =?utf-8?b?w6k?= =?bogus?q?=ZZ?=",
        "Date: Mon, 1 Jan 2024 00:00:00 +9999",
        "X-8bit: \xe9\xff",
        " folded continuation",
        "",
        "--a",
        "--a--",
        "--b",
        "--b--",
        "body text line",
        "=E9=",
        "QUJD",
        "not a header line",
        "<p>html&amp;</p>",
    ]
)


@settings(max_examples=300)
@given(st.lists(st.tuples(FRAGMENTS, LINE_END), max_size=40), st.booleans())
def test_message_shaped_input_parses(lines: list[tuple[str, str]], trailing: bool) -> None:
    text = "".join(fragment + end for fragment, end in lines)
    data = text.encode("latin-1")
    exercise(data if trailing else data.rstrip(b"\r\n"))


# --------------------------------------------------------------------------------------------
# What a real client library makes of our output: imapclient's FETCH response parser.


def as_imaplib_response(response: bytes) -> list[bytes | tuple[bytes, bytes]]:
    """Split a response the way imaplib returns it: each literal as (line, literal data)."""
    out: list[bytes | tuple[bytes, bytes]] = []
    pos = 0
    literal_start = re.compile(rb"\{(\d+)\}\r\n")
    while (m := literal_start.search(response, pos)) is not None:
        size = int(m.group(1))
        out.append((response[pos : m.end() - 2], response[m.end() : m.end() + size]))
        pos = m.end() + size
    out.append(response[pos:])
    return out


def client_view(data: bytes) -> dict[bytes, Any]:
    root = mime.parse(data)
    response = b"1 (BODYSTRUCTURE %s ENVELOPE %s BODY %s)" % (
        encode(mime_imap.bodystructure(data, root)),
        encode(mime_imap.envelope(data, root)),
        encode(mime_imap.bodystructure(data, root, extended=False)),
    )
    parsed = parse_fetch_response(as_imaplib_response(response), uid_is_key=False)
    return dict(parsed[1])


def test_imapclient_reads_mixed_message() -> None:
    view = client_view(MIXED)
    structure = view[b"BODYSTRUCTURE"]
    assert structure.is_multipart
    alternative, attachment = structure[0]
    assert structure[1] == b"mixed"
    assert [p[:2] for p in alternative[0]] == [(b"text", b"plain"), (b"text", b"html")]
    assert attachment[:2] == (b"application", b"pdf")
    assert attachment[6] == 28
    assert attachment[8] == (b"attachment", (b"filename", b"report.pdf"))
    envelope = view[b"ENVELOPE"]
    assert envelope.subject == b"Report"
    assert envelope.from_[0].mailbox == b"carol" and envelope.from_[0].host == b"example.test"
    assert envelope.to[0].mailbox == b"alice"
    assert view[b"BODY"][1] == b"mixed"


def test_imapclient_reads_forward_and_utf8_and_groups() -> None:
    structure = client_view(FORWARD)[b"BODYSTRUCTURE"]
    forwarded = structure[0][1]
    assert forwarded[:2] == (b"message", b"rfc822")
    assert forwarded[6] == len(INNER)
    assert forwarded[7][1] == b"Report"  # the encapsulated envelope
    # The encapsulated body: imapclient leaves nested multiparts flat, (part, part, subtype, ...).
    assert forwarded[8][2] == b"alternative"

    envelope = client_view(UTF8_HEADERS)[b"ENVELOPE"]
    assert envelope.subject.decode() == "Grüße aus Köln"
    assert envelope.from_[0].name.decode() == "Jörg Müller"

    group_message = crlf("To: friends: a@x.test, b@y.test;, c@z.test\n\nhi\n")
    to = client_view(group_message)[b"ENVELOPE"].to
    assert [(a.mailbox, a.host) for a in to] == [
        (b"friends", None),
        (b"a", b"x.test"),
        (b"b", b"y.test"),
        (None, None),
        (b"c", b"z.test"),
    ]


@settings(max_examples=100)
@given(st.lists(st.tuples(FRAGMENTS, LINE_END), max_size=30))
def test_imapclient_parses_whatever_we_produce(lines: list[tuple[str, str]]) -> None:
    data = "".join(fragment + end for fragment, end in lines).encode("latin-1")
    view = client_view(data)
    assert b"BODYSTRUCTURE" in view and b"ENVELOPE" in view and b"BODY" in view


# --------------------------------------------------------------------------------------------
# More hostile input


def test_html_with_many_stray_angle_brackets_is_searchable() -> None:
    # Would take minutes with a backtracking tag pattern; stays linear.
    message = b"Content-Type: text/html\r\n\r\n" + b"a < b " * 200_000 + b"<b>end</b>"
    text = mime.text_for_search(message)
    assert text.endswith(" end ")


def test_nul_octets_never_reach_store_fields() -> None:
    message = b"Subject: =?utf-8?q?a=00b?= c\x00d\r\n\r\nx\x00y"
    fields = mime.parse_envelope_fields(message)
    assert fields.subject == "ab cd"
    assert "\x00" not in mime.text_for_search(message)
    assert sec(message, "TEXT") == b"x\x00y"  # the stored bytes themselves are untouched


def test_single_part_attachment_message() -> None:
    message = crlf(
        "Content-Type: application/zip; name=a.zip\nContent-Transfer-Encoding: base64\n\nUEsFBg==\n"
    )
    root = mime.parse(message)
    assert mime.has_attachment(root)
    assert mime_imap.binary_section(message, root, "1") == b"PK\x05\x06"


def test_section_with_a_hand_built_spec() -> None:
    root = mime.parse(MIXED)
    assert mime_imap.section(MIXED, root, SectionSpec((1, 2), "mime")) == sec(MIXED, "1.2.MIME")
    assert mime_imap.section(MIXED, root, SectionSpec((0,))) is None
    assert mime_imap.section(MIXED, root, SectionSpec((1, -1))) is None
    with pytest.raises(SectionSpecError):
        mime_imap.section(MIXED, root, SectionSpec((), "BODY"))


def test_bodystructure_joins_rfc2231_continuations() -> None:
    message = crlf(
        """Content-Type: text/plain; charset=us-ascii;
 title*0="a long ";
 title*1="title";
 NAME*0*=iso-8859-1'fr'caf%E9;
 name*1=" au lait";
 other*=utf-8''x
Content-Disposition: attachment; filename*0="report.";filename*1="txt"

x
"""
    )
    assert bs(message) == (
        b'("text" "plain" ("charset" "us-ascii" "title" "a long title"'
        b' "NAME*" "iso-8859-1\'fr\'caf%E9%20au%20lait" "other*" "utf-8\'\'x")'
        b' NIL NIL "7BIT" 3 1 NIL ("attachment" ("filename" "report.txt")) NIL NIL)'
    )
    root = mime.parse(message)
    assert root.params["name"] == "café au lait"
    assert root.filename == "report.txt"


def test_message_global_gets_an_envelope_only_for_imap4rev2() -> None:
    message = crlf(
        """Content-Type: multipart/mixed; boundary=b

--b
Content-Type: message/global

Subject: Grüße

hi
--b--
"""
    )
    root = mime.parse(message)
    inner = crlf("Subject: Grüße\n\nhi")
    rev1 = encode(mime_imap.bodystructure(message, root, extended=False))
    assert rev1 == b'(("message" "global" NIL NIL NIL "7BIT" %d) "mixed")' % len(inner)
    rev2 = encode(mime_imap.bodystructure(message, root, extended=False, imap4rev2=True),
                  utf8_ok=True)
    assert rev2 == (
        b'(("message" "global" NIL NIL NIL "7BIT" %d' % len(inner)
        + b' (NIL "Gr\xc3\xbc\xc3\x9fe" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 2 1) 3) "mixed")'
    )
    assert sec(message, "1.HEADER") == "Subject: Grüße\r\n\r\n".encode()


@pytest.mark.parametrize(("encoded", "decoded"), [
    (b"abc   \r\nxyz", b"abc\r\nxyz"),  # RFC 2045 6.7 (3): padding blanks go
    (b"soft =  \r\nbreak", b"soft break"),  # (5): "=" then blanks is a soft break
    (b"tab\t\nlf only= \nend", b"tab\nlf onlyend"),
    (b"=3D=20\r\n", b"= \r\n"),  # encoded blanks stay
    (b" " * 100_000 + b"x", b" " * 100_000 + b"x"),  # blanks mid-line stay (and cost little)
    (b"", b""),
])
def test_quoted_printable_decoding_follows_rfc_2045(encoded: bytes, decoded: bytes) -> None:
    assert decode_quoted_printable(encoded) == decoded


# -- bounded work on hostile headers (issue 16) --


def test_header_of_many_fields_is_capped_but_keeps_its_extent_and_key_fields() -> None:
    trace = b"".join(b"Received: from relay%d\r\n\tby mx.example.test\r\n" % i
                     for i in range(mime.MAX_FIELDS + 5000))
    data = (trace + b"From: Carol <carol@example.org>\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n"
            b" ole\r\nContent-Type: text/plain; charset=utf-8\r\nX-Late: dropped\r\n\r\nbody\r\n")
    root = mime.parse(data)
    assert root.header_end == data.index(b"\r\n\r\n") + 4  # BODY[HEADER] is still all of it
    assert data[root.body_start:] == b"body\r\n"
    assert len(root.fields) <= mime.MAX_FIELDS + mime.MAX_LATE_FIELDS
    assert root.get("X-Late") is None  # past the cap only the key fields are kept
    assert mime.decoded_header(root.get("Subject") or "") == "café ole"
    assert root.get("From") == "Carol <carol@example.org>"
    assert root.charset == "utf-8"
    late = next(f for f in root.fields if f.name == "Subject")
    assert data[late.start:late.end] == b"Subject: =?utf-8?q?caf=C3=A9?=\r\n ole\r\n"
    envelope = mime.parse_envelope_fields(data)
    assert envelope.subject == "café ole" and envelope.from_ == "Carol <carol@example.org>"


def test_header_of_many_tiny_fields_parses_in_linear_time() -> None:
    data = b"a:\r\n" * 1_000_000 + b"\r\nbody\r\n"  # would be seconds field by field
    root = mime.parse(data)
    assert len(root.fields) == mime.MAX_FIELDS
    assert data[root.body_start:] == b"body\r\n"


def _regex_delimiters(data: bytes, marker: bytes, start: int, end: int
                      ) -> list[tuple[int, int, bool]]:
    """The reference: RFC 2046 5.1.1 delimiter lines as one regex finds them."""
    pattern = re.compile(rb"^" + re.escape(marker) + rb"(--)?[ \t]*(?:\r?\n|\Z)", re.MULTILINE)
    return [(m.start(), m.end(), m.group(1) is not None)
            for m in pattern.finditer(data, start, end)]


_WIRE_PIECES = [b"--b", b"--b--", b"--", b"-", b"b", b"\r\n", b"\n", b"\r", b" ", b"\t", b"x",
                b"--bb", b"\r\n--b\r\n", b"\n--b--  \n"]


@settings(max_examples=2000)
@given(st.lists(st.sampled_from(_WIRE_PIECES), max_size=30), st.integers(0, 5),
       st.integers(0, 5))
def test_boundary_delimiters_are_found_as_the_rfc_2046_regex_finds_them(
        pieces: list[bytes], cut_start: int, cut_end: int) -> None:
    data = b"".join(pieces)
    start, end = min(cut_start, len(data)), max(len(data) - cut_end, 0)
    if start > end:
        start = end
    if start > 0 and data[start - 1:start] != b"\n":
        return  # a body always starts after a line end (the header's blank line)
    assert list(mime._delimiters(data, b"--b", start, end)) == \
        _regex_delimiters(data, b"--b", start, end)


@pytest.mark.parametrize("data", [
    b"From: A <a@x.test>\r\nTo: b@y.test, \"C D\" <c@z.test>\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n"
    b"Date: Mon, 01 Jan 2024 03:05:00 +0000\r\nMessage-ID: <1@x.test>\r\n"
    b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\n"
    b"hi\r\n--zz\r\nContent-Type: message/rfc822\r\n\r\nFrom: inner@q.test\r\nSubject: in\r\n"
    b"\r\nbody\r\n--zz--\r\n",
    b"Subject: no body",
    b"\r\n\r\nno header at all",
    b"".join(b"Received: from h%d\r\n" % i for i in range(12_000))
    + b"From: late@x.test\r\nSubject: late\r\n\r\nbody",
])
def test_envelope_from_the_header_alone_equals_the_full_parse(data: bytes) -> None:
    """FETCH ENVELOPE parses only the header when no part tree is kept (imap_cmd_fetch)."""
    assert mime_imap.envelope(data, mime.parse_header_only(data)) == \
        mime_imap.envelope(data, mime.parse(data))


# --------------------------------------------------------------------------------------------
# scan_header / single_part (Sieve reads only the fields its tests name): what parse finds.

_SCAN_NAMES = [None, frozenset({"subject", "to"}), frozenset({"content-type", "from", "x-8bit"}),
               frozenset({"k", "x-a.b", "nope", "caf\xe9", "a:b", ""})]


def _same_as_parse(data: bytes) -> None:
    root = mime.parse(data)
    for names in _SCAN_NAMES:
        found = mime_scan.scan_header(data, mime_scan.field_finder(names))
        if found is None:
            continue
        fields, end = found
        assert end == root.header_end
        expected = [f for f in root.fields if names is None or f.name.lower() in names]
        assert [(f.name, f.value, f.start, f.end) for f in fields] == \
            [(f.name, f.value, f.start, f.end) for f in expected]
        if names is not None and {"content-type", "content-transfer-encoding",
                                  "content-disposition"} - names:
            continue
        part = mime_scan.single_part(data, end, fields)
        if part is None:  # left to parse: a multipart (even an unusable one) or a message
            declared = (root.get("Content-Type") or "").lower()
            assert root.is_multipart or root.content_type[0] == "message" or \
                "multipart" in declared
            continue
        assert (part.body_start, part.body_end, part.mime_type, part.params,
                part.transfer_encoding, part.lines, part.disposition, part.filename) == \
            (root.body_start, root.body_end, root.mime_type, root.params,
             root.transfer_encoding, root.lines, root.disposition, root.filename)
        assert [t for _p, t in mime.text_parts(data, part)] == \
            [t for _p, t in mime.text_parts(data, root)]
        model = mime_scan.leaf_model(fields)
        assert model is not None and model.mime_type == root.mime_type
        assert mime_scan.leaf_text(data, end, model) == mime.part_text(data, root)


@pytest.mark.parametrize("data", [
    b"From: A <a@x.test>\r\nTo: b@y.test,\r\n\tc@z.test\r\nSubject: hi\r\nK: kelvin\r\n\r\nbody",
    b"Subject : spaced\r\nsubject:\tlower\r\nSUBJECT: upper\r\nX-A.B: dots\r\n\r\n",
    b"Subject: bare LF\nTo: t@x\n\nbody\n",
    b"Subject: x\r\nnot a field line\r\nTo: late@x\r\n\r\nbody",
    b" Subject: starts folded\r\n\r\nbody",
    b"Subject: no blank line",
    b"Subject: \xe9t\xe9\r\nTo: \xc3\xa9\r\nX-8bit: a\x00b\r\n\r\n",
    b"Subject: x\r\r\nTo: y\r\n\r\n",
    b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: "
    b"quoted-printable\r\n\r\ncaf=E9 here\r\n",
    b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n\r\nhi\r\n--zz--\r\n",
    b"Content-Type: multipart/mixed\r\n\r\nno boundary\r\n",
    b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nbody\r\n",
    b"Content-Type: text/html; name=\"" + b"n" * 3000 + b"\"\r\nContent-Disposition: inline"
    b"\r\nContent-Transfer-Encoding: base64\r\n\r\nPGI+aGk8L2I+\r\n",
    b"Content-Type: text/plain; charset*=utf-8''caf%C3%A9\r\ncontent-type: text/html\r\n"
    b"Content-Disposition: attachment; filename=\"=?utf-8?q?a=C3=A9?=\"\r\n\r\nx\r\n",
    b"\r\n\r\nno header at all",
    b"".join(b"Received: from h%d\r\n" % i for i in range(12_000))
    + b"From: late@x.test\r\nSubject: late\r\n\r\nbody",
])
def test_scanned_fields_are_those_parse_finds(data: bytes) -> None:
    _same_as_parse(data)


@settings(max_examples=300)
@given(st.lists(st.tuples(FRAGMENTS, LINE_END), max_size=40), st.booleans())
def test_scanned_fields_of_message_shaped_input_are_those_parse_finds(
        lines: list[tuple[str, str]], trailing: bool) -> None:
    data = "".join(fragment + end for fragment, end in lines).encode("latin-1")
    _same_as_parse(data if trailing else data.rstrip(b"\r\n"))
