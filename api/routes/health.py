"""Liveness and readiness probes.

``/readyz`` is unauthenticated: the model server's answer is cached per worker for
``_LLM_PROBE_TTL_S`` so a flood of probes cannot turn into a flood of upstream calls.
"""

from __future__ import annotations

import time

import httpx
from flask import Blueprint, current_app
from sqlalchemy import text

from core.store import db, get_redis

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


def _check_llm() -> str:
    base = current_app.config["LLM_BASE_URL"].rstrip("/")
    cached = _llm_probe.get(base)
    if cached is not None and time.monotonic() - cached[0] < _LLM_PROBE_TTL_S:
        return cached[1]
    try:
        outcome = _probe_llm()
    except Exception as exc:  # noqa: BLE001 - a probe reports every failure the same way
        outcome = f"down: {type(exc).__name__}"
    _llm_probe[base] = (time.monotonic(), outcome)
    return outcome


def _probe_llm() -> str:
    base = current_app.config["LLM_BASE_URL"].rstrip("/")
    response = httpx.get(
        base + "/models",
        headers={"Authorization": "Bearer " + current_app.config["LLM_API_KEY"]},
        timeout=2.0,
    )
    response.raise_for_status()
    return "ok"


@bp.get("/readyz")
def readyz() -> tuple[dict[str, object], int]:
    """Database, Redis and the model server each answer; 503 names what is down."""
    checks: dict[str, str] = {}
    for name, check in (
        ("database", _check_database),
        ("redis", _check_redis),
        ("llm", _check_llm),
    ):
        try:
            checks[name] = check()
        except Exception as exc:  # noqa: BLE001 - a probe reports every failure the same way
            checks[name] = f"down: {type(exc).__name__}"
    down = sorted(name for name, state in checks.items() if state != "ok")
    if down:
        return {"status": "unavailable", "down": down, "checks": checks}, 503
    return {"status": "ok", "checks": checks}, 200
