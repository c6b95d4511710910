"""The keeper: leases, flags, maximum duration and the reaper, on one timer per worker.

It also installs the control-bus handlers that stop local runs and close local subscribers.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from flask import Flask

from core.store import REDIS_EXTENSION
from streaming import state
from streaming.limits import admission_control
from streaming.runner import Generation, Outcome, outcome_payload, registry, stopped_outcome

if TYPE_CHECKING:
    from streaming.control import Services

log = logging.getLogger("streamgate.keeper")


def install_control_handlers(services: Services) -> None:
    """Act on control messages: stop matching runs, close matching subscribers."""
    app = services.app
    runs = registry(app)
    dispatcher = services.dispatcher

    def handle(message: dict[str, Any]) -> None:
        op = message.get("op")
        details = {"by": message.get("by"), "reason": message.get("reason")}
        if op == "cancel_stream":
            for run in runs.matching(lambda g: g.stream_id == message.get("stream_id")):
                run.stop(stopped_outcome("cancelled", reason=message.get("reason") or "cancelled"))
        elif op == "revoke_stream":
            for run in runs.matching(lambda g: g.stream_id == message.get("stream_id")):
                run.stop(stopped_outcome("revoked", **details))
        elif op == "revoke_user":
            user_id = message.get("user_id")
            for run in runs.matching(lambda g: g.user_id == user_id):
                run.stop(stopped_outcome("revoked", **details))
            for sub in dispatcher.subscribers(lambda s: s.user_id == user_id):
                sub.close("revoked")
        elif op == "revoke_token":
            jti = message.get("jti")
            for run in runs.matching(lambda g: g.token_jti == jti):
                run.stop(stopped_outcome("revoked", **details))
            for sub in dispatcher.subscribers(lambda s: s.jti == jti):
                sub.close("revoked")
        elif op == "revoke_tenant":
            tenant_id = message.get("tenant_id")
            for run in runs.matching(lambda g: g.tenant_id == tenant_id):
                run.stop(stopped_outcome("revoked", **details))
            for sub in dispatcher.subscribers(lambda s: s.tenant_id == tenant_id):
                sub.close("revoked")

    dispatcher.handlers.append(handle)


def interval(app: Flask) -> float:
    cfg = app.config
    return float(max(0.05, min(cfg["LEASE_TTL_S"] / 3, cfg["SSE_HEARTBEAT_S"])))


def keep(services: Services) -> None:
    """Run ``tick`` every interval until the services stop."""
    app = services.app
    period = interval(app)
    while services.running:
        started = time.monotonic()
        try:
            with app.app_context():
                tick(app)
        except Exception:  # noqa: BLE001 - the keeper must survive Redis or database outages
            log.warning("keeper tick failed", exc_info=True)
        try:
            with app.app_context():
                maintain_subscribers(app, services)
        except Exception:  # noqa: BLE001
            log.warning("keeper: hub subscriber upkeep failed", exc_info=True)
        services.stopping.wait(max(0.0, period - (time.monotonic() - started)))


def maintain_subscribers(app: Flask, services: Services) -> None:
    """Renew this worker's hub subscriptions and close those whose token was revoked, in batch.

    The control bus closes them at once; this catches a revocation that came without a message
    (logout, a disabled tenant) within one keeper interval, with two round trips per worker.
    """
    from auth.tokens import revoked_among
    from streaming.hub import renew_subscriptions

    subs = services.dispatcher.subscribers(lambda s: s.closed is None)
    if not subs:
        return
    renew_subscriptions(app, subs)
    tokens: dict[str, dict[str, Any]] = {}
    for sub in subs:
        tokens.setdefault(sub.jti, sub.claims)
    hits = revoked_among(list(tokens.values()))
    revoked = {jti for jti, hit in zip(tokens, hits, strict=True) if hit}
    for sub in subs:
        if sub.jti in revoked:
            sub.close("revoked")


def tick(app: Flask) -> None:
    """One round: renew and check local runs, reap orphans, retry queued record writes."""
    cfg = app.config
    client = app.extensions[REDIS_EXTENSION]
    runs = registry(app).snapshot()
    if runs:
        from streaming.control import flag_key

        now = time.time()
        pipe = client.pipeline(transaction=False)
        for run in runs:
            pipe.zadd(state.LIVE, {run.gen.stream_id: now + cfg["LEASE_TTL_S"]}, xx=True)
            pipe.hset(state.live_key(run.gen.stream_id), "tokens", run.tokens)
            pipe.get(flag_key(run.gen.stream_id))
        results = pipe.execute()
        admission = admission_control(app)
        for run, flag in zip(runs, results[2::3], strict=True):
            if flag:
                message = json.loads(flag)
                details = {"by": message.get("by"), "reason": message.get("reason")}
                kind = "revoked" if message.get("op") == "revoke_stream" else "cancelled"
                run.stop(stopped_outcome(kind, **details))
            elif time.monotonic() - run.started > cfg["STREAM_MAX_DURATION_S"]:
                run.stop(stopped_outcome("max_duration"))
            elif run.gen.admission is not None:
                admission.renew(run.gen.admission)
    reap(app)
    state.flush_pending_records()


def reap(app: Flask, limit: int = 50) -> int:
    """Settle runs whose lease expired (their worker died); returns how many were reaped."""
    client = app.extensions[REDIS_EXTENSION]
    expired = client.zrangebyscore(state.LIVE, "-inf", time.time(), start=0, num=limit)
    reaped = 0
    for raw in expired:
        stream_id = raw.decode() if isinstance(raw, bytes) else str(raw)
        if not client.zrem(state.LIVE, stream_id):
            continue  # another worker claimed it
        info = state.live_status(stream_id)
        # "revoked": an admin revoked it (streaming.state.mark_revoked) but no runner settled it.
        if not info or info.get("status") not in ("running", "revoked"):
            continue
        gen = Generation(
            stream_id=stream_id,
            tenant_id=info["tenant"],
            user_id=info["user"],
            token_jti=info.get("jti", ""),
            mode=info.get("mode", "channel"),
            model=info.get("model", ""),
            messages=[],
            params={},
            prompt_estimate=0,
            admission=json.loads(info.get("admission") or "{}") or None,
        )
        if info.get("status") == "revoked":
            by, why = info.get("revoked_by"), info.get("revoke_reason") or None
            outcome = stopped_outcome("revoked", by=by, reason=why)
        else:
            outcome = stopped_outcome("worker_lost")
        tokens = int(info.get("tokens") or 0)
        log.warning(
            "reaping stream %s: its worker stopped renewing the lease",
            stream_id,
            extra={"stream_id": stream_id},
        )
        settle_orphan(app, gen, outcome, tokens)
        reaped += 1
    return reaped


def settle_orphan(app: Flask, gen: Generation, outcome: Outcome, completion_tokens: int) -> None:
    """Tell subscribers, release limits, finish the record for a run nobody is running."""
    from streaming.channel import publish_terminal

    if gen.mode == "channel":
        publish_terminal(app, gen, outcome, gen.prompt_estimate, completion_tokens)
    if gen.admission is not None:
        admission_control(app).release(gen.admission, gen.prompt_estimate, completion_tokens)
    state.mark_finished(gen, outcome, gen.prompt_estimate, completion_tokens)
    state.write_record(app, gen, outcome, gen.prompt_estimate, completion_tokens)
    app.extensions["streamgate.metrics"].streams_total.labels(gen.mode, outcome.status).inc()
    log.info("settled orphan %s as %s", gen.stream_id, json.dumps(outcome_payload(outcome)))
