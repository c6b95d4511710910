"""Soak: 1,000 channel-mode subscribers and 200 concurrent generations, with random disconnects.

Bounded (``SOAK_SECONDS``, default 120) and loopback only; run with ``make soak`` (CI runs it after
``make test``). What a user would notice is asserted:
- every subscriber's reassembled text equals the stream's text (no gap, no duplicate), however
  often it was cut off and resumed with ``Last-Event-ID``;
- every generation completes; no response is a 5xx;
- afterwards nothing is left running: no live stream, no lease, no open subscription.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from bench.client import exchange, request_json
from bench.fake_upstream import expected_text
from bench.stack import Stack

pytestmark = [pytest.mark.soak, pytest.mark.timeout(900)]

SECONDS = float(os.environ.get("SOAK_SECONDS", "120"))
GENERATORS = int(os.environ.get("SOAK_GENERATORS", "200"))
SUBSCRIBERS = int(os.environ.get("SOAK_SUBSCRIBERS", "1000"))
TOKENS = 60
DELAY_MS = 100  # 10 tokens/s per stream: 2,000 upstream tokens/s in all on two shared cores
TERMINAL = {"stream.completed", "stream.failed", "stream.cancelled", "stream.revoked"}


@dataclass
class Tally:
    statuses: dict[int, int] = field(default_factory=dict)
    streams_started: int = 0
    streams_completed: int = 0
    stream_failures: list[str] = field(default_factory=list)
    followed: int = 0
    resumes: int = 0
    mismatches: list[str] = field(default_factory=list)

    def status(self, code: int) -> None:
        self.statuses[code] = self.statuses.get(code, 0) + 1


async def follow(
    base: str,
    stream_id: str,
    headers: dict[str, str],
    tally: Tally,
    rng: random.Random,
    stop_at: float,
) -> None:
    """Read one stream to its end, cutting the connection at random and resuming each time."""
    pieces: list[str] = []
    seen_ids: list[str] = []
    last_id: str | None = None
    terminal: str | None = None
    while terminal is None and time.monotonic() < stop_at + 60:

        def on_event(name: str, data: str, entry: str | None, _now: float, _wall: float) -> None:
            nonlocal last_id, terminal
            if entry and name != "ping":
                seen_ids.append(entry)
                last_id = entry
            if name == "token":
                pieces.append(json.loads(data)["text"])
            elif name in TERMINAL:
                terminal = name

        hdrs = dict(headers)
        if last_id is not None:
            hdrs["Last-Event-ID"] = last_id
            tally.resumes += 1
        try:
            proto = await exchange(
                base,
                "GET",
                f"/v1/events?channel=streams/{stream_id}",
                headers=hdrs,
                on_event=on_event,
            )
        except OSError as exc:
            tally.mismatches.append(f"{stream_id}: connect failed: {exc}")
            return
        try:
            cut_after = rng.uniform(0.3, 3.0)
            await asyncio.wait_for(asyncio.shield(proto.done), cut_after)
        except TimeoutError:
            pass  # cut it off mid-stream; the loop resumes from last_id
        finally:
            proto.close()
        if proto.status:
            tally.status(proto.status)
        if proto.status and proto.status != 200:
            tally.mismatches.append(f"{stream_id}: events answered {proto.status}")
            return
    tally.followed += 1
    if terminal != "stream.completed":
        tally.mismatches.append(f"{stream_id}: ended with {terminal}")
    elif "".join(pieces) != expected_text(TOKENS):
        tally.mismatches.append(f"{stream_id}: reassembled text differs")
    elif len(seen_ids) != len(set(seen_ids)):
        tally.mismatches.append(f"{stream_id}: duplicate event ids")


async def soak(stack: Stack) -> Tally:
    base = stack.gateway_url
    owners = stack.users("member", GENERATORS)
    watchers = stack.users("admin", 10)  # tenant admins may read every stream of the tenant
    tally = Tally()
    stop_at = time.monotonic() + SECONDS
    recent: list[tuple[str, dict[str, str]]] = []
    body = {
        "model": "fake-model",
        "messages": [
            {"role": "user", "content": f"soak [[fake tokens={TOKENS} delay_ms={DELAY_MS}]]"}
        ],
    }

    async def generator(slot: int) -> None:
        owner = owners[slot]
        await asyncio.sleep(slot * 2.0 / GENERATORS)
        while time.monotonic() < stop_at:
            try:
                status, _, payload = await request_json(
                    base, "POST", "/v1/streams", headers=owner.headers, json_body=body, timeout=30
                )
            except (TimeoutError, OSError) as exc:  # an overloaded gateway: count it, go on
                tally.stream_failures.append(f"POST /v1/streams: {type(exc).__name__}")
                continue
            tally.status(status)
            if status != 202:
                tally.stream_failures.append(f"POST /v1/streams answered {status}: {payload}")
                await asyncio.sleep(1)
                continue
            tally.streams_started += 1
            stream_id = payload["id"]
            recent.append((stream_id, owner.headers))
            del recent[:-400]
            # The owner follows its own stream too, without cuts, as the reference reader.
            done = await read_to_end(base, stream_id, owner.headers)
            tally.status(done[0])
            if done[1] == "stream.completed" and done[2] == expected_text(TOKENS):
                tally.streams_completed += 1
            else:
                tally.stream_failures.append(f"{stream_id}: {done[1]} ({done[0]})")

    async def subscriber(slot: int) -> None:
        watcher = watchers[slot % len(watchers)]
        sub_rng = random.Random(slot)  # noqa: S311
        await asyncio.sleep(2 + slot * 3.0 / SUBSCRIBERS)
        while time.monotonic() < stop_at:
            if not recent:
                await asyncio.sleep(0.2)
                continue
            stream_id, _ = recent[sub_rng.randrange(max(1, len(recent) - 50), len(recent))]
            await follow(base, stream_id, watcher.headers, tally, sub_rng, stop_at)

    tasks = [asyncio.create_task(generator(i)) for i in range(GENERATORS)]
    tasks += [asyncio.create_task(subscriber(i)) for i in range(SUBSCRIBERS)]
    await asyncio.wait_for(asyncio.gather(*tasks), SECONDS + 240)
    return tally


async def read_to_end(
    base: str, stream_id: str, headers: dict[str, str]
) -> tuple[int, str | None, str]:
    pieces: list[str] = []
    terminal: str | None = None

    def on_event(name: str, data: str, _entry: str | None, _now: float, _wall: float) -> None:
        nonlocal terminal
        if name == "token":
            pieces.append(json.loads(data)["text"])
        elif name in TERMINAL:
            terminal = name

    try:
        proto = await exchange(
            base,
            "GET",
            f"/v1/events?channel=streams/{stream_id}",
            headers=headers,
            on_event=on_event,
        )
    except OSError:
        return 0, None, ""
    try:
        await asyncio.wait_for(asyncio.shield(proto.done), 120)
    except TimeoutError:
        return proto.status, None, "".join(pieces)
    finally:
        proto.close()
    return proto.status, terminal, "".join(pieces)


def test_soak_subscribers_and_generations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSE_MAX_SUBSCRIPTIONS_PER_USER", "100000")
    monkeypatch.setenv("SSE_HEARTBEAT_S", "5")
    stack = Stack(workers=2)
    try:
        stack.start_redis()
        stack.start_upstream(tokens=TOKENS, delay_ms=DELAY_MS)
        stack.prepare_app()
        stack.start_gateway()
        started = time.monotonic()
        tally = asyncio.run(soak(stack))
        elapsed = time.monotonic() - started
        redis = stack.redis_client()

        def leftovers_now() -> dict[str, Any]:
            now = time.time()
            return {
                "live": redis.zcard("sg:live"),
                "subscriptions": sum(
                    redis.zcount(k, now, "+inf") for k in redis.scan_iter("sg:subs:*")
                ),
            }

        # Cut connections are noticed at the next heartbeat write; allow two heartbeats.
        deadline = time.monotonic() + 15
        leftovers = leftovers_now()
        while leftovers != {"live": 0, "subscriptions": 0} and time.monotonic() < deadline:
            time.sleep(0.5)
            leftovers = leftovers_now()
        summary = {
            "seconds": round(elapsed, 1),
            "streams_started": tally.streams_started,
            "streams_completed": tally.streams_completed,
            "subscriptions_followed": tally.followed,
            "resumes": tally.resumes,
            "statuses": tally.statuses,
            "leftovers": leftovers,
        }
        print("soak:", json.dumps(summary))
        assert not [code for code in tally.statuses if code >= 500], summary
        assert tally.stream_failures == [], tally.stream_failures[:10]
        assert tally.mismatches == [], tally.mismatches[:10]
        assert tally.streams_completed >= GENERATORS and tally.followed >= SUBSCRIBERS // 2, summary
        assert leftovers == {"live": 0, "subscriptions": 0}, leftovers
    finally:
        stack.close()
