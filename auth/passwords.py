"""Password hashing (argon2id) and the failed-login throttle.

Verification costs the same whether or not the account exists: an unknown account is checked
against a dummy hash made with the same parameters. The throttle counts failures per account
(tenant + email) and per client address in Redis, atomically, so a burst of parallel guesses
cannot slip past the limit, and it answers the same way whether or not the account exists.
"""

from __future__ import annotations

import hashlib

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from core.errors import ApiError
from core.store import get_redis, setting

# RFC 9106 "low memory" profile (argon2id, t=3, m=64 MiB, p=4): argon2-cffi's default.
_hasher = PasswordHasher()
_dummy_hash: str | None = None

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # bounds the work one login request can ask of the KDF

THROTTLED_MESSAGE = "Too many failed login attempts; try again later."


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``, ready to store."""
    return _hasher.hash(password)


def _dummy() -> str:
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash("streamgate-no-such-account")
    return _dummy_hash


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; ``None`` (no such account) costs the same and is False."""
    try:
        if password_hash is None:
            _hasher.verify(_dummy(), password)
            return False
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """True when a stored hash was made with weaker parameters than today's."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


def check_password_policy(password: str) -> None:
    """Refuse passwords too short to resist guessing or too long to hash cheaply (422)."""
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        message = f"Must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters."
        raise ApiError(422, "Password rejected: " + message, errors={"password": [message]})


# --- failed-login throttle ----------------------------------------------------------------------

# KEYS: account counter, address counter. ARGV: max failures, window seconds.
# Refuse (returning the seconds to wait) if either counter is full; otherwise count this attempt
# as a failure up front, so parallel attempts cannot all pass the check. Success undoes it.
_RESERVE = """
local wait = 0
for i = 1, 2 do
  local n = tonumber(redis.call('GET', KEYS[i]) or '0')
  if n >= tonumber(ARGV[1]) then
    local ttl = redis.call('TTL', KEYS[i])
    if ttl < 1 then
      redis.call('EXPIRE', KEYS[i], ARGV[2])
      ttl = tonumber(ARGV[2])
    end
    if ttl > wait then wait = ttl end
  end
end
if wait > 0 then return wait end
for i = 1, 2 do
  if redis.call('INCR', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], ARGV[2]) end
end
return 0
"""

# A successful login clears the account's failures and takes back its own attempt from the
# address (the address keeps its other failures: one good account must not reset a scanner).
_SUCCEED = """
redis.call('DEL', KEYS[1])
local n = tonumber(redis.call('GET', KEYS[2]) or '0')
if n > 0 then redis.call('DECR', KEYS[2]) end
return 0
"""


def _throttle_keys(tenant_slug: str, email: str, client_addr: str) -> list[str]:
    account = hashlib.sha256(f"{tenant_slug}\0{email}".encode()).hexdigest()
    # One hash tag: both counters live in one slot, so the scripts work on Redis Cluster.
    return [f"sg:{{login}}:acct:{account}", f"sg:{{login}}:addr:{client_addr}"]


def reserve_login_attempt(tenant_slug: str, email: str, client_addr: str) -> None:
    """Count a login attempt against the account and the address, or raise 429 if either is full."""
    wait = get_redis().register_script(_RESERVE)(
        keys=_throttle_keys(tenant_slug, email, client_addr),
        args=[setting("LOGIN_MAX_FAILURES"), setting("LOGIN_WINDOW_S")],
    )
    if int(wait) > 0:
        raise ApiError(
            429, THROTTLED_MESSAGE, headers={"Retry-After": str(int(wait))}, code="login_throttled"
        )


def login_succeeded(tenant_slug: str, email: str, client_addr: str) -> None:
    """Forget the account's failures and give the address back this attempt."""
    get_redis().register_script(_SUCCEED)(keys=_throttle_keys(tenant_slug, email, client_addr))
