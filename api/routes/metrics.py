"""Prometheus metrics at ``/metrics``.

Protected: with ``METRICS_TOKEN`` set, a matching bearer token is required; without it, only a
direct loopback client (no ``X-Forwarded-For``: not through a proxy) may read it, and only when
no proxy is declared: behind ``TRUSTED_PROXIES`` > 0 the token is the only way in (a proxy on
loopback makes every client look local, and a header's absence proves nothing). Under gunicorn
``PROMETHEUS_MULTIPROC_DIR`` is set (gunicorn.conf.py) and every worker's samples are aggregated.
"""

from __future__ import annotations

import hmac
import os

from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from core.errors import ApiError

bp = Blueprint("metrics", __name__)

_LOOPBACK = {"127.0.0.1", "::1"}


def _authorized() -> bool:
    token = current_app.config["METRICS_TOKEN"]
    if token:
        supplied = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(supplied.encode(), token.encode())
    if current_app.config["TRUSTED_PROXIES"] > 0:
        return False
    return request.remote_addr in _LOOPBACK and "X-Forwarded-For" not in request.headers


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus exposition of this deployment's metrics."""
    if not _authorized():
        raise ApiError(
            403,
            "Metrics need METRICS_TOKEN as a bearer token (or a direct loopback client).",
            code="metrics_forbidden",
        )
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = current_app.extensions["streamgate.metrics"].registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
