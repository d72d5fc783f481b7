"""Password hashing with argon2id (argon2-cffi's recommended parameters, RFC 9106)."""

from __future__ import annotations

import functools

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from mailstead.core.errors import InvalidInput

_hasher = PasswordHasher()



@functools.cache
def dummy_hash() -> str:
    """Checked against so an unknown user costs as much as a known one (no user enumeration
    by timing). Made on first use: hashing at import would slow every CLI command."""
    return _hasher.hash("mailstead-dummy-password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def check_password_rules(password: str, min_length: int) -> None:
    """Raises InvalidInput saying what is wrong with a new password."""
    if not password:
        raise InvalidInput("the password is empty")
    if len(password) < min_length:
        raise InvalidInput(f"the password is shorter than {min_length} characters")
    if password.strip() != password:
        raise InvalidInput("the password starts or ends with white space")
    if len(set(password)) < 3:
        raise InvalidInput("the password is too weak (too few distinct characters)")
    if any(ord(c) < 32 for c in password):
        raise InvalidInput("the password contains control characters")
