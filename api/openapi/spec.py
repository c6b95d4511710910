"""Build the OpenAPI document from the code and the hand-written fragments in ``data/``.

flask-smorest generates every smorest view from its marshmallow schemas and docstring; this adds
what it cannot infer: security and the 401/403/404/429 of each operation, read from the view's
``require`` guard; the two error shapes; rate-limit headers; the Server-Sent Events payloads and
examples (framed by ``streaming.sse``); and the routes no smorest view declares (the hub, probes,
metrics, this document). The prose and the hand-written parts live in ``data/*.yaml``.
"""

from __future__ import annotations

import copy
import re
from importlib import resources
from typing import Any

import yaml
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from marshmallow import Schema

from api.errors import OPENAI_BLUEPRINTS
from api.extensions import api
from api.schemas.errors import ErrorSchema, OpenAIErrorSchema
from api.schemas.events import STREAM_EVENTS, ChatCompletionChunkSchema, UserStreamEventSchema
from streaming import sse

SPEC_EXTENSION = "streamgate.openapi"
HTTP_METHODS = {"get", "put", "post", "delete", "patch"}
STATE_CHANGING = {"post", "put", "patch", "delete"}
# Operations that start a generation: their success carries the stream id and the budget left.
GENERATION_STARTS = {"chat.create_chat_completion", "streams.create_stream"}
_RULE_ARG = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
_SCHEMAS = "#/components/schemas/"


def load(name: str) -> Any:
    """One data file, ``data/<name>.yaml``, freshly parsed (build_spec mutates what it gets)."""
    text = resources.files("api.openapi").joinpath("data", name + ".yaml").read_text("utf-8")
    return yaml.safe_load(text)


def openapi_yaml(app: Flask) -> str:
    """``openapi.yaml`` of ``app``, built once per app."""
    cached = app.extensions.get(SPEC_EXTENSION)
    if cached is None:
        cached = render_yaml(build_spec(app))
        app.extensions[SPEC_EXTENSION] = cached
    return str(cached)


def build_spec(app: Flask) -> dict[str, Any]:
    """The complete OpenAPI document of ``app`` (a fresh dict; ``openapi_yaml`` caches its YAML)."""
    with app.app_context():
        spec: dict[str, Any] = copy.deepcopy(api.documented_spec().to_dict())
    document, chat = load("document"), load("chat")
    endpoints = _endpoints(app)
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            if method in HTTP_METHODS:
                _decorate_operation(app, path, method, op, endpoints, chat["generation_headers"])
        chat_200 = item.get("post", {}).get("responses", {}).get("200")
        if path == "/v1/chat/completions" and chat_200 is not None:
            chat_200["description"] = chat["chat_200"]["description"]
            stream = chat["chat_200"]["text/event-stream"]
            stream["example"] = sse_example("chat")
            chat_200.setdefault("content", {})["text/event-stream"] = stream
    _request_examples(spec)
    spec.setdefault("paths", {}).update(load("paths"))
    spec["paths"]["/v1/events"] = {"get": _events_operation()}

    components = spec.setdefault("components", {})
    _optional_bodies(spec)
    pagination = components.get("headers", {}).get("PAGINATION")
    if pagination and "schema" in pagination:
        # The header carries JSON: per OpenAPI that is ``content``, not a (comma-style) ``schema``.
        pagination["content"] = {"application/json": {"schema": pagination.pop("schema")}}
    components.setdefault("schemas", {}).update(_schema_components())
    components.setdefault("responses", {}).update(_error_responses())
    components.setdefault("headers", {}).update(document["components"]["headers"])
    components["securitySchemes"] = document["components"]["securitySchemes"]

    spec["info"]["description"] = document["info"]["description"]
    spec["security"] = document["security"]
    known = {tag["name"] for tag in spec.get("tags", [])}
    for tag in document["tags"]:
        if tag["name"] not in known:
            spec.setdefault("tags", []).append(tag)
    spec["tags"] = [tag for tag in spec.get("tags", []) if _tag_used(spec, tag["name"])]
    return spec


# --- what each smorest operation gets ---------------------------------------------------------


def _request_examples(spec: dict[str, Any]) -> None:
    """``request_examples.yaml``'s examples on each JSON request body (by operationId)."""
    examples = load("request_examples")
    for item in spec.get("paths", {}).values():
        for method, op in item.items():
            body = op.get("requestBody", {}) if method in HTTP_METHODS else {}
            content = body.get("content", {}).get("application/json")
            if content is not None and op.get("operationId") in examples:
                content["examples"] = examples[op["operationId"]]


def _endpoints(app: Flask) -> dict[tuple[str, str], str]:
    """(OpenAPI path, method) -> Flask endpoint, for every url rule."""
    found = {}
    for rule in app.url_map.iter_rules():
        path = _RULE_ARG.sub(r"{\1}", rule.rule)
        for method in rule.methods or ():
            found[(path, method.lower())] = rule.endpoint
    return found


def _find_access(view: Any, attribute: str = "required_access") -> dict[str, Any] | None:
    """The ``require`` guard's demands (or another decorator's marks), found anywhere in the
    view's decorator chain."""
    for _ in range(32):  # a decorator chain is short; bounded all the same
        if view is None:
            return None
        access = view.__dict__.get(attribute)
        if access is not None:
            return dict(access)
        view = getattr(view, "__wrapped__", None)
    return None


def _security(access: dict[str, Any] | None, method: str) -> list[dict[str, list[str]]]:
    if access is None:
        return []
    if access.get("refresh"):
        return [{"bearerAuth": []}, {"refreshCookie": [], "refreshCsrfToken": []}]
    cookie: dict[str, list[str]] = {"cookieAuth": []}
    if method in STATE_CHANGING:
        cookie["csrfToken"] = []
    return [{"bearerAuth": []}, cookie]


def _access_note(access: dict[str, Any] | None) -> str:
    if access is None:
        return "No authentication."
    if access.get("refresh"):
        return "Needs a **refresh** token (bearer header, or the refresh cookie with CSRF header)."
    parts = []
    if access.get("scope"):
        parts.append(f"the `{access['scope']}` scope")
    if access.get("admin"):
        parts.append("an admin or operator role")
    return "Needs " + (" and ".join(parts) if parts else "any valid access token") + "."


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def _decorate_operation(
    app: Flask,
    path: str,
    method: str,
    op: dict[str, Any],
    endpoints: dict[tuple[str, str], str],
    generation_headers: dict[str, Any],
) -> None:
    endpoint = endpoints[(path, method)]
    access = _find_access(app.view_functions[endpoint])
    openai = endpoint.split(".", 1)[0] in OPENAI_BLUEPRINTS
    prefix = "OPENAI_" if openai else ""
    responses = op.setdefault("responses", {})
    if openai:
        # OpenAI-compatible routes answer invalid input with 400 in OpenAI's shape.
        responses.pop("422", None)
        responses["default"] = _ref("OPENAI_DEFAULT_ERROR")
    if "requestBody" in op or op.get("parameters"):
        responses.setdefault("400", _ref(prefix + "BAD_REQUEST"))
    if access is not None:
        responses.setdefault("401", _ref(prefix + "UNAUTHORIZED"))
        if access.get("scope") or access.get("admin"):
            responses.setdefault("403", _ref(prefix + "FORBIDDEN"))
        responses.setdefault("429", _ref(prefix + "TOO_MANY_REQUESTS"))
    if "{" in path:
        responses.setdefault("404", _ref(prefix + "NOT_FOUND"))
    op["security"] = _security(access, method)
    note = _access_note(access)
    op["description"] = (
        (op["description"].rstrip() + "\n\n" + note) if op.get("description") else note
    )
    op.setdefault("operationId", endpoint.replace(".", "_"))
    if _find_access(app.view_functions[endpoint], "idempotency") is not None:
        op.setdefault("parameters", []).append(load("document")["idempotency_key"])
        responses.setdefault("409", _ref(prefix + "CONFLICT"))
        if not openai:
            responses.setdefault("422", _ref("UNPROCESSABLE"))
        for status, response in responses.items():
            if status.startswith("2") and "$ref" not in response:
                replayed = {"$ref": "#/components/headers/Idempotent-Replayed"}
                response.setdefault("headers", {})["Idempotent-Replayed"] = replayed
    if endpoint in GENERATION_STARTS:
        for status, response in responses.items():
            if status.startswith("2") and "$ref" not in response:
                headers = copy.deepcopy(generation_headers)
                response.setdefault("headers", {}).update(headers)


def _optional_bodies(spec: dict[str, Any]) -> None:
    """A JSON body whose schema requires no field may be left out (webargs reads it as ``{}``)."""
    schemas = spec.get("components", {}).get("schemas", {})
    for item in spec["paths"].values():
        for op in item.values():
            body = op.get("requestBody") if isinstance(op, dict) else None
            if not body:
                continue
            schema = body.get("content", {}).get("application/json", {}).get("schema", {})
            ref = schema.get("$ref", "")
            if ref.startswith(_SCHEMAS):
                schema = schemas.get(ref.rsplit("/", 1)[1], {})
            if schema.get("type") == "object" and not schema.get("required"):
                body["required"] = False


def _tag_used(spec: dict[str, Any], name: str) -> bool:
    return any(
        name in op.get("tags", ())
        for item in spec["paths"].values()
        for op in item.values()
        if isinstance(op, dict)
    )


# --- components ---------------------------------------------------------------------------------


def _component_name(schema: type[Schema]) -> str:
    return schema.__name__.removesuffix("Schema")


def _schema_components() -> dict[str, Any]:
    """JSON Schemas of the shapes no smorest view declares (errors, SSE payloads)."""
    spec = APISpec("x", "0", "3.1.0", plugins=[MarshmallowPlugin()])
    extra: dict[str, type[Schema]] = {
        "Error": ErrorSchema,
        "OpenAIError": OpenAIErrorSchema,
        "ChatCompletionChunk": ChatCompletionChunkSchema,
        "UserStreamEvent": UserStreamEventSchema,
    }
    for schema in STREAM_EVENTS.values():
        extra[_component_name(schema)] = schema
    for name, schema in extra.items():
        spec.components.schema(name, schema=schema)
    schemas: dict[str, Any] = spec.to_dict()["components"]["schemas"]
    schemas["HubEvent"] = {
        "description": "The JSON `data` of one `GET /v1/events` event; `type` repeats its name.",
        "oneOf": [{"$ref": _SCHEMAS + _component_name(schema)} for schema in STREAM_EVENTS.values()]
        + [{"$ref": _SCHEMAS + "UserStreamEvent"}],
    }
    return schemas


def _error_responses() -> dict[str, Any]:
    """``errors.yaml``'s responses in both error shapes (``OPENAI_`` names OpenAI's)."""
    errors = load("errors")
    out: dict[str, Any] = {}
    for prefix, shape in (("", "Error"), ("OPENAI_", "OpenAIError")):
        for name, response in copy.deepcopy(errors["responses"]).items():
            out[prefix + name] = _json_response(response, shape)
    out["OPENAI_DEFAULT_ERROR"] = _json_response(errors["openai_default"], "OpenAIError")
    return out


def _json_response(response: dict[str, Any], schema: str) -> dict[str, Any]:
    response["content"] = {"application/json": {"schema": {"$ref": _SCHEMAS + schema}}}
    return response


# --- the hub and the SSE examples ---------------------------------------------------------------


def _events_operation() -> dict[str, Any]:
    """``GET /v1/events`` from ``events.yaml``, with the event list the schemas define."""
    op: dict[str, Any] = load("events")
    hub_events = "\n".join(
        f"- {(schema.__doc__ or name).strip()} Data: `{_component_name(schema)}`."
        for name, schema in STREAM_EVENTS.items()
    )
    op["description"] = op["description"].replace("{hub_events}", hub_events)
    stream = op["responses"]["200"]["content"]["text/event-stream"]
    stream["x-sse-events"] = {
        name: {"$ref": _SCHEMAS + _component_name(schema)} for name, schema in STREAM_EVENTS.items()
    }
    stream["example"] = sse_example("events")
    return op


def sse_example(name: str) -> str:
    """``examples.yaml``'s ``name`` framed exactly as the server frames events."""
    return "".join(_example_frame(item).decode() for item in load("examples")[name])


def _example_frame(item: dict[str, Any]) -> bytes:
    if "data" in item:
        return sse.json_frame(item["data"], event=item.get("event"), id=item.get("id"))
    if item.get("done"):
        return sse.done()
    if "retry" in item:
        return sse.retry_hint(int(item["retry"]))
    return sse.comment(str(item["comment"]))


# --- YAML -----------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):  # type: ignore[misc, unused-ignore]  # PyYAML has no stubs here
    """Multi-line strings (descriptions, SSE examples) as readable ``|`` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and "\r" not in value and not value.endswith(" ") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render_yaml(spec: dict[str, Any]) -> str:
    """Deterministic YAML: keys sorted, unicode kept, stable line width."""
    text: str = yaml.dump(
        spec,
        Dumper=_Dumper,
        sort_keys=True,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )
    return text
