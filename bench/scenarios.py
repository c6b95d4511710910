"""Benchmark scenarios. Each is bounded in count and time and returns a JSON-able dict.

A scenario is registered with ``@scenario("group.name")`` and receives the run's ``Ctx``. A scenario
whose route is not in the app yet returns ``{"status": "skipped", "reason": ...}``; one that fails
returns ``{"status": "error", ...}`` and the run goes on.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench import client, procstat
from bench.stack import Proc, Stack

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Profile:
    """How big a run is: ``full`` is published, ``quick`` ~1 minute, ``smoke`` for the test."""

    name: str
    tokens: int = 200
    delay_ms: float = 20.0
    concurrency: tuple[int, ...] = (1, 50, 200)
    waves: float = 2.0  # streams per concurrency level = max(min_streams, waves * concurrency)
    min_streams: int = 5
    ramp_s: float = 1.0
    stream_timeout_s: float = 60.0
    cpu_concurrency: int = 20
    cpu_streams: int = 300
    cpu_tokens: tuple[int, int] = (20, 200)  # two lengths: per-request and per-token cost separate
    idle_counts: tuple[int, ...] = (1000, 5000, 10000)
    idle_settle_s: float = 3.0
    fanout_subscribers: int = 1000
    fanout_tokens: int = 200
    revoke_streams: int = 20
    profile_seconds: float = 10.0
    connect_parallel: int = 100
    saturation_levels: tuple[int, ...] = (200, 400, 800)
    sizing_workers: tuple[int, ...] = (1, 2, 3)  # gateway processes compared by sizing.workers
    sizing_streams: int = 150
    sizing_subscribers: int = 2000
    sizing_hold_s: float = 21.0  # the keeper renews every subscription twice (10 s interval)
    capacity_step: int = 10000  # channel.capacity adds idle subscribers this many at a time
    capacity_max: int = 45000  # past two workers' open-file limit here (2 x 20,000)
    capacity_per_holder: int = 15000  # per bench.hold process (its open-file limit)
    budget_s: float = 1800.0
    quiet_wait_s: float = 120.0  # before each scenario, wait up to this for other jobs to go quiet


PROFILES = {
    "full": Profile("full"),
    "quick": Profile(
        "quick",
        tokens=50,
        concurrency=(1, 50, 200),
        waves=1.0,
        min_streams=3,
        ramp_s=0.5,
        cpu_streams=60,
        idle_counts=(200, 1000),
        idle_settle_s=1.5,
        fanout_subscribers=200,
        fanout_tokens=50,
        revoke_streams=5,
        profile_seconds=5.0,
        saturation_levels=(200, 400),
        sizing_streams=40,
        sizing_subscribers=300,
        capacity_step=1000,
        capacity_max=2000,
        budget_s=240.0,
        quiet_wait_s=0.0,
    ),
    "smoke": Profile(
        "smoke",
        tokens=10,
        delay_ms=5.0,
        concurrency=(1, 3),
        waves=1.0,
        min_streams=2,
        ramp_s=0.1,
        stream_timeout_s=20.0,
        cpu_concurrency=2,
        cpu_streams=4,
        cpu_tokens=(5, 20),
        idle_counts=(5,),
        idle_settle_s=0.5,
        fanout_subscribers=3,
        fanout_tokens=10,
        revoke_streams=1,
        profile_seconds=1.0,
        connect_parallel=5,
        saturation_levels=(4,),
        sizing_workers=(2,),  # one restart: the harness runs, the ratios are the full run's
        sizing_streams=4,
        sizing_subscribers=5,
        sizing_hold_s=1.0,
        capacity_step=5,
        capacity_max=10,
        budget_s=150.0,
        quiet_wait_s=0.0,
    ),
}


@dataclass
class Target:
    """Something the load client streams from."""

    name: str
    mode: str  # "openai" (floor, direct, peer) or "channel"
    base: str  # openai: the /v1 base url; channel: the gateway root
    pids: Callable[[], list[int]]  # whose CPU and RSS are charged to this target
    headers: Callable[[int], dict[str, str]]  # auth headers for load slot i
    skip: str | None = None


@dataclass
class Ctx:
    stack: Stack
    profile: Profile
    targets: dict[str, Target]
    peer: Proc | None = None
    results: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    paused_s: float = 0.0
    py_spy: str | None = field(default_factory=lambda: _find_py_spy())

    def our_pids(self) -> list[int]:
        """Every process of this run: the load client, Redis, upstream, gateway, peer."""
        return [os.getpid()] + [pid for proc in self.stack.procs for pid in proc.pids()]

    def remaining(self) -> float:
        """Seconds left of the profile's budget (time spent waiting for quiet is not counted)."""
        return self.profile.budget_s - (time.monotonic() - self.started - self.paused_s)


def _find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"  # installed into the venv, maybe not on PATH
    return str(beside) if beside.exists() else shutil.which("py-spy")


Scenario = Callable[[Ctx], Awaitable[dict[str, Any]]]
TargetScenario = Callable[[Ctx, Target], Awaitable[dict[str, Any]]]
REGISTRY: dict[str, Scenario] = {}


def scenario(name: str) -> Callable[[Scenario], Scenario]:
    def register(func: Scenario) -> Scenario:
        REGISTRY[name] = func
        return func

    return register


# --- helpers --------------------------------------------------------------------------------------


def pct(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> dict[str, float | None]:
    """p50/p90/p99/max of ``values`` times ``scale`` (None when empty)."""
    if not values:
        empty: dict[str, float | None] = {f"p{p}": None for p in PERCENTILES}
        return empty | {"max": None, "n": 0}
    arr = np.asarray(values, dtype=float) * scale
    out: dict[str, float | None] = {
        f"p{p}": round(float(np.percentile(arr, p)), digits) for p in PERCENTILES
    }
    out["max"] = round(float(arr.max()), digits)
    out["n"] = len(values)
    return out


def cdf(values: list[float], scale: float = 1.0, points: int = 101) -> list[float]:
    """``points`` evenly spaced quantiles (for CDF plots)."""
    if not values:
        return []
    arr = np.asarray(values, dtype=float) * scale
    return [round(float(v), 3) for v in np.percentile(arr, np.linspace(0, 100, points))]


def directive(tokens: int, delay_ms: float, **extra: Any) -> str:
    knobs = " ".join(f"{k}={v}" for k, v in extra.items())
    return f"bench [[fake tokens={tokens} delay_ms={delay_ms:g} {knobs}]]".replace("  ", " ")


def chat_payload(
    tokens: int,
    delay_ms: float,
    *,
    stream: bool | None = True,
    max_tokens: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": directive(tokens, delay_ms, **extra)}],
        "max_tokens": max_tokens or tokens + 16,
    }
    if stream is not None:
        payload["stream"] = stream
    return payload


def run_one(
    target: Target, slot: int, tokens: int, delay_ms: float, timeout: float
) -> Awaitable[client.StreamResult]:
    if target.mode == "openai":
        return client.openai_stream(
            target.base, chat_payload(tokens, delay_ms), target.headers(slot), timeout
        )
    return client.channel_stream(
        target.base, chat_payload(tokens, delay_ms, stream=None), target.headers(slot), timeout
    )


def summarize_streams(results: list[client.StreamResult], wall: float) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = (r.error or "no tokens")[:120]
            errors[key] = errors.get(key, 0) + 1
    gaps = [g for r in ok for g in r.gaps]
    tokens = sum(r.tokens for r in results)
    per_stream_rate = [
        r.tokens / (r.total - r.ttft)
        for r in ok
        if r.total and r.ttft is not None and r.total > r.ttft
    ]
    return {
        "streams": len(results),
        "ok": len(ok),
        "errors": errors,
        "tokens": tokens,
        "text_mismatches": sum(1 for r in ok if not r.text_ok),
        "ttft_ms": pct([r.ttft for r in ok if r.ttft is not None], 1000),
        # Time to the response headers (direct) or to the 202 (channel): the part of TTFT spent
        # before the upstream is even asked.
        "head_ms": pct([r.head for r in ok if r.head is not None], 1000),
        "gap_ms": pct(gaps, 1000, 3),
        "total_s": pct([r.total for r in ok if r.total is not None], 1, 4),
        "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
        "stream_tokens_per_s_p50": round(float(np.median(per_stream_rate)), 1)
        if per_stream_rate
        else None,
        "wall_s": round(wall, 3),
        "ttft_cdf_ms": cdf([r.ttft for r in ok if r.ttft is not None], 1000, 21),
    }


async def measured(
    ctx: Ctx, target: Target, work: Callable[[], Awaitable[list[client.StreamResult]]]
) -> dict[str, Any]:
    """Run ``work`` while charging CPU and sampling RSS of the target's processes and the client."""
    pids = target.pids()
    ours = ctx.our_pids()
    cpu0, ours0, busy0 = (
        procstat.cpu_seconds(pids),
        procstat.cpu_seconds(ours),
        procstat.machine_busy_seconds(),
    )
    cost = client.ClientCost().start()
    t0 = time.perf_counter()
    with procstat.Sampler(pids) as sampler:
        results = await work()
    wall = time.perf_counter() - t0
    await cost.stop()
    cpu = procstat.cpu_seconds(pids) - cpu0
    busy = procstat.machine_busy_seconds() - busy0
    others = busy - (procstat.cpu_seconds(ours) - ours0)
    out = summarize_streams(results, wall)
    tokens = out["tokens"]
    out["cpu"] = {
        "seconds": round(cpu, 3),
        "us_per_token": round(cpu / tokens * 1e6, 1) if tokens else None,
        "s_per_1000_tokens": round(cpu / tokens * 1000, 4) if tokens else None,
        "cores_busy": round(cpu / wall, 3) if wall else None,
        "processes": len(pids),
    }
    out["rss_peak_mb"] = round(sampler.peak_kb / 1024, 1)
    # Whoever else uses the machine meanwhile (other jobs) is reported, not subtracted.
    out["machine"] = {
        "busy_cores": round(busy / wall, 2),
        "other_processes_cores": round(others / wall, 2),
    }
    out["client"] = {
        "cpu_s": round(cost.cpu_s, 3),
        "us_per_token": round(cost.cpu_s / tokens * 1e6, 1) if tokens else None,
        "loop_lag_ms": pct(cost.loop_lag_ms, 1, 2),
    }
    return out


def available(ctx: Ctx, name: str) -> Target | dict[str, Any]:
    target = ctx.targets.get(name)
    if target is None:
        return {"status": "skipped", "reason": f"target {name!r} not configured"}
    if target.skip:
        return {"status": "skipped", "reason": target.skip}
    return target


def on_target(name: str, target: str) -> Callable[[TargetScenario], TargetScenario]:
    """Register ``body`` as the scenario ``name``, run with the target ``target``; a target this
    run has not configured, or skips, is reported as skipped without running ``body``."""

    def register(body: TargetScenario) -> TargetScenario:
        scenario(name)(_on_target(body, target))
        return body

    return register


def per_target(kind: str, names: tuple[str, ...]) -> Callable[[TargetScenario], TargetScenario]:
    """``on_target`` for each of ``names``: the scenarios ``<kind>.<name>``."""

    def register(body: TargetScenario) -> TargetScenario:
        for name in names:
            on_target(f"{kind}.{name}", name)(body)
        return body

    return register


def _on_target(body: TargetScenario, name: str) -> Scenario:
    async def run(ctx: Ctx) -> dict[str, Any]:
        target = available(ctx, name)
        if isinstance(target, dict):
            return target
        return await body(ctx, target)

    return run


async def wait_for_quiet(ctx: Ctx, max_wait_s: float, threshold: float = 0.3) -> dict[str, float]:
    """Wait (bounded) until processes outside this run use under ``threshold`` cores."""
    started = time.monotonic()
    while True:
        ours = ctx.our_pids()
        ours0, busy0 = procstat.cpu_seconds(ours), procstat.machine_busy_seconds()
        await asyncio.sleep(1.0)
        others = (procstat.machine_busy_seconds() - busy0) - (procstat.cpu_seconds(ours) - ours0)
        waited = time.monotonic() - started
        if others < threshold or waited >= max_wait_s:
            return {"waited_s": round(waited, 1), "other_processes_cores": round(others, 2)}


async def gather_bounded(coros: list[Callable[[], Awaitable[Any]]], parallel: int) -> list[Any]:
    """Run coroutine factories with at most ``parallel`` at once; exceptions are returned."""
    gate = asyncio.Semaphore(parallel)

    async def one(factory: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await factory()

    return await asyncio.gather(*(one(f) for f in coros), return_exceptions=True)


# --- latency: 1 / 50 / 200 concurrent streams at 20 ms per token ----------------------------------


def _levels_result(prof: Profile, levels: dict[str, Any]) -> dict[str, Any]:
    """A scenario's result: its levels and the stream shape they were measured with."""
    return {
        "status": "ok",
        "tokens_per_stream": prof.tokens,
        "delay_ms": prof.delay_ms,
        "levels": levels,
    }


@per_target("latency", ("floor", "direct", "channel", "peer"))
async def _latency(ctx: Ctx, target: Target) -> dict[str, Any]:
    prof = ctx.profile
    levels: dict[str, Any] = {}
    for conc in prof.concurrency:
        total = max(prof.min_streams, int(prof.waves * conc))
        # Bounded: every stream has a timeout, and the level a deadline.
        deadline = prof.ramp_s + (total / conc) * (prof.tokens * prof.delay_ms / 1000 + 5) + 30
        if ctx.remaining() < deadline:
            levels[str(conc)] = {"status": "skipped", "reason": "run time budget exhausted"}
            continue

        def make(i: int, t: Target = target, c: int = conc) -> Awaitable[client.StreamResult]:
            return run_one(t, i % c, prof.tokens, prof.delay_ms, prof.stream_timeout_s)

        levels[str(conc)] = await measured(
            ctx,
            target,
            partial(
                client.closed_loop,
                make,
                concurrency=conc,
                total=total,
                ramp_s=prof.ramp_s,
                deadline_s=deadline,
            ),
        )
        await asyncio.sleep(0.5)
    return _levels_result(prof, levels)


# --- saturation: at and beyond capacity, nothing admitted is lost -------------------------------


def summarize_saturation(results: list[client.StreamResult], wall: float) -> dict[str, Any]:
    """Admitted, refused at the door, completed, failed after admission, exact text."""
    admitted = [r for r in results if r.admitted]
    completed = [r for r in admitted if r.ok and r.text_ok]
    refused: dict[str, int] = {}
    for r in results:
        if r.refused is not None:
            refused[r.refused] = refused.get(r.refused, 0) + 1
    failures: dict[str, int] = {}
    for r in admitted:
        if not r.ok:
            key = (r.error or "no tokens")[:120]
            failures[key] = failures.get(key, 0) + 1
    other = [r for r in results if not r.admitted and r.refused is None]
    tokens = sum(r.tokens for r in admitted)
    return {
        "offered": len(results),
        "admitted": len(admitted),
        "refused_at_door": sum(refused.values()),
        "refused_by_code": refused,
        "completed": len(completed),
        "failed_after_admission": sum(failures.values()),
        "failures": failures,
        "text_mismatches": sum(1 for r in admitted if r.ok and not r.text_ok),
        "not_admitted_other": len(other),
        "not_admitted_errors": sorted({(r.error or "")[:120] for r in other})[:5],
        "hub_retries": sum(r.hub_retries for r in results),
        "ttft_ms": pct([r.ttft for r in completed if r.ttft is not None], 1000),
        "total_s": pct([r.total for r in completed if r.total is not None], 1, 3),
        "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
        "wall_s": round(wall, 2),
    }


async def _watch_gauge(ctx: Ctx, name: str, into: list[float], every_s: float = 0.25) -> None:
    """Sample one gauge of the gateway's /metrics until cancelled."""
    while True:
        try:
            proto = await client.exchange(ctx.stack.gateway_url, "GET", "/metrics")
            await asyncio.wait_for(proto.done, 5)
            proto.close()
            for line in bytes(proto.body).decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    into.append(float(line.rsplit(" ", 1)[1]))
        except (OSError, TimeoutError, ValueError):
            pass
        await asyncio.sleep(every_s)


@per_target("saturation", ("direct", "channel"))
async def _saturation(ctx: Ctx, target: Target) -> dict[str, Any]:
    """Every level's streams are offered at once (spread over ``ramp_s``), one each, no retry at
    the door: the gateway admits what it can serve and refuses the rest with 503 overloaded."""
    prof = ctx.profile
    levels: dict[str, Any] = {}
    for level in prof.saturation_levels:
        deadline = prof.ramp_s + 8 * prof.tokens * prof.delay_ms / 1000 + 60
        if ctx.remaining() < deadline:
            levels[str(level)] = {"status": "skipped", "reason": "run time budget exhausted"}
            continue
        timeout = deadline - prof.ramp_s

        async def one(
            i: int, t: Target = target, n: int = level, limit: float = timeout
        ) -> client.StreamResult:
            await asyncio.sleep(prof.ramp_s * i / n)
            return await run_one(t, i, prof.tokens, prof.delay_ms, limit)

        started = time.perf_counter()
        cpu0 = procstat.cpu_seconds(target.pids())
        cost = client.ClientCost().start()
        lags: list[float] = []
        watch = asyncio.create_task(_watch_gauge(ctx, "streamgate_event_loop_lag_seconds", lags))
        with procstat.Sampler(target.pids()) as sampler:
            results = await asyncio.gather(*(one(i) for i in range(level)))
        watch.cancel()
        await cost.stop()
        wall = time.perf_counter() - started
        out = summarize_saturation(list(results), wall)
        out["rss_peak_mb"] = round(sampler.peak_kb / 1024, 1)
        out["cores_busy"] = round((procstat.cpu_seconds(target.pids()) - cpu0) / wall, 2)
        out["gateway_loop_lag_ms"] = pct(lags, 1000, 1)
        # The load client shares the machine: its own lag is part of every latency here.
        out["client"] = {
            "cpu_s": round(cost.cpu_s, 2),
            "loop_lag_ms": pct(cost.loop_lag_ms, 1, 2),
        }
        levels[str(level)] = out
        await asyncio.sleep(2.0)  # let the gateway drain before the next level
    return _levels_result(prof, levels)


# --- CPU per token at 0 ms per token --------------------------------------------------------------


@per_target("cpu", ("floor", "direct", "channel", "peer"))
async def _cpu(ctx: Ctx, target: Target) -> dict[str, Any]:
    prof = ctx.profile
    runs: dict[str, Any] = {}
    for tokens in prof.cpu_tokens:

        def make(i: int, t: Target = target, n: int = tokens) -> Awaitable[client.StreamResult]:
            return run_one(t, i % prof.cpu_concurrency, n, 0, prof.stream_timeout_s)

        runs[str(tokens)] = await measured(
            ctx,
            target,
            partial(
                client.closed_loop,
                make,
                concurrency=prof.cpu_concurrency,
                total=prof.cpu_streams,
                ramp_s=0.2,
                deadline_s=120,
            ),
        )
    # cpu = streams * per_stream + tokens * per_token, solved from the two stream lengths.
    (n1, a), (n2, b) = sorted(runs.items(), key=lambda kv: int(kv[0]))
    fit: dict[str, Any] = {}
    if a["ok"] and b["ok"] and a["tokens"] != b["tokens"]:
        ca, cb = a["cpu"]["seconds"], b["cpu"]["seconds"]
        ta, tb = a["tokens"] / max(1, a["ok"]), b["tokens"] / max(1, b["ok"])
        per_token = (cb / b["ok"] - ca / a["ok"]) / (tb - ta)
        per_stream = ca / a["ok"] - per_token * ta
        fit = {
            "marginal_us_per_token": round(per_token * 1e6, 1),
            "per_stream_ms": round(per_stream * 1000, 3),
        }
    return {
        "status": "ok",
        "delay_ms": 0,
        "concurrency": prof.cpu_concurrency,
        "headline_tokens_per_stream": int(n2),
        "headline_us_per_token": b["cpu"]["us_per_token"],
        "headline_s_per_1000_tokens": b["cpu"]["s_per_1000_tokens"],
        "fit": fit,
        "runs": runs,
    }


# --- channel mode: idle subscribers ---------------------------------------------------------------


def _redis_view(ctx: Ctx) -> dict[str, Any]:
    workers = ctx.stack.worker_pids()
    per_worker = procstat.connections_per_process(workers, ctx.stack.redis_port)
    rc = ctx.stack.redis_client()
    try:
        clients = rc.client_list()
    finally:
        rc.close()
    names: dict[str, int] = {}
    for c in clients:
        names[c.get("name") or "(unnamed)"] = names.get(c.get("name") or "(unnamed)", 0) + 1
    return {
        "per_worker": list(per_worker.values()),
        "client_list_total": len(clients),
        "by_name": names,
    }


def _rss(ctx: Ctx) -> list[int]:
    return [procstat.rss_kb(pid) for pid in ctx.stack.worker_pids()]


@on_target("channel.idle", "channel")
async def channel_idle(ctx: Ctx, target: Target) -> dict[str, Any]:
    prof = ctx.profile
    stack = ctx.stack
    users = stack.users("member", max(prof.idle_counts))
    # Fresh workers, warmed by a few streams: earlier load leaves freed heap that idle
    # subscribers would silently reuse, hiding their cost.
    stack.restart_gateway()  # main thread: children die with the thread that spawned them
    target.base = stack.gateway_url
    if (direct := ctx.targets.get("direct")) is not None:
        direct.base = stack.gateway_url + "/v1"
    await asyncio.gather(*(run_one(target, i, 20, 0, 30) for i in range(8)))
    await asyncio.sleep(prof.idle_settle_s)
    base_rss = _rss(ctx)
    base = {"rss_kb": base_rss, "redis": _redis_view(ctx)}
    subs: list[client.Subscriber] = []
    failures: dict[str, int] = {}
    levels: dict[str, Any] = {}
    prev_count = 0
    try:
        for count in prof.idle_counts:
            if ctx.remaining() < 60:
                levels[str(count)] = {"status": "skipped", "reason": "run time budget exhausted"}
                break
            t0 = time.perf_counter()
            fresh = range(len(subs), count)

            def opener(i: int) -> Callable[[], Awaitable[client.Subscriber]]:
                user = users[i]
                return lambda: client.subscribe(
                    stack.gateway_url,
                    f"/v1/events?channel=users/{user.id}",
                    user.headers,
                    timeout=60,
                )

            opened = await asyncio.wait_for(
                gather_bounded([opener(i) for i in fresh], prof.connect_parallel), 60 + count / 20
            )
            for item in opened:
                if isinstance(item, client.Subscriber):
                    subs.append(item)
                else:
                    key = f"{type(item).__name__}: {item}"[:120]
                    failures[key] = failures.get(key, 0) + 1
            connect_s = time.perf_counter() - t0
            live = [s for s in subs if not s.proto or not s.proto.done.done()]
            await asyncio.sleep(prof.idle_settle_s)
            pids = stack.gateway_pids()
            cpu0 = procstat.cpu_seconds(pids)
            await asyncio.sleep(prof.idle_settle_s)
            idle_cpu = (procstat.cpu_seconds(pids) - cpu0) / prof.idle_settle_s
            rss = _rss(ctx)
            delta_kb = sum(rss) - sum(base_rss)
            previous = levels[str(prev_count)] if prev_count else None
            marginal = None
            if previous and len(live) > previous["open"]:
                marginal = (sum(rss) - sum(previous["rss_kb"])) / (len(live) - previous["open"])
            levels[str(count)] = {
                "requested": count,
                "open": len(live),
                "connect_s": round(connect_s, 2),
                "rss_kb": rss,
                "rss_delta_kb": delta_kb,
                "kb_per_subscriber": round(delta_kb / len(live), 2) if live else None,
                "marginal_kb_per_subscriber": None if marginal is None else round(marginal, 2),
                "redis": _redis_view(ctx),
                "idle_cpu_cores": round(idle_cpu, 4),
            }
            prev_count = count
            if len(live) < count * 0.5:
                break
    finally:
        for sub in subs:
            sub.close()
    await asyncio.sleep(prof.idle_settle_s)
    after = {"rss_kb": _rss(ctx), "redis": _redis_view(ctx)}
    return {
        "status": "ok",
        "channel": "users/<id> (one user per subscriber)",
        "gateway": "restarted before this scenario, then warmed with 8 streams",
        "baseline": base,
        "levels": levels,
        "redis_cap_per_worker": stack.redis_cap_per_worker(),
        "after_close": after,
        "failures": failures,
    }


# --- channel mode: one stream fanned out to many subscribers --------------------------------------


@on_target("channel.fanout", "channel")
async def channel_fanout(ctx: Ctx, _target: Target) -> dict[str, Any]:
    prof = ctx.profile
    stack = ctx.stack
    owner = stack.users("member", 1)[0]
    viewers = stack.users(
        "admin", prof.fanout_subscribers
    )  # admins may read any stream of the tenant
    # The first token waits long enough for every subscriber to connect, so none replays history.
    first_delay_ms = 3000 + prof.fanout_subscribers * 8
    status, _, body = await client.request_json(
        stack.gateway_url,
        "POST",
        "/v1/streams",
        headers=owner.headers,
        json_body=chat_payload(
            prof.fanout_tokens, prof.delay_ms, stream=None, first_delay_ms=first_delay_ms, stamp=1
        ),
    )
    if status != 202 or not isinstance(body, dict):
        return {"status": "error", "reason": f"POST /v1/streams answered {status}: {body}"}
    channel = body.get("channel") or f"streams/{body['id']}"
    t0 = time.perf_counter()
    opened = await gather_bounded(
        [
            partial(
                client.subscribe,
                stack.gateway_url,
                f"/v1/events?channel={channel}",
                v.headers,
                keep_tokens=True,
                timeout=60,
                kernel_stamps=True,
            )
            for v in viewers
        ],
        prof.connect_parallel,
    )
    connect_s = time.perf_counter() - t0
    subs, failures = client.sort_opened(opened)
    budget = first_delay_ms / 1000 + prof.fanout_tokens * prof.delay_ms / 1000 + 30
    pids = ctx.stack.gateway_pids()
    cpu0, ours0, busy0 = (
        procstat.cpu_seconds(pids),
        procstat.cpu_seconds(ctx.our_pids()),
        procstat.machine_busy_seconds(),
    )
    cost = client.ClientCost().start()
    t_follow = time.perf_counter()
    try:
        with client.collection_held():  # a pause here would be charged to the gateway
            await asyncio.wait_for(
                asyncio.gather(*(asyncio.shield(s.proto.done) for s in subs if s.proto)), budget
            )
    except TimeoutError:
        pass
    finally:
        await cost.stop()
        gateway_cpu = procstat.cpu_seconds(pids) - cpu0
        follow_s = time.perf_counter() - t_follow
        others = procstat.machine_busy_seconds() - busy0
        others -= procstat.cpu_seconds(ctx.our_pids()) - ours0
        for sub in subs:
            sub.close()
    first_token = await _first_token_of_entries(ctx, channel)
    lags: list[float] = []  # from the upstream's write of the event's first token
    hub_lags: list[float] = []  # from the event's append to the log (its entry id's time)
    seen_lags: list[float] = []  # from the append to the load client reading it
    replayed = 0
    first_recv: dict[str, float] = {}
    for sub in subs:
        for entry, _now, wall, read_wall in sub.token_recv:
            ms = client.entry_ms(entry)
            if ms is None or entry is None:
                continue
            if ms < sub.opened_wall * 1000:
                replayed += 1  # written before this subscriber connected: a replay, not a lag
                continue
            hub_lags.append(wall * 1000 - ms)
            seen_lags.append(read_wall * 1000 - ms)
            if entry in first_token:
                lags.append((wall - first_token[entry]) * 1000)
            first_recv[entry] = min(first_recv.get(entry, wall), wall)
    spread = [
        wall * 1000 - first_recv[e] * 1000
        for s in subs
        for e, _n, wall, _r in s.token_recv
        if e in first_recv
    ]
    tokens_each = [s.events.get("token", 0) for s in subs]
    deliveries = sum(tokens_each)
    return {
        "status": "ok",
        "subscribers": len(subs),
        "failures": failures,
        "connect_s": round(connect_s, 2),
        "token_events_per_subscriber": pct(tokens_each, 1, 1),
        "completed": sum(1 for s in subs if s.terminal == "stream.completed"),
        # The measure: from the upstream writing the event's first token to the bytes
        # reaching the subscriber's socket (the kernel's receive time): coalescing, the runner,
        # the log and the hub. Without the upstream's stamps, from the append instead.
        "lag_ms": pct(lags or hub_lags, 1, 2),
        "lag_from": "upstream chunk" if lags else "log append",
        "lag_cdf_ms": cdf(lags or hub_lags),
        "lag_from_append_ms": pct(hub_lags, 1, 2),
        "lag_to_client_read_ms": pct(seen_lags, 1, 2),
        "spread_ms": pct(spread, 1, 2),
        "replayed_events": replayed,
        "deliveries": deliveries,
        # CPU from the first token held back to the last subscriber closing (the idle wait for
        # the first token included): what one delivery costs the gateway, and the load client's
        # own lag (a saturated client would inflate every lag above).
        "gateway_cpu_s": round(gateway_cpu, 3),
        "gateway_us_per_delivery": round(gateway_cpu / deliveries * 1e6, 2) if deliveries else None,
        "client": {"cpu_s": round(cost.cpu_s, 3), "loop_lag_ms": pct(cost.loop_lag_ms, 1, 2)},
        "machine": {"other_processes_cores": round(others / follow_s, 2) if follow_s else None},
        "method": "receive = the kernel's receive time of the bytes on the subscriber's socket "
        "(SO_TIMESTAMPNS); lag = receive - the fake upstream's wall clock when it wrote the "
        "event's first token; lag_from_append = receive - the ms in the Redis entry id (Redis's "
        "clock at XADD, same host); lag_to_client_read = when the load client parsed it - that "
        "ms; spread = receive - first receive of that entry by any subscriber",
    }


async def _first_token_of_entries(ctx: Ctx, channel: str) -> dict[str, float]:
    """Each token entry of ``channel``'s log -> when the upstream wrote its first token.

    The log is read through the app's own ``EventLog`` (whatever its key names); the upstream's
    stamps come from the fake upstream (``stamp`` knob). Empty when either is missing.
    """
    from streaming.log import event_log

    _, _, body = await client.request_json(ctx.stack.upstream_root, "GET", "/_stamps")
    stamps = body.get("stamps") if isinstance(body, dict) else None
    if not stamps:
        return {}
    entries = await asyncio.to_thread(event_log(ctx.stack.app).replay, channel, None)
    out: dict[str, float] = {}
    length = 0
    for entry_id, event, data in entries:
        if event != "token":
            continue
        index = client.tokens_in_text(length)  # tokens wholly before this event's text
        if index < len(stamps):
            out[entry_id] = stamps[index]
        length += len(json.loads(data).get("text", ""))
    return out


# --- revocation latency ---------------------------------------------------------------------------


@on_target("channel.revoke", "channel")
async def channel_revoke(ctx: Ctx, _target: Target) -> dict[str, Any]:
    """Revocation latency with ``revoke_streams`` live streams (half channel, half direct)."""
    stack = ctx.stack
    if not stack.has_route("POST", "/v1/admin/streams/", "/revoke"):
        return {
            "status": "skipped",
            "reason": "admin API not present (POST /v1/admin/streams/<id>/revoke)",
        }
    prof = ctx.profile
    n = max(2, prof.revoke_streams)
    members = stack.users("member", n)
    admin = stack.users("admin", 1)[0]
    endless: dict[str, Any] = {
        "max_tokens": 4000,
        "infinite": 1,
    }  # 80 s at 20 ms/token: live until revoked
    live: list[tuple[str, str, client.Subscriber]] = []  # (mode, stream id, connection)
    try:
        for i in range(n):
            headers = members[i].headers
            if i % 2 == 0:
                status, _, body = await client.request_json(
                    stack.gateway_url,
                    "POST",
                    "/v1/streams",
                    headers=headers,
                    json_body=chat_payload(1, prof.delay_ms, stream=None, **endless),
                )
                if status != 202 or not isinstance(body, dict):
                    return {"status": "error", "reason": f"POST /v1/streams: {status} {body}"}
                sub = await client.subscribe(
                    stack.gateway_url, f"/v1/events?channel={body['channel']}", headers
                )
                live.append(("channel", body["id"], sub))
            else:
                sub = await client.subscribe(
                    stack.gateway_url,
                    "/v1/chat/completions",
                    headers,
                    method="POST",
                    json_body=chat_payload(1, prof.delay_ms, **endless),
                )
                stream_id = sub.proto.headers.get("x-stream-id") if sub.proto else None
                if not stream_id:
                    return {"status": "error", "reason": "direct stream without X-Stream-Id"}
                live.append(("direct", stream_id, sub))
        await asyncio.sleep(0.5)
        samples: dict[str, dict[str, list[float]]] = {
            mode: {"call_ms": [], "event_ms": [], "closed_ms": [], "upstream_ms": []}
            for mode in ("channel", "direct")
        }
        missed: dict[str, int] = {}
        # Timed by this process (the upstream closing is polled from here): a pause of its
        # collector, ~250 ms after the fan-out, would be charged to the revocation.
        with client.collection_held():
            for mode, stream_id, sub in live:
                stats0 = await _upstream_stats(ctx)
                t0 = time.perf_counter()
                status, _, body = await client.request_json(
                    stack.gateway_url,
                    "POST",
                    f"/v1/admin/streams/{stream_id}/revoke",
                    headers=admin.headers,
                    json_body={"reason": "bench"},
                )
                t1 = time.perf_counter()
                if status >= 300:
                    return {"status": "error", "reason": f"revoke answered {status}: {body}"}
                got = samples[mode]
                got["call_ms"].append((t1 - t0) * 1000)
                upstream_at = None
                deadline = t0 + 5
                while time.perf_counter() < deadline:
                    stats = await _upstream_stats(ctx)
                    if upstream_at is None and stats["disconnects"] > stats0["disconnects"]:
                        upstream_at = time.perf_counter()
                    if upstream_at is not None and sub.proto is not None and sub.proto.done.done():
                        break
                    await asyncio.sleep(0.002)
                if sub.terminal in {"stream.revoked", "error"}:
                    got["event_ms"].append((sub.terminal_at - t0) * 1000)
                else:
                    key = f"{mode}: ended with {sub.terminal}"
                    missed[key] = missed.get(key, 0) + 1
                if sub.closed_at:
                    got["closed_ms"].append((sub.closed_at - t0) * 1000)
                else:
                    key = f"{mode}: not closed in 5 s"
                    missed[key] = missed.get(key, 0) + 1
                if upstream_at is not None:
                    got["upstream_ms"].append((upstream_at - t0) * 1000)
                else:
                    key = f"{mode}: upstream open after 5 s"
                    missed[key] = missed.get(key, 0) + 1
    finally:
        for _, _, sub in live:
            sub.close()
    return {
        "status": "ok",
        "live_streams": n,
        "from": "start of the admin call; one revoke at a time while the others stay live",
        "event": "channel: stream.revoked received; direct: in-band error received",
        "missed": missed,
        **{mode: {k: pct(v, 1, 2) for k, v in got.items()} for mode, got in samples.items()},
    }


async def _upstream_stats(ctx: Ctx) -> dict[str, int]:
    _, _, body = await client.request_json(ctx.stack.upstream_root, "GET", "/_stats")
    return body if isinstance(body, dict) else {"disconnects": 0}


# --- where the time goes: py-spy on the workers under the 0 ms load -------------------------------


BUCKETS = (
    ("langchain", ("langchain_core", "langchain_openai", "langsmith")),
    ("openai sdk", ("openai/",)),
    ("httpx/httpcore", ("httpx", "httpcore", "h11")),
    ("pydantic", ("pydantic",)),
    ("flask/werkzeug", ("flask/", "werkzeug", "flask_")),
    ("gevent/socket", ("gevent", "socket.py", "ssl.py", "selectors")),
    ("redis client", ("redis/",)),
    ("sqlalchemy", ("sqlalchemy",)),
    ("json", ("json/",)),
    ("gunicorn", ("gunicorn",)),
    ("streamgate", ("/streaming/", "/api/", "/auth/")),
    ("logging", ("logging/",)),
)


def _bucket(frame: str) -> str | None:
    for name, needles in BUCKETS:
        if any(n in frame for n in needles):
            return name
    return None


def summarize_collapsed(lines: list[str], top: int = 20) -> dict[str, Any]:
    """Self and inclusive shares from py-spy's collapsed ("raw") output."""
    total = 0
    self_time: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    buckets: dict[str, int] = {}
    for line in lines:
        stack, _, count_s = line.rstrip().rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        total += count
        leaf = frames[-1]
        self_time[leaf] = self_time.get(leaf, 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        # A sample belongs to the innermost frame that falls in a known bucket.
        owner = next((b for b in (_bucket(f) for f in reversed(frames)) if b), "other")
        buckets[owner] = buckets.get(owner, 0) + count

    def share(d: dict[str, int]) -> list[tuple[str, float]]:
        return [
            (k, round(100 * v / total, 1))
            for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]
        ]

    return {
        "samples": total,
        "buckets_pct": dict(share(buckets)),
        "self_pct": share(self_time),
        "inclusive_pct": share(inclusive),
    }


@per_target("profile", ("direct", "channel"))
async def _profile(ctx: Ctx, target: Target) -> dict[str, Any]:
    if not ctx.py_spy:
        return {"status": "skipped", "reason": "py-spy not installed"}
    prof = ctx.profile
    out_dir = ctx.stack.workdir
    spies: list[tuple[subprocess.Popen[bytes], str]] = []
    for pid in ctx.stack.worker_pids():
        path = str(out_dir / f"pyspy-{target.name}-{pid}.txt")
        spies.append(
            (
                subprocess.Popen(
                    [
                        ctx.py_spy,
                        "record",
                        "--pid",
                        str(pid),
                        "--duration",
                        str(int(prof.profile_seconds)),
                        "--rate",
                        "200",
                        "--format",
                        "raw",
                        "--nonblocking",
                        "--output",
                        path,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                ),
                path,
            )
        )
    await asyncio.sleep(1.0)  # py-spy attaches

    def make(i: int, t: Target = target) -> Awaitable[client.StreamResult]:
        return run_one(t, i % prof.cpu_concurrency, max(prof.cpu_tokens), 0, prof.stream_timeout_s)

    await client.closed_loop(
        make,
        concurrency=prof.cpu_concurrency,
        total=10**6,
        ramp_s=0.2,
        deadline_s=prof.profile_seconds,
    )
    lines: list[str] = []
    errors = []
    for spy, path in spies:
        try:
            _, err = await asyncio.to_thread(spy.communicate, timeout=prof.profile_seconds + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(5)
            err = b"timed out"
        if spy.returncode != 0:
            errors.append(err.decode(errors="replace")[-300:])
        try:
            with open(path) as handle:
                lines.extend(handle)
        except FileNotFoundError:
            continue
    if not lines:
        # A diagnostic, not a measurement: a host that forbids ptrace skips it.
        return {"status": "skipped", "reason": "py-spy got no samples: " + " | ".join(errors)}
    return {
        "status": "ok",
        "load": f"{prof.cpu_concurrency} concurrent {max(prof.cpu_tokens)}-token "
        "streams at 0 ms/token",
        **summarize_collapsed(lines),
    }
