"""The cryptography of DMAP's ``startsecure`` (the MailService seed's handshake, hardened).

The exchange keeps the seed's messages, with one field added by the server::

    C: startsecure
    S: ok <component-id> <server-nonce>             server-nonce: base64 of 16 random bytes
    C: base64(RSA-OAEP-SHA256("ok <challenge> <secret-key> <iv>"))   the last three base64
    S: sealed("ok <challenge>")                      the client checks its challenge came back
    C: sealed("ok")
    ... every further line, both ways, is sealed ...

Keys. Two AES-256-GCM keys are derived with HKDF-SHA256 (RFC 5869): input keying material
``secret-key || iv`` (the client's random values, 16/24/32 and 16 bytes), salt the server
nonce, info ``"mailstead dmap v1 c2s"`` for the client-to-server key and ``"... s2c"`` for the
server-to-client one. The server nonce is fresh for every ``startsecure``, so even a client
that reuses its key and IV (or an attacker who replays a captured RSA message) gets new keys:
the server never encrypts under the same key and nonce twice, and a captured session cannot be
replayed into a new connection.

Lines. ``sealed(text)`` is ``base64(AES-GCM(key, nonce, utf-8 text))``, the 16-byte tag at the
end (as ``AESGCM.encrypt`` returns it), no associated data. The 96-bit nonce is a 4-byte
direction label (``"c2s\\0"`` / ``"s2c\\0"``) followed by the line's number as a 64-bit
big-endian counter, starting at 0 in each direction. The receiver uses the number it expects
next, so a replayed, reordered, dropped or altered line fails the tag check; the session then
ends (``error ...`` and close): a line is never accepted out of turn.

Deviations from the seed, on purpose: the seed encrypts every line with AES-CTR restarted at
the same IV (``Cipher.doFinal`` per line), so all lines share one keystream and one captured
session yields the password by XOR with any known line; and it has no integrity at all. It
wraps the key with PKCS #1 v1.5, which invites padding-oracle attacks; only OAEP with SHA-256
(MGF1-SHA-256, no label) is accepted here. Seed clients therefore do not interoperate with
``startsecure`` (plain DMAP still works); there is no compatibility mode.

Pure code: no sockets, no files (the caller loads and stores the PEM key).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

RSA_KEY_BITS = 2048
AES_KEY_SIZES = (16, 24, 32)  # what the client may send as <secret-key>
IV_SIZE = 16
SERVER_NONCE_SIZE = 16
TAG_SIZE = 16
MAX_COUNTER = 2**64 - 1

CLIENT_TO_SERVER = "c2s"
SERVER_TO_CLIENT = "s2c"
_INFO = b"mailstead dmap v1 "


class HandshakeError(Exception):
    """The startsecure exchange failed (one message for every cause: no oracle)."""


class ChannelError(Exception):
    """A sealed line was not accepted: not base64, or altered, replayed or out of order."""


def generate_private_key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the DMAP server key must be an RSA key")
    return key


def public_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    """The public half, in the X.509 SubjectPublicKeyInfo PEM form (what the seed's clients
    load as ``<component-id>_pub.pem``)."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def oaep() -> padding.OAEP:
    """RSA-OAEP with SHA-256 and MGF1-SHA-256, empty label (RFC 8017 section 7.1)."""
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def new_server_nonce() -> bytes:
    return secrets.token_bytes(SERVER_NONCE_SIZE)


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HandshakeError("not base64") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def derive_keys(secret_key: bytes, iv: bytes, server_nonce: bytes) -> tuple[bytes, bytes]:
    """(client-to-server key, server-to-client key), 32 bytes each, by HKDF-SHA256."""
    if len(secret_key) not in AES_KEY_SIZES or len(iv) != IV_SIZE:
        raise ValueError("the secret key must be 16, 24 or 32 bytes and the IV 16 bytes")
    if len(server_nonce) != SERVER_NONCE_SIZE:
        raise ValueError("the server nonce must be 16 bytes")

    def one(label: str) -> bytes:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=server_nonce,
                    info=_INFO + label.encode("ascii"))
        return hkdf.derive(secret_key + iv)

    return one(CLIENT_TO_SERVER), one(SERVER_TO_CLIENT)


class _Direction:
    """One direction's key and line counter: the deterministic GCM nonce of NIST SP 800-38D
    section 8.2.1 (a fixed field, then an invocation counter that never repeats)."""

    def __init__(self, key: bytes, label: str) -> None:
        self.aead = AESGCM(key)
        self._prefix = label.encode("ascii") + b"\x00"
        self.counter = 0

    def next_nonce(self) -> bytes:
        if self.counter > MAX_COUNTER:
            raise ChannelError("too many lines on this channel")
        nonce = self._prefix + self.counter.to_bytes(8, "big")
        self.counter += 1
        return nonce


class SecureChannel:
    """Both directions of one secured DMAP connection, as the server or the client sees them.

    A channel that once refused a line stays broken (every later ``open`` fails too): the
    caller is expected to close the connection.
    """

    def __init__(self, secret_key: bytes, iv: bytes, server_nonce: bytes, *, server: bool
                 ) -> None:
        c2s, s2c = derive_keys(secret_key, iv, server_nonce)
        to_server = _Direction(c2s, CLIENT_TO_SERVER)
        to_client = _Direction(s2c, SERVER_TO_CLIENT)
        self._out, self._in = (to_client, to_server) if server else (to_server, to_client)
        self.broken = False

    def seal(self, text: str) -> str:
        """The line to send (base64, no line ending)."""
        nonce = self._out.next_nonce()
        return _b64(self._out.aead.encrypt(nonce, text.encode("utf-8"), None))

    def open(self, line: str) -> str:
        """The text of a received line. Raises ChannelError."""
        if self.broken:
            raise ChannelError("channel closed after an earlier bad line")
        try:
            data = base64.b64decode(line.strip(), validate=True)
        except (binascii.Error, ValueError):
            self.broken = True
            raise ChannelError("expected an encrypted line") from None
        if len(data) < TAG_SIZE:
            self.broken = True
            raise ChannelError("expected an encrypted line")
        try:
            plaintext = self._in.aead.decrypt(self._in.next_nonce(), data, None)
        except InvalidTag:
            self.broken = True
            raise ChannelError("line altered, replayed or out of order") from None
        return plaintext.decode("utf-8", errors="replace")


# -- server side ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Handshake:
    challenge: str  # as the client sent it (base64 text), echoed back in "ok <challenge>"
    channel: SecureChannel


def open_client_hello(key: rsa.RSAPrivateKey, line: str, server_nonce: bytes) -> Handshake:
    """Decrypts ``ok <challenge> <secret-key> <iv>`` and derives the channel's keys with the
    server nonce this connection sent. Raises HandshakeError."""
    try:
        # OAEP only (RFC 8017 section 7.1.2); PKCS #1 v1.5 is refused as a padding-oracle risk.
        plaintext = key.decrypt(_b64decode(line.strip()), oaep())
    except ValueError:
        raise HandshakeError("cannot decrypt") from None
    try:
        parts = plaintext.decode("ascii").split()
    except UnicodeDecodeError:
        raise HandshakeError("not text") from None
    if len(parts) != 4 or parts[0] != "ok":
        raise HandshakeError("expected: ok <challenge> <secret-key> <iv>")
    # The challenge only lets the client check that we read its message; our sealed answer
    # proves that as well (its keys come from the RSA-wrapped values), so any length will do.
    _b64decode(parts[1])  # but it must be base64, as the seed's is
    try:
        channel = SecureChannel(_b64decode(parts[2]), _b64decode(parts[3]), server_nonce,
                                server=True)
    except ValueError:
        raise HandshakeError("bad key, IV or nonce size") from None
    return Handshake(parts[1], channel)


# -- client side ---------------------------------------------------------------------------


class ClientHandshake:
    """The client's half: makes the RSA message, then checks the server's answer."""

    def __init__(self, public_key: rsa.RSAPublicKey) -> None:
        self.public_key = public_key
        self.challenge = _b64(secrets.token_bytes(32))
        self.secret_key = secrets.token_bytes(32)
        self.iv = secrets.token_bytes(IV_SIZE)

    def hello(self) -> str:
        text = f"ok {self.challenge} {_b64(self.secret_key)} {_b64(self.iv)}"
        return _b64(self.public_key.encrypt(text.encode("ascii"), oaep()))

    def finish(self, server_line: str, answer: str) -> tuple[SecureChannel, str]:
        """From the server's ``ok <component-id> <server-nonce>`` and its sealed answer: the
        channel and the sealed ``ok`` to send. Raises HandshakeError when the server did not
        prove it holds the private key (wrong or missing challenge)."""
        parts = server_line.split()
        if len(parts) != 3 or parts[0] != "ok":
            raise HandshakeError("expected: ok <component-id> <server-nonce>")
        try:
            channel = SecureChannel(self.secret_key, self.iv, _b64decode(parts[2]),
                                    server=False)
            echoed = channel.open(answer)
        except (ValueError, ChannelError):
            raise HandshakeError("server answer not accepted") from None
        expected = f"ok {self.challenge}"
        # Constant time, so the comparison says nothing about how much of it matched.
        if not hmac.compare_digest(echoed.encode("utf-8"), expected.encode("ascii")):
            raise HandshakeError("server did not return the challenge")
        return channel, channel.seal("ok")
