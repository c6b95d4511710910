"""Several model servers in-process: failover before the first chunk, aliases, what operators see.

Two fake upstreams on threads (``a`` and ``b``, equal weights: a fresh app tries ``a`` first) and
an address where nothing listens. What a client notices: a request whose first-choice server
refuses it is answered by the next one, a refusal that is the request's own fault is not retried,
an alias reaches the server under that server's own model name, and the stream record says who
served it after how many attempts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from api.upstream_config import parse_upstreams
from bench.fake_upstream import FakeUpstream, expected_text
from tests.api.chat_helpers import chat_body, chunk_text, data_events, finished_record
from tests.support.processes import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.db

URL = "/v1/chat/completions"
CLOSED = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    a, b = FakeUpstream(), FakeUpstream()
    a.start()
    b.start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture()
def fakes(pair: tuple[FakeUpstream, FakeUpstream]) -> tuple[FakeUpstream, FakeUpstream]:
    for fake in pair:
        fake.reset()
    return pair


def entries(a: FakeUpstream, b: FakeUpstream) -> list[dict[str, Any]]:
    return parse_upstreams(
        json.dumps(
            [
                {"name": "a", "base_url": a.base_url, "models": ["fake-model"]},
                {
                    "name": "b",
                    "base_url": b.base_url,
                    "api_key": "sk-b-secret",
                    "max_concurrent": 2,
                    "models": {"fake-model": "fake-model", "alias": "b-own-name"},
                },
                {"name": "nowhere", "base_url": CLOSED, "models": ["lonely", "fake-model"]},
            ]
        ),
        {},
    )


@pytest.fixture()
def app_overrides(fakes: tuple[FakeUpstream, FakeUpstream]) -> dict[str, Any]:
    return {
        "LLM_UPSTREAMS": entries(*fakes),
        "LLM_MODELS": ["fake-model", "alias"],
        "LLM_COOLDOWN_FAILURES": 2,
    }


@pytest.fixture()
def member(app: Any, make_tenant: Any, make_user: Any, auth_headers: Any) -> dict[str, str]:
    tenant = make_tenant(models=["fake-model", "alias", "lonely"])
    return auth_headers(make_user(tenant))  # type: ignore[no-any-return]


@pytest.fixture()
def operator(app: Any, make_tenant: Any, make_user: Any, auth_headers: Any) -> dict[str, str]:
    return auth_headers(make_user(make_tenant(), role="operator"))  # type: ignore[no-any-return]


def stream(client: Any, headers: dict[str, str], directive: str, **extra: Any) -> Any:
    return client.post(URL, headers=headers, json=chat_body(directive, stream=True, **extra))


def test_a_first_choice_that_answers_503_is_replaced_by_the_next_before_any_token(
    client: Any, member: dict[str, str], fakes: tuple[FakeUpstream, FakeUpstream], app: Any
) -> None:
    a, b = fakes
    a.reset(status=503)
    response = stream(client, member, "tokens=12")
    assert response.status_code == 200
    datas = data_events(response.get_data(as_text=True))
    assert datas[-1] == "[DONE]" and chunk_text(datas) == expected_text(12)
    assert (a.snapshot()["requests"], b.snapshot()["requests"]) == (1, 1)
    record = finished_record(response.headers["X-Stream-Id"])
    assert (record.status, record.upstream, record.upstream_attempts) == ("completed", "b", 2)


def test_an_operator_sees_which_server_served_a_stream(
    client: Any, member: dict[str, str], operator: dict[str, str], fakes: Any
) -> None:
    fakes[0].reset(status=502)
    stream_id = stream(client, member, "tokens=2").headers["X-Stream-Id"]
    finished_record(stream_id)
    detail = client.get(f"/v1/admin/streams/{stream_id}", headers=operator).get_json()
    assert (detail["upstream"], detail["upstream_attempts"]) == ("b", 2)


def test_a_refused_connection_fails_over_in_channel_mode_too(
    client: Any, member: dict[str, str], fakes: tuple[FakeUpstream, FakeUpstream], app: Any
) -> None:
    a, b = fakes
    a.reset(status=500)
    body = chat_body("tokens=5")
    # A fresh app's first request tries a (500), then b.
    response = client.post("/v1/streams", headers=member, json=body)
    assert response.status_code == 202, response.get_data(as_text=True)
    record = finished_record(response.get_json()["id"])
    assert record.status == "completed", (record.error_code, record.error_message)
    assert record.text == expected_text(5)
    assert (record.upstream, record.upstream_attempts) == ("b", 2)
    assert b.snapshot()["requests"] == 1


def test_a_refusal_that_is_the_requests_fault_is_not_retried_elsewhere(
    client: Any, member: dict[str, str], fakes: tuple[FakeUpstream, FakeUpstream]
) -> None:
    a, b = fakes
    response = stream(client, member, "status=400 error_message=prompt_too_long")
    assert response.status_code == 400
    assert response.get_json()["error"]["message"] == "prompt too long"
    assert a.snapshot()["requests"] == 1 and b.snapshot()["requests"] == 0


def test_when_every_server_fails_the_client_gets_the_last_failure_and_no_stream(
    client: Any, member: dict[str, str], fakes: tuple[FakeUpstream, FakeUpstream]
) -> None:
    a, b = fakes
    a.reset(status=503)
    b.reset(status=503)
    response = stream(client, member, "")
    assert response.status_code == 502, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == "upstream_unavailable"  # "nowhere", tried last
    assert a.snapshot()["requests"] == 1 and b.snapshot()["requests"] == 1
    record = finished_record(response.headers["X-Stream-Id"])
    assert (record.status, record.upstream_attempts) == ("failed", 3)


def test_an_alias_reaches_its_server_under_the_servers_own_name(
    client: Any, member: dict[str, str], fakes: tuple[FakeUpstream, FakeUpstream]
) -> None:
    a, b = fakes
    response = stream(client, member, "tokens=3", model="alias")
    datas = data_events(response.get_data(as_text=True))
    assert b.stats.last_body["model"] == "b-own-name"
    assert {json.loads(d)["model"] for d in datas[:-1]} == {"alias"}  # the client's own name
    assert a.snapshot()["requests"] == 0


def test_models_lists_only_what_some_server_serves(
    client: Any, app: Any, make_tenant: Any, make_user: Any, auth_headers: Any
) -> None:
    tenant = make_tenant(models=["alias", "retired-model", "fake-model"])
    response = client.get("/v1/models", headers=auth_headers(make_user(tenant)))
    assert [m["id"] for m in response.get_json()["data"]] == ["alias", "fake-model"]


def test_an_allow_list_naming_a_model_no_server_serves_is_refused(
    client: Any, operator: dict[str, str], make_tenant: Any
) -> None:
    tenant = make_tenant()
    response = client.patch(
        f"/v1/admin/tenants/{tenant.id}",
        headers=operator,
        json={"allowed_models": ["fake-model", "mystery"]},
    )
    assert response.status_code == 422
    body = response.get_json()
    assert body["error_code"] == "model_not_served"
    assert body["errors"]["allowed_models"] == ["'mystery' is served by no upstream."]
    created = client.post(
        "/v1/admin/tenants",
        headers=operator,
        json={"slug": "newco", "name": "NewCo", "allowed_models": ["mystery"]},
    )
    assert created.status_code == 422


def test_start_up_refuses_a_tenant_allow_list_naming_a_model_no_server_serves(
    app: Any, make_tenant: Any
) -> None:
    from api.config import ConfigError
    from api.services.generations import check_served_models

    check_served_models(app)  # every allow-list so far names served models
    make_tenant("legacy-co", models=["fake-model", "gpt-3"])
    with pytest.raises(ConfigError, match="tenant 'legacy-co' allows model 'gpt-3'"):
        check_served_models(app)


def test_operators_see_each_server_its_health_and_never_its_key(
    client: Any,
    member: dict[str, str],
    operator: dict[str, str],
    fakes: tuple[FakeUpstream, FakeUpstream],
) -> None:
    a, _ = fakes
    a.reset(status=503)
    # Equal weights: the first choices are a, b, nowhere; nowhere's refusal then goes to a (its
    # second failure in a row: LLM_COOLDOWN_FAILURES=2), and b answers every request.
    for _ in range(3):
        assert stream(client, member, "tokens=1").status_code == 200

    def settled() -> Any:
        # The response ends a moment before its run gives back the lease: wait for that.
        response = client.get("/v1/admin/upstreams", headers=operator)
        assert response.status_code == 200
        assert "sk-b-secret" not in response.get_data(as_text=True)
        rows = {row["name"]: row for row in response.get_json()}
        return rows["b"]["in_flight"] == 0 and rows

    rows = wait_until(settled)
    assert rows["a"]["state"] == "cooling_down" and rows["a"]["consecutive_failures"] == 2
    assert rows["a"]["last_failure_kind"] == "status_5xx" and rows["a"]["cooling_until"]
    assert rows["b"]["state"] == "healthy"
    assert rows["b"]["models"] == {"fake-model": "fake-model", "alias": "b-own-name"}
    before = a.snapshot()["requests"]
    assert stream(client, member, "tokens=1").status_code == 200
    assert a.snapshot()["requests"] == before  # out of rotation: not even tried


def test_a_model_whose_servers_are_all_full_is_a_503_with_retry_after(
    client: Any, app: Any, member: dict[str, str], fakes: tuple[FakeUpstream, FakeUpstream]
) -> None:
    from core.store import get_redis
    from streaming import upstreams

    _, b = fakes
    rt = upstreams.router(app)
    with app.app_context():
        redis = get_redis()
        # Two requests elsewhere (another node, say) hold b's two places; b alone serves "alias".
        held = [upstreams.take(redis, rt, [rt.upstreams["b"]], f"str_other{i}") for i in (1, 2)]
        response = stream(client, member, "tokens=1", model="alias")
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.get_json()["error"]["code"] == "upstreams_busy"
        assert b.snapshot()["requests"] == 0
        for i, slot in enumerate(held, 1):
            upstreams.release(redis, slot, f"str_other{i}")
    assert stream(client, member, "tokens=1", model="alias").status_code == 200


def test_readyz_names_each_public_model_without_a_server(client: Any) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["models_down"] == ["lonely"]
    assert body["models"]["fake-model"]["ready"] is True
    assert body["models"]["fake-model"]["upstreams"]["nowhere"].startswith("down")
    assert body["checks"]["llm"] == "down: no model server for lonely"


def test_per_upstream_metrics_count_requests_failures_and_failovers(
    client: Any, member: dict[str, str], fakes: tuple[FakeUpstream, FakeUpstream], app: Any
) -> None:
    a, _ = fakes
    a.reset(status=429)
    assert stream(client, member, "tokens=2").status_code == 200
    registry = app.extensions["streamgate.metrics"].registry
    value: Callable[..., float | None] = registry.get_sample_value
    assert value("streamgate_upstream_requests_total", {"upstream": "a"}) == 1
    assert value("streamgate_upstream_requests_total", {"upstream": "b"}) == 1
    assert value("streamgate_upstream_failures_total", {"upstream": "a", "kind": "rate_limited"})
    assert value("streamgate_upstream_failovers_total", {"upstream": "a"}) == 1
    wait_until(lambda: value("streamgate_upstream_in_flight", {"upstream": "b"}) == 0)
    assert value("streamgate_upstream_time_to_first_token_seconds_count", {"upstream": "b"}) == 1
