"""GET /v1/models: the models this tenant may use, in OpenAI's list shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support.accounts import tenant_member
from tests.support.tokens import read_only_app_token

pytestmark = pytest.mark.db

Headers = dict[str, str]

member_of = pytest.fixture(tenant_member, name="member_of")


@pytest.fixture()
def app_overrides() -> dict[str, Any]:
    return {"LLM_MODELS": ["default-a", "default-b"]}


def listed_models(client: Any, headers: dict[str, str]) -> list[str]:
    """The ids GET /v1/models lists for ``headers``, once the response is checked."""
    return model_ids(client.get("/v1/models", headers=headers))


def model_ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["object"] == "list"
    for model in body["data"]:
        assert (
            model["object"] == "model" and isinstance(model["created"], int) and model["owned_by"]
        )
    return [model["id"] for model in body["data"]]


def test_a_tenant_sees_its_allow_list(client: Any, member_of: Callable[..., Headers]) -> None:
    headers = member_of(models=["fake-model", "big-model"])
    assert listed_models(client, headers) == ["fake-model", "big-model"]


def test_another_tenants_models_are_not_shown(
    client: Any, member_of: Callable[..., Headers]
) -> None:
    mine = member_of(models=["mine-1"])
    theirs = member_of(models=["theirs-1", "theirs-2"])
    assert listed_models(client, mine) == ["mine-1"]
    assert listed_models(client, theirs) == ["theirs-1", "theirs-2"]


def test_a_tenant_without_an_allow_list_gets_the_deployment_defaults(
    client: Any, member_of: Callable[..., Headers]
) -> None:
    assert listed_models(client, member_of(models=[])) == ["default-a", "default-b"]


def test_every_listed_model_can_be_used_and_no_other(
    client: Any, member_of: Callable[..., Headers]
) -> None:
    headers = member_of(models=["fake-model"])
    listed = listed_models(client, headers)
    body = {"messages": [{"role": "user", "content": "hi [[fake tokens=1]]"}]}
    for model in listed:
        assert (
            client.post(
                "/v1/chat/completions", headers=headers, json={**body, "model": model}
            ).status_code
            == 200
        )
    refused = client.post(
        "/v1/chat/completions", headers=headers, json={**body, "model": "default-a"}
    )
    assert refused.status_code == 404 and refused.get_json()["error"]["code"] == "model_not_found"


def test_without_a_token_it_is_a_401_in_openai_shape(client: Any) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 401
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "authentication_error" and error["message"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_an_app_token_with_any_scope_may_list_models(
    client: Any,
    make_user: Callable[..., Any],
) -> None:
    headers = read_only_app_token(make_user())
    assert listed_models(client, headers) == ["fake-model"]


def test_the_openai_sdk_lists_models(
    client: Any, member_of: Callable[..., Headers], app: Any
) -> None:
    import httpx
    import openai

    token = member_of(models=["fake-model", "big-model"])["Authorization"].removeprefix("Bearer ")
    transport = httpx.WSGITransport(app=app)
    with httpx.Client(transport=transport, base_url="http://streamgate") as http:
        sdk = openai.OpenAI(
            base_url="http://streamgate/v1", api_key=token, http_client=http, max_retries=0
        )
        assert [m.id for m in sdk.models.list()] == ["fake-model", "big-model"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(
                base_url="http://streamgate/v1", api_key="nope", http_client=http, max_retries=0
            ).models.list()
