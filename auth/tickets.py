"""One-time tickets for ``EventSource`` on other origins (it cannot send an Authorization header).

``POST /v1/events/tickets {channel}`` exchanges the caller's token for a random ticket valid
``EVENT_TICKET_TTL_S`` seconds, for that channel, once. The ticket is the only credential ever
accepted in a URL; it carries the claims of the token it came from, so revoking that token (or
its user or tenant) also kills an unredeemed ticket and the connection it opened, and a ticket
never outlives the token's ``exp``: it is refused at redemption once the token has expired.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from flask import current_app

from auth.tokens import auth_error, is_revoked
from core.errors import ApiError
from core.store import get_redis

_KEY = "sg:ticket:{}"
_CLAIMS = ("sub", "tenant", "role", "scopes", "kind", "jti", "exp", "iat_ms", "ver", "sid")


def issue_ticket(claims: dict[str, Any], channel: str) -> tuple[str, int]:
    """Store a ticket for ``channel``; returns it and its lifetime in seconds."""
    ttl = min(int(current_app.config["EVENT_TICKET_TTL_S"]), int(claims["exp"] - time.time()))
    if ttl < 1:
        raise auth_error("Token has expired")
    ticket = secrets.token_urlsafe(32)
    record = {"channel": channel, "claims": {k: claims.get(k) for k in _CLAIMS}}
    get_redis().set(_KEY.format(ticket), json.dumps(record), ex=ttl)
    return ticket, ttl


def redeem_ticket(ticket: str, channel: str) -> dict[str, Any]:
    """Consume a ticket (once) and return the claims it carries; 401 if unusable."""
    if not ticket or len(ticket) > 100:
        raise auth_error("Invalid or expired ticket")
    raw = get_redis().getdel(_KEY.format(ticket))
    if raw is None:
        raise auth_error("Invalid or expired ticket")
    record = json.loads(raw)
    if record.get("channel") != channel:
        raise ApiError(403, "This ticket is for another channel.", code="ticket_channel_mismatch")
    claims: dict[str, Any] = record["claims"]
    if not isinstance(claims.get("exp"), int) or claims["exp"] <= time.time():
        raise auth_error("Token has expired")
    if is_revoked(claims):
        raise auth_error("Token has been revoked")
    return claims
