"""The cryptography of DMAP's ``startsecure`` handshake (the MailService seed's protocol).

1. The server answers ``startsecure`` with ``ok <component-id>``; the client knows that
   component's RSA public key.
2. The client sends, RSA-encrypted and base64-encoded, ``ok <challenge> <aes-key> <iv>`` (the
   last three base64 too).
3. The server answers ``ok <challenge>`` AES-CTR encrypted; the client confirms with ``ok``.
4. From then on every line is AES-CTR encrypted and base64-encoded.

Compatibility choices, matching the seed's Java clients:
- RSA: the seed encrypts with ``RSA/ECB/PKCS1Padding`` (PKCS #1 v1.5), so that is what we
  decrypt. OAEP (SHA-256) is tried first so that new clients can use the better padding.
  Every failure gives the same answer, so the handshake is no padding oracle.
- AES-CTR: the seed calls ``Cipher.doFinal`` for each line, which restarts the counter at the
  IV, so every line is encrypted with the same keystream from its start. We do the same (it is
  what makes the seed's clients interoperate); it is weaker than one running counter, which
  is why TLS-protected IMAP/POP3 remain the recommended access.

Pure code: no sockets, no files (the caller loads and stores the PEM key).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

RSA_KEY_BITS = 2048
AES_KEY_SIZES = (16, 24, 32)
IV_SIZE = 16


class HandshakeError(Exception):
    """The client's startsecure message could not be used (one message for every cause)."""


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
    """The public half, in the X.509 SubjectPublicKeyInfo PEM form Java's X509EncodedKeySpec
    reads (what the seed's clients load as ``<component-id>_pub.pem``)."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HandshakeError("not base64") from None


def _rsa_decrypt(key: rsa.RSAPrivateKey, blob: bytes) -> bytes:
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    try:
        return key.decrypt(blob, oaep)
    except ValueError:
        pass
    try:
        return key.decrypt(blob, padding.PKCS1v15())
    except ValueError:
        raise HandshakeError("cannot decrypt") from None


class LineCipher:
    """AES-CTR over single lines, each starting from the IV (see the module docstring)."""

    def __init__(self, key: bytes, iv: bytes) -> None:
        if len(key) not in AES_KEY_SIZES or len(iv) != IV_SIZE:
            raise ValueError("AES key must be 16, 24 or 32 bytes and the IV 16 bytes")
        self._key = key
        self._iv = iv

    def _apply(self, data: bytes) -> bytes:
        # CTR encryption and decryption are the same keystream XOR.
        ctx = Cipher(algorithms.AES(self._key), modes.CTR(self._iv)).encryptor()
        return ctx.update(data) + ctx.finalize()

    def encrypt(self, text: str) -> str:
        return base64.b64encode(self._apply(text.encode("utf-8"))).decode("ascii")

    def decrypt(self, line: str) -> str:
        """Raises ValueError when the line is not base64."""
        try:
            data = base64.b64decode(line.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not base64") from None
        return self._apply(data).decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class Handshake:
    challenge: str  # as the client sent it (base64 text), echoed back in "ok <challenge>"
    cipher: LineCipher


def open_client_hello(key: rsa.RSAPrivateKey, line: str) -> Handshake:
    """Decrypts ``ok <challenge> <aes-key> <iv>`` (step 2). Raises HandshakeError."""
    plaintext = _rsa_decrypt(key, _b64decode(line.strip()))
    try:
        parts = plaintext.decode("ascii").split()
    except UnicodeDecodeError:
        raise HandshakeError("not text") from None
    if len(parts) != 4 or parts[0] != "ok":
        raise HandshakeError("expected: ok <challenge> <aes-key> <iv>")
    _b64decode(parts[1])  # the challenge must be base64 too
    try:
        cipher = LineCipher(_b64decode(parts[2]), _b64decode(parts[3]))
    except ValueError:
        raise HandshakeError("bad AES key or IV size") from None
    return Handshake(parts[1], cipher)
