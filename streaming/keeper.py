"""The keeper: leases, flags, maximum duration and the reaper, on one timer per worker.

It also builds the table of control ops (op name -> handler) that stops local runs and closes
local subscribers; the bus (``Dispatcher``) and a stream's flag (re-checked every tick, for a
worker that missed the message) both go through it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask

from auth.revocations import reseed_after_failover
from auth.tokens import revoked_among
from core.store import REDIS_EXTENSION, use_runs_pool
from streaming import control, state, upstreams
from streaming.control import ControlMessage, Dispatcher, Handler, Subscriber
from streaming.generation import Generation, Outcome, outcome_payload, stopped_outcome
from streaming.limits import admission_control
from streaming.runner import Registry, Sink, registry, settle
from streaming.subscriptions import renew_subscriptions

log = logging.getLogger("streamgate.keeper")

OrphanSink = Callable[[Flask, Generation], Sink]
"""Where the terminal event of a run whose worker died goes (``channel.TerminalSink``)."""


def control_ops(runs: Registry, dispatcher: Dispatcher) -> dict[str, Handler]:
    """What this worker does about each control op: stop matching runs, close subscribers."""

    def stop(predicate: Callable[[Generation], bool], outcome: Outcome) -> None:
        for run in runs.matching(predicate):
            run.stop(outcome)

    def close(predicate: Callable[[Subscriber], bool]) -> None:
        for sub in dispatcher.subscribers(predicate):
            sub.close("revoked")

    def revoked(m: ControlMessage) -> Outcome:
        return stopped_outcome("revoked", by=m.by, reason=m.reason)

    def cancel_stream(m: ControlMessage) -> None:
        cancelled = stopped_outcome("cancelled", reason=m.reason or "cancelled")
        stop(lambda g: g.stream_id == m.stream_id, cancelled)

    def revoke_stream(m: ControlMessage) -> None:
        stop(lambda g: g.stream_id == m.stream_id, revoked(m))

    def revoke_user(m: ControlMessage) -> None:
        stop(lambda g: g.user_id == m.user_id, revoked(m))
        close(lambda s: s.user_id == m.user_id)

    def revoke_token(m: ControlMessage) -> None:
        stop(lambda g: g.token_jti == m.jti, revoked(m))
        close(lambda s: s.jti == m.jti)

    def revoke_tenant(m: ControlMessage) -> None:
        stop(lambda g: g.tenant_id == m.tenant_id, revoked(m))
        close(lambda s: s.tenant_id == m.tenant_id)

    return {
        control.CANCEL_STREAM: cancel_stream,
        control.REVOKE_STREAM: revoke_stream,
        control.REVOKE_USER: revoke_user,
        control.REVOKE_TOKEN: revoke_token,
        control.REVOKE_TENANT: revoke_tenant,
    }


def interval(app: Flask) -> float:
    cfg = app.config
    return float(max(0.05, min(cfg["LEASE_TTL_S"] / 3, cfg["SSE_HEARTBEAT_S"])))


class Outage:
    """One line of log per outage, not one per tick: while Redis or the database is down the
    keeper fails every interval (twice). The first failure is logged with its traceback, then a
    one-line reminder every ``remind_s`` while it lasts, and its end."""

    def __init__(
        self, what: str, remind_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.what = what
        self.remind_s = remind_s
        self.clock = clock
        self.since: float | None = None
        self.failures = 0
        self.reminded = 0.0

    def failed(self, error: BaseException) -> None:
        now = self.clock()
        self.failures += 1
        if self.since is None:
            self.since = self.reminded = now
            log.warning("%s failed", self.what, exc_info=error)
        elif now - self.reminded >= self.remind_s:
            self.reminded = now
            log.warning(
                "%s still failing: %d times in %.0f s, last: %s: %s",
                self.what,
                self.failures,
                now - self.since,
                type(error).__name__,
                error,
            )

    def succeeded(self) -> None:
        if self.since is not None:
            log.warning(
                "%s works again after %d failures in %.0f s",
                self.what,
                self.failures,
                self.clock() - self.since,
            )
            self.since, self.failures = None, 0


def keep(
    app: Flask, dispatcher: Dispatcher, stopping: threading.Event, orphan_sink: OrphanSink
) -> None:
    """Run ``tick`` every interval until ``stopping`` is set."""
    period = interval(app)
    ticks, upkeep = Outage("keeper tick"), Outage("keeper: hub subscriber upkeep")
    while not stopping.is_set():
        started = time.monotonic()
        try:
            with app.app_context():
                use_runs_pool()
                tick(app, dispatcher.ops, orphan_sink)
            ticks.succeeded()
        except Exception as exc:  # noqa: BLE001 - the keeper must survive Redis or database outages
            ticks.failed(exc)
        try:
            with app.app_context():
                maintain_subscribers(app, dispatcher)
            upkeep.succeeded()
        except Exception as exc:  # noqa: BLE001
            upkeep.failed(exc)
        stopping.wait(max(0.0, period - (time.monotonic() - started)))


def maintain_subscribers(app: Flask, dispatcher: Dispatcher) -> None:
    """Renew this worker's hub subscriptions and close those whose token was revoked, in batch.

    The control bus closes them at once; this catches a revocation that came without a message
    (logout, a disabled tenant) within one keeper interval, with two round trips per worker.
    """
    subs = dispatcher.subscribers(lambda s: s.closed is None)
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


def tick(app: Flask, ops: dict[str, Handler], orphan_sink: OrphanSink) -> None:
    """One round: renew and check local runs, reap orphans, retry queued record writes."""
    cfg = app.config
    client = app.extensions[REDIS_EXTENSION]
    runs = registry(app).snapshot()
    if runs:
        now = time.time()
        pipe = client.pipeline(transaction=False)
        for run in runs:
            pipe.zadd(state.LIVE, {run.gen.stream_id: now + cfg["LEASE_TTL_S"]}, xx=True)
            pipe.hset(state.live_key(run.gen.stream_id), "tokens", run.tokens)
            pipe.get(control.flag_key(run.gen.stream_id))
        results = pipe.execute()
        admission = admission_control(app)
        for run, flag in zip(runs, results[2::3], strict=True):
            if flag:
                _act_on_flag(ops, flag)
            elif time.monotonic() - run.started > cfg["STREAM_MAX_DURATION_S"]:
                run.stop(stopped_outcome("max_duration"))
            elif run.gen.admission is not None:
                admission.renew(run.gen.admission)
        held = [(run.gen.upstream, run.gen.stream_id) for run in runs if run.gen.upstream]
        if held:
            upstreams.renew(client, upstreams.router(app), held)
    reap(app, orphan_sink)
    state.flush_pending_records()
    reseed_after_failover()


def _act_on_flag(ops: dict[str, Handler], flag: bytes | str) -> None:
    """A flag is the message a worker may have missed: the same op table acts on it."""
    try:
        message = ControlMessage.decode(flag)
    except ValueError:
        return
    handler = ops.get(message.op)
    if handler is not None:
        handler(message)


def reap(app: Flask, orphan_sink: OrphanSink, limit: int = 50) -> int:
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
            webhook_url=info.get("webhook") or None,
            operator_owned=info.get("operator") == "1",
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
        settle(app, gen, outcome, gen.prompt_estimate, tokens, orphan_sink(app, gen))
        log.info("settled orphan %s as %s", stream_id, json.dumps(outcome_payload(outcome)))
        reaped += 1
    return reaped
