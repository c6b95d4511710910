"""Limits on real gunicorn gevent workers: bursts across two app processes, a client that goes
away, a worker killed mid-stream, and the openai SDK reading a 429."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from tests.api.limits_helpers import SLOW, body, estimate
from tests.support.live import LiveCluster, LiveServer
from tests.support.processes import process_talking_to, worker_pids
from tests.support.tokens import user_headers
from tests.support.waiting import fresh_minute, wait_until

pytestmark = pytest.mark.live

Headers = dict[str, str]


@pytest.fixture()
def two_nodes(live: LiveServer, live_cluster: LiveCluster) -> list[str]:
    """Two gunicorn masters (two workers each) sharing one Redis and one database."""
    if len(live_cluster.nodes) < 2:
        live_cluster.add_node()  # kept with the live server for the tests that follow
    return [live.url, live_cluster.nodes[1][0]]


@pytest.fixture()
def person(live: LiveServer, make_user: Callable[..., Any]) -> Callable[..., tuple[str, Headers]]:
    """A user (id, auth headers) with limit overrides, created through ``live.app``."""

    def make(tenant: Any = None, role: str = "member", **limits: int) -> tuple[str, Headers]:
        user = make_user(tenant, role=role, limits=limits or None)
        return user.id, user_headers(user)

    return make


def usage(url: str, headers: Headers) -> dict[str, Any]:
    response = httpx.get(url + "/v1/usage", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def settled(url: str, headers: Headers) -> dict[str, Any]:
    """Usage once nothing holds a lease or a reservation (waits for it)."""
    last: dict[str, Any] = {}

    def idle() -> dict[str, Any] | None:
        last.update(usage(url, headers))
        quiet = not last["open_streams"] and last["today"]["reserved_tokens"] == 0
        return dict(last) if quiet and last["limits"]["tenant"]["concurrent"]["used"] == 0 else None

    try:
        return wait_until(idle, timeout=30, interval=0.1)
    except pytest.fail.Exception:
        pytest.fail(f"leases or reservations still held: {last}")


def burst(
    urls: list[str], requests: list[tuple[str, Headers, dict[str, Any]]]
) -> list[httpx.Response]:
    """Send every request at once from its own thread, alternating between the nodes."""
    gate = threading.Barrier(len(requests))

    def send(i: int) -> httpx.Response:
        path, headers, payload = requests[i]
        with httpx.Client(base_url=urls[i % len(urls)], timeout=60) as client:
            client.get("/healthz")  # connect first, so the burst is the requests themselves
            gate.wait(timeout=60)
            return client.post(path, headers=headers, json=payload)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(send, range(len(requests))))


def admitted_and_refused(responses: list[httpx.Response], limit: str) -> list[httpx.Response]:
    admitted = [r for r in responses if r.status_code in (200, 202)]
    refused = [r for r in responses if r.status_code == 429]
    assert len(admitted) + len(refused) == len(responses), {r.status_code for r in responses}
    assert {r.json()["errors"]["limit"] for r in refused if "errors" in r.json()} <= {limit}
    assert all("Retry-After" in r.headers and "RateLimit-Limit" in r.headers for r in refused)
    return admitted


def cancel_all(url: str, headers: Headers, admitted: list[httpx.Response]) -> None:
    for response in admitted:
        stream_id = response.json()["id"]
        assert httpx.delete(f"{url}/v1/streams/{stream_id}", headers=headers).status_code == 202


# --- bursts: exactly the limit, across two app processes ------------------------------------------


def test_burst_of_100_against_10_requests_per_minute(two_nodes: list[str], person: Any) -> None:
    _, headers = person(rpm=10, concurrent=1000)
    short = body(max_tokens=4, tokens=2)
    requests = [
        ("/v1/streams", headers, short)
        if i % 4 < 2
        else ("/v1/chat/completions", headers, {**short, "stream": False})
        for i in range(100)
    ]
    admitted = admitted_and_refused(burst(two_nodes, requests), "user.rpm")
    assert len(admitted) == 10
    assert settled(two_nodes[0], headers)["today"]["requests"] == 10


def test_burst_of_100_against_10_concurrent_streams(two_nodes: list[str], person: Any) -> None:
    _, headers = person(concurrent=10, rpm=1000)
    admitted = admitted_and_refused(
        burst(two_nodes, [("/v1/streams", headers, SLOW)] * 100), "user.concurrent"
    )
    assert len(admitted) == 10
    assert len(usage(two_nodes[1], headers)["open_streams"]) == 10
    cancel_all(two_nodes[0], headers, admitted)
    assert settled(two_nodes[1], headers)["limits"]["user"]["concurrent"]["used"] == 0


def test_burst_of_100_against_10_reservations_per_minute(two_nodes: list[str], person: Any) -> None:
    _, headers = person(tpm=10 * estimate(SLOW), concurrent=1000, rpm=1000)
    fresh_minute(20)  # the whole burst in one tpm window
    admitted = admitted_and_refused(
        burst(two_nodes, [("/v1/streams", headers, SLOW)] * 100), "user.tpm"
    )
    assert len(admitted) == 10
    assert usage(two_nodes[0], headers)["today"]["reserved_tokens"] == 10 * estimate(SLOW)
    cancel_all(two_nodes[1], headers, admitted)
    settled(two_nodes[0], headers)


def test_burst_of_100_from_10_users_against_a_tenant_of_10(
    two_nodes: list[str], person: Any, make_tenant: Callable[..., Any]
) -> None:
    tenant = make_tenant(limits={"concurrent": 10})
    users = [person(tenant, concurrent=1000, rpm=1000)[1] for _ in range(10)]
    requests = [("/v1/streams", users[i % 10], SLOW) for i in range(100)]
    responses = burst(two_nodes, requests)
    admitted = admitted_and_refused(responses, "tenant.concurrent")
    assert len(admitted) == 10
    for response, (_, headers, _) in zip(responses, requests, strict=True):
        if response.status_code == 202:
            cancel_all(two_nodes[0], headers, [response])
    settled(two_nodes[1], users[0])


def test_new_limits_apply_at_once_on_every_node(
    two_nodes: list[str], person: Any, make_tenant: Callable[..., Any]
) -> None:
    tenant = make_tenant()
    _, admin = person(tenant, role="admin")
    user_id, headers = person(tenant)
    first, second = two_nodes
    running = [httpx.post(second + "/v1/streams", headers=headers, json=SLOW) for _ in range(4)]
    assert [r.status_code for r in running] == [202] * 4  # the second node's workers cache limits
    changed = httpx.put(
        f"{first}/v1/admin/users/{user_id}/limits",
        headers=admin,
        json={"concurrent": 4, "reason": "runaway app"},
    )
    assert changed.status_code == 200 and changed.json()["effective"]["concurrent"] == 4
    for _ in range(4):
        refused = httpx.post(second + "/v1/streams", headers=headers, json=body())
        assert refused.status_code == 429
        assert refused.json()["errors"]["limit"] == "user.concurrent"
    cancel_all(second, headers, running)
    settled(first, headers)


# --- nothing leaks -------------------------------------------------------------------------


def test_client_disconnect_releases_lease_and_reconciles(
    live: LiveServer, person: Any, fake_upstream: Any
) -> None:
    _, headers = person(concurrent=1)
    seen = 0
    with httpx.Client(base_url=live.url, timeout=30) as client:
        request = {**SLOW, "stream": True}
        with client.stream("POST", "/v1/chat/completions", headers=headers, json=request) as resp:
            assert resp.status_code == 200
            assert resp.headers["RateLimit-Limit"]
            for line in resp.iter_lines():
                seen += line.startswith("data: ")
                if seen >= 5:
                    break  # the client goes away mid-stream
    assert fake_upstream.wait_for(lambda s: s["disconnects"] >= 1, timeout=10)
    after = settled(live.url, headers)
    # charged what it ran: the prompt estimate and the tokens that got through before the cancel
    assert after["today"]["completion_tokens"] >= seen - 1  # the first data frame is the role
    assert after["limits"]["user"]["tpd"]["used"] == after["today"]["total_tokens"]
    assert httpx.post(live.url + "/v1/streams", headers=headers, json=body()).status_code == 202


def worker_talking_to(master: int, port: int) -> int | None:
    """The worker holding a TCP connection to ``port`` (the one running the generation)."""
    return process_talking_to(worker_pids(master), port)


# A server of its own: workers that served earlier tests hold idle keep-alive connections to the
# fake upstream, and the worker to kill is found by its connection to it.
@pytest.mark.fresh_live_server
@pytest.mark.parametrize("live_overrides", [{"LEASE_TTL_S": "2"}], ids=["lease-2s"])
def test_worker_killed_mid_stream_lease_expires_and_reaper_settles(
    live: LiveServer, person: Any, fake_upstream: Any
) -> None:
    _, headers = person(concurrent=1, tpm=estimate(SLOW) + estimate(body()) - 1)
    started = httpx.post(live.url + "/v1/streams", headers=headers, json=SLOW)
    assert started.status_code == 202
    stream_id = started.json()["id"]
    victim = wait_until(lambda: worker_talking_to(live.proc.pid, fake_upstream.port), timeout=10)
    refused = httpx.post(live.url + "/v1/streams", headers=headers, json=body())
    assert refused.status_code == 429
    os.kill(victim, signal.SIGKILL)
    # the lease runs out on its own; the keeper of a live worker reaps the run and settles it
    after = settled(live.url, headers)
    record = wait_until(
        lambda: (
            (s := httpx.get(f"{live.url}/v1/streams/{stream_id}", headers=headers).json())[
                "finished_at"
            ]
            and s
        ),
        timeout=15,
    )
    assert record["status"] == "failed" and record["error"]["code"] == "worker_lost"
    assert after["today"]["total_tokens"] == record["usage"]["total_tokens"]
    assert httpx.post(live.url + "/v1/streams", headers=headers, json=body()).status_code == 202


# --- the openai SDK reads our 429 ----------------------------------------------------------


def test_openai_sdk_raises_rate_limit_error_with_our_message(live: LiveServer, person: Any) -> None:
    _, headers = person(rpm=1)
    client = openai.OpenAI(
        base_url=live.url + "/v1",
        max_retries=0,
        api_key=headers["Authorization"].removeprefix("Bearer "),
    )
    first = client.chat.completions.create(
        model="fake-model", messages=body()["messages"], max_tokens=4
    )
    assert first.choices[0].message.content
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model="fake-model", messages=body()["messages"], max_tokens=4, stream=True
        )
    error = caught.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert isinstance(error.body, dict)
    message = error.body["message"]
    assert message.startswith(
        "Rate limit reached for requests per minute (RPM) for this user: limit 1. Try again in "
    )
    assert message in str(error)
    assert 1 <= int(error.response.headers["Retry-After"]) <= 60
    assert error.response.headers["RateLimit-Limit"] == "1"
    assert error.response.headers["RateLimit-Remaining"] == "0"
