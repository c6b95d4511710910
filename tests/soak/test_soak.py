"""Soak: 1,000 channel-mode subscribers and 200 concurrent generations, with random disconnects.

Bounded (``SOAK_SECONDS``, default 120; at most twice that to reach its resumes) and loopback
only; run with ``make soak`` (CI runs it after ``make test``). Twice: on the machine as it is,
and with a CPU hog taking one of its two cores for the whole run (issue 14: a gateway at
capacity slows down and refuses new work at the door; it does not drop what it accepted). What
a user would notice is asserted:
- every subscriber's reassembled text equals the stream's text (no gap, no duplicate), however
  often it was cut off and resumed with ``Last-Event-ID``;
- every generation that got its 202 completes; no response is a 5xx other than the documented
  ``503 overloaded`` refusal at the door (a stream start or a hub connection), which the clients
  here honour as SDKs and EventSource wrappers do: wait ``Retry-After``, try again (resuming);
- afterwards nothing is left running: no live stream, no lease, no open subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bench.client import exchange, request_json
from bench.fake_upstream import expected_text
from bench.stack import Stack
from tests.support.processes import cpu_hog

pytestmark = [pytest.mark.soak, pytest.mark.timeout(900)]

SECONDS = float(os.environ.get("SOAK_SECONDS", "120"))
GENERATORS = int(os.environ.get("SOAK_GENERATORS", "200"))
SUBSCRIBERS = int(os.environ.get("SOAK_SUBSCRIBERS", "1000"))
TOKENS = 100
DELAY_MS = 100  # 10-second streams at 10 tokens/s: 2,000 upstream tokens/s in all
CUT_PROBABILITY = 0.5  # of each connection: cut at a random moment, then resumed
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
    open_now: int = 0
    open_peak: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # 503 overloaded, by what was refused
    refused_at: list[float] = field(default_factory=list)  # when (monotonic), for the window
    owner_reconnects: int = 0  # owners' readings the server ended before the terminal event

    def refusal(self, what: str) -> None:
        self.refused[what] = self.refused.get(what, 0) + 1
        self.refused_at.append(time.monotonic())

    def status(self, code: int) -> None:
        self.statuses[code] = self.statuses.get(code, 0) + 1

    def opened(self) -> None:
        self.open_now += 1
        self.open_peak = max(self.open_peak, self.open_now)

    def closed(self) -> None:
        self.open_now -= 1


@dataclass
class Slot:
    """One generator's streams, newest last, and a wake-up for its watchers."""

    streams: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, stream_id: str) -> None:
        self.streams.append(stream_id)
        self.changed.set()
        self.changed = asyncio.Event()


async def follow(
    base: str,
    stream_id: str,
    headers: dict[str, str],
    tally: Tally,
    rng: random.Random,
    give_up_at: float,
) -> None:
    """Read one stream to its end; each connection may be cut at random and is then resumed."""
    pieces: list[str] = []
    seen_ids: list[str] = []
    last_id: str | None = None
    terminal: str | None = None
    while terminal is None and time.monotonic() < give_up_at:
        first = asyncio.Event()

        def on_event(
            name: str,
            data: str,
            entry: str | None,
            _now: float,
            _wall: float,
            first: asyncio.Event = first,
        ) -> None:
            nonlocal last_id, terminal
            if entry and name != "ping":
                seen_ids.append(entry)
                last_id = entry
                first.set()
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
        tally.opened()
        cut = rng.random() < CUT_PROBABILITY
        wait = give_up_at - time.monotonic()
        if cut:
            # Cut once an event has arrived, so that the reconnect resumes from an id: a loaded
            # machine delays first events, and a cut before one is a plain reconnect.
            arrived = asyncio.ensure_future(first.wait())
            either: set[asyncio.Future[Any]] = {arrived, proto.done}
            await asyncio.wait(either, timeout=max(0.0, wait), return_when=asyncio.FIRST_COMPLETED)
            arrived.cancel()
            wait = rng.uniform(0.2, TOKENS * DELAY_MS / 1000)
        try:
            await asyncio.wait_for(asyncio.shield(proto.done), max(0.0, wait))
        except TimeoutError:
            proto.cut()  # the network went away mid-stream
            await asyncio.sleep(rng.uniform(0.0, 0.5))  # and came back
        finally:
            proto.close()
            tally.closed()
        if proto.status == 503 and overloaded(503, proto.json()):
            tally.refusal("hub")
            await asyncio.sleep(1.0)  # the hub's Retry-After; then resume from the last id
            continue
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


async def soak(stack: Stack, min_resumes: int = 0) -> Tally:
    """``GENERATORS`` owners start streams back to back; ``SUBSCRIBERS`` watchers follow them.

    Each watcher is tied to one generator and follows every stream it starts, from the first
    event, while it runs: the hub holds about ``SUBSCRIBERS`` + ``GENERATORS`` connections
    throughout, and about half of them are cut and resumed with ``Last-Event-ID``.

    The load runs ``SECONDS``, and on (for at most as long again) until the watchers have
    resumed ``min_resumes`` times: a slow machine follows fewer streams in the same time, and
    the soak is about what resuming does, not about how fast this machine is.
    """
    base = stack.gateway_url
    owners = stack.users("member", GENERATORS)
    watchers = stack.users("admin", 10)  # tenant admins may read every stream of the tenant
    tally = Tally()
    stop_at = time.monotonic() + SECONDS
    last_stop_at = stop_at + SECONDS
    give_up_at = last_stop_at + 60  # a stream started just before the end has time to finish

    def going() -> bool:
        now = time.monotonic()
        return now < stop_at or (now < last_stop_at and tally.resumes < min_resumes)

    slots = [Slot() for _ in range(GENERATORS)]
    body = {
        "model": "fake-model",
        "messages": [
            {"role": "user", "content": f"soak [[fake tokens={TOKENS} delay_ms={DELAY_MS}]]"}
        ],
    }

    async def generator(slot: int) -> None:
        owner = owners[slot]
        await asyncio.sleep(slot * 2.0 / GENERATORS)
        while going():
            try:
                status, headers, payload = await request_json(
                    base, "POST", "/v1/streams", headers=owner.headers, json_body=body, timeout=30
                )
            except (TimeoutError, OSError) as exc:  # an overloaded gateway: count it, go on
                tally.stream_failures.append(f"POST /v1/streams: {type(exc).__name__}")
                continue
            if overloaded(status, payload):  # refused at the door: wait, try again
                tally.refusal("stream")
                await asyncio.sleep(retry_after(headers))
                continue
            tally.status(status)
            if status != 202:
                tally.stream_failures.append(f"POST /v1/streams answered {status}: {payload}")
                await asyncio.sleep(1)
                continue
            tally.streams_started += 1
            stream_id = payload["id"]
            slots[slot].add(stream_id)
            # The owner follows its own stream too, without cuts, as the reference reader.
            tally.opened()
            try:
                done = await read_to_end(base, stream_id, owner.headers, tally)
            finally:
                tally.closed()
            tally.status(done[0])
            if done[1] == "stream.completed" and done[2] == expected_text(TOKENS):
                tally.streams_completed += 1
            else:
                tally.stream_failures.append(f"{stream_id}: {done[1]} ({done[0]})")

    async def watcher(index: int) -> None:
        slot = slots[index % GENERATORS]
        headers = watchers[index % len(watchers)].headers
        rng = random.Random(index)  # noqa: S311 - load shape, not security
        followed = 0
        while going():
            if len(slot.streams) == followed:
                changed = slot.changed
                with contextlib.suppress(TimeoutError):  # then look at going() again
                    await asyncio.wait_for(changed.wait(), 1.0)
                continue
            followed = len(slot.streams)
            await follow(base, slot.streams[-1], headers, tally, rng, give_up_at)

    tasks = [asyncio.create_task(generator(i)) for i in range(GENERATORS)]
    tasks += [asyncio.create_task(watcher(i)) for i in range(SUBSCRIBERS)]
    await asyncio.wait_for(asyncio.gather(*tasks), 2 * SECONDS + 240)
    return tally


async def read_to_end(
    base: str, stream_id: str, headers: dict[str, str], tally: Tally
) -> tuple[int, str | None, str]:
    """Read a stream without cuts (the owner's reference reading); a hub refusal at the door is
    waited out and the reading resumed from the last id."""
    pieces: list[str] = []
    terminal: str | None = None
    last_id: str | None = None

    def on_event(name: str, data: str, entry: str | None, _now: float, _wall: float) -> None:
        nonlocal terminal, last_id
        if entry and name != "ping":
            last_id = entry
        if name == "token":
            pieces.append(json.loads(data)["text"])
        elif name in TERMINAL:
            terminal = name

    give_up_at = time.monotonic() + 120
    while True:
        resume = {"Last-Event-ID": last_id} if last_id else {}
        try:
            proto = await exchange(
                base,
                "GET",
                f"/v1/events?channel=streams/{stream_id}",
                headers={**headers, **resume},
                on_event=on_event,
            )
        except OSError:
            return 0, None, ""
        try:
            await asyncio.wait_for(
                asyncio.shield(proto.done), max(0.1, give_up_at - time.monotonic())
            )
        except TimeoutError:
            return proto.status, None, "".join(pieces)
        finally:
            proto.close()
        if proto.status == 503 and overloaded(503, proto.json()) and time.monotonic() < give_up_at:
            tally.refusal("hub")
            await asyncio.sleep(1.0)
            continue
        if proto.status == 200 and terminal is None and time.monotonic() < give_up_at:
            # The server ended the response early (its hub reader lost Redis): resume, as
            # EventSource does. Counted: the soak on one Redis expects none.
            tally.owner_reconnects += 1
            continue
        return proto.status, terminal, "".join(pieces)


# The documented refusals a client waits out (``Retry-After``) and retries: ``overloaded`` here;
# the Redis Cluster failover soak (tests/cluster) adds the codes of its 503 window.
REFUSALS = {"overloaded"}


def overloaded(status: int, payload: Any) -> bool:
    """A documented refusal at the door: ``503`` with an ``error_code`` in ``REFUSALS``."""
    return status == 503 and isinstance(payload, dict) and payload.get("error_code") in REFUSALS


def retry_after(headers: dict[str, str]) -> float:
    try:
        return max(0.1, float(headers.get("retry-after") or headers.get("Retry-After") or 1))
    except ValueError:
        return 1.0


@pytest.mark.parametrize("hog", [False, True], ids=["quiet", "cpu_hog"])
def test_soak_subscribers_and_generations(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, hog: bool
) -> None:
    monkeypatch.setenv("SSE_MAX_SUBSCRIPTIONS_PER_USER", "100000")
    monkeypatch.setenv("SSE_CONNECTS_PER_MINUTE", "1000000")  # 10 watchers hold 1,000 followers
    monkeypatch.setenv("SSE_HEARTBEAT_S", "5")
    monkeypatch.setenv("OVERLOAD_LAG_MS", "250")  # the production door (live tests turn it off)
    stack = Stack(workers=2, workdir=tmp_path)  # its logs kept with the test's, pruned by pytest
    try:
        stack.start_redis()
        stack.start_upstream(tokens=TOKENS, delay_ms=DELAY_MS)
        stack.prepare_app()
        stack.start_gateway()
        started = time.monotonic()
        resumed_enough = SUBSCRIBERS // 4 if hog else SUBSCRIBERS // 2
        with cpu_hog(2 * SECONDS + 300) if hog else contextlib.nullcontext():
            tally = asyncio.run(soak(stack, resumed_enough))
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
            "resumes_wanted": resumed_enough,  # the load ran on past SECONDS until it had them
            "open_connections_peak": tally.open_peak,
            "statuses": tally.statuses,
            "refused_overloaded": tally.refused,
            "cpu_hog": hog,
            "leftovers": leftovers,
            "owner_reconnects": tally.owner_reconnects,
        }
        print("soak:", json.dumps(summary))
        assert not [code for code in tally.statuses if code >= 500], summary
        assert tally.stream_failures == [], tally.stream_failures[:10]
        assert tally.mismatches == [], tally.mismatches[:10]
        assert tally.streams_completed >= GENERATORS and tally.followed >= SUBSCRIBERS, summary
        # The load was what it claims: the subscribers were connected at once, and resumed (a
        # connection is cut only after its first event, so every cut is resumed from an id).
        assert tally.open_peak >= SUBSCRIBERS and tally.resumes >= resumed_enough, summary
        assert leftovers == {"live": 0, "subscriptions": 0}, leftovers
        assert tally.owner_reconnects == 0, summary  # one Redis: no reading is ended early
    finally:
        stack.close()
