"""Password hashing (argon2id) off the event loop, and the login throttle.

Verification costs the same whether or not the account exists: an unknown account is checked
against a dummy hash made with the same parameters. A hash (64 MiB, t=3, about a quarter of a
second of CPU) never runs on the gevent loop: it runs in the hub's thread pool (argon2-cffi
releases the GIL), at most ``LOGIN_HASH_CONCURRENCY`` at once per worker, so a login storm
delays other logins, not the streams of the worker.

The throttle (Redis, one atomic script) counts failures per (account, address) pair, with a
softer ceiling per account and per address, and every attempt (successful ones too) per account
and per address per minute; it answers the same way whether or not the account exists.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import has_app_context

from core.errors import ApiError
from core.store import get_redis, setting

T = TypeVar("T")

# RFC 9106 "low memory" profile (argon2id, t=3, m=64 MiB, p=4) by default: the PASSWORD_HASH_*
# settings. One hasher (and one dummy hash for unknown accounts) per distinct profile.
_hashers: dict[tuple[int, int, int], PasswordHasher] = {}
_dummy_hashes: dict[tuple[int, int, int], str] = {}

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # bounds the work one login request can ask of the KDF


_slots: threading.BoundedSemaphore | None = None
_slots_size = 0
_slots_guard = threading.Lock()


def _hash_slots() -> threading.BoundedSemaphore:
    # Created on first use, after gunicorn's gevent worker has monkey-patched threading, so the
    # semaphore parks greenlets instead of blocking the loop.
    global _slots, _slots_size
    size = max(1, int(setting("LOGIN_HASH_CONCURRENCY"))) if has_app_context() else _slots_size or 2
    with _slots_guard:
        if _slots is None or _slots_size != size:
            _slots, _slots_size = threading.BoundedSemaphore(size), size
        return _slots


def off_loop(work: Callable[[], T]) -> T:
    """Run CPU-heavy ``work`` off the gevent loop (in the hub's thread pool), bounded per worker.

    Without gevent's monkey-patching (tests, the CLI) it simply runs in the calling thread.
    """
    with _hash_slots():
        try:
            from gevent import get_hub
            from gevent.monkey import is_module_patched
        except ImportError:  # pragma: no cover - gevent is a dependency of the server
            return work()
        if not is_module_patched("threading"):
            return work()
        return get_hub().threadpool.apply(_in_background, (work,))  # type: ignore[no-any-return]


def _in_background(work: Callable[[], T]) -> T:
    # The pool thread runs at a lower CPU priority than the worker's event loop: on a busy
    # machine the scheduler hands the cores to the streams first, the hashes get what is left.
    try:
        from gevent.monkey import get_original

        native_id = get_original("threading", "get_native_id")()
        os.setpriority(
            os.PRIO_PROCESS, native_id, max(os.getpriority(os.PRIO_PROCESS, native_id), 10)
        )
    except (AttributeError, OSError):  # not Linux, or not allowed: run at the same priority
        pass
    return work()


def _profile() -> tuple[int, int, int]:
    """The app's (time cost, memory KiB, lanes); the RFC 9106 default outside an app."""
    if not has_app_context():
        return (3, 65536, 4)
    return (
        int(setting("PASSWORD_HASH_TIME_COST")),
        int(setting("PASSWORD_HASH_MEMORY_KIB")),
        int(setting("PASSWORD_HASH_PARALLELISM")),
    )


def _hasher(profile: tuple[int, int, int]) -> PasswordHasher:
    hasher = _hashers.get(profile)
    if hasher is None:
        time_cost, memory_kib, lanes = profile
        hasher = _hashers[profile] = PasswordHasher(time_cost, memory_kib, lanes)
    return hasher


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``, ready to store (computed off the event loop)."""
    hasher = _hasher(_profile())
    return off_loop(lambda: hasher.hash(password))


def _verify(profile: tuple[int, int, int], password_hash: str | None, password: str) -> bool:
    hasher = _hasher(profile)
    try:
        if password_hash is None:  # an unknown account costs the same work as a known one
            if profile not in _dummy_hashes:
                _dummy_hashes[profile] = hasher.hash("streamgate-no-such-account")
            hasher.verify(_dummy_hashes[profile], password)
            return False
        return hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; ``None`` (no such account) costs the same and is False.

    The hash runs off the event loop (``off_loop``).
    """
    profile = _profile()
    return off_loop(lambda: _verify(profile, password_hash, password))


def needs_rehash(password_hash: str) -> bool:
    """True when a stored hash was made with weaker parameters than today's."""
    try:
        return _hasher(_profile()).check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


def check_password_policy(password: str) -> None:
    """Refuse passwords too short to resist guessing or too long to hash cheaply (422)."""
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        message = f"Must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters."
        raise ApiError(422, "Password rejected: " + message, errors={"password": [message]})


# --- login throttle -----------------------------------------------------------------------------

# KEYS: 1 pair failures, 2 account failures, 3 address failures (ARGV 1-3: their ceilings, ARGV 4:
# their window), 4 account attempts, 5 address attempts (ARGV 5-6: per-minute ceilings).
# Refuse (returning the seconds to wait) if any counter is full; otherwise count this attempt up
# front, as a failure too, so parallel attempts cannot all pass the check. Success gives the
# failures back (``_SUCCEED``); the attempt counters keep it.
_RESERVE = """
local limits = {ARGV[1], ARGV[2], ARGV[3], ARGV[5], ARGV[6]}
local windows = {ARGV[4], ARGV[4], ARGV[4], '60', '60'}
local wait = 0
for i = 1, 5 do
  local n = tonumber(redis.call('GET', KEYS[i]) or '0')
  if n >= tonumber(limits[i]) then
    local ttl = redis.call('TTL', KEYS[i])
    if ttl < 1 then
      redis.call('EXPIRE', KEYS[i], windows[i])
      ttl = tonumber(windows[i])
    end
    if ttl > wait then wait = ttl end
  end
end
if wait > 0 then return wait end
for i = 1, 5 do
  if redis.call('INCR', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], windows[i]) end
end
return 0
"""

# A successful login clears the pair's failures and takes back its own reserved failure from the
# account and the address (they keep their other failures: one good login must not reset a
# scanner, nor a victim's account reset an attacker's address).
_SUCCEED = """
redis.call('DEL', KEYS[1])
for i = 2, 3 do
  local n = tonumber(redis.call('GET', KEYS[i]) or '0')
  if n > 0 then redis.call('DECR', KEYS[i]) end
end
return 0
"""


def _throttle_keys(tenant_slug: str, email: str, client_addr: str) -> list[str]:
    account = hashlib.sha256(f"{tenant_slug}\0{email}".encode()).hexdigest()
    addr = hashlib.sha256(client_addr.encode()).hexdigest()[:32]
    # One hash tag: every counter lives in one slot, so the scripts work on Redis Cluster.
    return [
        f"sg:{{login}}:pair:{account}:{addr}",
        f"sg:{{login}}:acct:{account}",
        f"sg:{{login}}:addr:{addr}",
        f"sg:{{login}}:rate:acct:{account}",
        f"sg:{{login}}:rate:addr:{addr}",
    ]


def throttled_message(wait_s: int) -> str:
    """The 429's message: what happened and when to retry."""
    return f"Too many login attempts; try again in {wait_s} seconds."


def reserve_login_attempt(tenant_slug: str, email: str, client_addr: str) -> None:
    """Count a login attempt, or raise 429 (with ``Retry-After``) if a ceiling is reached."""
    wait = get_redis().register_script(_RESERVE)(
        keys=_throttle_keys(tenant_slug, email, client_addr),
        args=[
            setting("LOGIN_MAX_FAILURES"),
            setting("LOGIN_MAX_ACCOUNT_FAILURES"),
            setting("LOGIN_MAX_ADDRESS_FAILURES"),
            setting("LOGIN_WINDOW_S"),
            setting("LOGIN_ACCOUNT_RPM"),
            setting("LOGIN_ADDRESS_RPM"),
        ],
    )
    if int(wait) > 0:
        raise ApiError(
            429,
            throttled_message(int(wait)),
            headers={"Retry-After": str(int(wait))},
            code="login_throttled",
        )


def login_succeeded(tenant_slug: str, email: str, client_addr: str) -> None:
    """Forget the pair's failures; give the account and the address back this attempt."""
    get_redis().register_script(_SUCCEED)(keys=_throttle_keys(tenant_slug, email, client_addr))
