"""Several model servers behind real gunicorn: three fake upstreams, each its own process.

``a`` (weight 3) and ``b`` (weight 1) serve ``fake-model``; ``c`` serves the alias ``chat-small``
(its own name ``own-small``) and ``limited``, with ``max_concurrent`` 3. What a client or an
operator notices:
- 200 requests split 3:1 between ``a`` and ``b`` (each worker keeps its own smooth weighted
  round-robin, exact to one request, so the split is within +/-4 of 150/50 over two workers);
- an alias reaches ``c`` under ``c``'s own name;
- ``a`` killed mid-test: every request that had not received a token yet completes on ``b``
  (0 failures), and those streaming from ``a`` end in-band with ``upstream_disconnected``;
- ``a`` failing puts it out of rotation on every worker of both masters (it gets no further
  request), and it comes back after its cooldown once it answers again;
- a burst across two masters gets exactly ``max_concurrent`` streams from ``c``; the rest are 503.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from httpx_sse import EventSource

from bench.fake_upstream import expected_text
from tests.api.chat_helpers import chat_body, chunk_text
from tests.support.config import live_env
from tests.support.live import LiveCluster, LiveServer, refused_start
from tests.support.processes import connections_on
from tests.support.upstreams import FakeProcess, upstreams_json
from tests.support.waiting import wait_until

pytestmark = pytest.mark.live

COOLDOWN_S = 6
URL = "/v1/chat/completions"
SLOW = "infinite=1 delay_ms=50"


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeProcess]]:
    started = {name: FakeProcess(name).start() for name in ("a", "b", "c")}
    yield started
    for fake in started.values():
        fake.stop()


@pytest.fixture()
def live_overrides(fakes: dict[str, FakeProcess]) -> dict[str, str]:
    a, b, c = fakes["a"], fakes["b"], fakes["c"]
    return {
        "LLM_UPSTREAMS": upstreams_json(
            {"name": "a", "base_url": a.base_url, "models": ["fake-model"], "weight": 3},
            {"name": "b", "base_url": b.base_url, "models": ["fake-model"]},
            {
                "name": "c",
                "base_url": c.base_url,
                "api_key": "${C_KEY}",
                "models": {"chat-small": "own-small", "limited": "limited"},
                "max_concurrent": 3,
            },
        ),
        "C_KEY": "sk-c",
        "LLM_COOLDOWN_FAILURES": "2",
        "LLM_COOLDOWN_S": str(COOLDOWN_S),
        "LIMIT_USER_CONCURRENT": "100",
        "LIMIT_TENANT_CONCURRENT": "100",
        "LIMIT_USER_RPM": "100000",
        "LIMIT_TENANT_RPM": "100000",
    }


@dataclass
class World:
    node: LiveServer
    member: dict[str, str]
    operator: dict[str, str]
    fakes: dict[str, FakeProcess]

    def upstreams(self, node: LiveServer | None = None) -> dict[str, dict[str, Any]]:
        with (node or self.node).client() as client:
            response = client.get("/v1/admin/upstreams", headers=self.operator)
        assert response.status_code == 200, response.text
        return {row["name"]: row for row in response.json()}


@pytest.fixture()
def world(
    live: LiveServer,
    fakes: dict[str, FakeProcess],
    make_tenant: Any,
    make_user: Any,
    auth_headers: Any,
) -> World:
    tenant = make_tenant(models=["fake-model", "chat-small", "limited"])
    operator = make_user(make_tenant(models=["fake-model"]), role="operator")
    w = World(live, auth_headers(make_user(tenant)), auth_headers(operator), fakes)
    for fake in fakes.values():
        if not fake.running():
            fake.start()  # a test killed it: the same port again
        fake.reset()
    return w


@dataclass
class Outcome:
    status: int
    datas: list[str] = field(default_factory=list)
    token_before_end: bool = False

    @property
    def completed(self) -> bool:
        return self.status == 200 and bool(self.datas) and self.datas[-1] == "[DONE]"

    @property
    def error(self) -> dict[str, Any] | None:
        last = json.loads(self.datas[-1]) if self.datas and self.datas[-1] != "[DONE]" else {}
        return last.get("error") if isinstance(last, dict) else None


def has_token(data: str) -> bool:
    """Whether a chunk's data carries completion text."""
    try:
        chunk = json.loads(data)
    except ValueError:
        return False
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    return any((c.get("delta") or {}).get("content") for c in choices or ())


def read_stream(
    node: LiveServer, headers: dict[str, str], body: dict[str, Any], out: Outcome
) -> Iterator[str]:
    """POST ``body``; fill ``out`` as events arrive and yield each event's data."""
    with node.client() as client, client.stream("POST", URL, json=body, headers=headers) as resp:
        out.status = resp.status_code
        if resp.status_code != 200:
            resp.read()
            out.datas.append(resp.text)
            return
        for event in EventSource(resp).iter_sse():
            out.datas.append(event.data)
            out.token_before_end = out.token_before_end or has_token(event.data)
            yield event.data


def chat(node: LiveServer, headers: dict[str, str], directive: str, **extra: Any) -> Outcome:
    """One streamed request read to its end; whether a token came before the end."""
    out = Outcome(0)
    body = chat_body(directive, stream=True, max_tokens=2000, **extra)
    for _ in read_stream(node, headers, body, out):
        pass
    return out


class Held:
    """Slow streams held open on threads until they end or ``close()`` closes them."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.streams: list[tuple[Outcome, threading.Event, threading.Event]] = []
        self.threads: list[threading.Thread] = []

    def open(self, node: LiveServer, headers: dict[str, str], **extra: Any) -> None:
        out, answered, ended = Outcome(0), threading.Event(), threading.Event()
        self.streams.append((out, answered, ended))

        def run() -> None:
            body = chat_body(SLOW, stream=True, max_tokens=4000, **extra)
            try:
                for _ in read_stream(node, headers, body, out):
                    if out.token_before_end:
                        answered.set()
                    if self.stop.is_set():
                        return
            finally:
                answered.set()
                ended.set()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    @property
    def statuses(self) -> list[int]:
        return [out.status for out, answered, _ in self.streams if answered.is_set()]

    def ended(self) -> list[Outcome]:
        return [out for out, _, ended in self.streams if ended.is_set()]

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def wait_all_healthy(w: World) -> None:
    """Every upstream back in rotation (a request after a cooldown is its probe)."""

    def healthy() -> bool:
        rows = w.upstreams()
        if all(row["state"] == "healthy" for row in rows.values()):
            return True
        chat(w.node, w.member, "tokens=1")
        return False

    wait_until(healthy, timeout=COOLDOWN_S + 30, interval=0.2)


def test_requests_split_by_weight_and_an_alias_reaches_its_server_under_its_own_name(
    world: World,
) -> None:
    wait_all_healthy(world)
    for fake in world.fakes.values():
        fake.reset()
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: chat(world.node, world.member, "tokens=2"), range(200)))
    assert [o for o in outcomes if not o.completed] == []
    a, b = world.fakes["a"].stats()["requests"], world.fakes["b"].stats()["requests"]
    assert a + b == 200
    assert abs(a - 150) <= 4, (a, b)

    alias = chat(world.node, world.member, "tokens=3", model="chat-small")
    assert alias.completed and chunk_text(alias.datas) == expected_text(3)
    assert {json.loads(d)["model"] for d in alias.datas[:-1]} == {"chat-small"}
    assert world.fakes["c"].stats()["models"] == {"own-small": 1}


def test_an_upstream_killed_mid_test_fails_no_request_that_had_no_token_yet(
    world: World,
) -> None:
    wait_all_healthy(world)
    held = Held()
    try:
        for _ in range(8):
            held.open(world.node, world.member)
        wait_until(lambda: len(held.statuses) == 8, timeout=30)
        assert held.statuses == [200] * 8
        on_a = world.fakes["a"].stats()["active"]
        assert on_a > 0  # 3 of every 4 go to a

        stop = threading.Event()
        results: list[Outcome] = []

        def load() -> None:
            while not stop.is_set():
                results.append(chat(world.node, world.member, "tokens=20 delay_ms=5"))

        with ThreadPoolExecutor(4) as pool:
            for _ in range(4):
                pool.submit(load)
            wait_until(lambda: len(results) >= 8, timeout=30)
            world.fakes["a"].kill()
            done = len(results)
            wait_until(lambda: len(results) >= done + 20, timeout=60)
            stop.set()
        # Every request that had no token yet when a died was served by b.
        assert [o for o in results if not o.completed and not o.token_before_end] == []
        # The streams that were on a ended in-band after their tokens; those on b still run.
        wait_until(lambda: len(held.ended()) >= on_a, timeout=30)
        for out in held.ended():
            assert out.status == 200 and out.token_before_end
            assert out.error is not None and out.error["code"] == "upstream_disconnected"
        assert len(held.ended()) == on_a
    finally:
        held.close()
    rows = world.upstreams()
    assert rows["a"]["state"] == "cooling_down"
    assert rows["a"]["last_failure_kind"] in {"dropped", "connect"}


@pytest.fixture()
def second(world: World, live_cluster: LiveCluster) -> LiveServer:
    """A second gunicorn master on the same Redis and database."""
    if len(live_cluster.nodes) < 2:
        live_cluster.add_node()
    return live_cluster.server(world.node.app, 1)


def test_cooldown_is_seen_by_every_worker_of_both_masters_and_ends_on_recovery(
    world: World, second: LiveServer
) -> None:
    wait_all_healthy(world)
    a, b = world.fakes["a"], world.fakes["b"]
    a.reset(status=503)
    wait_until(
        lambda: (
            chat(world.node, world.member, "tokens=1").completed
            and world.upstreams()["a"]["state"] == "cooling_down"
        ),
        timeout=30,
        interval=0,
    )
    assert world.upstreams(second)["a"]["state"] == "cooling_down"
    tried = a.stats()["requests"]
    # Each cooldown that ends lets exactly one request probe a (which fails and starts the next
    # cooldown, with a new end): those probes are the only requests a may get meanwhile.
    cooldown_ends = {world.upstreams()["a"]["cooling_until"]}

    held = Held()
    try:
        for node in (world.node, second):
            pids, port = node.workers(), int(node.url.rsplit(":", 1)[1])

            def both_workers_on_b(
                node: LiveServer = node, pids: list[int] = pids, port: int = port
            ) -> bool:
                cooldown_ends.add(world.upstreams()["a"]["cooling_until"])
                # Each held stream keeps its client connection open on the worker serving it.
                if all(connections_on(pids, port).values()):
                    return True
                assert len(held.threads) <= 40, "a worker of this master served none of them"
                held.open(node, world.member)
                return False

            wait_until(both_workers_on_b, timeout=60, interval=0.2)
        # Every one of them streams from b (the last ones opened may still be on their way).
        wait_until(lambda: b.stats()["active"] == len(held.threads), timeout=30)
        cooldown_ends.add(world.upstreams()["a"]["cooling_until"])
        cooldown_ends.discard(None)
        probes = len(cooldown_ends) - 1
        assert a.stats()["requests"] - tried <= probes  # no worker of either master chose a
        assert set(held.statuses) <= {200}
        assert held.ended() == []  # nothing on b was disturbed
    finally:
        held.close()

    a.reset()  # a answers again: after the cooldown one request probes it, then it is back
    wait_all_healthy(world)
    before = a.stats()["requests"]
    for _ in range(8):
        assert chat(second, world.member, "tokens=1").completed
    assert a.stats()["requests"] > before


def test_max_concurrent_is_exact_under_a_burst_across_two_masters(
    world: World, second: LiveServer
) -> None:
    c = world.fakes["c"]
    held = Held()
    barrier_nodes = [world.node, second] * 6
    try:
        with ThreadPoolExecutor(12) as pool:
            list(pool.map(lambda n: held.open(n, world.member, model="limited"), barrier_nodes))
        wait_until(lambda: len(held.statuses) == 12, timeout=60)
        assert sorted(held.statuses) == [200] * 3 + [503] * 9
        wait_until(lambda: world.upstreams()["c"]["in_flight"] == 3, timeout=10)
        assert c.stats()["peak"] == 3
    finally:
        held.close()
    wait_until(lambda: world.upstreams()["c"]["in_flight"] == 0, timeout=30)


# --- start-up refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('[{"name": "a", "base_url": ', "LLM_UPSTREAMS: not valid JSON"),
        ('[{"name": "gpu-a", "models": ["m"]}]', "entry 1 ('gpu-a'): base_url: missing"),
        (
            '[{"name": "h", "base_url": "http://127.0.0.1:9/v1", "api_key": "${SG_NO_SUCH_KEY}",'
            ' "models": ["m"]}]',
            "entry 1 ('h'): api_key: ${SG_NO_SUCH_KEY} names an environment variable",
        ),
    ],
    ids=["bad-json", "missing-base-url", "unknown-env"],
)
def test_gunicorn_refuses_to_start_with_a_bad_llm_upstreams(
    value: str, message: str, redis_server: Any, tmp_path: Path
) -> None:
    env = live_env(redis_server.url, f"sqlite:///{tmp_path / 'x.db'}", "http://127.0.0.1:9/v1")
    env.pop("LLM_MODELS")
    assert message in refused_start({**env, "LLM_UPSTREAMS": value}, tmp_path)


def test_gunicorn_refuses_to_start_when_an_allow_list_names_a_model_no_upstream_serves(
    redis_server: Any, tmp_path: Path
) -> None:
    from api import create_app
    from auth.models import Tenant
    from core.store import db
    from tests.support.config import app_config
    from tests.support.live import close_app

    db_url = f"sqlite:///{tmp_path / 'x.db'}"
    app = create_app(app_config(redis_server.url, db_url, "http://127.0.0.1:9/v1"))
    try:
        with app.app_context():
            db.create_all()
            db.session.add(Tenant(slug="acme", name="Acme", allowed_models=["m", "gpt-x"]))
            db.session.commit()
    finally:
        close_app(app)
    env = live_env(redis_server.url, db_url, "http://127.0.0.1:9/v1")
    env.pop("LLM_MODELS")
    value = upstreams_json({"name": "a", "base_url": "http://127.0.0.1:9/v1", "models": ["m"]})
    log = refused_start({**env, "LLM_UPSTREAMS": value}, tmp_path)
    assert "tenant 'acme' allows model 'gpt-x', which no upstream serves" in log
