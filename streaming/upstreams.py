"""Model servers: which upstreams serve a public model, in what order, and their shared health.

One ``Provider`` (one HTTP connection pool) per upstream, built at start-up. A request for public
model ``m`` is offered to the upstreams serving ``m`` in an order chosen by smooth weighted
round-robin (nginx's: deterministic, per worker, evenly interleaved), each taken at most once.
What every worker and node must agree on lives in Redis, under one hash tag (a Lua script may
touch every upstream's keys on one Redis Cluster slot):

- ``sg:{up}:lease:<name>``: sorted set of the streams it serves, scored by lease expiry (the keeper
  renews them; a dead worker's lapse on their own): ``max_concurrent`` and the in-flight count;
- ``sg:{up}:state:<name>``: hash of consecutive failures (``fails``), when its cooldown ends
  (``until``), the last failure's time and kind;
- ``sg:{up}:probe:<name>``: the one request allowed to probe it after its cooldown.

Without ``LLM_UPSTREAMS`` there is one upstream, ``default``, serving every model under the name
the request gives (``LLM_BASE_URL``, exactly as before).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from flask import Flask

from streaming.providers import Provider, build_provider

EXTENSION = "streamgate.upstreams"
DEFAULT = "default"


@dataclass(frozen=True)
class UpstreamSpec:
    """One model server as configured."""

    name: str
    base_url: str
    api_key: str
    models: Mapping[str, str] | None  # public name -> its own; None: any model, as named
    weight: int = 1
    max_concurrent: int | None = None

    def serves(self, model: str) -> bool:
        return self.models is None or model in self.models

    def own_model(self, model: str) -> str:
        return model if self.models is None else self.models[model]


def specs_from_config(config: Mapping[str, Any]) -> list[UpstreamSpec]:
    """``LLM_UPSTREAMS`` (already parsed by ``api.config``), or the one ``LLM_BASE_URL``."""
    entries = config.get("LLM_UPSTREAMS") or []
    if not entries:
        return [UpstreamSpec(DEFAULT, config["LLM_BASE_URL"], config["LLM_API_KEY"], None)]
    return [
        UpstreamSpec(
            name=e["name"],
            base_url=e["base_url"],
            api_key=e.get("api_key") or "not-needed",
            models=dict(e["models"]),
            weight=int(e.get("weight") or 1),
            max_concurrent=e.get("max_concurrent"),
        )
        for e in entries
    ]


@dataclass
class Upstream:
    spec: UpstreamSpec
    provider: Provider

    @property
    def name(self) -> str:
        return self.spec.name


class SmoothWeighted:
    """nginx's smooth weighted round-robin over named weights (one instance per public model).

    Each pick adds every weight to its running total, takes the largest and subtracts the sum
    from it: weights 3:1 give a, a, b, a, ... exactly 3 of every 4, never 3 in a row needlessly.
    """

    def __init__(self, weights: Mapping[str, int]) -> None:
        self.weights = dict(weights)
        self.current = dict.fromkeys(weights, 0)
        self.total = sum(weights.values())

    def pick(self) -> str:
        best = ""
        for name, weight in self.weights.items():
            self.current[name] += weight
            if not best or self.current[name] > self.current[best]:
                best = name
        self.current[best] -= self.total
        return best


class Router:
    """The upstreams of this app and the order in which a request tries them."""

    def __init__(self, upstreams: list[Upstream], config: Mapping[str, Any]) -> None:
        self.upstreams = {u.name: u for u in upstreams}
        self.explicit = any(u.spec.models is not None for u in upstreams)
        self.cooldown_failures = int(config["LLM_COOLDOWN_FAILURES"])
        self.cooldown_s = float(config["LLM_COOLDOWN_S"])
        self.lease_ttl_s = float(config["LEASE_TTL_S"])
        # A probe that never reports (its worker died) frees the slot after its longest wait.
        self.probe_ttl_ms = int(
            (config["LLM_CONNECT_TIMEOUT_S"] + config["LLM_READ_TIMEOUT_S"] + 5) * 1000
        )
        self._lock = threading.Lock()
        self._rotations: dict[str, SmoothWeighted] = {}

    def public_models(self) -> list[str] | None:
        """Every public model served, or None when the one upstream serves any model."""
        if not self.explicit:
            return None
        return list(dict.fromkeys(m for u in self.upstreams.values() for m in u.spec.models or ()))

    def serving(self, model: str) -> list[Upstream]:
        return [u for u in self.upstreams.values() if u.spec.serves(model)]

    def order(self, model: str) -> list[Upstream]:
        """The upstreams serving ``model``: this worker's weighted pick first, then the others
        by weight (heaviest first), each once."""
        candidates = self.serving(model)
        if len(candidates) < 2:
            return candidates
        with self._lock:
            rotation = self._rotations.get(model)
            if rotation is None:
                rotation = SmoothWeighted({u.name: u.spec.weight for u in candidates})
                self._rotations[model] = rotation
            first = rotation.pick()
        rest = sorted((u for u in candidates if u.name != first), key=lambda u: -u.spec.weight)
        return [self.upstreams[first], *rest]

    def close(self) -> None:
        for upstream in self.upstreams.values():
            upstream.provider.close()


def build_router(config: Mapping[str, Any]) -> Router:
    """One provider per upstream; nothing connects until used."""
    upstreams = [
        Upstream(spec, build_provider(config, spec.base_url, spec.api_key))
        for spec in specs_from_config(config)
    ]
    return Router(upstreams, config)


def router(app: Flask) -> Router:
    """This app's router (built by ``api.create_app``)."""
    return app.extensions[EXTENSION]  # type: ignore[no-any-return]


# --- shared state in Redis ----------------------------------------------------------------------


def state_key(name: str) -> str:
    return f"sg:{{up}}:state:{name}"


def lease_key(name: str) -> str:
    return f"sg:{{up}}:lease:{name}"


def probe_key(name: str) -> str:
    return f"sg:{{up}}:probe:{name}"


# KEYS: per candidate its state, lease and probe keys. ARGV: now, lease expiry, the stream id,
# probe ttl (ms), then each candidate's max_concurrent (0 = none).
# Returns {index, how, fails}: how 0 = healthy, 1 = the probe after a cooldown, 2 = cooling down
# but every other candidate is too (better to try it than to refuse); index 0 = all are full.
_PICK = """
local now = tonumber(ARGV[1])
local fallback = nil
for i = 1, #KEYS / 3 do
  local state, lease, probe = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i]
  local max = tonumber(ARGV[4+i])
  redis.call('ZREMRANGEBYSCORE', lease, '-inf', now)
  if max == 0 or redis.call('ZCARD', lease) < max then
    local s = redis.call('HMGET', state, 'until', 'fails')
    local till = tonumber(s[1] or '0')
    local fails = tonumber(s[2] or '0')
    local how = -1
    if till == 0 then
      how = 0
    elseif till <= now and redis.call('SET', probe, ARGV[3], 'NX', 'PX', ARGV[4]) then
      how = 1
    elseif fallback == nil then
      fallback = {i, 2, fails}
    end
    if how >= 0 then
      redis.call('ZADD', lease, ARGV[2], ARGV[3])
      return {i, how, fails}
    end
  end
end
if fallback ~= nil then
  redis.call('ZADD', KEYS[3*fallback[1]-1], ARGV[2], ARGV[3])
  return fallback
end
return {0, 0, 0}
"""

# KEYS: state, probe. ARGV: now, threshold, cooldown seconds, kind.
# Returns 1 when this failure (re)starts a cooldown.
_FAIL = """
local fails = redis.call('HINCRBY', KEYS[1], 'fails', 1)
redis.call('HSET', KEYS[1], 'last_failure', ARGV[1], 'last_kind', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'failures', 1)
if fails >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'until', tonumber(ARGV[1]) + tonumber(ARGV[3]))
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""

HEALTHY, PROBE, DESPERATE = 0, 1, 2


@dataclass
class Slot:
    """An upstream taken for one attempt: its lease is held until ``release``."""

    upstream: Upstream
    how: int
    fails: int


class NoUpstream(Exception):  # noqa: N818 - what the client is told
    """No upstream can take the request: none serves the model, or all are at ``max_concurrent``."""

    def __init__(self, message: str, *, busy: bool) -> None:
        super().__init__(message)
        self.message = message
        self.busy = busy


def take(client: redis.Redis, rt: Router, candidates: list[Upstream], stream_id: str) -> Slot:
    """The first candidate that has room and is not cooling down; its lease is taken."""
    keys: list[str] = []
    for u in candidates:
        keys += [state_key(u.name), lease_key(u.name), probe_key(u.name)]
    now = time.time()
    args: list[Any] = [f"{now:.3f}", f"{now + rt.lease_ttl_s:.3f}", stream_id, rt.probe_ttl_ms]
    args += [u.spec.max_concurrent or 0 for u in candidates]
    index, how, fails = _script(client, _PICK)(keys, args, client=client)
    if not index:
        raise NoUpstream(
            "Every model server for this model is at its concurrency limit; retry shortly.",
            busy=True,
        )
    return Slot(candidates[int(index) - 1], int(how), int(fails))


def release(client: redis.Redis, slot: Slot, stream_id: str) -> None:
    """Give the attempt's lease back (and the probe, if it ended without a verdict)."""
    if slot.how != PROBE:
        client.zrem(lease_key(slot.upstream.name), stream_id)
        return
    pipe = client.pipeline(transaction=False)
    pipe.zrem(lease_key(slot.upstream.name), stream_id)
    pipe.delete(probe_key(slot.upstream.name))  # a client that left proves nothing: probe again
    pipe.execute()


def succeeded(client: redis.Redis, slot: Slot) -> None:
    """The upstream answered: it is healthy again (only written when it was not)."""
    if slot.fails or slot.how != HEALTHY:
        pipe = client.pipeline(transaction=False)
        pipe.hdel(state_key(slot.upstream.name), "fails", "until")
        pipe.delete(probe_key(slot.upstream.name))
        pipe.execute()
        slot.fails, slot.how = 0, HEALTHY


def failed(client: redis.Redis, rt: Router, slot: Slot, kind: str) -> bool:
    """Count a failure; True when it takes the upstream out of rotation."""
    keys = [state_key(slot.upstream.name), probe_key(slot.upstream.name)]
    args = [f"{time.time():.3f}", rt.cooldown_failures, rt.cooldown_s, kind]
    return bool(_script(client, _FAIL)(keys, args, client=client))


def renew(client: redis.Redis, rt: Router, held: Iterable[tuple[str, str]]) -> None:
    """Extend the leases of this worker's runs (``(upstream, stream_id)`` pairs)."""
    pipe = client.pipeline(transaction=False)
    expiry = time.time() + rt.lease_ttl_s
    for name, stream_id in held:
        pipe.zadd(lease_key(name), {stream_id: expiry}, xx=True)
    pipe.execute()


def status(client: redis.Redis, rt: Router) -> list[dict[str, Any]]:
    """Each upstream as the operator sees it (never its key)."""
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for name in rt.upstreams:
        pipe.hgetall(state_key(name))
        pipe.zcount(lease_key(name), now, "+inf")
    results = pipe.execute()
    out = []
    for i, (name, upstream) in enumerate(rt.upstreams.items()):
        state = {_text(k): _text(v) for k, v in results[2 * i].items()}
        till = float(state.get("until") or 0)
        spec = upstream.spec
        out.append(
            {
                "name": name,
                "base_url": spec.base_url,
                "models": dict(spec.models) if spec.models is not None else None,
                "weight": spec.weight,
                "max_concurrent": spec.max_concurrent,
                "state": "cooling_down" if till > now else "probing" if till else "healthy",
                "cooling_until": till if till > now else None,
                "in_flight": int(results[2 * i + 1]),
                "consecutive_failures": int(state.get("fails") or 0),
                "failures": int(state.get("failures") or 0),
                "last_failure_at": float(state.get("last_failure") or 0) or None,
                "last_failure_kind": state.get("last_kind"),
            }
        )
    return out


_SCRIPTS: dict[str, Any] = {}


def _script(client: redis.Redis, source: str) -> Any:
    """A script object run by EVALSHA on whichever client is passed (loaded on first use)."""
    script = _SCRIPTS.get(source)
    if script is None:
        script = _SCRIPTS[source] = client.register_script(source)
    return script


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
