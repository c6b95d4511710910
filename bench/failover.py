"""What several model servers cost a client: failover waits, and the healthy path (a script).

One gunicorn (gevent workers) per configuration, the same Redis, the fake model on loopback. For
each configuration ``--requests`` direct-mode streams run one after another (the time to the
first token, measured by the client) and then ``--burst`` streams 16 at a time (the gateway
workers' CPU per request, from /proc):

- ``one``: ``LLM_BASE_URL`` alone (the floor);
- ``two``: ``LLM_UPSTREAMS`` with two healthy servers, equal weights (the healthy path);
- ``refused``: the first choice of every request refuses the connection (nothing listens on
  its port; cooldown off so every request pays it), the second answers;
- ``timeout``: the first choice accepts and never answers (``LLM_READ_TIMEOUT_S`` is
  ``--read-timeout``), the second answers;
- ``refused+cooldown``: as ``refused`` with the default cooldown (3 failures): what the
  requests after the first few pay.

    python -m bench.failover                 # 40 sequential + 400 burst requests a configuration
    python -m bench.failover --requests 20 --burst 200

Every process started here is ended by PID when it finishes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from bench import procstat
from bench.stack import Stack, free_port

BODY = {
    "model": "fake-model",
    "stream": True,
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Hi [[fake tokens=8]]"}],
}


class _Stack(Stack):
    """The bench stack with extra gateway environment (the configuration under test)."""

    extra: dict[str, str] = {}  # noqa: RUF012 - replaced per configuration

    def gateway_env(self) -> dict[str, str]:
        return {**super().gateway_env(), **self.extra}


def first_token_ms(url: str, headers: dict[str, str]) -> float:
    """One streamed request read to its end; milliseconds until its first content chunk."""
    started = time.perf_counter()
    first: float | None = None
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json=BODY, headers=headers, timeout=60
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and '"content":"' in line and '"content":""' not in line:
                first = time.perf_counter()
            if line == "data: [DONE]":
                break
    if first is None:
        raise RuntimeError("a stream without a token")
    return (first - started) * 1000


def measure(stack: _Stack, headers: dict[str, str], requests: int, burst: int) -> dict[str, Any]:
    url = stack.gateway_url
    for _ in range(4):  # warm the workers' pools
        first_token_ms(url, headers)
    ttft = [first_token_ms(url, headers) for _ in range(requests)]
    pids = stack.worker_pids()
    cpu_before = procstat.cpu_seconds(pids)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: first_token_ms(url, headers), range(burst)))
    cpu = procstat.cpu_seconds(pids) - cpu_before
    return {
        "ttft_ms_p50": round(statistics.median(ttft), 2),
        "ttft_ms_p90": round(sorted(ttft)[int(len(ttft) * 0.9) - 1], 2),
        "ttft_ms_first": round(ttft[0], 2),
        "cpu_ms_per_request": round(cpu * 1000 / burst, 3),
    }


def run(requests: int, burst: int, read_timeout: float) -> dict[str, Any]:
    stack = _Stack()
    results: dict[str, Any] = {}
    try:
        stack.start_redis()
        stack.start_upstream(tokens=8, delay_ms=0)
        stack.prepare_app()
        headers = stack.users("member", 1)[0].headers
        healthy = stack.upstream_url
        stack.start_upstream(tokens=8, delay_ms=0)  # a second one: the hanging first choice
        hanging = stack.upstream_url
        httpx.post(hanging.removesuffix("/v1") + "/_reset", json={"hang": True}, timeout=5)
        closed = f"http://127.0.0.1:{free_port()}/v1"

        def upstreams(first: str) -> str:
            return json.dumps(
                [
                    {"name": "first", "base_url": first, "models": ["fake-model"], "weight": 100},
                    {"name": "second", "base_url": healthy, "models": ["fake-model"]},
                ]
            )

        never = {"LLM_COOLDOWN_FAILURES": "1000000000"}
        configs: dict[str, dict[str, str]] = {
            "one": {},
            "two": {
                "LLM_UPSTREAMS": json.dumps(
                    [
                        {"name": "a", "base_url": healthy, "models": ["fake-model"]},
                        {"name": "b", "base_url": healthy, "models": ["fake-model"]},
                    ]
                )
            },
            "refused": {"LLM_UPSTREAMS": upstreams(closed), **never},
            "timeout": {
                "LLM_UPSTREAMS": upstreams(hanging),
                "LLM_READ_TIMEOUT_S": str(read_timeout),
                **never,
            },
            "refused+cooldown": {"LLM_UPSTREAMS": upstreams(closed)},
        }
        for name, extra in configs.items():
            # No load shedding: on a shared machine a late event loop would refuse requests.
            stack.extra = {"LLM_BASE_URL": healthy, "OVERLOAD_LAG_MS": "0", **extra}
            stack.redis_client().flushall()
            stack.restart_gateway() if stack.gateway is not None else stack.start_gateway()
            n_burst = burst if name != "timeout" else 0
            if name == "timeout":  # every request waits the read timeout: sequential only
                url = stack.gateway_url
                first_token_ms(url, headers)
                ttft = [first_token_ms(url, headers) for _ in range(min(requests, 10))]
                results[name] = {"ttft_ms_p50": round(statistics.median(ttft), 2)}
            else:
                results[name] = measure(stack, headers, requests, n_burst)
            print(name, results[name], flush=True)
    finally:
        stack.close()
    floor = results["one"]["ttft_ms_p50"]
    for name in ("refused", "timeout", "refused+cooldown", "two"):
        results[name]["extra_wait_ms_p50"] = round(results[name]["ttft_ms_p50"] - floor, 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--burst", type=int, default=400)
    parser.add_argument("--read-timeout", type=float, default=1.0)
    args = parser.parse_args()
    print(json.dumps(run(args.requests, args.burst, args.read_timeout), indent=2))


if __name__ == "__main__":
    main()
