"""Limits over HTTP: the 429 a refusal becomes, the ``RateLimit-*`` headers, ``rate_limited``.

The engine (``streaming.limits``) decides; this module only says it in HTTP: ``Retry-After`` and
``RateLimit-*`` headers, a message naming the limit, and details in the envelope (none in
OpenAI's shape, whose SDKs read ``param`` as a request field).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

import redis
from flask import after_this_request, current_app, g, request

from api.errors import error_response, overloaded, wants_openai_shape
from auth.access import Identity, current_identity
from core.errors import ApiError
from streaming.limits import (
    WINDOW_S,
    Admission,
    LimitExceeded,
    LimitState,
    admission_control,
    count_refusal,
)
from streaming.load import load_monitor
from streaming.runner import registry

F = TypeVar("F", bound=Callable[..., Any])

# "user": the principal (a user or an app token); "end_user": one of an app token's end users.
_WHOSE = {"user": "this user", "tenant": "this tenant", "end_user": "end user '{}' of this app"}
_TITLE = {
    "rpm": "requests per minute (RPM)",
    "concurrent": "concurrent streams",
    "tpm": "tokens per minute (TPM)",
    "tpd": "tokens per day (TPD)",
}


def ratelimit_headers(state: LimitState) -> dict[str, str]:
    """The ``RateLimit-*`` headers describing one limit."""
    window = WINDOW_S.get(state.key)
    policy = f"{state.limit}" + (f";w={window}" if window else "") + f';name="{state.name}"'
    return {
        "RateLimit-Limit": str(state.limit),
        "RateLimit-Remaining": str(max(0, state.remaining)),
        "RateLimit-Reset": str(math.ceil(state.reset_ms / 1000)),
        "RateLimit-Policy": policy,
    }


def _message(refused: LimitState, cost: int | None, retry_s: int, end_user: str | None) -> str:
    whose = _WHOSE[refused.scope].format(end_user)
    what = f"{_TITLE[refused.key]} for {whose}: limit {refused.limit}"
    if refused.key == "rpm":
        return f"Rate limit reached for {what}. Try again in {retry_s} s."
    if refused.key == "concurrent":
        return f"Too many {what}. Try again when one of them ends."
    if cost is not None and cost > refused.limit:
        return (
            f"Request too large for {what}; this request reserves {cost} tokens "
            "(prompt estimate plus max_tokens). Lower max_tokens."
        )
    return (
        f"Token budget reached for {what}, {max(0, refused.remaining)} left; this request "
        f"reserves {cost} (prompt estimate plus max_tokens). Try again in {retry_s} s."
    )


def too_many_requests(exc: LimitExceeded, end_user: str | None = None) -> ApiError:
    """The 429 naming the limit that holds the caller back longest (and whose: the principal,
    its tenant, or ``end_user``, the request's OpenAI ``user``)."""
    refused = exc.refused
    current_app.extensions["streamgate.metrics"].rate_limited.labels(
        f"{refused.scope}_{refused.key}"
    ).inc()
    retry_s = max(1, math.ceil(refused.retry_ms / 1000))
    headers = {"Retry-After": str(retry_s), **ratelimit_headers(refused)}
    if refused.key == "concurrent":
        headers["RateLimit-Reset"] = str(retry_s)
    # OpenAI's shape has no place for details: there the message names the limit, as OpenAI's
    # own 429s do.
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
    if details is not None and refused.scope == "end_user":
        details["end_user"] = end_user
    message = _message(refused, exc.cost, retry_s, end_user)
    return ApiError(429, message, code="rate_limit_exceeded", headers=headers, errors=details)


def admit(
    ident: Identity, estimate_tokens: int, stream_id: str, end_user: str | None = None
) -> Admission:
    """Admit one generation: every limit of the principal, its tenant and (when it limits them)
    its ``end_user`` in one atomic step, or a 429."""
    control = admission_control(current_app)
    try:
        return control.admit(
            ident.tenant_id, ident.principal_id, estimate_tokens, stream_id, end_user
        )
    except LimitExceeded as exc:
        count_refusal(ident.tenant_id, ident.principal_id)
        raise too_many_requests(exc, end_user) from None


def rate_limited(view: F) -> F:
    """Count a request to ``view`` against requests per minute (after ``require``)."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ident = current_identity()
        try:
            state = admission_control(current_app).charge_request(
                ident.tenant_id, ident.principal_id
            )
        except LimitExceeded as exc:
            count_refusal(ident.tenant_id, ident.principal_id)
            raise too_many_requests(exc) from None
        if state is not None:
            headers = ratelimit_headers(state)

            @after_this_request
            def add_headers(response: Any) -> Any:
                for name, value in headers.items():
                    response.headers.setdefault(name, value)
                return response

        return view(*args, **kwargs)

    return cast(F, wrapper)


# --- refused requests count too ----------------------------------------------------------------

#: Where a refused body still costs the caller a request: the routes that start generations.
GENERATION_ENDPOINTS = frozenset({"chat.create_chat_completion", "streams.create_stream"})
_REFUSALS = frozenset({400, 404, 413, 422})


def charge_refused_request(response: Any) -> Any:
    """An ``after_request`` hook: a generation request refused for its body counts against the
    caller's requests per minute like an admitted one, so a flood of invalid bodies meets the
    same 429 as a flood of valid ones (admission, which counts those, never ran)."""
    if response.status_code not in _REFUSALS or request.endpoint not in GENERATION_ENDPOINTS:
        return response
    ident = g.get("identity")
    if ident is None:  # refused before authentication: nobody to charge
        return response
    try:
        admission_control(current_app).charge_request(ident.tenant_id, ident.principal_id)
    except LimitExceeded as exc:
        count_refusal(ident.tenant_id, ident.principal_id)
        return error_response(too_many_requests(exc))
    except redis.RedisError:
        pass  # the refusal stands; counting it is not worth failing it
    return response


# --- load shedding at the door -----------------------------------------------------------------

#: What the door guards: starting a generation (either mode) and opening a hub connection.
SHED_ENDPOINTS = GENERATION_ENDPOINTS | {"events.stream"}


def refuse_when_overloaded() -> None:
    """A ``before_request`` hook: refuse new work while this worker is at capacity.

    Decided from in-process state only (``streaming.load``), before authentication, so a
    refusal costs next to nothing when cost is what there is too much of.
    """
    if request.endpoint not in SHED_ENDPOINTS:
        return
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    starts_a_run = request.endpoint in GENERATION_ENDPOINTS
    refusal = load_monitor(app).refusal(len(registry(app).runs) if starts_a_run else None)
    if refusal is not None:
        raise overloaded(refusal.reason)
