"""Revocation latency across two nodes, with ~100 live streams (a bounded script, not a test).

Two gunicorn masters (gevent workers) share one Redis and one SQLite file. ``--live`` channel
streams run in the background, half on each node, each with a subscriber on the other node. Then,
``--samples`` times: a fresh stream starts on one node with its subscriber on the other, the admin
revoke is sent to one of the two nodes (alternating), and we time, from the moment the admin call
returned (and from when it was sent):

- ``closed_ms``: the subscriber's socket was closed by the server (after ``stream.revoked``);
- ``upstream_ms``: the fake upstream saw its request closed (its disconnect counter moved);
- ``both_ms``: the later of the two, i.e. the revocation is complete on both sides.

    python -m bench.revocation                    # 100 live streams, 100 samples
    python -m bench.revocation --live 20 --samples 20

Every wait is bounded; every process started here is ended by PID at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import connect_sse

from bench.stack import BenchUser, Stack

WAIT_S = 10.0  # the longest any single step may take before the run is declared failed


@dataclass
class Subscriber:
    """One hub connection, read on its own thread until the server closes it."""

    base_url: str
    channel: str
    headers: dict[str, str]
    opened: threading.Event = field(default_factory=threading.Event)
    first_token: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    terminal: str | None = None
    closed_at: float | None = None
    error: str | None = None

    def start(self) -> Subscriber:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            with (
                httpx.Client(base_url=self.base_url, timeout=300) as client,
                connect_sse(
                    client,
                    "GET",
                    "/v1/events",
                    params={"channel": self.channel},
                    headers=self.headers,
                ) as source,
            ):
                if source.response.status_code != 200:
                    self.error = f"HTTP {source.response.status_code}"
                    return
                self.opened.set()
                for sse in source.iter_sse():
                    if sse.event == "token":
                        self.first_token.set()
                    elif sse.event.startswith("stream.") and sse.event != "stream.started":
                        self.terminal = sse.event
                self.closed_at = time.perf_counter()
        except Exception as exc:  # noqa: BLE001 - reported in the results
            self.error = repr(exc)
        finally:
            self.opened.set()
            self.done.set()


def start_stream(base_url: str, user: BenchUser, delay_ms: int) -> str:
    # max_tokens at the cap (4096): at ``delay_ms`` a token, a stream outlives the run.
    content = f"revoke me [[fake infinite=1 delay_ms={delay_ms}]]"
    body = {
        "model": "fake-model",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": content}],
    }
    response = httpx.post(base_url + "/v1/streams", json=body, headers=user.headers, timeout=WAIT_S)
    if response.status_code != 202:
        raise RuntimeError(f"POST /v1/streams answered {response.status_code}: {response.text}")
    return str(response.json()["id"])


def subscribe(base_url: str, stream_id: str, user: BenchUser) -> Subscriber:
    sub = Subscriber(base_url, f"streams/{stream_id}", user.headers).start()
    if not sub.first_token.wait(WAIT_S):
        raise RuntimeError(f"no token on {stream_id}: {sub.error}")
    return sub


def disconnects(upstream: httpx.Client) -> int:
    return int(upstream.get("/_stats").json()["disconnects"])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))], 2)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": pct(values, 50),
        "p99": pct(values, 99),
        "max": round(max(values), 2),
        "mean": round(statistics.fmean(values), 2),
    }


def run(live: int, samples: int, workers: int, delay_ms: int) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    stack = Stack(workers=workers)
    try:
        stack.start_backends()
        stack.start_gateway()
        node_a = stack.gateway_url
        stack.start_gateway()
        node_b = stack.gateway_url
        nodes = (node_a, node_b)
        members = stack.users("member", live + samples)
        admin = stack.users("admin", 1)[0]
        upstream = httpx.Client(base_url=stack.upstream_root, timeout=WAIT_S)

        background = []
        for i in range(live):
            stream_id = start_stream(nodes[i % 2], members[i], delay_ms)
            background.append(subscribe(nodes[(i + 1) % 2], stream_id, members[i]))
        rows: list[dict[str, float]] = []
        for i in range(samples):
            user = members[live + i]
            runs_on, watched_on, revoked_on = nodes[i % 2], nodes[(i + 1) % 2], nodes[(i // 2) % 2]
            stream_id = start_stream(runs_on, user, delay_ms)
            sub = subscribe(watched_on, stream_id, user)
            probe = time.perf_counter()  # the same node's latency for a trivial request, as context
            httpx.get(f"{revoked_on}/v1/auth/me", headers=admin.headers, timeout=WAIT_S)
            baseline_ms = (time.perf_counter() - probe) * 1000
            before = disconnects(upstream)
            sent = time.perf_counter()
            response = httpx.post(
                f"{revoked_on}/v1/admin/streams/{stream_id}/revoke",
                json={"reason": "bench"},
                headers=admin.headers,
                timeout=WAIT_S,
            )
            returned = time.perf_counter()
            if response.status_code != 202:
                raise RuntimeError(f"revoke answered {response.status_code}: {response.text}")
            upstream_at = None
            deadline = returned + WAIT_S
            while time.perf_counter() < deadline and (upstream_at is None or not sub.done.is_set()):
                if upstream_at is None and disconnects(upstream) > before:
                    upstream_at = time.perf_counter()
                time.sleep(0.0005)
            if upstream_at is None or sub.closed_at is None or sub.terminal != "stream.revoked":
                raise RuntimeError(
                    f"sample {i}: upstream={upstream_at} closed={sub.closed_at} "
                    f"terminal={sub.terminal} error={sub.error}"
                )
            rows.append(
                {
                    "baseline_me_ms": baseline_ms,
                    "call_ms": (returned - sent) * 1000,
                    "closed_ms": (sub.closed_at - returned) * 1000,
                    "upstream_ms": (upstream_at - returned) * 1000,
                    "both_ms": (max(sub.closed_at, upstream_at) - returned) * 1000,
                    "both_from_sent_ms": (max(sub.closed_at, upstream_at) - sent) * 1000,
                }
            )
        alive = sum(1 for sub in background if not sub.done.is_set())
        return {
            "live_streams": live,
            "samples": samples,
            "nodes": 2,
            "workers_per_node": workers,
            "token_interval_ms": delay_ms,
            "loadavg_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            "background_still_open": alive,
            **{key: summary([row[key] for row in rows]) for key in rows[0]},
            "method": "sequential revokes while `live` other streams run; times from the admin "
            "call's return (closed/upstream/both) or its start (call, both_from_sent); "
            "baseline_me_ms: GET /v1/auth/me on the same node just before, for the load context; "
            "upstream close seen by polling the fake upstream's /_stats every 0.5 ms",
        }
    finally:
        stack.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", type=int, default=100, help="background live streams")
    parser.add_argument("--samples", type=int, default=100, help="revocations measured")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per node")
    parser.add_argument("--delay-ms", type=int, default=100, help="upstream token interval")
    args = parser.parse_args()
    result = run(args.live, args.samples, args.workers, args.delay_ms)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
