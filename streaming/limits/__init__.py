"""Rate limits and token quotas in Redis: one atomic admission per generation.

- ``keys``: the limits, scopes and Redis keys (hash tag ``{t:<tenant id>}``: one Cluster slot);
- ``scripts``: the Lua scripts (admit, request rate, renew, release);
- ``engine``: ``RedisAdmissionControl`` (admit / renew / release / charge_request); a refusal is
  a ``LimitExceeded`` carrying the numbers, which ``api.limits`` renders as the 429;
- ``overrides``: the limits in force, and the audited override changes of the admin API;
- ``cache``: the per-process limits cache, invalidated by a per-tenant version in Redis;
- ``usage``: a caller's usage report (``GET /v1/usage``) and the daily refusal counts.

The engine is built once per app by ``install`` (``create_app``) and reached through the typed
accessor ``admission_control(app)``.
"""

from __future__ import annotations

from flask import Flask

from streaming.limits.engine import Admission, LimitExceeded, LimitState, RedisAdmissionControl
from streaming.limits.keys import LIMITS, MAX_LIMIT, WINDOW_S, Scope
from streaming.limits.overrides import (
    describe_limits,
    get_effective_limits,
    invalidate,
    set_limits,
    update_limits,
)
from streaming.limits.usage import count_refusal, refusals, usage_report

__all__ = [
    "LIMITS",
    "MAX_LIMIT",
    "WINDOW_S",
    "Admission",
    "LimitExceeded",
    "LimitState",
    "RedisAdmissionControl",
    "Scope",
    "admission_control",
    "count_refusal",
    "describe_limits",
    "get_effective_limits",
    "install",
    "invalidate",
    "refusals",
    "set_limits",
    "update_limits",
    "usage_report",
]

_EXTENSION = "streamgate.admission"


def install(app: Flask) -> RedisAdmissionControl:
    """Build this app's admission control (once, in ``create_app``)."""
    control = app.extensions[_EXTENSION] = RedisAdmissionControl()
    return control


def admission_control(app: Flask) -> RedisAdmissionControl:
    """This app's admission control, as ``install`` built it."""
    control = app.extensions.get(_EXTENSION)
    if not isinstance(control, RedisAdmissionControl):
        raise RuntimeError("no admission control: build the app with api.create_app()")
    return control
