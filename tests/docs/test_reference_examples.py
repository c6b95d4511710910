"""The API reference works by itself: every request body in openapi.yaml has a realistic example
that matches its schema, and "Try it out" in /docs, sending the chat examples unchanged, gets a
200 (here from the fake model serving ``smollm2-135m-instruct``, the embedded model's name).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.api.test_openapi import HTTP_METHODS, SPEC_PATH, validator

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return dict(yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8")))


def ecma_patterns(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with Python's ``\\A`` and ``\\Z`` anchors as ``^`` and ``$``: JSON Schema's
    regex dialect has neither (the server checks the real pattern)."""
    text = json.dumps(spec).replace(r"\\A", "^").replace(r"\\Z", "$")
    return dict(json.loads(text))


@pytest.fixture()
def app_overrides() -> dict[str, Any]:
    return {"LLM_MODELS": [MODEL]}


def chat_examples(spec: dict[str, Any]) -> dict[str, Any]:
    body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    return dict(body["content"]["application/json"]["examples"])


def test_every_request_body_has_an_example_that_matches_its_schema(spec: dict[str, Any]) -> None:
    schemas = ecma_patterns(spec)
    checked = 0
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in HTTP_METHODS or "requestBody" not in op:
                continue
            content = op["requestBody"]["content"]["application/json"]
            examples = content.get("examples")
            assert examples, f"{method.upper()} {path} has no request example"
            name = content["schema"]["$ref"].rsplit("/", 1)[1]
            for key, example in examples.items():
                errors = [e.message for e in validator(schemas, name).iter_errors(example["value"])]
                assert not errors, (method, path, key, errors)
                assert example.get("summary"), (method, path, key)
            checked += 1
    assert checked >= 18


def test_the_chat_examples_name_the_embedded_model_and_only_max_tokens(
    spec: dict[str, Any],
) -> None:
    examples = chat_examples(spec)
    assert list(examples) == ["reply", "streamed"]  # Try it out fills in the first
    for example in examples.values():
        body = example["value"]
        assert body["model"] == MODEL and body["max_tokens"] > 0
        assert "max_completion_tokens" not in body
    assert examples["streamed"]["value"]["stream"] is True


def test_the_chat_examples_sent_unchanged_answer_200(
    client: Any,
    spec: dict[str, Any],
    make_tenant: Callable[..., Any],
    make_user: Callable[..., Any],
    auth_headers: Callable[..., dict[str, str]],
    fake_upstream: Any,
) -> None:
    headers = auth_headers(make_user(make_tenant(models=[MODEL])))
    examples = chat_examples(spec)

    reply = client.post("/v1/chat/completions", json=examples["reply"]["value"], headers=headers)
    assert reply.status_code == 200, reply.get_data(as_text=True)
    body = reply.get_json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["choices"][0]["message"]["content"]

    streamed = client.post(
        "/v1/chat/completions", json=examples["streamed"]["value"], headers=headers
    )
    assert streamed.status_code == 200, streamed.get_data(as_text=True)
    assert streamed.mimetype == "text/event-stream"
    frames = [
        ln[6:] for ln in streamed.get_data(as_text=True).splitlines() if ln.startswith("data: ")
    ]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(frame) for frame in frames[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert chunks[-1]["usage"]["completion_tokens"] > 0  # include_usage was honoured
