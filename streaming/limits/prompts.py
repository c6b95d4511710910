"""What a prompt really costs, when the model server never said.

A run stopped before the model server reported usage (the client left, a revocation, a cancel)
used to be charged Streamgate's own estimate of its prompt (about 4 characters a token), which
can be half the truth: the same prompt cost 99,006 tokens completed and 49,513 stopped. Each
completed run records, per model, how its reported prompt compared with that estimate; a stopped
run is charged its estimate times that ratio, never less than the estimate itself. With
``LLM_CONTINUOUS_USAGE_STATS`` the model server reports the prompt on its first chunk and none of
this is needed past that chunk.
"""

from __future__ import annotations

import logging
import math

import redis

from core.store import get_redis

log = logging.getLogger("streamgate.limits")

RATIOS = "sg:pratio"  # model -> reported prompt tokens / Streamgate's estimate (last completed run)


def learn(model: str, estimate: int, reported: int) -> None:
    """Remember how a completed run's reported prompt compared with its estimate."""
    if estimate <= 0 or reported <= 0:
        return
    try:
        get_redis().hset(RATIOS, model, f"{reported / estimate:.4f}")
    except redis.RedisError:
        log.debug("prompt ratio not recorded", exc_info=True)


def charge(model: str, estimate: int) -> int:
    """The prompt tokens to charge a run the model server never reported on."""
    try:
        raw = get_redis().hget(RATIOS, model)
        ratio = float(raw) if raw is not None else 1.0
    except (redis.RedisError, ValueError):
        ratio = 1.0
    return max(estimate, math.ceil(estimate * ratio))
