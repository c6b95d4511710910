"""Password hashing with argon2id (argon2-cffi's PasswordHasher, library defaults)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()


def hash_password(plain: str) -> str:
    """An argon2id hash of ``plain``, salted, in PHC string format."""
    return _hasher.hash(plain)


def verify_password(password_hash: str, plain: str) -> bool:
    """True when ``plain`` matches ``password_hash``; False for a wrong password or a bad hash."""
    try:
        return _hasher.verify(password_hash, plain)
    except (VerificationError, InvalidHashError):
        return False
