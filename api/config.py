"""Configuration: the only module that reads ``os.environ``.

Every variable Streamgate understands is declared once in ``VARIABLES`` below; the README table
is generated from it (``flask config-table``) and a test keeps the two in step.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from api.upstream_config import settle_upstreams


class ConfigError(RuntimeError):
    """Raised at start-up when configuration is missing or malformed."""


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean, got {raw!r}")


def _csv(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def _hostports(raw: str) -> list[tuple[str, int]]:
    pairs = []
    for part in _csv(raw):
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{part!r} is not host:port")
        pairs.append((host, int(port)))
    return pairs


_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?$")


def _origins(raw: str) -> list[str]:
    origins = _csv(raw)
    for origin in origins:
        if not _ORIGIN.match(origin):
            raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path)")
    return origins


@dataclass(frozen=True)
class Var:
    """One environment variable: its name, default, parser and meaning."""

    name: str
    default: str | None
    parse: Callable[[str], Any]
    doc: str
    secret: bool = False

    @property
    def required(self) -> bool:
        return self.default is None


VARIABLES: tuple[Var, ...] = (
    # --- secrets and identity -------------------------------------------------------------
    Var("JWT_SECRET_KEY", None, str, "HMAC key that signs every JWT (HS256). Required; at least 32 characters.", secret=True),
    Var("JWT_ISSUER", "streamgate", str, "`iss` claim written and required on every token."),
    Var("JWT_AUDIENCE", "streamgate-api", str, "`aud` claim written and required on every token."),
    Var("JWT_ACCESS_TTL_S", "900", int, "Lifetime of an access token, seconds."),
    Var("JWT_REFRESH_TTL_S", "2592000", int, "Lifetime of a refresh token, seconds."),
    Var("APP_TOKEN_MAX_TTL_DAYS", "365", int, "Longest lifetime an admin may give an app token, days."),
    Var("JWT_COOKIE_SECURE", "true", _bool, "Mark auth cookies `Secure` (set `false` only for plain-http local runs)."),
    Var("JWT_COOKIE_SAMESITE", "Lax", str, "`SameSite` attribute of the auth cookies."),
    Var("LOGIN_MAX_FAILURES", "5", int, "Failed logins allowed per (account, client address) pair in `LOGIN_WINDOW_S`."),
    Var("LOGIN_MAX_ACCOUNT_FAILURES", "50", int, "Failed logins allowed per account from all addresses in `LOGIN_WINDOW_S` (the softer ceiling)."),
    Var("LOGIN_MAX_ADDRESS_FAILURES", "100", int, "Failed logins allowed per client address over all accounts in `LOGIN_WINDOW_S`."),
    Var("LOGIN_WINDOW_S", "900", int, "Window of the failed-login throttle, seconds."),
    Var("LOGIN_ACCOUNT_RPM", "10", int, "Login attempts (successful ones too) per account per minute."),
    Var("LOGIN_ADDRESS_RPM", "60", int, "Login attempts (successful ones too) per client address per minute."),
    Var("LOGIN_HASH_CONCURRENCY", "2", int, "Password hashes running at once per worker (in a thread pool, off the event loop)."),
    Var("PASSWORD_HASH_TIME_COST", "3", int, "argon2id passes for new password hashes (RFC 9106 low-memory profile: 3); a stored hash made with other parameters is re-hashed at its next login."),
    Var("PASSWORD_HASH_MEMORY_KIB", "65536", int, "argon2id memory for new password hashes, KiB (RFC 9106 low-memory profile: 64 MiB)."),
    Var("PASSWORD_HASH_PARALLELISM", "4", int, "argon2id lanes for new password hashes."),
    Var("CORS_ORIGINS", "", _origins, "Comma-separated origins (`https://app.example.com`) whose pages may call `/v1/` with a bearer token; empty = same-origin only. Never with cookies."),
    Var("EVENT_TICKET_TTL_S", "60", int, "Lifetime of a one-time `EventSource` ticket, seconds."),
    # --- backing services -----------------------------------------------------------------
    Var("DATABASE_URL", "sqlite:///instance/streamgate.db", str, "SQLAlchemy URL of the durable store (SQLite or `postgresql+psycopg://...`)."),
    Var("REDIS_URL", "redis://127.0.0.1:6390/0", str, "Redis for limits, revocation, live state and the event log."),
    Var("REDIS_CLUSTER", "false", _bool, "Redis is a Redis Cluster: `REDIS_URL` names any node (the seed); keys carry hash tags so each script stays on one slot."),
    Var("REDIS_SENTINELS", "", _hostports, "Comma-separated `host:port` of Redis Sentinels; when set, the master is found through them (`REDIS_URL` then gives only the database and password)."),
    Var("REDIS_SENTINEL_MASTER", "mymaster", str, "The master's name the Sentinels watch (with `REDIS_SENTINELS`)."),
    Var("REDIS_RETRY_S", "5", float, "How long a running generation waits out a Redis outage (e.g. a restart) before it fails, seconds."),
    Var("REDIS_POOL_SIZE", "64", int, "Redis connections per worker for requests and subscribers (the pool's wait past `REDIS_POOL_WAIT_S` is answered `503 overloaded`)."),
    Var("REDIS_RUNS_POOL_SIZE", "16", int, "Redis connections per worker for running generations (admission release, live state; their events go through the log writer's own connection)."),
    Var("REDIS_POOL_WAIT_S", "2", float, "Longest a request waits for a free Redis connection of its worker before it is refused as overloaded, seconds."),
    Var("OVERLOAD_LAG_MS", "250", float, "Refuse new generations and hub connections (`503 overloaded`) while this worker's event loop runs this late, smoothed, ms (0 = never)."),
    Var("OVERLOAD_LAG_SMOOTHING", "0.2", float, "Weight of each 50 ms event-loop lag sample in the smoothed lag (0-1]."),
    Var("OVERLOAD_MAX_RUNS", "0", int, "Optional hard cap on generations running in one worker (0 = no cap; the lag decides)."),
    Var("REDIS_FAIL_OPEN_RATE_LIMITS", "false", _bool, "When Redis is down, let request-rate limits pass (every other check still fails closed)."),
    Var("LLM_BASE_URL", "http://127.0.0.1:8081/v1", str, "OpenAI-compatible model server (vLLM, Ollama, llama.cpp, OpenAI)."),
    Var("LLM_API_KEY", "not-needed", str, "API key sent to the model server.", secret=True),
    Var("LLM_UPSTREAMS", "", str, "Several model servers: inline JSON or the path of a YAML/JSON file listing `{name, base_url, api_key?, models, weight?, max_concurrent?}` (see \"Model servers\"); replaces `LLM_BASE_URL`/`LLM_API_KEY` when set.", secret=True),
    Var("LLM_COOLDOWN_FAILURES", "3", int, "Consecutive failures that take a model server out of rotation (on every worker and node)."),
    Var("LLM_COOLDOWN_S", "30", float, "How long a failing model server stays out of rotation before one probe request, seconds."),
    Var("LLM_CONTINUOUS_USAGE_STATS", "false", _bool, "Ask the model server for usage on every streamed chunk (vLLM's `continuous_usage_stats`), so a generation stopped early is charged its prompt's real size; leave off for servers that refuse unknown `stream_options`."),
    Var("LLM_MODELS", "smollm2-135m-instruct", _csv, "Comma-separated models a new tenant may use by default."),
    Var("LLM_CONNECT_TIMEOUT_S", "5", float, "Connect timeout to the model server, seconds."),
    Var("LLM_READ_TIMEOUT_S", "60", float, "Longest wait for the first or next token from the model server, seconds."),
    Var("LLM_MAX_RETRIES", "0", int, "Retries of a failed upstream call before the first token."),
    # --- streaming ------------------------------------------------------------------------
    Var("SSE_HEARTBEAT_S", "15", float, "Interval of `ping` events / keep-alive comments on idle streams, seconds."),
    Var("SSE_COALESCE_MS", "20", float, "Channel mode: longest a token waits to be merged with the next ones, ms (0 = every token its own event)."),
    Var("SSE_COALESCE_BYTES", "512", int, "Channel mode: flush merged tokens once they reach this many bytes."),
    Var("SSE_RETRY_MS", "2000", int, "`retry:` hint sent to EventSource clients, ms."),
    Var("SSE_MAX_SUBSCRIPTIONS_PER_USER", "20", int, "Open hub connections one user may hold at once (429 past it)."),
    Var("SSE_SEND_TIMEOUT_S", "30", float, "A subscriber that does not read for this long is disconnected, seconds."),
    Var("HUB_DIRECT_WRITES", "true", _bool, "Under gunicorn's gevent worker, the hub takes each idle subscriber's connection from gunicorn (no greenlet per idle subscriber; one heartbeat loop per worker) and its reader writes each live event straight to the sockets (one shared HTTP chunk); `false` keeps a greenlet per subscriber that writes its own events (set it when gunicorn speaks `--protocol uwsgi`, whose bodies are not chunked)."),
    Var("STREAM_LOG_MAXLEN", "20000", int, "Most events kept in one stream's Redis log."),
    Var("USER_LOG_MAXLEN", "1000", int, "Most lifecycle events kept in one `users/<id>` or `tenants/<id>` log (none older than `STREAM_LOG_TTL_S`)."),
    Var("SSE_CONNECTS_PER_MINUTE", "1200", int, "Hub connections (`GET /v1/events`, reconnects included) one user may open per minute (429 past it)."),
    Var("STREAM_LOG_TTL_S", "3600", int, "How long a finished stream's log stays replayable, seconds."),
    Var("STREAM_LOG_REPAIR_S", "60", float, "Seconds each worker's log writer keeps the stream-log entries it appended, on a Redis Cluster or Sentinel, to append again (with the same ids) what a failover lost; keep it above what a failover takes (`cluster-node-timeout` or `down-after-milliseconds`, plus the election). `0` turns the repair off; a single Redis never needs it."),
    Var("STREAM_MAX_DURATION_S", "600", float, "A generation running longer than this is stopped and marked failed, seconds."),
    Var("LEASE_TTL_S", "30", int, "Concurrency lease lifetime; renewed while the stream runs, expires if its worker dies."),
    Var("IDEMPOTENCY_TTL_S", "86400", int, "How long a response is kept for replay to a request with the same `Idempotency-Key`, seconds."),
    Var("IDEMPOTENCY_WAIT_S", "10", float, "Longest a duplicate waits for the first request with its `Idempotency-Key` to finish before `409`, seconds."),
    Var("WEBHOOK_ALLOW_PRIVATE", "false", _bool, "Let webhook URLs resolve to private, loopback or link-local addresses (tests, on-premises receivers)."),
    Var("WEBHOOK_TIMEOUT_S", "5", float, "Timeout of one webhook attempt (connect, send, each read), seconds."),
    Var("WEBHOOK_MAX_ATTEMPTS", "8", int, "Attempts of one webhook delivery before it is marked failed."),
    Var("WEBHOOK_RETRY_BASE_S", "2", float, "Wait after the first failed webhook attempt, doubled after each next one, seconds."),
    Var("WEBHOOK_SWEEP_S", "30", float, "How often each worker takes over webhook deliveries whose worker stopped, seconds."),
    # --- request bounds -------------------------------------------------------------------
    Var("MAX_BODY_BYTES", "1048576", int, "Largest accepted request body, bytes (413 past it)."),
    Var("MAX_MESSAGES", "256", int, "Most messages in one chat request."),
    Var("MAX_PROMPT_CHARS", "200000", int, "Most characters across all messages of one request."),
    Var("MAX_TOKENS_CAP", "4096", int, "Highest `max_tokens` a request may ask for."),
    Var("DEFAULT_MAX_TOKENS", "512", int, "`max_tokens` used when a request gives none."),
    # --- limits (defaults; tenants and users may be given their own) ----------------------
    Var("LIMIT_USER_RPM", "120", int, "Requests per minute per user."),
    Var("LIMIT_USER_CONCURRENT", "8", int, "Concurrent streams per user."),
    Var("LIMIT_USER_TPM", "100000", int, "Tokens per minute per user."),
    Var("LIMIT_USER_TPD", "2000000", int, "Tokens per day per user."),
    Var("LIMIT_TENANT_RPM", "1200", int, "Requests per minute per tenant."),
    Var("LIMIT_TENANT_CONCURRENT", "64", int, "Concurrent streams per tenant."),
    Var("LIMIT_TENANT_TPM", "1000000", int, "Tokens per minute per tenant."),
    Var("LIMIT_TENANT_TPD", "20000000", int, "Tokens per day per tenant."),
    # --- operations -----------------------------------------------------------------------
    Var("LOG_LEVEL", "INFO", str, "Python log level."),
    Var("LOG_FORMAT", "json", str, "`json` (one object a line) or `text`."),
    Var("METRICS_TOKEN", "", str, "Bearer token required by `/metrics`; empty serves it to loopback clients only.", secret=True),
    Var("TRUSTED_PROXIES", "0", int, "How many reverse proxies set `X-Forwarded-For` in front of the app."),
)

_BY_NAME = {var.name: var for var in VARIABLES}


def load_config(environ: Mapping[str, str] | None = None, *, testing: bool = False) -> dict[str, Any]:
    """Parse every declared variable from ``environ``; raise ConfigError naming what is wrong."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    missing: list[str] = []
    for var in VARIABLES:
        raw = env.get(var.name)
        if raw is None or (raw == "" and var.required):
            if var.required:
                if not testing:
                    missing.append(var.name)
                continue
            raw = var.default or ""
        try:
            values[var.name] = var.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{var.name}: {exc}") from exc
    try:
        settle_upstreams(values, env, models_given="LLM_MODELS" in env)
    except ValueError as exc:
        raise ConfigError(f"LLM_UPSTREAMS: {exc}") from exc
    if missing:
        raise ConfigError(
            "missing required environment variable(s): "
            + ", ".join(missing)
            + " (see the configuration table in README.md)"
        )
    secret = values.get("JWT_SECRET_KEY")
    if secret is not None and len(secret) < 32:
        raise ConfigError("JWT_SECRET_KEY: must be at least 32 characters")
    return values


def resolve_upstreams(values: dict[str, Any], models_given: bool) -> None:
    """Parse an ``LLM_UPSTREAMS`` given as text after ``load_config`` (``create_app(config)``)."""
    try:
        settle_upstreams(values, os.environ, models_given)
    except ValueError as exc:
        raise ConfigError(f"LLM_UPSTREAMS: {exc}") from exc


def markdown_table() -> str:
    """The README's configuration table, generated from ``VARIABLES``."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for var in VARIABLES:
        default = "**required**" if var.required else (f"`{var.default}`" if var.default else "(empty)")
        rows.append(f"| `{var.name}` | {default} | {var.doc} |")
    return "\n".join(rows)


def variable(name: str) -> Var:
    """Look up one declared variable."""
    return _BY_NAME[name]
