"""What a generation is and how it ends: the types every streaming module shares.

``Generation`` (copied out of the request), ``Outcome`` (how it ended), the outcomes of a stop
requested from outside, the hub channels a generation is seen on and its terminal events. No
imports from the rest of ``streaming``: the runner, the live state, the hub and the keeper all
stand on this module.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

TERMINAL_EVENTS = frozenset(
    {"stream.completed", "stream.failed", "stream.cancelled", "stream.revoked"}
)


def stream_channel(stream_id: str) -> str:
    """The hub channel of one generation's events."""
    return "streams/" + stream_id


def user_channel(user_id: str) -> str:
    """The hub channel of a user's stream lifecycle events."""
    return "users/" + user_id


def tenant_channel(tenant_id: str) -> str:
    """The admin channel of every stream's lifecycle events in a tenant."""
    return "tenants/" + tenant_id


def stream_of(channel: str) -> str | None:
    """The stream id of a ``streams/<id>`` channel (None for any other channel)."""
    return channel[len("streams/") :] if channel.startswith("streams/") else None


@dataclass
class Outcome:
    """How a generation ended; the record, the sink and the metrics all read it."""

    status: str  # completed | failed | cancelled | revoked
    finish_reason: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    http_status: int | None = None  # for failures before the first token (direct mode answers it)
    error_body: dict[str, Any] | None = None  # the model server's OpenAI error object, kept whole
    revoked_by: str | None = None
    reason: str | None = None


@dataclass
class Generation:
    """Everything a run needs, copied out of the request before the response starts."""

    stream_id: str
    tenant_id: str
    user_id: str
    token_jti: str
    mode: str
    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    prompt_estimate: int
    admission: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)
    # The body sent to the model server: the client's request with the model and cap applied.
    request: dict[str, Any] = field(default_factory=dict)
    webhook_url: str | None = None  # channel mode: POST the terminal event there
    end_user: str | None = None  # the OpenAI `user` field, recorded on the stream
    # An operator's stream stays off its tenant's admin channel: tenant admins never see
    # an operator's streams (``auth.access.may_read``).
    operator_owned: bool = False
    upstream: str | None = None  # the model server serving it (streaming.failover sets it)
    upstream_attempts: int = 0


def completion_id(stream_id: str) -> str:
    """The ``id`` of a direct-mode generation's chunks and completion (``chatcmpl-...``)."""
    return "chatcmpl-" + stream_id.removeprefix("str_")


def stopped_outcome(kind: str, **details: Any) -> Outcome:
    """An outcome for a stop requested from outside the run (control bus, client, keeper)."""
    if kind == "revoked":
        return Outcome(
            "revoked",
            error_code="stream_revoked",
            revoked_by=details.get("by"),
            reason=details.get("reason"),
            error_message="The stream was revoked by an administrator.",
        )
    if kind == "max_duration":
        return Outcome(
            "failed",
            error_code="max_duration",
            error_message="The generation exceeded its maximum duration.",
        )
    if kind == "worker_lost":
        return Outcome(
            "failed",
            error_code="worker_lost",
            error_message="The worker running this generation stopped.",
        )
    return Outcome("cancelled", reason=details.get("reason") or kind)


def outcome_payload(outcome: Outcome) -> dict[str, Any]:
    """The JSON an outcome is stored as (live state, terminal events)."""
    return {k: v for k, v in outcome.__dict__.items() if v is not None}


def terminal_event(
    outcome: Outcome, prompt_tokens: int, completion_tokens: int
) -> tuple[str, dict[str, Any]]:
    """The terminal event name and payload for an outcome."""
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if outcome.status == "completed":
        return "stream.completed", {"finish_reason": outcome.finish_reason, "usage": usage}
    if outcome.status == "revoked":
        return "stream.revoked", {
            "by": outcome.revoked_by,
            "reason": outcome.reason,
            "usage": usage,
        }
    if outcome.status == "cancelled":
        return "stream.cancelled", {"reason": outcome.reason, "usage": usage}
    return "stream.failed", {
        "error": {"code": outcome.error_code, "message": outcome.error_message},
        "usage": usage,
    }
