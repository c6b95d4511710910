"""``make bench``: the floor, Streamgate (direct and channel mode) and a peer, one run, one machine.

Starts its own Redis, the fake upstream and Streamgate under gunicorn (gevent, ``--workers``,
default 2 for 2 cores), optionally the LiteLLM proxy, runs the selected scenarios, writes
``bench/results/<date>.json`` and PNG plots beside it, and prints a summary table. Everything
listens on loopback, every load loop is bounded in count and time, and every process it started is
ended by PID when it finishes.

    python -m bench.run                 # the published run (about 10 minutes on 2 cores)
    python -m bench.run --quick         # about a minute: shorter streams, fewer subscribers
    python -m bench.run --scenario direct,channel.fanout
    python -m bench.run --list
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import fnmatch
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import peer, report, sizing  # noqa: F401 - sizing registers its scenarios
from bench.scenarios import PROFILES, REGISTRY, Ctx, Target, wait_for_quiet
from bench.spy import Spy
from bench.stack import ROOT, Stack

ORDER = (
    "latency.floor",
    "latency.direct",
    "latency.channel",
    "latency.peer",
    "cpu.floor",
    "cpu.direct",
    "cpu.channel",
    "cpu.peer",
    "profile.direct",
    "profile.channel",
    "channel.idle",
    "channel.capacity",
    "channel.fanout",
    "channel.revoke",
    "saturation.direct",
    "saturation.channel",
    "sizing.workers",
)


def select(patterns: list[str]) -> list[str]:
    """Scenario names matching a pattern: a glob, a group (``latency``) or a target (``direct``)."""
    names = [n for n in ORDER if n in REGISTRY] + sorted(set(REGISTRY) - set(ORDER))
    if not patterns:
        return names
    chosen = [n for n in names if any(fnmatch.fnmatch(n, p) or p in n.split(".") for p in patterns)]
    # Ratios need the floor at the same concurrency levels.
    if any(n.startswith("latency.") for n in chosen) and "latency.floor" not in chosen:
        chosen.insert(0, "latency.floor")
    return chosen


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        model = next(
            (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), ""
        )
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as handle:
        mem_kb = int(next(line.split()[1] for line in handle if line.startswith("MemTotal")))
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "mem_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def git_commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return done.stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def loadavg() -> list[float]:
    with open("/proc/loadavg") as handle:
        return [float(x) for x in handle.read().split()[:3]]


async def warm_up(target: Target) -> None:
    """A few short streams so imports, pools and caches are warm before anything is measured."""
    from bench.scenarios import run_one

    await asyncio.gather(*(run_one(target, i, 20, 0, 30) for i in range(8)))


async def run_all(
    ctx: Ctx, names: list[str], stop_peer_after: str | None, spy: bool = False
) -> None:
    warmed: set[str] = set()
    for name in names:
        if ctx.remaining() <= 0:
            ctx.results[name] = {"status": "skipped", "reason": "run time budget exhausted"}
            continue
        target_name = (
            name.split(".", 1)[1]
            if name.split(".")[0] in {"latency", "cpu", "profile"}
            else "channel"
        )
        target = ctx.targets.get(target_name)
        print(f"-- {name} ...", flush=True)
        quiet = None
        if ctx.profile.quiet_wait_s:
            quiet = await wait_for_quiet(ctx, ctx.profile.quiet_wait_s)
            ctx.paused_s += quiet["waited_s"]
        t0 = time.monotonic()
        load = loadavg()
        try:
            if target is not None and not target.skip and target_name not in warmed:
                await asyncio.wait_for(warm_up(target), 60)
                warmed.add(target_name)
            spied = Spy(
                ctx.py_spy if spy else None, ctx.stack.worker_pids(), ctx.stack.workdir, name
            )
            try:
                result = await REGISTRY[name](ctx)
            finally:
                profiled = spied.stop() if spied.procs else None
            if profiled is not None:
                result["py_spy"] = profiled
        except Exception as exc:  # noqa: BLE001 - one broken scenario must not lose the others
            result = {
                "status": "error",
                "reason": f"{type(exc).__name__}: {exc}"[:500],
                "traceback": traceback.format_exc()[-3000:],
            }
        result["elapsed_s"] = round(time.monotonic() - t0, 1)
        result["loadavg_before"] = load
        if quiet is not None:
            result["quiet_before"] = quiet
        ctx.results[name] = result
        print(
            f"   {result['status']} in {result['elapsed_s']} s"
            + (f": {result.get('reason')}" if result["status"] != "ok" else ""),
            flush=True,
        )
        if name == stop_peer_after and ctx.peer is not None:
            ctx.peer.stop()
            ctx.peer = None


def build_targets(
    stack: Stack, peer_url: str | None, peer_skip: str | None, pool: int
) -> dict[str, Target]:
    members = stack.users("member", pool)
    assert stack.upstream is not None

    def member_headers(slot: int) -> dict[str, str]:
        return members[slot % len(members)].headers

    targets = {
        "floor": Target("floor", "openai", stack.upstream_url, stack.upstream.pids, lambda _s: {}),
        "direct": Target(
            "direct",
            "openai",
            stack.gateway_url + "/v1",
            stack.gateway_pids,
            member_headers,
            None
            if stack.has_route("POST", "/v1/chat/completions")
            else "direct mode not present (POST /v1/chat/completions)",
        ),
        "channel": Target(
            "channel",
            "channel",
            stack.gateway_url,
            stack.gateway_pids,
            member_headers,
            None
            if stack.has_route("POST", "/v1/streams")
            else "channel mode not present (POST /v1/streams)",
        ),
    }
    peer_headers = {"Authorization": "Bearer " + peer.MASTER_KEY}
    peer_proc = next((p for p in stack.procs if p.name == "peer"), None)
    targets["peer"] = Target(
        "peer",
        "openai",
        (peer_url or "") + "/v1",
        peer_proc.pids if peer_proc else (lambda: []),
        lambda _s: peer_headers,
        peer_skip,
    )
    return targets


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="about a minute: a smaller version of every scenario"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="seconds: a handful of streams (the test uses it)"
    )
    parser.add_argument(
        "--scenario",
        action="append",
        default=[],
        help="comma-separated globs, groups (latency, cpu, channel) or targets (direct, peer)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="gunicorn gevent workers (default 2 = cores)"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results", help="where JSON and PNGs go"
    )
    parser.add_argument("--no-peer", action="store_true", help="skip the LiteLLM peer")
    parser.add_argument(
        "--no-peer-install", action="store_true", help="use the peer only if already installed"
    )
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--docs-img",
        type=Path,
        default=None,
        help="also copy the PNGs here as bench-<figure>.png (for docs/performance.md)",
    )
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep logs, the database and py-spy output"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        metavar="S",
        help="before each scenario wait up to S seconds for other jobs to stop using the CPU "
        "(default 120 for the full run, 0 for --quick)",
    )
    parser.add_argument(
        "--db-dir",
        type=Path,
        default=None,
        help="directory for the gateway's SQLite file (default: the run's temp dir on disk; "
        "/dev/shm shows what the database's fsyncs cost)",
    )
    parser.add_argument(
        "--spy",
        action="store_true",
        help="py-spy on every gateway worker during each scenario (a diagnostic: it perturbs "
        "what it measures; the summary goes into the results as py_spy)",
    )
    parser.add_argument("--list", action="store_true", help="list scenarios and exit")
    args = parser.parse_args(argv)

    patterns = [p.strip() for arg in args.scenario for p in arg.split(",") if p.strip()]
    names = select(patterns)
    if args.list:
        print("\n".join(names))
        return 0
    if not names:
        parser.error(f"no scenario matches {patterns}; see --list")
    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.quiet_wait is not None:
        profile = dataclasses.replace(profile, quiet_wait_s=args.quiet_wait)
    stamp = datetime.now().strftime("%Y-%m-%d-%H%M%S") + (
        "" if profile.name == "full" else f"-{profile.name}"
    )

    # SIGTERM (make interrupted, CI timeout) unwinds through the finally below like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    # A hard stop however the run goes: the budget, every quiet wait, and setup/teardown slack.
    signal.signal(signal.SIGALRM, _interrupt)
    signal.alarm(int(profile.budget_s + len(names) * profile.quiet_wait_s + 600))

    stack = Stack(workers=args.workers, log_level="INFO", db_dir=args.db_dir)
    meta: dict[str, Any] = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "profile": profile.name,
        "machine": machine(),
        "scenarios": names,
        "argv": sys.argv[1:] if argv is None else argv,
        "gateway": {
            "server": "gunicorn",
            "worker_class": "gevent",
            "workers": args.workers,
            # Where, not the path: a results file is committed and names no directory of the
            # machine it ran on.
            "database": "SQLite (WAL) file in "
            + ("the run's temp dir" if stack.db_dir == stack.workdir else "--db-dir"),
            "log_level": "INFO",
        },
        "client": "bench.client: one asyncio process, raw HTTP/1.1 + SSE, a connection per stream",
        "fd_limit": stack.fd_limit,
        "loadavg_start": loadavg(),
        "profile_settings": {k: v for k, v in profile.__dict__.items()},
    }
    results: dict[str, Any] = {}
    started = time.monotonic()
    try:
        print(f"streamgate bench ({profile.name}); work dir {stack.workdir}", flush=True)
        stack.start_backends(tokens=profile.tokens, delay_ms=profile.delay_ms)
        stack.start_gateway()
        peer_url, peer_skip = None, None
        wants_peer = any(n.endswith(".peer") for n in names)
        if not wants_peer:
            peer_skip = "not selected"
        elif args.no_peer:
            peer_skip = "skipped: --no-peer"
        else:
            peer_skip = peer.ensure_installed(install=not args.no_peer_install)
            if peer_skip is None:
                try:
                    _, peer_url = peer.start(stack, args.workers)
                    meta["peer"] = {
                        "name": "LiteLLM proxy",
                        "spec": peer.LITELLM_SPEC,
                        "workers": args.workers,
                        "database": "none",
                    }
                except (RuntimeError, OSError) as exc:
                    peer_skip = f"LiteLLM proxy did not start: {exc}"[:500]
            if peer_skip:
                print(f"peer skipped: {peer_skip}", flush=True)
        pool = max(max(profile.concurrency), profile.cpu_concurrency, *profile.saturation_levels)
        targets = build_targets(stack, peer_url, peer_skip, pool)
        ctx = Ctx(
            stack=stack,
            profile=profile,
            targets=targets,
            results=results,
            peer=next((p for p in stack.procs if p.name == "peer"), None),
        )
        last_peer = next((n for n in reversed(names) if n.endswith(".peer")), None)
        asyncio.run(run_all(ctx, names, last_peer, spy=args.spy))
    except KeyboardInterrupt:
        print("interrupted; stopping everything this run started", flush=True)
        meta["interrupted"] = True
    except Exception as exc:  # noqa: BLE001 - report the failure in the results, then clean up
        meta["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        print(f"bench failed: {meta['error']}", flush=True)
    finally:
        signal.alarm(0)
        stack.close()
        stack.remove_db()
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    meta["loadavg_end"] = loadavg()

    report.add_ratios(results)
    checks = report.targets(results, profile.name)
    document = {"schema": 1, "meta": meta, "scenarios": results, "targets": checks}
    args.out.mkdir(parents=True, exist_ok=True)
    out_json = args.out / f"{stamp}.json"
    out_json.write_text(json.dumps(document, indent=1) + "\n")
    pngs: list[Path] = []
    if not args.no_plots:
        try:
            pngs = report.plots(results, args.out, stamp)
        except Exception as exc:  # noqa: BLE001 - the JSON is written; a figure must not hide it
            print(f"plots failed: {type(exc).__name__}: {exc}")
    if args.docs_img is not None:
        args.docs_img.mkdir(parents=True, exist_ok=True)
        for png in pngs:
            shutil.copy(png, args.docs_img / ("bench-" + png.name[len(stamp) + 1 :]))
    print()
    print(report.table(results, checks))
    print()
    print(f"results: {out_json}")
    for png in pngs:
        print(f"plot:    {png}")
    failed = [n for n, r in results.items() if r.get("status") == "error"] + (
        ["setup"] if "error" in meta else []
    )
    if failed or args.keep_workdir:
        print(f"work dir kept (logs): {stack.workdir}")
    else:
        shutil.rmtree(stack.workdir, ignore_errors=True)
    if failed:
        print("errors in: " + ", ".join(failed))
    return 1 if failed or meta.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
