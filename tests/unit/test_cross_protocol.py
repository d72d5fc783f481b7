"""Recognising input from another protocol on a mail port (proto/lines.py): HTTP request lines
and the first bytes of a TLS handshake. Real IMAP/POP3/SMTP commands are never taken for them."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstead.proto.lines import is_http_request, is_tls_handshake


@pytest.mark.parametrize("line", [
    b"GET / HTTP/1.1\r\n", b"POST /login HTTP/1.0", b"get /x http/1.1\r\n",
    b"CONNECT mail.example.org:143 HTTP/1.1\r\n", b"OPTIONS * HTTP/1.1",
])
def test_http_request_lines(line: bytes) -> None:
    assert is_http_request(line)


@pytest.mark.parametrize("line", [
    b"a1 GET / HTTP/1.1", b"GET /", b"GET", b"a1 LOGIN user pass", b"RETR 1", b"USER get",
    b"MAIL FROM:<a@b>", b"a1 FETCH 1 (BODY[])", b"GET / HTTP", b"",
])
def test_not_http(line: bytes) -> None:
    assert not is_http_request(line)


def test_a_real_client_hello() -> None:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="x.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert is_tls_handshake(hello[:3]) and is_tls_handshake(hello[:1])


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1))
def test_printable_commands_are_never_tls(text: str) -> None:
    assert not is_tls_handshake(text.encode())
