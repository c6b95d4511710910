"""``Idempotency-Key`` on creating POSTs: a retry returns the first response and starts nothing.

The key is scoped to the caller (its user, or the app token for an app) and the route. The first
request with a key claims it in Redis (``SET NX``, a pending marker with a bound lifetime) and
runs; a 2xx response is then stored under the key for ``IDEMPOTENCY_TTL_S`` (24 h) and replayed
to every later request with the same key and the same body, with ``Idempotent-Replayed: true``.
The same key with another body is a 422. A duplicate that arrives while the first still runs
waits for its result (bounded by ``IDEMPOTENCY_WAIT_S``, then a 409 with ``Retry-After``), so
concurrent duplicates create one object. A request that fails (4xx, 5xx, an exception) releases
the key: nothing was created, and the retry runs afresh. Responses that stream cannot be
replayed, so a key on ``"stream": true`` chat is refused.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import Response, current_app, make_response, request

from auth.access import current_identity
from core.errors import ApiError
from core.store import get_redis

F = TypeVar("F", bound=Callable[..., Any])

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces (Stripe's 255 bound)
# What a replay repeats of the first response's headers (not Date, Set-Cookie, X-Request-Id).
_KEPT_HEADERS = ("Content-Type", "Location", "X-Stream-Id", "Cache-Control", "Pragma")
_KEPT_PREFIX = "RateLimit-"

# Release the claim only while it is still ours (a pending marker that outlived its bound and
# was claimed by another request must not be deleted).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def idempotent(*, refuse_streaming: bool = False) -> Callable[[F], F]:
    """Honour ``Idempotency-Key`` on a creating view (put it right below ``@require``)."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = request.headers.get(HEADER)
            if key is None:
                return view(*args, **kwargs)
            if not _KEY.match(key):
                raise ApiError(
                    400,
                    f"{HEADER} must be 1-255 printable ASCII characters without spaces.",
                    code="invalid_idempotency_key",
                    errors={HEADER: ["Malformed."]},
                )
            body = request.get_json(silent=True)
            if refuse_streaming and isinstance(body, dict) and body.get("stream") is True:
                raise ApiError(
                    400,
                    f"{HEADER} is not supported on streaming requests: a stream cannot be "
                    "replayed. Use channel mode (POST /v1/streams) to retry safely.",
                    code="idempotency_key_unsupported",
                    errors={HEADER: ["Not supported with stream: true."]},
                )
            return _run_once(view, args, kwargs, key, body)

        wrapper.idempotency = {"refuse_streaming": refuse_streaming}  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate


def _redis_key(key: str) -> str:
    ident = current_identity()
    principal = f"app:{ident.jti}" if ident.kind == "app" else f"user:{ident.user_id}"
    digest = hashlib.sha256(f"{request.endpoint}\n{key}".encode()).hexdigest()[:40]
    return f"sg:idem:{ident.tenant_id}:{principal}:{digest}"


def _fingerprint(body: Any) -> str:
    if body is None:
        raw = request.get_data()
    else:  # the same JSON in another key order or spacing is the same request
        raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(
        request.method.encode() + b" " + request.path.encode() + b"\n" + raw
    ).hexdigest()


def _run_once(view: Callable[..., Any], args: Any, kwargs: Any, key: str, body: Any) -> Any:
    cfg = current_app.config
    redis = get_redis()
    name = _redis_key(key)
    fingerprint = _fingerprint(body)
    claim = json.dumps({"state": "pending", "fp": fingerprint, "claim": secrets.token_hex(8)})
    # A pending claim outlives no request: the longest one is a non-streaming generation.
    pending_ttl_ms = int((cfg["STREAM_MAX_DURATION_S"] + 30) * 1000)
    deadline = time.monotonic() + float(cfg["IDEMPOTENCY_WAIT_S"])
    pause = 0.01
    while True:
        if redis.set(name, claim, nx=True, px=pending_ttl_ms):
            return _run_first(view, args, kwargs, name, claim, fingerprint)
        raw = redis.get(name)
        if raw is None:  # the first request failed and let go of the key: this one runs
            continue
        stored = json.loads(raw)
        if stored["fp"] != fingerprint:
            raise ApiError(
                422,
                f"This {HEADER} was used with a different request; use a new key.",
                code="idempotency_key_mismatch",
                errors={HEADER: ["Reused with a different request body."]},
            )
        if stored["state"] == "done":
            response = Response(stored["body"], status=stored["status"])
            response.headers.update(stored["headers"])
            response.headers[REPLAYED] = "true"
            return response
        if time.monotonic() >= deadline:
            raise ApiError(
                409,
                f"A request with this {HEADER} is still in progress; retry shortly.",
                code="idempotency_key_in_progress",
                headers={"Retry-After": "1"},
            )
        # The first request is running (a few ms for /v1/streams): wait for its result. A
        # cooperative sleep under gevent; the pause grows, so a long wait costs a few reads.
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


def _run_first(
    view: Callable[..., Any], args: Any, kwargs: Any, name: str, claim: str, fingerprint: str
) -> Response:
    redis = get_redis()
    try:
        response = make_response(view(*args, **kwargs))
    except BaseException:
        redis.eval(_RELEASE, 1, name, claim)
        raise
    if 200 <= response.status_code < 300 and not response.is_streamed:
        ttl_ms = int(current_app.config["IDEMPOTENCY_TTL_S"]) * 1000
        redis.set(name, _record(fingerprint, response), px=ttl_ms)
    else:
        redis.eval(_RELEASE, 1, name, claim)
    return response


def _record(fingerprint: str, response: Response) -> str:
    headers = {
        k: v
        for k, v in response.headers.items()
        if k in _KEPT_HEADERS or k.startswith(_KEPT_PREFIX)
    }
    return json.dumps(
        {
            "state": "done",
            "fp": fingerprint,
            "status": response.status_code,
            "headers": headers,
            "body": response.get_data(as_text=True),
        }
    )
