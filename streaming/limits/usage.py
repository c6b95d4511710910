"""A caller's usage report: today's and this minute's usage, and what is left of every limit;
the daily count of requests refused by a limit (``REFUSALS_TTL_S``), for the admins' charts."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import redis

from core.store import get_redis
from streaming.limits.keys import REFUSALS_TTL_S, SCOPES, Clock, Keys, refusals_key, text
from streaming.limits.overrides import get_effective_limits

log = logging.getLogger("streamgate.limits")


def usage_report(tenant_id: str, user_id: str) -> dict[str, Any]:
    """Own usage today and this minute, remaining budget per limit, open streams."""
    limits = get_effective_limits(tenant_id, user_id)
    keys = Keys(tenant_id, user_id)
    clock = Clock.now()
    pipe = get_redis().pipeline(transaction=True)  # one slot: a consistent snapshot
    for scope in SCOPES:
        pipe.get(keys.rpm(scope))
        pipe.zrangebyscore(keys.leases(scope), clock.now_ms, "+inf")
        pipe.hgetall(keys.minute(scope, clock.minute))
        pipe.hgetall(keys.day(scope, clock.day))
    raw = pipe.execute()
    out: dict[str, Any] = {"limits": {}}
    for i, scope in enumerate(SCOPES):
        tat, leases, minute_raw, day_raw = raw[i * 4 : i * 4 + 4]
        minute, day = _ints(minute_raw), _ints(day_raw)
        out["limits"][scope] = _scope_states(limits[scope], tat, leases, minute, day, clock)
        if scope == "user":
            out["this_minute"] = _window_usage(minute)
            out["today"] = {
                "date": time.strftime("%Y-%m-%d", time.gmtime(clock.now_ms / 1000)),
                **_window_usage(day),
            }
            out["open_streams"] = sorted(text(member) for member in leases)
    return out


def count_refusal(tenant_id: str, principal_id: str) -> None:
    """Count one request refused by a limit today (best effort: the 429 goes out regardless)."""
    key = refusals_key(tenant_id, time.strftime("%Y-%m-%d", time.gmtime()))
    try:
        pipe = get_redis().pipeline(transaction=False)
        pipe.hincrby(key, principal_id, 1)
        pipe.expire(key, REFUSALS_TTL_S)
        pipe.execute()
    except redis.RedisError:
        log.warning("could not count a refusal", exc_info=True)


def refusals(
    tenant_ids: list[str], days: list[str], principal_id: str | None = None
) -> dict[tuple[str, str], int]:
    """Requests refused by a limit, per (tenant, day) with any (one principal's, if given)."""
    pipe = get_redis().pipeline(transaction=False)
    pairs = [(tenant, day) for tenant in tenant_ids for day in days]
    for tenant, day in pairs:
        if principal_id is None:
            pipe.hvals(refusals_key(tenant, day))
        else:
            pipe.hmget(refusals_key(tenant, day), [principal_id])
    out = {}
    for pair, values in zip(pairs, pipe.execute(), strict=True):
        total = sum(int(v) for v in values if v is not None)
        if total:
            out[pair] = total
    return out


def _scope_states(
    lim: dict[str, int],
    tat: Any,
    leases: list[Any],
    minute: dict[str, int],
    day: dict[str, int],
    clock: Clock,
) -> dict[str, dict[str, int]]:
    return {
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


def _ints(raw: Mapping[Any, Any]) -> dict[str, int]:
    return {text(k): int(v) for k, v in raw.items()}


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
