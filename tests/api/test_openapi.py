"""The committed contract: openapi.yaml is what the code generates, covers every route, and its
security, error and event schemas describe what the server really does."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml

from tests.support.accounts import member_channel
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
SPEC_PATH = ROOT / "openapi.yaml"
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}
_RULE_ARG = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


Member = tuple[str, dict[str, str]]  # a channel and the headers that may read it
member = pytest.fixture(member_channel, name="member")  # a member's own channel and headers


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))


def validator(spec: dict[str, Any], name: str) -> Any:
    """A JSON Schema validator for ``#/components/schemas/<name>`` (OpenAPI 3.1 = 2020-12)."""
    return jsonschema_rs.validator_for(
        {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
    )


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    ]


# --- drift ---------------------------------------------------------------------------------------


def test_committed_openapi_yaml_is_what_the_code_generates() -> None:
    from scripts.gen_openapi import generate

    assert SPEC_PATH.read_text(encoding="utf-8") == generate(), "run `make openapi` and commit"


def test_generation_is_deterministic() -> None:
    from scripts.gen_openapi import generate

    assert generate() == generate()


def test_served_spec_is_the_committed_one(client: Any) -> None:
    response = client.get("/openapi.yaml")
    assert response.status_code == 200
    assert response.mimetype == "text/yaml"  # shown by a browser, not downloaded
    assert response.headers["Content-Disposition"].startswith("inline")
    assert response.get_data(as_text=True) == SPEC_PATH.read_text(encoding="utf-8")


def test_every_route_is_in_the_spec_and_every_spec_path_is_a_route(
    app: Any, spec: dict[str, Any]
) -> None:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue  # files: the playground's and the reference page's assets
        path = _RULE_ARG.sub(r"{\1}", rule.rule)
        routes |= {(path, m.lower()) for m in rule.methods or () if m.lower() in HTTP_METHODS}
    documented = {(path, method) for path, method, _ in operations(spec)}
    assert routes - documented == set(), "routes missing from openapi.yaml"
    assert documented - routes == set(), "openapi.yaml documents routes that do not exist"


def test_spec_is_a_valid_openapi_3_1_document(spec: dict[str, Any]) -> None:
    from openapi_spec_validator import validate

    validate(spec)  # raises, naming the offending part


def test_spec_is_openapi_3_1_with_unique_operation_ids(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    ids = [op["operationId"] for _, _, op in operations(spec)]
    assert len(ids) == len(set(ids))
    for _path, _method, op in operations(spec):
        assert op.get("summary"), f"{op['operationId']} has no summary (one-line docstring)"
        assert op["responses"], op["operationId"]


# --- what the spec promises about auth, errors and limits ----------------------------------------


def test_security_schemes_cover_bearer_cookie_csrf_and_ticket(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert (schemes["cookieAuth"]["in"], schemes["cookieAuth"]["name"]) == ("cookie", "sg_access")
    assert (schemes["csrfToken"]["in"], schemes["csrfToken"]["name"]) == ("header", "X-CSRF-TOKEN")
    assert (schemes["ticketAuth"]["in"], schemes["ticketAuth"]["name"]) == ("query", "ticket")
    events = spec["paths"]["/v1/events"]["get"]
    assert {"ticketAuth": []} in events["security"]
    create = spec["paths"]["/v1/streams"]["post"]
    assert {"cookieAuth": [], "csrfToken": []} in create["security"], "cookie POSTs need CSRF"


def _fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "str_" + "a" * 20, path)


def test_every_protected_operation_answers_401_without_a_token(
    client: Any, spec: dict[str, Any]
) -> None:
    """Every route has a 401: what the spec calls protected refuses an anonymous caller."""
    checked = 0
    for path, method, op in operations(spec):
        if not op["security"] or {} in op["security"]:
            continue
        url = _fill(path)
        if path == "/v1/events":
            url += "?channel=streams/str_" + "a" * 20
        response = client.open(url, method=method.upper(), json={} if method != "get" else None)
        assert response.status_code == 401, (method, path, response.get_json())
        assert "401" in op["responses"], (method, path)
        assert response.headers.get("WWW-Authenticate", "").startswith("Bearer"), (method, path)
        checked += 1
    assert checked >= 10


def test_error_bodies_match_the_documented_shapes(
    client: Any, spec: dict[str, Any], make_user: Any, auth_headers: Any
) -> None:
    envelope, openai = validator(spec, "Error"), validator(spec, "OpenAIError")
    headers = auth_headers(make_user())
    cases = [
        (client.get("/v1/auth/me"), envelope),
        (client.get("/v1/streams/str_" + "b" * 20, headers=headers), envelope),
        (client.post("/v1/streams", json={"model": 3}, headers=headers), envelope),
        (client.post("/v1/tokens", json={}, headers=headers), envelope),
        (client.get("/v1/models"), openai),
        (client.post("/v1/chat/completions", json={"messages": []}, headers=headers), openai),
        (
            client.post(
                "/v1/chat/completions",
                data="{",
                headers={**headers, "Content-Type": "application/json"},
            ),
            openai,
        ),
    ]
    for response, schema in cases:
        assert response.status_code >= 400
        body = response.get_json()
        assert schema.is_valid(body), body
        assert str(response.status_code) in _documented_statuses(
            spec, response.request.path, response.request.method
        ), response.request.path


def _documented_statuses(spec: dict[str, Any], path: str, method: str) -> set[str]:
    for template, item in spec["paths"].items():
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path):
            op = item.get(method.lower())
            if op:
                return set(op["responses"])
    return set()


def test_429_documents_retry_after_and_ratelimit_headers(spec: dict[str, Any]) -> None:
    response = spec["components"]["responses"]["TOO_MANY_REQUESTS"]
    assert spec["components"]["headers"]["Retry-After"]["required"] is True
    assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(response["headers"])
    for path in ("/v1/streams", "/v1/chat/completions"):
        assert "429" in spec["paths"][path]["post"]["responses"]


# --- the event streams carry what the spec says --------------------------------------------------


def test_sse_endpoints_document_every_event_and_the_chunk(spec: dict[str, Any]) -> None:
    events = spec["paths"]["/v1/events"]["get"]
    content = events["responses"]["200"]["content"]["text/event-stream"]
    assert set(content["x-sse-events"]) == {
        "stream.started",
        "token",
        "tool_call",
        "reasoning",
        "stream.completed",
        "stream.failed",
        "stream.cancelled",
        "stream.revoked",
        "ping",
    }
    names = {p["name"]: p["in"] for p in events["parameters"]}
    assert names == {"channel": "query", "last_event_id": "query", "Last-Event-ID": "header"}
    chat = spec["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert chat["text/event-stream"]["x-sse-data"] == {
        "$ref": "#/components/schemas/ChatCompletionChunk"
    }
    assert "application/json" in chat


@pytest.mark.usefixtures("app_services")
def test_channel_events_match_their_schemas(
    app: Any, client: Any, spec: dict[str, Any], member: Member
) -> None:
    from api.schemas.events import STREAM_EVENTS
    from core.store import get_redis
    from streaming import control
    from streaming.log import event_log

    user_channel, headers = member
    user_id = user_channel.removeprefix("users/")
    log = event_log(app)

    def run(content: str, stop: str | None = None) -> list[tuple[str, str, str]]:
        body = {"model": "fake-model", "messages": [{"role": "user", "content": content}]}
        accepted = client.post("/v1/streams", json=body, headers=headers)
        assert accepted.status_code == 202, accepted.get_json()
        assert validator(spec, "StreamAccepted").is_valid(accepted.get_json())
        channel, stream_id = accepted.get_json()["channel"], accepted.get_json()["id"]
        if stop:
            wait_until(lambda: any(e == "token" for _, e, _ in log.replay(channel, None)))
        if stop == "cancel":
            assert client.delete("/v1/streams/" + stream_id, headers=headers).status_code == 202
        elif stop == "revoke":  # what POST /v1/admin/streams/<id>/revoke sends on the bus
            control.send(
                get_redis(),
                control.ControlMessage(
                    control.REVOKE_STREAM, stream_id=stream_id, by=user_id, reason="spec check"
                ),
                60,
            )
        return wait_until(
            lambda: (
                (rows := log.replay(channel, None))
                and rows[-1][1].startswith("stream.")
                and rows[-1][1] != "stream.started"
                and rows
            )
        )

    seen = set()
    for content, stop in (
        ("hi [[fake tokens=5]]", None),
        ("hi [[fake reasoning=3 tool_calls=2]]", None),
        ("hi [[fake error_after=2]]", None),
        ("hi [[fake infinite=1 delay_ms=20]]", "cancel"),
        ("hi [[fake infinite=1 delay_ms=20]]", "revoke"),
    ):
        for _id, event, data in run(content, stop):
            payload = json.loads(data)
            schema = spec["paths"]["/v1/events"]["get"]["responses"]["200"]["content"][
                "text/event-stream"
            ]["x-sse-events"][event]["$ref"].rsplit("/", 1)[1]
            errors = [e.message for e in validator(spec, schema).iter_errors(payload)]
            assert not errors, (event, payload, errors)
            assert payload["type"] == event
            seen.add(event)
    assert seen == set(STREAM_EVENTS) - {"ping"}  # ping: the next test
    lifecycle = log.replay(user_channel, None)
    assert lifecycle
    for _id, _event, data in lifecycle:
        assert validator(spec, "UserStreamEvent").is_valid(json.loads(data)), data
        assert validator(spec, "HubEvent").is_valid(json.loads(data)), data


@pytest.mark.usefixtures("app_services")
def test_ping_matches_its_schema(
    app: Any, client: Any, spec: dict[str, Any], member: Member
) -> None:
    channel, headers = member
    url = "/v1/events?channel=" + channel
    app.config["SSE_HEARTBEAT_S"] = 0.1  # an idle channel pings at once
    response = client.get(url, headers=headers, buffered=False)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    received = ""
    try:
        for chunk in response.response:  # bounded: the first ping ends the loop
            received += chunk.decode()
            if "event: ping" in received and received.endswith("\n\n"):
                break
    finally:
        response.close()
    frame = received[received.index("event: ping") :]
    data = json.loads(next(ln for ln in frame.splitlines() if ln.startswith("data: "))[6:])
    assert validator(spec, "PingEvent").is_valid(data), data
    assert validator(spec, "HubEvent").is_valid(data), data


def test_direct_stream_chunks_match_the_chunk_schema(
    client: Any, spec: dict[str, Any], make_user: Any, auth_headers: Any
) -> None:
    body = {
        "model": "fake-model",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi [[fake tokens=4]]"}],
    }
    response = client.post("/v1/chat/completions", json=body, headers=auth_headers(make_user()))
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    documented = spec["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["headers"]
    assert documented["X-Stream-Id"]["required"] and response.headers["X-Stream-Id"].startswith(
        "str_"
    )
    assert {"RateLimit-Limit", "RateLimit-Remaining"} <= set(response.headers.keys())
    chunk = validator(spec, "ChatCompletionChunk")
    data = [
        line[len("data: ") :]
        for line in response.get_data(as_text=True).split("\n")
        if line.startswith("data: ")
    ]
    assert data[-1] == "[DONE]"
    for item in data[:-1]:
        assert chunk.is_valid(json.loads(item)), item
    assert json.loads(data[-2])["usage"]["completion_tokens"] == 4


# --- /docs and /openapi.yaml work offline -----------------------------------------------------


def _status(client: Any, url: str) -> int:
    response = client.get(url)
    response.close()  # file responses hold the file open until closed
    return int(response.status_code)


def _local_assets(html: str) -> list[str]:
    refs = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    external = [r for r in refs if re.match(r"^(https?:)?//", r)]
    assert external == [], f"the page loads from the network: {external}"
    return [r for r in refs if r.startswith("/")]


def test_docs_page_serves_swagger_ui_from_local_files(client: Any) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "validatorUrl: null" in html  # Swagger UI would otherwise call an online validator
    assets = _local_assets(html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:
        assert _status(client, asset) == 200, asset


def test_playground_page_and_assets_are_local(client: Any) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    for asset in _local_assets(response.get_data(as_text=True)):
        assert _status(client, asset) == 200, asset
