"""The foundation: start-up config, error envelope, probes, request ids, the config table."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request

from api.config import VARIABLES, ConfigError, markdown_table
from tests.support.config import ROOT, app_config
from tests.support.processes import free_port

ENVELOPE_KEYS = {"code", "status", "message"}


# --- start-up ---------------------------------------------------------------------------------


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No Streamgate variable in the environment except a throwaway database."""
    for var in VARIABLES:
        monkeypatch.delenv(var.name, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'startup.db'}")
    return monkeypatch


def test_app_refuses_to_start_without_jwt_secret_key(clean_env: pytest.MonkeyPatch) -> None:
    from api import create_app

    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        create_app()


def test_app_refuses_a_short_jwt_secret_key(clean_env: pytest.MonkeyPatch) -> None:
    from api import create_app

    clean_env.setenv("JWT_SECRET_KEY", "too-short")
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        create_app()


@pytest.mark.parametrize("sentinels", ["sentinel-1", "h:0", "h:70000", ":26379", "h:port"])
def test_app_refuses_a_sentinel_that_is_not_host_port(
    clean_env: pytest.MonkeyPatch, sentinels: str
) -> None:
    from api import create_app

    clean_env.setenv("JWT_SECRET_KEY", "x" * 40)
    clean_env.setenv("REDIS_SENTINELS", f"127.0.0.1:26379,{sentinels}")
    with pytest.raises(ConfigError, match="REDIS_SENTINELS: .* is not host:port"):
        create_app()


def test_app_starts_from_the_environment_alone(clean_env: pytest.MonkeyPatch) -> None:
    from api import create_app

    clean_env.setenv("JWT_SECRET_KEY", "s" * 40)
    application = create_app()  # connects to nothing: no Redis, model server or database runs
    assert application.config["JWT_SECRET_KEY"] == "s" * 40
    assert not application.config["TESTING"]
    application.extensions["streamgate.redis"].close()


# --- the error envelope -----------------------------------------------------------------------


def assert_envelope(response: Any, code: int, status: str) -> dict[str, Any]:
    assert response.status_code == code
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == ENVELOPE_KEYS, body
    assert body["code"] == code
    assert body["status"] == status
    assert isinstance(body["message"], str) and body["message"]
    return dict(body)


def test_404_uses_the_envelope(client: Any) -> None:
    assert_envelope(client.get("/no/such/page"), 404, "Not Found")


def test_405_uses_the_envelope(client: Any) -> None:
    response = client.post("/healthz")
    assert_envelope(response, 405, "Method Not Allowed")
    assert "GET" in response.headers["Allow"]


def test_413_uses_the_envelope(app: Flask, client: Any) -> None:
    @app.post("/_test/echo")
    def echo() -> tuple[dict[str, int], int]:
        return {"bytes": len(request.get_data())}, 200

    limit = app.config["MAX_BODY_BYTES"]
    assert client.post("/_test/echo", data=b"x" * limit).get_json() == {"bytes": limit}
    response = client.post("/_test/echo", data=b"x" * (limit + 1))
    assert_envelope(response, 413, "Request Entity Too Large")


def test_500_uses_the_envelope_and_hides_the_exception(app: Flask, client: Any) -> None:
    @app.get("/_test/boom")
    def boom() -> str:
        raise RuntimeError("secret internal detail")

    app.config["PROPAGATE_EXCEPTIONS"] = False  # behave as in production, not as a test app
    response = client.get("/_test/boom")
    body = assert_envelope(response, 500, "Internal Server Error")
    assert "secret internal detail" not in body["message"]


# --- probes -----------------------------------------------------------------------------------


def test_healthz(client: Any) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_ok_with_real_redis_and_the_fake_upstream(client: Any) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["checks"] == {"database": "ok", "redis": "ok", "llm": "ok"}


def test_readyz_names_the_model_server_when_it_is_down(app: Flask, client: Any) -> None:
    app.config["LLM_BASE_URL"] = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["down"] == ["llm"]
    assert body["checks"]["database"] == body["checks"]["redis"] == "ok"


def test_readyz_names_redis_when_it_is_down(db_url: str, fake_upstream: Any) -> None:
    from api import create_app

    closed = f"redis://127.0.0.1:{free_port()}/0"
    application = create_app(app_config(closed, db_url, fake_upstream.base_url))
    try:
        response = application.test_client().get("/readyz")
    finally:
        application.extensions["streamgate.redis"].close()
    assert response.status_code == 503
    body = response.get_json()
    assert body["down"] == ["redis"]
    assert body["checks"]["llm"] == "ok"


# --- request ids ------------------------------------------------------------------------------


def test_a_valid_request_id_is_echoed(client: Any) -> None:
    response = client.get("/healthz", headers={"X-Request-Id": "req-42.abc_DEF"})
    assert response.headers["X-Request-Id"] == "req-42.abc_DEF"


def test_a_missing_request_id_is_generated(client: Any) -> None:
    first = client.get("/healthz").headers["X-Request-Id"]
    second = client.get("/no/such/page").headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second


@pytest.mark.parametrize(
    "supplied",
    ["abc\r\nSet-Cookie: evil=1", "abc\nx", "abc\rx", "a" * 65, "spaces are not allowed", "é"],
)
def test_an_unsafe_request_id_is_replaced(client: Any, supplied: str) -> None:
    # Set in the WSGI environ directly: a server may pass on what a client library won't send.
    response = client.get("/healthz", environ_overrides={"HTTP_X_REQUEST_ID": supplied})
    echoed = response.headers["X-Request-Id"]
    assert echoed != supplied
    assert re.fullmatch(r"[0-9a-f]{32}", echoed)
    assert "Set-Cookie" not in response.headers


# --- documentation ----------------------------------------------------------------------------


def test_readme_config_table_is_generated_from_api_config() -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(
        r"<!-- section:config -->(.*?)<!-- /section:config -->", readme, flags=re.DOTALL
    )
    assert match, "README.md lost its config section markers"
    table = "\n".join(line for line in match.group(1).splitlines() if line.startswith("|"))
    assert table == markdown_table(), (
        "README's configuration table is stale: paste the output of "
        "`flask --app api:create_app config-table` between the section:config markers"
    )
