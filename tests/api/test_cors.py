"""CORS (flask-cors): pages of ``CORS_ORIGINS`` may call the API with a bearer, never cookies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from api.config import ConfigError, load_config
from tests.support.config import TEST_SECRET

APP_ORIGIN = "https://app.example.com"


@pytest.fixture()
def app_overrides() -> dict[str, Any]:
    return {"CORS_ORIGINS": [APP_ORIGIN, "http://127.0.0.1:5173"]}


def _preflight(client: Any, path: str, origin: str, method: str = "POST") -> Any:
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/streams", "/v1/events/tickets", "/v1/events"]
)
def test_a_preflight_from_an_allowed_origin_names_methods_and_headers(
    client: Any, path: str
) -> None:
    method = "GET" if path == "/v1/events" else "POST"
    response = _preflight(client, path, APP_ORIGIN, method)
    assert response.status_code == 200  # the hub's gate does not answer a preflight with 401
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert method in response.headers["Access-Control-Allow-Methods"]
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    assert {"authorization", "content-type", "idempotency-key"} <= set(allowed.split(", "))
    assert "Access-Control-Allow-Credentials" not in response.headers  # cookies stay home
    assert "Origin" in response.headers["Vary"]


def test_a_preflight_from_another_origin_gets_no_cors_headers(client: Any) -> None:
    response = _preflight(client, "/v1/chat/completions", "https://evil.example.net")
    assert "Access-Control-Allow-Origin" not in response.headers


def test_responses_expose_the_stream_id_and_limit_headers_and_errors_are_readable(
    client: Any, make_user: Callable[..., Any], auth_headers: Callable[..., dict[str, str]]
) -> None:
    user = make_user()
    response = client.post(
        "/v1/streams",
        headers={"Origin": APP_ORIGIN, **auth_headers(user)},
        json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 202
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    exposed = {h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"X-Stream-Id", "Retry-After", "RateLimit-Limit", "RateLimit-Remaining"} <= exposed
    assert "Access-Control-Allow-Credentials" not in response.headers
    refused = client.post("/v1/streams", headers={"Origin": APP_ORIGIN}, json={})
    assert refused.status_code == 401  # the envelope reaches the page too
    assert refused.headers["Access-Control-Allow-Origin"] == APP_ORIGIN


def test_cors_origins_must_be_origins() -> None:
    env = {"JWT_SECRET_KEY": TEST_SECRET}
    assert load_config({**env, "CORS_ORIGINS": ""})["CORS_ORIGINS"] == []
    assert load_config({**env, "CORS_ORIGINS": "https://a.example, http://127.0.0.1:8080"})[
        "CORS_ORIGINS"
    ] == ["https://a.example", "http://127.0.0.1:8080"]
    for bad in ("*", "https://a.example/path", "a.example", "javascript:alert(1)"):
        with pytest.raises(ConfigError, match="CORS_ORIGINS"):
            load_config({**env, "CORS_ORIGINS": bad})
