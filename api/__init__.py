"""Streamgate's composition root: ``create_app`` reads like a table of contents.

gunicorn runs ``'api:create_app()'``; nothing here connects to anything at import time.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, request
from sqlalchemy import event
from sqlalchemy.engine import Engine
from werkzeug.middleware.proxy_fix import ProxyFix

from api.config import load_config, resolve_upstreams
from api.errors import error_response, register_error_handlers
from api.extensions import api, migrate
from api.logs import configure_logging
from core.store import REDIS_EXTENSION, RUNS_REDIS_EXTENSION, RedisTarget, db, redis_client
from streaming.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
access_log = logging.getLogger("streamgate.access")


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build a Streamgate app from the environment, overlaid with ``config`` (tests)."""
    overrides = dict(config or {})
    app = Flask(__name__, instance_path=str(ROOT / "instance"))
    app.config.update(load_config(testing=bool(overrides.get("TESTING"))))
    app.config.update(overrides)
    if "LLM_UPSTREAMS" in overrides:
        resolve_upstreams(app.config, models_given="LLM_MODELS" in overrides)
    _derive_settings(app)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    configure_logging(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])

    if app.config["TRUSTED_PROXIES"] > 0:
        # Client addresses (login throttle, logs) come from X-Forwarded-For set by our own proxies.
        n = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    _init_extensions(app)
    register_error_handlers(app)
    _register_blueprints(app)
    _register_request_hooks(app)
    _register_cli(app)
    if not app.config["TESTING"]:
        from api.services.generations import check_served_models

        check_served_models(app)
    return app


def _sqlite_url(url: str) -> str:
    # "sqlite:///instance/x.db" is relative to the project, not to whatever directory gunicorn
    # or flask was started from.
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        path = ROOT / url[len(prefix) :]
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path)
    return url


def _derive_settings(app: Flask) -> None:
    """Translate Streamgate's variables into the settings its extensions read."""
    cfg = app.config
    cfg["SQLALCHEMY_DATABASE_URI"] = _sqlite_url(cfg["DATABASE_URL"])
    # hide_parameters: SQL errors in the log never carry bound values (emails, hashes, text).
    engine_options: dict[str, Any] = {"pool_pre_ping": True, "hide_parameters": True}
    if cfg["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        engine_options["connect_args"] = {"timeout": 15}
    else:
        engine_options.update(pool_size=10, max_overflow=20, pool_timeout=10)
    cfg.setdefault("SQLALCHEMY_ENGINE_OPTIONS", engine_options)
    cfg["MAX_CONTENT_LENGTH"] = cfg["MAX_BODY_BYTES"]

    # flask-jwt-extended: algorithm pinned, exp/iss/aud required, header or cookie, CSRF on cookies.
    cfg["JWT_ALGORITHM"] = "HS256"
    cfg["JWT_DECODE_ALGORITHMS"] = ["HS256"]
    cfg["JWT_TOKEN_LOCATION"] = ["headers", "cookies"]
    cfg["JWT_ACCESS_TOKEN_EXPIRES"] = timedelta(seconds=cfg["JWT_ACCESS_TTL_S"])
    cfg["JWT_REFRESH_TOKEN_EXPIRES"] = timedelta(seconds=cfg["JWT_REFRESH_TTL_S"])
    cfg["JWT_ENCODE_ISSUER"] = cfg["JWT_DECODE_ISSUER"] = cfg["JWT_ISSUER"]
    cfg["JWT_ENCODE_AUDIENCE"] = cfg["JWT_DECODE_AUDIENCE"] = cfg["JWT_AUDIENCE"]
    cfg["JWT_COOKIE_CSRF_PROTECT"] = True
    cfg["JWT_CSRF_CHECK_FORM"] = False
    cfg["JWT_ACCESS_COOKIE_NAME"] = "sg_access"
    cfg["JWT_REFRESH_COOKIE_NAME"] = "sg_refresh"
    cfg["JWT_REFRESH_COOKIE_PATH"] = "/v1/auth/"
    cfg["JWT_ERROR_MESSAGE_KEY"] = "message"

    # flask-smorest / apispec: the spec is generated from the schemas (make openapi).
    cfg.setdefault("API_TITLE", "Streamgate")
    cfg.setdefault("API_VERSION", "1.0.0")
    cfg.setdefault("OPENAPI_VERSION", "3.1.0")
    cfg.setdefault("OPENAPI_URL_PREFIX", None)  # served by api.routes.docs instead


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the app's workers and the test process read while one writes. synchronous=NORMAL
    # is WAL's usual pairing: a commit no longer waits for an fsync (which blocked the whole
    # gevent worker, every stream on it); a power loss may lose the last commits, never corrupt.
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def _init_extensions(app: Flask) -> None:
    from api.cors import init_cors
    from auth.tokens import init_jwt
    from streaming import limits
    from streaming.upstreams import EXTENSION as UPSTREAMS
    from streaming.upstreams import build_router

    db.init_app(app)
    migrate.init_app(app, db, directory=str(ROOT / "migrations"))
    api.init_app(app)
    init_jwt(app, error_response)
    init_cors(app)
    # Two bounded pools per process (per Redis node on a Cluster): requests (subscribers
    # included) and generations. The log writer of channel mode has one connection of its own
    # (streaming.log), the hub reader one more (streaming.control).
    cfg = app.config
    target = RedisTarget.from_config(cfg)
    app.extensions[REDIS_EXTENSION] = redis_client(
        target, cfg["REDIS_POOL_SIZE"], cfg["REDIS_POOL_WAIT_S"]
    )
    app.extensions[RUNS_REDIS_EXTENSION] = redis_client(
        target, cfg["REDIS_RUNS_POOL_SIZE"], cfg["REDIS_POOL_WAIT_S"]
    )
    app.extensions["streamgate.metrics"] = Metrics()
    app.extensions[UPSTREAMS] = build_router(app.config)  # one connection pool per model server
    limits.install(app)  # reached as streaming.limits.admission_control(app)


def _register_blueprints(app: Flask) -> None:
    from api.routes import (
        admin,
        chat,
        conversations,
        docs,
        health,
        limits_admin,
        metrics,
        models,
        streams,
        tokens,
        usage,
        webhooks,
    )
    from api.routes import auth as auth_routes
    from api.web import bp as web_bp
    from streaming.hub import hub

    for blueprint in (
        auth_routes.bp,
        tokens.bp,
        chat.bp,
        models.bp,
        streams.bp,
        conversations.bp,
        usage.bp,
        admin.bp,
        limits_admin.bp,
        webhooks.bp,
    ):
        api.register_blueprint(blueprint)
    # Plain Flask blueprints: not JSON resources, documented by hand in the spec.
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(web_bp)
    app.register_blueprint(hub, url_prefix="/v1/events")


def _register_request_hooks(app: Flask) -> None:
    from api.limits import charge_refused_request, refuse_when_overloaded

    proxy_warned = False

    @app.before_request
    def warn_unconfigured_proxy() -> None:
        # Behind a proxy with TRUSTED_PROXIES=0 every client has the proxy's address: one login
        # throttle for everybody. Say so loudly, once per worker.
        nonlocal proxy_warned
        if not proxy_warned and app.config["TRUSTED_PROXIES"] == 0:
            if "X-Forwarded-For" in request.headers:
                proxy_warned = True
                access_log.critical(
                    "X-Forwarded-For received but TRUSTED_PROXIES=0: client addresses are the "
                    "proxy's, so the login throttle and logs see one client. Set TRUSTED_PROXIES "
                    "to the number of proxies in front of Streamgate."
                )

    @app.before_request
    def assign_request_id() -> None:
        supplied = request.headers.get("X-Request-Id", "")
        g.request_id = supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex
        g.started = time.perf_counter()

    app.before_request(refuse_when_overloaded)  # after the request id: refusals carry one

    @app.after_request
    def stamp_response(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id", "")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if not response.is_streamed:
            access_log.info(
                "%s %s %s",
                request.method,
                request.path,
                response.status_code,
                extra={
                    "method": request.method,
                    "path": request.path,
                    "status": response.status_code,
                    "duration_ms": round(
                        (time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2
                    ),
                },
            )
        return response

    # Registered last, so it runs first (after_request runs in reverse): a 429 it returns
    # still gets the request id and the access-log line.
    app.after_request(charge_refused_request)


def _register_cli(app: Flask) -> None:
    from api.cli import register_cli

    register_cli(app)
