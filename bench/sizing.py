"""Sizing figures: Redis operations per token and per subscriber, and 1 / 2 / 3 gateway processes.

``docs/operations.md`` sizes a deployment from per-unit costs (CPU per token, per delivery, per
idle subscriber; Redis operations per token and per subscriber). ``sizing.workers`` measures
those costs with 1, 2 and 3 gunicorn workers on this machine and reports each against the
1-worker run: the per-unit costs should stay flat, throughput should grow with the cores the
workers can get (two here, shared with Redis, the model server and the load client), and Redis
connections should be a fixed number per worker. Ratios are what transfer, not the absolutes.

Redis operations are counted with ``INFO commandstats`` before and after (commands a Lua script
runs are counted as well as the script call itself; the bench's own INFO calls are left out).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable
from functools import partial
from typing import Any

from bench import client, procstat
from bench.scenarios import (
    Ctx,
    Target,
    _redis_view,
    _rss,
    gather_bounded,
    measured,
    run_one,
    scenario,
)

_OWN = {"info", "client|list", "client", "ping"}  # the bench's own look-ups


def _channel(ctx: Ctx) -> Target | None:
    """The channel-mode target, or None where this run has none."""
    target = ctx.targets.get("channel")
    return None if target is None or target.skip else target


def commandstats(ctx: Ctx) -> dict[str, int]:
    """Calls per Redis command since the server started."""
    rc = ctx.stack.redis_client()
    try:
        raw: dict[str, Any] = rc.info("commandstats")
    finally:
        rc.close()
    out: dict[str, int] = {}
    for key, value in raw.items():
        name = key.removeprefix("cmdstat_")
        calls = value.get("calls") if isinstance(value, dict) else None
        if calls is not None and name not in _OWN:
            out[name] = int(calls)
    return out


def ops_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Calls per command between two ``commandstats`` readings (only those that moved)."""
    moved = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    return dict(sorted(moved.items(), key=lambda kv: -kv[1]))


def _per(ops: dict[str, int], units: int) -> dict[str, Any]:
    total = sum(ops.values())
    return {
        "total": total,
        "per_unit": round(total / units, 3) if units else None,
        "by_command_per_unit": {k: round(v / units, 3) for k, v in ops.items()} if units else {},
    }


def _restart(ctx: Ctx, workers: int) -> None:
    stack = ctx.stack
    stack.workers = workers
    stack.restart_gateway()
    for name in ("channel", "direct"):
        target = ctx.targets.get(name)
        if target is not None:
            target.base = stack.gateway_url + ("/v1" if name == "direct" else "")


async def _throughput(ctx: Ctx, target: Target) -> dict[str, Any]:
    """Channel mode at 0 ms/token: tokens/s, CPU per token, Redis operations per token."""
    prof = ctx.profile
    tokens = max(prof.cpu_tokens)
    conc = prof.cpu_concurrency

    def make(i: int) -> Awaitable[client.StreamResult]:
        return run_one(target, i % conc, tokens, 0, prof.stream_timeout_s)

    before = commandstats(ctx)
    redis_pids = ctx.stack.redis.pids() if ctx.stack.redis else []
    redis_cpu0 = procstat.cpu_seconds(redis_pids)
    out = await measured(
        ctx,
        target,
        lambda: client.closed_loop(
            make, concurrency=conc, total=prof.sizing_streams, ramp_s=0.2, deadline_s=120
        ),
    )
    redis_cpu = procstat.cpu_seconds(redis_pids) - redis_cpu0
    ops = ops_delta(before, commandstats(ctx))
    streams = out["ok"]
    return {
        "streams": streams,
        "tokens": out["tokens"],
        "errors": out["errors"],
        "text_mismatches": out["text_mismatches"],
        "tokens_per_s": out["tokens_per_s"],
        "cpu_us_per_token": out["cpu"]["us_per_token"],
        "cores_busy": out["cpu"]["cores_busy"],
        "redis_ops_per_token": _per(ops, out["tokens"]),
        "redis_ops_per_stream": _per(ops, streams)["per_unit"],
        # Redis is one thread: its CPU per token is what sizes a shard.
        "redis_cpu_us_per_token": round(redis_cpu / out["tokens"] * 1e6, 2)
        if out["tokens"]
        else None,
        "events_per_token": round(ops.get("xadd", 0) / out["tokens"], 4) if out["tokens"] else None,
        "redis_cpu_us_per_event": round(redis_cpu / ops["xadd"] * 1e6, 1)
        if ops.get("xadd")
        else None,
        "other_processes_cores": out["machine"]["other_processes_cores"],
    }


async def _subscribers(ctx: Ctx, count: int) -> dict[str, Any]:
    """``count`` idle subscribers: Redis operations to connect one and to keep it a second."""
    stack = ctx.stack
    users = stack.users("member", count)
    rss0 = sum(_rss(ctx))
    before = commandstats(ctx)
    opened = await gather_bounded(
        [
            partial(
                client.subscribe,
                stack.gateway_url,
                f"/v1/events?channel=users/{u.id}",
                u.headers,
                timeout=60,
            )
            for u in users
        ],
        ctx.profile.connect_parallel,
    )
    subs = [s for s in opened if isinstance(s, client.Subscriber)]
    connected = commandstats(ctx)
    # Idle long enough for the keeper to renew every entry at least twice.
    hold_s = ctx.profile.sizing_hold_s
    pids = stack.gateway_pids()
    cpu0 = procstat.cpu_seconds(pids)
    await asyncio.sleep(hold_s)
    idle_cpu = procstat.cpu_seconds(pids) - cpu0
    held = commandstats(ctx)
    rss = sum(_rss(ctx))
    view = _redis_view(ctx)
    for sub in subs:
        sub.close()
    n = len(subs)
    return {
        "open": n,
        "kb_per_subscriber": round((rss - rss0) / n, 2) if n else None,
        "redis_ops_per_connect": _per(ops_delta(before, connected), n),
        "redis_ops_per_subscriber_second": round(
            sum(ops_delta(connected, held).values()) / max(1, n) / hold_s, 4
        ),
        "idle_cpu_cores": round(idle_cpu / hold_s, 4),
        "redis_conns_per_worker": view["per_worker"],
    }


@scenario("sizing.workers")
async def sizing_workers(ctx: Ctx) -> dict[str, Any]:
    """The per-unit costs with 1, 2 and 3 gateway processes, and how throughput scales."""
    if (target := _channel(ctx)) is None:
        return {"status": "skipped", "reason": "channel mode not available"}
    prof = ctx.profile
    original = ctx.stack.workers
    runs: dict[str, Any] = {}
    try:
        for workers in prof.sizing_workers:
            if ctx.remaining() < 90:
                runs[str(workers)] = {"status": "skipped", "reason": "run time budget exhausted"}
                continue
            _restart(ctx, workers)
            await asyncio.gather(*(run_one(target, i, 20, 0, 30) for i in range(4)))
            started = time.monotonic()
            runs[str(workers)] = {
                "workers": workers,
                "throughput": await _throughput(ctx, target),
                "subscribers": await _subscribers(ctx, prof.sizing_subscribers),
                "elapsed_s": round(time.monotonic() - started, 1),
            }
    finally:
        if ctx.stack.workers != original:
            _restart(ctx, original)
    base = runs.get(str(prof.sizing_workers[0])) or {}
    for run in runs.values():
        if "throughput" in run and "throughput" in base:
            run["vs_first"] = _ratios(base, run)
    return {
        "status": "ok",
        "load": f"channel mode, {prof.cpu_concurrency} concurrent {max(prof.cpu_tokens)}-token "
        f"streams at 0 ms/token, {prof.sizing_streams} streams; then "
        f"{prof.sizing_subscribers} idle subscribers held {prof.sizing_hold_s:g} s",
        "runs": runs,
        "cores": os.cpu_count(),
    }


def _ratios(base: dict[str, Any], run: dict[str, Any]) -> dict[str, float | None]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    t0, t1 = base["throughput"], run["throughput"]
    s0, s1 = base["subscribers"], run["subscribers"]
    return {
        "tokens_per_s": ratio(t1["tokens_per_s"], t0["tokens_per_s"]),
        "cpu_us_per_token": ratio(t1["cpu_us_per_token"], t0["cpu_us_per_token"]),
        "redis_ops_per_token": ratio(
            t1["redis_ops_per_token"]["per_unit"], t0["redis_ops_per_token"]["per_unit"]
        ),
        "kb_per_subscriber": ratio(s1["kb_per_subscriber"], s0["kb_per_subscriber"]),
        "redis_conns_total": ratio(
            float(sum(s1["redis_conns_per_worker"])), float(sum(s0["redis_conns_per_worker"]))
        ),
    }


# --- the most idle subscribers one node holds -----------------------------------------------------


async def _spawn_holder(ctx: Ctx, source: str, subs: list[list[str]]) -> Any:
    """A ``bench.hold`` process holding ``subs`` from ``source``; None if it opened nothing."""
    from bench.stack import ROOT, _die_with_parent

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.hold",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )
    assert proc.stdin is not None
    spec = {"url": ctx.stack.gateway_url, "source": source, "parallel": 100, "subs": subs}
    proc.stdin.write(json.dumps(spec).encode() + b"\n")
    await proc.stdin.drain()
    return proc


async def _release_holders(holders: list[Any]) -> int:
    """Close every holder's stdin (they let go and exit); how many were still open."""
    still = 0
    for proc in holders:
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
    for proc in holders:
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            still += int(json.loads(line or b"{}").get("still_open", 0))
            await asyncio.wait_for(proc.wait(), 30)
        except (TimeoutError, ValueError):
            proc.kill()
            await proc.wait()
    return still


@scenario("channel.capacity")
async def channel_capacity(ctx: Ctx) -> dict[str, Any]:
    """Idle subscribers added in steps until a step cannot be held: the most one node holds."""
    if (target := _channel(ctx)) is None:
        return {"status": "skipped", "reason": "channel mode not available"}
    prof = ctx.profile
    stack = ctx.stack
    _restart(ctx, stack.workers)  # a clean heap, as channel.idle
    await asyncio.gather(*(run_one(target, i, 20, 0, 30) for i in range(8)))
    await asyncio.sleep(prof.idle_settle_s)
    users = await asyncio.to_thread(stack.users, "member", prof.capacity_max)
    base_rss = _rss(ctx)
    holders: list[Any] = []
    levels: dict[str, Any] = {}
    failures: dict[str, int] = {}
    held = 0
    limit = f"not reached: stopped at capacity_max={prof.capacity_max}"
    try:
        while held < prof.capacity_max:
            if ctx.remaining() < 120:
                limit = "not reached: run time budget exhausted"
                break
            want = min(prof.capacity_step, prof.capacity_max - held)
            fresh = users[held : held + want]
            started = time.perf_counter()
            procs = []
            for i in range(0, len(fresh), prof.capacity_per_holder):
                part = fresh[i : i + prof.capacity_per_holder]
                source = f"127.0.0.{2 + len(holders)}"  # its own 28,000 ephemeral ports
                subs = [[f"/v1/events?channel=users/{u.id}", u.token] for u in part]
                proc = await _spawn_holder(ctx, source, subs)
                holders.append(proc)
                procs.append(proc)
            opened = 0
            for proc in procs:
                try:
                    line = await asyncio.wait_for(proc.stdout.readline(), 90 + want / 20)
                    report = json.loads(line or b"{}")
                except (TimeoutError, ValueError):
                    report = {"open": 0, "failures": {"holder did not report": 1}}
                opened += int(report.get("open", 0))
                for key, n in (report.get("failures") or {}).items():
                    failures[key] = failures.get(key, 0) + int(n)
            connect_s = time.perf_counter() - started
            held += opened
            await asyncio.sleep(prof.idle_settle_s)
            rss = _rss(ctx)
            delta = sum(rss) - sum(base_rss)
            levels[str(held)] = {
                "requested": held + (want - opened),
                "open": held,
                "connect_s": round(connect_s, 1),
                "rss_kb": rss,
                "kb_per_subscriber": round(delta / held, 2) if held else None,
                "redis": _redis_view(ctx),
            }
            if opened < want * 0.99:
                limit = "reached: " + (
                    ", ".join(f"{k} ({n})" for k, n in list(failures.items())[:3]) or "?"
                )
                break
    finally:
        still_open = await _release_holders(holders)
    log_text = stack.gateway.log.read_text(errors="replace") if stack.gateway else ""
    top = max((int(k) for k in levels), default=0)
    return {
        "status": "ok",
        "channel": "users/<id> (one user per subscriber)",
        "gateway": f"{stack.workers} gevent workers, restarted before this scenario",
        "fd_limit_per_process": stack.fd_limit,
        "baseline_rss_kb": base_rss,
        "levels": levels,
        "max_held": top,
        "kb_per_subscriber_at_max": levels[str(top)]["kb_per_subscriber"] if top else None,
        "limit": limit,
        "gateway_emfile_errors": log_text.count("Too many open files"),
        "still_open_at_end": still_open,
        "failures": failures,
    }
