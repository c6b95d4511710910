"""Starting a generation: validate against the tenant's rules, admit it, record it.

Shared by direct mode (``/v1/chat/completions``) and channel mode (``/v1/streams``).
"""

from __future__ import annotations

from typing import Any

from flask import current_app

from api.limits import admit, ratelimit_headers
from auth.access import Identity
from auth.models import AppToken, Tenant
from core.errors import ApiError
from core.store import db, new_id
from streaming import state
from streaming.generation import Generation
from streaming.limits import admission_control


def allowed_models(tenant_id: str, app_token_jti: str | None = None) -> list[str]:
    """The models a tenant may use: its allow-list, or the deployment's default list; for an app
    token, the part of that its own allow-list names."""
    tenant = db.session.get(Tenant, tenant_id)
    if tenant is None or tenant.disabled:
        raise ApiError(403, "This tenant is disabled.", code="tenant_disabled")
    models = list(tenant.allowed_models or current_app.config["LLM_MODELS"])
    token = db.session.get(AppToken, app_token_jti) if app_token_jti else None
    if token is not None and token.models is not None:
        models = [m for m in models if m in token.models]
    return models


def estimate_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """A cheap upper-leaning estimate (about 4 characters a token, plus framing per message)."""
    return sum(len(m["content"]) // 4 + 4 for m in messages) + 2


def start_generation(
    ident: Identity, body: dict[str, Any], mode: str, webhook_url: str | None = None
) -> tuple[Generation, dict[str, str]]:
    """Check the request against the tenant's models and bounds, admit it and record it.

    Returns the generation and the ``RateLimit-*`` headers of its admission.
    """
    cfg = current_app.config
    model = body["model"]
    if model not in allowed_models(ident.tenant_id, ident.jti if ident.kind == "app" else None):
        raise ApiError(
            404,
            f"The model '{model}' does not exist or you do not have access to it.",
            code="model_not_found",
            param="model",
            errors={"model": ["Unknown model."]},
        )
    messages = [{"role": m["role"], "content": m["content"]} for m in body["messages"]]
    # More than MAX_MESSAGES is refused by the schema, before any message is validated.
    if sum(len(m["content"]) for m in messages) > cfg["MAX_PROMPT_CHARS"]:
        raise ApiError(
            400,
            f"Messages are too long: at most {cfg['MAX_PROMPT_CHARS']} characters in all.",
            param="messages",
            code="context_length_exceeded",
            errors={"messages": ["Too long."]},
        )
    # A request that names no limit gets the default, never more than the cap allows.
    max_tokens = (
        body.get("max_tokens")
        or body.get("max_completion_tokens")
        or min(cfg["DEFAULT_MAX_TOKENS"], cfg["MAX_TOKENS_CAP"])
    )
    if max_tokens > cfg["MAX_TOKENS_CAP"]:
        raise ApiError(
            400,
            f"max_tokens is too large: at most {cfg['MAX_TOKENS_CAP']}.",
            param="max_tokens",
            code="max_tokens_too_large",
            errors={"max_tokens": ["Too large."]},
        )
    params = {
        "max_tokens": max_tokens,
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "stop": body.get("stop"),
    }
    stream_id = new_id("str")
    estimate = estimate_prompt_tokens(messages)
    admission = admit(ident, estimate + max_tokens, stream_id)
    gen = Generation(
        stream_id=stream_id,
        tenant_id=ident.tenant_id,
        user_id=ident.user_id,
        token_jti=ident.jti,
        mode=mode,
        model=model,
        messages=messages,
        params=params,
        prompt_estimate=estimate,
        admission=admission.info,
        webhook_url=webhook_url,
        end_user=body.get("user") or None,
    )
    try:
        state.create(gen)
    except Exception:
        db.session.rollback()
        admission_control(current_app).release(admission.info, 0, 0)
        raise
    return gen, ratelimit_headers(admission.binding)
