"""What several model servers cost a client: failover waits, and the healthy path (a script).

One gunicorn (one gevent worker) per configuration, all running at once on the same Redis and
fake model, on loopback. ``--requests`` rounds of direct-mode streams, one per configuration in
turn (time to the first token as the client sees it, and its difference to ``one`` in the same
round), then ``--burst`` streams 8 at a time per configuration, in six interleaved slices (the
worker's CPU per request, from /proc):

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


def cpu_per_request(url: str, pids: list[int], headers: dict[str, str], burst: int) -> float:
    """Gateway workers' CPU milliseconds per request over ``burst`` streams, 8 at a time."""
    before = procstat.cpu_seconds(pids)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: first_token_ms(url, headers), range(burst)))
    return round((procstat.cpu_seconds(pids) - before) * 1000 / burst, 3)


def run(requests: int, burst: int, read_timeout: float) -> dict[str, Any]:
    stack = _Stack(workers=1)
    results: dict[str, Any] = {}
    try:
        stack.start_backends(tokens=8, delay_ms=0)
        headers = stack.users("member", 1)[0].headers
        healthy = stack.upstream_url
        stack.start_upstream(tokens=8, delay_ms=0)  # a second one: the hanging first choice
        hanging = stack.upstream_url
        httpx.post(hanging.removesuffix("/v1") + "/_reset", json={"hang": True}, timeout=5)
        closed = f"http://127.0.0.1:{free_port()}/v1"

        def upstreams(config: str, first: str) -> str:
            # Names per configuration: their shared state in Redis is their own.
            return json.dumps(
                [
                    {"name": config, "base_url": first, "models": ["fake-model"], "weight": 100},
                    {"name": config + "-2", "base_url": healthy, "models": ["fake-model"]},
                ]
            )

        never = {"LLM_COOLDOWN_FAILURES": "1000000000"}
        two = [{"name": n, "base_url": healthy, "models": ["fake-model"]} for n in ("a", "b")]
        configs: dict[str, dict[str, str]] = {
            "one": {},
            "two": {"LLM_UPSTREAMS": json.dumps(two)},
            "refused": {"LLM_UPSTREAMS": upstreams("refused", closed), **never},
            "timeout": {
                "LLM_UPSTREAMS": upstreams("timeout", hanging),
                "LLM_READ_TIMEOUT_S": str(read_timeout),
                **never,
            },
            "refused+cooldown": {"LLM_UPSTREAMS": upstreams("cooldown", closed)},
        }
        gateways: dict[str, tuple[str, list[int]]] = {}
        for name, extra in configs.items():
            # No load shedding: on a shared machine a late event loop would refuse requests.
            stack.extra = {"LLM_BASE_URL": healthy, "OVERLOAD_LAG_MS": "0", **extra}
            stack.start_gateway()
            gateways[name] = (stack.gateway_url, stack.worker_pids())
            for _ in range(4):  # warm its pools (and let the cooldown configuration cool down)
                first_token_ms(stack.gateway_url, headers)
        # Time to first token, the configurations interleaved request by request: whatever else
        # the machine does slows them alike, and each round's difference to "one" is paired.
        samples: dict[str, list[float]] = {name: [] for name in configs}
        names = list(gateways)
        for i in range(requests):
            for name in names[i % len(names) :] + names[: i % len(names)]:  # no first or last
                if name != "timeout" or i < 10:  # each of those waits the read timeout
                    samples[name].append(first_token_ms(gateways[name][0], headers))
        # CPU per request, the configurations again interleaved (``rounds`` slices each).
        cpu: dict[str, float] = dict.fromkeys(configs, 0.0)
        rounds = 6
        for i in range(rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                url, pids = gateways[name]
                if name != "timeout":
                    cpu[name] += cpu_per_request(url, pids, headers, burst // rounds) / rounds
        floor = samples["one"]
        for name, values in samples.items():
            diffs = [v - f for v, f in zip(values, floor, strict=False)]
            results[name] = {
                "ttft_ms_p50": round(statistics.median(values), 2),
                "extra_wait_ms_p50_paired": round(statistics.median(diffs), 2),
            }
            if name != "timeout":
                results[name]["cpu_ms_per_request"] = round(cpu[name], 3)
            print(name, results[name], flush=True)
    finally:
        stack.close()
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
