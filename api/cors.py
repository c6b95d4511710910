"""Browsers on other origins (flask-cors): bearer tokens only, never cookies cross-origin.

``CORS_ORIGINS`` lists the origins allowed to call ``/v1/`` from a page; empty (the default)
keeps the API same-origin only. ``supports_credentials`` stays off, so a browser never sends the
auth cookie cross-origin and the cookie's CSRF protection is not weakened: another origin must
present ``Authorization: Bearer`` or, for ``EventSource``, a one-time ticket.
"""

from __future__ import annotations

from flask import Flask, Response, current_app, request
from flask_cors import CORS

ALLOW_HEADERS = [
    "Authorization",
    "Content-Type",
    "Last-Event-ID",
    "Idempotency-Key",
    "X-Request-Id",
]
EXPOSE_HEADERS = [
    "X-Stream-Id",
    "X-Request-Id",
    "X-Streamgate-History",
    "Idempotent-Replayed",
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
]
METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE", "OPTIONS"]


def init_cors(app: Flask) -> None:
    """Allow ``CORS_ORIGINS`` to call the API with a bearer header; nothing when it is empty."""
    origins: list[str] = app.config["CORS_ORIGINS"]
    if not origins:
        return
    # Registered before every other hook: a preflight carries no credentials, so the hub's gate
    # (401) and the load shedder must not answer it; flask-cors adds its headers to this reply.
    app.before_request_funcs.setdefault(None, []).insert(0, _answer_preflight)
    CORS(
        app,
        resources={r"/v1/*": {}},
        origins=origins,
        methods=METHODS,
        allow_headers=ALLOW_HEADERS,
        expose_headers=EXPOSE_HEADERS,
        supports_credentials=False,
        max_age=600,
        vary_header=True,
    )


def _answer_preflight() -> Response | None:
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return current_app.make_default_options_response()
    return None
