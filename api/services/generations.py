"""Starting a generation: validate against the tenant's rules, admit it, record it.

Shared by direct mode (``/v1/chat/completions``) and channel mode (``/v1/streams``).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, current_app
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from api.config import ConfigError
from api.limits import admit, ratelimit_headers
from auth.access import Identity
from auth.models import AppToken, Tenant
from core.errors import ApiError
from core.store import db, new_id
from streaming import state
from streaming.generation import Generation
from streaming.limits import admission_control
from streaming.upstreams import router

log = logging.getLogger("streamgate.models")


def allowed_models(tenant_id: str, app_token_jti: str | None = None) -> list[str]:
    """The models a tenant may use: its allow-list, or the deployment's default list; for an app
    token, the part of that its own allow-list names."""
    tenant = db.session.get(Tenant, tenant_id)
    if tenant is None or tenant.disabled:
        raise ApiError(403, "This tenant is disabled.", code="tenant_disabled")
    models = list(tenant.allowed_models or current_app.config["LLM_MODELS"])
    served = router(current_app).public_models()
    if served is not None:
        models = [m for m in models if m in served]
    token = db.session.get(AppToken, app_token_jti) if app_token_jti else None
    if token is not None and token.models is not None:
        models = [m for m in models if m in token.models]
    return models


def unserved_models(models: list[str]) -> list[str]:
    """The models of ``models`` that no upstream serves (none with a single ``LLM_BASE_URL``)."""
    served = router(current_app).public_models()
    return [] if served is None else [m for m in models if m not in served]


def refuse_unserved_models(models: list[str] | None) -> None:
    """422 when an allow-list being written names a model that no upstream serves."""
    missing = unserved_models(models or [])
    if missing:
        raise ApiError(
            422,
            f"No model server serves '{missing[0]}' (see LLM_UPSTREAMS).",
            code="model_not_served",
            errors={"allowed_models": [f"'{m}' is served by no upstream." for m in missing]},
        )


def check_served_models(app: Flask) -> None:
    """Refuse to start when a tenant's allow-list names a model that no upstream serves.

    Checked where the database is reachable (a worker's start); when it is not, or has no
    tables yet, the check is skipped with a warning (admin writes are checked anyway).
    """
    served = router(app).public_models()
    if served is None:
        return
    with app.app_context():
        try:
            rows = db.session.execute(select(Tenant.slug, Tenant.allowed_models)).all()
        except SQLAlchemyError:
            log.warning("tenant model allow-lists not checked against LLM_UPSTREAMS: no database")
            return
        finally:
            db.session.remove()
    for slug, models in rows:
        for model in models or ():
            if model not in served:
                raise ConfigError(
                    f"LLM_UPSTREAMS: tenant {slug!r} allows model {model!r}, which no upstream "
                    "serves (serve it, or change the tenant's allowed_models first)"
                )


def prompt_chars(messages: list[dict[str, Any]]) -> int:
    """Characters across all messages: text, content parts (base64 images and audio included)
    and the arguments of earlier tool calls, as ``MAX_PROMPT_CHARS`` counts them."""
    return sum(_chars(m.get("content")) + _chars(m.get("tool_calls")) for m in messages)


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars(item) for item in value)
    if isinstance(value, dict):
        return sum(_chars(item) for item in value.values())
    return 0


# What an image, audio or file part is reckoned to cost before the model server counts it: a
# high-detail 1024x1024 image is about 765 tokens at OpenAI. Its base64 length says nothing
# about its tokens (a 300 kB photo would reserve 75,000 tokens at 4 characters a token).
MEDIA_PART_TOKENS = 1000


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """A cheap upper-leaning estimate (about 4 characters a token, plus framing per message)."""
    total = 2
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in ("text", "refusal"):
                    total += _chars(part.get(kind)) // 4
                else:
                    total += MEDIA_PART_TOKENS
        else:
            total += _chars(content) // 4
        total += _chars(m.get("tool_calls")) // 4 + 4
    return total


#: Fields of a request that are Streamgate's, not the model server's.
_NOT_FORWARDED = frozenset({"max_completion_tokens", "webhook_url"})


def start_generation(
    ident: Identity, body: dict[str, Any], mode: str, webhook_url: str | None = None
) -> tuple[Generation, dict[str, str]]:
    """Check the request against the tenant's models and bounds, admit it and record it.

    Returns the generation and the ``RateLimit-*`` headers of its admission.
    """
    cfg = current_app.config
    model = body["model"]
    if model not in allowed_models(ident.tenant_id, ident.jti if ident.kind == "app" else None):
        raise ApiError.for_param(
            404,
            f"The model '{model}' does not exist or you do not have access to it.",
            "model",
            "model_not_found",
            "Unknown model.",
        )
    messages = body["messages"]
    # More than MAX_MESSAGES is refused by the schema, before any message is validated.
    if prompt_chars(messages) > cfg["MAX_PROMPT_CHARS"]:
        raise ApiError.for_param(
            400,
            f"Messages are too long: at most {cfg['MAX_PROMPT_CHARS']} characters in all.",
            "messages",
            "context_length_exceeded",
            "Too long.",
        )
    # A request that names no limit gets the default, never more than the cap allows.
    max_tokens = (
        body.get("max_tokens")
        or body.get("max_completion_tokens")
        or min(cfg["DEFAULT_MAX_TOKENS"], cfg["MAX_TOKENS_CAP"])
    )
    if max_tokens > cfg["MAX_TOKENS_CAP"]:
        raise ApiError.for_param(
            400,
            f"max_tokens is too large: at most {cfg['MAX_TOKENS_CAP']}.",
            "max_tokens",
            "max_tokens_too_large",
            "Too large.",
        )
    # Everything else is forwarded as the client sent it. The cap goes out as max_tokens, the
    # name every OpenAI-compatible server reads (llama.cpp and older vLLM / Ollama ignore
    # max_completion_tokens, so the cap would silently not apply).
    request = {key: value for key, value in body.items() if key not in _NOT_FORWARDED}
    request["model"] = model
    request["max_tokens"] = max_tokens
    stream_id = new_id("str")
    estimate = estimate_prompt_tokens(messages)
    end_user = body.get("user") or None  # OpenAI's `user`: the caller's own end user
    admission = admit(ident, estimate + max_tokens, stream_id, end_user)
    gen = Generation(
        stream_id=stream_id,
        tenant_id=ident.tenant_id,
        user_id=ident.user_id,
        token_jti=ident.jti,
        mode=mode,
        model=model,
        messages=messages,
        params={"max_tokens": max_tokens},
        prompt_estimate=estimate,
        admission=admission.info,
        request=request,
        webhook_url=webhook_url,
        end_user=end_user,
        operator_owned=ident.role == "operator",
    )
    try:
        state.create(gen)
    except Exception:
        db.session.rollback()
        admission_control(current_app).release(admission.info, 0, 0)
        raise
    return gen, ratelimit_headers(admission.binding)
