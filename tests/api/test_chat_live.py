"""POST /v1/chat/completions on real gunicorn gevent workers, through the clients apps really use.

The openai SDK, LangChain's ``ChatOpenAI`` and raw httpx-sse talk to Streamgate over loopback;
Streamgate talks to the deterministic fake upstream, whose vocabulary carries leading spaces,
``\\n``, ``\\r\\n``, ``\\r``, U+2028 and emoji: every test compares the text byte for byte.
(The tests share one gunicorn, reset between them: see tests/support/live.py.)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from httpx_sse import EventSource, connect_sse

from bench.fake_upstream import FakeUpstream, expected_text, prompt_tokens
from tests.api.chat_helpers import (
    PROMPT,
    chat_body,
    chunk_text,
    finished_record,
    live_ids,
    token_of,
)
from tests.support.clients import chat_openai, openai_client
from tests.support.live import LiveServer
from tests.support.processes import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.live

# Keep-alives every half second and one-second leases (which the keeper renews every tick): the
# tests that need either share one server instead of starting one each.
QUICK_CLOCKS = {"SSE_HEARTBEAT_S": "0.5", "LEASE_TTL_S": "1"}
ENDLESS = chat_body("infinite delay_ms=20", max_tokens=4096)  # runs until someone stops it


@pytest.fixture()
def sdk(live: LiveServer, headers: dict[str, str]) -> Iterator[openai.OpenAI]:
    """The openai SDK pointed at Streamgate, the user's access token as its API key."""
    with openai_client(live.url, token_of(headers)) as client:
        yield client


def messages(directive: str) -> Any:
    return chat_body(directive)["messages"]


@contextlib.contextmanager
def open_sse(
    live: LiveServer, headers: dict[str, str], body: dict[str, Any]
) -> Iterator[tuple[httpx.Client, EventSource]]:
    """POST a streaming request and hold it open, read with httpx-sse (comments skipped)."""
    with (
        live.client() as client,
        connect_sse(
            client, "POST", "/v1/chat/completions", headers=headers, json={**body, "stream": True}
        ) as source,
    ):
        yield client, source


@contextlib.contextmanager
def open_lines(
    live: LiveServer, headers: dict[str, str], body: dict[str, Any]
) -> Iterator[httpx.Response]:
    """POST a streaming request and hold the raw response open (comments and all)."""
    with (
        live.client() as client,
        client.stream(
            "POST", "/v1/chat/completions", headers=headers, json={**body, "stream": True}
        ) as response,
    ):
        yield response


def raw_stream(
    live: LiveServer, headers: dict[str, str], body: dict[str, Any]
) -> tuple[httpx.Response, list[str]]:
    """POST a streaming request; the response and the data of every event, read with httpx-sse."""
    with open_sse(live, headers, body) as (_, source):
        return source.response, [event.data for event in source.iter_sse()]


def post(live: LiveServer, headers: dict[str, str], body: dict[str, Any]) -> httpx.Response:
    with live.client() as client:
        return client.post("/v1/chat/completions", headers=headers, json=body)


def stream_id_of(response: httpx.Response) -> str:
    return response.headers["X-Stream-Id"]


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"]
    assert response.headers["X-Stream-Id"].startswith("str_")
    return dict(error)


# --- the openai SDK ---------------------------------------------------------------------------


def test_openai_sdk_streams_the_text_byte_for_byte_with_usage_and_a_record(
    sdk: openai.OpenAI, user: Any, redis: Any
) -> None:
    response = sdk.chat.completions.with_raw_response.create(
        model="fake-model",
        messages=messages("tokens=40"),
        stream=True,
        stream_options={"include_usage": True},
    )
    stream_id = response.headers["X-Stream-Id"]
    chunks = list(response.parse())

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.encode() == expected_text(40).encode()
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert {c.model for c in chunks} == {"fake-model"}
    reasons = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert reasons == ["stop"]
    assert [c for c in chunks if c.usage is not None] == [chunks[-1]] and chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    expected_prompt = prompt_tokens(messages("tokens=40"))  # the upstream's own count
    assert (usage.prompt_tokens, usage.completion_tokens) == (expected_prompt, 40)
    assert usage.total_tokens == expected_prompt + 40

    record = finished_record(stream_id)
    assert (record.tenant_id, record.user_id, record.mode, record.model) == (
        user.tenant_id,
        user.id,
        "direct",
        "fake-model",
    )
    assert (record.status, record.finish_reason, record.error_code) == ("completed", "stop", None)
    assert (record.prompt_tokens, record.completion_tokens) == (expected_prompt, 40)
    assert record.started_at is not None and record.finished_at is not None
    assert record.started_at <= record.finished_at
    assert live_ids(redis) == []  # gone before the client saw [DONE]


def test_openai_sdk_without_streaming_gets_a_chat_completion(sdk: openai.OpenAI) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="fake-model", messages=messages("tokens=33")
    )
    completion = raw.parse()
    assert completion.object == "chat.completion" and completion.model == "fake-model"
    assert completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert (choice.message.content or "").encode() == expected_text(33).encode()
    assert completion.usage is not None and completion.usage.completion_tokens == 33
    assert completion.usage.prompt_tokens == prompt_tokens(messages("tokens=33"))
    record = finished_record(raw.headers["X-Stream-Id"])
    assert (record.mode, record.status, record.completion_tokens) == ("direct", "completed", 33)

    cut = sdk.chat.completions.create(
        model="fake-model", messages=messages("tokens=50"), max_tokens=7
    )
    assert cut.choices[0].finish_reason == "length"
    assert cut.choices[0].message.content == expected_text(7)

    # Request after request on the SDK's one keep-alive connection: the disconnect watcher of a
    # finished request must have let go of the socket.
    for _ in range(3):
        again = sdk.chat.completions.create(model="fake-model", messages=messages("tokens=2"))
        assert again.choices[0].message.content == expected_text(2)
    streamed = sdk.chat.completions.create(
        model="fake-model", messages=messages("tokens=2"), stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected_text(2)


def test_parameters_reach_the_upstream_and_usage_is_only_sent_when_asked(
    sdk: openai.OpenAI, fake_upstream: FakeUpstream
) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model="fake-model",
            messages=messages("tokens=5"),
            stream=True,
            max_tokens=9,
            temperature=0.25,
            top_p=0.5,
            stop=["zzz"],
            user="end-user-1",
        )
    )
    assert all(c.usage is None and c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected_text(5)
    sent = fake_upstream.stats.last_body
    assert (sent["model"], sent["temperature"], sent["top_p"], sent["stop"]) == (
        "fake-model",
        0.25,
        0.5,
        ["zzz"],
    )
    assert sent["messages"] == messages("tokens=5")
    # max_tokens, not max_completion_tokens: llama.cpp and older vLLM/Ollama ignore the newer name
    assert sent["max_tokens"] == 9 and "max_completion_tokens" not in sent


# --- LangChain ------------------------------------------------------------------------------


def test_chatopenai_streams_and_invokes_through_streamgate(
    live: LiveServer, headers: dict[str, str]
) -> None:
    llm = chat_openai(live.url, token_of(headers), stream_usage=True)
    pieces = list(llm.stream(PROMPT + " [[fake tokens=24]]"))
    text = "".join(p.content for p in pieces if isinstance(p.content, str))
    assert text.encode() == expected_text(24).encode()
    usage = [p.usage_metadata for p in pieces if p.usage_metadata]
    assert usage and usage[-1]["output_tokens"] == 24

    message = llm.invoke(PROMPT + " [[fake tokens=17]]")
    assert message.content == expected_text(17)
    assert message.response_metadata["finish_reason"] == "stop"
    assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] == 17


# --- raw SSE ----------------------------------------------------------------------------------


def test_raw_sse_is_framed_as_openai_frames_it(live: LiveServer, headers: dict[str, str]) -> None:
    response, datas = raw_stream(
        live,
        {**headers, "X-Request-Id": "trace-42"},
        chat_body("tokens=16", stream_options={"include_usage": True}),
    )

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert response.headers["X-Stream-Id"].startswith("str_")
    assert response.headers["X-Request-Id"] == "trace-42"
    assert datas[-1] == "[DONE]" and datas.count("[DONE]") == 1
    chunks = [json.loads(d) for d in datas[:-1]]
    assert all(set(c) >= {"id", "object", "created", "model", "choices"} for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunk_text(datas).encode() == expected_text(16).encode()
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 16


def test_every_data_line_survives_a_reader_that_splits_on_unicode_line_breaks(
    live: LiveServer, headers: dict[str, str]
) -> None:
    """Readers using ``str.splitlines`` (httpx's ``iter_lines``): U+2028 must not cut a line."""
    with open_lines(live, headers, chat_body("tokens=16")) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert chunk_text([line.removeprefix("data: ") for line in lines]) == expected_text(16)


# --- the client goes away ---------------------------------------------------------------------


def test_a_client_leaving_mid_stream_closes_the_upstream_and_cancels_the_record(
    live: LiveServer, headers: dict[str, str], fake_upstream: FakeUpstream, redis: Any
) -> None:
    seen = 0
    with open_sse(live, headers, ENDLESS) as (client, source):
        stream_id = stream_id_of(source.response)
        for event in source.iter_sse():
            seen += bool(json.loads(event.data)["choices"][0]["delta"].get("content"))
            if seen == 5:
                # Read while the client still reads: breaking out may close the connection at
                # once (the event iterator is finalized), and the gateway then closes the
                # upstream before a check after the loop could look.
                assert fake_upstream.snapshot()["active"] == 1
                break  # leaving the loop and the block closes the connection mid-stream

    assert fake_upstream.wait_for(
        lambda s: s["disconnects"] == 1 and s["active"] == 0, timeout=15
    ), fake_upstream.snapshot()
    record = finished_record(stream_id)
    assert (record.status, record.error_code) == ("cancelled", None)
    assert record.completion_tokens >= seen  # what was generated is counted
    assert record.finished_at is not None
    assert wait_until(lambda: live_ids(redis) == [])


def test_a_client_leaving_while_nothing_is_being_written_closes_the_upstream(
    live: LiveServer, headers: dict[str, str], fake_upstream: FakeUpstream, redis: Any
) -> None:
    """No write fails while the first token is slow (or with ``stream: false``): the gone client
    is still noticed, long before the next keep-alive (15 s by default) would have found out."""
    with open_lines(live, headers, chat_body("first_delay_ms=60000")) as response:
        stream_id = stream_id_of(response)
        next(response.iter_lines())  # the stream is open: then we leave
    assert fake_upstream.wait_for(lambda s: s["disconnects"] == 1, timeout=10), (
        fake_upstream.snapshot()
    )
    record = finished_record(stream_id)
    assert (record.status, record.completion_tokens) == ("cancelled", 0)

    with pytest.raises(httpx.ReadTimeout), live.client(timeout=1.5) as client:
        client.post(
            "/v1/chat/completions", headers=headers, json=chat_body("tokens=3 first_delay_ms=60000")
        )
    assert fake_upstream.wait_for(lambda s: s["disconnects"] == 2, timeout=10), (
        fake_upstream.snapshot()
    )
    assert wait_until(lambda: live_ids(redis) == [])


# --- heartbeats -------------------------------------------------------------------------------


@pytest.mark.parametrize("live_overrides", [QUICK_CLOCKS])
def test_a_slow_first_token_is_preceded_by_keep_alive_comments(
    live: LiveServer, headers: dict[str, str], fake_upstream: FakeUpstream
) -> None:
    # The first token takes 60 s: everything read here arrives before it exists.
    with open_lines(live, headers, chat_body("first_delay_ms=60000")) as response:
        assert response.status_code == 200
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
        assert response.headers["X-Stream-Id"] and response.headers["X-Request-Id"]
        lines: list[str] = []
        for line in response.iter_lines():
            lines.append(line)
            if lines.count(": keep-alive") == 3:
                break
    assert not any('"content":" Hello"' in line for line in lines)
    assert fake_upstream.wait_for(lambda s: s["disconnects"] == 1, timeout=15)

    # A first token that does come after a while: keep-alives, then the whole text.
    with open_lines(live, headers, chat_body("tokens=8 first_delay_ms=1600")) as response:
        lines = list(response.iter_lines())
    first_token = next(i for i, line in enumerate(lines) if '"content":" Hello"' in line)
    assert ": keep-alive" in lines[:first_token]
    assert ": keep-alive" not in lines[first_token:]  # tokens flowing: no comment needed
    datas = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert chunk_text(datas) == expected_text(8) and datas[-1] == "[DONE]"


# --- upstream failures ------------------------------------------------------------------------


@pytest.mark.parametrize("live_overrides", [{"LLM_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"}])
def test_an_unreachable_upstream_is_a_502(
    live: LiveServer, headers: dict[str, str], redis: Any
) -> None:
    for stream in (True, False):
        response = post(live, headers, chat_body(stream=stream))
        error = assert_openai_error(response, 502, "upstream_unavailable")
        assert error["type"] == "api_error" and "could not be reached" in error["message"]
        record = finished_record(stream_id_of(response))
        assert (record.status, record.error_code, record.completion_tokens) == (
            "failed",
            "upstream_unavailable",
            0,
        )
    assert live_ids(redis) == []


@pytest.mark.parametrize("live_overrides", [{"LLM_READ_TIMEOUT_S": "0.5"}])
def test_an_upstream_that_never_answers_is_a_504(
    live: LiveServer, headers: dict[str, str], fake_upstream: FakeUpstream
) -> None:
    for stream in (True, False):
        response = post(live, headers, chat_body("hang", stream=stream))
        assert_openai_error(response, 504, "upstream_timeout")
        assert finished_record(stream_id_of(response)).status == "failed"
    assert fake_upstream.wait_for(  # we hung up
        lambda s: s["requests"] == 2 and s["active"] == 0, timeout=15
    )

    # It answered, then went quiet for longer than LLM_READ_TIMEOUT_S: the 200 is out, so the
    # timeout arrives in-band.
    response, datas = raw_stream(live, headers, chat_body("tokens=5 first_delay_ms=5000"))
    assert response.status_code == 200 and "[DONE]" not in datas
    assert json.loads(datas[-1])["error"]["code"] == "upstream_timeout"
    record = finished_record(stream_id_of(response))
    assert (record.status, record.error_code, record.completion_tokens) == (
        "failed",
        "upstream_timeout",
        0,
    )


def test_an_upstream_http_error_before_the_first_token_is_a_5xx(
    live: LiveServer, headers: dict[str, str], sdk: openai.OpenAI
) -> None:
    # 401/403: Streamgate's own key is wrong, not the client's request (a 4xx would mislead).
    cases = [
        (429, 503, "upstream_rate_limited"),
        (500, 502, "upstream_error"),
        (503, 503, "upstream_error"),
        (401, 502, "upstream_error"),
        (403, 502, "upstream_error"),
    ]
    for upstream_status, status, code in cases:
        response = post(live, headers, chat_body(f"status={upstream_status}", stream=True))
        assert_openai_error(response, status, code)
        record = finished_record(stream_id_of(response))
        assert (record.status, record.error_code) == ("failed", code)

        with pytest.raises(openai.InternalServerError) as caught:
            sdk.chat.completions.create(
                model="fake-model", messages=messages(f"status={upstream_status}")
            )
        assert caught.value.status_code == status
    # The operator reads why: the model server refused Streamgate's own key (401 and 403).
    assert live.log().count("refused Streamgate's own credentials") == 4


def test_an_upstream_failure_after_the_first_token_ends_the_stream_with_an_in_band_error(
    live: LiveServer, headers: dict[str, str], redis: Any
) -> None:
    for knob, code in (
        ("error_after=5", "upstream_error"),
        ("drop_after=5", "upstream_disconnected"),
    ):
        response, datas = raw_stream(live, headers, chat_body(f"tokens=20 delay_ms=5 {knob}"))

        assert response.status_code == 200
        assert "[DONE]" not in datas, knob
        error = json.loads(datas[-1])["error"]
        assert (error["code"], error["type"]) == (code, "server_error") and error["message"]
        assert chunk_text(datas[:-1]) == expected_text(
            5
        )  # what came before the failure came through
        assert all(json.loads(d)["choices"][0]["finish_reason"] is None for d in datas[:-1])
        record = finished_record(stream_id_of(response))
        assert (record.status, record.error_code, record.completion_tokens) == ("failed", code, 5)
    assert live_ids(redis) == []


def test_a_failure_after_the_first_token_is_an_error_for_the_sdk_never_an_empty_success(
    live: LiveServer, headers: dict[str, str], sdk: openai.OpenAI
) -> None:
    for knob in ("error_after=3", "drop_after=3"):
        stream = sdk.chat.completions.create(
            model="fake-model", messages=messages(f"tokens=9 {knob}"), stream=True
        )
        text = ""
        with pytest.raises(openai.APIError, match="model server"):
            for chunk in stream:
                text += chunk.choices[0].delta.content or ""
        assert text == expected_text(3)

        response = post(live, headers, chat_body(f"tokens=9 {knob}"))  # stream: false
        assert response.status_code == 502 and response.json()["error"]["message"]
        assert finished_record(stream_id_of(response)).status == "failed"


# --- authentication ---------------------------------------------------------------------------


def test_without_a_valid_token_it_is_a_401_the_sdk_raises_authentication_error_for(
    live: LiveServer,
) -> None:
    response = post(live, {}, chat_body(stream=True))
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    error = response.json()["error"]
    assert error["type"] == "authentication_error" and error["message"]

    for key in ("not-a-jwt", "e30.e30.e30"):
        client = openai_client(live.url, key)
        with pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(model="fake-model", messages=messages(""), stream=True)
        assert caught.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            client.models.list()


def test_an_app_token_with_chat_scope_works_and_one_without_is_refused(
    live: LiveServer, make_user: Callable[..., Any], auth_headers: Callable[..., dict[str, str]]
) -> None:
    admin = make_user(role="admin")
    with live.client() as client:
        tokens = {
            scope: client.post(
                "/v1/tokens", headers=auth_headers(admin), json={"name": scope, "scopes": [scope]}
            ).json()["token"]
            for scope in ("chat", "read")
        }
    app_sdk = openai_client(live.url, tokens["chat"])
    completion = app_sdk.chat.completions.create(model="fake-model", messages=messages("tokens=4"))
    assert completion.choices[0].message.content == expected_text(4)

    read_only = openai_client(live.url, tokens["read"])
    with pytest.raises(openai.PermissionDeniedError) as caught:
        read_only.chat.completions.create(model="fake-model", messages=messages(""), stream=True)
    assert caught.value.status_code == 403 and "chat" in caught.value.message


# --- invalid requests through the SDK ---------------------------------------------------------


def test_the_sdk_raises_the_right_classes_for_invalid_requests(
    sdk: openai.OpenAI, redis: Any
) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.chat.completions.create(model="gpt-nope", messages=messages(""))
    assert missing.value.code == "model_not_found" and missing.value.param == "model"

    with pytest.raises(openai.BadRequestError) as empty:
        sdk.chat.completions.create(model="fake-model", messages=[], stream=True)
    assert empty.value.param == "messages"

    with pytest.raises(openai.BadRequestError) as too_large:
        sdk.chat.completions.create(model="fake-model", messages=messages(""), max_tokens=10**6)
    assert too_large.value.param == "max_tokens"
    assert live_ids(redis) == []


# --- revocation and leases ----------------------------------------------------------------------


def test_an_admin_revoking_a_direct_stream_ends_it_in_band_and_closes_the_upstream(
    live: LiveServer,
    user: Any,
    headers: dict[str, str],
    make_user: Callable[..., Any],
    auth_headers: Callable[..., dict[str, str]],
    fake_upstream: FakeUpstream,
    redis: Any,
) -> None:
    from auth.models import Tenant
    from core.store import db

    admin = make_user(db.session.get(Tenant, user.tenant_id), role="admin")
    datas: list[str] = []
    with open_sse(live, headers, ENDLESS) as (client, source):
        stream_id = stream_id_of(source.response)
        for event in source.iter_sse():
            datas.append(event.data)
            if len(datas) == 4:
                revoked = client.post(
                    f"/v1/admin/streams/{stream_id}/revoke",
                    headers=auth_headers(admin),
                    json={"reason": "abuse"},
                )
                assert revoked.status_code == 202, revoked.text

    assert "[DONE]" not in datas
    error = json.loads(datas[-1])["error"]
    assert error["code"] == "stream_revoked" and error["message"]
    assert fake_upstream.wait_for(lambda s: s["disconnects"] == 1 and s["active"] == 0, timeout=15)
    record = finished_record(stream_id)
    assert (record.status, record.revoked_by) == ("revoked", admin.id)
    assert record.completion_tokens >= 3
    assert live_ids(redis) == []


@pytest.mark.parametrize("live_overrides", [QUICK_CLOCKS])
def test_a_direct_stream_outliving_its_lease_keeps_it_renewed_and_completes(
    live: LiveServer, headers: dict[str, str], redis: Any
) -> None:
    """Every worker reaps runs whose lease expired: a long direct stream must renew its own."""
    response, datas = raw_stream(live, headers, chat_body("tokens=60 delay_ms=50"))  # 3 leases long
    assert datas[-1] == "[DONE]"
    assert chunk_text(datas) == expected_text(60)
    record = finished_record(stream_id_of(response))
    assert (record.status, record.completion_tokens) == ("completed", 60)
