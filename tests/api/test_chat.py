"""POST /v1/chat/completions in-process: request validation, OpenAI's error shape, auth, records.

Every refused request must say what is wrong in ``{"error": {message, type, param, code}}`` and
leave nothing behind: no stream record, no live entry, no upstream call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from bench.fake_upstream import FakeUpstream, expected_text
from tests.api.chat_helpers import chat_body, chunk_text, data_events, finished_record, live_ids
from tests.support.accounts import tenant_member
from tests.support.tokens import read_only_app_token

pytestmark = pytest.mark.db

URL = "/v1/chat/completions"


@pytest.fixture()
def app_overrides() -> dict[str, Any]:
    return {
        "MAX_MESSAGES": 4,
        "MAX_PROMPT_CHARS": 1000,
        "MAX_TOKENS_CAP": 100,
        "MAX_BODY_BYTES": 4096,
    }


member_of = pytest.fixture(tenant_member, name="member_of")


@pytest.fixture()
def user(app: Any, make_user: Callable[..., Any]) -> Any:
    """In-process (``tests/api/conftest.py``'s ``headers`` are this user's)."""
    return make_user()


def stream_count() -> int:
    from core.store import db
    from streaming.models import StreamRecord

    return int(db.session.query(StreamRecord).count())


def assert_refused(
    response: Any, status: int, param: str | None, says: str, *, redis: Any, upstream: FakeUpstream
) -> dict[str, Any]:
    """An OpenAI-shaped refusal naming ``param``, whose message contains ``says``; nothing kept."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert says in error["message"], error["message"]
    assert (
        error["type"]
        == {
            400: "invalid_request_error",
            404: "not_found_error",
            413: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
        }[status]
    )
    assert stream_count() == 0 and live_ids(redis) == []
    assert upstream.snapshot()["requests"] == 0
    assert "X-Stream-Id" not in response.headers
    return dict(error)


# --- validation -------------------------------------------------------------------------------

BASE = chat_body()
MSG = BASE["messages"][0]

INVALID: list[tuple[str, Any, str | None, str]] = [
    ("missing model", {"messages": [MSG]}, "model", "Missing data"),
    ("model not a string", {**BASE, "model": 7}, "model", "Not a valid string"),
    ("empty model", {**BASE, "model": ""}, "model", "Length must be between 1 and 200"),
    ("missing messages", {"model": "fake-model"}, "messages", "Missing data"),
    ("empty messages", {**BASE, "messages": []}, "messages", "At least one message"),
    ("messages not a list", {**BASE, "messages": "hi"}, "messages", "Not a valid list"),
    ("message not an object", {**BASE, "messages": ["hi"]}, "messages[0]", "Must be an object"),
    (
        "unknown role",
        {**BASE, "messages": [MSG, {"role": "robot", "content": "x"}]},
        "messages[1].role",
        "Must be one of: system, developer, user, assistant, tool",
    ),
    (
        "a tool message without tool_call_id",
        {**BASE, "messages": [MSG, {"role": "tool", "content": "42"}]},
        "messages[1].tool_call_id",
        "needs the tool_call_id",
    ),
    (
        "an assistant message with neither content nor tool_calls",
        {**BASE, "messages": [MSG, {"role": "assistant", "content": None}]},
        "messages[1].content",
        "needs content or tool_calls",
    ),
    (
        "tool_calls on a user message",
        {**BASE, "messages": [{**MSG, "tool_calls": []}]},
        "messages[0].tool_calls",
        "Only an assistant message",
    ),
    (
        "a tool call without its function",
        {
            **BASE,
            "messages": [
                MSG,
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function"}]},
            ],
        },
        "messages[1].tool_calls[0].function",
        "Missing data",
    ),
    (
        "content a number",
        {**BASE, "messages": [{"role": "user", "content": 7}]},
        "messages[0].content",
        "string, an array of content parts or null",
    ),
    (
        "a content part without a type",
        {**BASE, "messages": [{"role": "user", "content": [{"text": "x"}]}]},
        "messages[0].content[0]",
        "string 'type'",
    ),
    (
        "an image part without its url",
        {
            **BASE,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
        },
        "messages[0].content[0]",
        "needs 'image_url.url'",
    ),
    (
        "a text part whose text is not a string",
        {**BASE, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
        "messages[0].content[0]",
        "'text' must be a string",
    ),
    ("n a string", {**BASE, "n": "2"}, "n", "Not a valid integer"),
    ("n zero", {**BASE, "n": 0}, "n", "greater than or equal to 1"),
    ("tools not a list", {**BASE, "tools": {"type": "function"}}, "tools", "Not a valid list"),
    (
        "missing content",
        {**BASE, "messages": [{"role": "user"}]},
        "messages[0].content",
        "Missing data",
    ),
    ("max_tokens a string", {**BASE, "max_tokens": "5"}, "max_tokens", "Not a valid integer"),
    ("max_tokens a float", {**BASE, "max_tokens": 5.5}, "max_tokens", "Not a valid integer"),
    ("max_tokens zero", {**BASE, "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ("temperature a word", {**BASE, "temperature": "hot"}, "temperature", "Not a valid number"),
    ("temperature too high", {**BASE, "temperature": 3}, "temperature", "less than or equal to 2"),
    ("top_p above 1", {**BASE, "top_p": 1.5}, "top_p", "less than or equal to 1"),
    ("stream not a boolean", {**BASE, "stream": "please"}, "stream", "Not a valid boolean"),
    (
        "stream_options not an object",
        {**BASE, "stream_options": 1},
        "stream_options",
        "Must be an object",
    ),
    ("too many stop sequences", {**BASE, "stop": ["a", "b", "c", "d", "e"]}, "stop", "At most 4"),
    ("empty stop sequence", {**BASE, "stop": [""]}, "stop", "non-empty"),
    ("newline in user", {**BASE, "user": "a\nb"}, "user", "Control characters"),
    ("carriage return in user", {**BASE, "user": "a\rb"}, "user", "Control characters"),
    ("NUL in user", {**BASE, "user": "a\x00b"}, "user", "Control characters"),
    (
        "newline in name",
        {**BASE, "messages": [{**MSG, "name": "bob\n"}]},
        "messages[0].name",
        "Control characters",
    ),
    (
        "NUL in name",
        {**BASE, "messages": [{**MSG, "name": "b\x00b"}]},
        "messages[0].name",
        "Control characters",
    ),
    (
        "both token limits",
        {**BASE, "max_tokens": 5, "max_completion_tokens": 5},
        "max_tokens",
        "not both",
    ),
    ("a JSON array", [BASE], "body", "must be a JSON object, not an array"),
    ("a JSON string", "hello", "body", "must be a JSON object, not a string"),
    ("JSON null", None, "body", "must be a JSON object, not null"),
]


@pytest.mark.parametrize(
    ("body", "param", "says"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_invalid_requests_are_a_400_naming_the_field(
    client: Any,
    headers: dict[str, str],
    redis: Any,
    fake_upstream: FakeUpstream,
    body: Any,
    param: str | None,
    says: str,
) -> None:
    response = client.post(
        URL, headers=headers, data=json.dumps(body), content_type="application/json"
    )
    error = assert_refused(response, 400, param, says, redis=redis, upstream=fake_upstream)
    assert error["message"].startswith("Request is invalid: ")


@pytest.mark.parametrize(
    "raw", [b'{"model": "fake-model", "messages": [', b"\xff\xfe", b"{'a': 1}", b""]
)
def test_malformed_json_is_a_400(
    client: Any, headers: dict[str, str], redis: Any, fake_upstream: FakeUpstream, raw: bytes
) -> None:
    response = client.post(URL, headers=headers, data=raw, content_type="application/json")
    assert_refused(
        response,
        400,
        "body" if raw else "model",
        "Invalid JSON" if raw else "Missing data",
        redis=redis,
        upstream=fake_upstream,
    )


def test_unknown_fields_are_forwarded_to_the_model_server(
    client: Any, headers: dict[str, str], fake_upstream: FakeUpstream
) -> None:
    body = {**chat_body("tokens=3"), "logit_bias": {"1": 2}, "seed": 7, "future_option": [1]}
    body["messages"][0]["extra"] = True
    response = client.post(URL, headers=headers, json=body)
    assert response.status_code == 200
    assert response.get_json()["choices"][0]["message"]["content"] == expected_text(3)
    sent = fake_upstream.stats.last_body
    assert (sent["logit_bias"], sent["seed"], sent["future_option"]) == ({"1": 2}, 7, [1])
    assert sent["messages"] == body["messages"]


def test_content_parts_and_images_count_against_the_prompt_size(
    client: Any, headers: dict[str, str], redis: Any, fake_upstream: FakeUpstream
) -> None:
    image = "data:image/png;base64," + "A" * 990
    parts = [{"type": "text", "text": "x" * 20}, {"type": "image_url", "image_url": {"url": image}}]
    response = client.post(
        URL, headers=headers, json={**BASE, "messages": [{"role": "user", "content": parts}]}
    )
    assert_refused(
        response, 400, "messages", "at most 1000 characters", redis=redis, upstream=fake_upstream
    )


def test_an_unknown_model_is_a_404_model_not_found(
    client: Any, headers: dict[str, str], redis: Any, fake_upstream: FakeUpstream
) -> None:
    response = client.post(URL, headers=headers, json={**BASE, "model": "gpt-4o"})
    error = assert_refused(
        response, 404, "model", "'gpt-4o' does not exist", redis=redis, upstream=fake_upstream
    )
    assert error["code"] == "model_not_found"


def test_a_model_outside_the_tenants_allow_list_is_a_404(
    client: Any,
    member_of: Callable[..., dict[str, str]],
    redis: Any,
    fake_upstream: FakeUpstream,
) -> None:
    other = member_of(models=["other-model"])
    response = client.post(URL, headers=other, json=BASE)  # fake-model: not theirs
    assert_refused(response, 404, "model", "does not exist", redis=redis, upstream=fake_upstream)


def test_too_many_messages_is_a_400(
    client: Any, headers: dict[str, str], redis: Any, fake_upstream: FakeUpstream
) -> None:
    response = client.post(URL, headers=headers, json={**BASE, "messages": [MSG] * 5})
    error = assert_refused(
        response, 400, "messages", "at most 4", redis=redis, upstream=fake_upstream
    )
    assert error["code"] == "too_many_messages"


def test_too_much_text_is_a_400(
    client: Any, headers: dict[str, str], redis: Any, fake_upstream: FakeUpstream
) -> None:
    messages = [{"role": "user", "content": "x" * 600}, {"role": "assistant", "content": "y" * 600}]
    response = client.post(URL, headers=headers, json={**BASE, "messages": messages})
    assert_refused(
        response, 400, "messages", "at most 1000 characters", redis=redis, upstream=fake_upstream
    )


def test_max_tokens_over_the_cap_is_a_400(
    client: Any, headers: dict[str, str], redis: Any, fake_upstream: FakeUpstream
) -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        response = client.post(URL, headers=headers, json={**BASE, field: 101})
        error = assert_refused(
            response, 400, "max_tokens", "at most 100", redis=redis, upstream=fake_upstream
        )
        assert error["code"] == "max_tokens_too_large"
    assert (
        client.post(
            URL, headers=headers, json={**chat_body("tokens=2"), "max_tokens": 100}
        ).status_code
        == 200
    )


def test_an_oversized_body_is_a_413(
    client: Any, headers: dict[str, str], redis: Any, fake_upstream: FakeUpstream
) -> None:
    body = {**BASE, "messages": [{"role": "user", "content": "x" * 5000}]}
    response = client.post(URL, headers=headers, json=body)
    assert_refused(response, 413, None, "4096 bytes", redis=redis, upstream=fake_upstream)


# --- authentication ---------------------------------------------------------------------------


def test_without_a_token_it_is_a_401_in_openai_shape(
    client: Any, user: Any, redis: Any, fake_upstream: FakeUpstream
) -> None:
    response = client.post(URL, json=BASE)
    assert_refused(
        response, 401, None, "Authentication required", redis=redis, upstream=fake_upstream
    )
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_token_without_the_chat_scope_is_a_403(
    client: Any, user: Any, redis: Any, fake_upstream: FakeUpstream
) -> None:
    response = client.post(URL, headers=read_only_app_token(user), json=BASE)
    error = assert_refused(response, 403, None, "'chat' scope", redis=redis, upstream=fake_upstream)
    assert error["code"] == "insufficient_scope"


def test_a_disabled_tenant_cannot_chat(
    client: Any, user: Any, headers: dict[str, str], redis: Any, fake_upstream: FakeUpstream
) -> None:
    from auth.models import Tenant
    from core.store import db

    db.session.get(Tenant, user.tenant_id).disabled = True
    db.session.commit()
    response = client.post(URL, headers=headers, json=BASE)
    assert response.status_code in (401, 403)
    assert stream_count() == 0 and fake_upstream.snapshot()["requests"] == 0


# --- the happy path in-process ------------------------------------------------------------------


def test_a_stream_in_process_round_trips_the_text_and_records_it(
    client: Any, user: Any, headers: dict[str, str], redis: Any
) -> None:
    owner = (user.tenant_id, user.id)
    response = client.post(URL, headers=headers, json=chat_body("tokens=32", stream=True))
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    datas = data_events(response.get_data(as_text=True))
    assert datas[-1] == "[DONE]"
    assert chunk_text(datas).encode() == expected_text(32).encode()

    stream_id = response.headers["X-Stream-Id"]
    record = finished_record(stream_id)
    assert (record.tenant_id, record.user_id) == owner
    assert (record.mode, record.model) == ("direct", "fake-model")
    assert (record.status, record.completion_tokens, record.finish_reason) == (
        "completed",
        32,
        "stop",
    )
    assert live_ids(redis) == []


def test_each_request_gets_its_own_record(client: Any, headers: dict[str, str]) -> None:
    ids = {
        client.post(URL, headers=headers, json=chat_body("tokens=1", stream=s)).headers[
            "X-Stream-Id"
        ]
        for s in (True, False, True)
    }
    assert len(ids) == 3 and stream_count() == 3


def test_back_to_back_streams_reuse_one_connection_to_the_model_server(
    client: Any, headers: dict[str, str], fake_upstream: FakeUpstream
) -> None:
    # The SDK stops reading at [DONE]; unless the body is read to its end, httpx drops the
    # connection and every generation pays a new TCP (and, remotely, TLS) handshake.
    before = fake_upstream.snapshot()
    for _ in range(3):
        response = client.post(URL, headers=headers, json=chat_body("tokens=5", stream=True))
        assert data_events(response.get_data(as_text=True))[-1] == "[DONE]"
    after = fake_upstream.snapshot()
    assert after["requests"] - before["requests"] == 3
    assert after["connections"] - before["connections"] == 1


def test_an_image_reserves_its_token_estimate_not_its_base64_length() -> None:
    from api.services.generations import MEDIA_PART_TOKENS, estimate_prompt_tokens

    photo = "data:image/jpeg;base64," + "A" * 300_000  # a 300 kB photo
    text = [{"role": "user", "content": "x" * 400}]
    parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "x" * 400},
                {"type": "image_url", "image_url": {"url": photo}},
            ],
        }
    ]
    assert estimate_prompt_tokens(parts) == estimate_prompt_tokens(text) + MEDIA_PART_TOKENS
