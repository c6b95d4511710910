"""Revocation against real gunicorn workers: no token outlives a demotion, and SQL is the truth.

Finding 18.1: a demotion raced by refreshes (and app-token creation) must leave no token with
the old role alive. Finding 18.2: revocations hold when Redis forgets its keys.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from tests.support.accounts import UNLIMITED_LOGINS
from tests.support.config import PASSWORD
from tests.support.live import LiveServer
from tests.support.tokens import user_headers

LOOPS = 12  # parallel refresh loops, as in the review
ROUNDS = 4  # demotions per test


@pytest.fixture()
def live_overrides() -> dict[str, str]:
    # The race needs many logins of one account: the login rate limit is tested elsewhere.
    return UNLIMITED_LOGINS


def claims(token: str) -> dict[str, Any]:
    return dict(pyjwt.decode(token, options={"verify_signature": False}))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + token}


def log_in(client: httpx.Client, slug: str, email: str) -> dict[str, Any]:
    response = client.post(
        "/v1/auth/login", json={"tenant": slug, "email": email, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def set_role(client: httpx.Client, boss: dict[str, str], user_id: str, role: str) -> None:
    response = client.patch(f"/v1/admin/users/{user_id}", headers=boss, json={"role": role})
    assert response.status_code == 200, response.text


def test_no_admin_token_outlives_a_demotion_raced_by_refreshes_and_app_tokens(
    live: LiveServer,
    make_tenant: Callable[..., Any],
    make_user: Callable[..., Any],
) -> None:
    with live.app.app_context():
        tenant = make_tenant()
        target, boss = make_user(tenant, role="admin"), make_user(tenant, role="admin")
        slug, email, target_id = tenant.slug, target.email, target.id
        boss_headers = user_headers(boss)

    minted: list[str] = []  # every token the target got with role=admin
    lock = threading.Lock()

    def keep(token: str) -> None:
        if claims(token)["role"] == "admin":
            with lock:
                minted.append(token)

    with live.client() as client:
        for _ in range(ROUNDS):
            set_role(client, boss_headers, target_id, "admin")
            # Logging in is the slow part (a full argon2 hash each): both workers hash at once.
            with ThreadPoolExecutor(LOOPS) as pool:
                pairs = list(pool.map(lambda _: log_in(client, slug, email), range(LOOPS)))
            stop = threading.Event()

            def refresh_loop(pair: dict[str, Any], stop: threading.Event) -> None:
                refresh = pair["refresh_token"]
                with live.client() as own:
                    while not stop.is_set():
                        response = own.post("/v1/auth/refresh", headers=bearer(refresh))
                        if response.status_code != 200:
                            return  # the session is dead: that is the point
                        body = response.json()
                        keep(body["access_token"])
                        refresh = body.get("refresh_token", refresh)

            def app_token_loop(pair: dict[str, Any], stop: threading.Event) -> None:
                access = pair["access_token"]
                with live.client() as own:
                    while not stop.is_set():
                        response = own.post(
                            "/v1/tokens",
                            headers=bearer(access),
                            json={"name": "race", "scopes": ["admin", "read"]},
                        )
                        if response.status_code != 201:
                            return
                        keep(response.json()["token"])

            threads = [threading.Thread(target=refresh_loop, args=(p, stop)) for p in pairs]
            threads += [threading.Thread(target=app_token_loop, args=(p, stop)) for p in pairs[:2]]
            for thread in threads:
                thread.start()
            time.sleep(0.5)
            set_role(client, boss_headers, target_id, "member")  # the demotion
            time.sleep(0.5)
            stop.set()
            for thread in threads:
                thread.join(30)

        assert minted, "the loops minted no token at all"
        survivors = [
            token
            for token in minted
            if client.get("/v1/admin/users", headers=bearer(token)).status_code == 200
        ]
    assert survivors == [], (
        f"{len(survivors)} of {len(minted)} admin tokens still work after the demotion "
        f"(kinds: {sorted({claims(t)['kind'] for t in survivors})})"
    )


def test_revocations_hold_when_redis_forgets_them(
    live: LiveServer,
    make_tenant: Callable[..., Any],
    make_user: Callable[..., Any],
    redis: Any,
) -> None:
    from auth import service

    with live.app.app_context():
        tenant, doomed_tenant = make_tenant(), make_tenant()
        user, admin = make_user(tenant), make_user(tenant, role="admin")
        everywhere = make_user(tenant)
        doomed = make_user(doomed_tenant)
        slug, email = tenant.slug, user.email
        admin_headers, everywhere_headers = user_headers(admin), user_headers(everywhere)
        doomed_headers = user_headers(doomed)
        keeper_headers = user_headers(make_user(tenant))  # revoked by nothing
        service.sign_out_everywhere(tenant.id, everywhere.id, None, "test")
        service.disable_tenant(doomed_tenant.id, None, "test")
        service.enable_tenant(doomed_tenant.id, None, "test")  # old tokens stay dead

    with live.client() as client:
        pair = log_in(client, slug, email)
        logout = client.post(
            "/v1/auth/logout",
            headers=bearer(pair["access_token"]),
            json={"refresh_token": pair["refresh_token"]},
        )
        assert logout.status_code == 204
        created = client.post(
            "/v1/tokens", headers=admin_headers, json={"name": "app", "scopes": ["read"]}
        ).json()
        app_token = created["token"]
        assert client.get("/v1/auth/me", headers=bearer(app_token)).status_code == 200
        assert (
            client.delete(f"/v1/tokens/{created['jti']}", headers=admin_headers).status_code == 204
        )

        refused = {
            "logged-out access token": ("GET", "/v1/auth/me", bearer(pair["access_token"])),
            "logged-out refresh token": ("POST", "/v1/auth/refresh", bearer(pair["refresh_token"])),
            "signed out everywhere": ("GET", "/v1/auth/me", everywhere_headers),
            "revoked app token": ("GET", "/v1/auth/me", bearer(app_token)),
            "token of a re-enabled tenant": ("GET", "/v1/auth/me", doomed_headers),
        }

        def still_refused() -> dict[str, int]:
            return {
                name: client.request(method, path, headers=headers).status_code
                for name, (method, path, headers) in refused.items()
            }

        assert set(still_refused().values()) == {401}
        redis.flushall()  # a restart without persistence, a failover to an empty replica

        assert still_refused() == dict.fromkeys(refused, 401)
        assert client.get("/v1/auth/me", headers=keeper_headers).status_code == 200
