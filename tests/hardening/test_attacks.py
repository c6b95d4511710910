"""Attacks on every authenticated route and on the hub: bad tokens, hostile input, oversized bodies.

The routes are enumerated from the app's URL map, so a route added later is attacked too.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt as pyjwt
import pytest

from auth.tokens import issue_user_tokens, revoke_jti
from tests.support.config import TEST_SECRET

PUBLIC_BLUEPRINTS = ("static", "docs.", "web.", "health.", "metrics.")
# /v1/auth/status answers every caller 200 (whether a session is there, never whose): the pages
# ask it first so a logged-out visit logs no 401.
PUBLIC_RULES = {"/v1/auth/login", "/v1/auth/status"}


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def claims_for(user: Any, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "sub": user.id,
        "tenant": user.tenant_id,
        "role": user.role,
        "scopes": ["admin", "chat", "read"],
        "kind": "user",
        "jti": "j-" + user.id,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "iat_ms": now * 1000,
        "iss": "streamgate",
        "aud": "streamgate-api",
        "type": "access",
        "fresh": False,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def bad_tokens(user: Any) -> dict[str, str]:
    """Every kind of token that must be refused, by name."""
    good = claims_for(user)
    sign = lambda claims, key=TEST_SECRET, alg="HS256": pyjwt.encode(claims, key, algorithm=alg)  # noqa: E731
    return {
        "expired": sign(claims_for(user, exp=int(time.time()) - 5, iat=int(time.time()) - 100)),
        "other-key": sign(good, key="another-secret-" + "y" * 40),
        "alg-none": _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(good) + ".",
        "hs384": sign(good, alg="HS384"),  # a different algorithm with our key: refused (pinned)
        "wrong-aud": sign(claims_for(user, aud="someone-else")),
        "wrong-iss": sign(claims_for(user, iss="evil")),
        "no-exp": sign(claims_for(user, exp=None)),
        "tampered-role": _tamper(sign(good), role="operator"),
        "tampered-tenant": _tamper(sign(good), tenant="ten_" + "z" * 20),
        "refresh-as-access": sign(claims_for(user, type="refresh")),
        "garbage": "not.a.jwt",
        "empty": "",
    }


def _tamper(token: str, **changes: Any) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return header + "." + _b64(claims) + "." + signature


def protected_routes(app: Any) -> list[tuple[str, str]]:
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith(PUBLIC_BLUEPRINTS) or rule.rule in PUBLIC_RULES:
            continue
        path = rule.rule
        for arg in rule.arguments:
            path = path.replace(f"<{arg}>", "x_" + "a" * 20).replace(
                f"<string:{arg}>", "x_" + "a" * 20
            )
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            routes.append((method, path))
    return routes


def test_every_protected_route_refuses_every_bad_token(
    app: Any, client: Any, make_user: Any
) -> None:
    admin = make_user(role="admin")
    routes = protected_routes(app)
    assert len(routes) > 15  # the matrix really covers the API
    for name, token in bad_tokens(admin).items():
        for method, path in routes:
            if name == "refresh-as-access" and path == "/v1/auth/refresh":
                continue  # a refresh token is what this route takes (the reverse is tested in auth)
            url = path + ("?channel=users/" + admin.id if path == "/v1/events" else "")
            response = client.open(
                url, method=method, json={}, headers={"Authorization": "Bearer " + token}
            )
            assert response.status_code == 401, (
                name,
                method,
                path,
                response.status_code,
                response.get_data(as_text=True)[:200],
            )
            body = response.get_json()
            assert body is not None and ("message" in body or "error" in body), (name, method, path)
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), (name, method, path)


def test_revoked_and_cut_off_tokens_are_refused_everywhere(
    app: Any, client: Any, make_user: Any
) -> None:
    admin = make_user(role="admin")
    revoked = issue_user_tokens(user_id=admin.id, tenant_id=admin.tenant_id, role="admin")[
        "access_token"
    ]
    claims = pyjwt.decode(revoked, options={"verify_signature": False})
    revoke_jti(claims["jti"], claims["exp"])
    for method, path in protected_routes(app):
        url = path + ("?channel=users/" + admin.id if path == "/v1/events" else "")
        response = client.open(
            url, method=method, json={}, headers={"Authorization": "Bearer " + revoked}
        )
        assert response.status_code == 401, (method, path, response.status_code)


def test_tokens_in_the_query_string_are_ignored(
    client: Any, make_user: Any, auth_headers: Any
) -> None:
    user = make_user()
    token = auth_headers(user)["Authorization"].split()[1]
    for param in ("access_token", "token", "jwt"):
        response = client.get(f"/v1/auth/me?{param}={token}")
        assert response.status_code == 401
        response = client.get(f"/v1/events?channel=users/{user.id}&{param}={token}")
        assert response.status_code == 401


@pytest.mark.parametrize(
    "channel",
    [
        "streams/../users/usr_aaaaaaaaaaaaaaaaaaaa",
        "streams/*",
        "users/*",
        "streams/str_%2e%2e",
        "streams/str_AAAAAAAAAAAAAAAAAAAA",
        "streams/str_aaaaaaaaaaaaaaaaaaa\u0430",  # Cyrillic a
        "streams/str_aaaaaaaaaaaaaaaaaaaa/",
        "streams/str_aaaaaaaaaaaaaaaaaaaa\n",
        "streams/str_aaaaaaaaaaaaaaaaaaaa\x00",
        "users/str_aaaaaaaaaaaaaaaaaaaa",
        "streams/usr_aaaaaaaaaaaaaaaaaaaa",
        "sse",
        "",
        "streams/" + "a" * 5000,
        "STREAMS/str_aaaaaaaaaaaaaaaaaaaa",
        " streams/str_aaaaaaaaaaaaaaaaaaaa",
    ],
)
def test_hostile_channel_names_are_400(
    client: Any, make_user: Any, auth_headers: Any, channel: str
) -> None:
    headers = auth_headers(make_user())
    response = client.get("/v1/events", query_string={"channel": channel}, headers=headers)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["errors"] == {"channel": ["Malformed channel name."]}
    response = client.post("/v1/events/tickets", json={"channel": channel}, headers=headers)
    assert response.status_code in (400, 422), response.get_data(as_text=True)


CONTROL = ["a\r\nevent: forged", "a\nid: 1", "a\x00b", "a\rb", "\u2028x"]


@pytest.mark.parametrize("value", CONTROL)
def test_control_characters_in_fields_never_reach_framing(
    client: Any, make_user: Any, auth_headers: Any, value: str
) -> None:
    """CR/LF/NUL in names and ids are refused; in message content they are just text."""
    user = make_user()
    user_id = user.id
    headers = auth_headers(user)
    base = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    bodies = {
        "user": {**base, "user": value},
        "name": {**base, "messages": [{"role": "user", "content": "hi", "name": value}]},
        "model": {**base, "model": value},
    }
    for path in ("/v1/chat/completions", "/v1/streams"):
        for field, body in bodies.items():
            response = client.post(path, json=body, headers=headers)
            if value == "\u2028x" and field == "name":
                # U+2028 is not a line break for SSE or for our JSON logs: an allowed character
                # (``user`` is a limits key, held to a plain ASCII set).
                assert response.status_code in (200, 202), (path, field, response.status_code)
                continue
            assert 400 <= response.status_code < 500, (path, field, response.status_code)
    if "\n" in value or "\r" in value:
        return  # HTTP itself cannot carry these in a header; clients refuse to send them
    response = client.get(
        "/v1/events",
        query_string={"channel": "users/" + user_id},
        headers={**headers, "Last-Event-ID": value.encode("utf-8").decode("latin-1")},
    )
    assert response.status_code == 400
    response = client.get("/healthz", headers={"X-Request-Id": value})
    assert (
        response.headers["X-Request-Id"] != value and "\n" not in response.headers["X-Request-Id"]
    )


def test_oversized_bodies_are_413_and_leave_nothing_behind(
    app: Any, client: Any, make_user: Any, auth_headers: Any, redis: Any
) -> None:
    from core.store import db
    from streaming.models import StreamRecord

    headers = auth_headers(make_user())
    blob = "x" * (app.config["MAX_BODY_BYTES"] + 1)
    for path in ("/v1/chat/completions", "/v1/streams", "/v1/auth/login"):
        response = client.post(
            path,
            json={"model": "fake-model", "messages": [{"role": "user", "content": blob}]},
            headers=headers,
        )
        assert response.status_code == 413, (path, response.status_code)
    assert db.session.query(StreamRecord).count() == 0
    assert redis.zcard("sg:live") == 0


def test_deeply_nested_json_is_a_clear_400(client: Any, make_user: Any, auth_headers: Any) -> None:
    headers = {**auth_headers(make_user()), "Content-Type": "application/json"}
    nested = "[" * 100_000 + "]" * 100_000
    for path in ("/v1/chat/completions", "/v1/streams", "/v1/auth/login", "/v1/events/tickets"):
        response = client.post(path, data=nested, headers=headers)
        assert response.status_code == 400, (path, response.status_code)
        assert "nested too deeply" in response.get_data(as_text=True)


@pytest.mark.live
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/streams"])
def test_thousands_of_invalid_messages_are_refused_by_their_count_with_a_short_body(
    live: Any, make_user: Any, auth_headers: Any, path: str
) -> None:
    # Review finding: 32,000 invalid messages cost 2.25 s of CPU and a 10 MB error body. The
    # count is checked first, and a body with many bad fields lists 20 of them and counts the rest.
    with live.app.app_context():
        headers = auth_headers(make_user())
    too_many = {"model": "fake-model", "messages": [{"role": "nobody", "content": 7}] * 32_000}
    with live.client() as client:
        response = client.post(path, json=too_many, headers=headers)
        assert response.status_code == 400, response.text[:300]
        assert len(response.content) < 2_000
        assert "Too many messages: at most 256." in response.text

        many_bad = {"model": "fake-model", "messages": [{"role": "nobody", "content": 7}] * 200}
        response = client.post(path, json=many_bad, headers=headers)
        # OpenAI's routes answer invalid bodies with 400; the envelope's routes with 422.
        assert response.status_code == (400 if path == "/v1/chat/completions" else 422)
        assert len(response.content) < 8_000
        assert "more invalid fields not listed" in response.text
