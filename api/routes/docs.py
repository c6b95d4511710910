"""The documented contract: ``GET /openapi.yaml`` and the API reference at ``GET /docs``.

flask-smorest collects every smorest blueprint's schemas; ``build_spec`` adds what it cannot
infer (security read from each view's ``require`` guard, the two error shapes, rate-limit
headers, the Server-Sent Events endpoints and their event payloads, the plain Flask routes).
The same function feeds ``/openapi.yaml`` and ``python -m scripts.gen_openapi``, so the committed
``openapi.yaml`` and the served one cannot differ (tests/api/test_openapi.py checks it).

``/docs`` is Swagger UI served from the ``flask-swagger-ui`` package's files: no CDN, works
offline.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import flask_swagger_ui
import yaml
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Flask, Response, current_app, url_for
from marshmallow import Schema

from api.errors import OPENAI_BLUEPRINTS
from api.extensions import api
from api.schemas.errors import ErrorSchema, OpenAIErrorSchema
from api.schemas.events import (
    STREAM_EVENTS,
    ChatCompletionChunkSchema,
    UserStreamEventSchema,
)

SWAGGER_DIST = Path(flask_swagger_ui.__file__).resolve().parent / "dist"
SPEC_EXTENSION = "streamgate.openapi"

bp = Blueprint("docs", __name__, static_folder=str(SWAGGER_DIST), static_url_path="/docs/assets")


@bp.get("/openapi.yaml")
def get_openapi() -> Response:
    """The OpenAPI 3.1 description of this API."""
    return Response(openapi_yaml(current_app), mimetype="application/yaml")


@bp.get("/docs")
def get_docs() -> Response:
    """The API reference (Swagger UI over /openapi.yaml), served without any CDN."""
    html = _DOCS_HTML.replace("{assets}", url_for("docs.static", filename="")).replace(
        "{spec}", url_for("docs.get_openapi")
    )
    return Response(html, mimetype="text/html")


# --- the spec -----------------------------------------------------------------------------------

STATE_CHANGING = {"post", "put", "patch", "delete"}
_RULE_ARG = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")

DESCRIPTION = """\
Streamgate streams tokens from an OpenAI-compatible model to many clients over Server-Sent Events.

**Two ways to stream.** *Direct*: `POST /v1/chat/completions` with `"stream": true` is
OpenAI-compatible (the openai SDKs and `ChatOpenAI` work unchanged); the response is the
generation. *Channel*: `POST /v1/streams` answers `202` at once; read the generation from
`GET /v1/events?channel=streams/<id>` on any number of devices, resume with `Last-Event-ID`.

**Authentication.** `POST /v1/auth/login` returns a short-lived access token and a refresh token.
Send the access token as `Authorization: Bearer <jwt>` (apps, mobile), or log in with
`"cookie": true` and let the browser send the HttpOnly `sg_access` cookie; with the cookie, every
`POST`/`PUT`/`PATCH`/`DELETE` must also send `X-CSRF-TOKEN` with the value of the readable
`csrf_access_token` cookie. `EventSource` on another origin uses a one-time `ticket`
(`POST /v1/events/tickets`). Admins issue long-lived, scoped app tokens (`POST /v1/tokens`).

**Errors.** Every error is `{"code", "status", "message", "errors"?, "error_code"?}`, except on
`/v1/chat/completions` and `/v1/models`, which use OpenAI's `{"error": {"message", "type",
"param", "code"}}` so that SDKs parse them. A `429` carries `Retry-After` and `RateLimit-*`
headers and names the limit that was hit. Another tenant's object is a `404`. Every response
carries `X-Request-Id` (send your own, `[A-Za-z0-9._-]{1,64}`, to correlate with the logs).
"""

# Operations that start a generation: their success carries the stream id and the budget left.
GENERATION_STARTS = {"chat.create_chat_completion", "streams.create_stream"}

SECURITY_SCHEMES: dict[str, Any] = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An access token from `POST /v1/auth/login` or an app token from "
        "`POST /v1/tokens`.",
    },
    "cookieAuth": {
        "type": "apiKey",
        "in": "cookie",
        "name": "sg_access",
        "description": 'HttpOnly cookie set by `POST /v1/auth/login` with `"cookie": true`. '
        "State-changing requests must also send `csrfToken`.",
    },
    "csrfToken": {
        "type": "apiKey",
        "in": "header",
        "name": "X-CSRF-TOKEN",
        "description": "The value of the `csrf_access_token` cookie (double-submit CSRF "
        "protection); required with `cookieAuth` on POST, PUT, PATCH and DELETE.",
    },
    "refreshCookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": "sg_refresh",
        "description": "HttpOnly refresh cookie (path `/v1/auth/`); send `refreshCsrfToken` too.",
    },
    "refreshCsrfToken": {
        "type": "apiKey",
        "in": "header",
        "name": "X-CSRF-TOKEN",
        "description": "The value of the `csrf_refresh_token` cookie, with `refreshCookie`.",
    },
    "ticketAuth": {
        "type": "apiKey",
        "in": "query",
        "name": "ticket",
        "description": "One-time ticket from `POST /v1/events/tickets`, valid for one channel, "
        "once, for `EVENT_TICKET_TTL_S` (60 s). Only on `GET /v1/events`.",
    },
}

RATE_LIMIT_HEADERS: dict[str, Any] = {
    "Retry-After": {
        "required": True,  # on every 429 (a Reference Object cannot say so, so the header does)
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "RateLimit-Limit": {
        "description": "The limit that applies (requests or tokens in its window).",
        "schema": {"type": "integer"},
    },
    "RateLimit-Remaining": {
        "description": "What is left of it in the current window.",
        "schema": {"type": "integer"},
    },
    "RateLimit-Reset": {
        "description": "Seconds until the window resets.",
        "schema": {"type": "integer"},
    },
}


def _frame(data: dict[str, Any], event: str | None = None, event_id: str | None = None) -> str:
    head = (f"event: {event}\n" if event else "") + (f"id: {event_id}\n" if event_id else "")
    return head + "data: " + json.dumps(data, separators=(",", ":")) + "\n\n"


_CHUNK = {
    "id": "chatcmpl-abc",
    "object": "chat.completion.chunk",
    "created": 1700000000,
    "model": "smollm2-135m-instruct",
}
CHAT_STREAM_EXAMPLE = (
    _frame(
        {**_CHUNK, "choices": [{"index": 0, "delta": {"content": " Hello"}, "finish_reason": None}]}
    )
    + _frame({**_CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    + "data: [DONE]\n\n"
)
_SID = "str_0123456789abcdefghij"
EVENTS_EXAMPLE = (
    "retry: 2000\n: connected\n\n"
    + _frame(
        {
            "type": "stream.started",
            "stream_id": _SID,
            "model": "smollm2-135m-instruct",
            "mode": "channel",
            "created": 1700000000.0,
        },
        "stream.started",
        "1700000000000-0",
    )
    + _frame(
        {"type": "token", "text": " Hello", "index": 0, "count": 1}, "token", "1700000000001-0"
    )
    + _frame(
        {
            "type": "stream.completed",
            "stream_id": _SID,
            "finish_reason": "stop",
            "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
        },
        "stream.completed",
        "1700000000002-0",
    )
)

_HUB_EVENT_DOC = "\n".join(
    f"- {(schema.__doc__ or name).strip()} Data: `{schema.__name__.removesuffix('Schema')}`."
    for name, schema in STREAM_EVENTS.items()
)


def _envelope(
    status: str, description: str, ref: str, headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }
    if headers:
        response["headers"] = headers
    return response


def _responses(shape: str) -> dict[str, Any]:
    """Reusable error responses in one shape (``Error`` or ``OpenAIError``)."""
    challenge = {
        "WWW-Authenticate": {
            "description": "RFC 6750 challenge, e.g. "
            '`Bearer realm="streamgate", error="invalid_token"`',
            "schema": {"type": "string"},
        }
    }
    limited = {name: {"$ref": f"#/components/headers/{name}"} for name in RATE_LIMIT_HEADERS}
    return {
        "BAD_REQUEST": _envelope("400", "Malformed request (invalid JSON, bad parameter)", shape),
        "UNAUTHORIZED": _envelope(
            "401", "Missing, invalid, expired or revoked token", shape, challenge
        ),
        "FORBIDDEN": _envelope(
            "403", "The token lacks the scope or role this needs", shape, challenge
        ),
        "NOT_FOUND": _envelope("404", "No such object in your tenant", shape),
        "TOO_MANY_REQUESTS": _envelope(
            "429", "A rate limit or quota was hit; the body names it", shape, limited
        ),
    }


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
        extra[schema.__name__.removesuffix("Schema")] = schema
    for name, schema in extra.items():
        spec.components.schema(name, schema=schema)
    schemas: dict[str, Any] = spec.to_dict()["components"]["schemas"]
    events = {
        name: "#/components/schemas/" + schema.__name__.removesuffix("Schema")
        for name, schema in STREAM_EVENTS.items()
    }
    schemas["HubEvent"] = {
        "description": "The JSON `data` of one `GET /v1/events` event; `type` repeats its name.",
        "oneOf": [{"$ref": ref} for ref in events.values()]
        + [{"$ref": "#/components/schemas/UserStreamEvent"}],
    }
    return schemas


def _find_access(view: Any) -> dict[str, Any] | None:
    """The ``require`` guard's demands, found anywhere in the view's decorator chain."""
    for _ in range(32):  # a decorator chain is short; bounded all the same
        if view is None:
            return None
        access = view.__dict__.get("required_access")
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


def _endpoints(app: Flask) -> dict[tuple[str, str], str]:
    """(OpenAPI path, method) -> Flask endpoint, for every url rule."""
    found = {}
    for rule in app.url_map.iter_rules():
        path = _RULE_ARG.sub(r"{\1}", rule.rule)
        for method in rule.methods or ():
            found[(path, method.lower())] = rule.endpoint
    return found


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def _decorate_operation(
    app: Flask, path: str, method: str, op: dict[str, Any], endpoints: dict[tuple[str, str], str]
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
    if endpoint in GENERATION_STARTS:
        for status, response in responses.items():
            if status.startswith("2") and "$ref" not in response:
                response.setdefault("headers", {}).update(_generation_headers())


def _generation_headers() -> dict[str, Any]:
    headers: dict[str, Any] = {
        "X-Stream-Id": {
            "required": True,
            "description": "The stream's id (`str_...`): `GET /v1/streams/<id>`, admin revoke",
            "schema": {"type": "string"},
        },
    }
    for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"):
        headers[name] = {"$ref": f"#/components/headers/{name}"}
    return headers


def _chat_stream_content() -> dict[str, Any]:
    return {
        "schema": {
            "type": "string",
            "description": "Server-Sent Events: one `data: <ChatCompletionChunk JSON>` per chunk, "
            "then `data: [DONE]`. With `stream_options.include_usage` a last chunk "
            "has empty `choices` and `usage`. An upstream failure after the 200 "
            'arrives as `data: {"error": {...}}` (OpenAIError) and the stream '
            "ends. Comment lines (`: keep-alive`) may appear at any time.",
        },
        "x-sse-data": {"$ref": "#/components/schemas/ChatCompletionChunk"},
        "x-sse-error": {"$ref": "#/components/schemas/OpenAIError"},
        "example": CHAT_STREAM_EXAMPLE,
    }


def _events_operation() -> dict[str, Any]:
    return {
        "tags": ["events"],
        "operationId": "events_stream",
        "summary": "Subscribe to a channel's events as Server-Sent Events (replay, then follow).",
        "description": (
            "Channels: `streams/<stream id>` (one generation) and `users/<user id>` (lifecycle "
            "events of all that user's streams, so a second device can attach). Members read "
            "their own; tenant admins any in their tenant; operators any. A malformed channel is "
            "a 400 before anything else; an unreadable one a 403, whether or not it exists.\n\n"
            "Every event has an `id:` (resume from it with `Last-Event-ID`) and JSON `data` "
            "whose `type` repeats the event name. On `streams/<id>`:\n\n" + _HUB_EVENT_DOC + "\n\n"
            "On `users/<id>`: `stream.started` and the terminal events, data `UserStreamEvent`.\n\n"
            "A comment is sent as soon as the connection opens. After a terminal event the server "
            "closes the connection; reconnecting to a finished stream replays after "
            "`Last-Event-ID` and closes (204 when nothing is left: the terminal event was "
            "already received); a revoked stream answers 410 (browsers stop retrying on any "
            "non-200). A connection never outlives its token's `exp`."
        ),
        "parameters": [
            {
                "in": "query",
                "name": "channel",
                "required": True,
                "description": "`streams/<stream id>` or `users/<user id>`",
                "schema": {"type": "string", "pattern": "^(streams/str_|users/usr_)[a-z0-9]{20}$"},
            },
            {
                "in": "query",
                "name": "last_event_id",
                "required": False,
                "description": "Resume after this event id (for clients that cannot set "
                "`Last-Event-ID`).",
                "schema": {"type": "string", "pattern": "^[0-9]+-[0-9]+$"},
            },
            {
                "in": "header",
                "name": "Last-Event-ID",
                "required": False,
                "description": "Resume after this event id: exactly the missed events, no gap, "
                "no duplicate. `EventSource` sends it on reconnect by itself.",
                "schema": {"type": "string", "pattern": "^[0-9]+-[0-9]+$"},
            },
        ],
        "security": [{"bearerAuth": []}, {"cookieAuth": []}, {"ticketAuth": []}],
        "responses": {
            "200": {
                "description": "The event stream (`Cache-Control: no-cache`, `X-Accel-Buffering: "
                "no`). `X-Streamgate-History: lost` when events before "
                "`Last-Event-ID` were trimmed.",
                "headers": {
                    "X-Streamgate-History": {
                        "description": "`lost` when part of the requested history is gone",
                        "schema": {"type": "string", "enum": ["lost"]},
                    }
                },
                "content": {
                    "text/event-stream": {
                        "schema": {
                            "type": "string",
                            "description": "`event: <name>`, `id: <id>`, `data: <HubEvent JSON>` "
                            "frames, per the WHATWG rules.",
                        },
                        "x-sse-events": {
                            name: {
                                "$ref": "#/components/schemas/"
                                + schema.__name__.removesuffix("Schema")
                            }
                            for name, schema in STREAM_EVENTS.items()
                        },
                        "x-sse-data": {"$ref": "#/components/schemas/HubEvent"},
                        "example": EVENTS_EXAMPLE,
                    }
                },
            },
            "400": _ref("BAD_REQUEST"),
            "401": _ref("UNAUTHORIZED"),
            "403": _ref("FORBIDDEN"),
            "204": {
                "description": "You resumed after the stream's terminal event: you have "
                "everything (a 204 tells EventSource to stop reconnecting).",
            },
            "410": _envelope(
                "410",
                "The stream was revoked, or its events expired "
                "(GET /v1/streams/<id> still has its text)",
                "Error",
            ),
            "429": _ref("TOO_MANY_REQUESTS"),
            "default": _ref("DEFAULT_ERROR"),
        },
    }


def _plain(
    tag: str, op_id: str, summary: str, content: dict[str, Any], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK", "content": content}}
    responses.update(extra or {})
    return {
        "tags": [tag],
        "operationId": op_id,
        "summary": summary,
        "security": [],
        "responses": responses,
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _plain_operations() -> dict[str, dict[str, Any]]:
    """The plain Flask routes (not smorest resources), documented here."""
    text = {"type": "string"}
    checks = {"type": "object", "additionalProperties": {"type": "string"}}
    return {
        "/healthz": {
            "get": _plain(
                "ops",
                "health_healthz",
                "The process is alive (no dependency is checked).",
                _json(
                    {
                        "type": "object",
                        "required": ["status"],
                        "properties": {"status": {"type": "string", "enum": ["ok"]}},
                    }
                ),
            )
        },
        "/readyz": {
            "get": _plain(
                "ops",
                "health_readyz",
                "Database, Redis and the model server each answer; 503 names what is down.",
                _json(
                    {
                        "type": "object",
                        "required": ["status", "checks"],
                        "properties": {
                            "status": {"type": "string", "enum": ["ok"]},
                            "checks": checks,
                        },
                    }
                ),
                {
                    "503": {
                        "description": "Something is down",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["status", "down", "checks"],
                                "properties": {
                                    "status": {"type": "string", "enum": ["unavailable"]},
                                    "down": {"type": "array", "items": text},
                                    "checks": checks,
                                },
                            }
                        ),
                    },
                },
            )
        },
        "/metrics": {
            "get": {
                **_plain(
                    "ops",
                    "metrics_metrics",
                    "Prometheus metrics (METRICS_TOKEN as a bearer "
                    "token, or a direct loopback client).",
                    {"text/plain": {"schema": text}},
                    {"403": _ref("FORBIDDEN")},
                ),
                "security": [{}, {"bearerAuth": []}],
            }
        },
        "/openapi.yaml": {
            "get": _plain(
                "docs",
                "docs_get_openapi",
                "This OpenAPI document.",
                {
                    "application/yaml": {
                        "schema": {"type": "object", "description": "This document"}
                    }
                },
            )
        },
        "/docs": {
            "get": _plain(
                "docs",
                "docs_get_docs",
                "The API reference (Swagger UI, no CDN).",
                {"text/html": {"schema": text}},
            )
        },
        "/": {
            "get": _plain(
                "docs",
                "web_playground",
                "The playground: log in, stream, stop, watch and revoke streams in a browser.",
                {"text/html": {"schema": text}},
            )
        },
        "/v1/events": {"get": _events_operation()},
    }


def build_spec(app: Flask) -> dict[str, Any]:
    """The complete OpenAPI document of ``app`` (a fresh dict; ``openapi_yaml`` caches its YAML)."""
    with app.app_context():
        spec = copy.deepcopy(api.spec.to_dict())
    endpoints = _endpoints(app)
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            if method in {"get", "put", "post", "delete", "patch"}:
                _decorate_operation(app, path, method, op, endpoints)
        chat_200 = item.get("post", {}).get("responses", {}).get("200")
        if path == "/v1/chat/completions" and chat_200 is not None:
            chat_200["description"] = (
                "`chat.completion` JSON, or with `stream: true` an event "
                "stream of `chat.completion.chunk`s."
            )
            chat_200.setdefault("content", {})["text/event-stream"] = _chat_stream_content()
    spec.setdefault("paths", {}).update(_plain_operations())

    components = spec.setdefault("components", {})
    _optional_bodies(spec)
    pagination = components.get("headers", {}).get("PAGINATION")
    if pagination and "schema" in pagination:
        # The header carries JSON: per OpenAPI that is ``content``, not a (comma-style) ``schema``.
        pagination["content"] = {"application/json": {"schema": pagination.pop("schema")}}
    components.setdefault("schemas", {}).update(_schema_components())
    responses = components.setdefault("responses", {})
    responses.update(_responses("Error"))
    responses.update({"OPENAI_" + name: value for name, value in _responses("OpenAIError").items()})
    responses["OPENAI_DEFAULT_ERROR"] = _envelope(
        "default", "Error in OpenAI's shape", "OpenAIError"
    )
    components.setdefault("headers", {}).update(RATE_LIMIT_HEADERS)
    components["securitySchemes"] = SECURITY_SCHEMES

    spec["info"]["description"] = DESCRIPTION
    spec["security"] = [{"bearerAuth": []}, {"cookieAuth": []}]
    known = {tag["name"] for tag in spec.get("tags", [])}
    for name, description in (
        ("events", "The delivery hub: channel events over Server-Sent Events"),
        ("ops", "Probes and metrics"),
        ("docs", "This document, the reference page and the playground"),
    ):
        if name not in known:
            spec.setdefault("tags", []).append({"name": name, "description": description})
    spec["tags"] = [tag for tag in spec.get("tags", []) if _tag_used(spec, tag["name"])]
    return spec


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
            if ref.startswith("#/components/schemas/"):
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


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (descriptions, SSE examples) as readable ``|`` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and "\r" not in value and not value.endswith(" ") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render_yaml(spec: dict[str, Any]) -> str:
    """Deterministic YAML: keys sorted, unicode kept, stable line width."""
    return yaml.dump(
        spec,
        Dumper=_Dumper,
        sort_keys=True,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )


def openapi_yaml(app: Flask) -> str:
    """``openapi.yaml`` of ``app``, built once per app."""
    cached = app.extensions.get(SPEC_EXTENSION)
    if cached is None:
        cached = render_yaml(build_spec(app))
        app.extensions[SPEC_EXTENSION] = cached
    return str(cached)


_DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Streamgate API reference</title>
  <link rel="stylesheet" href="{assets}swagger-ui.css">
  <link rel="icon" type="image/png" href="{assets}favicon-32x32.png">
  <style>body { margin: 0 } .topbar-note { font: 14px system-ui, sans-serif; padding: 8px 20px;
    background: #1f2430; color: #eee } .topbar-note a { color: #8cc8ff }</style>
</head>
<body>
  <div class="topbar-note">Streamgate API reference &middot; <a href="{spec}">openapi.yaml</a>
    &middot; <a href="/">playground</a></div>
  <div id="swagger-ui"></div>
  <script src="{assets}swagger-ui-bundle.js"></script>
  <script>
    function csrf() {
      var m = document.cookie.match(/(?:^|; )csrf_access_token=([^;]*)/);
      return m ? decodeURIComponent(m[1]) : null;
    }
    window.ui = SwaggerUIBundle({
      url: "{spec}",
      dom_id: "#swagger-ui",
      deepLinking: true,
      validatorUrl: null,
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout",
      // "Try it out" with the playground's cookie login: send the CSRF header it needs.
      requestInterceptor: function (req) {
        var token = csrf();
        if (token && req.method !== "GET") { req.headers["X-CSRF-TOKEN"] = token; }
        return req;
      }
    });
  </script>
</body>
</html>
"""
