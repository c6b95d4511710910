"""SQL is the source of truth for every revocation; this module re-seeds Redis from it.

Redis holds the fast-path copy (``auth.tokens``): the jti and session blocklists, the user and
tenant cutoffs and the users' token versions. Every writer commits to SQL first and then writes
Redis; when Redis loses its keys (a restart without persistence, a flush, an eviction) the
seeded sentinel disappears with them and the next check calls ``reseed`` before answering.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import or_, select

from auth.models import AppToken, AuthSession, RevokedToken, Tenant, User
from core.store import db, get_redis, is_cluster, topology_epoch, utcnow

log = logging.getLogger("streamgate.auth")
DISABLED_CUTOFF_MS = 2**62  # "every token is before this": the account is disabled
_JTI_KEY = "sg:rv:jti:{}"
_USER_KEY = "sg:rv:user:{}"
_TENANT_KEY = "sg:rv:tenant:{}"
_VERSION_KEY = "sg:rv:ver:{}"
_SESSION_KEY = "sg:rv:sid:{}"
SEEDED_KEY = "sg:rv:seeded"
EPOCH_KEY = "sg:rv:epoch:{}"  # claimed by the one worker that re-seeds after a failover
_epoch: list[str | None] = [None]  # the topology epoch this process saw last
_lock = threading.Lock()  # gevent-patched under gunicorn: one re-seed per worker at a time


# --- the Redis fast path ----------------------------------------------------------------------

# KEYS[1]: a counter-like key. ARGV[1]: a value. Keep the larger of the two: a re-seed or a late
# writer never lowers a cutoff or a version another writer raised.
_RAISE = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
return 0
"""


def revoke_jti(jti: str, expires_at: float) -> None:
    """Block one token until it would have expired anyway."""
    ttl = max(1, int(expires_at - time.time()) + 1)
    get_redis().set(_JTI_KEY.format(jti), "1", ex=ttl)


def revoke_session_key(session_id: str, expires_at: float) -> None:
    """Block every token of one session (its refresh family and its access tokens)."""
    ttl = max(1, int(expires_at - time.time()) + 1)
    get_redis().set(_SESSION_KEY.format(session_id), "1", ex=ttl)


def revoke_user_tokens(user_id: str, *, disable: bool = False) -> None:
    """Every token the user holds now stops working (``disable``: and every future one)."""
    cutoff = DISABLED_CUTOFF_MS if disable else int(time.time() * 1000) + 1
    get_redis().set(_USER_KEY.format(user_id), cutoff)


def raise_user_version(user_id: str, version: int) -> None:
    """Refuse the user's tokens signed under a version below ``version`` (after the commit)."""
    get_redis().register_script(_RAISE)(keys=[_VERSION_KEY.format(user_id)], args=[version])


def raise_user_cutoff(user_id: str, cutoff_ms: int) -> None:
    """Raise (never lower) the user's cutoff: the re-seed's write."""
    get_redis().register_script(_RAISE)(keys=[_USER_KEY.format(user_id)], args=[cutoff_ms])


def raise_tenant_cutoff(tenant_id: str, cutoff_ms: int) -> None:
    """Raise (never lower) the tenant's cutoff: the re-seed's write."""
    get_redis().register_script(_RAISE)(keys=[_TENANT_KEY.format(tenant_id)], args=[cutoff_ms])


def set_tenant_disabled(tenant_id: str, disabled: bool) -> None:
    """Disabling a tenant revokes every token of every user in it."""
    cutoff = DISABLED_CUTOFF_MS if disabled else int(time.time() * 1000) + 1
    get_redis().set(_TENANT_KEY.format(tenant_id), cutoff)


def _revocation_keys(payload: dict[str, Any]) -> tuple[str, ...]:
    return (
        _JTI_KEY.format(payload.get("jti")),
        _USER_KEY.format(payload.get("sub")),
        _TENANT_KEY.format(payload.get("tenant")),
        _VERSION_KEY.format(payload.get("sub")),
        _SESSION_KEY.format(payload.get("sid")),
        SEEDED_KEY,
    )


def _revoked(payload: dict[str, Any], values: list[Any]) -> bool:
    jti_hit, user_cutoff, tenant_cutoff, version, session_hit, _seeded = values
    if jti_hit is not None or (payload.get("sid") is not None and session_hit is not None):
        return True
    signed_under = payload.get("ver", 0)
    if version is not None and (not isinstance(signed_under, int) or signed_under < int(version)):
        return True
    issued = payload.get("iat_ms")
    if not isinstance(issued, int):
        issued = 0  # malformed: treat as older than any cutoff (the claim check refuses it anyway)
    return any(
        cutoff is not None and issued < int(cutoff) for cutoff in (user_cutoff, tenant_cutoff)
    )


def _fetch(payloads: list[dict[str, Any]]) -> list[list[Any]]:
    client = get_redis()
    pipe = client.pipeline(transaction=False)
    if not is_cluster(client):
        for payload in payloads:
            pipe.mget(*_revocation_keys(payload))
        return list(pipe.execute())
    # On a Cluster the keys live on several slots: one GET each, still one round trip (the
    # pipeline writes to every node it needs before it reads any answer).
    width = len(_revocation_keys({}))
    for payload in payloads:
        for key in _revocation_keys(payload):
            pipe.get(key)
    flat = list(pipe.execute())
    return [flat[i : i + width] for i in range(0, len(flat), width)]


def revoked_among(payloads: list[dict[str, Any]]) -> list[bool]:
    """``is_revoked`` for many tokens in one round trip (the hub re-checks its open connections).

    Redis without the seeded sentinel has lost keys: it is re-seeded from SQL before answering.
    """
    if not payloads:
        return []
    rows = _fetch(payloads)
    if any(values[-1] is None for values in rows):
        try:
            reseed()  # SQL reads: only when Redis has lost its state
        except redis.RedisError:
            # Redis lost its state and cannot take it back (read-only replica, out of memory):
            # SQL answers alone until it can.
            log.warning("revocation state not re-seeded (Redis refuses writes): checking SQL")
            return [_revoked_in_sql(payload) for payload in payloads]
        rows = _fetch(payloads)
    return [_revoked(p, values) for p, values in zip(payloads, rows, strict=True)]


_READ_BY_THE_CHECK = ("jti", "sub", "tenant", "sid", "ver", "iat_ms")


def recheck_claims(payload: dict[str, Any]) -> dict[str, Any]:
    """The part of a token's claims ``revoked_among`` reads: what an open connection keeps for
    its re-checks (the rest of a decoded token is a kilobyte or two per connection)."""
    return {k: payload[k] for k in _READ_BY_THE_CHECK if k in payload}


def is_revoked(payload: dict[str, Any]) -> bool:
    """True when the token was revoked by jti, session, version or a cutoff (one round trip)."""
    return revoked_among([payload])[0]


# --- SQL, the source of truth ---------------------------------------------------------------


def _ms(instant: datetime) -> int:
    return int(instant.timestamp() * 1000)


def record_revoked_jti(jti: str, expires_at: datetime) -> None:
    """Add a revoked token to the current transaction (the caller commits, then writes Redis)."""
    if db.session.get(RevokedToken, jti) is None:
        db.session.add(RevokedToken(jti=jti, expires_at=expires_at, revoked_at=utcnow()))


def _revoked_in_sql(payload: dict[str, Any]) -> bool:
    """The slow path: the same decision as ``_revoked``, from SQL alone."""
    jti, sid = str(payload.get("jti")), payload.get("sid")
    if db.session.get(RevokedToken, jti) is not None:
        return True
    app = db.session.get(AppToken, jti)
    if app is not None and app.revoked_at is not None:
        return True
    if sid is not None:
        session = db.session.get(AuthSession, str(sid))
        if session is None or session.revoked_at is not None:
            return True
    user = db.session.get(User, str(payload.get("sub")))
    tenant = db.session.get(Tenant, str(payload.get("tenant")))
    if user is None or tenant is None or user.disabled or tenant.disabled:
        return True
    signed_under, issued = payload.get("ver", 0), payload.get("iat_ms")
    if not isinstance(signed_under, int) or signed_under < user.token_version:
        return True
    issued_ms = issued if isinstance(issued, int) else 0
    return any(
        cutoff is not None and issued_ms < _ms(cutoff)
        for cutoff in (user.tokens_valid_after, tenant.tokens_valid_after)
    )


def reseed_after_failover() -> bool:
    """Re-seed from SQL once per Redis failover (the keeper asks on every tick).

    A revocation acknowledged by a master just before it died may not have reached the replica
    that took its place (replication is asynchronous); the seeded sentinel survives such a
    failover, so it cannot tell. The topology epoch does: when it moves, one worker (``SET NX``
    per epoch) copies SQL into Redis again. Returns True when this call re-seeded.
    """
    client = get_redis()
    epoch = topology_epoch(client)
    previous, _epoch[0] = _epoch[0], epoch
    if previous is None or previous == epoch:
        return False
    if not client.set(EPOCH_KEY.format(epoch), "1", nx=True, ex=3600):
        return False  # another worker re-seeds for this epoch
    log.warning("Redis failover seen (%s -> %s): re-seeding revocations", previous, epoch)
    reseed(force=True)
    return True


def reseed(*, force: bool = False) -> int:
    """Copy every live revocation from SQL into Redis, then set the sentinel; returns the count.

    Cutoffs and versions are raised, never lowered, so a re-seed racing a new revocation cannot
    undo it. ``force``: even when the sentinel says Redis has it all (after a failover).
    """
    with _lock:
        redis = get_redis()
        if not force and redis.exists(SEEDED_KEY):
            return 0  # another greenlet or worker has just done it
        now = utcnow()
        count = 0
        users = db.session.execute(
            select(User.id, User.disabled, User.tokens_valid_after, User.token_version).where(
                or_(User.disabled, User.tokens_valid_after.is_not(None), User.token_version > 0)
            )
        ).all()
        for user_id, disabled, valid_after, version in users:
            if disabled:
                raise_user_cutoff(user_id, DISABLED_CUTOFF_MS)
            elif valid_after is not None:
                raise_user_cutoff(user_id, _ms(valid_after))
            if version:
                raise_user_version(user_id, version)
            count += 1
        tenants = db.session.execute(
            select(Tenant.id, Tenant.disabled, Tenant.tokens_valid_after).where(
                or_(Tenant.disabled, Tenant.tokens_valid_after.is_not(None))
            )
        ).all()
        for tenant_id, disabled, valid_after in tenants:
            cutoff = DISABLED_CUTOFF_MS if disabled or valid_after is None else _ms(valid_after)
            raise_tenant_cutoff(tenant_id, cutoff)
            count += 1
        jtis = db.session.execute(
            select(RevokedToken.jti, RevokedToken.expires_at).where(RevokedToken.expires_at > now)
        ).all()
        apps = db.session.execute(
            select(AppToken.jti, AppToken.expires_at).where(
                AppToken.revoked_at.is_not(None), AppToken.expires_at > now
            )
        ).all()
        for jti, expires_at in [*jtis, *apps]:
            revoke_jti(jti, expires_at.timestamp())
            count += 1
        sessions = db.session.execute(
            select(AuthSession.id, AuthSession.expires_at).where(
                AuthSession.revoked_at.is_not(None), AuthSession.expires_at > now
            )
        ).all()
        for session_id, expires_at in sessions:
            revoke_session_key(session_id, expires_at.timestamp())
            count += 1
        db.session.rollback()  # read-only: end the transaction, free the connection
        redis.set(SEEDED_KEY, now.isoformat())
        # Loud when it restored something: Redis had lost revocations (or this is a fresh Redis).
        log.log(
            logging.WARNING if count else logging.INFO,
            "revocation state re-seeded from SQL into Redis (%d entries)",
            count,
        )
        return count


def purge_expired() -> int:
    """Delete revoked-token rows past their expiry (nothing can present them any more)."""
    deleted = db.session.query(RevokedToken).filter(RevokedToken.expires_at <= utcnow()).delete()
    db.session.commit()
    return int(deleted)
