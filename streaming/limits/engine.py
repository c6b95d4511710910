"""The admission engine: admit, renew and release generations, and charge other requests.

Every generation start runs ONE Lua script that checks all eight limits of the caller (requests
per minute, concurrent streams, tokens per minute and per day; each for the user and for the
tenant), and the four of its end user when an app token with ``end_user_limits`` names one, and
either takes all of them or none. A refusal is a ``LimitExceeded`` carrying the
numbers; the HTTP layer turns it into a 429. Without Redis the engine raises a 503 ``ApiError``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import redis
from flask import current_app

from core.errors import ApiError
from core.store import get_redis, setting
from streaming.limits.cache import Entry, LimitsCache
from streaming.limits.keys import (
    DAY_TTL_S,
    MINUTE_TTL_S,
    ORDER,
    ORDER_EU,
    RESERVATION_TTL_S,
    SCOPES,
    WINDOW_S,
    Clock,
    Keys,
    Scope,
    text,
    version_key,
)
from streaming.limits.scripts import ADMIT_LUA, RATE_LUA, RELEASE_LUA, RENEW_LUA

log = logging.getLogger("streamgate.limits")

STALE_RETRIES = 4


@dataclass(frozen=True)
class LimitState:
    """One limit's state as a script returned it."""

    scope: Scope
    key: str
    limit: int
    remaining: int
    reset_ms: int
    retry_ms: int

    @property
    def name(self) -> str:
        return f"{self.scope}.{self.key}"


class LimitExceeded(Exception):
    """A refusal: the limit that holds the caller back longest, and what the request reserves."""

    def __init__(self, refused: LimitState, cost: int | None) -> None:
        super().__init__(f"{refused.name} exceeded")
        self.refused = refused
        self.cost = cost  # tokens the refused generation would reserve; None for a plain request


@dataclass(frozen=True)
class Admission:
    """An admitted generation: ``info`` (JSON-able, stored with the run so any worker can settle
    it) and ``binding``, the windowed limit closest to exhaustion (for ``RateLimit-*``)."""

    info: dict[str, Any]
    binding: LimitState


def parse(raw: list[Any], order: tuple[tuple[Scope, str], ...]) -> list[LimitState]:
    """A script's reply (a status, then four numbers per limit) as one state per limit."""
    values = [int(v) for v in raw[1:]]
    return [
        LimitState(scope, key, *values[i * 4 : i * 4 + 4])  # type: ignore[arg-type]
        for i, (scope, key) in enumerate(order)
    ]


def binding(results: list[LimitState]) -> LimitState:
    """The windowed limit closest to exhaustion: the one the RateLimit-* headers describe."""
    windowed = [r for r in results if r.key in WINDOW_S]
    return min(windowed, key=lambda r: (r.remaining / r.limit if r.limit > 0 else 0.0, -r.reset_ms))


def _refused(results: list[LimitState], cost: int | None) -> LimitExceeded:
    """The refusal naming the limit that holds the caller back longest."""
    refused = max((r for r in results if r.retry_ms > 0), key=lambda r: r.retry_ms)
    return LimitExceeded(refused, cost)


def _unavailable() -> ApiError:
    current_app.extensions["streamgate.metrics"].backend_errors.labels("redis").inc()
    return ApiError(
        503,
        "Rate limits and quotas cannot be checked because Redis is unavailable; "
        "nothing was started. Try again shortly.",
        code="limits_unavailable",
        headers={"Retry-After": "1"},
    )


def _lease_ttl_ms() -> int:
    return int(setting("LEASE_TTL_S") * 1000)


def _windows(keys: Keys, scopes: tuple[Scope, ...], minute: int, day: int) -> list[str]:
    """The token windows of ``scopes``: each one's minute window, then each one's day window."""
    return [
        *(keys.minute(scope, minute) for scope in scopes),
        *(keys.day(scope, day) for scope in scopes),
    ]


def _admit_keys(keys: Keys, clock: Clock, stream_id: str) -> list[str]:
    out = [
        version_key(keys.tenant_id),
        *(keys.rpm(scope) for scope in SCOPES),
        *(keys.leases(scope) for scope in SCOPES),
        *_windows(keys, SCOPES, clock.minute, clock.day),
        keys.reservation(stream_id),
    ]
    if keys.end_user is not None:
        out += [
            keys.rpm("end_user"),
            keys.leases("end_user"),
            keys.minute("end_user", clock.minute),
            keys.day("end_user", clock.day),
        ]
    return out


def _rate_keys(keys: Keys, clock: Clock) -> list[str]:
    rpm = [keys.rpm(scope) for scope in SCOPES]
    return [version_key(keys.tenant_id), *rpm, *_windows(keys, SCOPES, clock.minute, clock.day)]


def _settle_keys(keys: Keys, stream_id: str, minute: int, day: int) -> list[str]:
    """The reservation, the leases of every scope, then their token windows (``RELEASE_LUA``)."""
    scopes = keys.scopes
    leases = [keys.leases(scope) for scope in scopes]
    return [keys.reservation(stream_id), *leases, *_windows(keys, scopes, minute, day)]


def _keys_of(admission: dict[str, Any]) -> Keys:
    """The keys an admitted generation holds (its end user's too, when it was admitted so)."""
    return Keys(admission["tenant"], admission["user"], admission.get("end_user"))


class RedisAdmissionControl:
    """Admission, renewal and release of generations against the limits in Redis.

    One per app, built by ``create_app`` and reached through ``streaming.limits.admission_control``.
    """

    def __init__(self) -> None:
        self.cache = LimitsCache()
        self._scripts: dict[str, Any] = {}

    def _script(self, client: redis.Redis, name: str, source: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = client.register_script(source)
        return script

    def _run_versioned(
        self, tenant_id: str, user_id: str, call: Callable[[Entry], list[Any]]
    ) -> list[Any]:
        """Run a script with the cached limits; reload them when the tenant's version moved."""
        entry = self.cache.get(tenant_id, user_id)
        if entry is None:
            version = text(get_redis().get(version_key(tenant_id)) or b"")
            entry = self.cache.load(tenant_id, user_id, version)
        for _attempt in range(STALE_RETRIES):
            raw = call(entry)
            if text(raw[0]) != "stale":
                return raw
            entry = self.cache.load(tenant_id, user_id, text(raw[1]))
        raise ApiError(
            503,
            "Limits are being changed; try again.",
            code="limits_changing",
            headers={"Retry-After": "1"},
        )

    # --- generation starts ------------------------------------------------------------------

    def admit(
        self,
        tenant_id: str,
        user_id: str,
        tokens: int,
        stream_id: str,
        end_user: str | None = None,
    ) -> Admission:
        """Take every limit for one generation, or none: ``LimitExceeded``, or 503 without Redis.

        ``end_user`` (OpenAI's ``user`` field) is a third scope only when the principal limits
        its end users; otherwise the admission is exactly the one without it.
        """
        client = get_redis()
        clock = Clock.now()
        tokens = max(0, int(tokens))
        script = self._script(client, "admit", ADMIT_LUA)
        fixed = [
            stream_id,
            tokens,
            _lease_ttl_ms(),
            clock.minute_left_ms,
            clock.day_left_ms,
            MINUTE_TTL_S,
            DAY_TTL_S,
            RESERVATION_TTL_S,
        ]

        def call(entry: Entry) -> list[Any]:
            # The scope follows the limits read with the version the script checks.
            scoped = end_user if end_user and entry.end_user is not None else None
            args = [entry.version, *fixed, *entry.ordered()]
            if scoped is not None:
                args += entry.end_user_ordered()
            redis_keys = _admit_keys(Keys(tenant_id, user_id, scoped), clock, stream_id)
            return cast(list[Any], script(keys=redis_keys, args=args, client=client))

        try:
            raw = self._run_versioned(tenant_id, user_id, call)
        except redis.RedisError as exc:
            log.error("admission of %s failed: Redis unavailable: %s", stream_id, exc)
            raise _unavailable() from exc
        with_end_user = len(raw) > 1 + 4 * len(ORDER)
        # A limit of -1 is an end user's that is counted, not checked.
        results = [r for r in parse(raw, ORDER_EU if with_end_user else ORDER) if r.limit >= 0]
        if text(raw[0]) == "denied":
            raise _refused(results, tokens)
        info = {
            "tenant": tenant_id,
            "user": user_id,
            "stream": stream_id,
            "minute": clock.minute,
            "day": clock.day,
            "tokens": tokens,
        }
        if with_end_user:
            info["end_user"] = end_user
        return Admission(info=info, binding=binding(results))

    def renew(self, admission: dict[str, Any]) -> None:
        """Extend the run's concurrency lease (the keeper calls this while the run lives)."""
        keys = _keys_of(admission)
        ttl_ms = _lease_ttl_ms()
        client = get_redis()
        self._script(client, "renew", RENEW_LUA)(
            keys=[keys.reservation(admission["stream"]), *map(keys.leases, keys.scopes)],
            args=[admission["stream"], int(time.time() * 1000) + ttl_ms, ttl_ms + 1000],
            client=client,
        )

    def release(
        self, admission: dict[str, Any], prompt_tokens: int, completion_tokens: int
    ) -> None:
        """Drop the lease and reconcile the reservation to actual usage (once; idempotent)."""
        keys = _keys_of(admission)
        minute, day = int(admission["minute"]), int(admission["day"])
        client = get_redis()
        settled = self._script(client, "release", RELEASE_LUA)(
            keys=_settle_keys(keys, admission["stream"], minute, day),
            args=[
                admission["stream"],
                max(0, int(prompt_tokens)),
                max(0, int(completion_tokens)),
                len(keys.scopes),
            ],
            client=client,
        )
        if not settled:
            log.debug("admission of %s was already released", admission["stream"])

    # --- other routes -----------------------------------------------------------------------

    def charge_request(self, tenant_id: str, user_id: str) -> LimitState | None:
        """Count one request against requests per minute only; the binding rpm limit.

        With REDIS_FAIL_OPEN_RATE_LIMITS the request passes uncounted (None) when Redis fails.
        """
        client = get_redis()
        clock = Clock.now()
        script = self._script(client, "rate", RATE_LUA)
        redis_keys = _rate_keys(Keys(tenant_id, user_id), clock)

        def call(entry: Entry) -> list[Any]:
            args = [
                entry.version,
                entry.user["rpm"],
                entry.tenant["rpm"],
                MINUTE_TTL_S,
                DAY_TTL_S,
            ]
            return cast(list[Any], script(keys=redis_keys, client=client, args=args))

        try:
            raw = self._run_versioned(tenant_id, user_id, call)
        except redis.RedisError as exc:
            _fail_open_or_raise(exc)
            return None
        results = parse(raw, (("user", "rpm"), ("tenant", "rpm")))
        if text(raw[0]) == "denied":
            raise _refused(results, None)
        return binding(results)


def _fail_open_or_raise(exc: redis.RedisError) -> None:
    """Fail open (REDIS_FAIL_OPEN_RATE_LIMITS: the request passes uncounted) or closed (503)."""
    if setting("REDIS_FAIL_OPEN_RATE_LIMITS"):
        current_app.extensions["streamgate.metrics"].backend_errors.labels("redis").inc()
        log.warning("request-rate limit skipped (fail-open): Redis unavailable: %s", exc)
        return
    log.error("request-rate limit failed closed: Redis unavailable: %s", exc)
    raise _unavailable() from exc
