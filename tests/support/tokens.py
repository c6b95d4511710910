"""Tokens from a client's and a forger's side: bearer headers, claims, forged and tampered JWTs,
and the auth error envelope (RFC 6750 challenge)."""

from __future__ import annotations

import base64
import json
import warnings
from typing import Any

import jwt as pyjwt

from tests.support.config import TEST_SECRET

OTHER_SECRET = "another-secret-" + "y" * 40


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + token}


def user_headers(user: Any) -> dict[str, str]:
    """``Authorization`` headers for a user's fresh access token (current app context)."""
    from auth.tokens import issue_user_tokens

    tokens = issue_user_tokens(user_id=user.id, tenant_id=user.tenant_id, role=user.role)
    return bearer(tokens["access_token"])


def tenant_of(user: Any) -> Any:
    from auth.models import Tenant
    from core.store import db

    return db.session.get(Tenant, user.tenant_id)


def assert_auth_error(response: Any, status: int = 401, error: str = "invalid_token") -> None:
    """A 401/403 in the envelope, with the RFC 6750 challenge naming ``error``."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["code"] == status and isinstance(body["message"], str) and body["message"]
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="streamgate"')
    if error:
        assert f'error="{error}"' in challenge
        assert body["error_code"] == error


def claims_of(token: str) -> dict[str, Any]:
    return dict(pyjwt.decode(token, options={"verify_signature": False}))


def sign(claims: dict[str, Any], *, key: str = TEST_SECRET, alg: str = "HS256") -> str:
    """Encode ``claims`` with PyJWT directly (a forger's view of our tokens)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns about key lengths for some algorithms
        return pyjwt.encode(claims, key, algorithm=alg)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any]) -> str:
    """An ``alg: none`` token: header and payload, empty signature."""
    return _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(claims) + "."


def tampered(token: str, **changes: Any) -> str:
    """The same token with edited claims and the original signature."""
    header, _payload, signature = token.split(".")
    return header + "." + _b64({**claims_of(token), **changes}) + "." + signature


def read_only_app_token(user: Any) -> dict[str, str]:
    """Bearer headers of an hour-long app token of ``user`` with the ``read`` scope only
    (current app context): it may list models, not chat."""
    from datetime import timedelta

    from auth.tokens import issue_app_token

    token = issue_app_token(
        user_id=user.id,
        tenant_id=user.tenant_id,
        role=user.role,
        scopes=["read"],
        ttl=timedelta(hours=1),
    )
    return bearer(token)


def assert_pair_refused(client: Any, pair: dict[str, str]) -> None:
    """Neither half of an access/refresh pair works any more (Flask test client): the access
    token is refused by ``/v1/auth/me``, the refresh token by ``/v1/auth/refresh``."""
    assert_auth_error(client.get("/v1/auth/me", headers=bearer(pair["access_token"])))
    assert_auth_error(client.post("/v1/auth/refresh", headers=bearer(pair["refresh_token"])))
