"""Liveness and readiness probes.

``/readyz`` is unauthenticated: each model server's answer is cached per worker for
``_LLM_PROBE_TTL_S`` so a flood of probes cannot turn into a flood of upstream calls. It is ready
when every public model has a model server that answers and is not cooling down; ``models``
says, model by model, which upstreams are.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from flask import Blueprint, current_app
from sqlalchemy import text

from api.upstream_config import public_models
from core.store import db, get_redis
from streaming.upstreams import UpstreamSpec, router, specs_from_config, status

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> tuple[dict[str, str], int]:
    """The process is alive (no dependency is checked)."""
    return {"status": "ok"}, 200


def _check_database() -> str:
    db.session.execute(text("SELECT 1"))
    return "ok"


def _check_redis() -> str:
    get_redis().ping()
    return "ok"


_LLM_PROBE_TTL_S = 2.0
_llm_probe: dict[str, tuple[float, str]] = {}  # base URL -> (monotonic time, outcome)


def _probe(spec: UpstreamSpec) -> str:
    """``GET <base_url>/models`` of one model server, answered from a short per-worker cache."""
    base = spec.base_url.rstrip("/")
    cached = _llm_probe.get(base)
    if cached is not None and time.monotonic() - cached[0] < _LLM_PROBE_TTL_S:
        return cached[1]
    try:
        response = httpx.get(
            base + "/models", headers={"Authorization": "Bearer " + spec.api_key}, timeout=2.0
        )
        response.raise_for_status()
        outcome = "ok"
    except Exception as exc:  # noqa: BLE001 - a probe reports every failure the same way
        outcome = f"down: {type(exc).__name__}"
    _llm_probe[base] = (time.monotonic(), outcome)
    return outcome


def _cooling() -> set[str]:
    """Upstreams out of rotation now (none known when Redis does not answer)."""
    try:
        return {u["name"] for u in status(get_redis(), router(current_app)) if u["cooling_until"]}
    except Exception:  # noqa: BLE001 - Redis has its own check
        return set()


def _check_models() -> dict[str, dict[str, Any]]:
    """Each public model: ready when at least one upstream serving it answers and is in rotation."""
    cfg = current_app.config
    specs = specs_from_config(cfg)  # read now: LLM_BASE_URL may differ from start-up in tests
    served = public_models(cfg["LLM_UPSTREAMS"]) if cfg["LLM_UPSTREAMS"] else cfg["LLM_MODELS"]
    cooling = _cooling() if len(specs) > 1 else set()
    health = {spec.name: "cooling_down" if spec.name in cooling else _probe(spec) for spec in specs}
    models: dict[str, dict[str, Any]] = {}
    for model in served:
        upstreams = {s.name: health[s.name] for s in specs if s.serves(model)}
        models[model] = {"ready": "ok" in upstreams.values(), "upstreams": upstreams}
    return models


@bp.get("/readyz")
def readyz() -> tuple[dict[str, object], int]:
    """Database, Redis and a model server for every public model; 503 names what is not."""
    checks: dict[str, str] = {}
    for name, check in (("database", _check_database), ("redis", _check_redis)):
        try:
            checks[name] = check()
        except Exception as exc:  # noqa: BLE001 - a probe reports every failure the same way
            checks[name] = f"down: {type(exc).__name__}"
    models = _check_models()
    unserved = sorted(m for m, state in models.items() if not state["ready"])
    checks["llm"] = "ok" if not unserved else "down: no model server for " + ", ".join(unserved)
    down = sorted(name for name, state in checks.items() if state != "ok")
    body: dict[str, object] = {"status": "ok", "checks": checks, "models": models}
    if down:
        body = {"status": "unavailable", "down": down, "checks": checks, "models": models}
        if unserved:
            body["models_down"] = unserved
        return body, 503
    return body, 200
