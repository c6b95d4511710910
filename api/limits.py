"""Rate limits and token quotas in Redis: one atomic admission per generation.

Every generation start runs ONE Lua script that checks all eight limits of the caller (requests
per minute, concurrent streams, tokens per minute and per day; each for the user and for the
tenant) and either takes all of them or none:

- requests per minute: GCRA (one timestamp per user / tenant; a full minute's worth may burst);
- concurrent streams: a lease per stream in a sorted set scored by its expiry, pruned of expired
  members in the same script, renewed by the keeper while the run lives (``renew``);
- tokens per minute / per day: fixed windows (the UTC minute, the UTC day) that reserve the prompt
  estimate plus ``max_tokens`` at admission; ``release`` reconciles the reservation to the actual
  prompt + completion tokens in the window where it was made, exactly once per stream.

Keys carry the hash tag ``{t:<tenant id>}``, so every script touches one Redis Cluster slot. The
per-tenant version key in that slot invalidates the process-local cache of the tenant's and its
users' limit overrides: the script refuses to run with a stale version (no extra round trip).

Interface used by the rest of the app:
- ``admit(ident, estimate_tokens, stream_id) -> Admission``; ``Admission.info`` is a JSON-able
  dict stored with the run so any worker (even the keeper's reaper after a worker died) can settle
  it; ``Admission.headers`` are the ``RateLimit-*`` headers of the response.
- ``RedisAdmissionControl.renew(info)`` / ``.release(info, prompt_tokens, completion_tokens)``.
- ``rate_limited``: count a request of another route against requests per minute only.
- ``get_effective_limits`` / ``set_tenant_limits`` / ``set_user_limits`` for the admin API.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, TypeVar, cast

import redis
from flask import after_this_request, current_app

from api.errors import wants_openai_shape
from auth.access import Identity, current_identity
from auth.models import Tenant, User, get_for_tenant, record_audit
from core.errors import ApiError
from core.store import db, get_redis

log = logging.getLogger("streamgate.limits")

F = TypeVar("F", bound=Callable[..., Any])

LIMITS = ("rpm", "concurrent", "tpm", "tpd")
SCOPES = ("user", "tenant")
MAX_LIMIT = 10**15
# The order of the eight limits in every script result.
ORDER = tuple((scope, key) for key in LIMITS for scope in SCOPES)
WINDOW_S = {"rpm": 60, "tpm": 60, "tpd": 86400}
MINUTE_TTL_S = 120
DAY_TTL_S = 2 * 86400 + 3600
RESERVATION_TTL_S = 2 * 86400 + 3600
CACHE_MAX_AGE_S = 60.0  # a bound on staleness should Redis lose the version keys
CACHE_MAX_ENTRIES = 10_000
EXTENSION = "streamgate.admission"


# --- keys -------------------------------------------------------------------------------------


def _slot(tenant_id: str) -> str:
    return "sg:lim:{t:" + tenant_id + "}"


def version_key(tenant_id: str) -> str:
    return _slot(tenant_id) + ":ver"


@dataclass(frozen=True)
class _Keys:
    tenant_id: str
    user_id: str

    def rpm(self, scope: str) -> str:
        return self._base(scope) + ":rpm"

    def leases(self, scope: str) -> str:
        return self._base(scope) + ":leases"

    def minute(self, scope: str, minute: int) -> str:
        return self._base(scope) + f":m:{minute}"

    def day(self, scope: str, day: int) -> str:
        return self._base(scope) + f":d:{day}"

    def reservation(self, stream_id: str) -> str:
        return _slot(self.tenant_id) + ":res:" + stream_id

    def _base(self, scope: str) -> str:
        base = _slot(self.tenant_id)
        return base + ":u:" + self.user_id if scope == "user" else base


@dataclass(frozen=True)
class _Clock:
    """One instant, in the units the scripts and keys use."""

    now_ms: int

    @classmethod
    def now(cls) -> _Clock:
        return cls(int(time.time() * 1000))

    @property
    def minute(self) -> int:
        return self.now_ms // 60_000

    @property
    def day(self) -> int:
        return self.now_ms // 86_400_000

    @property
    def minute_left_ms(self) -> int:
        return 60_000 - self.now_ms % 60_000

    @property
    def day_left_ms(self) -> int:
        return 86_400_000 - self.now_ms % 86_400_000


# --- the scripts ------------------------------------------------------------------------------

_COMMON = """
local now = tonumber(ARGV[2])
local function gcra(key, limit, take)
  -- Requests per minute, GCRA: a full minute's worth may arrive at once, then one per 60/limit s.
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  if limit <= 0 then return {limit, 0, 60000, 60000} end
  local interval = 60000 / limit
  local new_tat = tat + interval
  local wait = new_tat - 60000 - now
  if wait > 0.001 then return {limit, 0, math.ceil(tat - now), math.ceil(wait)} end
  table.insert(take, {key, new_tat})
  local remaining = math.floor((60000 - (new_tat - now)) / interval + 0.001)
  return {limit, remaining, math.ceil(new_tat - now), 0}
end
local function set_tats(take)
  for _, t in ipairs(take) do
    redis.call('SET', t[1], string.format('%.3f', t[2]), 'PX', math.max(1, math.ceil(t[2] - now)))
  end
end
local function count_request(key, ttl)
  redis.call('HINCRBY', key, 'requests', 1)
  redis.call('EXPIRE', key, ttl)
end
local function flatten(status, results)
  local out = {status}
  local denied = false
  for _, r in ipairs(results) do
    if r[4] > 0 then denied = true end
    for _, v in ipairs(r) do table.insert(out, v) end
  end
  if denied then out[1] = 'denied' end
  return out, denied
end
"""

# KEYS: 1 version, 2 user rpm, 3 tenant rpm, 4 user leases, 5 tenant leases, 6 user minute,
#       7 tenant minute, 8 user day, 9 tenant day, 10 reservation
# ARGV: 1 expected version, 2 now ms, 3 stream id, 4 tokens to reserve, 5 lease ttl ms,
#       6 ms left in the minute, 7 ms left in the day, 8 minute ttl s, 9 day ttl s,
#       10 reservation ttl s, 11..18 limits in ORDER
# Returns {'stale', version} | {'ok'|'denied', then limit, remaining, reset ms, retry ms x 8}.
ADMIT_LUA = (
    _COMMON
    + """
local version = redis.call('GET', KEYS[1]) or ''
if version ~= ARGV[1] then return {'stale', version} end
local sid, cost, lease_ttl = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local L = {}
for i = 1, 8 do L[i] = tonumber(ARGV[10 + i]) end
local function leases(key, limit)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local held = redis.call('ZCARD', key)
  if held + 1 > limit then return {limit, math.max(limit - held, 0), 0, 1000} end
  return {limit, limit - held - 1, 0, 0}
end
local function budget(key, limit, left)
  local used = tonumber(redis.call('HGET', key, 'tokens') or '0')
  if used + cost > limit then return {limit, math.max(limit - used, 0), left, left} end
  return {limit, limit - used - cost, left, 0}
end
local take = {}
local minute_left, day_left = tonumber(ARGV[6]), tonumber(ARGV[7])
local out, denied = flatten('ok', {
  gcra(KEYS[2], L[1], take), gcra(KEYS[3], L[2], take),
  leases(KEYS[4], L[3]), leases(KEYS[5], L[4]),
  budget(KEYS[6], L[5], minute_left), budget(KEYS[7], L[6], minute_left),
  budget(KEYS[8], L[7], day_left), budget(KEYS[9], L[8], day_left),
})
if denied then return out end
set_tats(take)
for i = 4, 5 do
  redis.call('ZADD', KEYS[i], now + lease_ttl, sid)
  redis.call('PEXPIRE', KEYS[i], lease_ttl + 1000)
end
for i = 6, 9 do
  redis.call('HINCRBY', KEYS[i], 'tokens', cost)
  redis.call('HINCRBY', KEYS[i], 'reserved', cost)
  count_request(KEYS[i], i <= 7 and tonumber(ARGV[8]) or tonumber(ARGV[9]))
end
redis.call('HSET', KEYS[10], 'cost', cost, 'admitted', now)
redis.call('EXPIRE', KEYS[10], tonumber(ARGV[10]))
return out
"""
)

# KEYS: 1 version, 2 user rpm, 3 tenant rpm, 4 user minute, 5 tenant minute, 6 user day,
#       7 tenant day.  ARGV: 1 expected version, 2 now ms, 3 user rpm, 4 tenant rpm,
#       5 minute ttl s, 6 day ttl s.
RATE_LUA = (
    _COMMON
    + """
local version = redis.call('GET', KEYS[1]) or ''
if version ~= ARGV[1] then return {'stale', version} end
local take = {}
local out, denied = flatten('ok', {gcra(KEYS[2], tonumber(ARGV[3]), take),
                                   gcra(KEYS[3], tonumber(ARGV[4]), take)})
if denied then return out end
set_tats(take)
for i = 4, 7 do count_request(KEYS[i], i <= 5 and tonumber(ARGV[5]) or tonumber(ARGV[6])) end
return out
"""
)

# KEYS: 1 reservation, 2 user leases, 3 tenant leases.  ARGV: 1 stream id, 2 expiry ms, 3 ttl ms.
# A released run is never re-leased: the reservation is the proof it still runs.
RENEW_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 2, 3 do
  redis.call('ZADD', KEYS[i], ARGV[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[i], ARGV[3])
end
return 1
"""

# KEYS: 1 reservation, 2 user leases, 3 tenant leases, 4 user minute, 5 tenant minute,
#       6 user day, 7 tenant day.  ARGV: 1 stream id, 2 prompt tokens, 3 completion tokens.
# Idempotent: the reservation is deleted by the first release; later ones only drop leases.
RELEASE_LUA = """
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
local cost = redis.call('HGET', KEYS[1], 'cost')
if not cost then return 0 end
redis.call('DEL', KEYS[1])
cost = tonumber(cost)
local prompt, completion = tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 4, 7 do
  -- a window that already expired is not brought back (with a negative count)
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HINCRBY', KEYS[i], 'tokens', prompt + completion - cost)
    redis.call('HINCRBY', KEYS[i], 'reserved', -cost)
    redis.call('HINCRBY', KEYS[i], 'prompt_tokens', prompt)
    redis.call('HINCRBY', KEYS[i], 'completion_tokens', completion)
    redis.call('HINCRBY', KEYS[i], 'streams', 1)
  end
end
return 1
"""


# --- limits: defaults, overrides, cache -------------------------------------------------------


def default_limits(scope: str) -> dict[str, int]:
    """The deployment's defaults for ``scope`` ("user" or "tenant"), from LIMIT_* variables."""
    cfg = current_app.config
    return {key: int(cfg[f"LIMIT_{scope.upper()}_{key.upper()}"]) for key in LIMITS}


def clean_overrides(raw: Mapping[str, Any] | None) -> dict[str, int]:
    """The valid part of a stored override dict: known keys with non-negative integers."""
    out: dict[str, int] = {}
    for key, value in (raw or {}).items():
        if key in LIMITS and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            out[key] = min(value, MAX_LIMIT)
    return out


def _effective(scope: str, overrides: Mapping[str, Any] | None) -> dict[str, int]:
    return {**default_limits(scope), **clean_overrides(overrides)}


def get_effective_limits(tenant_id: str, user_id: str | None = None) -> dict[str, dict[str, int]]:
    """``{"tenant": {...}, "user": {...}}``: the limits in force, read from SQL (no cache)."""
    tenant = db.session.get(Tenant, tenant_id)
    out = {"tenant": _effective("tenant", tenant.limits if tenant is not None else None)}
    if user_id is not None:
        user = db.session.get(User, user_id)
        out["user"] = _effective("user", user.limits if user is not None else None)
    return out


def set_tenant_limits(
    tenant_id: str,
    limits: Mapping[str, Any] | None,
    *,
    actor_id: str | None = None,
    reason: str | None = None,
) -> dict[str, int]:
    """Replace a tenant's overrides (None or {} = the defaults); audit, commit, invalidate.

    Returns the limits now in force. With ``actor_id`` an audit event is written in the same
    transaction. Every worker sees the change on its next admission.
    """
    tenant = db.session.get(Tenant, tenant_id)
    if tenant is None:
        raise ApiError(404, "No such tenant.", code="tenant_not_found")
    return _replace_overrides("tenant", tenant, tenant.id, limits, actor_id, reason)


def set_user_limits(
    user_id: str,
    limits: Mapping[str, Any] | None,
    *,
    actor_id: str | None = None,
    reason: str | None = None,
) -> dict[str, int]:
    """Replace a user's overrides (None or {} = the defaults); audit, commit, invalidate."""
    user = db.session.get(User, user_id)
    if user is None:
        raise ApiError(404, "No such user.", code="user_not_found")
    return _replace_overrides("user", user, user.tenant_id, limits, actor_id, reason)


def _replace_overrides(
    scope: str,
    row: Tenant | User,
    tenant_id: str,
    limits: Mapping[str, Any] | None,
    actor_id: str | None,
    reason: str | None,
) -> dict[str, int]:
    """Store ``row``'s overrides; audit (with an actor), commit, invalidate; the limits in force.

    ``scope`` is "tenant" or "user": the audit action is ``tenant.limits.set`` or
    ``user.limits.set``. ``tenant_id`` is the tenant the row belongs to (the tenant itself for a
    tenant): the audit event is written in it and its limits version is bumped.
    """
    before, after = clean_overrides(row.limits), clean_overrides(limits)
    row.limits = after or None
    if actor_id is not None:
        record_audit(
            tenant_id=tenant_id,
            actor_id=actor_id,
            action=f"{scope}.limits.set",
            target_type=scope,
            target_id=row.id,
            reason=reason,
            details={"before": before, "after": after},
        )
    db.session.commit()
    invalidate(tenant_id)
    return _effective(scope, after)


def _describe(scope: str, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    clean = clean_overrides(overrides)
    return {
        "overrides": clean,
        "defaults": default_limits(scope),
        "effective": _effective(scope, clean),
    }


def _tenant_for(ident: Identity, tenant_id: str) -> Tenant:
    """The tenant if ``ident`` may see its limits (operators: any; admins: their own); else 404."""
    tenant = db.session.get(Tenant, tenant_id)
    if tenant is None or (not ident.is_operator and tenant.id != ident.tenant_id):
        raise ApiError(404, "No such tenant.", code="tenant_not_found")
    return tenant


def _user_for(ident: Identity, user_id: str) -> User:
    user = get_for_tenant(User, ident.tenant_scope, user_id)
    if user is None:
        raise ApiError(404, "No such user.", code="user_not_found")
    return user


def tenant_limits(ident: Identity, tenant_id: str) -> dict[str, Any]:
    """A tenant's overrides, the defaults and the limits in force (admin API)."""
    tenant = _tenant_for(ident, tenant_id)
    return {"tenant_id": tenant.id, **_describe("tenant", tenant.limits)}


def update_tenant_limits(
    ident: Identity, tenant_id: str, limits: Mapping[str, Any], reason: str | None
) -> dict[str, Any]:
    """Replace a tenant's overrides: operators only (a tenant's own admin may only read them)."""
    tenant = _tenant_for(ident, tenant_id)
    if not ident.is_operator:
        raise ApiError(403, "Only an operator may change a tenant's limits.", code="forbidden")
    set_tenant_limits(tenant.id, _present(limits), actor_id=ident.user_id, reason=reason)
    return tenant_limits(ident, tenant.id)


def user_limits(ident: Identity, user_id: str) -> dict[str, Any]:
    """A user's overrides, the defaults and the limits in force (admin API)."""
    user = _user_for(ident, user_id)
    return {"user_id": user.id, "tenant_id": user.tenant_id, **_describe("user", user.limits)}


def update_user_limits(
    ident: Identity, user_id: str, limits: Mapping[str, Any], reason: str | None
) -> dict[str, Any]:
    """Replace a user's overrides (their tenant's admins, operators)."""
    user = _user_for(ident, user_id)
    set_user_limits(user.id, _present(limits), actor_id=ident.user_id, reason=reason)
    return user_limits(ident, user.id)


def _present(limits: Mapping[str, Any]) -> dict[str, int]:
    return {key: value for key, value in limits.items() if key in LIMITS and value is not None}


def invalidate(tenant_id: str) -> None:
    """Make every worker reload the limits of ``tenant_id`` and its users on next use."""
    try:
        get_redis().incr(version_key(tenant_id))
    except redis.RedisError:
        # Admission cannot run without Redis either; once it is back, caches expire on their own.
        log.warning(
            "limits of tenant %s changed but Redis is unavailable: caches refresh within %ss",
            tenant_id,
            CACHE_MAX_AGE_S,
        )


@dataclass
class _Entry:
    version: str
    user: dict[str, int]
    tenant: dict[str, int]
    loaded: float = field(default_factory=time.monotonic)

    def ordered(self) -> list[int]:
        return [(self.user if scope == "user" else self.tenant)[key] for scope, key in ORDER]


class _LimitsCache:
    """Per-process overrides, keyed by (tenant, user), valid while the tenant's version holds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], _Entry] = {}

    def get(self, tenant_id: str, user_id: str) -> _Entry | None:
        with self._lock:
            entry = self._entries.get((tenant_id, user_id))
        if entry is None or time.monotonic() - entry.loaded > CACHE_MAX_AGE_S:
            return None
        return entry

    def load(self, tenant_id: str, user_id: str, version: str) -> _Entry:
        """Read the overrides from SQL (after ``version`` was read, so a racing change shows)."""
        limits = get_effective_limits(tenant_id, user_id)
        entry = _Entry(version, limits["user"], limits["tenant"])
        with self._lock:
            if len(self._entries) >= CACHE_MAX_ENTRIES:
                self._entries.clear()
            self._entries[(tenant_id, user_id)] = entry
        return entry


# --- the admission control --------------------------------------------------------------------


@dataclass
class Admission:
    info: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Result:
    """One limit's state as a script returned it."""

    scope: str
    key: str
    limit: int
    remaining: int
    reset_ms: int
    retry_ms: int

    @property
    def name(self) -> str:
        return f"{self.scope}.{self.key}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse(raw: list[Any], order: tuple[tuple[str, str], ...]) -> list[_Result]:
    values = [int(v) for v in raw[1:]]
    return [
        _Result(scope, key, *values[i * 4 : i * 4 + 4])  # type: ignore[arg-type]
        for i, (scope, key) in enumerate(order)
    ]


def _headers(result: _Result) -> dict[str, str]:
    window = WINDOW_S.get(result.key)
    policy = f"{result.limit}" + (f";w={window}" if window else "") + f';name="{result.name}"'
    return {
        "RateLimit-Limit": str(result.limit),
        "RateLimit-Remaining": str(max(0, result.remaining)),
        "RateLimit-Reset": str(math.ceil(result.reset_ms / 1000)),
        "RateLimit-Policy": policy,
    }


def _binding(results: list[_Result]) -> _Result:
    """The windowed limit closest to exhaustion: the one the RateLimit-* headers describe."""
    windowed = [r for r in results if r.key in WINDOW_S]
    return min(windowed, key=lambda r: (r.remaining / r.limit if r.limit > 0 else 0.0, -r.reset_ms))


_WHOSE = {"user": "this user", "tenant": "this tenant"}
_TITLE = {
    "rpm": "requests per minute (RPM)",
    "concurrent": "concurrent streams",
    "tpm": "tokens per minute (TPM)",
    "tpd": "tokens per day (TPD)",
}


def _refusal(results: list[_Result], cost: int | None) -> ApiError:
    """A 429 naming the limit that holds the caller back longest."""
    refused = max((r for r in results if r.retry_ms > 0), key=lambda r: r.retry_ms)
    current_app.extensions["streamgate.metrics"].rate_limited.labels(
        f"{refused.scope}_{refused.key}"
    ).inc()
    retry_s = max(1, math.ceil(refused.retry_ms / 1000))
    what = f"{_TITLE[refused.key]} for {_WHOSE[refused.scope]}: limit {refused.limit}"
    if refused.key == "rpm":
        message = f"Rate limit reached for {what}. Try again in {retry_s} s."
    elif refused.key == "concurrent":
        message = f"Too many {what}. Try again when one of them ends."
    elif cost is not None and cost > refused.limit:
        message = (
            f"Request too large for {what}; this request reserves {cost} tokens "
            "(prompt estimate plus max_tokens). Lower max_tokens."
        )
    else:
        message = (
            f"Token budget reached for {what}, {max(0, refused.remaining)} left; this request "
            f"reserves {cost} (prompt estimate plus max_tokens). Try again in {retry_s} s."
        )
    headers = {"Retry-After": str(retry_s), **_headers(refused)}
    if refused.key == "concurrent":
        headers["RateLimit-Reset"] = str(retry_s)
    # OpenAI's shape has no place for details (and its SDKs read ``param`` as a request field):
    # there the message names the limit, as OpenAI's own 429s do.
    details = (
        None
        if wants_openai_shape()
        else {
            "limit": refused.name,
            "limit_value": refused.limit,
            "remaining": max(0, refused.remaining),
            "retry_after": retry_s,
        }
    )
    return ApiError(429, message, code="rate_limit_exceeded", headers=headers, errors=details)


def _unavailable() -> ApiError:
    current_app.extensions["streamgate.metrics"].backend_errors.labels("redis").inc()
    return ApiError(
        503,
        "Rate limits and quotas cannot be checked because Redis is unavailable; "
        "nothing was started. Try again shortly.",
        code="limits_unavailable",
        headers={"Retry-After": "1"},
    )


class RedisAdmissionControl:
    """Admission, renewal and release of generations against the limits in Redis."""

    def __init__(self) -> None:
        self.cache = _LimitsCache()
        self._scripts: dict[str, Any] = {}

    def _script(self, client: redis.Redis, name: str, source: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = client.register_script(source)
        return script

    def _run_versioned(
        self,
        tenant_id: str,
        user_id: str,
        call: Callable[[_Entry], list[Any]],
    ) -> list[Any]:
        """Run a script with the cached limits; reload them when the tenant's version moved."""
        client = get_redis()
        entry = self.cache.get(tenant_id, user_id)
        if entry is None:
            entry = self.cache.load(
                tenant_id, user_id, _text(client.get(version_key(tenant_id)) or b"")
            )
        for _attempt in range(4):
            raw = call(entry)
            if _text(raw[0]) != "stale":
                return raw
            entry = self.cache.load(tenant_id, user_id, _text(raw[1]))
        raise ApiError(
            503,
            "Limits are being changed; try again.",
            code="limits_changing",
            headers={"Retry-After": "1"},
        )

    # --- generation starts ------------------------------------------------------------------

    def admit(self, tenant_id: str, user_id: str, tokens: int, stream_id: str) -> Admission:
        """Take every limit for one generation, or none: 429 naming the limit, 503 without Redis."""
        cfg = current_app.config
        client = get_redis()
        keys = _Keys(tenant_id, user_id)
        clock = _Clock.now()
        tokens = max(0, int(tokens))
        script = self._script(client, "admit", ADMIT_LUA)
        redis_keys = [
            version_key(tenant_id),
            keys.rpm("user"),
            keys.rpm("tenant"),
            keys.leases("user"),
            keys.leases("tenant"),
            keys.minute("user", clock.minute),
            keys.minute("tenant", clock.minute),
            keys.day("user", clock.day),
            keys.day("tenant", clock.day),
            keys.reservation(stream_id),
        ]
        fixed = [
            clock.now_ms,
            stream_id,
            tokens,
            int(cfg["LEASE_TTL_S"] * 1000),
            clock.minute_left_ms,
            clock.day_left_ms,
            MINUTE_TTL_S,
            DAY_TTL_S,
            RESERVATION_TTL_S,
        ]

        def call(entry: _Entry) -> list[Any]:
            return cast(
                list[Any],
                script(
                    keys=redis_keys, args=[entry.version, *fixed, *entry.ordered()], client=client
                ),
            )

        try:
            raw = self._run_versioned(tenant_id, user_id, call)
        except redis.RedisError as exc:
            log.error("admission of %s failed: Redis unavailable: %s", stream_id, exc)
            raise _unavailable() from exc
        results = _parse(raw, ORDER)
        if _text(raw[0]) == "denied":
            raise _refusal(results, tokens)
        info = {
            "tenant": tenant_id,
            "user": user_id,
            "stream": stream_id,
            "minute": clock.minute,
            "day": clock.day,
            "tokens": tokens,
        }
        return Admission(info=info, headers=_headers(_binding(results)))

    def renew(self, admission: dict[str, Any]) -> None:
        """Extend the run's concurrency lease (the keeper calls this while the run lives)."""
        keys = _Keys(admission["tenant"], admission["user"])
        ttl_ms = int(current_app.config["LEASE_TTL_S"] * 1000)
        client = get_redis()
        self._script(client, "renew", RENEW_LUA)(
            keys=[
                keys.reservation(admission["stream"]),
                keys.leases("user"),
                keys.leases("tenant"),
            ],
            args=[admission["stream"], int(time.time() * 1000) + ttl_ms, ttl_ms + 1000],
            client=client,
        )

    def release(
        self, admission: dict[str, Any], prompt_tokens: int, completion_tokens: int
    ) -> None:
        """Drop the lease and reconcile the reservation to actual usage (once; idempotent)."""
        keys = _Keys(admission["tenant"], admission["user"])
        minute, day = int(admission["minute"]), int(admission["day"])
        client = get_redis()
        settled = self._script(client, "release", RELEASE_LUA)(
            keys=[
                keys.reservation(admission["stream"]),
                keys.leases("user"),
                keys.leases("tenant"),
                keys.minute("user", minute),
                keys.minute("tenant", minute),
                keys.day("user", day),
                keys.day("tenant", day),
            ],
            args=[admission["stream"], max(0, int(prompt_tokens)), max(0, int(completion_tokens))],
            client=client,
        )
        if not settled:
            log.debug("admission of %s was already released", admission["stream"])

    # --- other routes -----------------------------------------------------------------------

    def charge_request(self, tenant_id: str, user_id: str) -> dict[str, str]:
        """Count one request against requests per minute only; returns RateLimit-* headers.

        With REDIS_FAIL_OPEN_RATE_LIMITS the request passes uncounted when Redis fails.
        """
        client = get_redis()
        keys = _Keys(tenant_id, user_id)
        clock = _Clock.now()
        script = self._script(client, "rate", RATE_LUA)
        redis_keys = [
            version_key(tenant_id),
            keys.rpm("user"),
            keys.rpm("tenant"),
            keys.minute("user", clock.minute),
            keys.minute("tenant", clock.minute),
            keys.day("user", clock.day),
            keys.day("tenant", clock.day),
        ]

        def call(entry: _Entry) -> list[Any]:
            return cast(
                list[Any],
                script(
                    keys=redis_keys,
                    client=client,
                    args=[
                        entry.version,
                        clock.now_ms,
                        entry.user["rpm"],
                        entry.tenant["rpm"],
                        MINUTE_TTL_S,
                        DAY_TTL_S,
                    ],
                ),
            )

        try:
            raw = self._run_versioned(tenant_id, user_id, call)
        except redis.RedisError as exc:
            if current_app.config["REDIS_FAIL_OPEN_RATE_LIMITS"]:
                current_app.extensions["streamgate.metrics"].backend_errors.labels("redis").inc()
                log.warning("request-rate limit skipped (fail-open): Redis unavailable: %s", exc)
                return {}
            log.error("request-rate limit failed closed: Redis unavailable: %s", exc)
            raise _unavailable() from exc
        results = _parse(raw, (("user", "rpm"), ("tenant", "rpm")))
        if _text(raw[0]) == "denied":
            raise _refusal(results, None)
        return _headers(_binding(results))

    # --- reading ----------------------------------------------------------------------------

    def usage(self, tenant_id: str, user_id: str) -> dict[str, Any]:
        """Own usage today and this minute, remaining budget per limit, open streams."""
        limits = get_effective_limits(tenant_id, user_id)
        keys = _Keys(tenant_id, user_id)
        clock = _Clock.now()
        pipe = get_redis().pipeline(transaction=True)  # one slot: a consistent snapshot
        for scope in SCOPES:
            pipe.get(keys.rpm(scope))
            pipe.zrangebyscore(keys.leases(scope), clock.now_ms, "+inf")
            pipe.hgetall(keys.minute(scope, clock.minute))
            pipe.hgetall(keys.day(scope, clock.day))
        raw = pipe.execute()
        out: dict[str, Any] = {"limits": {}}
        for i, scope in enumerate(SCOPES):
            tat, leases, minute, day = raw[i * 4 : i * 4 + 4]
            minute, day = _ints(minute), _ints(day)
            lim = limits[scope]
            out["limits"][scope] = {
                "rpm": _rpm_state(lim["rpm"], float(tat) if tat else 0.0, clock.now_ms),
                "concurrent": {
                    "limit": lim["concurrent"],
                    "used": len(leases),
                    "remaining": max(0, lim["concurrent"] - len(leases)),
                    "reset": 0,
                },
                "tpm": _budget_state(lim["tpm"], minute, clock.minute_left_ms),
                "tpd": _budget_state(lim["tpd"], day, clock.day_left_ms),
            }
            if scope == "user":
                out["this_minute"] = _window_usage(minute)
                out["today"] = {
                    "date": time.strftime("%Y-%m-%d", time.gmtime(clock.now_ms / 1000)),
                    **_window_usage(day),
                }
                out["open_streams"] = sorted(_text(member) for member in leases)
        return out


def _ints(raw: Mapping[Any, Any]) -> dict[str, int]:
    return {_text(k): int(v) for k, v in raw.items()}


def _window_usage(window: dict[str, int]) -> dict[str, int]:
    prompt, completion = window.get("prompt_tokens", 0), window.get("completion_tokens", 0)
    return {
        "requests": window.get("requests", 0),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "reserved_tokens": max(0, window.get("reserved", 0)),
    }


def _rpm_state(limit: int, tat: float, now_ms: int) -> dict[str, int]:
    if limit <= 0:
        return {"limit": limit, "used": 0, "remaining": 0, "reset": 60}
    ahead = max(0.0, tat - now_ms)
    remaining = max(0, math.floor((60_000 - ahead) / (60_000 / limit) + 0.001))
    return {
        "limit": limit,
        "used": limit - remaining,
        "remaining": remaining,
        "reset": math.ceil(ahead / 1000),
    }


def _budget_state(limit: int, window: dict[str, int], left_ms: int) -> dict[str, int]:
    used = max(0, window.get("tokens", 0))
    return {
        "limit": limit,
        "used": used,
        "remaining": max(0, limit - used),
        "reset": math.ceil(left_ms / 1000),
    }


def control() -> RedisAdmissionControl:
    """This app's admission control (``app.extensions["streamgate.admission"]``)."""
    ext = current_app.extensions.get(EXTENSION)
    if not isinstance(ext, RedisAdmissionControl):
        ext = current_app.extensions[EXTENSION] = RedisAdmissionControl()
    return ext


def admit(ident: Identity, estimate_tokens: int, stream_id: str) -> Admission:
    """Admit one generation: every limit of user and tenant in one atomic step, or a 429."""
    return control().admit(ident.tenant_id, ident.user_id, estimate_tokens, stream_id)


def usage(tenant_id: str, user_id: str) -> dict[str, Any]:
    """A user's usage and remaining budget (``GET /v1/usage``)."""
    return control().usage(tenant_id, user_id)


def rate_limited(view: F) -> F:
    """Count a request to ``view`` against requests per minute (after ``require``)."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ident = current_identity()
        headers = control().charge_request(ident.tenant_id, ident.user_id)
        if headers:

            @after_this_request
            def add_headers(response: Any) -> Any:
                for name, value in headers.items():
                    response.headers.setdefault(name, value)
                return response

        return view(*args, **kwargs)

    return cast(F, wrapper)
