"""Turn a results dict into the issue's target checks, a stdout table and PNG plots."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TARGET_NAMES = ("floor", "direct", "channel", "peer")


def _level(results: dict[str, Any], target: str, conc: str) -> dict[str, Any] | None:
    scen = results.get(f"latency.{target}") or {}
    level = (scen.get("levels") or {}).get(conc)
    return level if level and level.get("ok") else None


def add_ratios(results: dict[str, Any]) -> None:
    """Annotate every latency level with its inflation over the floor at the same concurrency."""
    floor = results.get("latency.floor") or {}
    for target in TARGET_NAMES[1:]:
        scen = results.get(f"latency.{target}") or {}
        for conc, level in (scen.get("levels") or {}).items():
            base = (floor.get("levels") or {}).get(conc)
            if not base or not base.get("ok") or not level.get("ok"):
                continue
            level["vs_floor"] = {
                "total_p50_ratio": _ratio(level["total_s"]["p50"], base["total_s"]["p50"]),
                "total_p99_ratio": _ratio(level["total_s"]["p99"], base["total_s"]["p99"]),
                "ttft_p50_delta_ms": _delta(level["ttft_ms"]["p50"], base["ttft_ms"]["p50"]),
                "ttft_p99_delta_ms": _delta(level["ttft_ms"]["p99"], base["ttft_ms"]["p99"]),
            }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def _delta(a: float | None, b: float | None) -> float | None:
    return round(a - b, 2) if a is not None and b is not None else None


def targets(results: dict[str, Any], profile: str) -> list[dict[str, Any]]:
    """The issue's targets: what was measured and whether it was met (None: not measured)."""
    rows: list[dict[str, Any]] = []

    def row(name: str, goal: str, value: Any, unit: str, met: bool | None, note: str = "") -> None:
        rows.append(
            {
                "target": name,
                "goal": goal,
                "measured": value,
                "unit": unit,
                "met": met,
                "note": note,
            }
        )

    def at_most(name: str, goal: str, value: Any, unit: str, limit: float, note: str = "") -> None:
        row(name, goal, value, unit, None if value is None else value <= limit, note)

    def over_floor(mode: str, total_ratio: float, ttft_ms: int) -> None:
        """``mode``'s total p50 at 200 concurrent and TTFT p50 at 50, against the floor's."""
        ratio = (_level(results, mode, "200") or {}).get("vs_floor", {}).get("total_p50_ratio")
        goal = f"<= {total_ratio:.2f}x floor"
        at_most(f"{mode} total p50 at 200 concurrent", goal, ratio, "x floor", total_ratio)
        delta = (_level(results, mode, "50") or {}).get("vs_floor", {}).get("ttft_p50_delta_ms")
        goal = f"<= floor + {ttft_ms} ms"
        at_most(f"{mode} TTFT p50 at 50 concurrent", goal, delta, "ms over floor", ttft_ms)

    over_floor("direct", 1.10, 25)
    for mode in ("direct", "channel"):
        cpu = (results.get(f"cpu.{mode}") or {}).get("headline_us_per_token")
        at_most(f"gateway CPU per token at 0 ms ({mode})", "<= 100 us", cpu, "us/token", 100)
    over_floor("channel", 1.20, 30)
    idle = results.get("channel.idle") or {}
    levels = idle.get("levels") or {}
    counts = sorted((int(k) for k, v in levels.items() if v.get("kb_per_subscriber") is not None))
    for count in counts:
        if count in (counts[0], counts[-1]):
            kb = levels[str(count)]["kb_per_subscriber"]
            row(f"memory per idle subscriber at {count}", "<= 20 KB", kb, "KB", kb <= 20)
    cap = results.get("channel.capacity") or {}
    if cap.get("max_held"):
        kb = cap["kb_per_subscriber_at_max"]
        row(
            f"memory per idle subscriber at the most held ({cap['max_held']})",
            "<= 20 KB",
            kb,
            "KB",
            kb <= 20,
            f"limit {cap.get('limit', '')}",
        )
    if counts:
        readings = [(max(levels[str(c)]["redis"]["per_worker"] or [0]), c) for c in counts]
        top = (cap.get("levels") or {}).get(str(cap.get("max_held")))
        if top and top.get("redis"):
            readings.append((max(top["redis"]["per_worker"] or [0]), cap["max_held"]))
        base = max(idle["baseline"]["redis"]["per_worker"] or [0])
        limit = idle.get("redis_cap_per_worker")
        # Independent of subscribers: a worker's connections come from its two pools, which
        # grow with concurrent connects (a high-water mark, so the count wanders with the burst)
        # up to their configured sizes, and never past them however many subscribers it holds.
        # A connection per subscriber would pass the cap at the first level. Results written
        # before the cap was recorded: within 5 of the first count.
        if limit:
            flat: bool | None = all(c <= limit for c, _ in readings)
        else:
            flat = readings[-1][0] <= readings[0][0] + 5 if len(readings) > 1 else None
        row(
            "Redis connections per worker vs subscribers",
            "independent of count",
            f"{base} before -> "
            + " / ".join(f"{c}@{n}" for c, n in readings)
            + (f" (at most {limit}: the pools' sizes + 2)" if limit else ""),
            "conns per worker",
            flat,
        )
    elif not cap.get("max_held"):
        row("memory per idle subscriber", "<= 20 KB", None, "KB", None, idle.get("reason", ""))
    fan = results.get("channel.fanout") or {}
    lag = fan.get("lag_ms") or {}
    row(
        f"fan-out lag p50 / p99 to {fan.get('subscribers', 1000)} subscribers "
        f"(from the {fan.get('lag_from', 'upstream chunk')} to the socket)",
        "p99 <= 100 ms",
        None if lag.get("p99") is None else f"{lag['p50']:.1f} / {lag['p99']:.1f}",
        "ms",
        None if lag.get("p99") is None else lag["p99"] <= 100,
        fan.get("reason", ""),
    )
    rev = results.get("channel.revoke") or {}
    for mode in ("channel", "direct"):
        closed = ((rev.get(mode) or {}).get("closed_ms") or {}).get("p99")
        upstream = ((rev.get(mode) or {}).get("upstream_ms") or {}).get("p99")
        row(
            f"revocation ({mode}): connection closed p99 / upstream closed p99",
            "< 1 s (issue 7)",
            None if closed is None else f"{closed:.1f} / {_fmt(upstream)}",
            "ms",
            None if closed is None else closed < 1000 and (upstream or 0) < 1000,
            rev.get("reason", ""),
        )
    if profile != "full":
        for r in rows:
            r["note"] = (
                r["note"] + "; " if r["note"] else ""
            ) + f"{profile} profile: not the published setup"
    return rows


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _status_line(label: str, scen: dict[str, Any]) -> str:
    return f"  {label}: {scen.get('status')}: {scen.get('reason', '')}"


def _ran_ok(out: list[str], results: dict[str, Any], name: str, label: str) -> dict[str, Any]:
    """Scenario ``name`` if it ran and succeeded; if it ran otherwise, a status line says so."""
    scen = results.get(name) or {}
    if scen and scen.get("status") != "ok":
        out.append(_status_line(label, scen))
    return scen if scen.get("status") == "ok" else {}


def _measured(
    out: list[str], levels: dict[str, Any], key: str, prefix: Callable[[str], str]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The levels that measured ``key``; for each other one a line ``<prefix>status: reason``."""
    for level, lv in levels.items():
        if key in lv:
            yield level, lv
        else:
            out.append(f"{prefix(level)}{lv.get('status')}: {lv.get('reason', '')}")


def table(results: dict[str, Any], checks: list[dict[str, Any]]) -> str:
    """The plain-text summary printed at the end of a run (only what ran)."""
    out: list[str] = []
    ran = [t for t in TARGET_NAMES if f"latency.{t}" in results]
    if ran:
        head = (
            f"{'target':<8} {'conc':>4} {'ok':>9} {'TTFT p50':>9} {'TTFT p99':>9} {'gap p99':>8} "
            f"{'total p50':>9} {'x floor':>7} {'tok/s':>8} {'CPU us/tok':>10} {'RSS MB':>7} "
            f"{'client lag p99':>14} {'others':>6}"
        )
        out += ["latency (ms unless noted; total in s; others = cores used by other jobs)", head]
        out.append("-" * len(head))
    for target in ran:
        scen = results[f"latency.{target}"]
        if scen.get("status") != "ok":
            out.append(f"{target:<8} {scen.get('status')}: {scen.get('reason', '')}")
            continue
        row = f"{target:<8} {{:>4}} ".format
        for conc, lv in _measured(out, scen["levels"], "ttft_ms", row):
            out.append(
                f"{row(conc)}{lv['ok']:>4}/{lv['streams']:<4} "
                f"{_fmt(lv['ttft_ms']['p50']):>9} "
                f"{_fmt(lv['ttft_ms']['p99']):>9} {_fmt(lv['gap_ms']['p99']):>8} "
                f"{_fmt(lv['total_s']['p50'], 3):>9} "
                f"{_fmt(lv.get('vs_floor', {}).get('total_p50_ratio'), 3):>7} "
                f"{_fmt(lv['tokens_per_s']):>8} {_fmt(lv['cpu']['us_per_token']):>10} "
                f"{_fmt(lv['rss_peak_mb']):>7} "
                f"{_fmt(lv['client']['loop_lag_ms']['p99']):>14} "
                f"{_fmt(lv.get('machine', {}).get('other_processes_cores'), 2):>6}"
            )
    ran = [t for t in TARGET_NAMES if f"cpu.{t}" in results]
    if ran:
        out += ["", "CPU at 0 ms/token (all processes of the target; per-stream work included)"]
    for target in ran:
        scen = results[f"cpu.{target}"]
        if scen.get("status") != "ok":
            out.append(_status_line(target, scen))
            continue
        fit = scen.get("fit") or {}
        out.append(
            f"  {target:<8} {_fmt(scen['headline_us_per_token']):>7} us/token "
            f"({_fmt(scen['headline_s_per_1000_tokens'], 4)} CPU s per 1,000 tokens); "
            f"fit: {_fmt(fit.get('marginal_us_per_token'))} us/token + "
            f"{_fmt(fit.get('per_stream_ms'), 2)} ms/stream"
        )
    extras: list[str] = [
        n for n in ("channel.idle", "channel.fanout", "channel.revoke") if n in results
    ]
    extras += [n for n in ("profile.direct", "profile.channel") if n in results]
    if extras:
        out += ["", "channel mode and profiles"]
    idle = _ran_ok(out, results, "channel.idle", "idle")
    if idle:
        row = "  idle {:>6}: ".format
        for count, lv in _measured(out, idle["levels"], "open", row):
            out.append(
                f"{row(count)}open {lv['open']}, "
                f"{_fmt(lv['kb_per_subscriber'], 2)} KB/subscriber "
                f"(marginal {_fmt(lv.get('marginal_kb_per_subscriber'), 2)}), "
                f"Redis conns per worker {lv['redis']['per_worker']}, "
                f"idle CPU {lv['idle_cpu_cores']} cores"
            )
    fan = _ran_ok(out, results, "channel.fanout", "fan-out")
    if fan:
        out.append(
            f"  fan-out to {fan['subscribers']}: lag p50 {_fmt(fan['lag_ms']['p50'])} ms, "
            f"p99 {_fmt(fan['lag_ms']['p99'])} ms, max {_fmt(fan['lag_ms']['max'])} ms"
        )
    cap = _ran_ok(out, results, "channel.capacity", "capacity")
    if cap:
        out.append(
            f"  capacity: held {cap['max_held']} idle subscribers at "
            f"{_fmt(cap['kb_per_subscriber_at_max'], 2)} KB each; limit {cap['limit']}"
        )
    out += _sizing_lines(results.get("sizing.workers"))
    rev = _ran_ok(out, results, "channel.revoke", "revoke")
    if rev:
        for mode in ("channel", "direct"):
            r = rev[mode]
            out.append(
                f"  revoke {mode} ({rev['live_streams']} live): p50/p99 call "
                f"{_fmt(r['call_ms']['p50'])}/{_fmt(r['call_ms']['p99'])} ms, event "
                f"{_fmt(r['event_ms']['p50'])}/{_fmt(r['event_ms']['p99'])} ms, closed "
                f"{_fmt(r['closed_ms']['p50'])}/{_fmt(r['closed_ms']['p99'])} ms, upstream "
                f"{_fmt(r['upstream_ms']['p50'])}/{_fmt(r['upstream_ms']['p99'])} ms"
            )
    for name in ("profile.direct", "profile.channel"):
        prof = _ran_ok(out, results, name, name)
        if prof:
            top = ", ".join(f"{k} {v}%" for k, v in list(prof["buckets_pct"].items())[:8])
            out.append(f"  {name} (py-spy, {prof['samples']} samples): {top}")
    sat = [n for n in ("saturation.direct", "saturation.channel") if n in results]
    if sat:
        out += [
            "",
            "saturation (offered at once; refused = 503/429 at the door; failed = after admission)",
        ]
    for name in sat:
        scen = _ran_ok(out, results, name, name)
        if not scen:
            continue
        for level, lv in _measured(out, scen["levels"], "admitted", f"  {name} {{:>4}}: ".format):
            out.append(
                f"  {name.split('.')[1]:<7} {level:>4}: admitted {lv['admitted']}, refused "
                f"{lv['refused_at_door']}, completed {lv['completed']}, failed "
                f"{lv['failed_after_admission']}, mismatches {lv['text_mismatches']}, other "
                f"{lv['not_admitted_other']}; TTFT p50/p99 {_fmt(lv['ttft_ms']['p50'])}/"
                f"{_fmt(lv['ttft_ms']['p99'])} ms, total p50/p99 {_fmt(lv['total_s']['p50'], 2)}/"
                f"{_fmt(lv['total_s']['p99'], 2)} s, {_fmt(lv['tokens_per_s'])} tok/s, "
                f"gateway {_fmt(lv.get('cores_busy'), 2)} cores, client lag p99 "
                f"{_fmt(lv.get('client', {}).get('loop_lag_ms', {}).get('p99'))} ms"
            )
    out += ["", "targets"]
    for c in checks:
        mark = {True: "MET ", False: "MISS", None: "n/a "}[c["met"]]
        note = f"  ({c['note']})" if c["note"] else ""
        out.append(
            f"  [{mark}] {c['target']}: {_fmt(c['measured'], 2)} {c['unit']} "
            f"(goal {c['goal']}){note}"
        )
    return "\n".join(out)


def _sizing_lines(scen: dict[str, Any] | None) -> list[str]:
    if not scen:
        return []
    if scen.get("status") != "ok":
        return [_status_line("sizing", scen)]
    out = [f"  sizing ({scen['load']}):"]
    for workers, run in scen["runs"].items():
        if "throughput" not in run:
            out.append(f"    {workers} workers: {run.get('status')}: {run.get('reason', '')}")
            continue
        t, sub, vs = run["throughput"], run["subscribers"], run.get("vs_first") or {}
        out.append(
            f"    {workers} workers: {_fmt(t['tokens_per_s'])} tok/s "
            f"(x{_fmt(vs.get('tokens_per_s'), 2)}), "
            f"{_fmt(t['cpu_us_per_token'])} us/token, "
            f"{_fmt(t['redis_ops_per_token']['per_unit'], 2)} Redis ops/token, "
            f"{_fmt(sub['redis_ops_per_connect']['per_unit'], 1)} ops/connect, "
            f"{_fmt(sub['redis_ops_per_subscriber_second'], 3)} ops/subscriber/s, "
            f"{_fmt(sub['kb_per_subscriber'], 1)} KB/subscriber, "
            f"Redis conns per worker {sub['redis_conns_per_worker']}"
        )
    return out


COLORS = {"floor": "#777777", "direct": "#1f77b4", "channel": "#2ca02c", "peer": "#d62728"}


def plots(results: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """Write the PNG figures; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    concs = sorted(
        {
            c
            for t in TARGET_NAMES
            for c in ((results.get(f"latency.{t}") or {}).get("levels") or {})
        },
        key=int,
    )

    def bars(ax: Any, metric: Any, title: str, ylabel: str, line: float | None = None) -> None:
        width = 0.8 / len(TARGET_NAMES)
        for i, target in enumerate(TARGET_NAMES):
            vals = []
            for conc in concs:
                lv = _level(results, target, conc)
                vals.append(metric(lv) if lv else float("nan"))
            xs = [j + (i - 1.5) * width for j in range(len(concs))]
            ax.bar(
                xs,
                [v if v is not None else float("nan") for v in vals],
                width,
                label=target,
                color=COLORS[target],
            )
        ax.set_xticks(range(len(concs)), [f"{c} conc." for c in concs])
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        if line is not None:
            ax.axhline(line, color="black", linestyle="--", linewidth=0.8)
        ax.grid(axis="y", alpha=0.3)

    if concs:
        fig, axes = plt.subplots(2, 2, figsize=(12, 8))
        bars(axes[0][0], lambda lv: lv["ttft_ms"]["p50"], "Time to first token p50", "ms")
        bars(axes[0][1], lambda lv: lv["ttft_ms"]["p99"], "Time to first token p99", "ms")
        bars(axes[1][0], lambda lv: lv["gap_ms"]["p99"], "Inter-token gap p99", "ms")
        bars(
            axes[1][1],
            lambda lv: (lv.get("vs_floor") or {}).get("total_p50_ratio", 1.0 if lv else None),
            "Total time p50 / floor (target <= 1.10)",
            "x floor",
            line=1.10,
        )
        axes[0][0].legend()
        scen: dict[str, Any] = next(
            (results[f"latency.{t}"] for t in TARGET_NAMES if f"latency.{t}" in results), {}
        )
        fig.suptitle(
            f"Streaming latency: {scen.get('tokens_per_stream')}-token streams at "
            f"{scen.get('delay_ms')} ms/token (TTFT on a log scale)"
        )
        for ax in (axes[0][0], axes[0][1]):
            if any(p.get_height() > 0 for p in ax.patches):  # log needs a positive value
                ax.set_yscale("log")
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"{stem}-latency.png"))
        plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    if concs:
        bars(axes[0], lambda lv: lv["tokens_per_s"], "Delivered tokens/s (all streams)", "tokens/s")
        axes[0].legend()
    names, cpu_vals = [], []
    for target in TARGET_NAMES:
        scen = results.get(f"cpu.{target}") or {}
        if scen.get("status") == "ok":
            names.append(target)
            cpu_vals.append(scen["headline_us_per_token"] or 0)
    axes[1].bar(names, cpu_vals, color=[COLORS[n] for n in names])
    axes[1].axhline(100, color="black", linestyle="--", linewidth=0.8)
    axes[1].set_title("CPU per token at 0 ms/token (target 100 us)")
    axes[1].set_ylabel("CPU us per token")
    rss_names, rss_vals = [], []
    for target in TARGET_NAMES:
        scen = results.get(f"latency.{target}") or {}
        peaks = [
            lv.get("rss_peak_mb")
            for lv in (scen.get("levels") or {}).values()
            if lv.get("rss_peak_mb")
        ]
        if peaks:
            rss_names.append(target)
            rss_vals.append(max(peaks))
    axes[2].bar(rss_names, rss_vals, color=[COLORS[n] for n in rss_names])
    axes[2].set_title("Peak RSS under load (all processes of the target)")
    axes[2].set_ylabel("MB")
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    written.append(_save(fig, out_dir / f"{stem}-throughput-cpu.png"))
    plt.close(fig)

    idle = results.get("channel.idle") or {}
    fan = results.get("channel.fanout") or {}
    if idle.get("status") == "ok" or fan.get("status") == "ok":
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
        levels = {
            int(k): v
            for k, v in (idle.get("levels") or {}).items()
            if v.get("kb_per_subscriber") is not None
        }
        if levels:
            xs = sorted(levels)
            axes[0].plot(
                xs, [levels[x]["kb_per_subscriber"] for x in xs], "o-", color=COLORS["channel"]
            )
            axes[0].axhline(20, color="black", linestyle="--", linewidth=0.8)
            axes[0].set_title("Worker memory per idle subscriber (target 20 KB)")
            axes[0].set_xlabel("idle subscribers")
            axes[0].set_ylabel("KB per subscriber")
            axes[1].plot(
                xs,
                [max(levels[x]["redis"]["per_worker"] or [0]) for x in xs],
                "o-",
                color=COLORS["channel"],
            )
            axes[1].set_title("Redis connections per worker")
            axes[1].set_xlabel("idle subscribers")
            axes[1].set_ylabel("connections (max over workers)")
            axes[1].set_ylim(bottom=0)
        if fan.get("lag_cdf_ms"):
            q = fan["lag_cdf_ms"]
            axes[2].plot(q, [i / (len(q) - 1) for i in range(len(q))], color=COLORS["channel"])
            axes[2].axvline(100, color="black", linestyle="--", linewidth=0.8)
            axes[2].set_title(f"Fan-out delivery lag CDF ({fan['subscribers']} subscribers)")
            axes[2].set_xlabel(f"ms from the {fan.get('lag_from', 'log append')} to the socket")
            axes[2].set_ylabel("fraction of deliveries")
        for ax in axes:
            ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"{stem}-channel.png"))
        plt.close(fig)
    return written


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def _targets_ok(
    results: dict[str, Any], kind: str, skipped: list[str] | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each target's ``kind`` scenario that ran ok, in table order; where ``skipped`` is given, a
    row saying why for each one that ran otherwise (appended in the same order)."""
    for target in TARGET_NAMES:
        scen = results.get(f"{kind}.{target}") or {}
        if scen.get("status") == "ok":
            yield target, scen
        elif scen and skipped is not None:
            skipped.append(f"| {target} | {scen.get('status')}: {scen.get('reason', '')} |")


def markdown(document: dict[str, Any]) -> str:
    """The results tables for docs/performance.md (``python -m bench.report <results.json>``)."""
    results, meta = document["scenarios"], document["meta"]
    lines = [
        f"Run `{meta['date']}` at commit `{meta['commit']}`, profile `{meta['profile']}`, "
        f"{meta['machine']['cores']} cores ({meta['machine']['cpu']}), "
        f"{meta['gateway']['workers']} gunicorn gevent workers.",
        "",
        "| target | concurrent | ok | TTFT p50 ms | TTFT p99 ms | gap p50 ms | gap p99 ms | "
        "total p50 s | x floor p50 | x floor p99 | tokens/s | CPU us/token | RSS MB | "
        "other jobs (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target, scen in _targets_ok(results, "latency", lines):
        for conc, lv in scen["levels"].items():
            if "ttft_ms" not in lv:
                continue
            vs = lv.get("vs_floor") or {}
            lines.append(
                f"| {target} | {conc} | {lv['ok']}/{lv['streams']} | "
                f"{_fmt(lv['ttft_ms']['p50'])} | {_fmt(lv['ttft_ms']['p99'])} | "
                f"{_fmt(lv['gap_ms']['p50'])} | "
                f"{_fmt(lv['gap_ms']['p99'])} | {_fmt(lv['total_s']['p50'], 3)} | "
                f"{_fmt(vs.get('total_p50_ratio'), 3)} | {_fmt(vs.get('total_p99_ratio'), 3)} | "
                f"{_fmt(lv['tokens_per_s'])} | {_fmt(lv['cpu']['us_per_token'])} | "
                f"{_fmt(lv['rss_peak_mb'])} | "
                f"{_fmt(lv.get('machine', {}).get('other_processes_cores'), 2)} |"
            )
    lines += [
        "",
        "| target | CPU us/token (200-token streams) | CPU s per 1,000 tokens | "
        "fit: us per extra token | fit: ms per stream | client CPU us/token |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for target, scen in _targets_ok(results, "cpu"):
        fit = scen.get("fit") or {}
        head = scen["runs"][str(scen["headline_tokens_per_stream"])]
        lines.append(
            f"| {target} | {_fmt(scen['headline_us_per_token'])} | "
            f"{_fmt(scen['headline_s_per_1000_tokens'], 4)} | "
            f"{_fmt(fit.get('marginal_us_per_token'))} | {_fmt(fit.get('per_stream_ms'), 2)} | "
            f"{_fmt(head['client']['us_per_token'])} |"
        )
    lines += ["", "| target | goal | measured | met |", "|---|---|---|---|"]
    for c in document["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[c["met"]]
        lines.append(
            f"| {c['target']} | {c['goal']} | {_fmt(c['measured'], 2)} {c['unit']} | {met} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys

    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
