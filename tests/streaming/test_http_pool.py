"""The model server's sharded connection pool (``streaming.http_pool``), against the fake
upstream (a real HTTP server): requests spread over the shards only when they overlap, every
connection is reused, a failed connect holds nothing, and a proxy set in the environment is
still used."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from bench.fake_upstream import FakeUpstream
from streaming.http_pool import ShardedTransport, environment_proxy, model_server_client
from tests.support.gevent_probe import run_patched

LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=16)
BODY = {"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture()
def transport() -> ShardedTransport:
    return ShardedTransport(limits=LIMITS, shards=4)


@pytest.fixture()
def client(transport: ShardedTransport, fake_upstream: FakeUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(transport=transport, base_url=fake_upstream.base_url, timeout=10) as c:
        yield c


def test_overlapping_requests_spread_evenly_and_every_connection_is_reused(
    client: httpx.Client, transport: ShardedTransport, fake_upstream: FakeUpstream
) -> None:
    before = fake_upstream.snapshot()["connections"]
    for _round in range(2):
        # Eight streams open at once: two on each of the four shards, eight connections.
        request = client.build_request("POST", "/chat/completions", json=BODY)
        opened = [client.send(request, stream=True) for _ in range(8)]
        assert transport.open == [2, 2, 2, 2]
        for response in opened:
            assert response.status_code == 200
            assert b"[DONE]" in response.read()
            response.close()
        assert transport.open == [0, 0, 0, 0]
    # The second round reused the first round's eight connections.
    assert fake_upstream.snapshot()["connections"] - before == 8


def test_requests_one_after_another_share_one_connection(
    client: httpx.Client, fake_upstream: FakeUpstream
) -> None:
    before = fake_upstream.snapshot()["connections"]
    for _ in range(5):
        with client.stream("POST", "/chat/completions", json=BODY) as response:
            assert b"[DONE]" in response.read()
    assert fake_upstream.snapshot()["connections"] - before == 1


def test_a_refused_connection_holds_no_place_in_its_shard() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = ShardedTransport(limits=LIMITS, shards=2)
    with httpx.Client(transport=transport, timeout=5) as c:
        for _ in range(3):
            with pytest.raises(httpx.ConnectError):
                c.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=BODY)
    assert transport.open == [0, 0]


def test_a_proxy_named_in_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                seen.append(conn.recv(65536).split(b"\r\n", 1)[0])
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        model_server = "http://models.internal:8000/v1"
        timeout = httpx.Timeout(5.0)
        with model_server_client(model_server, timeout, LIMITS, True) as c:
            response = c.post(model_server + "/chat/completions", json=BODY)
        thread.join(5)
    assert response.status_code == 502  # the proxy's answer
    # An HTTP proxy is sent the absolute URL of the model server.
    assert seen == [b"POST http://models.internal:8000/v1/chat/completions HTTP/1.1"]


def test_no_proxy_keeps_a_model_server_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "models.internal,localhost")
    for name in ("http_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert environment_proxy("http://models.internal:8000/v1") is None
    assert environment_proxy("http://elsewhere:8000/v1") == "http://127.0.0.1:9"


IDLE_PROBE = """
import httpx

from streaming.http_pool import model_server_client

base = sys.argv[1]
limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
clients = {
    "ours": model_server_client(base, httpx.Timeout(10), limits, True),
    "httpx": httpx.Client(timeout=10, limits=limits),
}
found = {}
for name, client in clients.items():
    client.get(base + "/models")  # one connection, idle from now on
    polls[0] = 0
    statuses = {client.get(base + "/models").status_code for _ in range(20)}
    found[name] = {"polls": polls[0], "statuses": sorted(statuses)}
print(json.dumps(found))
"""


def test_reusing_an_idle_connection_never_polls_cooperatively(
    fake_upstream: FakeUpstream,
) -> None:
    """httpcore polls each idle connection's socket (did the server hang up?) when a request
    starts and when a response closes; under gevent that poll yields to the event loop each
    time. The model server's pools ask the operating system instead (``core.io``)."""
    found = run_patched(IDLE_PROBE, fake_upstream.base_url)
    assert found["ours"] == {"polls": 0, "statuses": [200]}
    assert found["httpx"]["statuses"] == [200]
    assert found["httpx"]["polls"] >= 20  # the control: at least one per request
