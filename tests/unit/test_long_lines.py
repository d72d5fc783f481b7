"""Re-encoding parts with lines over 998 octets (proto/mime_encoding.py, issue 22) and the bare
line-end normalisation (proto/lines.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailstead.proto import mime, mime_encoding
from mailstead.proto.lines import has_bare_cr_or_lf, normalize_line_ends


def shorten(data: bytes) -> bytes:
    return mime_encoding.shorten_long_lines(data, mime.parse(data))


def longest(data: bytes) -> int:
    return max(map(len, data.split(b"\r\n")))


def decoded_leaves(data: bytes) -> list[tuple[str, bytes]]:
    root = mime.parse(data)
    return [(p.mime_type, mime.decode_transfer_encoding(data[p.body_start:p.body_end],
                                                        p.transfer_encoding))
            for p in root.walk() if not p.is_multipart and p.encapsulated is None]


def test_single_text_part_becomes_quoted_printable_with_mime_version() -> None:
    body = b"<p>" + "é".encode() * 700 + b"x" * 3000 + b"</p>\r\nshort\r\n"
    data = b"From: a@b.test\r\nSubject: s\r\n\r\n" + body
    out = shorten(data)
    assert longest(out) <= 998
    header = out.split(b"\r\n\r\n", 1)[0]
    assert b"Content-Transfer-Encoding: quoted-printable" in header
    assert b"MIME-Version: 1.0" in header
    assert decoded_leaves(out) == [("text/plain", body)]


def test_multipart_only_long_parts_change() -> None:
    short = b"--b\r\nContent-Type: text/plain\r\n\r\nunchanged \xc3\xa9\r\n"
    data = (b"From: a@b.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b"
            b"\r\n\r\n" + short
            + b"--b\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            + b"h" * 2500 + b"\r\n--b\r\nContent-Type: application/json\r\n\r\n" + b"[" * 1200
            + b"\r\n--b\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + b"QUJD" * 500 + b"\r\n--b--\r\n")
    out = shorten(data)
    assert longest(out) <= 998
    assert short in out  # byte for byte
    leaves = decoded_leaves(out)
    assert leaves == [("text/plain", b"unchanged \xc3\xa9"), ("text/html", b"h" * 2500),
                      ("application/json", b"[" * 1200), ("image/png", b"ABC" * 500)]
    types = [p.transfer_encoding for p in mime.parse(out).walk()][1:]
    assert types == ["7bit", "quoted-printable", "base64", "base64"]
    assert out.count(b"Content-Transfer-Encoding") == 3  # the 8bit one replaced, not doubled


def test_long_header_folded_at_white_space() -> None:
    to = b", ".join(b"user%d@example.test" % i for i in range(150))
    data = b"From: a@b.test\r\nTo: " + to + b"\r\nSubject: s\r\n\r\nbody\r\n"
    out = shorten(data)
    assert longest(out) <= 998
    assert mime.parse(out).get("To") == mime.parse(data).get("To")
    assert out.endswith(b"Subject: s\r\n\r\nbody\r\n")


def test_signed_content_is_left_alone() -> None:
    signed = (b"--s\r\nContent-Type: text/plain\r\n\r\n" + b"k" * 1500 + b"\r\n--s\r\n"
              b"Content-Type: application/pgp-signature\r\n\r\nsig\r\n--s--")
    data = (b"From: a@b.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=m"
            b"\r\n\r\n--m\r\nContent-Type: multipart/signed; boundary=s; protocol=\"x\"\r\n\r\n"
            + signed + b"\r\n--m\r\nContent-Type: text/plain\r\n\r\n" + b"t" * 1200
            + b"\r\n--m--\r\n")
    out = shorten(data)
    assert signed in out  # the signature still matches its part
    assert b"t" * 1200 not in out


def test_nothing_long_is_unchanged() -> None:
    data = b"From: a@b.test\r\n\r\n" + b"x" * 998 + b"\r\n"
    assert not mime_encoding.has_long_lines(data)
    assert shorten(data) is data


@given(st.lists(st.binary(max_size=3000).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
                min_size=1, max_size=4),
       st.sampled_from([b"text/plain; charset=utf-8", b"text/html", b"application/x-thing"]))
def test_any_body_decodes_to_the_same_octets(lines: list[bytes], ctype: bytes) -> None:
    body = b"\r\n".join(lines) + b"\r\n"
    data = b"From: a@b.test\r\nMIME-Version: 1.0\r\nContent-Type: " + ctype + b"\r\n\r\n" + body
    out = shorten(data)
    assert longest(out) <= 998
    [(_type, decoded)] = decoded_leaves(out)
    assert decoded == body


@given(st.binary(max_size=200))
def test_normalised_data_has_crlf_only_and_keeps_the_rest(data: bytes) -> None:
    out = normalize_line_ends(data)
    assert not has_bare_cr_or_lf(out)
    assert out.replace(b"\r\n", b"") == data.replace(b"\r\n", b"").replace(b"\r", b"").replace(
        b"\n", b"")


@given(st.lists(st.sampled_from([
    b"Content-Type: multipart/mixed; boundary=b\r\n", b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n", b"Content-Type: message/rfc822\r\n",
    b"Content-Type: multipart/signed; boundary=b\r\n", b"\r\n", b"--b\r\n", b"--b--\r\n",
    b"=" * 1200 + b"\r\n", b"x y" * 500 + b"\r\n", b"\x00" * 1001, b"QUJD" * 300 + b"\r\n",
    b"Subject: " + b"s " * 600 + b"\r\n",
]), max_size=12))
def test_any_message_shortens_without_error(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    out = shorten(data)
    assert isinstance(out, bytes)
    assert not has_bare_cr_or_lf(out) or has_bare_cr_or_lf(data)
