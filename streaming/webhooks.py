"""Completion webhooks: when a channel-mode stream ends, POST its terminal event to the app.

- **Where.** A stream's ``webhook_url`` must be on its tenant's allow-list of origins (set by an
  admin) and must not resolve to a private, loopback, link-local or otherwise non-global address
  unless ``WEBHOOK_ALLOW_PRIVATE`` (tests, on-premises). The address is checked when the stream is
  started and again at every attempt, and the request goes to the address that was checked (no
  second lookup a DNS rebinding could answer differently); redirects are not followed.
- **What.** The terminal event (``stream.completed`` / ``failed`` / ``cancelled`` / ``revoked``)
  with its usage, signed Standard-Webhooks style: ``Streamgate-Signature: v1,<base64 HMAC-SHA256
  over "<id>.<timestamp>.<body>">`` with the tenant's ``whsec_`` secret, ``Streamgate-Id`` (the
  same on every attempt: de-duplicate on it) and ``Streamgate-Timestamp``. The ``webhook-*``
  headers of the Standard Webhooks libraries carry the same values.
- **How.** ``enqueue`` (called by ``runner.settle``, so by the reaper too) writes the delivery to
  SQL and delivers it from a background greenlet: the run never waits for the receiver. Each
  attempt has ``WEBHOOK_TIMEOUT_S``; a non-2xx answer or a network error is retried with
  exponential backoff (``WEBHOOK_RETRY_BASE_S`` doubling) up to ``WEBHOOK_MAX_ATTEMPTS``, then
  the delivery is ``failed``. Every attempt is recorded on the row (the tenant admin reads them).
- **Worker restarts.** The delivering worker holds a lease on the row (``lease_until``); each
  worker's sweeper picks up pending rows whose lease ran out (their worker stopped) and goes on
  from the attempts already made. So a delivery survives a restart at the cost of one indexed
  query per ``WEBHOOK_SWEEP_S``; at least once, never lost while SQL is.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import threading
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from flask import Flask, current_app
from sqlalchemy import or_, select, update

from auth.models import Tenant
from core.errors import ApiError
from core.store import db, new_id, utcnow
from core.tls import tls_context
from streaming.generation import Generation, Outcome, terminal_event
from streaming.greenlets import spawn
from streaming.models import WebhookDelivery

log = logging.getLogger("streamgate.webhooks")

SIGNATURE_HEADER = "Streamgate-Signature"
ID_HEADER = "Streamgate-Id"
TIMESTAMP_HEADER = "Streamgate-Timestamp"
MAX_URL_LENGTH = 2048
_DEFAULT_PORTS = {"http": 80, "https": 443}
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# --- secrets and signatures ---------------------------------------------------------------------


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and 32 random bytes in base64 (Standard Webhooks)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``Streamgate-Signature`` value: ``v1,`` and the base64 HMAC-SHA256 of
    ``<id>.<timestamp>.<body>`` keyed with the secret's bytes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


# --- where a webhook may go -----------------------------------------------------------------------


def normalize_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case with the default port left out; None if malformed."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username is not None:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    return _origin(parts.scheme, parts.hostname, port)


def _origin(scheme: str, host: str, port: int | None) -> str:
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    return f"{scheme}://{netloc.lower()}"


def _refuse(message: str, code: str) -> ApiError:
    return ApiError(400, message, code=code, errors={"webhook_url": [message]})


def check_url(url: str, allowed_origins: list[str] | None, allow_private: bool) -> str:
    """``url`` if a stream may send its webhook there, else a 400 that says why."""
    if len(url) > MAX_URL_LENGTH:
        raise _refuse(f"At most {MAX_URL_LENGTH} characters.", "invalid_webhook_url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _refuse("Not a valid URL.", "invalid_webhook_url") from exc
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise _refuse("Use an absolute http(s) URL.", "invalid_webhook_url")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise _refuse("No credentials or fragment in the URL.", "invalid_webhook_url")
    origin = _origin(parts.scheme, parts.hostname, port)
    if origin not in (allowed_origins or []):
        raise _refuse(
            f"The origin {origin} is not on this tenant's webhook allow-list "
            "(an admin sets it with PUT /v1/admin/webhooks).",
            "webhook_origin_not_allowed",
        )
    addresses(parts.hostname, port or _DEFAULT_PORTS[parts.scheme], allow_private)
    return url


def addresses(host: str, port: int, allow_private: bool) -> list[IpAddress]:
    """The addresses ``host`` resolves to, all of them allowed; else a 400."""
    try:
        found = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise _refuse(f"The host {host} does not resolve.", "webhook_unresolvable") from exc
        found = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not found:
        raise _refuse(f"The host {host} does not resolve.", "webhook_unresolvable")
    if not allow_private:
        refused = [str(ip) for ip in found if not _public(ip)]
        if refused:
            raise _refuse(
                f"The host {host} resolves to a private, loopback or reserved address "
                f"({', '.join(refused)}); webhooks go to public addresses only.",
                "webhook_address_refused",
            )
    return found


def _public(ip: IpAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


# --- enqueue and deliver ------------------------------------------------------------------------


def enqueue(
    app: Flask, gen: Generation, outcome: Outcome, prompt_tokens: int, completion_tokens: int
) -> None:
    """Record the terminal event's delivery and start delivering it in the background."""
    if not gen.webhook_url:
        return
    event, data = terminal_event(outcome, prompt_tokens, completion_tokens)
    delivery_id = new_id("msg")
    payload = {
        "id": delivery_id,
        "type": event,
        "created_at": utcnow().isoformat(),
        "data": {
            "stream_id": gen.stream_id,
            "status": outcome.status,
            "model": gen.model,
            "user_id": gen.user_id,
            **data,
        },
    }
    cfg = app.config
    try:
        db.session.add(
            WebhookDelivery(
                id=delivery_id,
                tenant_id=gen.tenant_id,
                stream_id=gen.stream_id,
                url=gen.webhook_url,
                event=event,
                payload=json.dumps(payload, separators=(",", ":")),
                attempts=[],
                lease_until=utcnow() + timedelta(seconds=_lease_s(cfg, 0)),
            )
        )
        db.session.commit()
    except Exception:  # noqa: BLE001 - a webhook must never fail the stream's settlement
        db.session.rollback()
        log.exception("webhook of %s not recorded", gen.stream_id)
        return
    finally:
        db.session.remove()
    spawn(deliver, app, delivery_id, name="streamgate-webhook")


def _lease_s(cfg: Any, attempt: int) -> float:
    return float(cfg["WEBHOOK_TIMEOUT_S"]) * 3 + _backoff_s(cfg, attempt) + 30


def _backoff_s(cfg: Any, attempt: int) -> float:
    return float(cfg["WEBHOOK_RETRY_BASE_S"]) * float(2 ** min(attempt, 16))


def deliver(app: Flask, delivery_id: str) -> None:
    """Attempt a delivery until it succeeds or runs out of attempts (a background greenlet)."""
    with app.app_context():
        try:
            _deliver(delivery_id)
        except Exception:  # noqa: BLE001 - the sweeper takes it up again once the lease ends
            db.session.rollback()
            log.exception("webhook %s: delivery stopped", delivery_id)
        finally:
            db.session.remove()


def _deliver(delivery_id: str) -> None:
    cfg = current_app.config
    while True:
        row = db.session.get(WebhookDelivery, delivery_id)
        if row is None or row.status != "pending":
            return
        done = len(row.attempts or [])
        if done >= int(cfg["WEBHOOK_MAX_ATTEMPTS"]):
            row.status, row.lease_until = "failed", None
            db.session.commit()
            log.warning("webhook %s failed after %d attempts", row.id, done)
            return
        tenant = db.session.get(Tenant, row.tenant_id)
        secret = tenant.webhook_secret if tenant is not None else None
        url, body = row.url, row.payload.encode()
        row.lease_until = utcnow() + timedelta(seconds=_lease_s(cfg, done))
        db.session.commit()
        db.session.remove()  # no connection held while the receiver takes its time

        result = _attempt(url, delivery_id, body, secret, cfg)

        row = db.session.get(WebhookDelivery, delivery_id)
        if row is None:
            return
        row.attempts = [*(row.attempts or []), result]
        if result["ok"]:
            row.status, row.delivered_at, row.lease_until = "delivered", utcnow(), None
            db.session.commit()
            return
        db.session.commit()
        db.session.remove()
        if done + 1 < int(cfg["WEBHOOK_MAX_ATTEMPTS"]):
            time.sleep(_backoff_s(cfg, done))  # cooperative under gevent: a timer, no CPU


def _attempt(
    url: str, delivery_id: str, body: bytes, secret: str | None, cfg: Any
) -> dict[str, Any]:
    """One POST; what happened, as recorded on the delivery."""
    started = time.monotonic()
    at = utcnow().isoformat()
    try:
        if secret is None:
            raise _refuse("The tenant has no webhook secret.", "webhook_not_configured")
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
        host = parts.hostname or ""
        ip = addresses(host, port, bool(cfg["WEBHOOK_ALLOW_PRIVATE"]))[0]
        target = urlunsplit(
            parts._replace(netloc=(f"[{ip}]" if ip.version == 6 else str(ip)) + f":{port}")
        )
        timestamp = int(time.time())
        signature = sign(secret, delivery_id, timestamp, body)
        headers = {
            "Host": parts.netloc,
            "Content-Type": "application/json",
            "User-Agent": "Streamgate-Webhooks/1",
            ID_HEADER: delivery_id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: signature,
            "webhook-id": delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
        }
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        with httpx.Client(
            timeout=float(cfg["WEBHOOK_TIMEOUT_S"]),
            follow_redirects=False,
            trust_env=False,
            verify=tls_context(trust_env=False),
        ) as client:
            # The answer's body is never read: a receiver cannot make us download anything.
            with client.stream(
                "POST", target, content=body, headers=headers, extensions=extensions
            ) as response:
                status = response.status_code
        ok = 200 <= status < 300
        return _result(at, started, ok, status=status, error=None if ok else f"HTTP {status}")
    except ApiError as exc:
        return _result(at, started, False, error=exc.message)
    except httpx.TimeoutException:
        return _result(at, started, False, error="timeout")
    except httpx.HTTPError as exc:
        return _result(at, started, False, error=type(exc).__name__)


def _result(
    at: str, started: float, ok: bool, *, status: int | None = None, error: str | None = None
) -> dict[str, Any]:
    return {
        "at": at,
        "ok": ok,
        "status": status,
        "error": error,
        "duration_ms": round((time.monotonic() - started) * 1000),
    }


# --- the sweeper: deliveries whose worker stopped -----------------------------------------------


def sweep(app: Flask, limit: int = 20) -> int:
    """Take over pending deliveries whose lease ran out; how many were taken."""
    taken = 0
    lease = WebhookDelivery.lease_until
    with app.app_context():
        try:
            now = utcnow()
            stale = db.session.scalars(
                select(WebhookDelivery.id)
                .where(WebhookDelivery.status == "pending")
                .where(or_(lease.is_(None), lease < now))
                .limit(limit)
            ).all()
            for delivery_id in stale:
                claimed = db.session.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id == delivery_id)
                    .where(WebhookDelivery.status == "pending")
                    .where(or_(lease.is_(None), lease < now))
                    .values(lease_until=now + timedelta(seconds=_lease_s(app.config, 0)))
                )
                db.session.commit()
                if getattr(claimed, "rowcount", 0) == 1:  # another worker may have been first
                    taken += 1
                    spawn(deliver, app, delivery_id, name="streamgate-webhook")
        except Exception:  # noqa: BLE001 - the next sweep tries again
            db.session.rollback()
            log.exception("webhook sweep failed")
        finally:
            db.session.remove()
    return taken


def start_sweeper(app: Flask, stopping: threading.Event) -> None:
    """Sweep every ``WEBHOOK_SWEEP_S`` until ``stopping`` is set (one per worker)."""
    interval = float(app.config["WEBHOOK_SWEEP_S"])

    def loop() -> None:
        while not stopping.wait(interval):
            sweep(app)

    spawn(loop, name="streamgate-webhook-sweeper")
